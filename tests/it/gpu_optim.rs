//! The fused multi-tensor optimizer and moving average (cubecl devices) against burn's on the
//! same device (cubecl's CPU runtime here): the same gradients in, the same weights out over
//! three steps, for Adam with an L2 penalty and for AdamW with decoupled decay, global-norm
//! clipping and a classifier at its own rate; and its state file read back by both optimizers.

use burn::optim::GradientsParams;
use burn::prelude::*;
use mvlab::config::{Optimizer, TrainSection};
use mvlab::model::loss::smoothed_cross_entropy;
use mvlab::model::{MobileVit, ModelConfig};
use mvlab::train::average::WeightAverage;
use mvlab::train::optim::Optim;

fn device() -> Device {
    crate::common::cube_setup();
    mvlab::device::select("cube-cpu")
        .unwrap_or_else(|e| panic!("{e}"))
        .device
}

fn config() -> ModelConfig {
    ModelConfig {
        flavour: mvlab::config::Flavour::Paper,
        variant: mvlab::config::Variant::Xxs,
        num_classes: 3,
        image_size: 32,
        dropout: 0.0,
    }
}

/// A fresh model with the weights of seed 1 (models of their own: clones share BatchNorm's
/// running statistics).
fn model(device: &Device) -> MobileVit {
    let cpu = Device::flex().autodiff();
    config().init_seeded(1, &cpu).fork(device)
}

/// Every float tensor of a model, concatenated.
fn all_values(m: &MobileVit) -> Vec<f32> {
    use burn::module::{Module, ModuleVisitor, Param};
    struct V(Vec<f32>);
    impl ModuleVisitor for V {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            self.0.extend(crate::common::values(p.val()));
        }
    }
    let mut v = V(Vec::new());
    m.visit(&mut v);
    v.0
}

/// A copy of `grads` for `m`'s parameters (burn's gradient sets are consumed by a step).
fn copy(grads: &GradientsParams, m: &MobileVit) -> GradientsParams {
    use burn::module::{Module, ModuleVisitor, Param};
    struct C<'a>(&'a GradientsParams, GradientsParams);
    impl ModuleVisitor for C<'_> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            if let Some(g) = self.0.get::<D>(p.id) {
                self.1.register(p.id, g);
            }
        }
    }
    let mut c = C(grads, GradientsParams::new());
    m.visit(&mut c);
    c.1
}

fn worst_relative(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1e-3))
        .fold(0.0, f32::max)
}

#[test]
fn fused_optimizer_and_average_match_burns_on_the_same_device() {
    let device = device().autodiff();
    // Gradients of one batch, reused for every step and both optimizers: only the updates differ.
    let probe = model(&device);
    let x = mvlab::model::draws::Draws::new(3).tensor(
        [2, 3, 32, 32],
        burn::tensor::Distribution::Uniform(0.0, 1.0),
        &device,
    );
    let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 2], [2]), &device);
    let loss = smoothed_cross_entropy(probe.forward(x), y, 0.1);
    let grads = GradientsParams::from_grads(loss.backward(), &probe);

    let cases = [
        TrainSection {
            optimizer: Optimizer::Adam,
            weight_decay: 1e-4,
            ..TrainSection::default()
        },
        TrainSection {
            optimizer: Optimizer::AdamW,
            weight_decay: 0.05,
            grad_clip_norm: 0.05,
            backbone_lr_scale: 0.1,
            ..TrainSection::default()
        },
    ];
    let start = all_values(&probe);
    let plain = device.clone().inner();
    for t in &cases {
        let mut burn = Optim::Burn(mvlab::train::optim::optimizer(t, &plain));
        let mut fused = Optim::new(t, &plain);
        assert!(
            matches!(fused, Optim::Fused(..)),
            "the fused path on cubecl"
        );
        // The probe's parameters (the gradients are keyed by their ids).
        let (mut a, mut b) = (probe.clone(), probe.clone());
        let mut avg_a = WeightAverage::start(&a, model(&device), 0.9);
        let mut avg_b = WeightAverage::start(&b, model(&device), 0.9);
        for step in 0..3 {
            a = burn.apply(t, 2e-3, a, copy(&grads, &probe));
            b = fused.apply(t, 2e-3, b, copy(&grads, &probe));
            {
                // burn's per-tensor update, as the CPU path does it.
                let _burn_ops = mvlab::model::fused::burn_ops();
                avg_a.update(&a, step);
            }
            avg_b.update(&b, step);
        }
        let weights = worst_relative(&all_values(&b), &all_values(&a));
        assert!(weights <= 1e-5, "{t:?}: weights differ by {weights:e}");
        let average = worst_relative(&all_values(&avg_b.model), &all_values(&avg_a.model));
        assert!(average <= 1e-5, "{t:?}: averages differ by {average:e}");
        assert!(all_values(&b) != start, "the weights moved");

        // The fused state, saved in burn's format, resumes on either path to the same step.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("optim.bpk");
        fused.save(&file).unwrap();
        let from_fused = Optim::new(t, &plain).load(&file, &b, &plain).unwrap();
        let from_burn = Optim::Burn(mvlab::train::optim::optimizer(t, &plain))
            .load(&file, &b, &plain)
            .unwrap();
        let mut next = Vec::new();
        for mut optim in [from_fused, from_burn] {
            let stepped = optim.apply(t, 2e-3, b.clone(), copy(&grads, &probe));
            next.push(all_values(&stepped));
        }
        let resumed = worst_relative(&next[0], &next[1]);
        assert!(
            resumed <= 1e-5,
            "{t:?}: resumed steps differ by {resumed:e}"
        );
    }
}
