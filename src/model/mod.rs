//! MobileViT built at run time from a [`ModelConfig`]: the Keras example's network (`keras`)
//! and the paper's XXS/XS/S (`paper`, as timm builds them).

pub mod draws;
pub mod fused;
mod kernels;
pub mod layers;
pub mod loss;
pub mod summary;
pub mod timm;

/// Dropout decisions as a hash of (seed, element index): the mask every backend makes.
pub use kernels::DropoutMask;

use crate::config::{Flavour, ModelSection, Variant};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;
use layers::{
    ConvNormAct, ConvSpec, InvertedResidual, KERAS, MobileVitBlock, PAPER, Style, TransformerSpec,
};
use serde::{Deserialize, Serialize};

/// Everything needed to rebuild a model: stored beside every checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelConfig {
    pub flavour: Flavour,
    pub variant: Variant,
    pub num_classes: usize,
    pub image_size: usize,
    pub dropout: f64,
}

impl ModelConfig {
    pub fn from_section(m: &ModelSection, num_classes: usize, image_size: usize) -> Self {
        Self {
            flavour: m.flavour,
            variant: m.variant,
            num_classes,
            image_size,
            dropout: m.dropout,
        }
    }

    /// Short name such as `keras-xxs` or `paper-s`.
    pub fn label(&self) -> String {
        let f = match self.flavour {
            Flavour::Keras => "keras",
            Flavour::Paper => "paper",
        };
        let v = match self.variant {
            Variant::Xxs => "xxs",
            Variant::Xs => "xs",
            Variant::S => "s",
        };
        format!("{f}-{v}")
    }

    /// Paper-flavour XXS for 3 classes of 32x32 images, without dropout: small models for
    /// unit tests.
    #[cfg(test)]
    pub(crate) fn tiny() -> Self {
        Self {
            flavour: Flavour::Paper,
            variant: Variant::Xxs,
            num_classes: 3,
            image_size: 32,
            dropout: 0.0,
        }
    }

    /// A model with fresh weights drawn from `seed` (a generator of its own, so the same seed
    /// gives the same weights whatever else runs in the process).
    pub fn init_seeded(&self, seed: u64, device: &Device) -> MobileVit {
        layers::number_states_from_zero();
        let model = match self.flavour {
            Flavour::Keras => keras(self, device),
            Flavour::Paper => paper(self, device),
        };
        let model = model.drawn(&mut draws::Draws::new(seed));
        model.visit(&mut DrawNow);
        model.map(&mut NumberedIds(0))
    }

    /// [`Self::init_seeded`] with seed 0: a model to load weights into, or any fixed start.
    pub fn init(&self, device: &Device) -> MobileVit {
        self.init_seeded(0, device)
    }
}

/// Gives the parameters ids by their place in the model (burn draws them at random), so that
/// the same seed writes the same checkpoint bytes; the optimizer's state is keyed by them too.
struct NumberedIds(u64);

impl burn::module::ModuleMapper for NumberedIds {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<D>>,
    ) -> burn::module::Param<Tensor<D>> {
        self.0 += 1;
        let (_, value, mapper) = param.consume();
        burn::module::Param::from_mapped_value(burn::module::ParamId::from(self.0), value, mapper)
    }
}

/// Initialises every parameter left lazy (the norms' ones and zeros) when visited, so that a
/// model's tensors all exist before it is trained or copied.
struct DrawNow;

impl burn::module::ModuleVisitor for DrawNow {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
        let _ = param.val();
    }
}

#[derive(Module, Debug)]
pub enum Block {
    Mv2(InvertedResidual),
    Vit(MobileVitBlock),
}

impl Block {
    pub fn drawn(self, draws: &mut draws::Draws) -> Self {
        match self {
            Block::Mv2(b) => Block::Mv2(b.drawn(draws)),
            Block::Vit(b) => Block::Vit(b.drawn(draws)),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Block::Mv2(b) => b.forward(x),
            Block::Vit(b) => b.forward(x),
        }
    }
}

/// Whether every float tensor of `module` (weights and running statistics) is a finite number:
/// one read back for the whole module (x - x is 0 for a finite x, NaN otherwise).
pub fn all_finite<M: burn::module::Module>(module: &M) -> bool {
    struct Probe(Option<Tensor<1>>);
    impl burn::module::ModuleVisitor for Probe {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            let t = param.val().detach();
            let zero = (t.clone() - t).sum();
            self.0 = Some(match self.0.take() {
                Some(acc) => acc + zero,
                None => zero,
            });
        }
    }
    let mut probe = Probe(None);
    module.visit(&mut probe);
    probe
        .0
        .is_none_or(|acc| acc.into_scalar::<f32>().is_finite())
}

#[derive(Module, Debug)]
pub struct MobileVit {
    pub stem: ConvNormAct,
    pub blocks: Vec<Block>,
    pub final_conv: ConvNormAct,
    pub dropout: Dropout,
    pub head: Linear,
}

