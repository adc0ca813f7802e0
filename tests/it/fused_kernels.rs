//! Each fused CPU op against burn's own composition of the same maths: outputs and gradients,
//! on contiguous and strided inputs, for the shapes and paddings the models use and odd ones.

use burn::nn::LinearConfig;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2dConfig;
use burn::prelude::*;
use burn::tensor::{Distribution, Gradients};
use mvlab::model::draws::Draws;
use mvlab::model::fused::{
    attention, batch_norm_train, conv2d, dropout, layer_norm, linear, softmax_dropout, swish,
};

fn vals<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

fn assert_close<const D: usize>(what: &str, a: Tensor<D>, b: Tensor<D>, tol: f32) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    let (a, b) = (vals(a), vals(b));
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= tol * scale,
        "{what}: max difference {worst} (scale {scale})"
    );
}

fn input<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<D> {
    let device = Device::flex().autodiff();
    Draws::new(seed)
        .tensor(shape, Distribution::Normal(0.5, 2.0), &device)
        .require_grad()
}

/// A fixed upstream gradient, so each output element weighs differently.
fn weights<const D: usize>(shape: [usize; D]) -> Tensor<D> {
    let device = Device::flex().autodiff();
    Draws::new(99).tensor(shape, Distribution::Uniform(-1.0, 1.0), &device)
}

/// Checks a fused op's output against burn's (`reference`, with swish applied when `act`), then
/// backpropagates the same weighted sum of each: (fused, reference) gradients.
fn forward_then_backward<const D: usize>(
    what: &str,
    y: Tensor<D>,
    reference: Tensor<D>,
    act: bool,
) -> (Gradients, Gradients) {
    let reference = if act {
        burn::tensor::activation::silu(reference)
    } else {
        reference
    };
    assert_close(
        &format!("{what}: forward"),
        y.clone(),
        reference.clone(),
        1e-5,
    );
    let w = weights(reference.dims());
    (
        (y * w.clone()).sum().backward(),
        (reference * w).sum().backward(),
    )
}

#[test]
fn swish_matches_silu_including_on_a_transposed_view() {
    let x = input([6, 40], 1);
    let w = weights([40, 6]);
    let fused = swish(x.clone().transpose());
    let reference = burn::tensor::activation::silu(x.clone().transpose());
    assert_close("forward", fused.clone(), reference.clone(), 1e-6);
    let gf = x.grad(&(fused * w.clone()).sum().backward()).unwrap();
    let gr = x.grad(&(reference * w).sum().backward()).unwrap();
    assert_close("gradient", gf, gr, 1e-5);
}

#[test]
fn batch_norm_with_and_without_swish_matches_burn() {
    for act in [false, true] {
        let x = input([3, 4, 5, 7], 2);
        let device = x.device();
        let gamma = Tensor::<1>::from_floats([1.0, 0.5, -2.0, 1.5], &device).require_grad();
        let beta = Tensor::<1>::from_floats([0.0, 0.3, 1.0, -0.5], &device).require_grad();
        let w = weights([3, 4, 5, 7]);
        let (y, mean, var) = batch_norm_train(x.clone(), gamma.clone(), beta.clone(), 1e-3, act);
        let r =
            burn::tensor::module::batch_norm_train(x.clone(), gamma.clone(), beta.clone(), 1e-3);
        let yr = if act {
            burn::tensor::activation::silu(r.output)
        } else {
            r.output
        };
        assert_close("forward", y.clone(), yr.clone(), 1e-5);
        assert_close("mean", mean, r.mean, 1e-5);
        assert_close("variance", var, r.variance, 1e-5);
        let gf = (y * w.clone()).sum().backward();
        let gr = (yr * w).sum().backward();
        for (name, t) in [("gamma", &gamma), ("beta", &beta)] {
            assert_close(name, t.grad(&gf).unwrap(), t.grad(&gr).unwrap(), 1e-4);
        }
        assert_close("x", x.grad(&gf).unwrap(), x.grad(&gr).unwrap(), 1e-4);
    }
}

#[test]
fn layer_norm_matches_burn() {
    let x = input([2, 9, 24], 3);
    let device = x.device();
    let mut draws = Draws::new(4);
    let gamma = draws
        .tensor([24], Distribution::Normal(1.0, 0.5), &device)
        .require_grad();
    let beta = draws
        .tensor([24], Distribution::Normal(0.0, 0.5), &device)
        .require_grad();
    let w = weights([2, 9, 24]);
    let y = layer_norm(x.clone(), gamma.clone(), beta.clone(), 1e-6);
    let yr = burn::tensor::module::layer_norm(x.clone(), gamma.clone(), Some(beta.clone()), 1e-6);
    assert_close("forward", y.clone(), yr.clone(), 1e-5);
    let gf = (y * w.clone()).sum().backward();
    let gr = (yr * w).sum().backward();
    assert_close("x", x.grad(&gf).unwrap(), x.grad(&gr).unwrap(), 1e-4);
    for (name, t) in [("gamma", &gamma), ("beta", &beta)] {
        assert_close(name, t.grad(&gf).unwrap(), t.grad(&gr).unwrap(), 1e-4);
    }
}

