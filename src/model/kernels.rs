//! The CPU kernels behind [`super::fused`]: plain loops over contiguous f32 buffers taken from
//! and returned as flex tensors, parallel with rayon, written so the compiler vectorises them.

use burn::backend::flex::FlexTensor;
use burn::prelude::*;
use burn::tensor::{DType, Shape};
use multiversion::multiversion;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Output memory a kernel is about to write in full: skipping the zeroing saves a pass over
/// memory per op (zeroing was the largest single overhead left in a training step).
type Uninit = MaybeUninit<f32>;

fn uninit(n: usize) -> Vec<Uninit> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: MaybeUninit needs no initialisation.
    unsafe { v.set_len(n) };
    v
}

/// # Safety
/// Every element of `v` has been written.
unsafe fn assume_init(v: Vec<Uninit>) -> Vec<f32> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: same layout, allocation and length; the caller vouches for initialisation.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<f32>(), v.len(), v.capacity()) }
}

/// # Safety
/// Every element of `v` has been written.
unsafe fn assume_init_mut(v: &mut [Uninit]) -> &mut [f32] {
    // SAFETY: same layout; the caller vouches for initialisation.
    unsafe { &mut *(v as *mut [Uninit] as *mut [f32]) }
}

/// Elements per parallel task for elementwise work: large enough to amortise scheduling.
const CHUNK: usize = 1 << 15;

// ---------------------------------------------------------------------------------------------
// Flat f32 buffers in and out of flex tensors.

/// A contiguous view (copied only when `t` is a strided view).
fn dense(t: &FlexTensor) -> FlexTensor {
    assert_eq!(t.dtype(), DType::F32, "fused ops expect f32 tensors");
    t.to_contiguous()
}

fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32 tensor")
}

fn tensor(v: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(v, shape))
}

fn shape_of(t: &FlexTensor) -> Shape {
    t.layout().shape().clone()
}

// ---------------------------------------------------------------------------------------------
// Scalar math that autovectorises.

/// a * b + c: one fused instruction when `FMA` (the caller's multiversioned target has it, see
/// [`has_fma`]), else a multiply and an add. Plain `mul_add` would be a libm call on targets
/// without FMA.
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// Whether the multiversioned function it is used in was compiled for a target with FMA.
macro_rules! has_fma {
    () => {
        multiversion::target::target_cfg_f!(target_feature = "fma")
    };
}

/// e^x for f32 without a libm call: range reduction to r in [-ln2/2, ln2/2], a degree-6
/// polynomial (the Cephes expf coefficients, about 1 ulp), and 2^n built from the exponent bits.
/// Branch-free, so loops over it vectorise. Inputs are clamped to the finite range.
#[inline(always)]
pub fn exp<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    let k = madd::<FMA>(x, LOG2E, ROUND);
    let n = k - ROUND;
    let r = madd::<FMA>(-n, LN2_LO, madd::<FMA>(-n, LN2_HI, x));
    let p = 1.987_569_1e-4_f32;
    let p = madd::<FMA>(p, r, 1.398_199_9e-3);
    let p = madd::<FMA>(p, r, 8.333_452e-3);
    let p = madd::<FMA>(p, r, 4.166_579_6e-2);
    let p = madd::<FMA>(p, r, 1.666_666_5e-1);
    let p = madd::<FMA>(p, r, 0.5);
    let e = madd::<FMA>(p * r, r, r + 1.0);
    // The low mantissa bits of k hold n; 2^n = (n + 127) << 23.
    let bits = (k.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127)) << 23;
    e * f32::from_bits(bits)
}

/// Reductions over 8 independent lanes: a single running sum is a serial chain the compiler may
/// not reorder, so it runs one element per add latency; eight lanes vectorise.
const LANES: usize = 8;

#[inline(always)]
fn sum(v: &[f32]) -> f32 {
    dot_with(v, v, |a, _| a)
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_with(a, b, |a, b| a * b)
}

#[inline(always)]
fn dot_with(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += f(x[i], y[i]);
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(&x, &y)| f(x, y)).sum();
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn max(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = v.chunks_exact(LANES);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for x in chunks {
        for i in 0..LANES {
            acc[i] = acc[i].max(x[i]);
        }
    }
    acc.iter().fold(tail, |a, &b| a.max(b))
}

/// The loops below are compiled for AVX-512 and AVX2 as well as the baseline, picked at run
/// time: their elementwise maths (polynomial exp, division) is compute-bound.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx2+fma", "x86_64+avx2+fma"))]
fn swish_affine(y: &mut [Uninit], x: &[f32], a: f32, s: f32) {
    const FMA: bool = has_fma!();
    for (y, &x) in y.iter_mut().zip(x) {
        let z = madd::<FMA>(x, a, s);
        y.write(z * sigmoid::<FMA>(z));
    }
}

/// v = swish(v), in place.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx2+fma", "x86_64+avx2+fma"))]
fn swish_in_place(v: &mut [f32]) {
    const FMA: bool = has_fma!();
    for v in v.iter_mut() {
        *v *= sigmoid::<FMA>(*v);
    }
}

/// o = g * swish'(a * x + s).
#[multiversion(targets("x86_64+avx512f+avx512bw+avx2+fma", "x86_64+avx2+fma"))]
fn swish_affine_grad(o: &mut [Uninit], x: &[f32], g: &[f32], a: f32, s: f32) {
    const FMA: bool = has_fma!();
    for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
        o.write(g * swish_grad::<FMA>(madd::<FMA>(x, a, s)));
    }
}

#[inline(always)]
fn sigmoid<const FMA: bool>(x: f32) -> f32 {
    1.0 / (1.0 + exp::<FMA>(-x))
}

/// d swish / dx = s + x s (1 - s) with s = sigmoid(x).
#[inline(always)]
fn swish_grad<const FMA: bool>(x: f32) -> f32 {
    let s = sigmoid::<FMA>(x);
    s + x * s * (1.0 - s)
}

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

