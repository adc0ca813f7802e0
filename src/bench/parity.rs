//! The GPU code path checked against the CPU one (`mvlab bench --parity`, and the `gpu_parity`
//! test on cubecl's CPU runtime): each cube kernel (depthwise convolution, 1x1 convolution,
//! BatchNorm, LayerNorm, softmax) against burn's own op on the same device,
//! then whole models (keras-xxs, paper-xxs) against flex: logits, loss, gradients, three
//! optimizer steps from the same weights (the fused multi-tensor Adam / AdamW with clipping on
//! the device, burn's on the CPU) and the weights' moving average, at 32x32 (the paper flavour
//! resizes its last feature map there, so that path is checked too). Each check is reported as
//! it finishes. Without the `cube` feature there is nothing to check.

use crate::config::{Flavour, Variant};
use crate::config::{Optimizer, TrainSection};
use crate::model::draws::Draws;
use crate::model::loss::smoothed_cross_entropy;
use crate::model::{Block, MobileVit, ModelConfig};
use crate::train::average::WeightAverage;
use crate::train::optim::Optim;
use burn::module::Module;
use burn::prelude::*;
use burn::tensor::Distribution;

/// One quantity compared: its largest difference relative to the reference's largest value.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub name: String,
    pub relative_error: f32,
    pub tolerance: f32,
}

impl Check {
    pub fn passed(&self) -> bool {
        self.relative_error <= self.tolerance
    }
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 data")
}

fn relative(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "compared quantities differ in size");
    let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(
            0.0f32,
            |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
        );
    worst / scale
}

/// The checks made so far, each reported as it is made.
pub struct Checks<'a> {
    pub list: Vec<Check>,
    report: &'a mut dyn FnMut(&Check),
}

impl Checks<'_> {
    fn add(&mut self, name: String, ours: &[f32], reference: &[f32], tolerance: f32) {
        let c = Check {
            name,
            relative_error: relative(ours, reference),
            tolerance,
        };
        (self.report)(&c);
        self.list.push(c);
    }
}

/// Uniform in [-1, 1] on `device` from a generator of its own seeded by `seed`: every device
/// sees the same numbers, whatever else draws in the process.
fn random<const D: usize>(shape: [usize; D], seed: u64, device: &Device) -> Tensor<D> {
    Draws::new(seed).tensor(shape, Distribution::Uniform(-1.0, 1.0), device)
}

/// Every check on `device` (a cubecl device): kernels, then whole models; `report` hears of
/// each as it finishes.
pub fn run(device: &Device, report: &mut dyn FnMut(&Check)) -> Vec<Check> {
    let mut out = Checks {
        list: Vec::new(),
        report,
    };
    #[cfg(feature = "cube")]
    {
        eprintln!("parity: kernels against burn's ops…");
        kernels::run(device, &mut out);
    }
    models(device, &mut out);
    out.list
}

#[cfg(feature = "cube")]
mod kernels {
    use super::{Checks, random, values};
    use crate::model::fused::gpu as cube;
    use burn::prelude::*;
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;

    /// Kernels against burn's ops on the same device: tight, only the summation order differs.
    const TOLERANCE: f32 = 1e-4;

    /// (n, c, h, w, k, stride, padding top/bottom/left/right): "same" 3x3, TensorFlow's
    /// asymmetric stride-2 "same", a 5x5, no padding, and a tall image cut into row tiles.
    const DEPTHWISE_CASES: [(usize, usize, usize, usize, usize, usize, [usize; 4]); 5] = [
        (2, 5, 9, 11, 3, 1, [1, 1, 1, 1]),
        (3, 4, 16, 16, 3, 2, [0, 1, 0, 1]),
        (2, 3, 12, 10, 5, 1, [2, 2, 2, 2]),
        (1, 2, 7, 8, 3, 1, [0, 0, 0, 0]),
        (2, 3, 300, 20, 3, 1, [1, 1, 1, 1]),
    ];

