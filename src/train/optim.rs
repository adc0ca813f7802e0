//! The optimizer a run trains with: Adam or AdamW with the run's weight decay, gradients clipped
//! by their global norm, the classifier and the backbone at their own rates. On the CPU it is
//! burn's `ModuleOptimizer`, whose saved state is rebuilt on the run's device (burn's loader puts
//! it on the process's default device, which in a GPU build is the GPU: resuming a CPU run there
//! would start the GPU backend, and fail without a driver). On cubecl devices it is
//! `gpu_optim::FusedAdam`: the same maths in a few multi-tensor launches, the same file format.

use super::grads;
use crate::config::{Optimizer, TrainSection};
use crate::model::MobileVit;
use anyhow::{Result, anyhow};
use burn::module::ParamGroup;
use burn::optim::GradientsParams;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{
    AdamConfig, AdamWConfig, DynOptimizer, DynState, LearningRate, ModuleOptimizer, StateSink,
    StateSource,
};
use burn::prelude::Tensor;
use burn::tensor::Device;
use burn::tensor::kind::BridgeTensor;
use std::path::Path;

/// The highest rank of a parameter of the models (convolution filters): a saved state of a
/// higher rank is not ours.
const MAX_RANK: usize = 4;

/// burn's optimizer `inner`, its state loaded onto `device`.
#[derive(Clone)]
struct OnDevice<O> {
    inner: O,
    device: Device,
}

impl<O: DynOptimizer> DynOptimizer for OnDevice<O> {
    fn step_dyn(
        &self,
        rank: usize,
        lr: LearningRate,
        tensor: BridgeTensor,
        grad: BridgeTensor,
        state: Option<DynState>,
    ) -> (BridgeTensor, Option<DynState>) {
        self.inner.step_dyn(rank, lr, tensor, grad, state)
    }

    fn to_device_dyn(&self, state: DynState, device: &Device) -> DynState {
        self.inner.to_device_dyn(state, device)
    }

    fn state_flatten(&self, prefix: &str, state: &DynState, out: &mut StateSink) {
        self.inner.state_flatten(prefix, state, out)
    }

    fn state_unflatten(
        &self,
        rank: usize,
        prefix: &str,
        src: &mut StateSource,
        _default: &Device,
    ) -> Option<DynState> {
        if rank == 0 || rank > MAX_RANK {
            return None;
        }
        self.inner.state_unflatten(rank, prefix, src, &self.device)
    }
}

/// The optimizer `t` asks for, with its weight decay, keeping its state on `device` (the plain
/// device the run trains on). Clipping is done apart (`grads`).
pub fn optimizer(t: &TrainSection, device: &Device) -> ModuleOptimizer {
    let eps = t.adam_eps as f32;
    match t.optimizer {
        Optimizer::Adam => {
            let config = AdamConfig::new().with_epsilon(eps).with_weight_decay(
                (t.weight_decay > 0.0).then(|| WeightDecayConfig::new(t.weight_decay as f32)),
            );
            on_device(
                ModuleOptimizer::from(config.build()),
                config.build(),
                device,
            )
        }
        Optimizer::AdamW => {
            let config = AdamWConfig::new()
                .with_epsilon(eps)
                .with_weight_decay(t.weight_decay as f32);
            on_device(
                ModuleOptimizer::from(config.build()),
                config.build(),
                device,
            )
        }
    }
}

/// `fallback` (burn wants a first group that matches every parameter) with `inner` on `device`
/// for every parameter (the last matching group wins).
fn on_device<O: DynOptimizer + Clone + 'static>(
    fallback: ModuleOptimizer,
    inner: O,
    device: &Device,
) -> ModuleOptimizer {
    fallback.with_group(
        ParamGroup::all(),
        OnDevice {
            inner,
            device: device.clone(),
        },
        None,
    )
}

/// Loads a saved optimizer state into `optim`. A file that is not an optimizer state of this
/// model is refused with its name (burn's reader can panic on foreign bytes: that is caught).
pub fn load(optim: ModuleOptimizer, path: &Path) -> Result<ModuleOptimizer> {
    let bytes = std::fs::read(path).map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        optim.from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
    }));
    match loaded {
        Ok(Ok(optim)) => Ok(optim),
        Ok(Err(e)) => Err(anyhow!("{}: not an optimizer state: {e}", path.display())),
        Err(_) => Err(anyhow!(
            "{}: not an optimizer state of this model (unreadable record)",
            path.display()
        )),
    }
}

