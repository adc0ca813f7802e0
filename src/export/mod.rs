//! Mobile export: the model as an ONNX graph (opset 17) or a LiteRT (TFLite) flatbuffer, both
//! written by mvlab itself, float or quantized, or as plain safetensors weights.

pub mod latency;
pub mod litert;
pub mod measure;
pub mod onnx_pb;
pub mod tflite;

use crate::checkpoint::ModelCard;
use crate::config::Flavour;
use crate::model::layers::{ConvNormAct, InvertedResidual, MobileVitBlock, TransformerLayer};
use crate::model::{Block, MobileVit};
use anyhow::{Context, Result, bail};
use burn::module::Param;
use burn::nn::PaddingConfig2d;
use burn::prelude::*;
use onnx_pb::*;
use prost::Message;
use std::path::Path;

pub const OPSET: i64 = 17;

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 tensor")
}

fn param<const D: usize>(p: &Param<Tensor<D>>) -> Vec<f32> {
    values(p.val())
}

fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        i,
        r#type: ATTR_INT,
        ..Default::default()
    }
}

fn attr_ints(name: &str, ints: Vec<i64>) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        ints,
        r#type: ATTR_INTS,
        ..Default::default()
    }
}

fn attr_string(name: &str, s: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        s: s.as_bytes().to_vec(),
        r#type: ATTR_STRING,
        ..Default::default()
    }
}

fn attr_float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        f,
        r#type: ATTR_FLOAT,
        ..Default::default()
    }
}

