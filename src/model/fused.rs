//! Fused CPU kernels for the hot spots of a training step, each with a handwritten backward pass.
//!
//! On burn's CPU backend (flex) a training step spent most of its time outside the matrix
//! products: convolution backward passes built from generic ops (a depthwise 3x3 backward took
//! 40x its forward), `exp` on one core, and BatchNorm, LayerNorm, softmax and SiLU recorded as
//! chains of small ops that each make a pass over memory. The ops here do each job in one or two
//! parallel passes (kernels in [`super::kernels`]), registered as a burn backend extension for
//! `Flex` and `Autodiff<Flex>`. Linear layers write their bias first and apply swish in place;
//! attention works a block of query rows at a time on the packed q, k, v projections, so its
//! `[B, heads, T, T]` weights are never stored whole. On any other device (GPU builds)
//! the wrappers fall back to the equivalent composition of ordinary tensor ops, so the model code
//! calls them everywhere.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::nn::Linear;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use burn::tensor::DType;
use std::sync::atomic::{AtomicBool, Ordering};

use super::kernels::{self, AttentionShape, ConvGeometry, DropoutMask};

#[backend_extension(Flex, Autodiff)]
pub trait FusedOps: Backend {
    /// x * sigmoid(x).
    fn fused_swish(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// Training-mode BatchNorm over dim 1 of `[B, C, ...]`, optionally followed by swish.
    /// Returns (output, batch mean, biased batch variance).
    fn fused_batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        swish: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
    /// LayerNorm over the last dim.
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;
    /// softmax(scale * x) over the last dim, then dropout with probability `drop` (mask drawn
    /// from `seed`).
    fn fused_softmax_dropout(
        x: FloatTensor<Self>,
        scale: f64,
        drop: f64,
        seed: u64,
    ) -> FloatTensor<Self>;
    /// `x` `[.., in]` times `weight` `[in, out]` plus `bias`, then swish when `act`.
    fn fused_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        act: bool,
    ) -> FloatTensor<Self>;
    /// Multi-head self-attention over packed projections (see [`attention`]), dropout with
    /// probability `drop` on the attention weights (mask drawn from `seed`).
    fn fused_attention(
        qkv: FloatTensor<Self>,
        heads: usize,
        head_dim: usize,
        drop: f64,
        seed: u64,
    ) -> FloatTensor<Self>;
    /// x times a dropout mask with probability `drop` (mask drawn from `seed`).
    fn fused_dropout(x: FloatTensor<Self>, drop: f64, seed: u64) -> FloatTensor<Self>;
    /// Convolution with bias: depthwise (weight `[C, 1, k, k]`) or with groups = 1 (weight
    /// `[C', C, k, k]`), then swish, as `[depthwise, act]` say.
    #[allow(clippy::too_many_arguments)]
    fn fused_conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        k: usize,
        stride: usize,
        padding: [usize; 2],
        out_hw: [usize; 2],
        depthwise_act: [bool; 2],
    ) -> FloatTensor<Self>;
}

