//! The fused CPU kernels against burn's own ops on whole models: the same loss, the same
//! gradients, the same training trajectory (burn's ops through `fused::burn_ops`, a guard of
//! this thread alone).

use burn::optim::{AdamConfig, GradientsParams};

use crate::common::{max_abs_diff, values};
use burn::prelude::*;
use mvlab::config::{Flavour, Variant};
use mvlab::model::loss::smoothed_cross_entropy;
use mvlab::model::{MobileVit, ModelConfig, fused};

fn batch(device: &Device, size: usize) -> (Tensor<4>, Tensor<1, Int>) {
    let x = mvlab::model::draws::Draws::new(3).tensor(
        [4, 3, size, size],
        burn::tensor::Distribution::Uniform(0.0, 1.0),
        device,
    );
    let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 0], [4]), device);
    (x, y)
}

/// Loss and a few parameters' gradients (stem, a depthwise filter, a LayerNorm, the head).
fn loss_and_grads(model: &MobileVit, x: Tensor<4>, y: Tensor<1, Int>) -> Vec<Vec<f32>> {
    let loss = smoothed_cross_entropy(model.forward(x), y, 0.1);
    let l = values(loss.clone());
    let g = loss.backward();
    let mvlab::model::Block::Mv2(irb) = &model.blocks[1] else {
        panic!()
    };
    let vit = model.blocks.iter().find_map(|b| match b {
        mvlab::model::Block::Vit(v) => Some(v),
        _ => None,
    });
    let t = &vit.unwrap().transformer[0];
    vec![
        l,
        values(model.stem.conv.weight.grad(&g).unwrap()),
        values(irb.depthwise.conv.weight.grad(&g).unwrap()),
        values(t.norm1.gamma.grad(&g).unwrap()),
        values(t.attn.qkv.weight.grad(&g).unwrap()),
        values(model.head.weight.grad(&g).unwrap()),
    ]
}

fn relative(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    max_abs_diff(a, b) / scale
}

#[test]
fn fused_kernels_match_burn_ops_on_whole_models() {
    let device = Device::flex().autodiff();
    for flavour in [Flavour::Keras, Flavour::Paper] {
        for size in [32, 64] {
            let cfg = ModelConfig {
                flavour,
                variant: Variant::Xxs,
                num_classes: 3,
                image_size: size,
                dropout: 0.0,
            };
            let model = cfg.init_seeded(1, &device);
            let (x, y) = batch(&device, size);
            let burn_ops = fused::burn_ops();
            let reference = loss_and_grads(&model, x.clone(), y.clone());
            drop(burn_ops);
            let fast = loss_and_grads(&model, x, y);
            for (i, (a, b)) in fast.iter().zip(&reference).enumerate() {
                let r = relative(a, b);
                assert!(
                    r < 2e-3,
                    "{flavour:?} at {size}: quantity {i} differs by {r} (relative)"
                );
            }
        }
    }

    // Five Adam steps each way: the losses stay together.
    let cfg = ModelConfig {
        flavour: Flavour::Keras,
        variant: Variant::Xxs,
        num_classes: 3,
        image_size: 32,
        dropout: 0.0,
    };
    let mut curves = Vec::new();
    for on in [false, true] {
        let _burn_ops = (!on).then(fused::burn_ops);
        let mut model = cfg.init_seeded(1, &device);
        let mut optim = AdamConfig::new().with_epsilon(1e-7).init();
        let (x, y) = batch(&device, 32);
        let mut losses = Vec::new();
        for _ in 0..5 {
            let loss = smoothed_cross_entropy(model.forward(x.clone()), y.clone(), 0.1);
            losses.push(loss.clone().into_scalar::<f32>());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(2e-3, model, grads);
        }
        curves.push(losses);
    }
    assert!(relative(&curves[1], &curves[0]) < 1e-2, "{curves:?}");
}
