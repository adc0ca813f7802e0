//! The model's hot ops, routed per device: on burn's CPU backend (flex) to mvlab's kernels with
//! handwritten backward passes (`cpu`), on cubecl devices (cuda, vulkan, cube-cpu) to mvlab's
//! cube kernels where burn's are slow (`gpu`), elsewhere to the equivalent composition of
//! burn's own ops. The model code calls these everywhere.
//!
//! On flex a training step spent most of its time outside the matrix products: convolution
//! backward passes built from generic ops (a depthwise 3x3 backward took 40x its forward), `exp`
//! on one core, and BatchNorm, LayerNorm, softmax and SiLU recorded as chains of small ops that
//! each make a pass over memory. The kernels do each job in one or two parallel passes. Linear
//! layers write their bias first and apply swish in place; attention works a block of query rows
//! at a time on the packed q, k, v projections, so its `[B, heads, T, T]` weights are never
//! stored whole.

mod cpu;
#[cfg(feature = "cube")]
pub mod gpu;

use burn::backend::Dispatch;
use burn::nn::Linear;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use burn::tensor::DType;
use cpu::FusedOps;
use std::cell::Cell;

thread_local! {
    static BURN_OPS: Cell<bool> = const { Cell::new(false) };
}

/// While it lives, model code on this thread uses burn's own ops instead of mvlab's kernels
/// (`mvlab bench --unfused` measures what the kernels bring; tests compare the two paths). Other
/// threads are not affected, so tests of both paths can share a process.
#[must_use = "burn's ops are used only while the guard lives"]
pub struct BurnOps {
    previous: bool,
}

pub fn burn_ops() -> BurnOps {
    BurnOps {
        previous: BURN_OPS.replace(true),
    }
}

impl Drop for BurnOps {
    fn drop(&mut self) {
        BURN_OPS.set(self.previous);
    }
}

/// Whether mvlab's kernels are on for this thread (no [`BurnOps`] guard alive).
pub fn enabled() -> bool {
    !BURN_OPS.get()
}

/// Whether the fused kernels apply to `x`: enabled, on the CPU backend, f32.
pub fn applies<const D: usize>(x: &Tensor<D>) -> bool {
    let device = x.device();
    enabled()
        && x.dtype() == DType::F32
        && (device == Device::flex() || device == Device::flex().autodiff())
}

/// SiLU (swish): x * sigmoid(x).
pub fn swish<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if !applies(&x) {
        return burn::tensor::activation::silu(x);
    }
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_swish(x.into_dispatch()))
}

/// Training-mode BatchNorm (batch statistics), with swish after it when `act`; returns the
/// output and the batch mean and biased variance (for the running statistics).
pub fn batch_norm_train<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
    act: bool,
) -> (Tensor<D>, Tensor<1>, Tensor<1>) {
    #[cfg(feature = "cube")]
    if D == 4 && enabled() && x.dtype() == DType::F32 && gpu::applies(&x) {
        let (y, mean, var) = gpu::batch_norm_train(
            Tensor::<4>::from_dispatch(x.into_dispatch()),
            gamma,
            beta,
            epsilon,
            act,
        );
        return (Tensor::from_dispatch(y.into_dispatch()), mean, var);
    }
    if !applies(&x) {
        let r = burn::tensor::module::batch_norm_train(x, gamma, beta, epsilon);
        let out = if act { swish(r.output) } else { r.output };
        return (out, r.mean, r.variance);
    }
    let (y, mean, var) = <Dispatch as FusedOps>::fused_batch_norm(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
        act,
    );
    (
        Tensor::from_dispatch(y),
        Tensor::from_dispatch(mean),
        Tensor::from_dispatch(var),
    )
}