    pub fn run(device: &Device, out: &mut Checks) {
        let device = device.clone().autodiff();
        for (i, &case) in DEPTHWISE_CASES.iter().enumerate() {
            depthwise(&device, i, case, out);
        }
        pointwise(&device, out);
        for (i, &(shape, act)) in NORM_CASES.iter().enumerate() {
            batch_norm(&device, i, shape, act, out);
        }
        for (i, &(shape, transposed)) in LAYER_NORM_CASES.iter().enumerate() {
            layer_norm(&device, i, shape, transposed, out);
        }
        for (i, drop) in [0.0, 0.3].into_iter().enumerate() {
            softmax(&device, i, drop, out);
        }
        dropout_mask(&device, out);
    }

    /// The dropout mask made on the device from a seed against the CPU kernels' mask of the
    /// same seed, element for element (0 apart: the same hash in integer arithmetic).
    fn dropout_mask(device: &Device, out: &mut Checks) {
        let shape = [3, 5, 7, 11];
        let (drop, seed) = (0.3, 0x1234_5678_9abc);
        let like = Tensor::<4>::zeros(shape, device);
        let ours = values(cube::dropout_mask(&like, drop, seed));
        let mask = crate::model::DropoutMask::new(drop, seed);
        let theirs: Vec<f32> = (0..ours.len())
            .map(|i| if mask.keeps(i) { 1.0 } else { 0.0 })
            .collect();
        out.add(
            "dropout mask of a seed, on 3x5x7x11".into(),
            &ours,
            &theirs,
            0.0,
        );
    }

    /// Attention's softmax (scaled, then dropout with a given mask) against burn's softmax and
    /// the same mask applied by burn's ops: output and input gradient, on `[B, heads, T, T]`.
    fn softmax(device: &Device, i: usize, drop: f64, out: &mut Checks) {
        let seed = 300 + 10 * i as u64;
        let shape = [2, 3, 17, 17];
        let scale = 0.35;
        let x = random(shape, seed, device).mul_scalar(3.0).require_grad();
        let mask = random(shape, seed + 1, device)
            .greater_elem(2.0 * drop - 1.0)
            .float();
        let upstream = random(shape, seed + 2, device);
        let run = |ours: bool| {
            let y = if ours {
                cube::softmax_masked(x.clone(), mask.clone(), scale, drop)
            } else {
                let p = burn::tensor::activation::softmax(x.clone().mul_scalar(scale), 3);
                if drop > 0.0 {
                    p * mask.clone().mul_scalar(1.0 / (1.0 - drop))
                } else {
                    p
                }
            };
            let output = values(y.clone());
            let grads = (y * upstream.clone()).sum().backward();
            [output, values(x.grad(&grads).expect("input gradient"))]
        };
        let (ours, theirs) = (run(true), run(false));
        let label = format!("softmax, dropout {drop}, on 2x3x17x17");
        for (j, what) in ["output", "input grad"].iter().enumerate() {
            out.add(format!("{label}: {what}"), &ours[j], &theirs[j], TOLERANCE);
        }
    }

    /// LayerNorm cases `[B, T, D]`: a transformer's tokens, and an input that is a transposed
    /// view (not contiguous), as attention's output reshaped can be.
    const LAYER_NORM_CASES: [([usize; 3], bool); 2] = [([2, 37, 24], false), ([3, 16, 80], true)];

