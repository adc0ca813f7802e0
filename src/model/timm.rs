//! Weight interchange with timm: load a timm-named safetensors state dict (`mobilevit_xxs`,
//! `mobilevit_xs`, `mobilevit_s`) into the paper flavour, and write one back out.

use super::MobileVit;
use anyhow::{Context, Result, bail};
use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The timm name of a parameter from its burn module path (e.g. `blocks.5.Vit.transformer.0.fc1.weight`).
pub fn timm_name(burn_path: &[String]) -> String {
    // Enum variant names are not part of timm's names.
    let parts: Vec<&str> = burn_path
        .iter()
        .map(String::as_str)
        .filter(|p| *p != "Mv2" && *p != "Vit")
        .collect();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < parts.len() {
        let p = parts[i];
        match p {
            "blocks" if i + 1 < parts.len() => {
                let idx: usize = parts[i + 1].parse().unwrap_or(usize::MAX);
                // blocks 0 | 1 2 3 | 4 5 | 6 7 | 8 9  ->  stages.S.B
                let (stage, block) = match idx {
                    0 => (0, 0),
                    1..=3 => (1, idx - 1),
                    _ => (2 + (idx - 4) / 2, (idx - 4) % 2),
                };
                out.push(format!("stages.{stage}.{block}"));
                i += 2;
                continue;
            }
            "expand" => out.push("conv1_1x1".into()),
            "depthwise" => out.push("conv2_kxk".into()),
            "project" => out.push("conv3_1x1".into()),
            "fc1" | "fc2" => out.push(format!("mlp.{p}")),
            "head" => out.push("head.fc".into()),
            "gamma" => out.push("weight".into()),
            "beta" => out.push("bias".into()),
            _ => out.push(p.to_string()),
        }
        i += 1;
    }
    let name = out.join(".");
    // timm's conv_1x1 in the MobileViT block is a bare nn.Conv2d.
    name.replace("conv_1x1.conv.", "conv_1x1.")
}

/// burn stores linear weights `[in, out]`; PyTorch `[out, in]`.
fn is_linear_weight(name: &str) -> bool {
    name.ends_with(".weight")
        && (name.contains(".qkv.")
            || name.contains(".proj.")
            || name.contains(".mlp.")
            || name.starts_with("head.fc"))
}

/// How tensors are named in a safetensors file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// timm's state-dict names and PyTorch layouts (linear weights `[out, in]`).
    Timm,
    /// mvlab's own module paths (`blocks.5.transformer.0.fc1.weight`) and burn layouts.
    Native,
}

/// mvlab's own name of a parameter: its module path without enum variant names.
pub fn native_name(burn_path: &[String]) -> String {
    burn_path
        .iter()
        .map(String::as_str)
        .filter(|p| *p != "Mv2" && *p != "Vit")
        .collect::<Vec<_>>()
        .join(".")
}

struct Loader<'a> {
    naming: Naming,
    path: Vec<String>,
    file: &'a SafeTensors<'a>,
    used: BTreeSet<String>,
    missing: Vec<String>,
    mismatched: Vec<String>,
    skipped_head: bool,
}

impl ModuleMapper for Loader<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = match self.naming {
            Naming::Timm => timm_name(&self.path),
            Naming::Native => native_name(&self.path),
        };
        let want: Vec<usize> = param.lazy_shape().as_slice().to_vec();
        let Ok(view) = self.file.tensor(&name) else {
            self.missing.push(name);
            return param;
        };
        self.used.insert(name.clone());
        let mut shape = view.shape().to_vec();
        let transpose = self.naming == Naming::Timm && is_linear_weight(&name) && shape.len() == 2;
        if transpose {
            shape.reverse();
        }
        if shape != want {
            if name.starts_with("head.") {
                // A different number of classes: keep the freshly initialised classifier.
                self.skipped_head = true;
            } else {
                self.mismatched
                    .push(format!("{name}: file {:?}, model {want:?}", view.shape()));
            }
            return param;
        }
        let values = match to_f32(view.dtype(), view.data()) {
            Ok(v) => v,
            Err(e) => {
                self.mismatched.push(format!("{name}: {e}"));
                return param;
            }
        };
        let device = param.lazy_device();
        param.map(|old| {
            let data = if transpose {
                TensorData::new(values, [shape[1], shape[0]])
            } else {
                TensorData::new(values, want.clone())
            };
            let mut t = Tensor::<D>::from_data(data, &device);
            if transpose {
                t = t.transpose();
            }
            if old.is_require_grad() {
                t.require_grad()
            } else {
                t
            }
        })
    }
}