/// LayerNorm over the last dim with affine `gamma`, `beta`.
pub fn layer_norm<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> Tensor<D> {
    #[cfg(feature = "cube")]
    if enabled() && x.dtype() == DType::F32 && gpu::applies(&x) {
        return gpu::layer_norm(x, gamma, beta, epsilon);
    }
    if !applies(&x) {
        return burn::tensor::module::layer_norm(x, gamma, Some(beta), epsilon);
    }
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_layer_norm(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
    ))
}

/// softmax(scale * x) over the last dim followed by dropout with probability `drop`, the mask
/// drawn from `seed` (same seed, same mask) on every backend.
pub fn softmax_dropout<const D: usize>(
    x: Tensor<D>,
    scale: f64,
    drop: f64,
    seed: u64,
) -> Tensor<D> {
    #[cfg(feature = "cube")]
    if enabled() && x.dtype() == DType::F32 && gpu::applies(&x) {
        return gpu::softmax_dropout(x, scale, drop, seed);
    }
    if !applies(&x) {
        let p = burn::tensor::activation::softmax(x.mul_scalar(scale), D - 1);
        return if drop == 0.0 {
            p
        } else {
            masked_dropout(p, drop, seed)
        };
    }
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_softmax_dropout(
        x.into_dispatch(),
        scale,
        drop,
        seed,
    ))
}

/// `linear.forward(x)`, then swish when `act`: one matrix product over all rows of `x` with the
/// bias and activation applied in place, on the CPU backend.
pub fn linear<const D: usize>(linear: &Linear, x: Tensor<D>, act: bool) -> Tensor<D> {
    let Some(bias) = linear.bias.as_ref().filter(|_| applies(&x)) else {
        let y = linear.forward(x);
        return if act { swish(y) } else { y };
    };
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_linear(
        x.into_dispatch(),
        linear.weight.val().into_dispatch(),
        bias.val().into_dispatch(),
        act,
    ))
}

/// Multi-head self-attention over packed projections `qkv` `[B, T, 3 * heads * head_dim]`
/// (the last dim laid out as q|k|v, head, channel): per head softmax(q k^T / sqrt(head_dim)),
/// dropout with probability `drop` on those weights (mask drawn from `seed`), times v. Returns
/// `[B, T, heads * head_dim]` with the heads side by side.
///
/// On the CPU backend one kernel does it a block of query rows at a time, so the `[B, heads, T,
/// T]` weights are never stored (the backward pass recomputes them block by block); elsewhere
/// burn's ops (its attention op for inference).
pub fn attention(qkv: Tensor<3>, heads: usize, head_dim: usize, drop: f64, seed: u64) -> Tensor<3> {
    if applies(&qkv) {
        return Tensor::from_dispatch(<Dispatch as FusedOps>::fused_attention(
            qkv.into_dispatch(),
            heads,
            head_dim,
            drop,
            seed,
        ));
    }
    let [b, t, _] = qkv.dims();
    let qkv = qkv
        .reshape([b, t, 3, heads, head_dim])
        .permute([2, 0, 3, 1, 4]);
    let part = |i: usize| qkv.clone().narrow(0, i, 1).squeeze_dim::<4>(0);
    let (q, k, v) = (part(0), part(1), part(2));
    let out = if q.device().is_autodiff() {
        // Training: the explicit form, for dropout on the weights.
        let scores = q.matmul(k.swap_dims(2, 3));
        softmax_dropout(scores, 1.0 / (head_dim as f64).sqrt(), drop, seed).matmul(v)
    } else {
        burn::tensor::module::attention(
            q,
            k,
            v,
            None,
            None,
            burn::tensor::ops::AttentionModuleOptions::default(),
        )
    };
    out.swap_dims(1, 2).reshape([b, t, heads * head_dim])
}

/// Dropout with probability `drop`, the mask drawn from `seed` (same seed, same mask). The
/// mask is a hash of (seed, element index), recomputed in the backward pass rather than stored.
pub fn dropout<const D: usize>(x: Tensor<D>, drop: f64, seed: u64) -> Tensor<D> {
    if !applies(&x) {
        return masked_dropout(x, drop, seed);
    }
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_dropout(
        x.into_dispatch(),
        drop,
        seed,
    ))
}