/// The optimizer of a run, on the path its device takes.
pub enum Optim {
    Burn(ModuleOptimizer),
    /// The fused kernels, and the device (for burn's optimizer should a tensor not fit them).
    #[cfg(feature = "cube")]
    Fused(super::gpu_optim::FusedAdam, Device),
}

impl Optim {
    /// The optimizer `t` asks for on `device` (the plain device the run trains on): the fused
    /// kernels on cubecl devices (unless burn's ops are asked for), burn's elsewhere.
    pub fn new(t: &TrainSection, device: &Device) -> Self {
        #[cfg(feature = "cube")]
        if crate::model::fused::enabled() && crate::model::fused::gpu::is_cube(device) {
            return Optim::Fused(super::gpu_optim::FusedAdam::new(t), device.clone());
        }
        Optim::Burn(optimizer(t, device))
    }

    /// One optimizer update from `loss`: gradients clipped to `grad_clip_norm` (global norm),
    /// then the classifier at `lr` and the backbone at `lr * backbone_lr_scale`, or not at all
    /// when it is frozen.
    pub fn step(
        &mut self,
        t: &TrainSection,
        lr: f64,
        model: MobileVit,
        loss: Tensor<1>,
    ) -> MobileVit {
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        self.apply(t, lr, model, grads)
    }

    /// The update of [`Self::step`] from gradients already taken.
    pub fn apply(
        &mut self,
        t: &TrainSection,
        lr: f64,
        model: MobileVit,
        grads: GradientsParams,
    ) -> MobileVit {
        let backbone_lr = if t.freeze_backbone {
            0.0
        } else {
            lr * t.backbone_lr_scale
        };
        match self {
            Optim::Burn(optim) => burn_step(optim, t, lr, backbone_lr, model, grads),
            #[cfg(feature = "cube")]
            Optim::Fused(fused, device) => {
                let head: std::collections::HashSet<_> =
                    grads::param_ids(&model.head).into_iter().collect();
                match fused.step(model, &grads, backbone_lr, &head, lr, t.grad_clip_norm) {
                    Ok(model) => model,
                    // Not on cubecl in f32 after all: burn's optimizer from here on.
                    Err(model) => {
                        let mut burn = optimizer(t, device);
                        let model = burn_step(&mut burn, t, lr, backbone_lr, model, grads);
                        *self = Optim::Burn(burn);
                        model
                    }
                }
            }
        }
    }

    /// Saves the state (burn's optimizer file format on both paths); returns its sha256.
    pub fn save(&self, path: &Path) -> Result<String> {
        match self {
            Optim::Burn(optim) => crate::checkpoint::save_optimizer(optim, path),
            #[cfg(feature = "cube")]
            Optim::Fused(fused, _) => crate::checkpoint::write_atomic(path, &fused.to_bytes()?),
        }
    }

    /// Loads a saved state for `model` (which lives on `device`).
    pub fn load(self, path: &Path, model: &MobileVit, device: &Device) -> Result<Self> {
        #[cfg(not(feature = "cube"))]
        let _ = (model, device); // only the fused state is laid out by them
        match self {
            Optim::Burn(optim) => load(optim, path).map(Optim::Burn),
            #[cfg(feature = "cube")]
            Optim::Fused(fused, on) => fused
                .load(path, device, &grads::param_shapes(model))
                .map(|f| Optim::Fused(f, on)),
        }
    }
}

fn burn_step(
    optim: &mut ModuleOptimizer,
    t: &TrainSection,
    lr: f64,
    backbone_lr: f64,
    model: MobileVit,
    mut all: GradientsParams,
) -> MobileVit {
    if t.grad_clip_norm > 0.0 {
        grads::clip_global_norm(&mut all, &model, t.grad_clip_norm);
    }
    if backbone_lr == lr {
        return optim.step(lr, model, all);
    }
    let head = grads::split_off(&mut all, &model.head);
    let model = optim.step(lr, model, head);
    if backbone_lr == 0.0 {
        return model;
    }
    optim.step(backbone_lr, model, all)
}
