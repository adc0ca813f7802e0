//! Activations: swish, forward and backward (its vectorised loops live in the parent module,
//! shared with the fused ops that end in swish).

use burn::backend::flex::FlexTensor;
use rayon::prelude::*;

use super::{
    CHUNK, assume_init, dense, shape_of, swish_affine, swish_affine_grad, tensor, uninit, values,
};

// ---------------------------------------------------------------------------------------------
// Swish.

pub fn swish_forward(x: &FlexTensor) -> FlexTensor {
    let x = dense(x);
    let xs = values(&x);
    let mut y = uninit(xs.len());
    y.par_chunks_mut(CHUNK)
        .zip(xs.par_chunks(CHUNK))
        .for_each(|(y, x)| swish_affine(y, x, 1.0, 0.0));
    // SAFETY: swish_affine wrote every chunk.
    tensor(unsafe { assume_init(y) }, shape_of(&x))
}

pub fn swish_backward(x: &FlexTensor, grad: &FlexTensor) -> FlexTensor {
    let (x, g) = (dense(x), dense(grad));
    let (xs, gs) = (values(&x), values(&g));
    let mut out = uninit(xs.len());
    out.par_chunks_mut(CHUNK)
        .zip(xs.par_chunks(CHUNK).zip(gs.par_chunks(CHUNK)))
        .for_each(|(o, (x, g))| swish_affine_grad(o, x, g, 1.0, 0.0));
    // SAFETY: swish_affine_grad wrote every chunk.
    tensor(unsafe { assume_init(out) }, shape_of(&x))
}
