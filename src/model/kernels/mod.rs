//! The CPU kernels behind [`super::fused`]: plain loops over contiguous f32 buffers taken from
//! and returned as flex tensors, parallel with rayon, written so the compiler vectorises them.

use burn::backend::flex::FlexTensor;
use burn::prelude::*;
use burn::tensor::{DType, Shape};
use multiversion::multiversion;
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
/// Rows per parallel task.
fn row_block(d: usize) -> usize {
    (CHUNK / d.max(1)).max(1)
}

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
// The op families, one file each, declared after `has_fma!` (macro_rules scope is textual), and
// re-exported so that callers keep naming `kernels::...`.

mod activations;
mod attention;
mod conv;
mod norms;
mod products;
mod softmax;

pub use activations::{swish_backward, swish_forward};
pub use attention::{AttentionShape, attention_backward, attention_forward};
pub use conv::{ConvGeometry, conv_backward, conv_forward};
pub use norms::{batch_norm_backward, batch_norm_forward, layer_norm_backward, layer_norm_forward};
pub use products::{linear_backward, linear_forward};
pub use softmax::{DropoutMask, dropout, softmax_dropout_backward, softmax_dropout_forward};
