//! The lowered graph as a TFLite flatbuffer, written table by table with `FlatBufferBuilder`.

use super::graph::{Op, Padding};
use super::lower::{FileOp, FileOpKind, FileTensor, Lowered};
use super::schema::*;
use flatbuffers::{FlatBufferBuilder, TableFinishedWIPOffset, UnionWIPOffset, WIPOffset};

type Table = WIPOffset<TableFinishedWIPOffset>;

/// What goes into the file besides the graph.
pub struct Extras<'a> {
    pub description: &'a str,
    /// `Model.metadata` entries: name and bytes (each in a buffer of its own).
    pub metadata: Vec<(&'a str, Vec<u8>)>,
}

fn buffer(fbb: &mut FlatBufferBuilder, data: Option<&[u8]>) -> Table {
    let data = data.map(|d| {
        let aligned: Vec<AlignedByte> = d.iter().map(|b| AlignedByte(*b)).collect();
        fbb.create_vector(&aligned)
    });
    let start = fbb.start_table();
    if let Some(data) = data {
        fbb.push_slot_always(buffer::DATA, data);
    }
    fbb.end_table(start)
}

fn tensor(fbb: &mut FlatBufferBuilder, t: &FileTensor, buffer_index: u32) -> Table {
    let name = fbb.create_string(&t.name);
    let shape = fbb.create_vector(&t.shape);
    let quant = t.quant.as_ref().map(|q| {
        let scale = fbb.create_vector(&q.scale);
        let zero = fbb.create_vector(&q.zero_point);
        let start = fbb.start_table();
        fbb.push_slot_always(quantization::SCALE, scale);
        fbb.push_slot_always(quantization::ZERO_POINT, zero);
        fbb.push_slot(quantization::QUANTIZED_DIMENSION, q.dimension, 0);
        fbb.end_table(start)
    });
    let start = fbb.start_table();
    fbb.push_slot_always(tensor::SHAPE, shape);
    fbb.push_slot(tensor::TYPE, t.ty, tensor_type::FLOAT32);
    fbb.push_slot(tensor::BUFFER, buffer_index, 0);
    fbb.push_slot_always(tensor::NAME, name);
    if let Some(q) = quant {
        fbb.push_slot_always(tensor::QUANTIZATION, q);
    }
    fbb.end_table(start)
}

fn padding(p: Padding) -> i8 {
    match p {
        Padding::Same => PADDING_SAME,
        Padding::Valid => PADDING_VALID,
    }
}

