//! Keras-style model summary: layer, type, output shape, parameters, and the totals split into
//! trainable and non-trainable (BatchNorm running statistics).

use super::layers::ConvNormAct;
use super::{Block, MobileVit, ModelConfig};
use burn::module::{ModuleVisitor, Param};
use burn::nn::PaddingConfig2d;
use burn::prelude::*;
use std::fmt::Write;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ParamCounts {
    pub total: usize,
    pub trainable: usize,
    pub non_trainable: usize,
}

/// Walks every float tensor; running statistics count as non-trainable, as in Keras.
struct Counter {
    path: Vec<String>,
    counts: ParamCounts,
}

impl ModuleVisitor for Counter {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let n = param.lazy_shape().num_elements();
        let running = self.path.last().is_some_and(|p| p.starts_with("running_"));
        self.counts.total += n;
        if running {
            self.counts.non_trainable += n;
        } else {
            self.counts.trainable += n;
        }
    }
}

pub fn count_params<M: Module>(module: &M) -> ParamCounts {
    let mut counter = Counter {
        path: Vec::new(),
        counts: ParamCounts::default(),
    };
    module.visit(&mut counter);
    counter.counts
}

pub struct Row {
    pub name: String,
    pub kind: String,
    pub shape: Vec<usize>,
    pub params: usize,
}

/// Output shapes follow from the layers' filters and strides, computed here without running
/// anything (an image size too large to train can still be summarised and estimated).
#[derive(Debug, Clone, Copy)]
struct Shape {
    channels: usize,
    h: usize,
    w: usize,
}

impl Shape {
    fn elements(&self) -> f64 {
        (self.channels * self.h * self.w) as f64
    }
}

/// Floats a training step keeps per image for the backward pass, counted as it walks.
#[derive(Debug, Default)]
struct Kept {
    floats: f64,
    /// Whether attention weights are stored (burn's ops; mvlab's CPU kernel recomputes them).
    attention_stored: bool,
}

/// Tensors a ConvNormAct keeps: the convolution's output, the normalised one and the activated one.
const CONV_KEEPS: f64 = 3.0;

fn conv(c: &ConvNormAct, x: Shape, kept: &mut Kept) -> Shape {
    let [cout, _, kh, kw] = c.conv.weight.lazy_shape().dims::<4>();
    let [sh, sw] = c.conv.stride;
    let out = |size: usize, k: usize, s: usize, before: usize, after: usize| match c.conv.padding {
        PaddingConfig2d::Same => size.div_ceil(s.max(1)),
        _ => (size + before + after).saturating_sub(k) / s.max(1) + 1,
    };
    let (t, l, b, r) = match c.conv.padding {
        PaddingConfig2d::Explicit(t, l, b, r) => (t, l, b, r),
        _ => (0, 0, 0, 0),
    };
    let y = Shape {
        channels: cout,
        h: out(x.h, kh, sh, t, b),
        w: out(x.w, kw, sw, l, r),
    };
    kept.floats += CONV_KEEPS * y.elements();
    y
}

fn block(b: &Block, x: Shape, kept: &mut Kept) -> Shape {
    match b {
        Block::Mv2(irb) => {
            let e = conv(&irb.expand, x, kept);
            let d = conv(&irb.depthwise, e, kept);
            conv(&irb.project, d, kept)
        }
        Block::Vit(v) => {
            let y = conv(&v.conv_1x1, conv(&v.conv_kxk, x, kept), kept);
            let p = v.patch.max(1);
            let tokens = (y.h.div_ceil(p) * p * y.w.div_ceil(p) * p) as f64;
            let sequence = tokens / (p * p) as f64;
            let d = y.channels as f64;
            // Unfolded copy, then per layer: two norms, q|k|v, attention output, projection,
            // the MLP's two widths (before and after swish), residual sums.
            kept.floats += 2.0 * d * tokens;
            for layer in &v.transformer {
                let mlp = layer.fc1.weight.lazy_shape().dims::<2>()[1] as f64;
                kept.floats += tokens * (9.0 * d + 3.0 * mlp);
                if kept.attention_stored {
                    let heads = layer.attn.heads as f64;
                    kept.floats += 2.0 * heads * tokens * sequence;
                }
            }
            let proj = conv(&v.conv_proj, y, kept);
            let cat = Shape {
                channels: x.channels + proj.channels,
                ..x
            };
            kept.floats += cat.elements();
            conv(&v.conv_fusion, cat, kept)
        }
    }
}

/// Each top-level layer's output shape for one image.
pub fn rows(model: &MobileVit, cfg: &ModelConfig) -> Vec<Row> {
    let size = cfg.image_size;
    let mut rows = vec![Row {
        name: "input".into(),
        kind: "Input".into(),
        shape: vec![1, 3, size, size],
        params: 0,
    }];
    let dims = |s: Shape| vec![1, s.channels, s.h, s.w];
    let kept = &mut Kept::default();
    let mut x = Shape {
        channels: 3,
        h: size,
        w: size,
    };
    x = conv(&model.stem, x, kept);
    rows.push(Row {
        name: "stem".into(),
        kind: "ConvNormAct".into(),
        shape: dims(x),
        params: model.stem.num_params(),
    });
    for (i, b) in model.blocks.iter().enumerate() {
        x = block(b, x, kept);
        let (kind, params) = match b {
            Block::Mv2(b) => ("InvertedResidual", b.num_params()),
            Block::Vit(b) => ("MobileViTBlock", b.num_params()),
        };
        rows.push(Row {
            name: format!("blocks.{i}"),
            kind: kind.into(),
            shape: dims(x),
            params,
        });
    }
    x = conv(&model.final_conv, x, kept);
    rows.push(Row {
        name: "final_conv".into(),
        kind: "ConvNormAct".into(),
        shape: dims(x),
        params: model.final_conv.num_params(),
    });
    rows.push(Row {
        name: "pool".into(),
        kind: "GlobalAvgPool".into(),
        shape: vec![1, x.channels],
        params: 0,
    });
    rows.push(Row {
        name: "head".into(),
        kind: "Linear".into(),
        shape: vec![1, cfg.num_classes],
        params: model.head.num_params(),
    });
    rows
}