    /// The LayerNorm kernels against burn's layer_norm: output and the gradients of input,
    /// gamma and beta.
    fn layer_norm(
        device: &Device,
        i: usize,
        shape: [usize; 3],
        transposed: bool,
        out: &mut Checks,
    ) {
        let seed = 200 + 10 * i as u64;
        let [b, t, d] = shape;
        let x = random(shape, seed, device).add_scalar(0.3).require_grad();
        let gamma = random([d], seed + 1, device).add_scalar(1.2).require_grad();
        let beta = random([d], seed + 2, device).require_grad();
        let upstream = random(shape, seed + 3, device);
        let run = |ours: bool| {
            // The same values either way; transposed, the kernel gets a strided view.
            let input = if transposed {
                x.clone().swap_dims(1, 2).reshape([b, d, t]).swap_dims(1, 2)
            } else {
                x.clone()
            };
            let y = if ours {
                cube::layer_norm(input, gamma.clone(), beta.clone(), 1e-5)
            } else {
                burn::tensor::module::layer_norm(input, gamma.clone(), Some(beta.clone()), 1e-5)
            };
            let output = values(y.clone());
            let grads = (y * upstream.clone()).sum().backward();
            [
                output,
                values(x.grad(&grads).expect("input gradient")),
                values(gamma.grad(&grads).expect("gamma gradient")),
                values(beta.grad(&grads).expect("beta gradient")),
            ]
        };
        let (ours, theirs) = (run(true), run(false));
        let label = format!(
            "layernorm on {b}x{t}x{d}{}",
            if transposed { " (strided view)" } else { "" }
        );
        for (j, what) in ["output", "input grad", "gamma grad", "beta grad"]
            .iter()
            .enumerate()
        {
            out.add(format!("{label}: {what}"), &ours[j], &theirs[j], TOLERANCE);
        }
    }

    /// BatchNorm cases: with and without swish, and one whose channels are summed in parts.
    const NORM_CASES: [([usize; 4], bool); 3] = [
        ([2, 5, 9, 11], true),
        ([3, 4, 8, 8], false),
        ([2, 3, 120, 100], true),
    ];

    /// The BatchNorm (+ swish) kernels against burn's batch_norm_train and silu: output,
    /// batch statistics and the gradients of input, gamma and beta.
    fn batch_norm(device: &Device, i: usize, shape: [usize; 4], act: bool, out: &mut Checks) {
        let seed = 100 + 10 * i as u64;
        let c = shape[1];
        // An offset mean, as a convolution's output has, so the variance is not trivially small.
        let x = random(shape, seed, device).add_scalar(0.7).require_grad();
        let gamma = random([c], seed + 1, device).add_scalar(1.5).require_grad();
        let beta = random([c], seed + 2, device).require_grad();
        let upstream = random(shape, seed + 3, device);
        let run = |ours: bool| {
            let (y, mean, var) = if ours {
                cube::batch_norm_train(x.clone(), gamma.clone(), beta.clone(), 1e-3, act)
            } else {
                let r = burn::tensor::module::batch_norm_train(
                    x.clone(),
                    gamma.clone(),
                    beta.clone(),
                    1e-3,
                );
                let y = if act {
                    burn::tensor::activation::silu(r.output)
                } else {
                    r.output
                };
                (y, r.mean, r.variance)
            };
            let output = values(y.clone());
            let grads = (y * upstream.clone()).sum().backward();
            [
                output,
                values(mean),
                values(var),
                values(x.grad(&grads).expect("input gradient")),
                values(gamma.grad(&grads).expect("gamma gradient")),
                values(beta.grad(&grads).expect("beta gradient")),
            ]
        };
        let (ours, theirs) = (run(true), run(false));
        let label = format!(
            "batchnorm{} on {}x{}x{}x{}",
            if act { "+swish" } else { "" },
            shape[0],
            shape[1],
            shape[2],
            shape[3]
        );
        for (j, what) in [
            "output",
            "mean",
            "variance",
            "input grad",
            "gamma grad",
            "beta grad",
        ]
        .iter()
        .enumerate()
        {
            out.add(format!("{label}: {what}"), &ours[j], &theirs[j], TOLERANCE);
        }
    }

    fn depthwise_options(c: usize, s: usize, [t, b, l, r]: [usize; 4]) -> ConvOptions<2> {
        ConvOptions::new_with_padding([s, s], [(t, b), (l, r)], [1, 1], c)
    }

