//! The CPU side: mvlab's kernels (`super::super::kernels`) as one burn backend extension for
//! `Flex` (inference) and `Autodiff<Flex>` (training), each op with its handwritten backward
//! pass.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Flex, backend_extension};

use crate::model::kernels::{self, AttentionShape, ConvGeometry, DropoutMask};

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
    //! The ops themselves are checked against burn's in the integration tests (`fused_kernels`).
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