/// An estimate of the memory a training step of `batch` images takes: the activations kept for
/// the backward pass (walked from the layers' shapes; attention weights counted when
/// `attention_stored`, as burn's ops keep them), plus weights, gradients, the optimizer's two
/// moments and the weights' moving average, plus the input batches the loader holds ahead.
pub fn training_bytes(
    model: &MobileVit,
    cfg: &ModelConfig,
    batch: usize,
    attention_stored: bool,
) -> u128 {
    let kept = &mut Kept {
        floats: 0.0,
        attention_stored,
    };
    let mut x = Shape {
        channels: 3,
        h: cfg.image_size,
        w: cfg.image_size,
    };
    x = conv(&model.stem, x, kept);
    for b in &model.blocks {
        x = block(b, x, kept);
    }
    conv(&model.final_conv, x, kept);
    let image = 3.0 * (cfg.image_size * cfg.image_size) as f64;
    let per_image = kept.floats + 6.0 * image;
    let params = count_params(model).total as f64;
    let floats = per_image * batch as f64 + 5.0 * params;
    (floats * 4.0).min(u128::MAX as f64) as u128
}

pub fn render(model: &MobileVit, cfg: &ModelConfig) -> String {
    let rows = rows(model, cfg);
    let counts = count_params(model);
    let mut out = String::new();
    let line = "─".repeat(72);
    let _ = writeln!(
        out,
        "Model: mobilevit {} ({} classes, {}x{})",
        cfg.label(),
        cfg.num_classes,
        cfg.image_size,
        cfg.image_size
    );
    let _ = writeln!(out, "{line}");
    let _ = writeln!(
        out,
        "{:<14}{:<20}{:<26}{:>12}",
        "Layer", "Type", "Output shape", "Param #"
    );
    let _ = writeln!(out, "{line}");
    for r in &rows {
        let shape = format!(
            "({})",
            r.shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(
            out,
            "{:<14}{:<20}{:<26}{:>12}",
            r.name,
            r.kind,
            shape,
            group(r.params)
        );
    }
    let _ = writeln!(out, "{line}");
    let _ = writeln!(out, "Total params: {}", group(counts.total));
    let _ = writeln!(out, "Trainable params: {}", group(counts.trainable));
    let _ = writeln!(out, "Non-trainable params: {}", group(counts.non_trainable));
    out
}

/// 1307621 -> "1,307,621".
pub fn group(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Flavour, Variant};

    #[test]
    fn groups_thousands() {
        assert_eq!(group(1_307_621), "1,307,621");
        assert_eq!(group(999), "999");
        assert_eq!(group(0), "0");
    }

    #[test]
    fn summary_rows_sum_to_the_total() {
        let cfg = ModelConfig {
            flavour: Flavour::Keras,
            variant: Variant::Xxs,
            num_classes: 5,
            image_size: 64,
            dropout: 0.1,
        };
        let device = Device::flex();
        let model = cfg.init(&device);
        let rows = rows(&model, &cfg);
        assert_eq!(rows.iter().map(|r| r.params).sum::<usize>(), 1_307_621);
        assert_eq!(rows.last().unwrap().shape, vec![1, 5]);
        // The shapes walked are the shapes a forward pass gives.
        let valid = model.valid();
        let mut x = Tensor::<4>::zeros([1, 3, 64, 64], &device);
        x = valid.stem.forward(x);
        assert_eq!(rows[1].shape, x.dims().to_vec());
        for (i, b) in valid.blocks.iter().enumerate() {
            x = b.forward(x);
            assert_eq!(rows[2 + i].shape, x.dims().to_vec(), "block {i}");
        }
        let text = render(&model, &cfg);
        assert!(text.contains("Total params: 1,307,621"), "{text}");
        assert!(text.contains("Non-trainable params: 2,544"), "{text}");
    }
}

#[cfg(test)]
mod estimate_tests {
    use super::*;
    use crate::config::{Flavour, Variant};

    #[test]
    fn the_training_estimate_grows_with_batch_and_pixels() {
        let cfg = |size| ModelConfig {
            flavour: Flavour::Paper,
            variant: Variant::Xxs,
            num_classes: 5,
            image_size: size,
            dropout: 0.0,
        };
        let device = Device::flex();
        let model = cfg(256).init(&device);
        let one = training_bytes(&model, &cfg(256), 1, false);
        let eight = training_bytes(&model, &cfg(256), 8, false);
        assert!(eight > 7 * one / 2 && eight < 8 * one, "{one} {eight}");
        // About 20-120 MB an image at 256 pixels (activations of a 1M-parameter MobileViT).
        assert!((20e6..120e6).contains(&(one as f64)), "{one}");
        let big = training_bytes(&model, &cfg(100_000), 1, false);
        assert!(big > 1_000_000_000_000, "{big}");
        assert!(
            training_bytes(&model, &cfg(256), 1, true) > one,
            "stored attention counts"
        );
    }
}