    /// Output and gradients (input, weight, bias) of `conv` against an upstream gradient.
    fn with_grads(
        x: &Tensor<4>,
        weight: &Tensor<4>,
        bias: &Tensor<1>,
        upstream_seed: u64,
        conv: impl Fn(Tensor<4>, Tensor<4>, Tensor<1>) -> Tensor<4>,
    ) -> [Vec<f32>; 4] {
        let (x, weight, bias) = (
            x.clone().require_grad(),
            weight.clone().require_grad(),
            bias.clone().require_grad(),
        );
        let y = conv(x.clone(), weight.clone(), bias.clone());
        let upstream = random(y.dims(), upstream_seed, &y.device());
        let output = values(y.clone());
        let grads = (y * upstream).sum().backward();
        [
            output,
            values(x.grad(&grads).expect("input gradient")),
            values(weight.grad(&grads).expect("weight gradient")),
            values(bias.grad(&grads).expect("bias gradient")),
        ]
    }

    fn depthwise(
        device: &Device,
        i: usize,
        (n, c, h, w, k, s, pad): (usize, usize, usize, usize, usize, usize, [usize; 4]),
        out: &mut Checks,
    ) {
        let seed = 10 * i as u64;
        let x = random([n, c, h, w], seed, device);
        let weight = random([c, 1, k, k], seed + 1, device);
        let bias = random([c], seed + 2, device);
        let label = format!("depthwise {k}x{k}/{s} on {n}x{c}x{h}x{w}");
        let theirs = with_grads(&x, &weight, &bias, seed + 3, |x, w, b| {
            conv2d(x, w, Some(b), depthwise_options(c, s, pad))
        });
        let ours = with_grads(&x, &weight, &bias, seed + 3, |x, w, b| {
            cube::depthwise_conv(x, w, b, s, pad)
        });
        for (j, what) in ["output", "input grad", "weight grad", "bias grad"]
            .iter()
            .enumerate()
        {
            out.add(format!("{label}: {what}"), &ours[j], &theirs[j], TOLERANCE);
        }
        // The weight-gradient kernel on its own, on the same upstream gradient.
        let oh = (h + pad[0] + pad[1] - k) / s + 1;
        let ow = (w + pad[2] + pad[3] - k) / s + 1;
        let upstream = random([n, c, oh, ow], seed + 3, device);
        let direct = values(cube::depthwise_weight_grad(x, upstream, k, s, pad));
        out.add(
            format!("{label}: weight-gradient kernel"),
            &direct,
            &theirs[2],
            TOLERANCE,
        );
    }

    fn pointwise(device: &Device, out: &mut Checks) {
        let (n, c, cout, h, w) = (2, 6, 5, 7, 9);
        let x = random([n, c, h, w], 80, device);
        let weight = random([cout, c, 1, 1], 81, device);
        let bias = random([cout], 82, device);
        let theirs = with_grads(&x, &weight, &bias, 83, |x, w, b| {
            conv2d(x, w, Some(b), ConvOptions::new([1, 1], [0, 0], [1, 1], 1))
        });
        let ours = with_grads(&x, &weight, &bias, 83, |x, w, b| {
            cube::pointwise_conv(x, w, Some(b))
        });
        for (j, what) in ["output", "input grad", "weight grad", "bias grad"]
            .iter()
            .enumerate()
        {
            out.add(
                format!("1x1 conv as matmul: {what}"),
                &ours[j],
                &theirs[j],
                TOLERANCE,
            );
        }
    }
}

/// Whole models against flex: f32 on both, but other kernels and summation orders.
const MODEL_TOLERANCE: f32 = 2e-3;
/// After three Adam steps (Adam divides by the gradients' own scale, which amplifies noise in
/// near-zero gradients). paper-xxs's trajectory moves by about 1e-2 with the summation order
/// alone: with burn's LayerNorm on the device the losses differed from the CPU's by 8.5e-3 and
/// the average's by 7.0e-3, with the LayerNorm kernel (equal to burn's within 3e-7) by 5.9e-3
/// and 1.25e-2.
const TRAJECTORY_TOLERANCE: f32 = 2e-2;

/// Four images in [0, 1] and their labels, the same on every device.
fn batch(size: usize, device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
    let x = random([4, 3, size, size], 3, device)
        .add_scalar(1.0)
        .div_scalar(2.0);
    let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 0], [4]), device);
    (x, y)
}