fn to_f32(dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        other => bail!("unsupported dtype {other:?} (expected F32 or F64)"),
    })
}

pub struct LoadReport {
    pub loaded: usize,
    pub head_reinitialised: bool,
}

/// Loads a timm state dict into a paper-flavour model. Missing or mismatched tensors are an
/// error that names them; a classifier of another size is re-initialised.
pub fn load(model: MobileVit, file: &Path) -> Result<(MobileVit, LoadReport)> {
    load_with(model, file, Naming::Timm)
}

pub fn load_with(model: MobileVit, file: &Path, naming: Naming) -> Result<(MobileVit, LoadReport)> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{} is not a safetensors file", file.display()))?;
    let mut loader = Loader {
        naming,
        path: Vec::new(),
        file: &st,
        used: BTreeSet::new(),
        missing: Vec::new(),
        mismatched: Vec::new(),
        skipped_head: false,
    };
    let model = model.map(&mut loader);
    if !loader.missing.is_empty() || !loader.mismatched.is_empty() {
        let unused: Vec<String> = st
            .names()
            .into_iter()
            .filter(|n| !loader.used.contains(*n) && !n.ends_with("num_batches_tracked"))
            .map(|n| n.to_string())
            .collect();
        let mut msg = format!("{} does not fit this model", file.display());
        if !loader.missing.is_empty() {
            msg += &format!(
                "\n  missing tensors ({}): {}",
                loader.missing.len(),
                loader.missing.join(", ")
            );
        }
        if !loader.mismatched.is_empty() {
            msg += &format!("\n  mismatched tensors: {}", loader.mismatched.join("; "));
        }
        if !unused.is_empty() {
            msg += &format!(
                "\n  tensors in the file the model does not use: {}",
                unused.join(", ")
            );
        }
        bail!(msg);
    }
    let loaded = loader.used.len();
    Ok((
        model,
        LoadReport {
            loaded,
            head_reinitialised: loader.skipped_head,
        },
    ))
}

/// Collects the model's tensors under their timm names (for export and tests).
struct Collector {
    path: Vec<String>,
    out: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

impl ModuleVisitor for Collector {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let name = timm_name(&self.path);
        let mut t = param.val();
        if is_linear_weight(&name) && D == 2 {
            t = t.transpose();
        }
        let dims = t.dims().to_vec();
        let values = t
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("f32 data");
        self.out.insert(name, (dims, values));
    }
}

pub fn tensors(model: &MobileVit) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let mut c = Collector {
        path: Vec::new(),
        out: BTreeMap::new(),
    };
    model.visit(&mut c);
    c.out
}

/// The model's weights as the bytes of a timm-named safetensors file.
pub fn to_safetensors(model: &MobileVit) -> Result<Vec<u8>> {
    let tensors = tensors(model);
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, (shape, v))| (n, shape, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views = bytes
        .iter()
        .map(|(n, shape, b)| {
            let view = safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), b)?;
            Ok((n.clone(), view))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    Ok(safetensors::serialize(views, None)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Vec<String> {
        s.split('.').map(String::from).collect()
    }

    #[test]
    fn maps_burn_paths_to_timm_names() {
        assert_eq!(timm_name(&p("stem.bn.gamma")), "stem.bn.weight");
        assert_eq!(
            timm_name(&p("blocks.0.Mv2.expand.conv.weight")),
            "stages.0.0.conv1_1x1.conv.weight"
        );
        assert_eq!(
            timm_name(&p("blocks.3.Mv2.project.bn.running_var")),
            "stages.1.2.conv3_1x1.bn.running_var"
        );
        assert_eq!(
            timm_name(&p("blocks.5.Vit.conv_1x1.conv.weight")),
            "stages.2.1.conv_1x1.weight"
        );
        assert_eq!(
            timm_name(&p("blocks.9.Vit.transformer.2.fc1.bias")),
            "stages.4.1.transformer.2.mlp.fc1.bias"
        );
        assert_eq!(
            timm_name(&p("blocks.7.Vit.norm.gamma")),
            "stages.3.1.norm.weight"
        );
        assert_eq!(
            timm_name(&p("blocks.7.Vit.transformer.0.norm1.beta")),
            "stages.3.1.transformer.0.norm1.bias"
        );
        assert_eq!(timm_name(&p("head.weight")), "head.fc.weight");
    }
}
