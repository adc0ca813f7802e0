//! The parts of TFLite's flatbuffer schema (`schema.fbs`, schema version 3, file identifier
//! `TFL3`) that mvlab writes and reads, declared by hand: field slots, enum values and union
//! ordinals as the official schema numbers them. A table's field number `i` lives at vtable
//! offset `4 + 2 * i`; a union field takes two numbers (its type, then its value).

use flatbuffers::{FlatBufferBuilder, Push, PushAlignment, UnionWIPOffset, WIPOffset};

pub const FILE_IDENTIFIER: &str = "TFL3";
pub const SCHEMA_VERSION: u32 = 3;

/// The vtable offset of field number `i`.
pub const fn slot(i: u16) -> u16 {
    4 + 2 * i
}

/// `TensorType` values.
pub mod tensor_type {
    pub const FLOAT32: i8 = 0;
    pub const INT32: i8 = 2;
    pub const INT8: i8 = 9;
}

/// `BuiltinOperator` values.
pub mod builtin {
    pub const ADD: i32 = 0;
    pub const CONCATENATION: i32 = 2;
    pub const CONV_2D: i32 = 3;
    pub const DEPTHWISE_CONV_2D: i32 = 4;
    pub const DEQUANTIZE: i32 = 6;
    pub const FULLY_CONNECTED: i32 = 9;
    pub const L2_NORMALIZATION: i32 = 11;
    pub const LOGISTIC: i32 = 14;
    pub const MUL: i32 = 18;
    pub const RESHAPE: i32 = 22;
    pub const RESIZE_BILINEAR: i32 = 23;
    pub const SOFTMAX: i32 = 25;
    pub const PAD: i32 = 34;
    pub const TRANSPOSE: i32 = 39;
    pub const MEAN: i32 = 40;
    pub const SUB: i32 = 41;
    pub const RSQRT: i32 = 76;
    pub const SQUARED_DIFFERENCE: i32 = 99;
    pub const QUANTIZE: i32 = 114;
    pub const BATCH_MATMUL: i32 = 126;
    /// `deprecated_builtin_code` holds this for codes at or above it.
    pub const PLACEHOLDER_FOR_GREATER_OP_CODES: i32 = 127;

    /// The schema's name of a code mvlab writes.
    pub fn name(code: i32) -> &'static str {
        match code {
            ADD => "ADD",
            CONCATENATION => "CONCATENATION",
            CONV_2D => "CONV_2D",
            DEPTHWISE_CONV_2D => "DEPTHWISE_CONV_2D",
            DEQUANTIZE => "DEQUANTIZE",
            FULLY_CONNECTED => "FULLY_CONNECTED",
            L2_NORMALIZATION => "L2_NORMALIZATION",
            LOGISTIC => "LOGISTIC",
            MUL => "MUL",
            RESHAPE => "RESHAPE",
            RESIZE_BILINEAR => "RESIZE_BILINEAR",
            SOFTMAX => "SOFTMAX",
            PAD => "PAD",
            TRANSPOSE => "TRANSPOSE",
            MEAN => "MEAN",
            SUB => "SUB",
            RSQRT => "RSQRT",
            SQUARED_DIFFERENCE => "SQUARED_DIFFERENCE",
            QUANTIZE => "QUANTIZE",
            BATCH_MATMUL => "BATCH_MATMUL",
            _ => "?",
        }
    }
}

/// `BuiltinOptions` union ordinals (0 is NONE).
pub mod options {
    pub const CONV_2D: u8 = 1;
    pub const DEPTHWISE_CONV_2D: u8 = 2;
    pub const FULLY_CONNECTED: u8 = 8;
    pub const SOFTMAX: u8 = 9;
    pub const CONCATENATION: u8 = 10;
    pub const ADD: u8 = 11;
    pub const L2_NORM: u8 = 12;
    pub const RESIZE_BILINEAR: u8 = 15;
    pub const RESHAPE: u8 = 17;
    pub const MUL: u8 = 21;
    pub const PAD: u8 = 22;
    pub const TRANSPOSE: u8 = 26;
    pub const REDUCER: u8 = 27;
    pub const SUB: u8 = 28;
    pub const DEQUANTIZE: u8 = 38;
    pub const SQUARED_DIFFERENCE: u8 = 76;
    pub const QUANTIZE: u8 = 89;
    pub const BATCH_MATMUL: u8 = 101;
}

/// `Padding` values.
pub const PADDING_SAME: i8 = 0;
pub const PADDING_VALID: i8 = 1;

/// Field slots, one module per table.
pub mod model {
    use super::slot;
    pub const VERSION: u16 = slot(0);
    pub const OPERATOR_CODES: u16 = slot(1);
    pub const SUBGRAPHS: u16 = slot(2);
    pub const DESCRIPTION: u16 = slot(3);
    pub const BUFFERS: u16 = slot(4);
    pub const METADATA: u16 = slot(6);
    pub const SIGNATURE_DEFS: u16 = slot(7);
}

