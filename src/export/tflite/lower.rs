//! The float graph as the file stores it for one quantization kind: each tensor's type, bytes
//! and quantization parameters, each op's builtin code, options and version.
//!
//! - `None`: float32 throughout.
//! - `Dynamic` (TF's dynamic-range quantization): the weights of convolutions and fully
//!   connected layers with at least [`MIN_ELEMENTS_FOR_WEIGHTS`] values as int8, symmetric, per
//!   output channel; biases and activations float; the ops run their hybrid kernels.
//! - `Int8` (full integer): every activation int8 with a per-tensor scale and zero point from
//!   the calibrated ranges, weights int8 symmetric per output channel, biases int32 at
//!   input scale x weight scale, LOGISTIC and SOFTMAX outputs at TFLite's fixed 1/256 and -128
//!   (L2_NORMALIZATION's at 1/128 and 0); a QUANTIZE after the float input and a DEQUANTIZE
//!   before the float output. Ops that only move values (RESHAPE, TRANSPOSE, PAD,
//!   RESIZE_BILINEAR) and CONCATENATION keep their operands' parameters, as TFLite's int8
//!   kernels require.

use super::graph::{Data, Graph, Op};
use super::schema::{builtin, tensor_type};
use crate::export::Quantization;

/// TF's converter leaves smaller weight tensors float in dynamic-range quantization.
pub const MIN_ELEMENTS_FOR_WEIGHTS: usize = 1024;

/// Fully connected weights are quantized per output channel (axis 0), as convolutions are and
/// as TF's converter does now (a hybrid FULLY_CONNECTED per channel is version 12, TFLite
/// 2.17 on); `false` quantizes them per tensor (version 9, TFLite 2.3 on).
pub const FC_PER_CHANNEL: bool = true;

#[derive(Debug, Clone, PartialEq)]
pub struct QuantParams {
    pub scale: Vec<f32>,
    pub zero_point: Vec<i64>,
    pub dimension: i32,
}

#[derive(Debug, Clone)]
pub struct FileTensor {
    pub name: String,
    pub shape: Vec<i32>,
    pub ty: i8,
    /// Constant data (little-endian), or `None` for an activation.
    pub data: Option<Vec<u8>>,
    pub quant: Option<QuantParams>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FileOpKind {
    Graph(Op),
    Quantize,
    Dequantize,
}

#[derive(Debug, Clone)]
pub struct FileOp {
    pub kind: FileOpKind,
    pub code: i32,
    pub version: i32,
    pub inputs: Vec<i32>,
    pub outputs: Vec<i32>,
    /// FULLY_CONNECTED with int8 weights and float inputs: quantize the inputs asymmetrically.
    pub asymmetric_quantize_inputs: bool,
}

#[derive(Debug, Clone)]
pub struct Lowered {
    pub tensors: Vec<FileTensor>,
    pub ops: Vec<FileOp>,
    pub input: i32,
    pub output: i32,
}

/// What a constant input is to the op reading it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    Activation,
    /// Convolution or fully connected weights, output channels on `axis`.
    Weights {
        axis: usize,
    },
    /// The bias of the op whose input activation is `input` and whose weights are `weights`.
    Bias {
        input: usize,
        weights: usize,
    },
    /// A float operand of an element-wise op (epsilon, scale, LayerNorm gamma and beta).
    Value,
    /// Shapes, axes, permutations, sizes, paddings.
    Int32,
}

fn roles(g: &Graph) -> Vec<Role> {
    let mut roles: Vec<Role> = g
        .tensors
        .iter()
        .map(|t| match t.data {
            Data::Activation => Role::Activation,
            Data::F32(_) => Role::Value,
            Data::I32(_) => Role::Int32,
        })
        .collect();
    for node in &g.nodes {
        let axis = match node.op {
            Op::Conv2d { .. } | Op::FullyConnected => 0,
            Op::DepthwiseConv2d { .. } => 3,
            _ => continue,
        };
        let [x, w, b] = node.inputs[..] else {
            unreachable!("weights and bias")
        };
        roles[w] = Role::Weights { axis };
        roles[b] = Role::Bias {
            input: x,
            weights: w,
        };
    }
    roles
}