impl MobileVit {
    /// The same model with every convolution and dense layer drawn from `draws`, in building
    /// order.
    pub fn drawn(self, draws: &mut draws::Draws) -> Self {
        MobileVit {
            stem: self.stem.drawn(draws),
            blocks: self.blocks.into_iter().map(|b| b.drawn(draws)).collect(),
            final_conv: self.final_conv.drawn(draws),
            dropout: self.dropout,
            head: draws.linear(self.head),
        }
    }

    /// "Precise BN": replaces every BatchNorm's running statistics by the exact average of its
    /// batch statistics over `batches`, in training-mode forward passes whose outputs and graphs
    /// are dropped (no gradient is taken, no weight changes). The model must live on an autodiff
    /// device, where BatchNorm computes batch statistics. Returns the batches used.
    pub fn recalibrate_batch_norm(&self, batches: impl IntoIterator<Item = Tensor<4>>) -> usize {
        let mut done = 0;
        for images in batches {
            layers::recalibrating(done, || drop(self.forward(images)));
            done += 1;
        }
        done
    }

    /// An inference copy with every BatchNorm folded into its convolution (same outputs, faster).
    /// Train with the unfused model: the folded one has no running statistics left to update.
    pub fn for_inference(&self) -> Self {
        let m = self.valid();
        MobileVit {
            stem: m.stem.fuse_batchnorm(),
            blocks: m
                .blocks
                .into_iter()
                .map(|b| match b {
                    Block::Mv2(b) => Block::Mv2(b.fuse_batchnorm()),
                    Block::Vit(b) => Block::Vit(b.fuse_batchnorm()),
                })
                .collect(),
            final_conv: m.final_conv.fuse_batchnorm(),
            dropout: m.dropout,
            head: m.head,
        }
    }

    /// `images`: `[batch, 3, H, W]` in [0, 1]. Returns logits `[batch, classes]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let mut x = self.stem.forward(images);
        for block in &self.blocks {
            x = block.forward(x);
        }
        self.classify(self.final_conv.forward(x))
    }

    fn classify(&self, x: Tensor<4>) -> Tensor<2> {
        let [b, c, h, w] = x.dims();
        let pooled = x.reshape([b, c, h * w]).mean_dim(2).reshape([b, c]);
        self.head.forward(layers::dropout(pooled, &self.dropout))
    }
}

fn keras(cfg: &ModelConfig, device: &Device) -> MobileVit {
    let s = KERAS;
    let conv = |cin, cout, k, stride| ConvSpec {
        bias: true,
        norm: false,
        ..ConvSpec::new(cin, cout, k, stride)
    };
    let irb =
        |cin, e, cout, stride| Block::Mv2(InvertedResidual::new(cin, e, cout, stride, s, device));
    let vit = |cin: usize, d: usize, depth: usize| {
        let spec = TransformerSpec {
            dim: d,
            heads: 2,
            head_dim: d,
            mlp_dim: 2 * d,
            fc2_act: true,
            dropout: cfg.dropout,
        };
        Block::Vit(MobileVitBlock {
            conv_kxk: conv(cin, d, 3, 1).init(s, device),
            conv_1x1: conv(d, d, 1, 1).init(s, device),
            transformer: (0..depth).map(|_| spec.init(s, device)).collect(),
            norm: None,
            conv_proj: conv(d, cin, 1, 1).init(s, device),
            conv_fusion: conv(2 * cin, d, 3, 1).init(s, device),
            patch: 1,
            ln_eps: s.ln_eps,
        })
    };
    MobileVit {
        stem: conv(3, 16, 3, 2).init(s, device),
        blocks: vec![
            irb(16, 32, 16, 1),
            irb(16, 32, 24, 2),
            irb(24, 48, 24, 1),
            irb(24, 48, 24, 1),
            irb(24, 48, 48, 2),
            vit(48, 64, 2),
            irb(64, 128, 64, 2),
            vit(64, 80, 4),
            irb(80, 160, 80, 2),
            vit(80, 96, 3),
        ],
        final_conv: conv(96, 320, 1, 1).init(s, device),
        dropout: DropoutConfig::new(0.0).init(),
        head: LinearConfig::new(320, cfg.num_classes).init(device),
    }
}

/// The paper's stage widths: (stage1, stage2, [(C, d, L); 3], head, expansion).
fn paper_widths(v: Variant) -> (usize, usize, [(usize, usize, usize); 3], usize, usize) {
    match v {
        Variant::Xxs => (16, 24, [(48, 64, 2), (64, 80, 4), (80, 96, 3)], 320, 2),
        Variant::Xs => (32, 48, [(64, 96, 2), (80, 120, 4), (96, 144, 3)], 384, 4),
        Variant::S => (32, 64, [(96, 144, 2), (128, 192, 4), (160, 240, 3)], 640, 4),
    }
}