/// Symmetric per-channel int8: `axis` is the output-channel axis of `dims`.
pub fn quantize_per_channel(w: &[f32], dims: &[usize], axis: usize) -> (Vec<i8>, Vec<f32>) {
    let channels = dims[axis];
    let inner: usize = dims[axis + 1..].iter().product();
    let channel_of = |i: usize| (i / inner) % channels;
    let mut max = vec![0f32; channels];
    for (i, v) in w.iter().enumerate() {
        let c = channel_of(i);
        max[c] = max[c].max(v.abs());
    }
    let scales: Vec<f32> = max
        .iter()
        .map(|m| if *m > 0.0 { m / 127.0 } else { 1.0 })
        .collect();
    let q = w
        .iter()
        .enumerate()
        .map(|(i, v)| (v / scales[channel_of(i)]).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (q, scales)
}

struct Graph {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    next: usize,
    quantize: bool,
}

impl Graph {
    fn fresh(&mut self, base: &str) -> String {
        self.next += 1;
        format!("{base}_{}", self.next)
    }

    fn init(&mut self, name: String, dims: &[usize], data_type: i32, raw: Vec<u8>) -> String {
        self.inits.push(TensorProto {
            dims: dims.iter().map(|d| *d as i64).collect(),
            data_type,
            name: name.clone(),
            raw_data: raw,
        });
        name
    }

    fn f32s(&mut self, base: &str, dims: &[usize], v: &[f32]) -> String {
        let name = self.fresh(base);
        self.init(
            name,
            dims,
            FLOAT,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        )
    }

    fn i64s(&mut self, base: &str, v: &[i64]) -> String {
        let name = self.fresh(base);
        self.init(
            name,
            &[v.len()],
            INT64,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        )
    }

    /// A weight: float, or int8 + per-channel scale behind a DequantizeLinear.
    fn weight(&mut self, base: &str, dims: &[usize], v: &[f32], axis: usize) -> String {
        if !self.quantize {
            return self.f32s(base, dims, v);
        }
        let (q, scales) = quantize_per_channel(v, dims, axis);
        let qn = self.fresh(&format!("{base}_int8"));
        let q = self.init(qn, dims, INT8, q.iter().map(|x| *x as u8).collect());
        let s = self.f32s(&format!("{base}_scale"), &[scales.len()], &scales);
        let zn = self.fresh(&format!("{base}_zero"));
        let z = self.init(zn, &[scales.len()], INT8, vec![0u8; scales.len()]);
        self.node(
            "DequantizeLinear",
            vec![q, s, z],
            vec![attr_int("axis", axis as i64)],
        )
    }

    fn node(&mut self, op: &str, inputs: Vec<String>, attribute: Vec<AttributeProto>) -> String {
        let out = self.fresh(&op.to_lowercase());
        self.nodes.push(NodeProto {
            input: inputs,
            output: vec![out.clone()],
            name: out.clone(),
            op_type: op.into(),
            attribute,
        });
        out
    }

    fn silu(&mut self, x: String) -> String {
        let s = self.node("Sigmoid", vec![x.clone()], vec![]);
        self.node("Mul", vec![x, s], vec![])
    }

    fn reshape(&mut self, x: String, shape: &[i64]) -> String {
        let s = self.i64s("shape", shape);
        self.node("Reshape", vec![x, s], vec![])
    }

    /// Bilinear resize of an NCHW map from `from` to `to` (height, width). Given as scales so
    /// the batch stays dynamic; each scale is rounded up to the next float so that
    /// `floor(size * scale)` is the target size exactly (the mapping moves by ~1e-7 px).
    fn resize(&mut self, x: String, from: [usize; 2], to: [usize; 2]) -> String {
        let scale = |t: usize, f: usize| (t as f32 / f as f32).next_up();
        let scales = self.f32s(
            "scales",
            &[4],
            &[1.0, 1.0, scale(to[0], from[0]), scale(to[1], from[1])],
        );
        let attrs = vec![
            attr_string("mode", "linear"),
            attr_string("coordinate_transformation_mode", "half_pixel"),
        ];
        self.node("Resize", vec![x, String::new(), scales], attrs)
    }

    fn transpose(&mut self, x: String, perm: &[i64]) -> String {
        self.node("Transpose", vec![x], vec![attr_ints("perm", perm.to_vec())])
    }

    /// `x @ W + b` with burn's `[in, out]` weight layout.
    fn linear(&mut self, x: String, l: &burn::nn::Linear) -> String {
        let dims = l.weight.val().dims().to_vec();
        let w = self.weight("linear_w", &dims, &param(&l.weight), 1);
        let y = self.node("MatMul", vec![x, w], vec![]);
        match &l.bias {
            Some(b) => {
                let b = self.f32s("linear_b", &[dims[1]], &param(b));
                self.node("Add", vec![y, b], vec![])
            }
            None => y,
        }
    }
}

/// TF/burn "same" padding: (before, after) for one axis.
fn same_padding(k: usize, stride: usize, size: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = ((out - 1) * stride + k).saturating_sub(size);
    (total / 2, total - total / 2)
}

struct Exporter {
    g: Graph,
    ln_eps: f32,
}

impl Exporter {
    /// Conv (its BatchNorm already folded in by `for_inference`), then SiLU when the layer has it.
    fn conv(&mut self, x: String, c: &ConvNormAct, hw: &mut [usize; 2]) -> String {
        assert!(
            c.bn.is_none(),
            "export works on the BatchNorm-folded inference model"
        );
        let conv = &c.conv;
        let w = param(&conv.weight);
        let dims = conv.weight.val().dims().to_vec();
        let out = dims[0];
        let b = conv
            .bias
            .as_ref()
            .map(param)
            .unwrap_or_else(|| vec![0.0; out]);
        let [k, _] = conv.kernel_size;
        let [s, _] = conv.stride;
        let ((top, bottom), (left, right)) = match conv.padding {
            PaddingConfig2d::Same => (same_padding(k, s, hw[0]), same_padding(k, s, hw[1])),
            PaddingConfig2d::Explicit(t, l, b2, r) => ((t, b2), (l, r)),
            PaddingConfig2d::Valid => ((0, 0), (0, 0)),
        };
        hw[0] = (hw[0] + top + bottom - k) / s + 1;
        hw[1] = (hw[1] + left + right - k) / s + 1;
        let wn = self.g.weight("conv_w", &dims, &w, 0);
        let bn_ = self.g.f32s("conv_b", &[out], &b);
        let y = self.g.node(
            "Conv",
            vec![x, wn, bn_],
            vec![
                attr_ints("kernel_shape", vec![k as i64, k as i64]),
                attr_ints("strides", vec![s as i64, s as i64]),
                attr_ints(
                    "pads",
                    vec![top as i64, left as i64, bottom as i64, right as i64],
                ),
                attr_int("group", conv.groups as i64),
            ],
        );
        if c.act { self.g.silu(y) } else { y }
    }

    fn inverted_residual(
        &mut self,
        x: String,
        b: &InvertedResidual,
        hw: &mut [usize; 2],
    ) -> String {
        let y = self.conv(x.clone(), &b.expand, hw);
        let y = self.conv(y, &b.depthwise, hw);
        let y = self.conv(y, &b.project, hw);
        if b.residual {
            self.g.node("Add", vec![y, x], vec![])
        } else {
            y
        }
    }

    fn layer_norm(&mut self, x: String, ln: &burn::nn::LayerNorm) -> String {
        let d = ln.gamma.val().dims()[0];
        let g = self.g.f32s("ln_g", &[d], &param(&ln.gamma));
        let b = self.g.f32s(
            "ln_b",
            &[d],
            &ln.beta.as_ref().map(param).unwrap_or_else(|| vec![0.0; d]),
        );
        self.g.node(
            "LayerNormalization",
            vec![x, g, b],
            vec![attr_int("axis", -1), attr_float("epsilon", self.ln_eps)],
        )
    }

    fn transformer(&mut self, x: String, t: &TransformerLayer, n: usize, d: usize) -> String {
        let (h, dh) = (t.attn.heads as i64, t.attn.head_dim as i64);
        let y = self.layer_norm(x.clone(), &t.norm1);
        let qkv = self.g.linear(y, &t.attn.qkv);
        let qkv = self.g.reshape(qkv, &[-1, n as i64, 3, h, dh]);
        let qkv = self.g.transpose(qkv, &[2, 0, 3, 1, 4]);
        let mut parts = Vec::new();
        for i in 0..3 {
            let idx = self.g.i64s("idx", &[i]);
            let p = self
                .g
                .node("Gather", vec![qkv.clone(), idx], vec![attr_int("axis", 0)]);
            parts.push(self.g.reshape(p, &[-1, h, n as i64, dh]));
        }
        let kt = self.g.transpose(parts[1].clone(), &[0, 1, 3, 2]);
        let scores = self.g.node("MatMul", vec![parts[0].clone(), kt], vec![]);
        let scale = self.g.f32s("scale", &[], &[1.0 / (dh as f32).sqrt()]);
        let scores = self.g.node("Mul", vec![scores, scale], vec![]);
        let weights = self
            .g
            .node("Softmax", vec![scores], vec![attr_int("axis", -1)]);
        let a = self
            .g
            .node("MatMul", vec![weights, parts[2].clone()], vec![]);
        let a = self.g.transpose(a, &[0, 2, 1, 3]);
        let a = self.g.reshape(a, &[-1, n as i64, h * dh]);
        let a = self.g.linear(a, &t.attn.proj);
        let x = self.g.node("Add", vec![x, a], vec![]);
        let y = self.layer_norm(x.clone(), &t.norm2);
        let y = self.g.linear(y, &t.fc1);
        let y = self.g.silu(y);
        let y = self.g.linear(y, &t.fc2);
        let y = if t.fc2_act { self.g.silu(y) } else { y };
        let _ = d;
        self.g.node("Add", vec![x, y], vec![])
    }

    fn mobilevit(&mut self, x: String, b: &MobileVitBlock, hw: &mut [usize; 2]) -> String {
        let y = self.conv(x.clone(), &b.conv_kxk, hw);
        let y = self.conv(y, &b.conv_1x1, hw);
        let d = b.conv_1x1.conv.weight.val().dims()[0];
        let p = b.patch;
        let [h, w] = *hw;
        // As the model does: a map that is not a multiple of the patch is resized up to one
        // (bilinear, half-pixel centres, as burn's `align_corners = false`) and back after.
        let (ph, pw) = (h.div_ceil(p) * p, w.div_ceil(p) * p);
        let resized = (ph, pw) != (h, w);
        let y = if resized {
            self.g.resize(y, [h, w], [ph, pw])
        } else {
            y
        };
        let (nh, nw) = (ph / p, pw / p);
        let (p_, nh_, nw_, d_) = (p as i64, nh as i64, nw as i64, d as i64);
        let t = self.g.reshape(y, &[0, d_, nh_, p_, nw_, p_]);
        let t = self.g.transpose(t, &[0, 3, 5, 2, 4, 1]);
        let mut t = self.g.reshape(t, &[-1, nh_ * nw_, d_]);
        for layer in &b.transformer {
            t = self.transformer(t, layer, nh * nw, d);
        }
        if let Some(norm) = &b.norm {
            t = self.layer_norm(t, norm);
        }
        let t = self.g.reshape(t, &[-1, p_, p_, nh_, nw_, d_]);
        let t = self.g.transpose(t, &[0, 5, 3, 1, 4, 2]);
        let y = self.g.reshape(t, &[-1, d_, ph as i64, pw as i64]);
        let y = if resized {
            self.g.resize(y, [ph, pw], [h, w])
        } else {
            y
        };
        let y = self.conv(y, &b.conv_proj, hw);
        let cat = self.g.node("Concat", vec![x, y], vec![attr_int("axis", 1)]);
        self.conv(cat, &b.conv_fusion, hw)
    }
}

/// Builds the ONNX model of a trained MobileViT (input `images` [N, 3, S, S], output `logits`).
pub fn to_onnx(model: &MobileVit, card: &ModelCard, quantize: bool) -> Result<Vec<u8>> {
    let model = model.for_inference();
    let size = card.model.image_size;
    let ln_eps = match card.model.flavour {
        Flavour::Keras => 1e-6,
        Flavour::Paper => 1e-5,
    };
    let mut e = Exporter {
        g: Graph {
            nodes: Vec::new(),
            inits: Vec::new(),
            next: 0,
            quantize,
        },
        ln_eps,
    };
    let mut hw = [size, size];
    let mut x = e.conv("images".into(), &model.stem, &mut hw);
    for block in &model.blocks {
        x = match block {
            Block::Mv2(b) => e.inverted_residual(x, b, &mut hw),
            Block::Vit(b) => e.mobilevit(x, b, &mut hw),
        };
    }
    x = e.conv(x, &model.final_conv, &mut hw);
    let pooled = e.g.node("GlobalAveragePool", vec![x], vec![]);
    let flat = e.g.node("Flatten", vec![pooled], vec![attr_int("axis", 1)]);
    let logits = e.g.linear(flat, &model.head);
    let out = e.g.node("Identity", vec![logits], vec![]);
    e.g.nodes.last_mut().unwrap().output = vec!["logits".into()];
    let _ = out;

    let dim = |v: Option<i64>, p: Option<&str>| Dimension {
        dim_value: v,
        dim_param: p.map(String::from),
    };
    let tensor_type = |dims: Vec<Dimension>| TypeProto {
        tensor_type: Some(TensorTypeProto {
            elem_type: FLOAT,
            shape: Some(TensorShapeProto { dim: dims }),
        }),
    };
    let s = size as i64;
    let graph = GraphProto {
        node: e.g.nodes,
        name: format!("mobilevit_{}", card.model.label()),
        initializer: e.g.inits,
        input: vec![ValueInfoProto {
            name: "images".into(),
            r#type: Some(tensor_type(vec![
                dim(None, Some("N")),
                dim(Some(3), None),
                dim(Some(s), None),
                dim(Some(s), None),
            ])),
        }],
        output: vec![ValueInfoProto {
            name: "logits".into(),
            r#type: Some(tensor_type(vec![
                dim(None, Some("N")),
                dim(Some(card.classes.len() as i64), None),
            ])),
        }],
    };
    let meta = |k: &str, v: String| StringStringEntryProto {
        key: k.into(),
        value: v,
    };
    let proto = ModelProto {
        ir_version: 8,
        producer_name: "mvlab".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string:
            "MobileViT image classifier: images are RGB in [0, 1], NCHW, resized to the input size"
                .into(),
        graph: Some(graph),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        metadata_props: vec![
            meta("classes", serde_json::to_string(&card.classes)?),
            meta("mvlab_model", serde_json::to_string(&card.model)?),
            meta(
                "weights",
                if quantize {
                    "int8 per-channel (DequantizeLinear)".into()
                } else {
                    "float32".into()
                },
            ),
        ],
    };
    Ok(proto.encode_to_vec())
}

