//! Reads back the parts of a TFLite flatbuffer mvlab writes (and checks): operator codes,
//! operators, tensors with their quantization, buffers with their place in the file,
//! signatures and metadata. Every offset is bounds-checked: a damaged or foreign file is an
//! error, never a panic.

use super::schema::*;
use anyhow::{Context, Result, bail};

#[derive(Debug, Clone)]
pub struct OperatorCode {
    pub builtin_code: i32,
    pub deprecated_builtin_code: i8,
    pub version: i32,
    pub custom: bool,
}

#[derive(Debug, Clone)]
pub struct Operator {
    pub opcode_index: u32,
    pub inputs: Vec<i32>,
    pub outputs: Vec<i32>,
    pub options_type: u8,
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<i32>,
    /// `TensorType` (0 float32, 2 int32, 9 int8).
    pub ty: i8,
    pub buffer: u32,
    pub scale: Vec<f32>,
    pub zero_point: Vec<i64>,
    pub quantized_dimension: i32,
}

#[derive(Debug, Clone)]
pub struct Signature {
    pub key: String,
    pub inputs: Vec<(String, u32)>,
    pub outputs: Vec<(String, u32)>,
}

/// A TFLite file's structure.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub identifier: String,
    pub version: u32,
    pub description: String,
    pub operator_codes: Vec<OperatorCode>,
    pub operators: Vec<Operator>,
    pub tensors: Vec<TensorInfo>,
    pub inputs: Vec<i32>,
    pub outputs: Vec<i32>,
    /// Each buffer's data: (offset in the file, length), `None` when it has none.
    pub buffers: Vec<Option<(usize, usize)>>,
    /// `Model.metadata`: name and buffer index.
    pub metadata: Vec<(String, u32)>,
    pub signatures: Vec<Signature>,
}

impl Inspection {
    /// The bytes of the metadata entry `name`.
    pub fn metadata_bytes<'a>(&self, file: &'a [u8], name: &str) -> Option<&'a [u8]> {
        let (_, b) = self.metadata.iter().find(|(n, _)| n == name)?;
        let (at, len) = (*self.buffers.get(*b as usize)?)?;
        file.get(at..at + len)
    }

    /// The builtin code of each operator, in execution order.
    pub fn op_codes(&self) -> Vec<i32> {
        self.operators
            .iter()
            .map(|o| self.operator_codes[o.opcode_index as usize].builtin_code)
            .collect()
    }
}

struct Reader<'a>(&'a [u8]);

#[derive(Clone, Copy)]
struct Table {
    pos: usize,
    vtable: usize,
    vtable_len: usize,
}

impl<'a> Reader<'a> {
    fn bytes<const N: usize>(&self, at: usize) -> Result<[u8; N]> {
        let b = self
            .0
            .get(at..at.checked_add(N).context("offset overflow")?)
            .with_context(|| format!("offset {at} is past the end ({} bytes)", self.0.len()))?;
        Ok(b.try_into().unwrap())
    }
    fn u16(&self, at: usize) -> Result<u16> {
        Ok(u16::from_le_bytes(self.bytes(at)?))
    }
    fn u32(&self, at: usize) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(at)?))
    }
    fn i32(&self, at: usize) -> Result<i32> {
        Ok(i32::from_le_bytes(self.bytes(at)?))
    }

    fn table(&self, pos: usize) -> Result<Table> {
        let vtable = (pos as i64 - self.i32(pos)? as i64)
            .try_into()
            .context("vtable before the file")?;
        let vtable_len = self.u16(vtable)? as usize;
        if vtable_len < 4 {
            bail!("vtable too short");
        }
        Ok(Table {
            pos,
            vtable,
            vtable_len,
        })
    }

    /// Where field `slot` of `t` is, if present.
    fn field(&self, t: Table, slot: u16) -> Result<Option<usize>> {
        if slot as usize + 2 > t.vtable_len {
            return Ok(None);
        }
        let off = self.u16(t.vtable + slot as usize)? as usize;
        Ok((off != 0).then_some(t.pos + off))
    }

    fn indirect(&self, at: usize) -> Result<usize> {
        at.checked_add(self.u32(at)? as usize)
            .context("offset overflow")
    }

    fn scalar<const N: usize, T>(
        &self,
        t: Table,
        slot: u16,
        default: T,
        f: fn([u8; N]) -> T,
    ) -> Result<T> {
        Ok(match self.field(t, slot)? {
            Some(at) => f(self.bytes(at)?),
            None => default,
        })
    }

    /// A vector field: (start of its elements, count), checked to fit in the file.
    fn vector(&self, t: Table, slot: u16, elem: usize) -> Result<Option<(usize, usize)>> {
        let Some(at) = self.field(t, slot)? else {
            return Ok(None);
        };
        let v = self.indirect(at)?;
        let len = self.u32(v)? as usize;
        let start = v + 4;
        if start + len.checked_mul(elem).context("vector too long")? > self.0.len() {
            bail!("vector at {v} runs past the end");
        }
        Ok(Some((start, len)))
    }

    fn scalars<const N: usize, T>(
        &self,
        t: Table,
        slot: u16,
        f: fn([u8; N]) -> T,
    ) -> Result<Vec<T>> {
        let Some((start, len)) = self.vector(t, slot, N)? else {
            return Ok(Vec::new());
        };
        (0..len)
            .map(|i| Ok(f(self.bytes(start + i * N)?)))
            .collect()
    }

    fn string(&self, t: Table, slot: u16) -> Result<String> {
        let Some((start, len)) = self.vector(t, slot, 1)? else {
            return Ok(String::new());
        };
        Ok(String::from_utf8_lossy(&self.0[start..start + len]).into_owned())
    }

    fn subtable(&self, t: Table, slot: u16) -> Result<Option<Table>> {
        match self.field(t, slot)? {
            Some(at) => Ok(Some(self.table(self.indirect(at)?)?)),
            None => Ok(None),
        }
    }

    fn tables(&self, t: Table, slot: u16) -> Result<Vec<Table>> {
        let Some((start, len)) = self.vector(t, slot, 4)? else {
            return Ok(Vec::new());
        };
        (0..len)
            .map(|i| self.table(self.indirect(start + 4 * i)?))
            .collect()
    }
}

