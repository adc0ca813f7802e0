//! Convolutions: depthwise and dense (groups = 1), forward and backward.

use burn::backend::flex::FlexTensor;
use burn::tensor::Shape;
use multiversion::multiversion;
use rayon::prelude::*;

use super::products::{Shared, View, matmul, product};
use super::{
    Uninit, assume_init, assume_init_mut, dense, dot, shape_of, sum, swish_in_place, tensor,
    uninit, values,
};

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