/// Dropout through burn's ops, where the CPU kernels do not apply: `x` times the mask of `seed`
/// (made on the device on cubecl devices, else on the host).
fn masked_dropout<const D: usize>(x: Tensor<D>, drop: f64, seed: u64) -> Tensor<D> {
    #[cfg(feature = "cube")]
    if gpu::applies(&x) {
        let mask = gpu::dropout_mask(&x, drop, seed);
        return x * mask.mul_scalar(1.0 / (1.0 - drop));
    }
    let mask = crate::model::kernels::DropoutMask::new(drop, seed);
    let keep: Vec<f32> = (0..x.shape().num_elements())
        .map(|i| if mask.keeps(i) { 1.0 } else { 0.0 })
        .collect();
    let keep = Tensor::<1>::from_data(keep.as_slice(), &x.device()).reshape(x.shape());
    x * keep.mul_scalar(1.0 / (1.0 - drop))
}

/// `conv.forward(x)`, then swish when `act`, through the fused kernels for depthwise and
/// groups = 1 convolutions on the CPU backend (burn's generic backward for these is several times
/// slower than the forward).
pub fn conv2d(conv: &Conv2d, x: Tensor<4>, act: bool) -> Tensor<4> {
    let [_, cin, h, w] = x.dims();
    let [cout, per_group, kh, kw] = conv.weight.dims();
    let [s, s2] = conv.stride;
    let depthwise = conv.groups == cin && cin == cout && per_group == 1;
    let plain = conv.dilation == [1, 1] && kh == kw && s == s2;
    let (top, bottom) = padding(&conv.padding, 0, h, kh, s);
    let (left, right) = padding(&conv.padding, 1, w, kw, s);
    #[cfg(feature = "cube")]
    if enabled() && plain && gpu::applies(&x) {
        let bias = conv.bias.as_ref().map(|b| b.val());
        let y = if depthwise {
            let bias = bias.unwrap_or_else(|| Tensor::zeros([cout], &x.device()));
            gpu::depthwise_conv(x, conv.weight.val(), bias, s, [top, bottom, left, right])
        } else if kh == 1 && s == 1 && conv.groups == 1 && top + bottom + left + right == 0 {
            gpu::pointwise_conv(x, conv.weight.val(), bias)
        } else {
            conv.forward(x)
        };
        return if act { swish(y) } else { y };
    }
    if !applies(&x) || !plain || !(depthwise || conv.groups == 1) {
        let y = conv.forward(x);
        return if act { swish(y) } else { y };
    }
    let bias = match &conv.bias {
        Some(b) => b.val(),
        None => Tensor::zeros([cout], &x.device()),
    };
    let oh = (h + top + bottom - kh) / s + 1;
    let ow = (w + left + right - kw) / s + 1;
    let (x, weight, bias) = (
        x.into_dispatch(),
        conv.weight.val().into_dispatch(),
        bias.into_dispatch(),
    );
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_conv(
        x,
        weight,
        bias,
        kh,
        s,
        [top, left],
        [oh, ow],
        [depthwise, act],
    ))
}

/// (before, after) padding of spatial axis `axis` (0: rows, 1: columns), as burn's `Conv2d`
/// applies it ("same" puts the odd pixel after, as TensorFlow does).
fn padding(
    p: &PaddingConfig2d,
    axis: usize,
    size: usize,
    k: usize,
    stride: usize,
) -> (usize, usize) {
    match *p {
        PaddingConfig2d::Valid => (0, 0),
        PaddingConfig2d::Same => {
            let out = size.div_ceil(stride);
            let total = ((out.max(1) - 1) * stride + k).saturating_sub(size);
            (total / 2, total - total / 2)
        }
        PaddingConfig2d::Explicit(top, left, bottom, right) => {
            if axis == 0 {
                (top, bottom)
            } else {
                (left, right)
            }
        }
    }
}