#[test]
fn dropout_keeps_the_expectation_follows_the_seed_and_masks_the_gradient() {
    let shape = [4, 3, 70, 90];
    let n = (4 * 3 * 70 * 90) as f64;
    let x = input(shape, 8);
    let w = weights(shape);
    let y = dropout(x.clone(), 0.1, 3);
    let kept = y.clone().detach().not_equal_elem(0.0).float();
    let dropped = 1.0 - vals(kept.clone()).iter().sum::<f32>() as f64 / n;
    assert!((dropped - 0.1).abs() < 0.005, "dropped {dropped}");
    let yr = x.clone() * kept.div_scalar(0.9);
    assert_close("forward", y.clone(), yr.clone(), 1e-6);
    let gf = x.grad(&(y * w.clone()).sum().backward()).unwrap();
    let gr = x.grad(&(yr * w).sum().backward()).unwrap();
    assert_close("gradient", gf, gr, 1e-6);
    let a = vals(dropout(x.clone(), 0.1, 3));
    assert_eq!(a, vals(dropout(x.clone(), 0.1, 3)), "same seed, same mask");
    assert_ne!(a, vals(dropout(x, 0.1, 4)), "another seed, another mask");
}

#[test]
fn softmax_dropout_matches_softmax_times_its_mask() {
    let shape = [2, 3, 50, 64];
    for drop in [0.0, 0.25] {
        let x = input(shape, 4);
        let w = weights(shape);
        let y = softmax_dropout(x.clone(), 0.125, drop, 7);
        let p = burn::tensor::activation::softmax(x.clone().mul_scalar(0.125), 3);
        // The mask the op drew, read back from its output.
        let kept = y.clone().detach().not_equal_elem(0.0).float();
        let yr = p * kept.clone().div_scalar(1.0 - drop);
        assert_close("forward", y.clone(), yr.clone(), 1e-5);
        let dropped = 1.0 - vals(kept).iter().sum::<f32>() as f64 / (2 * 3 * 50 * 64) as f64;
        assert!(
            (dropped - drop).abs() < 0.02,
            "dropped {dropped} for {drop}"
        );
        let gf = x.grad(&(y * w.clone()).sum().backward()).unwrap();
        let gr = x.grad(&(yr * w).sum().backward()).unwrap();
        assert_close("gradient", gf, gr, 1e-4);
    }
    let x = input(shape, 4);
    let a = vals(softmax_dropout(x.clone(), 1.0, 0.5, 11));
    let b = vals(softmax_dropout(x.clone(), 1.0, 0.5, 11));
    let c = vals(softmax_dropout(x, 1.0, 0.5, 12));
    assert_eq!(a, b, "same seed, same mask");
    assert_ne!(a, c, "another seed, another mask");
}

/// The fused path of [`conv2d`] against burn's `Conv2d::forward`, gradients included.
/// With swish fused in when the conv has a bias (so both cases are covered).
fn check_conv(cfg: Conv2dConfig, shape: [usize; 4], what: &str) {
    let device = Device::flex().autodiff();
    let conv = Draws::new(5).conv(cfg.init(&device));
    let act = conv.bias.is_some();
    let x = input(shape, 6);
    let y = conv2d(&conv, x.clone(), act);
    let (gf, gr) = forward_then_backward(what, y, conv.forward(x.clone()), act);
    assert_close(
        &format!("{what}: x"),
        x.grad(&gf).unwrap(),
        x.grad(&gr).unwrap(),
        1e-4,
    );
    let (wf, wr) = (
        conv.weight.grad(&gf).unwrap(),
        conv.weight.grad(&gr).unwrap(),
    );
    assert_close(&format!("{what}: weight"), wf, wr, 1e-4);
    if let Some(b) = &conv.bias {
        let (bf, br) = (b.grad(&gf).unwrap(), b.grad(&gr).unwrap());
        assert_close(&format!("{what}: bias"), bf, br, 1e-4);
    }
}

