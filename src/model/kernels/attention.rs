//! Multi-head self-attention, forward and backward.

use burn::backend::flex::FlexTensor;
use burn::tensor::Shape;
use rayon::prelude::*;

use super::products::{Shared, View, product};
use super::softmax::{DropoutMask, softmax_grad_rows, softmax_rows};
use super::{CHUNK, Uninit, assume_init, dense, shape_of, tensor, uninit, values};

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