/// Class names and model settings stored in an exported file's metadata.
pub fn read_card(bytes: &[u8]) -> Result<ModelCard> {
    let proto = ModelProto::decode(bytes)?;
    let get = |k: &str| {
        proto
            .metadata_props
            .iter()
            .find(|p| p.key == k)
            .map(|p| p.value.clone())
    };
    let (Some(classes), Some(model)) = (get("classes"), get("mvlab_model")) else {
        bail!("this ONNX file has no mvlab metadata (classes, mvlab_model)");
    };
    Ok(ModelCard {
        classes: serde_json::from_str(&classes)?,
        model: serde_json::from_str(&model)?,
    })
}

/// An exported ONNX file loaded into tract, ready to run batches.
pub struct OnnxModel {
    plan: std::sync::Arc<tract_onnx::prelude::TypedRunnableModel>,
    pub card: ModelCard,
}

impl OnnxModel {
    pub fn load(path: &Path) -> Result<Self> {
        use tract_onnx::prelude::*;
        let bytes = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let card = read_card(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let plan = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            .into_optimized()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            .into_runnable()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(Self { plan, card })
    }

    /// Logits `[n, classes]` for `n` CHW images of the model's input size.
    pub fn logits(&self, images: Vec<f32>, n: usize) -> Result<Vec<f32>> {
        use tract_onnx::prelude::*;
        let s = self.card.model.image_size;
        let input = tract_ndarray::Array4::from_shape_vec((n, 3, s, s), images)?;
        let out = self.plan.run(tvec!(Tensor::from(input).into()))?;
        Ok(out[0]
            .to_plain_array_view::<f32>()?
            .iter()
            .copied()
            .collect())
    }
}

/// The file formats `mvlab export` writes.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    clap::ValueEnum,
    strum::Display,
    serde::Serialize,
    serde::Deserialize,
)]
#[strum(serialize_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    /// An ONNX graph (opset 17) with the class names in its metadata.
    Onnx,
    /// A LiteRT (TensorFlow Lite) flatbuffer, NHWC, with a `serving_default` signature and the
    /// class names in its metadata: what Android and iOS apps load.
    Tflite,
    /// Plain weights under timm's names, with the model card beside them.
    Safetensors,
}