/// Logits, loss and a few parameters' gradients (stem, a depthwise filter, a LayerNorm, the
/// attention projection, the head).
fn forward_backward(model: &MobileVit, x: Tensor<4>, y: Tensor<1, Int>) -> Vec<Vec<f32>> {
    let logits = model.forward(x);
    let loss = smoothed_cross_entropy(logits.clone(), y, 0.1);
    let mut out = vec![values(logits), values(loss.clone())];
    let g = loss.backward();
    let Block::Mv2(irb) = &model.blocks[1] else {
        panic!("block 1 is an inverted residual")
    };
    let vit = model.blocks.iter().find_map(|b| match b {
        Block::Vit(v) => Some(v),
        _ => None,
    });
    let t = &vit.expect("a MobileViT block").transformer[0];
    let grad = "a gradient for every checked parameter";
    out.extend([
        values(model.stem.conv.weight.grad(&g).expect(grad)),
        values(irb.depthwise.conv.weight.grad(&g).expect(grad)),
        values(t.norm1.gamma.grad(&g).expect(grad)),
        values(t.attn.qkv.weight.grad(&g).expect(grad)),
        values(model.head.weight.grad(&g).expect(grad)),
    ]);
    out
}

fn models(device: &Device, out: &mut Checks) {
    const NAMES: [&str; 7] = [
        "logits",
        "loss",
        "stem grad",
        "depthwise grad",
        "layernorm grad",
        "qkv grad",
        "head grad",
    ];
    let cpu = Device::flex().autodiff();
    let gpu = device.clone().autodiff();
    for flavour in [Flavour::Keras, Flavour::Paper] {
        let cfg = ModelConfig {
            flavour,
            variant: Variant::Xxs,
            num_classes: 3,
            image_size: 32,
            dropout: 0.0,
        };
        let label = cfg.label();
        eprintln!("parity: {label} against the CPU backend…");
        let model = cfg.init_seeded(1, &cpu);
        let (x, y) = batch(32, &cpu);
        let reference = forward_backward(&model, x, y);
        let moved = model.clone().fork(&gpu);
        let (x, y) = batch(32, &gpu);
        let ours = forward_backward(&moved, x, y);
        for (i, (a, b)) in ours.iter().zip(&reference).enumerate() {
            out.add(format!("{label}: {}", NAMES[i]), a, b, MODEL_TOLERANCE);
        }

        // Three optimizer steps on each device from the same weights (AdamW with decay and
        // clipping, the classifier at its own rate): the fused kernels on the device, burn's on
        // the CPU. The losses stay together, and so does the loss of the weights' moving average.
        // (Weights are not compared one by one: Adam moves a weight whose gradient is near zero
        // by about the rate whatever its sign, so rounding decides those.)
        let t = TrainSection {
            optimizer: Optimizer::AdamW,
            weight_decay: 0.05,
            grad_clip_norm: 0.5,
            backbone_lr_scale: 0.5,
            ..TrainSection::default()
        };
        let mut curves = Vec::new();
        let mut averages = Vec::new();
        for device in [&cpu, &gpu] {
            // A model of its own (clones share BatchNorm's running statistics), same weights.
            let mut model = cfg.init_seeded(1, &cpu).fork(device);
            let mut optim = Optim::new(&t, &device.clone().inner());
            let mut average = WeightAverage::start(&model, cfg.init(device), 0.9);
            let (x, y) = batch(32, device);
            let mut losses = Vec::new();
            for step in 0..3 {
                let loss = smoothed_cross_entropy(model.forward(x.clone()), y.clone(), 0.1);
                losses.push(loss.clone().into_scalar::<f32>());
                model = optim.step(&t, 2e-3, model, loss);
                average.update(&model, step);
            }
            curves.push(losses);
            let averaged = smoothed_cross_entropy(average.model.forward(x), y, 0.1);
            averages.push(values(averaged));
        }
        out.add(
            format!("{label}: losses over 3 AdamW steps"),
            &curves[1],
            &curves[0],
            TRAJECTORY_TOLERANCE,
        );
        out.add(
            format!("{label}: loss of the moving average"),
            &averages[1],
            &averages[0],
            TRAJECTORY_TOLERANCE,
        );
    }
}