#[test]
fn depthwise_convolutions_match_burn() {
    for (size, stride, pad, bias) in [
        (9, 1, PaddingConfig2d::Same, false),
        (8, 2, PaddingConfig2d::Same, true),
        (9, 2, PaddingConfig2d::Same, false),
        (8, 1, PaddingConfig2d::Explicit(1, 1, 1, 1), true),
        (9, 2, PaddingConfig2d::Explicit(1, 1, 1, 1), false),
        (7, 2, PaddingConfig2d::Valid, true),
    ] {
        let cfg = Conv2dConfig::new([6, 6], [3, 3])
            .with_groups(6)
            .with_stride([stride, stride])
            .with_padding(pad.clone())
            .with_bias(bias);
        check_conv(
            cfg,
            [3, 6, size, size + 1],
            &format!("{size} s{stride} {pad:?}"),
        );
    }
}

#[test]
fn dense_convolutions_match_burn() {
    for (batch, bias) in [(1, true), (3, false), (4, true)] {
        let cfg = Conv2dConfig::new([5, 7], [1, 1]).with_bias(bias);
        check_conv(cfg, [batch, 5, 6, 9], &format!("1x1, batch {batch}"));
    }
    for (size, stride, pad) in [
        (9, 1, PaddingConfig2d::Same),
        (8, 2, PaddingConfig2d::Same),
        (9, 2, PaddingConfig2d::Explicit(1, 1, 1, 1)),
        (7, 1, PaddingConfig2d::Valid),
    ] {
        let cfg = Conv2dConfig::new([3, 4], [3, 3])
            .with_stride([stride, stride])
            .with_padding(pad.clone())
            .with_bias(stride == 1);
        check_conv(
            cfg,
            [3, 3, size, size + 2],
            &format!("3x3 {size} s{stride} {pad:?}"),
        );
    }
    let strided = Conv2dConfig::new([2, 3], [1, 1]).with_stride([2, 2]);
    check_conv(strided, [2, 2, 7, 6], "1x1 stride 2");
    // Odd pixel counts, one image with the threads inside its product, a wider inner dimension.
    check_conv(Conv2dConfig::new([6, 9], [1, 1]), [2, 6, 5, 5], "1x1 25 px");
    check_conv(
        Conv2dConfig::new([16, 12], [1, 1]),
        [1, 16, 24, 24],
        "1x1 576 px, batch 1",
    );
    let wide = Conv2dConfig::new([32, 4], [3, 3]).with_padding(PaddingConfig2d::Same);
    check_conv(wide, [1, 32, 6, 6], "3x3 over 32 channels");
    let five = Conv2dConfig::new([4, 5], [5, 5]).with_padding(PaddingConfig2d::Same);
    check_conv(five, [2, 4, 7, 6], "5x5 same");
    // Stride 1 with uneven padding: an even filter's "same", and explicit sides.
    let even = Conv2dConfig::new([3, 4], [4, 4]).with_padding(PaddingConfig2d::Same);
    check_conv(even, [2, 3, 7, 6], "4x4 same");
    let sides = Conv2dConfig::new([3, 2], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(2, 0, 1, 2))
        .with_bias(true);
    check_conv(sides, [2, 3, 6, 7], "3x3 explicit (2, 0, 1, 2)");
}

#[test]
fn inference_without_autodiff_uses_the_same_kernels() {
    let device = Device::flex();
    let mut draws = Draws::new(6);
    let conv = draws.conv(
        Conv2dConfig::new([4, 4], [3, 3])
            .with_groups(4)
            .init(&device),
    );
    let x = draws.tensor([2, 4, 10, 10], Distribution::Default, &device);
    let y = conv.forward(x.clone());
    assert_close(
        "depthwise",
        conv2d(&conv, x.clone(), false),
        y.clone(),
        1e-5,
    );
    let with_act = burn::tensor::activation::silu(y);
    assert_close(
        "depthwise + swish",
        conv2d(&conv, x.clone(), true),
        with_act,
        1e-5,
    );
    let silu = burn::tensor::activation::silu(x.clone());
    assert_close("swish", swish(x), silu, 1e-6);
}

/// Attention as the model wrote it before the fused kernel: split the packed projections into
/// heads, explicit weights through `softmax_dropout` (same seed, so the same mask), merge.
fn attention_reference(qkv: Tensor<3>, heads: usize, dh: usize, drop: f64, seed: u64) -> Tensor<3> {
    let [b, t, _] = qkv.dims();
    let qkv = qkv.reshape([b, t, 3, heads, dh]).permute([2, 0, 3, 1, 4]);
    let part = |i: usize| qkv.clone().narrow(0, i, 1).squeeze_dim::<4>(0);
    let scores = part(0).matmul(part(1).swap_dims(2, 3));
    let p = softmax_dropout(scores, 1.0 / (dh as f64).sqrt(), drop, seed);
    p.matmul(part(2))
        .swap_dims(1, 2)
        .reshape([b, t, heads * dh])
}

