//! The optimizer a run trains with: burn's Adam or AdamW with the run's weight decay, whose saved
//! state is rebuilt on the run's device. (burn's loader puts it on the process's default device,
//! which in a GPU build is the GPU: resuming a CPU run there would start the GPU backend, and
//! fail without a driver.)

use crate::config::{Optimizer, TrainSection};
use anyhow::{Result, anyhow};
use burn::module::ParamGroup;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{
    AdamConfig, AdamWConfig, DynOptimizer, DynState, LearningRate, ModuleOptimizer, StateSink,
    StateSource,
};
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
