//! Matrix products through the gemm crate on strided views of flat buffers, and the linear
//! layers built on them.

use burn::backend::flex::FlexTensor;
use burn::tensor::Shape;
use rayon::prelude::*;

use super::{
    CHUNK, Uninit, assume_init, dense, row_block, shape_of, swish_in_place, tensor, uninit, values,
};

// ---------------------------------------------------------------------------------------------
// Matrix products through the gemm crate, on strided views of flat buffers.

/// A strided matrix inside a flat buffer: element (i, j) sits at `at + i * rs + j * cs`.
#[derive(Debug, Clone, Copy)]
pub(super) struct View {
    at: usize,
    rs: usize,
    cs: usize,
}

impl View {
    pub(super) fn rows(at: usize, rs: usize) -> Self {
        Self { at, rs, cs: 1 }
    }

    pub(super) fn transposed(self) -> Self {
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
pub(super) struct Shared {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: tasks only write through it where no other task reads or writes (see `product`).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    pub(super) fn new(v: &mut [f32]) -> Self {
        Self {
            ptr: v.as_mut_ptr(),
            len: v.len(),
        }
    }

    /// For a buffer the tasks write in full before it is read.
    pub(super) fn uninit(v: &mut [Uninit]) -> Self {
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
pub(super) unsafe fn product(
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
pub(super) fn matmul(
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
    // db = the column sums of dy, by blocks of rows, the blocks' sums added in order: rayon's
    // reduce would pair them as its threads happened to split the work, and float sums in
    // another order differ in the last bits (the same seed would give another run).
    let blocks: Vec<Vec<f32>> = gs
        .par_chunks(dout * row_block(dout))
        .map(|block| {
            let mut acc = vec![0f32; dout];
            for row in block.chunks(dout) {
                acc.iter_mut().zip(row).for_each(|(a, &g)| *a += g);
            }
            acc
        })
        .collect();
    let mut db = vec![0f32; dout];
    for block in blocks {
        db.iter_mut().zip(&block).for_each(|(a, b)| *a += b);
    }
    (
        tensor(dx, shape_of(&x)),
        tensor(dw, shape_of(&weight)),
        tensor(db, Shape::new([dout])),
    )
}
