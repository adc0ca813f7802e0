//! Normalisations: BatchNorm (training, optionally with swish) and LayerNorm.

use burn::backend::flex::FlexTensor;
use burn::tensor::Shape;
use rayon::prelude::*;

use super::{
    assume_init, assume_init_mut, dense, dot_with, row_block, shape_of, sum, swish_affine,
    swish_affine_grad, tensor, uninit, values,
};

// ---------------------------------------------------------------------------------------------
// BatchNorm (training), optionally with swish. `[B, C, rest]`: each (b, c) plane is contiguous.

struct Planes {
    channels: usize,
    plane: usize,
    count: usize,
}

fn planes(shape: &Shape) -> Planes {
    let (b, c) = (shape[0], shape[1]);
    let plane = shape.num_elements() / (b * c).max(1);
    Planes {
        channels: c,
        plane,
        count: b * plane,
    }
}

/// Per-channel (mean, biased variance), merged from per-plane two-pass statistics (Chan et al.).
fn channel_stats(xs: &[f32], p: &Planes) -> (Vec<f32>, Vec<f32>) {
    let per_plane: Vec<(f64, f64)> = xs
        .par_chunks(p.plane.max(1))
        .map(|v| {
            let mean = sum(v) / v.len() as f32;
            let m2 = dot_with(v, v, |x, _| (x - mean) * (x - mean));
            (mean as f64, m2 as f64)
        })
        .collect();
    let mut mean = vec![0f32; p.channels];
    let mut var = vec![0f32; p.channels];
    for c in 0..p.channels {
        let (mut n, mut m, mut m2) = (0f64, 0f64, 0f64);
        for &(pm, pm2) in per_plane.iter().skip(c).step_by(p.channels) {
            let k = p.plane as f64;
            let total = n + k;
            let delta = pm - m;
            m += delta * k / total;
            m2 += pm2 + delta * delta * n * k / total;
            n = total;
        }
        mean[c] = m as f32;
        var[c] = (m2 / p.count as f64) as f32;
    }
    (mean, var)
}

pub fn batch_norm_forward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    epsilon: f64,
    act: bool,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let x = dense(x);
    let (gamma, beta) = (dense(gamma), dense(beta));
    let shape = shape_of(&x);
    let p = planes(&shape);
    let xs = values(&x);
    let (mean, var) = channel_stats(xs, &p);
    // y = x * scale + shift per channel.
    let (g, b) = (values(&gamma), values(&beta));
    let scale: Vec<f32> = (0..p.channels)
        .map(|c| g[c] / (var[c] as f64 + epsilon).sqrt() as f32)
        .collect();
    let shift: Vec<f32> = (0..p.channels).map(|c| b[c] - mean[c] * scale[c]).collect();
    let mut y = uninit(xs.len());
    y.par_chunks_mut(p.plane.max(1))
        .zip(xs.par_chunks(p.plane.max(1)))
        .enumerate()
        .for_each(|(i, (y, x))| {
            let (a, s) = (scale[i % p.channels], shift[i % p.channels]);
            if act {
                swish_affine(y, x, a, s);
            } else {
                for (y, &x) in y.iter_mut().zip(x) {
                    y.write(x * a + s);
                }
            }
        });
    // SAFETY: every plane was written above.
    let y = unsafe { assume_init(y) };
    let c = Shape::new([p.channels]);
    (tensor(y, shape), tensor(mean, c.clone()), tensor(var, c))
}

