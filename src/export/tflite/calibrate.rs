//! Activation ranges for a full-integer file: each activation's (min, max) over the calibration
//! images, through the float graph (TF's converter calibrates the same way). Choosing ranges
//! that minimise the int8 error over each tensor's histogram (clipping outliers) was tried: on
//! the trained models of the tests it made no measurable difference to top-1 agreement.

use super::eval;
use super::graph::Graph;
use rayon::prelude::*;

type Ranges = Vec<Option<(f32, f32)>>;

fn merge(mut a: Ranges, b: Ranges) -> Ranges {
    for (x, y) in a.iter_mut().zip(b) {
        *x = match (*x, y) {
            (Some((l, h)), Some((l2, h2))) => Some((l.min(l2), h.max(h2))),
            (x, y) => x.or(y),
        };
    }
    a
}

/// Each activation's (min, max) over `images` (NHWC images of `len` values one after another).
pub fn ranges(g: &Graph, images: &[f32], len: usize) -> Ranges {
    let empty = || vec![None; g.tensors.len()];
    images
        .par_chunks_exact(len)
        .fold(empty, |mut ranges: Ranges, image| {
            let mut seen = empty();
            eval::run(g, image, |t, v| {
                let lo = v.iter().copied().fold(f32::INFINITY, f32::min);
                let hi = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                seen[t] = Some((lo, hi));
            });
            ranges = merge(ranges, seen);
            ranges
        })
        .reduce(empty, merge)
}