// ---------------------------------------------------------------------------------------------
// Public wrappers on runtime-dispatched tensors.

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the fused kernels off (burn's own ops everywhere) or back on, for the whole process:
/// `mvlab bench --unfused` measures what they bring; tests compare the two paths.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
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

/// softmax(scale * x) over the last dim followed by dropout with probability `drop`; the mask
/// is drawn from `seed` (same seed, same mask).
pub fn softmax_dropout<const D: usize>(
    x: Tensor<D>,
    scale: f64,
    drop: f64,
    seed: u64,
) -> Tensor<D> {
    if !applies(&x) {
        let p = burn::tensor::activation::softmax(x.mul_scalar(scale), D - 1);
        return if drop == 0.0 {
            p
        } else {
            bernoulli_dropout(p, drop)
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
        return bernoulli_dropout(x, drop);
    }
    Tensor::from_dispatch(<Dispatch as FusedOps>::fused_dropout(
        x.into_dispatch(),
        drop,
        seed,
    ))
}

/// Dropout through burn's ops, where the kernels do not apply.
fn bernoulli_dropout<const D: usize>(x: Tensor<D>, drop: f64) -> Tensor<D> {
    let mask = x.random_like(burn::tensor::Distribution::Bernoulli(1.0 - drop));
    x * mask.mul_scalar(1.0 / (1.0 - drop))
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
    if enabled() && plain && super::cube::applies(&x) {
        let bias = conv.bias.as_ref().map(|b| b.val());
        let y = if depthwise {
            let bias = bias.unwrap_or_else(|| Tensor::zeros([cout], &x.device()));
            super::cube::depthwise_conv(x, conv.weight.val(), bias, s, [top, bottom, left, right])
        } else if kh == 1 && s == 1 && conv.groups == 1 && top + bottom + left + right == 0 {
            super::cube::pointwise_conv(x, conv.weight.val(), bias)
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

fn geometry(
    k: usize,
    stride: usize,
    [pad_top, pad_left]: [usize; 2],
    [oh, ow]: [usize; 2],
    [depthwise, act]: [bool; 2],
) -> ConvGeometry {
    ConvGeometry {
        k,
        stride,
        pad_top,
        pad_left,
        oh,
        ow,
        depthwise,
        act,
    }
}

// ---------------------------------------------------------------------------------------------
// The backend extension: plain flex (inference, no gradients) and autodiff over flex.

impl FusedOps for Flex {
    fn fused_swish(x: FlexTensor) -> FlexTensor {
        kernels::swish_forward(&x)
    }

    fn fused_batch_norm(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
        swish: bool,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        kernels::batch_norm_forward(&x, &gamma, &beta, epsilon, swish)
    }

    fn fused_layer_norm(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
    ) -> FlexTensor {
        kernels::layer_norm_forward(&x, &gamma, &beta, epsilon)
    }

    fn fused_softmax_dropout(x: FlexTensor, scale: f64, drop: f64, seed: u64) -> FlexTensor {
        kernels::softmax_dropout_forward(&x, scale, dropout_mask(drop, seed)).1
    }

    fn fused_dropout(x: FlexTensor, drop: f64, seed: u64) -> FlexTensor {
        kernels::dropout(&x, DropoutMask::new(drop, seed))
    }

    fn fused_linear(x: FlexTensor, weight: FlexTensor, bias: FlexTensor, act: bool) -> FlexTensor {
        kernels::linear_forward(&x, &weight, &bias, act)
    }

    fn fused_attention(
        qkv: FlexTensor,
        heads: usize,
        head_dim: usize,
        drop: f64,
        seed: u64,
    ) -> FlexTensor {
        kernels::attention_forward(
            &qkv,
            attention_shape(heads, head_dim),
            dropout_mask(drop, seed),
        )
    }

    fn fused_conv(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        k: usize,
        stride: usize,
        padding: [usize; 2],
        out_hw: [usize; 2],
        depthwise_act: [bool; 2],
    ) -> FlexTensor {
        let g = geometry(k, stride, padding, out_hw, depthwise_act);
        kernels::conv_forward(&x, &weight, &bias, g)
    }
}

/// A one-input op's backward step: the input's gradient, from the op's state and the incoming
/// gradient, computed only when the input is tracked.
fn register1<S>(
    ops: Ops<S, 1>,
    grads: &mut Gradients,
    input_grad: impl FnOnce(S, FlexTensor) -> FlexTensor,
) {
    let [parent] = ops.parents;
    let grad = grads.consume::<Flex>(&ops.node);
    if let Some(parent) = parent {
        grads.register::<Flex>(parent.id, input_grad(ops.state, grad));
    }
}

/// Registers the gradients of an op's three inputs (those that track gradients).
fn register3<P>(
    parents: [Option<P>; 3],
    grads: &mut Gradients,
    (a, b, c): (FlexTensor, FlexTensor, FlexTensor),
    id: impl Fn(&P) -> burn::backend::autodiff::NodeId,
) {
    for (parent, g) in parents.into_iter().zip([a, b, c]) {
        if let Some(parent) = parent {
            grads.register::<Flex>(id(&parent), g);
        }
    }
}

#[derive(Debug)]
struct ConvBackward;

impl Backward<Flex, 3> for ConvBackward {
    /// Input, weight, geometry, and the output before swish when `act`.
    type State = (FlexTensor, FlexTensor, ConvGeometry, Option<FlexTensor>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        let (x, weight, g, pre) = ops.state;
        let result = kernels::conv_backward(&x, &weight, g, &through_swish(pre, grad));
        register3(ops.parents, grads, result, |p| p.id);
    }
}

#[derive(Debug)]
struct SwishBackward;

impl Backward<Flex, 1> for SwishBackward {
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        register1(ops, grads, |x, grad| kernels::swish_backward(&x, &grad));
    }
}

#[derive(Debug)]
struct BatchNormBackward;

#[derive(Debug, Clone)]
struct BatchNormState {
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    mean: FlexTensor,
    var: FlexTensor,
    epsilon: f64,
    act: bool,
}

impl Backward<Flex, 3> for BatchNormBackward {
    type State = BatchNormState;

    fn backward(self, ops: Ops<BatchNormState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        let s = ops.state;
        let result = kernels::batch_norm_backward(
            &s.x, &s.gamma, &s.beta, &s.mean, &s.var, s.epsilon, s.act, &grad,
        );
        register3(ops.parents, grads, result, |p| p.id);
    }
}

#[derive(Debug)]
struct LayerNormBackward;

impl Backward<Flex, 3> for LayerNormBackward {
    type State = (FlexTensor, FlexTensor, f64);

    fn backward(
        self,
        ops: Ops<(FlexTensor, FlexTensor, f64), 3>,
        grads: &mut Gradients,
        _: &mut Checkpointer,
    ) {
        let grad = grads.consume::<Flex>(&ops.node);
        let (x, gamma, epsilon) = ops.state;
        let result = kernels::layer_norm_backward(&x, &gamma, epsilon, &grad);
        register3(ops.parents, grads, result, |p| p.id);
    }
}

#[derive(Debug)]
struct SoftmaxDropoutBackward;

impl Backward<Flex, 1> for SoftmaxDropoutBackward {
    type State = (FlexTensor, f64, Option<DropoutMask>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        register1(ops, grads, |(p, scale, mask), grad| {
            kernels::softmax_dropout_backward(&p, scale, mask, &grad)
        });
    }
}

#[derive(Debug)]
struct DropoutBackward;

impl Backward<Flex, 1> for DropoutBackward {
    type State = DropoutMask;

    fn backward(self, ops: Ops<DropoutMask, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        register1(ops, grads, |mask, grad| kernels::dropout(&grad, mask));
    }
}

#[derive(Debug)]
struct LinearBackward;

impl Backward<Flex, 3> for LinearBackward {
    /// Input, weight, and the output before swish when there is one.
    type State = (FlexTensor, FlexTensor, Option<FlexTensor>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        let (x, weight, pre) = ops.state;
        let result = kernels::linear_backward(&x, &weight, &through_swish(pre, grad));
        register3(ops.parents, grads, result, |p| p.id);
    }
}

#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 1> for AttentionBackward {
    /// The packed projections; the weights are recomputed from them.
    type State = (FlexTensor, AttentionShape, Option<DropoutMask>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        register1(ops, grads, |(qkv, shape, mask), grad| {
            kernels::attention_backward(&qkv, shape, mask, &grad)
        });
    }
}

fn attention_shape(heads: usize, head_dim: usize) -> AttentionShape {
    AttentionShape {
        heads,
        head_dim,
        scale: 1.0 / (head_dim as f32).sqrt(),
    }
}

fn dropout_mask(drop: f64, seed: u64) -> Option<DropoutMask> {
    (drop > 0.0).then(|| DropoutMask::new(drop, seed))
}

/// The autodiff backend's float tensor (a flex tensor plus its graph node).
type AutodiffTensor = FloatTensor<Autodiff<Flex>>;

/// An op of (x, weight, bias) with swish after it when `act`: `forward(x, weight, bias, act)`.
/// When gradients are tracked, the output before swish is kept for swish's gradient and handed
/// to `state` with the input and weight.
fn with_optional_swish<B, C>(
    op: B,
    [x, weight, bias]: [AutodiffTensor; 3],
    act: bool,
    forward: impl Fn(&FlexTensor, &FlexTensor, &FlexTensor, bool) -> FlexTensor,
    state: impl FnOnce(FlexTensor, FlexTensor, Option<FlexTensor>) -> B::State,
) -> AutodiffTensor
where
    B: Backward<Flex, 3>,
    B::State: Clone + Send + std::fmt::Debug + 'static,
    C: CheckpointStrategy,
{
    let nodes = [x.node(), weight.node(), bias.node()];
    let (x, weight, bias) = (
        x.into_primitive(),
        weight.into_primitive(),
        bias.into_primitive(),
    );
    match op.prepare::<C>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) if act => {
            let pre = forward(&x, &weight, &bias, false);
            let y = kernels::swish_forward(&pre);
            prep.finish(state(x, weight, Some(pre)), y)
        }
        OpsKind::Tracked(prep) => {
            let y = forward(&x, &weight, &bias, false);
            prep.finish(state(x, weight, None), y)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(&x, &weight, &bias, act)),
    }
}

/// The gradient before an optional swish, given the output before it (`pre`).
fn through_swish(pre: Option<FlexTensor>, grad: FlexTensor) -> FlexTensor {
    match pre {
        Some(pre) => kernels::swish_backward(&pre, &grad),
        None => grad,
    }
}

impl<C: CheckpointStrategy> FusedOps for Autodiff<Flex, C> {
    fn fused_swish(x: AutodiffTensor) -> AutodiffTensor {
        let (xp, node) = x.into_parts();
        match SwishBackward
            .prepare::<C>([node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = kernels::swish_forward(&xp);
                prep.finish(xp, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(kernels::swish_forward(&xp)),
        }
    }

    fn fused_batch_norm(
        x: AutodiffTensor,
        gamma: AutodiffTensor,
        beta: AutodiffTensor,
        epsilon: f64,
        act: bool,
    ) -> (AutodiffTensor, AutodiffTensor, AutodiffTensor) {
        let nodes = [x.node(), gamma.node(), beta.node()];
        let (x, gamma, beta) = (
            x.into_primitive(),
            gamma.into_primitive(),
            beta.into_primitive(),
        );
        let (y, mean, var) = kernels::batch_norm_forward(&x, &gamma, &beta, epsilon, act);
        let stats = (
            <AutodiffTensor>::new(mean.clone()),
            <AutodiffTensor>::new(var.clone()),
        );
        let y = match BatchNormBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(
                BatchNormState {
                    x,
                    gamma,
                    beta,
                    mean,
                    var,
                    epsilon,
                    act,
                },
                y,
            ),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        (y, stats.0, stats.1)
    }

    fn fused_layer_norm(
        x: AutodiffTensor,
        gamma: AutodiffTensor,
        beta: AutodiffTensor,
        epsilon: f64,
    ) -> AutodiffTensor {
        let nodes = [x.node(), gamma.node(), beta.node()];
        let (x, gamma, beta) = (
            x.into_primitive(),
            gamma.into_primitive(),
            beta.into_primitive(),
        );
        let y = kernels::layer_norm_forward(&x, &gamma, &beta, epsilon);
        match LayerNormBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((x, gamma, epsilon), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn fused_softmax_dropout(
        x: AutodiffTensor,
        scale: f64,
        drop: f64,
        seed: u64,
    ) -> AutodiffTensor {
        let (xp, node) = x.into_parts();
        let mask = dropout_mask(drop, seed);
        let (p, y) = kernels::softmax_dropout_forward(&xp, scale, mask);
        match SoftmaxDropoutBackward
            .prepare::<C>([node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((p, scale, mask), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn fused_linear(
        x: AutodiffTensor,
        weight: AutodiffTensor,
        bias: AutodiffTensor,
        act: bool,
    ) -> AutodiffTensor {
        with_optional_swish::<_, C>(
            LinearBackward,
            [x, weight, bias],
            act,
            kernels::linear_forward,
            |x, w, pre| (x, w, pre),
        )
    }

    fn fused_attention(
        qkv: AutodiffTensor,
        heads: usize,
        head_dim: usize,
        drop: f64,
        seed: u64,
    ) -> AutodiffTensor {
        let (xp, node) = qkv.into_parts();
        let (shape, mask) = (attention_shape(heads, head_dim), dropout_mask(drop, seed));
        let y = kernels::attention_forward(&xp, shape, mask);
        match AttentionBackward
            .prepare::<C>([node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((xp, shape, mask), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn fused_dropout(x: AutodiffTensor, drop: f64, seed: u64) -> AutodiffTensor {
        let (xp, node) = x.into_parts();
        let mask = DropoutMask::new(drop, seed);
        let y = kernels::dropout(&xp, mask);
        match DropoutBackward
            .prepare::<C>([node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(mask, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn fused_conv(
        x: AutodiffTensor,
        weight: AutodiffTensor,
        bias: AutodiffTensor,
        k: usize,
        stride: usize,
        padding: [usize; 2],
        out_hw: [usize; 2],
        depthwise_act: [bool; 2],
    ) -> AutodiffTensor {
        let g = geometry(k, stride, padding, out_hw, depthwise_act);
        with_optional_swish::<_, C>(
            ConvBackward,
            [x, weight, bias],
            g.act,
            |x, w, b, act| kernels::conv_forward(x, w, b, ConvGeometry { act, ..g }),
            |x, w, pre| (x, w, g, pre),
        )
    }
}

#[cfg(test)]
mod tests {
    //! The ops themselves are checked against burn's in `tests/fused_kernels.rs` (a process of
    //! their own: they draw from the device's generator, which other unit tests reseed).
    use super::*;

    /// Both forms: with fused multiply-adds (as the kernels run on FMA machines) and without.
    #[test]
    fn polynomial_exp_matches_the_library_exp() {
        fn check(exp: fn(f32) -> f32) {
            let mut worst = 0f64;
            for i in -8700..8800 {
                let x = i as f32 / 100.0 + 0.003;
                let (a, b) = (exp(x) as f64, (x as f64).exp());
                worst = worst.max(((a - b) / b).abs());
            }
            assert!(worst < 5e-7, "relative error {worst}");
            assert_eq!(exp(-200.0), exp(-87.0));
            assert!(exp(200.0).is_finite());
        }
        check(kernels::exp::<false>);
        check(kernels::exp::<true>);
    }
}
