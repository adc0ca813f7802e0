//! Dropout masks, dropout, and softmax with dropout over the last dim.

use burn::backend::flex::FlexTensor;
use multiversion::multiversion;
use rayon::prelude::*;

use super::{
    CHUNK, Uninit, assume_init, assume_init_mut, dense, dot, exp, max, row_block, shape_of, sum,
    tensor, uninit, values,
};

// ---------------------------------------------------------------------------------------------
// Softmax with dropout over the last dim.

/// Dropout decisions as a hash of (seed, element index): the same mask whatever the thread
/// count, recomputed in the backward pass instead of stored, and cheap enough to vectorise.
#[derive(Debug, Clone, Copy)]
pub struct DropoutMask {
    key: u32,
    /// An element is kept when its hash is at least this.
    threshold: u32,
    /// 1 / (1 - drop): the scale of kept elements.
    scale: f32,
}

impl DropoutMask {
    pub fn new(drop: f64, seed: u64) -> Self {
        Self {
            key: hash32(seed as u32 ^ hash32((seed >> 32) as u32)),
            threshold: (drop * 4_294_967_296.0).min(4_294_967_295.0) as u32,
            scale: (1.0 / (1.0 - drop)) as f32,
        }
    }

    /// The hash key and the keep threshold, for kernels that make the same mask elsewhere.
    pub fn key_and_threshold(&self) -> (u32, u32) {
        (self.key, self.threshold)
    }

    /// Whether element `i` of the tensor is kept.
    pub fn keeps(&self, i: usize) -> bool {
        hash32(i as u32 ^ self.key) >= self.threshold
    }

    /// Multiplies `v` (elements `first..first + v.len()` of the tensor) by the mask.
    pub(super) fn apply(&self, v: &mut [f32], first: usize) {
        apply_mask(v, first as u32, self.key, self.threshold, self.scale);
    }
}

#[multiversion(targets("x86_64+avx512f+avx512bw+avx2+fma", "x86_64+avx2+fma"))]
fn apply_mask(v: &mut [f32], first: u32, key: u32, threshold: u32, scale: f32) {
    for (j, v) in v.iter_mut().enumerate() {
        let h = hash32(first.wrapping_add(j as u32) ^ key);
        *v *= if h >= threshold { scale } else { 0.0 };
    }
}

/// `x` times the mask (its backward is the same op on the gradient).
pub fn dropout(x: &FlexTensor, mask: DropoutMask) -> FlexTensor {
    let x = dense(x);
    let xs = values(&x);
    let mut y = uninit(xs.len());
    y.par_chunks_mut(CHUNK)
        .zip(xs.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(i, (y, x))| {
            for (y, &x) in y.iter_mut().zip(x) {
                y.write(x);
            }
            // SAFETY: just copied in full.
            mask.apply(unsafe { assume_init_mut(y) }, i * CHUNK);
        });
    // SAFETY: every chunk was written.
    tensor(unsafe { assume_init(y) }, shape_of(&x))
}

/// A 32-bit integer hash with good avalanche (the "lowbias32" constants).
#[inline(always)]
fn hash32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

/// p = softmax(s * x) for each row of `d` elements.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx2+fma", "x86_64+avx2+fma"))]
pub(super) fn softmax_rows(p: &mut [Uninit], x: &[f32], d: usize, s: f32) {
    const FMA: bool = has_fma!();
    for (p, x) in p.chunks_mut(d).zip(x.chunks(d)) {
        let m = max(x);
        for (p, &x) in p.iter_mut().zip(x) {
            p.write(exp::<FMA>((x - m) * s));
        }
        // SAFETY: the loop above wrote the whole row.
        let p = unsafe { assume_init_mut(p) };
        let inv = 1.0 / sum(p);
        p.iter_mut().for_each(|p| *p *= inv);
    }
}

/// o (holding dL/dp on entry) = s * p * (o - <o, p>) for each row of `d` elements.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx2+fma", "x86_64+avx2+fma"))]
pub(super) fn softmax_grad_rows(o: &mut [f32], p: &[f32], d: usize, s: f32) {
    for (o, p) in o.chunks_mut(d).zip(p.chunks(d)) {
        let gp = dot(o, p);
        for (o, &p) in o.iter_mut().zip(p) {
            *o = s * p * (*o - gp);
        }
    }
}

/// Returns (softmax probabilities, output after dropout): softmax(scale * x) over the last dim.
pub fn softmax_dropout_forward(
    x: &FlexTensor,
    scale: f64,
    mask: Option<DropoutMask>,
) -> (FlexTensor, FlexTensor) {
    let x = dense(x);
    let shape = shape_of(&x);
    let xs = values(&x);
    let d = *shape
        .as_slice()
        .last()
        .expect("softmax over a tensor of rank >= 1");
    let block = d * row_block(d);
    let s = scale as f32;
    let mut p = uninit(xs.len());
    let mut y = uninit(if mask.is_some() { xs.len() } else { 0 });
    let rows = |i: usize, p: &mut [Uninit], y: Option<&mut [Uninit]>, x: &[f32]| {
        softmax_rows(p, x, d, s);
        // SAFETY: softmax_rows wrote every row of the block.
        let p = unsafe { assume_init_mut(p) };
        if let (Some(y), Some(mask)) = (y, mask) {
            for (y, &p) in y.iter_mut().zip(p.iter()) {
                y.write(p);
            }
            // SAFETY: just copied in full.
            mask.apply(unsafe { assume_init_mut(y) }, i * block);
        }
    };
    if mask.is_some() {
        p.par_chunks_mut(block)
            .zip(y.par_chunks_mut(block).zip(xs.par_chunks(block)))
            .enumerate()
            .for_each(|(i, (p, (y, x)))| rows(i, p, Some(y), x));
    } else {
        p.par_chunks_mut(block)
            .zip(xs.par_chunks(block))
            .enumerate()
            .for_each(|(i, (p, x))| rows(i, p, None, x));
    }
    // SAFETY: `rows` wrote all of p, and all of y when there is a mask (else y is empty).
    let (p, y) = unsafe { (assume_init(p), assume_init(y)) };
    let p = tensor(p, shape.clone());
    let y = if mask.is_some() {
        tensor(y, shape)
    } else {
        p.clone()
    };
    (p, y)
}

pub fn softmax_dropout_backward(
    p: &FlexTensor,
    scale: f64,
    mask: Option<DropoutMask>,
    grad: &FlexTensor,
) -> FlexTensor {
    let (p, g) = (dense(p), dense(grad));
    let shape = shape_of(&p);
    let (ps, gs) = (values(&p), values(&g));
    let d = *shape.as_slice().last().unwrap();
    let block = d * row_block(d);
    let s = scale as f32;
    let mut out = uninit(ps.len());
    out.par_chunks_mut(block)
        .zip(ps.par_chunks(block).zip(gs.par_chunks(block)))
        .enumerate()
        .for_each(|(i, (o, (p, g)))| {
            // gp = dL/dp (through the mask); dL/dx = s * p * (gp - <gp, p>).
            for (o, &g) in o.iter_mut().zip(g) {
                o.write(g);
            }
            // SAFETY: just copied in full.
            let o = unsafe { assume_init_mut(o) };
            if let Some(mask) = mask {
                mask.apply(o, i * block);
            }
            softmax_grad_rows(o, p, d, s);
        });
    // SAFETY: every block was written.
    tensor(unsafe { assume_init(out) }, shape)
}