fn paper(cfg: &ModelConfig, device: &Device) -> MobileVit {
    let s: Style = PAPER;
    let (c1, c2, vits, head, e) = paper_widths(cfg.variant);
    let irb = |cin: usize, cout, stride| {
        Block::Mv2(InvertedResidual::new(cin, cin * e, cout, stride, s, device))
    };
    let mut blocks = vec![
        irb(16, c1, 1),
        irb(c1, c2, 2),
        irb(c2, c2, 1),
        irb(c2, c2, 1),
    ];
    let mut cin = c2;
    for (c, d, depth) in vits {
        blocks.push(irb(cin, c, 2));
        let spec = TransformerSpec {
            dim: d,
            heads: 4,
            head_dim: d / 4,
            mlp_dim: 2 * d,
            fc2_act: false,
            dropout: 0.0,
        };
        blocks.push(Block::Vit(MobileVitBlock {
            conv_kxk: ConvSpec::new(c, c, 3, 1).init(s, device),
            conv_1x1: ConvSpec {
                norm: false,
                act: false,
                ..ConvSpec::new(c, d, 1, 1)
            }
            .init(s, device),
            transformer: (0..depth).map(|_| spec.init(s, device)).collect(),
            norm: Some(
                burn::nn::LayerNormConfig::new(d)
                    .with_epsilon(s.ln_eps)
                    .init(device),
            ),
            conv_proj: ConvSpec::new(d, c, 1, 1).init(s, device),
            conv_fusion: ConvSpec::new(2 * c, c, 3, 1).init(s, device),
            patch: 2,
            ln_eps: s.ln_eps,
        }));
        cin = c;
    }
    MobileVit {
        stem: ConvSpec::new(3, 16, 3, 2).init(s, device),
        blocks,
        final_conv: ConvSpec::new(cin, head, 1, 1).init(s, device),
        dropout: DropoutConfig::new(cfg.dropout).init(),
        head: LinearConfig::new(head, cfg.num_classes).init(device),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn cfg(flavour: Flavour, variant: Variant, size: usize) -> ModelConfig {
        ModelConfig {
            flavour,
            variant,
            num_classes: 5,
            image_size: size,
            dropout: 0.1,
        }
    }

    #[test]
    fn keras_xxs_has_the_reference_parameter_count() {
        let model = cfg(Flavour::Keras, Variant::Xxs, 256).init(&Device::flex());
        let counts = summary::count_params(&model);
        assert_eq!(counts.total, 1_307_621);
        assert_eq!(counts.trainable, 1_305_077);
        assert_eq!(counts.non_trainable, 2_544);
    }

    #[test]
    fn paper_variants_match_timm_parameter_counts() {
        // timm mobilevit_{xxs,xs,s}(num_classes=5): trainable parameters.
        for (variant, expected) in [
            (Variant::Xxs, 952_629),
            (Variant::Xs, 1_934_773),
            (Variant::S, 4_940_837),
        ] {
            let model = cfg(Flavour::Paper, variant, 256).init(&Device::flex());
            assert_eq!(
                summary::count_params(&model).trainable,
                expected,
                "{variant:?}"
            );
        }
    }

    #[test]
    fn folding_batchnorm_keeps_the_outputs() {
        let device = Device::flex();
        for flavour in [Flavour::Keras, Flavour::Paper] {
            let model = cfg(flavour, Variant::Xxs, 64).init(&device);
            // Non-trivial running statistics: a few forward passes in training mode.
            let ad = device.clone().autodiff();
            let trained = model.clone().to_device(&ad).train();
            let mut draws = draws::Draws::new(2);
            for s in 0..3 {
                let x = draws.tensor(
                    [4, 3, 64, 64],
                    burn::tensor::Distribution::Uniform(0.0, 1.0 + s as f64),
                    &ad,
                );
                let _ = trained.forward(x);
            }
            let x = draws.tensor(
                [2, 3, 64, 64],
                burn::tensor::Distribution::Uniform(0.0, 1.0),
                &device,
            );
            let a = trained
                .valid()
                .forward(x.clone())
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .unwrap();
            let fused = trained.for_inference();
            assert!(summary::count_params(&fused).non_trainable == 0);
            let b = fused
                .forward(x)
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .unwrap();
            let worst = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert!(worst < 1e-4, "{flavour:?}: {worst}");
        }
    }

    #[test]
    fn output_shapes_for_several_input_sizes() {
        let device = Device::flex();
        for flavour in [Flavour::Keras, Flavour::Paper] {
            let model = cfg(flavour, Variant::Xxs, 64).init(&device).valid();
            for size in [64, 128, 100] {
                let x = Tensor::<4>::zeros([2, 3, size, size], &device);
                assert_eq!(model.forward(x).dims(), [2, 5], "{flavour:?} at {size}");
            }
        }
    }
}