/// How an exported graph's numbers are stored.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    clap::ValueEnum,
    strum::Display,
    serde::Serialize,
    serde::Deserialize,
)]
#[strum(serialize_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum Quantization {
    /// float32 weights and activations (the default for ONNX).
    None,
    /// TFLite's dynamic-range quantization, the default for TFLite (what the Keras example's
    /// converter makes): int8 weights, per-channel for convolutions, float activations,
    /// hybrid kernels.
    Dynamic,
    /// ONNX: int8 weights, per-channel and symmetric, each behind a DequantizeLinear;
    /// activations stay float. TFLite: full integer, int8 activations calibrated on
    /// --calibrate training images, float input and output.
    Int8,
}

impl Quantization {
    /// What `--quantize` means when it is not given.
    pub fn default_for(format: ExportFormat) -> Self {
        match format {
            ExportFormat::Tflite => Quantization::Dynamic,
            ExportFormat::Onnx | ExportFormat::Safetensors => Quantization::None,
        }
    }
}

/// Training images a full-integer export calibrates its activation ranges on: `n` CHW images
/// of the model's input size, values as the model takes them.
pub struct Calibration {
    pub images: Vec<f32>,
    pub n: usize,
}

/// What `export` is asked to write.
pub struct ExportRequest<'a> {
    pub format: ExportFormat,
    /// `None`: the format's default ([`Quantization::default_for`]).
    pub quantize: Option<Quantization>,
    /// Needed by `--format tflite --quantize int8` only.
    pub calibration: Option<&'a Calibration>,
}