#[test]
fn attention_matches_the_explicit_form_with_its_dropout_mask() {
    // 300 tokens: several query blocks, the last one short; 7 tokens: one block.
    for (b, t, heads, dh) in [(2, 300, 2, 8), (3, 7, 4, 5)] {
        for drop in [0.0, 0.2] {
            let qkv = input([b, t, 3 * heads * dh], 8);
            let y = attention(qkv.clone(), heads, dh, drop, 21);
            let yr = attention_reference(qkv.clone(), heads, dh, drop, 21);
            let what = format!("{b}x{t}, {heads} heads of {dh}, dropout {drop}");
            let (gf, gr) = forward_then_backward(&what, y, yr, false);
            let (gf, gr) = (qkv.grad(&gf).unwrap(), qkv.grad(&gr).unwrap());
            assert_close(&format!("{what}: gradient"), gf, gr, 1e-4);
        }
    }
    // A strided input (a transposed view) is read correctly.
    let x = input([2, 24, 9], 9);
    let qkv = x.swap_dims(1, 2);
    assert_close(
        "strided",
        attention(qkv.clone(), 2, 4, 0.0, 0),
        attention_reference(qkv, 2, 4, 0.0, 0),
        1e-5,
    );
    // Inference (no autodiff) against burn's attention op.
    let device = Device::flex();
    let qkv = Draws::new(7).tensor([2, 40, 3 * 3 * 6], Distribution::Default, &device);
    let split = qkv
        .clone()
        .reshape([2, 40, 3, 3, 6])
        .permute([2, 0, 3, 1, 4]);
    let part = |i: usize| split.clone().narrow(0, i, 1).squeeze_dim::<4>(0);
    let reference = burn::tensor::module::attention(
        part(0),
        part(1),
        part(2),
        None,
        None,
        burn::tensor::ops::AttentionModuleOptions::default(),
    )
    .swap_dims(1, 2)
    .reshape([2, 40, 18]);
    assert_close("inference", attention(qkv, 3, 6, 0.0, 0), reference, 1e-5);
}

#[test]
fn linear_with_and_without_swish_matches_burn() {
    // Two identical layers and inputs, one per path: burn's linear op and a second backward
    // pass through the same parameters do not mix (its tape is consumed).
    let device = Device::flex().autodiff();
    let layer = Draws::new(8).linear(LinearConfig::new(20, 13).init(&device));
    // A copy with fresh parameters of the same values, and a fresh copy of an input.
    let copy = |t: &Tensor<2>| Tensor::<2>::from_data(t.to_data(), &device).require_grad();
    let relayer = || burn::nn::Linear {
        weight: burn::module::Param::from_tensor(copy(&layer.weight.val())),
        bias: Some(burn::module::Param::from_tensor(
            Tensor::<1>::from_data(layer.bias.as_ref().unwrap().val().to_data(), &device)
                .require_grad(),
        )),
    };
    let (base, base_t) = (input([3, 7, 20], 13), input([3, 20, 7], 14));
    // (layer, leaf input, what the layer sees: the leaf or a transposed view of it)
    let case = |strided: bool| {
        let leaf = Tensor::<3>::from_data(if strided { &base_t } else { &base }.to_data(), &device)
            .require_grad();
        let x = if strided {
            leaf.clone().swap_dims(1, 2)
        } else {
            leaf.clone()
        };
        (relayer(), leaf, x)
    };
    for act in [false, true] {
        for strided in [false, true] {
            let ((layer, leaf, x), (lr, leaf_r, xr)) = (case(strided), case(strided));
            let what = format!("swish {act}, strided {strided}");
            let y = linear(&layer, x.clone(), act);
            let (gf, gr) = forward_then_backward(&what, y, lr.forward(xr.clone()), act);
            assert_close(
                &format!("{what}: x"),
                leaf.grad(&gf).unwrap(),
                leaf_r.grad(&gr).unwrap(),
                1e-4,
            );
            let (wf, wr) = (
                layer.weight.grad(&gf).unwrap(),
                lr.weight.grad(&gr).unwrap(),
            );
            assert_close(&format!("{what}: weight"), wf, wr, 1e-4);
            let (b, br) = (layer.bias.as_ref().unwrap(), lr.bias.as_ref().unwrap());
            assert_close(
                &format!("{what}: bias"),
                b.grad(&gf).unwrap(),
                br.grad(&gr).unwrap(),
                1e-4,
            );
        }
    }
}