/// The op's `builtin_options`: union type and table (none for LOGISTIC and RSQRT).
fn options(
    fbb: &mut FlatBufferBuilder,
    op: &FileOp,
    out_shape: &[i32],
) -> Option<(u8, WIPOffset<UnionWIPOffset>)> {
    let finish = |fbb: &mut FlatBufferBuilder, start| -> WIPOffset<UnionWIPOffset> {
        let t: Table = fbb.end_table(start);
        WIPOffset::new(t.value())
    };
    let g = match &op.kind {
        FileOpKind::Quantize => return Some((options::QUANTIZE, empty_table(fbb))),
        FileOpKind::Dequantize => return Some((options::DEQUANTIZE, empty_table(fbb))),
        FileOpKind::Graph(g) => g,
    };
    Some(match g {
        Op::Conv2d { stride, padding: p } => {
            let start = fbb.start_table();
            fbb.push_slot(conv_2d_options::PADDING, padding(*p), PADDING_SAME);
            fbb.push_slot_always(conv_2d_options::STRIDE_W, *stride as i32);
            fbb.push_slot_always(conv_2d_options::STRIDE_H, *stride as i32);
            (options::CONV_2D, finish(fbb, start))
        }
        Op::DepthwiseConv2d { stride, padding: p } => {
            let start = fbb.start_table();
            fbb.push_slot(
                depthwise_conv_2d_options::PADDING,
                padding(*p),
                PADDING_SAME,
            );
            fbb.push_slot_always(depthwise_conv_2d_options::STRIDE_W, *stride as i32);
            fbb.push_slot_always(depthwise_conv_2d_options::STRIDE_H, *stride as i32);
            fbb.push_slot_always(depthwise_conv_2d_options::DEPTH_MULTIPLIER, 1i32);
            (options::DEPTHWISE_CONV_2D, finish(fbb, start))
        }
        Op::FullyConnected => {
            let start = fbb.start_table();
            fbb.push_slot(fully_connected_options::KEEP_NUM_DIMS, false, false);
            fbb.push_slot(
                fully_connected_options::ASYMMETRIC_QUANTIZE_INPUTS,
                op.asymmetric_quantize_inputs,
                false,
            );
            (options::FULLY_CONNECTED, finish(fbb, start))
        }
        Op::Softmax { beta } => {
            let start = fbb.start_table();
            fbb.push_slot_always(softmax_options::BETA, *beta);
            (options::SOFTMAX, finish(fbb, start))
        }
        Op::Concatenation { axis } => {
            let start = fbb.start_table();
            fbb.push_slot_always(concatenation_options::AXIS, *axis as i32);
            (options::CONCATENATION, finish(fbb, start))
        }
        Op::ResizeBilinear => {
            let start = fbb.start_table();
            fbb.push_slot_always(resize_bilinear_options::ALIGN_CORNERS, false);
            fbb.push_slot_always(resize_bilinear_options::HALF_PIXEL_CENTERS, true);
            (options::RESIZE_BILINEAR, finish(fbb, start))
        }
        Op::Reshape => {
            let shape = fbb.create_vector(out_shape);
            let start = fbb.start_table();
            fbb.push_slot_always(reshape_options::NEW_SHAPE, shape);
            (options::RESHAPE, finish(fbb, start))
        }
        Op::Mean { keep_dims } => {
            let start = fbb.start_table();
            fbb.push_slot_always(reducer_options::KEEP_DIMS, *keep_dims);
            (options::REDUCER, finish(fbb, start))
        }
        Op::BatchMatMul { adj_y } => {
            let start = fbb.start_table();
            fbb.push_slot_always(batch_matmul_options::ADJ_X, false);
            fbb.push_slot_always(batch_matmul_options::ADJ_Y, *adj_y);
            (options::BATCH_MATMUL, finish(fbb, start))
        }
        Op::Add => (options::ADD, empty_table(fbb)),
        Op::Mul => (options::MUL, empty_table(fbb)),
        Op::Sub => (options::SUB, empty_table(fbb)),
        Op::Pad => (options::PAD, empty_table(fbb)),
        Op::Transpose => (options::TRANSPOSE, empty_table(fbb)),
        Op::SquaredDifference => (options::SQUARED_DIFFERENCE, empty_table(fbb)),
        Op::L2Normalization => (options::L2_NORM, empty_table(fbb)),
        Op::Logistic | Op::Rsqrt => return None,
    })
}

fn tensor_map(fbb: &mut FlatBufferBuilder, name: &str, index: i32) -> Table {
    let name = fbb.create_string(name);
    let start = fbb.start_table();
    fbb.push_slot_always(tensor_map::NAME, name);
    fbb.push_slot(tensor_map::TENSOR_INDEX, index as u32, 0);
    fbb.end_table(start)
}