/// Gradients (x, gamma, beta) of [`batch_norm_forward`].
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    mean: &FlexTensor,
    var: &FlexTensor,
    epsilon: f64,
    act: bool,
    grad: &FlexTensor,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let (x, grad) = (dense(x), dense(grad));
    let (gamma, beta, mean, var) = (dense(gamma), dense(beta), dense(mean), dense(var));
    let shape = shape_of(&x);
    let p = planes(&shape);
    let (xs, gs) = (values(&x), values(&grad));
    let (gm, bt, mu, vr) = (values(&gamma), values(&beta), values(&mean), values(&var));
    let istd: Vec<f32> = vr
        .iter()
        .map(|&v| 1.0 / (v as f64 + epsilon).sqrt() as f32)
        .collect();
    let plane = p.plane.max(1);
    // Pass 1: dz = dL/d(BN output) (through swish when fused), written into `out`, and per-plane
    // sums of dz and dz * xhat.
    let mut out = uninit(xs.len());
    let sums: Vec<(f64, f64)> = out
        .par_chunks_mut(plane)
        .zip(xs.par_chunks(plane).zip(gs.par_chunks(plane)))
        .enumerate()
        .map(|(i, (dz, (x, g)))| {
            let c = i % p.channels;
            let (m, is, ga, be) = (mu[c], istd[c], gm[c], bt[c]);
            if act {
                // BN output z = (x - m) * is * ga + be.
                swish_affine_grad(dz, x, g, is * ga, be - m * is * ga);
            } else {
                for (dz, &g) in dz.iter_mut().zip(g) {
                    dz.write(g);
                }
            }
            // SAFETY: both branches wrote the whole plane.
            let dz = unsafe { assume_init_mut(dz) };
            let s2 = dot_with(dz, x, |d, x| d * (x - m) * is);
            (sum(dz) as f64, s2 as f64)
        })
        .collect();
    let mut sum_dz = vec![0f64; p.channels];
    let mut sum_dzx = vec![0f64; p.channels];
    for (i, (s1, s2)) in sums.into_iter().enumerate() {
        sum_dz[i % p.channels] += s1;
        sum_dzx[i % p.channels] += s2;
    }
    // SAFETY: pass 1 wrote every plane.
    let mut out = unsafe { assume_init(out) };
    // Pass 2: dx = gamma * istd * (dz - mean(dz) - xhat * mean(dz * xhat)).
    let n = p.count as f64;
    out.par_chunks_mut(plane)
        .zip(xs.par_chunks(plane))
        .enumerate()
        .for_each(|(i, (dz, x))| {
            let c = i % p.channels;
            let (m, is) = (mu[c], istd[c]);
            let (a, b1, b2) = (gm[c] * is, (sum_dz[c] / n) as f32, (sum_dzx[c] / n) as f32);
            for (d, &x) in dz.iter_mut().zip(x) {
                let xhat = (x - m) * is;
                *d = a * (*d - b1 - xhat * b2);
            }
        });
    let c = Shape::new([p.channels]);
    let gamma_grad = sum_dzx.iter().map(|&v| v as f32).collect();
    let beta_grad = sum_dz.iter().map(|&v| v as f32).collect();
    (
        tensor(out, shape),
        tensor(gamma_grad, c.clone()),
        tensor(beta_grad, c),
    )
}

// ---------------------------------------------------------------------------------------------
// LayerNorm over the last dim.

fn row_stats(row: &[f32], epsilon: f64) -> (f32, f32) {
    let d = row.len() as f32;
    let mean = sum(row) / d;
    let var = dot_with(row, row, |x, _| (x - mean) * (x - mean)) / d;
    (mean, 1.0 / (var as f64 + epsilon).sqrt() as f32)
}

pub fn layer_norm_forward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    epsilon: f64,
) -> FlexTensor {
    let (x, gamma, beta) = (dense(x), dense(gamma), dense(beta));
    let shape = shape_of(&x);
    let (xs, g, b) = (values(&x), values(&gamma), values(&beta));
    let d = g.len();
    let mut y = uninit(xs.len());
    y.par_chunks_mut(d * row_block(d))
        .zip(xs.par_chunks(d * row_block(d)))
        .for_each(|(y, x)| {
            for (y, x) in y.chunks_mut(d).zip(x.chunks(d)) {
                let (m, is) = row_stats(x, epsilon);
                for (((y, &x), &g), &b) in y.iter_mut().zip(x).zip(g).zip(b) {
                    y.write((x - m) * is * g + b);
                }
            }
        });
    // SAFETY: every row was written.
    tensor(unsafe { assume_init(y) }, shape)
}

/// Gradients (x, gamma, beta) of [`layer_norm_forward`].
pub fn layer_norm_backward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    epsilon: f64,
    grad: &FlexTensor,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let (x, gamma, grad) = (dense(x), dense(gamma), dense(grad));
    let shape = shape_of(&x);
    let (xs, gm, gs) = (values(&x), values(&gamma), values(&grad));
    let d = gm.len();
    let block = d * row_block(d);
    let mut out = vec![0f32; xs.len()];
    // Each task returns its partial gamma and beta gradients.
    let partials: Vec<(Vec<f32>, Vec<f32>)> = out
        .par_chunks_mut(block)
        .zip(xs.par_chunks(block).zip(gs.par_chunks(block)))
        .map(|(o, (x, g))| {
            let (mut dg, mut db) = (vec![0f32; d], vec![0f32; d]);
            for ((o, x), g) in o.chunks_mut(d).zip(x.chunks(d)).zip(g.chunks(d)) {
                let (m, is) = row_stats(x, epsilon);
                for j in 0..d {
                    let xhat = (x[j] - m) * is;
                    dg[j] += g[j] * xhat;
                    db[j] += g[j];
                    o[j] = g[j] * gm[j];
                }
                let s1 = sum(o) / d as f32;
                let s2 = dot_with(o, x, |gx, x| gx * (x - m) * is) / d as f32;
                for j in 0..d {
                    o[j] = is * (o[j] - s1 - (x[j] - m) * is * s2);
                }
            }
            (dg, db)
        })
        .collect();
    let (mut dg, mut db) = (vec![0f32; d], vec![0f32; d]);
    for (pg, pb) in partials {
        for j in 0..d {
            dg[j] += pg[j];
            db[j] += pb[j];
        }
    }
    let c = Shape::new([d]);
    (tensor(out, shape), tensor(dg, c.clone()), tensor(db, c))
}