/// Symmetric int8 per channel along `axis` (zero points 0, values in [-127, 127]).
fn symmetric_per_channel(v: &[f32], shape: &[usize], axis: usize) -> (Vec<i8>, Vec<f32>) {
    let inner: usize = shape[axis + 1..].iter().product();
    let channels = shape[axis];
    let channel = |i: usize| (i / inner) % channels;
    let mut max = vec![0f32; channels];
    for (i, x) in v.iter().enumerate() {
        max[channel(i)] = max[channel(i)].max(x.abs());
    }
    let scales: Vec<f32> = max
        .iter()
        .map(|m| if *m > 0.0 { m / 127.0 } else { 1.0 })
        .collect();
    let q = v
        .iter()
        .enumerate()
        .map(|(i, x)| (x / scales[channel(i)]).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (q, scales)
}

/// Per-tensor asymmetric int8 parameters covering `[lo, hi]` (and zero): (scale, zero point).
pub fn asymmetric(lo: f32, hi: f32) -> (f32, i64) {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let scale = ((hi - lo) / 255.0).max(1e-9);
    let zero = (-128.0 - lo / scale).round().clamp(-128.0, 127.0) as i64;
    (scale, zero)
}

fn quantize(v: &[f32], scale: f32, zero: i64) -> Vec<u8> {
    v.iter()
        .map(|x| ((x / scale).round() + zero as f32).clamp(-128.0, 127.0) as i8 as u8)
        .collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn per_tensor(scale: f32, zero: i64) -> QuantParams {
    QuantParams {
        scale: vec![scale],
        zero_point: vec![zero],
        dimension: 0,
    }
}

/// TFLite's fixed output parameters of LOGISTIC and SOFTMAX in int8 ([0, 1)).
const FIXED_UNIT: (f32, i64) = (1.0 / 256.0, -128);
/// And of L2_NORMALIZATION ([-1, 1)).
const FIXED_SIGNED_UNIT: (f32, i64) = (1.0 / 128.0, 0);

fn find(parent: &mut [usize], mut t: usize) -> usize {
    while parent[t] != t {
        parent[t] = parent[parent[t]];
        t = parent[t];
    }
    t
}

/// Per-tensor (scale, zero point) of every activation from calibrated ranges. Ops that move
/// values without arithmetic (RESHAPE, TRANSPOSE, PAD, RESIZE_BILINEAR) and CONCATENATION keep
/// their operands' parameters, so those tensors share one range (their union).
fn activation_params(g: &Graph, ranges: &[Option<(f32, f32)>]) -> Vec<Option<(f32, i64)>> {
    let n = g.tensors.len();
    let mut parent: Vec<usize> = (0..n).collect();
    let mut fixed = vec![None; n];
    for node in &g.nodes {
        match node.op {
            Op::Reshape | Op::Transpose | Op::Pad | Op::ResizeBilinear => {
                let (a, b) = (
                    find(&mut parent, node.inputs[0]),
                    find(&mut parent, node.output),
                );
                parent[a] = b;
            }
            Op::Concatenation { .. } => {
                for t in &node.inputs {
                    let (a, b) = (find(&mut parent, *t), find(&mut parent, node.output));
                    parent[a] = b;
                }
            }
            Op::Logistic | Op::Softmax { .. } => fixed[node.output] = Some(FIXED_UNIT),
            Op::L2Normalization => fixed[node.output] = Some(FIXED_SIGNED_UNIT),
            _ => {}
        }
    }
    // A group with a fixed member (the output of L2_NORMALIZATION moved by RESHAPE and
    // TRANSPOSE) has its parameters throughout.
    let mut group: Vec<Option<(f32, f32)>> = vec![None; n];
    let mut group_fixed = vec![None; n];
    for t in 0..n {
        let r = find(&mut parent, t);
        if fixed[t].is_some() {
            group_fixed[r] = fixed[t];
        }
        if let Some((lo, hi)) = ranges[t] {
            group[r] = Some(match group[r] {
                Some((a, b)) => (a.min(lo), b.max(hi)),
                None => (lo, hi),
            });
        }
    }
    (0..n)
        .map(|t| {
            if !matches!(g.tensors[t].data, Data::Activation) {
                return None;
            }
            let r = find(&mut parent, t);
            if let Some(p) = group_fixed[r] {
                return Some(p);
            }
            let (lo, hi) = group[r].expect("every activation is calibrated");
            Some(asymmetric(lo, hi))
        })
        .collect()
}

/// The op's builtin code.
pub fn code(op: &FileOpKind) -> i32 {
    match op {
        FileOpKind::Quantize => builtin::QUANTIZE,
        FileOpKind::Dequantize => builtin::DEQUANTIZE,
        FileOpKind::Graph(op) => match op {
            Op::Conv2d { .. } => builtin::CONV_2D,
            Op::DepthwiseConv2d { .. } => builtin::DEPTHWISE_CONV_2D,
            Op::FullyConnected => builtin::FULLY_CONNECTED,
            Op::Logistic => builtin::LOGISTIC,
            Op::Mul => builtin::MUL,
            Op::Add => builtin::ADD,
            Op::Sub => builtin::SUB,
            Op::SquaredDifference => builtin::SQUARED_DIFFERENCE,
            Op::Rsqrt => builtin::RSQRT,
            Op::Mean { .. } => builtin::MEAN,
            Op::Reshape => builtin::RESHAPE,
            Op::Transpose => builtin::TRANSPOSE,
            Op::BatchMatMul { .. } => builtin::BATCH_MATMUL,
            Op::Softmax { .. } => builtin::SOFTMAX,
            Op::L2Normalization => builtin::L2_NORMALIZATION,
            Op::Concatenation { .. } => builtin::CONCATENATION,
            Op::ResizeBilinear => builtin::RESIZE_BILINEAR,
            Op::Pad => builtin::PAD,
        },
    }
}

/// The op's version for the tensor types it reads and writes, as TF's op_version.cc decides it.
fn version(op: &FileOp, tensors: &[FileTensor]) -> i32 {
    let ty = |i: i32| tensors[i as usize].ty;
    let input = ty(op.inputs[0]);
    let output = ty(op.outputs[0]);
    let int8 = input == tensor_type::INT8;
    let weights = op.inputs.get(1).map(|w| &tensors[*w as usize]);
    let hybrid = input == tensor_type::FLOAT32
        && weights.is_some_and(|w| w.ty == tensor_type::INT8)
        && output == tensor_type::FLOAT32;
    let per_channel = weights
        .and_then(|w| w.quant.as_ref())
        .is_some_and(|q| q.scale.len() > 1);
    let full_int8 = int8 && weights.is_some_and(|w| w.ty == tensor_type::INT8) && output == input;
    match &op.kind {
        FileOpKind::Quantize => 1,
        FileOpKind::Dequantize => {
            if int8 {
                2
            } else {
                1
            }
        }
        FileOpKind::Graph(g) => match g {
            Op::Conv2d { .. } => match (full_int8, hybrid, per_channel) {
                (true, _, _) => 3,
                (_, true, true) => 5,
                (_, true, false) => 2,
                _ => 1,
            },
            Op::DepthwiseConv2d { .. } => match (full_int8, hybrid, per_channel) {
                (_, true, true) => 6,
                (_, true, false) => 4,
                (true, _, _) => 3,
                _ => 1,
            },
            Op::FullyConnected => {
                if hybrid && per_channel {
                    12
                } else if full_int8 {
                    4
                } else if hybrid {
                    if op.asymmetric_quantize_inputs { 9 } else { 3 }
                } else {
                    1
                }
            }
            Op::Mul if int8 => {
                let scale = |i: i32| tensors[i as usize].quant.as_ref().unwrap().scale[0];
                let rescale = scale(op.inputs[0]) * scale(op.inputs[1]) / scale(op.outputs[0]);
                if rescale >= 1.0 { 3 } else { 2 }
            }
            Op::ResizeBilinear => 3,
            Op::Reshape => 1,
            _ if int8 => 2,
            _ => 1,
        },
    }
}

/// The graph lowered for `kind`; `ranges` (per tensor, from calibration) is needed for `Int8`.
pub fn lower(g: &Graph, kind: Quantization, ranges: Option<&[Option<(f32, f32)>]>) -> Lowered {
    let roles = roles(g);
    let act = match kind {
        Quantization::Int8 => activation_params(g, ranges.expect("int8 needs calibrated ranges")),
        _ => vec![None; g.tensors.len()],
    };
    let int8 = kind == Quantization::Int8;
    let mut weight_scales: Vec<Option<Vec<f32>>> = vec![None; g.tensors.len()];
    let mut tensors: Vec<FileTensor> = Vec::with_capacity(g.tensors.len() + 2);
    for (i, t) in g.tensors.iter().enumerate() {
        let shape = t.shape.iter().map(|d| *d as i32).collect();
        let mut ft = FileTensor {
            name: t.name.clone(),
            shape,
            ty: tensor_type::FLOAT32,
            data: None,
            quant: None,
        };
        match (&t.data, roles[i]) {
            (Data::Activation, _) => {
                if let Some((scale, zero)) = act[i] {
                    ft.ty = tensor_type::INT8;
                    ft.quant = Some(per_tensor(scale, zero));
                }
            }
            (Data::I32(v), _) => {
                ft.ty = tensor_type::INT32;
                ft.data = Some(v.iter().flat_map(|x| x.to_le_bytes()).collect());
            }
            (Data::F32(v), Role::Weights { axis }) => {
                let quantized = match kind {
                    Quantization::None => false,
                    Quantization::Dynamic => v.len() >= MIN_ELEMENTS_FOR_WEIGHTS,
                    Quantization::Int8 => true,
                };
                if quantized {
                    let fc = axis == 0 && t.shape.len() == 2;
                    let (q, scales) = if fc && !FC_PER_CHANNEL {
                        symmetric_per_channel(v, &[1, v.len()], 0)
                    } else {
                        symmetric_per_channel(v, &t.shape, axis)
                    };
                    ft.ty = tensor_type::INT8;
                    ft.data = Some(q.iter().map(|x| *x as u8).collect());
                    ft.quant = Some(QuantParams {
                        zero_point: vec![0; scales.len()],
                        scale: scales.clone(),
                        dimension: if scales.len() > 1 { axis as i32 } else { 0 },
                    });
                    weight_scales[i] = Some(scales);
                } else {
                    ft.data = Some(f32_bytes(v));
                }
            }
            (Data::F32(v), Role::Bias { .. }) if !int8 => ft.data = Some(f32_bytes(v)),
            (Data::F32(v), Role::Bias { input, weights }) => {
                let s_in = act[input].expect("an int8 input").0;
                // Biases come after their weights in the graph.
                let s_w = weight_scales[weights].as_ref().expect("weights first");
                let scales: Vec<f32> = (0..v.len())
                    .map(|c| s_in * s_w[if s_w.len() == 1 { 0 } else { c }])
                    .collect();
                let q: Vec<u8> = v
                    .iter()
                    .zip(&scales)
                    .flat_map(|(b, s)| {
                        ((*b as f64 / *s as f64).round() as i64)
                            .clamp(i32::MIN as i64, i32::MAX as i64)
                            .to_le_bytes()[..4]
                            .to_vec()
                    })
                    .collect();
                ft.ty = tensor_type::INT32;
                ft.data = Some(q);
                ft.quant = Some(QuantParams {
                    zero_point: vec![0; scales.len()],
                    dimension: 0,
                    scale: scales,
                });
            }
            (Data::F32(v), _) if int8 => {
                let lo = v.iter().copied().fold(f32::INFINITY, f32::min);
                let hi = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let (scale, zero) = asymmetric(lo, hi);
                ft.ty = tensor_type::INT8;
                ft.data = Some(quantize(v, scale, zero));
                ft.quant = Some(per_tensor(scale, zero));
            }
            (Data::F32(v), _) => ft.data = Some(f32_bytes(v)),
        }
        tensors.push(ft);
    }
    let mut ops: Vec<FileOp> = g
        .nodes
        .iter()
        .map(|n| {
            let kind = FileOpKind::Graph(n.op.clone());
            FileOp {
                code: code(&kind),
                asymmetric_quantize_inputs: matches!(n.op, Op::FullyConnected)
                    && tensors[n.inputs[0]].ty == tensor_type::FLOAT32
                    && tensors[n.inputs[1]].ty == tensor_type::INT8,
                kind,
                version: 0,
                inputs: n.inputs.iter().map(|t| *t as i32).collect(),
                outputs: vec![n.output as i32],
            }
        })
        .collect();
    let (mut input, mut output) = (g.input as i32, g.output as i32);
    if int8 {
        // The file takes and gives float: QUANTIZE first, DEQUANTIZE last.
        let float = |t: &FileTensor| FileTensor {
            ty: tensor_type::FLOAT32,
            quant: None,
            data: None,
            ..t.clone()
        };
        let (fin, fout) = (float(&tensors[g.input]), float(&tensors[g.output]));
        tensors[g.input].name = format!("{}_int8", fin.name);
        tensors[g.output].name = format!("{}_int8", fout.name);
        tensors.push(fin);
        tensors.push(fout);
        let (fi, fo) = (tensors.len() as i32 - 2, tensors.len() as i32 - 1);
        let op = |kind: FileOpKind, i: i32, o: i32| FileOp {
            code: code(&kind),
            kind,
            version: 0,
            inputs: vec![i],
            outputs: vec![o],
            asymmetric_quantize_inputs: false,
        };
        ops.insert(0, op(FileOpKind::Quantize, fi, input));
        ops.push(op(FileOpKind::Dequantize, output, fo));
        (input, output) = (fi, fo);
    }
    for op in &mut ops {
        op.version = version(op, &tensors);
    }
    Lowered {
        tensors,
        ops,
        input,
        output,
    }
}

/// The oldest TFLite runtime that has every op version the file uses (TF's
/// runtime_version.cc, for the ops mvlab writes).
pub fn min_runtime_version(ops: &[FileOp]) -> String {
    let needs = |op: &FileOp| -> (u32, u32, u32) {
        use builtin::*;
        match (op.code, op.version) {
            (FULLY_CONNECTED, 12) => (2, 17, 0),
            (FULLY_CONNECTED, 9) | (BATCH_MATMUL, _) | (CONV_2D, 4) => (2, 3, 0),
            (DEPTHWISE_CONV_2D, 5 | 6) => (2, 3, 0),
            (DEPTHWISE_CONV_2D, 4) => (2, 2, 0),
            (CONV_2D, 5) => (2, 4, 0),
            (SQUARED_DIFFERENCE, 2) | (RSQRT, 2) => (2, 5, 0),
            (RESIZE_BILINEAR, 3) => (2, 2, 0),
            (DEQUANTIZE | SQUARED_DIFFERENCE, 1) => (1, 13, 1),
            (MUL, 3) => (1, 15, 0),
            (_, 1) if [LOGISTIC, QUANTIZE].contains(&op.code) => (1, 14, 0),
            (L2_NORMALIZATION, 1) => (1, 5, 0),
            (RSQRT, 1) => (1, 10, 0),
            (MEAN | SUB | TRANSPOSE, 1) => (1, 6, 0),
            (RESIZE_BILINEAR, 1) => (1, 7, 0),
            (_, 1) => (1, 5, 0),
            _ => (1, 14, 0),
        }
    };
    let (a, b, c) = ops.iter().map(needs).max().unwrap_or((1, 5, 0));
    format!("{a}.{b}.{c}")
}