impl ExportRequest<'_> {
    pub fn kind(&self) -> Quantization {
        self.quantize
            .unwrap_or_else(|| Quantization::default_for(self.format))
    }
}

/// Writes `model` in the requested format; returns the file's size.
pub fn export(
    model: &MobileVit,
    card: &ModelCard,
    request: &ExportRequest,
    out: &Path,
) -> Result<u64> {
    let kind = request.kind();
    match (request.format, kind) {
        (ExportFormat::Onnx, Quantization::None | Quantization::Int8) => {
            let bytes = to_onnx(model, card, kind == Quantization::Int8)?;
            crate::checkpoint::write_atomic(out, &bytes)?;
        }
        (ExportFormat::Onnx, Quantization::Dynamic) => bail!(
            "--quantize dynamic is a TFLite kind; ONNX's int8 (--quantize int8) is its equivalent: int8 weights, float activations"
        ),
        (ExportFormat::Tflite, kind) => {
            let bytes = tflite::to_tflite(model, card, kind, request.calibration)?;
            crate::checkpoint::write_atomic(out, &bytes)?;
        }
        (ExportFormat::Safetensors, Quantization::None) => {
            // The card goes beside the weights: refused if that name holds something else.
            let card_path = out.with_extension("json");
            if card_path.exists() && crate::checkpoint::read_json::<ModelCard>(&card_path).is_err()
            {
                bail!(
                    "{} exists and is not a model card; the card of {} would replace it (choose another --out)",
                    card_path.display(),
                    out.display()
                );
            }
            crate::checkpoint::write_atomic(out, &crate::model::timm::to_safetensors(model)?)?;
            crate::checkpoint::write_json(&card_path, card)?;
        }
        (ExportFormat::Safetensors, q) => {
            bail!("--quantize {q} applies to --format onnx and tflite only")
        }
    }
    let meta = std::fs::metadata(out).with_context(|| format!("cannot read {}", out.display()))?;
    Ok(meta.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_channel_quantization_keeps_each_channel_within_half_a_step() {
        let w: Vec<f32> = (0..24)
            .map(|i| (i as f32 - 11.0) * if i < 12 { 0.01 } else { 1.0 })
            .collect();
        let (q, s) = quantize_per_channel(&w, &[2, 3, 4], 0);
        assert_eq!(s.len(), 2);
        assert!(s[0] < s[1] / 10.0, "channels get their own scales: {s:?}");
        for (i, v) in w.iter().enumerate() {
            let back = q[i] as f32 * s[i / 12];
            assert!((back - v).abs() <= s[i / 12] / 2.0 + 1e-7);
        }
        assert_eq!(same_padding(3, 2, 64), (0, 1));
        assert_eq!(same_padding(3, 2, 65), (1, 1));
        assert_eq!(same_padding(3, 1, 64), (1, 1));
    }
}
