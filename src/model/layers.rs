//! The building blocks both MobileViT flavours share: conv(-norm)(-act), the MobileNetV2
//! inverted residual, a pre-norm transformer layer and the MobileViT block.

use burn::module::{ParamId, RunningState};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, LayerNorm, LayerNormConfig, Linear,
    LinearConfig, PaddingConfig2d,
};
use burn::prelude::*;

use super::draws::{Draws, next_dropout_seed};
use super::fused::linear;
pub use super::fused::swish;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};

/// How the two flavours differ in their primitive layers.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    /// TF "same" padding (asymmetric on stride 2) vs. PyTorch symmetric `k/2`.
    pub tf_padding: bool,
    pub bn_eps: f64,
    /// burn's momentum: running = (1 - m) * running + m * batch (Keras 0.99 == burn 0.01).
    pub bn_momentum: f64,
    pub ln_eps: f64,
}

pub const KERAS: Style = Style {
    tf_padding: true,
    bn_eps: 1e-3,
    bn_momentum: 0.01,
    ln_eps: 1e-6,
};
pub const PAPER: Style = Style {
    tf_padding: false,
    bn_eps: 1e-5,
    bn_momentum: 0.1,
    ln_eps: 1e-5,
};

/// Conv2d, then an optional BatchNorm, then an optional SiLU (swish).
#[derive(Module, Debug)]
pub struct ConvNormAct {
    pub conv: Conv2d,
    pub bn: Option<BatchNorm>,
    pub act: bool,
}

pub struct ConvSpec {
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub groups: usize,
    pub bias: bool,
    pub norm: bool,
    pub act: bool,
}

impl ConvSpec {
    pub fn new(cin: usize, cout: usize, k: usize, stride: usize) -> Self {
        Self {
            cin,
            cout,
            k,
            stride,
            groups: 1,
            bias: false,
            norm: true,
            act: true,
        }
    }
    pub fn init(self, style: Style, device: &Device) -> ConvNormAct {
        let padding = if style.tf_padding {
            PaddingConfig2d::Same
        } else {
            let p = self.k / 2;
            PaddingConfig2d::Explicit(p, p, p, p)
        };
        let conv = Conv2dConfig::new([self.cin, self.cout], [self.k, self.k])
            .with_stride([self.stride, self.stride])
            .with_groups(self.groups)
            .with_bias(self.bias)
            .with_padding(padding)
            .init(device);
        let bn = self.norm.then(|| {
            let mut bn = BatchNormConfig::new(self.cout)
                .with_epsilon(style.bn_eps)
                .with_momentum(style.bn_momentum)
                .init(device);
            bn.running_mean = numbered_state(&bn.running_mean);
            bn.running_var = numbered_state(&bn.running_var);
            bn
        });
        ConvNormAct {
            conv,
            bn,
            act: self.act,
        }
    }
}

impl ConvNormAct {
    /// The same layer with its convolution drawn from `draws` (norms start at ones and zeros).
    pub fn drawn(self, draws: &mut Draws) -> Self {
        Self {
            conv: draws.conv(self.conv),
            ..self
        }
    }

