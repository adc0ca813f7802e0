//! Gradients between backward and the optimizer: clipping by the global norm, as torch's
//! `clip_grad_norm_` (and timm's `--clip-grad`) do it (one L2 norm over every gradient of the
//! model, all scaled by the same factor when it is above the limit; burn's
//! `GradientClipping::Norm` clips each tensor on its own), and splitting off a submodule's
//! gradients so it can be updated at its own rate.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;

/// Sums the squares of every gradient the model's parameters have.
struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    sum: Option<Tensor<1>>,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let s = g.powi_scalar(2).sum();
            self.sum = Some(match self.sum.take() {
                Some(total) => total + s,
                None => s,
            });
        }
    }
}

/// Multiplies every gradient of the model's parameters by `factor`.
struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.factor));
        }
    }
}

/// The global L2 norm of `grads` over `module`'s parameters.
pub fn global_norm<M: Module>(grads: &GradientsParams, module: &M) -> f64 {
    let mut v = SquaredNorm { grads, sum: None };
    module.visit(&mut v);
    v.sum.map_or(0.0, |s| s.into_scalar::<f32>() as f64).sqrt()
}

/// Scales all of `grads` so that their global norm is at most `max_norm`; returns the norm
/// before clipping.
pub fn clip_global_norm<M: Module>(grads: &mut GradientsParams, module: &M, max_norm: f64) -> f64 {
    let norm = global_norm(grads, module);
    if norm > max_norm && norm.is_finite() {
        let mut v = Scale {
            grads,
            factor: max_norm / (norm + 1e-6),
        };
        module.visit(&mut v);
    }
    norm
}

/// Moves the gradients of one submodule's parameters into a set of their own.
struct Take<'a> {
    from: &'a mut GradientsParams,
    to: GradientsParams,
}

impl ModuleVisitor for Take<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.from.remove::<D>(param.id) {
            self.to.register(param.id, g);
        }
    }
}

/// The gradients of `part`'s parameters, removed from `grads`.
pub fn split_off<M: Module>(grads: &mut GradientsParams, part: &M) -> GradientsParams {
    let mut v = Take {
        from: grads,
        to: GradientsParams::new(),
    };
    part.visit(&mut v);
    v.to
}

/// The ids of `module`'s float parameters, in visiting order (the fused optimizer's groups).
#[cfg(feature = "cube")]
pub fn param_ids<M: Module>(module: &M) -> Vec<burn::module::ParamId> {
    struct Ids(Vec<burn::module::ParamId>);
    impl ModuleVisitor for Ids {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.id);
        }
    }
    let mut ids = Ids(Vec::new());
    module.visit(&mut ids);
    ids.0
}

/// The shape of each of `module`'s float parameters, by id (the fused optimizer's state).
#[cfg(feature = "cube")]
pub fn param_shapes<M: Module>(
    module: &M,
) -> std::collections::HashMap<burn::module::ParamId, Vec<usize>> {
    struct Shapes(std::collections::HashMap<burn::module::ParamId, Vec<usize>>);
    impl ModuleVisitor for Shapes {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.insert(param.id, param.lazy_shape().to_vec());
        }
    }
    let mut shapes = Shapes(Default::default());
    module.visit(&mut shapes);
    shapes.0
}
