//! Keras-style model summary: layer, type, output shape, parameters, and the totals split into
//! trainable and non-trainable (BatchNorm running statistics).

use super::{Block, MobileVit, ModelConfig};
use burn::module::{ModuleVisitor, Param};
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

/// Runs one image through the model, recording each top-level layer's output shape.
pub fn rows(model: &MobileVit, cfg: &ModelConfig, device: &Device) -> Vec<Row> {
    let model = model.valid();
    let size = cfg.image_size;
    let mut rows = vec![Row {
        name: "input".into(),
        kind: "Input".into(),
        shape: vec![1, 3, size, size],
        params: 0,
    }];
    let mut x = Tensor::<4>::zeros([1, 3, size, size], device);
    x = model.stem.forward(x);
    rows.push(Row {
        name: "stem".into(),
        kind: "ConvNormAct".into(),
        shape: x.dims().to_vec(),
        params: model.stem.num_params(),
    });
    for (i, block) in model.blocks.iter().enumerate() {
        x = block.forward(x);
        let (kind, params) = match block {
            Block::Mv2(b) => ("InvertedResidual", b.num_params()),
            Block::Vit(b) => ("MobileViTBlock", b.num_params()),
        };
        rows.push(Row {
            name: format!("blocks.{i}"),
            kind: kind.into(),
            shape: x.dims().to_vec(),
            params,
        });
    }
    x = model.final_conv.forward(x);
    let [b, c, _, _] = x.dims();
    rows.push(Row {
        name: "final_conv".into(),
        kind: "ConvNormAct".into(),
        shape: x.dims().to_vec(),
        params: model.final_conv.num_params(),
    });
    rows.push(Row {
        name: "pool".into(),
        kind: "GlobalAvgPool".into(),
        shape: vec![b, c],
        params: 0,
    });
    rows.push(Row {
        name: "head".into(),
        kind: "Linear".into(),
        shape: vec![b, cfg.num_classes],
        params: model.head.num_params(),
    });
    rows
}

pub fn render(model: &MobileVit, cfg: &ModelConfig, device: &Device) -> String {
    let rows = rows(model, cfg, device);
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
        let rows = rows(&model, &cfg, &device);
        assert_eq!(rows.iter().map(|r| r.params).sum::<usize>(), 1_307_621);
        assert_eq!(rows.last().unwrap().shape, vec![1, 5]);
        let text = render(&model, &cfg, &device);
        assert!(text.contains("Total params: 1,307,621"), "{text}");
        assert!(text.contains("Non-trainable params: 2,544"), "{text}");
    }
}