/// The flatbuffer of `l`, with a `serving_default` signature (`images` to `logits`).
pub fn write(l: &Lowered, extras: &Extras) -> Vec<u8> {
    let bytes: usize = l
        .tensors
        .iter()
        .filter_map(|t| t.data.as_ref())
        .map(Vec::len)
        .sum();
    let mut fbb = FlatBufferBuilder::with_capacity(bytes + 16 * l.tensors.len() + (1 << 16));

    // Buffers first: they land at the end of the file, as TF's converter puts them. Buffer 0
    // is the empty one activations point to.
    let mut buffers = vec![buffer(&mut fbb, None)];
    let mut buffer_of = vec![0u32; l.tensors.len()];
    for (i, t) in l.tensors.iter().enumerate() {
        if let Some(data) = &t.data {
            buffers.push(buffer(&mut fbb, Some(data)));
            buffer_of[i] = (buffers.len() - 1) as u32;
        }
    }
    let mut metadata_buffers = Vec::new();
    for (_, data) in &extras.metadata {
        buffers.push(buffer(&mut fbb, Some(data)));
        metadata_buffers.push((buffers.len() - 1) as u32);
    }

    let tensors: Vec<Table> = l
        .tensors
        .iter()
        .zip(&buffer_of)
        .map(|(t, b)| tensor(&mut fbb, t, *b))
        .collect();

    // One operator code per builtin, at the highest version any of its ops needs.
    let mut codes: Vec<(i32, i32)> = Vec::new();
    let mut code_index = Vec::with_capacity(l.ops.len());
    for op in &l.ops {
        let i = match codes.iter().position(|(c, _)| *c == op.code) {
            Some(i) => {
                codes[i].1 = codes[i].1.max(op.version);
                i
            }
            None => {
                codes.push((op.code, op.version));
                codes.len() - 1
            }
        };
        code_index.push(i as u32);
    }
    let operators: Vec<Table> = l
        .ops
        .iter()
        .zip(&code_index)
        .map(|(op, index)| {
            let inputs = fbb.create_vector(&op.inputs);
            let outputs = fbb.create_vector(&op.outputs);
            let out_shape = &l.tensors[op.outputs[0] as usize].shape;
            let opts = options(&mut fbb, op, out_shape);
            let start = fbb.start_table();
            fbb.push_slot(operator::OPCODE_INDEX, *index, 0);
            fbb.push_slot_always(operator::INPUTS, inputs);
            fbb.push_slot_always(operator::OUTPUTS, outputs);
            if let Some((ty, table)) = opts {
                fbb.push_slot_always(operator::BUILTIN_OPTIONS_TYPE, ty);
                fbb.push_slot_always(operator::BUILTIN_OPTIONS, table);
            }
            fbb.end_table(start)
        })
        .collect();
    let operator_codes: Vec<Table> = codes
        .iter()
        .map(|(code, version)| {
            let start = fbb.start_table();
            let deprecated = (*code).min(builtin::PLACEHOLDER_FOR_GREATER_OP_CODES) as i8;
            fbb.push_slot_always(operator_code::DEPRECATED_BUILTIN_CODE, deprecated);
            fbb.push_slot_always(operator_code::VERSION, *version);
            fbb.push_slot_always(operator_code::BUILTIN_CODE, *code);
            fbb.end_table(start)
        })
        .collect();

    let subgraph = {
        let tensors = fbb.create_vector(&tensors);
        let inputs = fbb.create_vector(&[l.input]);
        let outputs = fbb.create_vector(&[l.output]);
        let operators = fbb.create_vector(&operators);
        let name = fbb.create_string("main");
        let start = fbb.start_table();
        fbb.push_slot_always(subgraph::TENSORS, tensors);
        fbb.push_slot_always(subgraph::INPUTS, inputs);
        fbb.push_slot_always(subgraph::OUTPUTS, outputs);
        fbb.push_slot_always(subgraph::OPERATORS, operators);
        fbb.push_slot_always(subgraph::NAME, name);
        fbb.end_table(start)
    };
    let signature = {
        let i = tensor_map(&mut fbb, "images", l.input);
        let o = tensor_map(&mut fbb, "logits", l.output);
        let inputs = fbb.create_vector(&[i]);
        let outputs = fbb.create_vector(&[o]);
        let key = fbb.create_string("serving_default");
        let start = fbb.start_table();
        fbb.push_slot_always(signature_def::INPUTS, inputs);
        fbb.push_slot_always(signature_def::OUTPUTS, outputs);
        fbb.push_slot_always(signature_def::SIGNATURE_KEY, key);
        fbb.push_slot(signature_def::SUBGRAPH_INDEX, 0u32, 0);
        fbb.end_table(start)
    };
    let metadata: Vec<Table> = extras
        .metadata
        .iter()
        .zip(&metadata_buffers)
        .map(|((name, _), b)| {
            let name = fbb.create_string(name);
            let start = fbb.start_table();
            fbb.push_slot_always(metadata::NAME, name);
            fbb.push_slot_always(metadata::BUFFER, *b);
            fbb.end_table(start)
        })
        .collect();

    let operator_codes = fbb.create_vector(&operator_codes);
    let subgraphs = fbb.create_vector(&[subgraph]);
    let description = fbb.create_string(extras.description);
    let buffers = fbb.create_vector(&buffers);
    let metadata = fbb.create_vector(&metadata);
    let signatures = fbb.create_vector(&[signature]);
    let start = fbb.start_table();
    fbb.push_slot_always(model::VERSION, SCHEMA_VERSION);
    fbb.push_slot_always(model::OPERATOR_CODES, operator_codes);
    fbb.push_slot_always(model::SUBGRAPHS, subgraphs);
    fbb.push_slot_always(model::DESCRIPTION, description);
    fbb.push_slot_always(model::BUFFERS, buffers);
    fbb.push_slot_always(model::METADATA, metadata);
    fbb.push_slot_always(model::SIGNATURE_DEFS, signatures);
    let root = fbb.end_table(start);
    fbb.finish(root, Some(FILE_IDENTIFIER));
    fbb.finished_data().to_vec()
}
