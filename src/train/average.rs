//! An exponential moving average of the weights being trained (timm's `--model-ema`, Keras'
//! `use_ema`), evaluated and checkpointed in their place: it smooths out the step-to-step noise
//! of a constant learning rate, so the last epoch's model is about as good as the best one.
//! Training itself is untouched. The decay warms up as TensorFlow's
//! `ExponentialMovingAverage(num_updates=...)` does, `min(decay, (1 + n) / (10 + n))`, so a short
//! run averages its recent steps rather than its random start. BatchNorm's running statistics are
//! averaged too, as timm does; recalibration, when on, replaces them before each evaluation.

use crate::model::MobileVit;
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use std::any::Any;

/// The weight the average keeps at update `updates_done + 1`.
pub fn decay_at(decay: f64, updates_done: usize) -> f64 {
    decay.min((1 + updates_done) as f64 / (10 + updates_done) as f64)
}

/// The averaged model, with state of its own (clones of a module share their BatchNorm
/// statistics, so it is rebuilt from a record rather than cloned).
pub struct WeightAverage {
    pub model: MobileVit,
    decay: f64,
}

impl WeightAverage {
    /// Starts the average at `trained`'s weights; `blank` is a model of the same architecture
    /// on the training device, whose values are replaced.
    pub fn start(trained: &MobileVit, blank: MobileVit, decay: f64) -> Self {
        Self::resume(blank.load_record(trained.clone().into_record()), decay)
    }

    /// Continues an average saved earlier. (Its parameters keep their training flags: BatchNorm
    /// recalibration needs the training-mode forward pass.)
    pub fn resume(model: MobileVit, decay: f64) -> Self {
        Self { model, decay }
    }

    /// Folds in the weights after one more step; `updates_done` counts the steps before it.
    pub fn update(&mut self, trained: &MobileVit, updates_done: usize) {
        let keep = decay_at(self.decay, updates_done);
        // On cubecl devices: a few multi-tensor launches instead of three per tensor.
        #[cfg(feature = "cube")]
        if crate::model::fused::enabled()
            && crate::model::fused::gpu::is_cube(&trained.head.weight.device())
        {
            match super::gpu_optim::blend(self.model.clone(), trained, keep) {
                Ok(model) => {
                    self.model = model;
                    return;
                }
                Err(_) => {} // a tensor off cubecl or not f32: the plain update below
            }
        }
        let mut current = Collect(Vec::new());
        trained.visit(&mut current);
        let mut blend = Blend {
            current: current.0.into_iter(),
            keep,
        };
        self.model = self.model.clone().map(&mut blend);
    }
}

/// Every float tensor of a model (weights and running statistics, the latter as of the step
/// before: burn applies a thread's update to the visible value at its next one), in visiting
/// order.
struct Collect(Vec<Box<dyn Any>>);

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(Box::new(param.val().detach()));
    }
}

/// `average * keep + current * (1 - keep)`, tensor by tensor in the same visiting order.
struct Blend {
    current: std::vec::IntoIter<Box<dyn Any>>,
    keep: f64,
}

impl ModuleMapper for Blend {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let current = *self
            .current
            .next()
            .and_then(|t| t.downcast::<Tensor<D>>().ok())
            .expect("the average and the trained model have the same architecture");
        let keep = self.keep;
        param.map(|avg| {
            avg.mul_scalar(keep)
                .add(current.mul_scalar(1.0 - keep))
                .detach()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn decay_warms_up_as_tensorflow_does() {
        assert!((decay_at(0.999, 0) - 0.1).abs() < 1e-12);
        assert!((decay_at(0.999, 10) - 11.0 / 20.0).abs() < 1e-12);
        assert!((decay_at(0.999, 100_000) - 0.999).abs() < 1e-12);
        assert!((decay_at(0.5, 100) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn the_average_follows_the_formula_and_owns_its_statistics() {
        let device = Device::flex().autodiff();
        let cfg = ModelConfig::tiny();
        let a = cfg.init_seeded(3, &device);
        let mut avg = WeightAverage::start(&a, cfg.init(&device), 0.999);
        assert_eq!(
            values(avg.model.head.weight.val()),
            values(a.head.weight.val())
        );
        let b = cfg.init_seeded(4, &device);
        avg.update(&b, 10);
        let keep = 11.0f32 / 20.0;
        let (wa, wb, wavg) = (
            values(a.head.weight.val()),
            values(b.head.weight.val()),
            values(avg.model.head.weight.val()),
        );
        for ((x, y), z) in wa.iter().zip(&wb).zip(&wavg) {
            assert!(
                (x * keep + y * (1.0 - keep) - z).abs() < 1e-6,
                "{x} {y} {z}"
            );
        }
        // Running statistics are averaged, in the average's own state: the trained model's
        // are not touched.
        let stats = |m: &MobileVit| values(m.stem.bn.as_ref().unwrap().running_var.value_sync());
        let before = stats(&b);
        avg.update(&b, 11);
        assert_eq!(stats(&b), before);
        let x = crate::model::draws::Draws::new(3).tensor(
            [2, 3, 32, 32],
            burn::tensor::Distribution::Uniform(0.0, 1.0),
            &device,
        );
        avg.model.recalibrate_batch_norm([x]);
        assert_eq!(
            stats(&b),
            before,
            "recalibrating the average leaves training alone"
        );
        assert_ne!(stats(&avg.model), before);
    }
}