fn tensor_maps(r: &Reader, t: Table, slot: u16) -> Result<Vec<(String, u32)>> {
    r.tables(t, slot)?
        .into_iter()
        .map(|m| {
            Ok((
                r.string(m, tensor_map::NAME)?,
                r.scalar(m, tensor_map::TENSOR_INDEX, 0, u32::from_le_bytes)?,
            ))
        })
        .collect()
}

/// The structure of the TFLite flatbuffer `bytes` (its first subgraph).
pub fn inspect(bytes: &[u8]) -> Result<Inspection> {
    let r = Reader(bytes);
    let identifier = String::from_utf8_lossy(bytes.get(4..8).context("too short")?).into_owned();
    if identifier != FILE_IDENTIFIER {
        bail!("not a TFLite flatbuffer (identifier {identifier:?}, not {FILE_IDENTIFIER:?})");
    }
    let m = r.table(r.u32(0)? as usize)?;
    let operator_codes = r
        .tables(m, model::OPERATOR_CODES)?
        .into_iter()
        .map(|c| {
            Ok(OperatorCode {
                deprecated_builtin_code: r.scalar(
                    c,
                    operator_code::DEPRECATED_BUILTIN_CODE,
                    0,
                    i8::from_le_bytes,
                )?,
                builtin_code: r.scalar(c, operator_code::BUILTIN_CODE, 0, i32::from_le_bytes)?,
                version: r.scalar(c, operator_code::VERSION, 1, i32::from_le_bytes)?,
                custom: r.field(c, slot(1))?.is_some(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let subgraph = *r
        .tables(m, model::SUBGRAPHS)?
        .first()
        .context("no subgraph")?;
    let operators = r
        .tables(subgraph, subgraph::OPERATORS)?
        .into_iter()
        .map(|o| {
            Ok(Operator {
                opcode_index: r.scalar(o, operator::OPCODE_INDEX, 0, u32::from_le_bytes)?,
                inputs: r.scalars(o, operator::INPUTS, i32::from_le_bytes)?,
                outputs: r.scalars(o, operator::OUTPUTS, i32::from_le_bytes)?,
                options_type: r.scalar(o, operator::BUILTIN_OPTIONS_TYPE, 0, u8::from_le_bytes)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if let Some(o) = operators
        .iter()
        .find(|o| o.opcode_index as usize >= operator_codes.len())
    {
        bail!("operator code index {} out of range", o.opcode_index);
    }
    let tensors = r
        .tables(subgraph, subgraph::TENSORS)?
        .into_iter()
        .map(|t| {
            let q = r.subtable(t, tensor::QUANTIZATION)?;
            let (scale, zero_point, quantized_dimension) = match q {
                Some(q) => (
                    r.scalars(q, quantization::SCALE, f32::from_le_bytes)?,
                    r.scalars(q, quantization::ZERO_POINT, i64::from_le_bytes)?,
                    r.scalar(q, quantization::QUANTIZED_DIMENSION, 0, i32::from_le_bytes)?,
                ),
                None => (Vec::new(), Vec::new(), 0),
            };
            Ok(TensorInfo {
                name: r.string(t, tensor::NAME)?,
                shape: r.scalars(t, tensor::SHAPE, i32::from_le_bytes)?,
                ty: r.scalar(t, tensor::TYPE, 0, i8::from_le_bytes)?,
                buffer: r.scalar(t, tensor::BUFFER, 0, u32::from_le_bytes)?,
                scale,
                zero_point,
                quantized_dimension,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let buffers = r
        .tables(m, model::BUFFERS)?
        .into_iter()
        .map(|b| r.vector(b, buffer::DATA, 1))
        .collect::<Result<Vec<_>>>()?;
    let metadata = r
        .tables(m, model::METADATA)?
        .into_iter()
        .map(|e| {
            Ok((
                r.string(e, metadata::NAME)?,
                r.scalar(e, metadata::BUFFER, 0, u32::from_le_bytes)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let signatures = r
        .tables(m, model::SIGNATURE_DEFS)?
        .into_iter()
        .map(|s| {
            Ok(Signature {
                key: r.string(s, signature_def::SIGNATURE_KEY)?,
                inputs: tensor_maps(&r, s, signature_def::INPUTS)?,
                outputs: tensor_maps(&r, s, signature_def::OUTPUTS)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Inspection {
        identifier,
        version: r.scalar(m, model::VERSION, 0, u32::from_le_bytes)?,
        description: r.string(m, model::DESCRIPTION)?,
        operator_codes,
        operators,
        tensors,
        inputs: r.scalars(subgraph, subgraph::INPUTS, i32::from_le_bytes)?,
        outputs: r.scalars(subgraph, subgraph::OUTPUTS, i32::from_le_bytes)?,
        buffers,
        metadata,
        signatures,
    })
}