pub mod subgraph {
    use super::slot;
    pub const TENSORS: u16 = slot(0);
    pub const INPUTS: u16 = slot(1);
    pub const OUTPUTS: u16 = slot(2);
    pub const OPERATORS: u16 = slot(3);
    pub const NAME: u16 = slot(4);
}

pub mod tensor {
    use super::slot;
    pub const SHAPE: u16 = slot(0);
    pub const TYPE: u16 = slot(1);
    pub const BUFFER: u16 = slot(2);
    pub const NAME: u16 = slot(3);
    pub const QUANTIZATION: u16 = slot(4);
}

pub mod quantization {
    use super::slot;
    // min = 0 and max = 1 (for importing back into TF) are not written
    pub const SCALE: u16 = slot(2);
    pub const ZERO_POINT: u16 = slot(3);
    // details_type = 4, details = 5 (a union: two numbers)
    pub const QUANTIZED_DIMENSION: u16 = slot(6);
}

pub mod buffer {
    use super::slot;
    pub const DATA: u16 = slot(0);
}

pub mod operator_code {
    use super::slot;
    pub const DEPRECATED_BUILTIN_CODE: u16 = slot(0);
    pub const VERSION: u16 = slot(2);
    pub const BUILTIN_CODE: u16 = slot(3);
}

pub mod operator {
    use super::slot;
    pub const OPCODE_INDEX: u16 = slot(0);
    pub const INPUTS: u16 = slot(1);
    pub const OUTPUTS: u16 = slot(2);
    pub const BUILTIN_OPTIONS_TYPE: u16 = slot(3);
    pub const BUILTIN_OPTIONS: u16 = slot(4);
}

pub mod metadata {
    use super::slot;
    pub const NAME: u16 = slot(0);
    pub const BUFFER: u16 = slot(1);
}

pub mod tensor_map {
    use super::slot;
    pub const NAME: u16 = slot(0);
    pub const TENSOR_INDEX: u16 = slot(1);
}

pub mod signature_def {
    use super::slot;
    pub const INPUTS: u16 = slot(0);
    pub const OUTPUTS: u16 = slot(1);
    pub const SIGNATURE_KEY: u16 = slot(2);
    // deprecated_tag = 3
    pub const SUBGRAPH_INDEX: u16 = slot(4);
}

/// Options tables' fields.
pub mod conv_2d_options {
    use super::slot;
    pub const PADDING: u16 = slot(0);
    pub const STRIDE_W: u16 = slot(1);
    pub const STRIDE_H: u16 = slot(2);
}

pub mod depthwise_conv_2d_options {
    use super::slot;
    pub const PADDING: u16 = slot(0);
    pub const STRIDE_W: u16 = slot(1);
    pub const STRIDE_H: u16 = slot(2);
    pub const DEPTH_MULTIPLIER: u16 = slot(3);
}

pub mod fully_connected_options {
    use super::slot;
    pub const KEEP_NUM_DIMS: u16 = slot(2);
    pub const ASYMMETRIC_QUANTIZE_INPUTS: u16 = slot(3);
}

pub mod softmax_options {
    use super::slot;
    pub const BETA: u16 = slot(0);
}

pub mod concatenation_options {
    use super::slot;
    pub const AXIS: u16 = slot(0);
}

pub mod resize_bilinear_options {
    use super::slot;
    // new_height = 0 and new_width = 1 are deprecated
    pub const ALIGN_CORNERS: u16 = slot(2);
    pub const HALF_PIXEL_CENTERS: u16 = slot(3);
}

pub mod reshape_options {
    use super::slot;
    pub const NEW_SHAPE: u16 = slot(0);
}

pub mod reducer_options {
    use super::slot;
    pub const KEEP_DIMS: u16 = slot(0);
}

pub mod batch_matmul_options {
    use super::slot;
    pub const ADJ_X: u16 = slot(0);
    pub const ADJ_Y: u16 = slot(1);
}

/// A byte of a `Buffer.data` vector: pushed with the 16-byte alignment the schema asks for
/// (`force_align: 16`), so every buffer's data starts at a multiple of 16 in the file.
#[derive(Clone, Copy)]
pub struct AlignedByte(pub u8);

impl Push for AlignedByte {
    type Output = u8;

    unsafe fn push(&self, dst: &mut [u8], _written_len: usize) {
        dst[0] = self.0;
    }

    fn size() -> usize {
        1
    }

    fn alignment() -> PushAlignment {
        PushAlignment::new(16)
    }
}

/// An options table with no fields (PadOptions, TransposeOptions, ...).
pub fn empty_table(fbb: &mut FlatBufferBuilder) -> WIPOffset<UnionWIPOffset> {
    let start = fbb.start_table();
    WIPOffset::new(fbb.end_table(start).value())
}