/// Rows per parallel task.
fn row_block(d: usize) -> usize {
    (CHUNK / d.max(1)).max(1)
}

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

    /// Multiplies `v` (elements `first..first + v.len()` of the tensor) by the mask.
    fn apply(&self, v: &mut [f32], first: usize) {
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
fn softmax_rows(p: &mut [Uninit], x: &[f32], d: usize, s: f32) {
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
fn softmax_grad_rows(o: &mut [f32], p: &[f32], d: usize, s: f32) {
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

// ---------------------------------------------------------------------------------------------
// Matrix products through the gemm crate, on strided views of flat buffers.

/// A strided matrix inside a flat buffer: element (i, j) sits at `at + i * rs + j * cs`.
#[derive(Debug, Clone, Copy)]
struct View {
    at: usize,
    rs: usize,
    cs: usize,
}

impl View {
    fn rows(at: usize, rs: usize) -> Self {
        Self { at, rs, cs: 1 }
    }

    fn transposed(self) -> Self {
        Self {
            at: self.at,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// One past the largest index an `m x n` matrix through this view reaches.
    fn end(self, (m, n): (usize, usize)) -> usize {
        if m == 0 || n == 0 {
            self.at
        } else {
            self.at + (m - 1) * self.rs + (n - 1) * self.cs + 1
        }
    }
}

/// An output buffer that parallel tasks write disjoint parts of.
#[derive(Clone, Copy)]
struct Shared {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: tasks only write through it where no other task reads or writes (see `product`).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    fn new(v: &mut [f32]) -> Self {
        Self {
            ptr: v.as_mut_ptr(),
            len: v.len(),
        }
    }

    /// For a buffer the tasks write in full before it is read.
    fn uninit(v: &mut [Uninit]) -> Self {
        Self {
            ptr: v.as_mut_ptr().cast(),
            len: v.len(),
        }
    }
}

/// dst = [dst +] lhs . rhs (`m x k` times `k x n`) through the gemm crate, on `threads` threads.
/// # Safety
/// No other thread touches the elements of `dst` the `m x n` view covers during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    dst: Shared,
    d: View,
    accumulate: bool,
    (m, n, k): (usize, usize, usize),
    lhs: &[f32],
    l: View,
    rhs: &[f32],
    r: View,
    threads: usize,
) {
    assert!(d.end((m, n)) <= dst.len);
    assert!(l.end((m, k)) <= lhs.len() && r.end((k, n)) <= rhs.len());
    // SAFETY: the asserts keep every index inside the buffers; the caller rules out races.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.ptr.add(d.at),
            d.cs as isize,
            d.rs as isize,
            accumulate,
            lhs.as_ptr().add(l.at),
            l.cs as isize,
            l.rs as isize,
            rhs.as_ptr().add(r.at),
            r.cs as isize,
            r.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            if threads > 1 {
                gemm::Parallelism::Rayon(threads)
            } else {
                gemm::Parallelism::None
            },
        )
    }
}

/// dst (m x n, contiguous) = [dst +] lhs (m x k) . rhs (k x n); strides are (row, column).
#[allow(clippy::too_many_arguments)]
fn matmul(
    dst: &mut [f32],
    accumulate: bool,
    (m, n, k): (usize, usize, usize),
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
    threads: usize,
) {
    let (l, r) = (
        View {
            at: 0,
            rs: lhs_rs,
            cs: lhs_cs,
        },
        View {
            at: 0,
            rs: rhs_rs,
            cs: rhs_cs,
        },
    );
    // SAFETY: `dst` is borrowed exclusively for the call.
    unsafe {
        product(
            Shared::new(dst),
            View::rows(0, n),
            accumulate,
            (m, n, k),
            lhs,
            l,
            rhs,
            r,
            threads,
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Linear layers over the last dim, as one matrix product over all rows with the bias written
// first and swish applied in place (burn's op adds the bias, and swish, in passes of their own).

/// `x` `[.., in]` times `weight` `[in, out]` plus `bias`, then swish when `act`.
pub fn linear_forward(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: &FlexTensor,
    act: bool,
) -> FlexTensor {
    let (x, weight, bias) = (dense(x), dense(weight), dense(bias));
    let mut shape = shape_of(&x);
    let (din, dout) = (shape_of(&weight)[0], shape_of(&weight)[1]);
    assert_eq!(shape[shape.num_dims() - 1], din, "linear input width");
    let (xs, ws, bs) = (values(&x), values(&weight), values(&bias));
    let rows = xs.len() / din.max(1);
    let mut out = uninit(rows * dout);
    for row in out.chunks_mut(dout) {
        for (v, &b) in row.iter_mut().zip(bs) {
            v.write(b);
        }
    }
    // SAFETY: filled with the bias above.
    let mut out = unsafe { assume_init(out) };
    let threads = rayon::current_num_threads();
    matmul(
        &mut out,
        true,
        (rows, dout, din),
        xs,
        (din, 1),
        ws,
        (dout, 1),
        threads,
    );
    if act {
        out.par_chunks_mut(CHUNK).for_each(swish_in_place);
    }
    let last = shape.num_dims() - 1;
    shape[last] = dout;
    tensor(out, shape)
}

/// Gradients (x, weight, bias) of [`linear_forward`] without the activation.
pub fn linear_backward(
    x: &FlexTensor,
    weight: &FlexTensor,
    grad: &FlexTensor,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let (x, weight, grad) = (dense(x), dense(weight), dense(grad));
    let (din, dout) = (shape_of(&weight)[0], shape_of(&weight)[1]);
    let (xs, ws, gs) = (values(&x), values(&weight), values(&grad));
    let rows = xs.len() / din.max(1);
    let threads = rayon::current_num_threads();
    // dx = dy . w^T
    let mut dx = vec![0f32; xs.len()];
    matmul(
        &mut dx,
        false,
        (rows, din, dout),
        gs,
        (dout, 1),
        ws,
        (1, dout),
        threads,
    );
    // dw = x^T . dy
    let mut dw = vec![0f32; din * dout];
    matmul(
        &mut dw,
        false,
        (din, dout, rows),
        xs,
        (1, din),
        gs,
        (dout, 1),
        threads,
    );
    // db = the column sums of dy, by blocks of rows
    let db = gs
        .par_chunks(dout * row_block(dout))
        .map(|block| {
            let mut acc = vec![0f32; dout];
            for row in block.chunks(dout) {
                acc.iter_mut().zip(row).for_each(|(a, &g)| *a += g);
            }
            acc
        })
        .reduce(
            || vec![0f32; dout],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            },
        );
    (
        tensor(dx, shape_of(&x)),
        tensor(dw, shape_of(&weight)),
        tensor(db, Shape::new([dout])),
    )
}

// ---------------------------------------------------------------------------------------------
// Multi-head self-attention over packed q, k, v projections, one block of query rows at a time:
// the [B, heads, T, T] score and probability tensors never exist in full, so they stay in cache,
// and q, k, v are read in place (no head split or merge copies).

/// Attention's sizes: `qkv` is `[batch, tokens, 3 * heads * head_dim]` with the last dim laid
/// out as (q|k|v, head, channel); the output is `[batch, tokens, heads * head_dim]`.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub heads: usize,
    pub head_dim: usize,
    /// Scores are softmax(scale * q . k).
    pub scale: f32,
}

/// Where one (image, head) pair's q, k, v and output rows live.
#[derive(Debug, Clone, Copy)]
struct Packed {
    tokens: usize,
    heads: usize,
    head_dim: usize,
}

impl Packed {
    fn inner(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Part `which` (0 = q, 1 = k, 2 = v) of `pair` = image * heads + head, from token `row` on.
    fn qkv(&self, which: usize, pair: usize, row: usize) -> View {
        let (image, head) = (pair / self.heads, pair % self.heads);
        let width = 3 * self.inner();
        View::rows(
            (image * self.tokens + row) * width + which * self.inner() + head * self.head_dim,
            width,
        )
    }

    /// The output (or its gradient) of `pair` from token `row` on.
    fn out(&self, pair: usize, row: usize) -> View {
        let (image, head) = (pair / self.heads, pair % self.heads);
        View::rows(
            (image * self.tokens + row) * self.inner() + head * self.head_dim,
            self.inner(),
        )
    }

    /// Query rows per block: a block's scores (`rows x tokens`) stay about 128 KiB.
    fn block_rows(&self) -> usize {
        (CHUNK / self.tokens.max(1)).clamp(1, self.tokens.max(1))
    }
}

fn packed(qkv: &FlexTensor, a: AttentionShape) -> (usize, Packed) {
    let shape = shape_of(qkv);
    assert_eq!(
        shape.num_dims(),
        3,
        "attention over [batch, tokens, 3 * inner]"
    );
    assert_eq!(shape[2], 3 * a.heads * a.head_dim, "packed q, k, v width");
    let l = Packed {
        tokens: shape[1],
        heads: a.heads,
        head_dim: a.head_dim,
    };
    (shape[0], l)
}

/// p = softmax(scale * q k^T) for query rows `r0..r0 + m` of `pair`, from scratch `s`.
#[allow(clippy::too_many_arguments)]
fn probabilities(
    p: &mut [f32],
    s: &mut [f32],
    xs: &[f32],
    l: Packed,
    a: AttentionShape,
    pair: usize,
    r0: usize,
    m: usize,
) {
    let t = l.tokens;
    // SAFETY: `s` is this task's own scratch.
    unsafe {
        product(
            Shared::new(s),
            View::rows(0, t),
            false,
            (m, t, l.head_dim),
            xs,
            l.qkv(0, pair, r0),
            xs,
            l.qkv(1, pair, 0).transposed(),
            1,
        )
    };
    // SAFETY: f32 -> MaybeUninit<f32> only forgets that the values are initialised.
    let p_uninit = unsafe { &mut *(p as *mut [f32] as *mut [Uninit]) };
    softmax_rows(p_uninit, s, t, a.scale);
}

/// softmax(scale * q k^T) (then dropout) times v, per head; `[batch, tokens, heads * head_dim]`.
pub fn attention_forward(
    qkv: &FlexTensor,
    a: AttentionShape,
    mask: Option<DropoutMask>,
) -> FlexTensor {
    let qkv = dense(qkv);
    let (b, l) = packed(&qkv, a);
    let (t, xs) = (l.tokens, values(&qkv));
    let (rows, blocks) = (l.block_rows(), t.div_ceil(l.block_rows()));
    let mut out = uninit(b * t * l.inner());
    let dst = Shared::uninit(&mut out);
    (0..b * l.heads * blocks).into_par_iter().for_each_init(
        || (vec![0f32; rows * t], vec![0f32; rows * t]),
        |(s, p), task| {
            let (pair, r0) = (task / blocks, (task % blocks) * rows);
            let m = rows.min(t - r0);
            let (s, p) = (&mut s[..m * t], &mut p[..m * t]);
            probabilities(p, s, xs, l, a, pair, r0, m);
            if let Some(mask) = mask {
                // Indexed as the elements of a [batch, heads, tokens, tokens] tensor.
                mask.apply(p, (pair * t + r0) * t);
            }
            // SAFETY: tasks write disjoint (rows, head) blocks of the output.
            unsafe {
                product(
                    dst,
                    l.out(pair, r0),
                    false,
                    (m, l.head_dim, t),
                    p,
                    View::rows(0, t),
                    xs,
                    l.qkv(2, pair, 0),
                    1,
                )
            };
        },
    );
    // SAFETY: the (rows, head) blocks of all tasks cover the output.
    tensor(unsafe { assume_init(out) }, Shape::new([b, t, l.inner()]))
}

/// The gradient of `qkv` under [`attention_forward`], recomputing the probabilities block by
/// block instead of keeping them from the forward pass.
pub fn attention_backward(
    qkv: &FlexTensor,
    a: AttentionShape,
    mask: Option<DropoutMask>,
    grad: &FlexTensor,
) -> FlexTensor {
    let (qkv, grad) = (dense(qkv), dense(grad));
    let (b, l) = packed(&qkv, a);
    let (t, dh) = (l.tokens, l.head_dim);
    let (xs, gs) = (values(&qkv), values(&grad));
    assert_eq!(gs.len(), b * t * l.inner(), "attention gradient shape");
    let rows = l.block_rows();
    let mut dqkv = uninit(xs.len());
    let dst = Shared::uninit(&mut dqkv);
    // One task per (image, head): dk and dv sum over its query blocks.
    (0..b * l.heads).into_par_iter().for_each_init(
        || {
            (
                vec![0f32; rows * t],
                vec![0f32; rows * t],
                vec![0f32; rows * t],
            )
        },
        |(s, p, dp), pair| {
            for r0 in (0..t).step_by(rows) {
                let m = rows.min(t - r0);
                let (s, p, dp) = (&mut s[..m * t], &mut p[..m * t], &mut dp[..m * t]);
                let first = (pair * t + r0) * t;
                probabilities(p, s, xs, l, a, pair, r0, m);
                // s = the probabilities after dropout, as the forward pass used them.
                s.copy_from_slice(p);
                if let Some(mask) = mask {
                    mask.apply(s, first);
                }
                let accumulate = r0 > 0;
                let block = View::rows(0, t);
                // SAFETY (all four products): this task alone writes its pair's dq, dk, dv.
                unsafe {
                    // dv += p^T . dout
                    product(
                        dst,
                        l.qkv(2, pair, 0),
                        accumulate,
                        (t, dh, m),
                        s,
                        block.transposed(),
                        gs,
                        l.out(pair, r0),
                        1,
                    );
                    // dp = dout . v^T (through the dropout mask)
                    product(
                        Shared::new(dp),
                        block,
                        false,
                        (m, t, dh),
                        gs,
                        l.out(pair, r0),
                        xs,
                        l.qkv(2, pair, 0).transposed(),
                        1,
                    );
                }
                if let Some(mask) = mask {
                    mask.apply(dp, first);
                }
                // dp = d(scores) = scale * p * (dp - <dp, p>)
                softmax_grad_rows(dp, p, t, a.scale);
                unsafe {
                    // dq = dscores . k
                    product(
                        dst,
                        l.qkv(0, pair, r0),
                        false,
                        (m, dh, t),
                        dp,
                        block,
                        xs,
                        l.qkv(1, pair, 0),
                        1,
                    );
                    // dk += dscores^T . q
                    product(
                        dst,
                        l.qkv(1, pair, 0),
                        accumulate,
                        (t, dh, m),
                        dp,
                        block.transposed(),
                        xs,
                        l.qkv(0, pair, r0),
                        1,
                    );
                }
            }
        },
    );
    // SAFETY: each (image, head) task wrote its dq, dk and dv in full (the first block's
    // products overwrite, the later ones add).
    tensor(unsafe { assume_init(dqkv) }, shape_of(&qkv))
}

// ---------------------------------------------------------------------------------------------
// Depthwise convolution (one k x k filter per channel), NCHW, any stride and padding.

/// Geometry of a convolution over `[B, C, h, w]` giving `[B, C', oh, ow]`.
#[derive(Debug, Clone, Copy)]
pub struct ConvGeometry {
    pub k: usize,
    pub stride: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub oh: usize,
    pub ow: usize,
    /// One k x k filter per channel (else groups = 1).
    pub depthwise: bool,
    /// Swish on the output (applied while it is still in cache).
    pub act: bool,
}

impl ConvGeometry {
    /// The output columns `ox` whose input column `ox * stride + kx - pad_left` is inside `[0, w)`.
    #[inline(always)]
    fn valid(&self, kx: usize, w: usize) -> std::ops::Range<usize> {
        // ix = ox * s + kx - p lies in [0, w) <=> p - kx <= ox * s <= w - 1 + p - kx.
        let (s, p, kx) = (self.stride as isize, self.pad_left as isize, kx as isize);
        let lo = ((p - kx).max(0) + s - 1) / s;
        let hi = ((w as isize - 1 + p - kx).div_euclid(s) + 1).clamp(0, self.ow as isize);
        (lo.min(hi) as usize)..(hi as usize)
    }

    #[inline(always)]
    /// Input row of output row `oy` under kernel row `ky`, if inside the image.
    fn row(&self, oy: usize, ky: usize, h: usize) -> Option<usize> {
        let iy = (oy * self.stride + ky) as isize - self.pad_top as isize;
        (iy >= 0 && (iy as usize) < h).then_some(iy as usize)
    }
}

/// One output plane `o` (pre-filled with the bias) of input plane `xp` under filter `wk`.
/// With a stride, each input row is first split into its `stride` phases (columns i, i + s,
/// i + 2s, ...), so that every tap reads a contiguous run and the loop vectorises.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx2+fma", "x86_64+avx2+fma"))]
fn depthwise_plane(o: &mut [f32], xp: &[f32], wk: &[f32], g: ConvGeometry, (h, w): (usize, usize)) {
    let (k, s) = (g.k, g.stride);
    let phase_len = w.div_ceil(s);
    let mut phases = vec![0f32; if s > 1 { s * phase_len } else { 0 }];
    for oy in 0..g.oh {
        let orow = &mut o[oy * g.ow..(oy + 1) * g.ow];
        for ky in 0..k {
            let Some(iy) = g.row(oy, ky, h) else { continue };
            let xrow = &xp[iy * w..(iy + 1) * w];
            if s > 1 {
                for (p, phase) in phases.chunks_mut(phase_len).enumerate() {
                    for (d, &v) in phase.iter_mut().zip(xrow[p..].iter().step_by(s)) {
                        *d = v;
                    }
                }
            }
            for kx in 0..k {
                let wv = wk[ky * k + kx];
                let r = g.valid(kx, w);
                let start = r.start * s + kx - g.pad_left;
                // Input columns start, start + s, ...: a run of phase start % s.
                let src = if s == 1 {
                    &xrow[start..start + r.len()]
                } else {
                    let at = (start % s) * phase_len + start / s;
                    &phases[at..at + r.len()]
                };
                for (o, &x) in orow[r].iter_mut().zip(src) {
                    *o += wv * x;
                }
            }
        }
    }
}

/// Scatters output-gradient plane `dy` into `dxp` and returns the filter's gradient.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx2+fma", "x86_64+avx2+fma"))]
fn depthwise_plane_backward(
    dxp: &mut [f32],
    xp: &[f32],
    dy: &[f32],
    wk: &[f32],
    g: ConvGeometry,
    (h, w): (usize, usize),
) -> Vec<f32> {
    let (k, s) = (g.k, g.stride);
    let mut dw = vec![0f32; k * k];
    for oy in 0..g.oh {
        let dyrow = &dy[oy * g.ow..(oy + 1) * g.ow];
        for ky in 0..k {
            let Some(iy) = g.row(oy, ky, h) else { continue };
            let xrow = &xp[iy * w..(iy + 1) * w];
            let dxrow = &mut dxp[iy * w..(iy + 1) * w];
            for kx in 0..k {
                let wv = wk[ky * k + kx];
                let r = g.valid(kx, w);
                let start = r.start * s + kx - g.pad_left;
                let dyr = &dyrow[r.clone()];
                if s == 1 {
                    let n = r.len();
                    for (d, &gy) in dxrow[start..start + n].iter_mut().zip(dyr) {
                        *d += wv * gy;
                    }
                    dw[ky * k + kx] += dot(dyr, &xrow[start..start + n]);
                } else {
                    let mut acc = 0f32;
                    for (j, &gy) in dyr.iter().enumerate() {
                        dxrow[start + j * s] += wv * gy;
                        acc += gy * xrow[start + j * s];
                    }
                    dw[ky * k + kx] += acc;
                }
            }
        }
    }
    dw
}

fn depthwise_forward(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: &FlexTensor,
    g: ConvGeometry,
) -> FlexTensor {
    let (x, weight, bias) = (dense(x), dense(weight), dense(bias));
    let shape = shape_of(&x);
    let (b, c, h, w) = (shape[0], shape[1], shape[2], shape[3]);
    let (xs, ws, bs) = (values(&x), values(&weight), values(&bias));
    let k = g.k;
    // Not zeroed first: each plane starts as its bias.
    let mut out = uninit(b * c * g.oh * g.ow);
    out.par_chunks_mut(g.oh * g.ow)
        .zip(xs.par_chunks(h * w))
        .enumerate()
        .for_each(|(i, (o, xp))| {
            let ch = i % c;
            o.iter_mut().for_each(|v| {
                v.write(bs[ch]);
            });
            // SAFETY: just filled.
            let o = unsafe { assume_init_mut(o) };
            depthwise_plane(o, xp, &ws[ch * k * k..(ch + 1) * k * k], g, (h, w));
            if g.act {
                swish_in_place(o);
            }
        });
    // SAFETY: every plane was filled.
    tensor(unsafe { assume_init(out) }, Shape::new([b, c, g.oh, g.ow]))
}

/// Gradients (x, weight, bias) of [`depthwise_forward`].
fn depthwise_backward(
    x: &FlexTensor,
    weight: &FlexTensor,
    g: ConvGeometry,
    grad: &FlexTensor,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let (x, weight, grad) = (dense(x), dense(weight), dense(grad));
    let shape = shape_of(&x);
    let (c, h, w) = (shape[1], shape[2], shape[3]);
    let (xs, ws, gs) = (values(&x), values(&weight), values(&grad));
    let k = g.k;
    let mut dx = vec![0f32; xs.len()];
    // Per plane: scatter dy into dx, and the plane's share of the weight and bias gradients.
    let partials: Vec<(Vec<f32>, f32)> = dx
        .par_chunks_mut(h * w)
        .zip(xs.par_chunks(h * w).zip(gs.par_chunks(g.oh * g.ow)))
        .enumerate()
        .map(|(i, (dxp, (xp, dy)))| {
            let ch = i % c;
            let wk = &ws[ch * k * k..(ch + 1) * k * k];
            let dw = depthwise_plane_backward(dxp, xp, dy, wk, g, (h, w));
            (dw, sum(dy))
        })
        .collect();
    let mut dw = vec![0f32; c * k * k];
    let mut db = vec![0f32; c];
    for (i, (pw, pb)) in partials.into_iter().enumerate() {
        let ch = i % c;
        for (d, v) in dw[ch * k * k..(ch + 1) * k * k].iter_mut().zip(pw) {
            *d += v;
        }
        db[ch] += pb;
    }
    (
        tensor(dx, shape),
        tensor(dw, shape_of(&weight)),
        tensor(db, Shape::new([c])),
    )
}

// ---------------------------------------------------------------------------------------------
// Dense convolution (groups = 1): matrix products per image through the gemm crate, over a padded
// channels-last copy of the image (stride 1) or its im2col matrix (other strides, 1x1 in place).

/// Images in parallel when there are enough of them, otherwise threads inside each product.
fn per_image_threads(batch: usize) -> (bool, usize) {
    let threads = rayon::current_num_threads();
    if batch >= threads {
        (true, 1)
    } else {
        (false, threads)
    }
}

/// Runs `image` on each image's (output, input) pair of chunks, with the thread count
/// [`per_image_threads`] gives it.
fn for_each_image<D: Send>(
    out: &mut [D],
    xs: &[f32],
    (out_len, x_len): (usize, usize),
    batch: usize,
    image: impl Fn((&mut [D], &[f32]), usize) + Sync,
) {
    match per_image_threads(batch) {
        (true, t) => out
            .par_chunks_mut(out_len)
            .zip(xs.par_chunks(x_len))
            .for_each(|p| image(p, t)),
        (false, t) => out
            .chunks_mut(out_len)
            .zip(xs.chunks(x_len))
            .for_each(|p| image(p, t)),
    }
}

/// Runs `image` on each image's (dx, (x, dy)) chunks as [`for_each_image`] does, and sums the
/// (weight, bias) gradients it returns per image.
fn summed_over_images<D: Send>(
    dx: &mut [D],
    (xs, gs): (&[f32], &[f32]),
    (x_len, g_len): (usize, usize),
    (w_len, b_len): (usize, usize),
    batch: usize,
    image: impl Fn((&mut [D], (&[f32], &[f32])), usize) -> (Vec<f32>, Vec<f32>) + Sync,
) -> (Vec<f32>, Vec<f32>) {
    let parts: Vec<(Vec<f32>, Vec<f32>)> = match per_image_threads(batch) {
        (true, t) => dx
            .par_chunks_mut(x_len)
            .zip(xs.par_chunks(x_len).zip(gs.par_chunks(g_len)))
            .map(|p| image(p, t))
            .collect(),
        (false, t) => dx
            .chunks_mut(x_len)
            .zip(xs.chunks(x_len).zip(gs.chunks(g_len)))
            .map(|p| image(p, t))
            .collect(),
    };
    let (mut dw, mut db) = (vec![0f32; w_len], vec![0f32; b_len]);
    for (pw, pb) in parts {
        dw.iter_mut().zip(pw).for_each(|(d, v)| *d += v);
        db.iter_mut().zip(pb).for_each(|(d, v)| *d += v);
    }
    (dw, db)
}

/// The im2col matrix of one image: row (ci * k + ky) * k + kx, column oy * ow + ox holds the
/// input pixel that filter tap sees at that output position (0 in the padding). Used for strided
/// convolutions (stride 1 goes through [`dense_forward_channels_last`]).
fn im2col(col: &mut [Uninit], xp: &[f32], cin: usize, g: ConvGeometry, (h, w): (usize, usize)) {
    let zero = |v: &mut [Uninit]| {
        v.iter_mut().for_each(|v| {
            v.write(0.0);
        })
    };
    let (k, s, ohw) = (g.k, g.stride, g.oh * g.ow);
    for ci in 0..cin {
        let plane = &xp[ci * h * w..(ci + 1) * h * w];
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut col[((ci * k + ky) * k + kx) * ohw..][..ohw];
                let r = g.valid(kx, w);
                for oy in 0..g.oh {
                    let out = &mut row[oy * g.ow..(oy + 1) * g.ow];
                    let Some(iy) = g.row(oy, ky, h) else {
                        zero(out);
                        continue;
                    };
                    let xrow = &plane[iy * w..(iy + 1) * w];
                    zero(&mut out[..r.start]);
                    zero(&mut out[r.end..]);
                    let start = r.start * s + kx - g.pad_left;
                    for (j, o) in out[r.clone()].iter_mut().enumerate() {
                        o.write(xrow[start + j * s]);
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds each column entry back onto its input pixel.
fn col2im(dxp: &mut [f32], col: &[f32], cin: usize, g: ConvGeometry, (h, w): (usize, usize)) {
    let (k, s, ohw) = (g.k, g.stride, g.oh * g.ow);
    for ci in 0..cin {
        let plane = &mut dxp[ci * h * w..(ci + 1) * h * w];
        for ky in 0..k {
            for kx in 0..k {
                let row = &col[((ci * k + ky) * k + kx) * ohw..][..ohw];
                let r = g.valid(kx, w);
                for oy in 0..g.oh {
                    let Some(iy) = g.row(oy, ky, h) else { continue };
                    let src = &row[oy * g.ow..(oy + 1) * g.ow];
                    let xrow = &mut plane[iy * w..(iy + 1) * w];
                    let start = r.start * s + kx - g.pad_left;
                    for (j, &v) in src[r.clone()].iter().enumerate() {
                        xrow[start + j * s] += v;
                    }
                }
            }
        }
    }
}

impl ConvGeometry {
    /// A 1x1, stride-1, unpadded convolution needs no im2col: the image is its own matrix.
    fn is_pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad_top == 0 && self.pad_left == 0
    }
}

/// A convolution with bias: depthwise or with groups = 1, as `g` says.
pub fn conv_forward(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: &FlexTensor,
    g: ConvGeometry,
) -> FlexTensor {
    if g.depthwise {
        depthwise_forward(x, weight, bias, g)
    } else {
        dense_forward(x, weight, bias, g)
    }
}

/// Gradients (x, weight, bias) of [`conv_forward`].
pub fn conv_backward(
    x: &FlexTensor,
    weight: &FlexTensor,
    g: ConvGeometry,
    grad: &FlexTensor,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    if g.depthwise {
        depthwise_backward(x, weight, g, grad)
    } else {
        dense_backward(x, weight, g, grad)
    }
}

/// The padded channels-last copy of one `[C, h, w]` image for a stride-1 convolution, and its
/// padded width `pw`: pixel (y, x) of the padded image at `(y * pw + x) * C`, with `k - 1` spare
/// pixels at the end (the last output row's dropped columns read past the image).
fn padded_channels_last(
    xp: &[f32],
    (cin, h, w): (usize, usize, usize),
    g: ConvGeometry,
) -> (Vec<f32>, usize) {
    let k = g.k;
    let (pw, ph) = (g.ow + k - 1, g.oh + k - 1);
    debug_assert!(g.stride == 1 && w + g.pad_left <= pw && h + g.pad_top <= ph);
    let mut xt = vec![0f32; (ph * pw + k - 1) * cin];
    for (ci, plane) in xp.chunks(h * w).enumerate() {
        for (iy, row) in plane.chunks(w).enumerate() {
            let at = ((iy + g.pad_top) * pw + g.pad_left) * cin + ci;
            for (ix, &v) in row.iter().enumerate() {
                xt[at + ix * cin] = v;
            }
        }
    }
    (xt, pw)
}

/// One image's stride-1 convolution as `k` matrix products, one per filter row, over a padded
/// channels-last copy of the image instead of an im2col matrix. In that copy the k x C values a
/// filter row sees at an output pixel are contiguous, and the pixels of an output row follow
/// each other `C` apart, so each product reads the copy in place: `[oh * pw, k * C] . [k * C, C']`
/// with `pw` the padded width; the `k - 1` columns past each output row are computed and
/// dropped. The products' output is channels-last too, the layout gemm runs fastest on here
/// (about 1.5-2x the NCHW im2col product); it is transposed back once.
fn dense_forward_channels_last(
    (y, xp): (&mut [Uninit], &[f32]),
    (cin, h, w): (usize, usize, usize),
    rows: &[f32],
    bs: &[f32],
    g: ConvGeometry,
    threads: usize,
) {
    let (k, cout) = (g.k, bs.len());
    let (xt, pw) = padded_channels_last(xp, (cin, h, w), g);
    // Output pixel (oy, ox) is row oy * pw + ox of the product, which starts as the bias.
    let n = g.oh * pw;
    let mut yt = Vec::with_capacity(n * cout);
    for _ in 0..n {
        yt.extend_from_slice(bs);
    }
    let width = k * cin;
    for ky in 0..k {
        let (x, r) = (&xt[ky * pw * cin..], &rows[ky * width..]);
        matmul(
            &mut yt,
            true,
            (n, cout, width),
            x,
            (cin, 1),
            r,
            (1, k * width),
            threads,
        );
    }
    for (co, plane) in y.chunks_mut(g.oh * g.ow).enumerate() {
        for (oy, out) in plane.chunks_mut(g.ow).enumerate() {
            for (ox, o) in out.iter_mut().enumerate() {
                o.write(yt[(oy * pw + ox) * cout + co]);
            }
        }
        // SAFETY: just written in full.
        let plane = unsafe { assume_init_mut(plane) };
        if g.act {
            swish_in_place(plane);
        }
    }
}

/// Each of `blocks` consecutive `r x c` row-major matrices in `v`, transposed. Filters
/// `[C', C, k, k]` become filter rows `[C', k, k, C]` (the channels-last order) with
/// `(C', C, k * k)`, and back with `(C', k * k, C)`.
fn transpose_blocks(v: &[f32], (blocks, r, c): (usize, usize, usize)) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    for (o, m) in out.chunks_mut(r * c).zip(v.chunks(r * c)).take(blocks) {
        for i in 0..r {
            for j in 0..c {
                o[j * r + i] = m[i * c + j];
            }
        }
    }
    out
}

/// Convolution with groups = 1 (weight `[C', C, k, k]`): per image, stride 1 through
/// [`dense_forward_channels_last`], otherwise im2col and one matrix product.
fn dense_forward(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: &FlexTensor,
    g: ConvGeometry,
) -> FlexTensor {
    let (x, weight, bias) = (dense(x), dense(weight), dense(bias));
    let shape = shape_of(&x);
    let (b, cin, h, w) = (shape[0], shape[1], shape[2], shape[3]);
    let (cout, ohw, kk) = (shape_of(&weight)[0], g.oh * g.ow, g.k * g.k);
    let (xs, ws, bs) = (values(&x), values(&weight), values(&bias));
    if g.stride == 1 && !g.is_pointwise() {
        let rows = transpose_blocks(ws, (cout, cin, kk));
        let mut out = uninit(b * cout * ohw);
        for_each_image(&mut out, xs, (cout * ohw, cin * h * w), b, |p, t| {
            dense_forward_channels_last(p, (cin, h, w), &rows, bs, g, t)
        });
        // SAFETY: every image's output was written.
        return tensor(
            unsafe { assume_init(out) },
            Shape::new([b, cout, g.oh, g.ow]),
        );
    }
    let mut out = uninit(b * cout * ohw);
    let image = |(y, xp): (&mut [Uninit], &[f32]), threads: usize| {
        for (row, &bv) in y.chunks_mut(ohw).zip(bs) {
            row.iter_mut().for_each(|v| {
                v.write(bv);
            });
        }
        // SAFETY: filled with the bias above.
        let y = unsafe { assume_init_mut(y) };
        let col;
        let col: &[f32] = if g.is_pointwise() {
            xp
        } else {
            let mut c = uninit(cin * kk * ohw);
            im2col(&mut c, xp, cin, g, (h, w));
            // SAFETY: im2col writes every entry.
            col = unsafe { assume_init(c) };
            &col
        };
        let k = cin * kk;
        matmul(y, true, (cout, ohw, k), ws, (k, 1), col, (ohw, 1), threads);
        if g.act {
            swish_in_place(y);
        }
    };
    for_each_image(&mut out, xs, (cout * ohw, cin * h * w), b, image);
    // SAFETY: every image's output was filled.
    tensor(
        unsafe { assume_init(out) },
        Shape::new([b, cout, g.oh, g.ow]),
    )
}

/// Gradients (x, weight, bias) of a stride-1 [`dense_forward`] in the same channels-last form.
/// dx is the convolution of dy with the filters flipped and transposed, padded by `k - 1 - pad`,
/// so it reuses [`dense_forward_channels_last`]. dW is `k` products, one per filter row, of dy
/// (laid out with the padded width, zeros in the dropped columns) with the padded channels-last
/// copy of x read in place.
fn dense_backward_channels_last(
    (xs, ws, gs): (&[f32], &[f32], &[f32]),
    (b, cin, h, w): (usize, usize, usize, usize),
    cout: usize,
    g: ConvGeometry,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (k, ohw) = (g.k, g.oh * g.ow);
    let width = k * cin;
    // Flipped, transposed filters as filter rows [C, k, k, C']: each filter reversed, then
    // [C', C * k * k] transposed.
    let flipped: Vec<f32> = ws
        .chunks(k * k)
        .flat_map(|f| f.iter().rev().copied())
        .collect();
    let back_rows = transpose_blocks(&flipped, (1, cout, cin * k * k));
    let back = ConvGeometry {
        pad_top: k - 1 - g.pad_top,
        pad_left: k - 1 - g.pad_left,
        oh: h,
        ow: w,
        act: false,
        ..g
    };
    let zeros = vec![0f32; cin];
    let mut dx = uninit(xs.len());
    let image = |(dxp, (xp, dy)): (&mut [Uninit], (&[f32], &[f32])), threads: usize| {
        dense_forward_channels_last(
            (dxp, dy),
            (cout, g.oh, g.ow),
            &back_rows,
            &zeros,
            back,
            threads,
        );
        let (xt, pw) = padded_channels_last(xp, (cin, h, w), g);
        let n = g.oh * pw;
        let mut dyp = vec![0f32; cout * n];
        for (plane, src) in dyp.chunks_mut(n).zip(dy.chunks(ohw)) {
            for (row, s) in plane.chunks_mut(pw).zip(src.chunks(g.ow)) {
                row[..g.ow].copy_from_slice(s);
            }
        }
        // dW as filter rows [C', k, k, C]: block ky is columns ky * width.. of each row.
        let mut dw = vec![0f32; cout * k * width];
        let dst = Shared::new(&mut dw);
        for ky in 0..k {
            let (d, r) = (
                View::rows(ky * width, k * width),
                View::rows(ky * pw * cin, cin),
            );
            // SAFETY: `dw` is this call's own; the blocks of different ky do not overlap.
            unsafe {
                product(
                    dst,
                    d,
                    false,
                    (cout, width, n),
                    &dyp,
                    View::rows(0, n),
                    &xt,
                    r,
                    threads,
                )
            };
        }
        let db: Vec<f32> = dy.chunks(ohw).map(sum).collect();
        (dw, db)
    };
    let lens = (cin * h * w, cout * ohw);
    let (rows, db) = summed_over_images(&mut dx, (xs, gs), lens, (ws.len(), cout), b, image);
    // SAFETY: every image's dx was written by the forward routine.
    let dx = unsafe { assume_init(dx) };
    (dx, transpose_blocks(&rows, (cout, k * k, cin)), db)
}

/// Gradients (x, weight, bias) of [`dense_forward`].
fn dense_backward(
    x: &FlexTensor,
    weight: &FlexTensor,
    g: ConvGeometry,
    grad: &FlexTensor,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let (x, weight, grad) = (dense(x), dense(weight), dense(grad));
    let shape = shape_of(&x);
    let (b, cin, h, w) = (shape[0], shape[1], shape[2], shape[3]);
    let (cout, ohw, kk) = (shape_of(&weight)[0], g.oh * g.ow, g.k * g.k);
    let k = cin * kk;
    let (xs, ws, gs) = (values(&x), values(&weight), values(&grad));
    if g.stride == 1 && !g.is_pointwise() {
        let (dx, dw, db) = dense_backward_channels_last((xs, ws, gs), (b, cin, h, w), cout, g);
        return (
            tensor(dx, shape),
            tensor(dw, shape_of(&weight)),
            tensor(db, Shape::new([cout])),
        );
    }
    let mut dx = vec![0f32; xs.len()];
    // Per image: dW += dy col^T, dcol = W^T dy scattered back by col2im, db += row sums of dy.
    let image = |(dxp, (xp, dy)): (&mut [f32], (&[f32], &[f32])), threads: usize| {
        let mut dw = vec![0f32; cout * k];
        if g.is_pointwise() {
            matmul(
                &mut dw,
                false,
                (cout, k, ohw),
                dy,
                (ohw, 1),
                xp,
                (1, ohw),
                threads,
            );
            matmul(
                dxp,
                false,
                (k, ohw, cout),
                ws,
                (1, k),
                dy,
                (ohw, 1),
                threads,
            );
        } else {
            let mut c = uninit(k * ohw);
            im2col(&mut c, xp, cin, g, (h, w));
            // SAFETY: im2col writes every entry.
            let mut col = unsafe { assume_init(c) };
            matmul(
                &mut dw,
                false,
                (cout, k, ohw),
                dy,
                (ohw, 1),
                &col,
                (1, ohw),
                threads,
            );
            matmul(
                &mut col,
                false,
                (k, ohw, cout),
                ws,
                (1, k),
                dy,
                (ohw, 1),
                threads,
            );
            col2im(dxp, &col, cin, g, (h, w));
        }
        let db: Vec<f32> = dy.chunks(ohw).map(sum).collect();
        (dw, db)
    };
    let lens = (cin * h * w, cout * ohw);
    let (dw, db) = summed_over_images(&mut dx, (xs, gs), lens, (ws.len(), cout), b, image);
    (
        tensor(dx, shape),
        tensor(dw, shape_of(&weight)),
        tensor(db, Shape::new([cout])),
    )
}