    /// The same layer for inference with its BatchNorm (running statistics) folded into the
    /// conv's weight and bias: one pass over the activations instead of two.
    pub fn fuse_batchnorm(self) -> Self {
        let Some(bn) = self.bn else { return self };
        let conv = self.conv;
        let out = bn.gamma.val().dims()[0];
        let scale = bn.gamma.val() / bn.running_var.value().add_scalar(bn.epsilon).sqrt();
        let weight = conv.weight.val() * scale.clone().reshape([out, 1, 1, 1]);
        let bias = match &conv.bias {
            Some(b) => b.val(),
            None => scale.zeros_like(),
        };
        let bias = (bias - bn.running_mean.value()) * scale + bn.beta.val();
        let conv = burn::nn::conv::Conv2d {
            weight: burn::module::Param::from_tensor(weight),
            bias: Some(burn::module::Param::from_tensor(bias)),
            ..conv
        };
        Self {
            conv,
            bn: None,
            act: self.act,
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let Some(bn) = &self.bn else {
            // Swish fused into the convolution (folded BatchNorm, or none).
            return super::fused::conv2d(&self.conv, x, self.act);
        };
        let x = super::fused::conv2d(&self.conv, x, false);
        if x.device().is_autodiff() && bn.training.is_enabled() {
            return batch_norm_train(bn, x, self.act);
        }
        let x = bn.forward(x);
        if self.act { swish(x) } else { x }
    }
}

thread_local! {
    /// While BatchNorm statistics are recalibrated on this thread: how many batches are already
    /// averaged in, so the next gets weight 1/(k+1) and the result is an exact mean.
    static RECALIBRATING: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` (training-mode forward passes) with every BatchNorm updating its running statistics
/// as the exact average over batches, this one being batch `batches_done + 1`, instead of with
/// its momentum.
pub fn recalibrating<R>(batches_done: usize, f: impl FnOnce() -> R) -> R {
    RECALIBRATING.set(Some(batches_done));
    let out = f();
    RECALIBRATING.set(None);
    out
}

thread_local! {
    /// How many running states the model being built has numbered so far.
    static STATES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Ids of running statistics, apart from the parameters' (which `MobileVitConfig::init`
/// numbers in visiting order), so that checkpoints of the same seed are the same bytes.
const STATE_IDS: u64 = 1 << 40;

/// Starts numbering the running states of a new model.
pub(super) fn number_states_from_zero() {
    STATES.set(0);
}

/// `state` with the next id in building order (burn draws one at random).
fn numbered_state(state: &RunningState<Tensor<1>>) -> RunningState<Tensor<1>> {
    let n = STATES.get() + 1;
    STATES.set(n);
    RunningState::with_id(ParamId::from(STATE_IDS + n), state.value_sync())
}

/// BatchNorm with batch statistics (and swish when `act`) as one fused op, updating the running
/// statistics as burn's `BatchNorm` does (or as an exact average while recalibrating).
fn batch_norm_train(bn: &BatchNorm, x: Tensor<4>, act: bool) -> Tensor<4> {
    let (y, mean, var) =
        super::fused::batch_norm_train(x, bn.gamma.val(), bn.beta.val(), bn.epsilon, act);
    let device = y.device();
    let m = RECALIBRATING
        .get()
        .map_or(bn.momentum, |k| 1.0 / (k + 1) as f64);
    let update = |state: &RunningState<Tensor<1>>, batch: Tensor<1>| {
        let running = state.value_sync().to_device(&device);
        state.update(
            running
                .mul_scalar(1.0 - m)
                .add(batch.detach().mul_scalar(m))
                .detach(),
        );
    };
    update(&bn.running_mean, mean);
    update(&bn.running_var, var);
    y
}

/// MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection, residual when shapes allow.
#[derive(Module, Debug)]
pub struct InvertedResidual {
    pub expand: ConvNormAct,
    pub depthwise: ConvNormAct,
    pub project: ConvNormAct,
    pub residual: bool,
}

impl InvertedResidual {
    pub fn drawn(self, draws: &mut Draws) -> Self {
        Self {
            expand: self.expand.drawn(draws),
            depthwise: self.depthwise.drawn(draws),
            project: self.project.drawn(draws),
            residual: self.residual,
        }
    }

    pub fn fuse_batchnorm(self) -> Self {
        Self {
            expand: self.expand.fuse_batchnorm(),
            depthwise: self.depthwise.fuse_batchnorm(),
            project: self.project.fuse_batchnorm(),
            residual: self.residual,
        }
    }

    pub fn new(
        cin: usize,
        expanded: usize,
        cout: usize,
        stride: usize,
        style: Style,
        device: &Device,
    ) -> Self {
        let dw = ConvSpec {
            groups: expanded,
            ..ConvSpec::new(expanded, expanded, 3, stride)
        };
        Self {
            expand: ConvSpec::new(cin, expanded, 1, 1).init(style, device),
            depthwise: dw.init(style, device),
            project: ConvSpec {
                act: false,
                ..ConvSpec::new(expanded, cout, 1, 1)
            }
            .init(style, device),
            residual: stride == 1 && cin == cout,
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = self
            .project
            .forward(self.depthwise.forward(self.expand.forward(x.clone())));
        if self.residual { y + x } else { y }
    }
}

/// Dropout while training, its mask from the next seed of this thread's dropout stream
/// ([`super::draws::DropoutSeeds`]): a run draws the same masks whatever trains beside it.
pub fn dropout<const D: usize>(x: Tensor<D>, d: &Dropout) -> Tensor<D> {
    if d.prob == 0.0 || !x.device().is_autodiff() {
        return x;
    }
    super::fused::dropout(x, d.prob, next_dropout_seed())
}

/// Multi-head self-attention with a fused qkv projection (`heads * head_dim` wide).
#[derive(Module, Debug)]
pub struct Attention {
    pub qkv: Linear,
    pub proj: Linear,
    pub heads: usize,
    pub head_dim: usize,
    pub dropout: Dropout,
}

impl Attention {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let drop = if x.device().is_autodiff() {
            self.dropout.prob
        } else {
            0.0
        };
        let seed = if drop > 0.0 { next_dropout_seed() } else { 0 };
        let qkv = linear(&self.qkv, x, false);
        linear(
            &self.proj,
            super::fused::attention(qkv, self.heads, self.head_dim, drop, seed),
            false,
        )
    }
}

/// Pre-norm transformer layer: x += attn(LN(x)); x += MLP(LN(x)).
#[derive(Module, Debug)]
pub struct TransformerLayer {
    pub norm1: LayerNorm,
    pub attn: Attention,
    pub norm2: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
    /// Keras puts swish after the second dense layer as well.
    pub fc2_act: bool,
    pub dropout: Dropout,
    pub ln_eps: f64,
}

pub struct TransformerSpec {
    pub dim: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub mlp_dim: usize,
    pub fc2_act: bool,
    pub dropout: f64,
}

impl TransformerSpec {
    pub fn init(&self, style: Style, device: &Device) -> TransformerLayer {
        let inner = self.heads * self.head_dim;
        let ln = || {
            LayerNormConfig::new(self.dim)
                .with_epsilon(style.ln_eps)
                .init(device)
        };
        TransformerLayer {
            norm1: ln(),
            attn: Attention {
                qkv: LinearConfig::new(self.dim, 3 * inner).init(device),
                proj: LinearConfig::new(inner, self.dim).init(device),
                heads: self.heads,
                head_dim: self.head_dim,
                dropout: DropoutConfig::new(self.dropout).init(),
            },
            norm2: ln(),
            fc1: LinearConfig::new(self.dim, self.mlp_dim).init(device),
            fc2: LinearConfig::new(self.mlp_dim, self.dim).init(device),
            fc2_act: self.fc2_act,
            dropout: DropoutConfig::new(self.dropout).init(),
            ln_eps: style.ln_eps,
        }
    }
}

impl TransformerLayer {
    /// The same layer with its dense layers drawn from `draws`.
    pub fn drawn(self, draws: &mut Draws) -> Self {
        Self {
            attn: Attention {
                qkv: draws.linear(self.attn.qkv),
                proj: draws.linear(self.attn.proj),
                ..self.attn
            },
            fc1: draws.linear(self.fc1),
            fc2: draws.linear(self.fc2),
            ..self
        }
    }

    /// As Keras' block: dropout inside attention and after each MLP layer, none on the attention output.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = x.clone() + self.attn.forward(layer_norm(&self.norm1, x, self.ln_eps));
        let y = linear(
            &self.fc1,
            layer_norm(&self.norm2, x.clone(), self.ln_eps),
            true,
        );
        let y = linear(&self.fc2, dropout(y, &self.dropout), self.fc2_act);
        x + dropout(y, &self.dropout)
    }
}

/// MobileViT block: local convs, transformer over tokens, projection, fusion with the input.
/// `patch == 1` attends over all positions (Keras); `patch == 2` attends among patches that share
/// an in-patch position (paper).
#[derive(Module, Debug)]
pub struct MobileVitBlock {
    pub conv_kxk: ConvNormAct,
    pub conv_1x1: ConvNormAct,
    pub transformer: Vec<TransformerLayer>,
    pub norm: Option<LayerNorm>,
    pub conv_proj: ConvNormAct,
    pub conv_fusion: ConvNormAct,
    pub patch: usize,
    pub ln_eps: f64,
}

impl MobileVitBlock {
    pub fn drawn(self, draws: &mut Draws) -> Self {
        Self {
            conv_kxk: self.conv_kxk.drawn(draws),
            conv_1x1: self.conv_1x1.drawn(draws),
            transformer: self
                .transformer
                .into_iter()
                .map(|t| t.drawn(draws))
                .collect(),
            conv_proj: self.conv_proj.drawn(draws),
            conv_fusion: self.conv_fusion.drawn(draws),
            ..self
        }
    }

    pub fn fuse_batchnorm(self) -> Self {
        Self {
            conv_kxk: self.conv_kxk.fuse_batchnorm(),
            conv_1x1: self.conv_1x1.fuse_batchnorm(),
            conv_proj: self.conv_proj.fuse_batchnorm(),
            conv_fusion: self.conv_fusion.fuse_batchnorm(),
            ..self
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = self.conv_1x1.forward(self.conv_kxk.forward(x.clone()));
        let [b, d, h, w] = y.dims();
        let p = self.patch;
        // Sizes that are not a multiple of the patch are resized up and back (as timm does).
        let (ph, pw) = (h.div_ceil(p) * p, w.div_ceil(p) * p);
        let resized = (ph, pw) != (h, w);
        let y = if resized { resize(y, ph, pw) } else { y };
        let (nh, nw) = (ph / p, pw / p);
        // Unfold in two copies that burn's CPU backend does fast (a batched 2D transpose to
        // channels-last, then whole rows of `d` moved): as one 6D permute it is a scalar walk.
        let mut t = y
            .reshape([b, d, ph * pw])
            .swap_dims(1, 2)
            .reshape([b, nh, p, nw, p, d])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([b * p * p, nh * nw, d]);
        for layer in &self.transformer {
            t = layer.forward(t);
        }
        if let Some(norm) = &self.norm {
            t = layer_norm(norm, t, self.ln_eps);
        }
        // Fold back, the same two copies in reverse.
        let y = t
            .reshape([b, p, p, nh, nw, d])
            .permute([0, 3, 1, 4, 2, 5])
            .reshape([b, ph * pw, d])
            .swap_dims(1, 2)
            .reshape([b, d, ph, pw]);
        let y = if resized { resize(y, h, w) } else { y };
        let y = self.conv_proj.forward(y);
        self.conv_fusion.forward(Tensor::cat(vec![x, y], 1))
    }
}

/// LayerNorm through the fused kernel (burn's `LayerNorm` keeps its epsilon private).
fn layer_norm<const D: usize>(ln: &LayerNorm, x: Tensor<D>, epsilon: f64) -> Tensor<D> {
    match &ln.beta {
        Some(beta) => super::fused::layer_norm(x, ln.gamma.val(), beta.val(), epsilon),
        None => ln.forward(x),
    }
}

fn resize(x: Tensor<4>, h: usize, w: usize) -> Tensor<4> {
    // burn's cubecl backends have no backward pass for bilinear interpolation.
    #[cfg(feature = "cube")]
    if super::fused::gpu::applies(&x) {
        return super::fused::gpu::bilinear_resize(x, h, w);
    }
    let mut options = InterpolateOptions::new(InterpolateMode::Bilinear);
    options.align_corners = false;
    options.output_size = Some([h, w]);
    interpolate(x, options)
}
