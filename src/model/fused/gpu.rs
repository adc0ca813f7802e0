//! The GPU side: cube kernels for the ops whose burn implementation is slow on GPUs; every cubecl
//! runtime gets them: cuda, vulkan and the CPU runtime (`cube-cpu`, used by the parity tests).
//!
//! burn-cubecl computes a depthwise convolution's weight gradient with one GPU thread per weight,
//! each summing over batch x height x width: 576 threads for a 3x3 over 64 channels, each looping
//! over millions of products. Here the sum is split over (channel, image, row tile) blocks whose
//! warps reduce their partial sums with one plane reduction each; one tensor reduction over the
//! partial sums finishes it.
//! The forward pass and the input gradient stay burn's (one thread per output element: parallel
//! enough). 1x1 convolutions run as matrix products (burn's matmul, tuned), see [`pointwise_conv`],
//! and bilinear resizing too ([`bilinear_resize`]: burn's cubecl backends cannot differentiate it).
//! BatchNorm (+ swish), LayerNorm and attention's softmax (+ dropout) are kernels of their own: burn composes them from about ten
//! elementwise ops and reductions forward and twenty backward, each a launch, and a step's time
//! on a GPU goes to launches (`mvlab bench` counts them).

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::ops::{ConvOptions, FloatTensorOps, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, TensorMetadata, backend_extension};
use burn::prelude::*;
use burn_cubecl::CubeBackend;
use burn_cubecl::ops::numeric::zeros_client;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::{CubeCount, CubeDim};

#[backend_extension(Cube, Autodiff)]
pub trait CubeOps: Backend {
    /// Depthwise convolution with bias (weight `[C, 1, k, k]`), padding (top, bottom, left,
    /// right); gradients through [`depthwise_weight_grad`] for the weight.
    fn cube_depthwise_conv(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        padding: [usize; 4],
    ) -> FloatTensor<Self>;
    /// Training-mode BatchNorm over dim 1 of `[B, C, H, W]` with swish after it when `act`:
    /// (output, batch mean, biased batch variance), three launches forward and three backward.
    fn cube_batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        act: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
    /// LayerNorm over the last dim with affine `gamma`, `beta`: one launch forward, one
    /// kernel and two column sums backward (burn's composition launches about 9 and 20).
    fn cube_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;
    /// `softmax(scale * x)` over the last dim, times `mask / (1 - drop)` when `drop > 0` (a
    /// 0/1 tensor shaped as `x`; ignored otherwise): one launch forward, one backward.
    fn cube_softmax_dropout(
        x: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        scale: f64,
        drop: f64,
    ) -> FloatTensor<Self>;
    /// A 0/1 tensor shaped as `like`: element i is 1 when `hash(i ^ key) >= threshold`, the
    /// CPU kernels' mask (`kernels::DropoutMask`) computed on the device from its seed, so no
    /// generator is read and nothing is copied from the host. Not tracked.
    fn cube_dropout_mask(like: FloatTensor<Self>, key: u32, threshold: u32) -> FloatTensor<Self>;
    /// The weight gradient `[C, 1, k, k]` of a depthwise convolution of `x` whose output
    /// gradient is `grad`.
    fn cube_depthwise_weight_grad(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        k: usize,
        stride: usize,
        padding: [usize; 4],
    ) -> FloatTensor<Self>;
}

/// Whether `x` lives on a cubecl device (every device but flex's in a build with `cube`).
pub fn applies<const D: usize>(x: &Tensor<D>) -> bool {
    is_cube(&x.device())
}

/// Whether `device` (plain or autodiff) is a cubecl device.
pub fn is_cube(device: &Device) -> bool {
    *device != Device::flex() && *device != Device::flex().autodiff()
}

/// Depthwise convolution with bias, padding (top, bottom, left, right), on a cubecl device.
pub fn depthwise_conv(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    stride: usize,
    padding: [usize; 4],
) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as CubeOps>::cube_depthwise_conv(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        stride,
        padding,
    ))
}

/// Training-mode BatchNorm (batch statistics) of `[B, C, H, W]` with swish after it when `act`,
/// on a cubecl device in f32: (output, batch mean, biased batch variance).
pub fn batch_norm_train(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
    act: bool,
) -> (Tensor<4>, Tensor<1>, Tensor<1>) {
    let (y, mean, var) = <Dispatch as CubeOps>::cube_batch_norm(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
        act,
    );
    (
        Tensor::from_dispatch(y),
        Tensor::from_dispatch(mean),
        Tensor::from_dispatch(var),
    )
}

/// LayerNorm over the last dim of `x` with affine `gamma`, `beta`, on a cubecl device in f32.
pub fn layer_norm<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as CubeOps>::cube_layer_norm(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
    ))
}

/// `softmax(scale * x)` over the last dim, then dropout with probability `drop`, the mask made
/// on the device from `seed` (no read back), on a cubecl device in f32.
pub fn softmax_dropout<const D: usize>(
    x: Tensor<D>,
    scale: f64,
    drop: f64,
    seed: u64,
) -> Tensor<D> {
    let mask = if drop > 0.0 {
        dropout_mask(&x, drop, seed)
    } else {
        // Not read: a stand-in of the right kind.
        x.clone().detach()
    };
    softmax_masked(x, mask, scale, drop)
}

/// The 0/1 mask of dropout with probability `drop` from `seed`, shaped as `x`: the same
/// decisions as the CPU kernels' mask for the same seed and element index.
pub fn dropout_mask<const D: usize>(x: &Tensor<D>, drop: f64, seed: u64) -> Tensor<D> {
    let (key, threshold) = crate::model::kernels::DropoutMask::new(drop, seed).key_and_threshold();
    Tensor::from_dispatch(<Dispatch as CubeOps>::cube_dropout_mask(
        x.clone().detach().into_dispatch(),
        key,
        threshold,
    ))
}

/// [`softmax_dropout`] with a given 0/1 `mask` (for the parity checks).
pub fn softmax_masked<const D: usize>(
    x: Tensor<D>,
    mask: Tensor<D>,
    scale: f64,
    drop: f64,
) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as CubeOps>::cube_softmax_dropout(
        x.into_dispatch(),
        mask.into_dispatch(),
        scale,
        drop,
    ))
}

/// The weight gradient of a depthwise convolution, through the kernel below (for tests and
/// benchmarks against burn's `conv2d_weight_backward`).
pub fn depthwise_weight_grad(
    x: Tensor<4>,
    grad: Tensor<4>,
    k: usize,
    stride: usize,
    padding: [usize; 4],
) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as CubeOps>::cube_depthwise_weight_grad(
        x.into_dispatch(),
        grad.into_dispatch(),
        k,
        stride,
        padding,
    ))
}

/// A 1x1 convolution (stride 1, groups 1, weight `[C', C, 1, 1]`) as one batched matrix product
/// `[C', C] x [B, C, H*W]`: burn's matmul (tuned, tensor cores where there are some) forward and
/// backward, instead of its convolution kernels.
pub fn pointwise_conv(x: Tensor<4>, weight: Tensor<4>, bias: Option<Tensor<1>>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    let cout = weight.dims()[0];
    let y = weight
        .reshape([1, cout, c])
        .matmul(x.reshape([b, c, h * w]));
    let y = match bias {
        Some(bias) => y + bias.reshape([1, cout, 1]),
        None => y,
    };
    y.reshape([b, cout, h, w])
}

/// Bilinear resize to `h` x `w` (align_corners = false, as torch and burn compute it) as two
/// matrix products with interpolation matrices: differentiable on every cubecl backend, where
/// burn has no backward pass for bilinear interpolation.
pub fn bilinear_resize(x: Tensor<4>, h: usize, w: usize) -> Tensor<4> {
    let [_, _, ih, iw] = x.dims();
    let device = x.device();
    let rows = interpolation_matrix(ih, h, &device).unsqueeze::<4>();
    let cols = interpolation_matrix(iw, w, &device)
        .transpose()
        .unsqueeze::<4>();
    rows.matmul(x).matmul(cols)
}

/// `[to, from]`: row i holds the weights of output pixel i over the input pixels (half-pixel
/// centres, clamped at the edges).
fn interpolation_matrix(from: usize, to: usize, device: &Device) -> Tensor<2> {
    let mut m = vec![0f32; to * from];
    let scale = from as f64 / to as f64;
    for i in 0..to {
        let src = ((i as f64 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(from - 1);
        let i1 = (i0 + 1).min(from - 1);
        let t = (src - i0 as f64).clamp(0.0, 1.0) as f32;
        m[i * from + i0] += 1.0 - t;
        m[i * from + i1] += t;
    }
    Tensor::from_data(TensorData::new(m, [to, from]), device)
}

fn options(
    channels: usize,
    stride: usize,
    [top, bottom, left, right]: [usize; 4],
) -> ConvOptions<2> {
    ConvOptions::new_with_padding(
        [stride, stride],
        [(top, bottom), (left, right)],
        [1, 1],
        channels,
    )
}

// ---------------------------------------------------------------------------------------------
// The kernel.

/// About this many output pixels per block: enough work per thread to pay for its partial sums.
const PIXELS_PER_BLOCK: usize = 4096;

mod kernel {
    use cubecl::prelude::*;

    /// One block per (channel, image, tile of output rows). For each tap, every unit sums
    /// `grad * x` over its pixels of the tile; with `plane` the units of a plane (warp) add
    /// theirs with one plane reduction and its first lane writes
    /// `partial[c, image * tiles + tile, tap, plane]`, else every unit writes its own slot.
    /// No shared memory and no block barrier: cubecl's CPU runtime gives each unit of a barrier
    /// kernel an OS thread of its own.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub fn depthwise_weight_grad_kernel<F: Float>(
        x: &Tensor<F>,
        grad: &Tensor<F>,
        partial: &mut Tensor<F>,
        stride: usize,
        pad_top: usize,
        pad_left: usize,
        rows_per_tile: usize,
        tiles: usize,
        slots: usize,
        #[comptime] k: usize,
        #[comptime] plane: bool,
        #[define(F)] _dtype: ElemType,
    ) {
        let c = CUBE_POS_X as usize;
        let part = CUBE_POS_Y as usize;
        let image = part / tiles;
        let tile = part % tiles;
        let h = x.shape(2);
        let w = x.shape(3);
        let oh = grad.shape(2);
        let ow = grad.shape(3);
        let x_base = image * x.stride(0) + c * x.stride(1);
        let g_base = image * grad.stride(0) + c * grad.stride(1);
        let row_start = tile * rows_per_tile;
        let mut row_end = row_start + rows_per_tile;
        if row_end > oh {
            row_end = oh;
        }
        let parts = tiles * x.shape(0);
        let mut slot = UNIT_POS as usize;
        if plane {
            slot = (UNIT_POS / PLANE_DIM) as usize;
        }

        #[unroll]
        for tap in 0..k * k {
            let ky = tap / k;
            let kx = tap % k;
            let mut acc = F::new(0.0);
            let mut oy = row_start + UNIT_POS_Y as usize;
            while oy < row_end {
                // Padded coordinates, so the bounds checks stay unsigned.
                let py = oy * stride + ky;
                if py >= pad_top && py - pad_top < h {
                    let x_row = x_base + (py - pad_top) * x.stride(2);
                    let g_row = g_base + oy * grad.stride(2);
                    let mut ox = UNIT_POS_X as usize;
                    while ox < ow {
                        let px = ox * stride + kx;
                        if px >= pad_left && px - pad_left < w {
                            acc += grad[g_row + ox * grad.stride(3)]
                                * x[x_row + (px - pad_left) * x.stride(3)];
                        }
                        ox += CUBE_DIM_X as usize;
                    }
                }
                oy += CUBE_DIM_Y as usize;
            }
            let at = ((c * parts + part) * k * k + tap) * slots + slot;
            if plane {
                let sum = plane_sum(acc);
                if UNIT_POS_PLANE == 0 {
                    partial[at] = sum;
                }
            } else {
                partial[at] = acc;
            }
        }
    }
}

/// BatchNorm's kernels, over `[B, C, H, W]` tensors in f32, contiguous. The statistics are
/// summed as in the depthwise kernel: blocks over (channel, part of the batch x pixels), a
/// plane reduction where there are planes, partial sums per slot, then one small kernel that
/// finishes each channel's sums.
mod norm {
    use cubecl::prelude::*;

    /// Element `j` of channel `c` (over batch x pixels) of a `[B, C, H*W]` tensor.
    #[cube]
    fn at(j: usize, c: usize, channels: usize, hw: usize) -> usize {
        ((j / hw) * channels + c) * hw + j % hw
    }

    /// The swish of `z` and its derivative.
    #[cube]
    fn swish_and_slope(z: f32) -> (f32, f32) {
        let sig = 1.0f32 / (1.0f32 + f32::exp(-z));
        (z * sig, sig + z * sig * (1.0f32 - sig))
    }

    /// Per (channel, part, slot): two partial sums, of x and x² (`backward` false), or of the
    /// gradient before BatchNorm's affine map and swish, dz, and of dz times the normalised x
    /// (`backward` true, from the batch's mean and variance and gamma and beta).
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub fn sums(
        x: &Tensor<f32>,
        dy: &Tensor<f32>,
        mean_in: &Tensor<f32>,
        var_in: &Tensor<f32>,
        gamma_in: &Tensor<f32>,
        beta_in: &Tensor<f32>,
        partial: &mut Tensor<f32>,
        channels: usize,
        hw: usize,
        per_part: usize,
        slots: usize,
        epsilon: f32,
        #[comptime] backward: bool,
        #[comptime] act: bool,
        #[comptime] plane: bool,
    ) {
        let c = CUBE_POS_X as usize;
        let part = CUBE_POS_Y as usize;
        let parts = CUBE_COUNT_Y as usize;
        let n = x.len() / channels;
        let start = part * per_part;
        let mut end = start + per_part;
        if end > n {
            end = n;
        }
        let mut mean = 0.0f32;
        let mut rstd = 0.0f32;
        let mut gamma = 0.0f32;
        let mut beta = 0.0f32;
        if backward {
            mean = mean_in[c];
            rstd = 1.0f32 / f32::sqrt(var_in[c] + epsilon);
            gamma = gamma_in[c];
            beta = beta_in[c];
        }
        // Forward, the sums are of x - shift, shift being the channel's first value: the
        // variance then comes without cancellation when the mean is large against the spread.
        let shift = x[at(0, c, channels, hw)];
        let mut first = 0.0f32;
        let mut second = 0.0f32;
        let mut j = start + UNIT_POS as usize;
        while j < end {
            let i = at(j, c, channels, hw);
            if backward {
                let xhat = (x[i] - mean) * rstd;
                let mut dz = dy[i];
                if act {
                    let (_, slope) = swish_and_slope(xhat * gamma + beta);
                    dz *= slope;
                }
                first += dz;
                second += dz * xhat;
            } else {
                let v = x[i] - shift;
                first += v;
                second += v * v;
            }
            j += CUBE_DIM as usize;
        }
        let mut slot = UNIT_POS as usize;
        if plane {
            slot = (UNIT_POS / PLANE_DIM) as usize;
        }
        let o = ((c * parts + part) * slots + slot) * 2;
        if plane {
            let f = plane_sum(first);
            let s = plane_sum(second);
            if UNIT_POS_PLANE == 0 {
                partial[o] = f;
                partial[o + 1] = s;
            }
        } else {
            partial[o] = first;
            partial[o + 1] = second;
        }
    }

    /// Per channel: the partial sums added up, as `first[c]` and `second[c]`. Forward: the mean
    /// and the biased variance (of `count` values); backward: the two sums.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub fn finish(
        x: &Tensor<f32>,
        partial: &Tensor<f32>,
        first_out: &mut Tensor<f32>,
        second_out: &mut Tensor<f32>,
        channels: usize,
        hw: usize,
        per_channel: usize,
        count: usize,
        #[comptime] moments: bool,
    ) {
        let c = ABSOLUTE_POS;
        if c < channels {
            let mut first = 0.0f32;
            let mut second = 0.0f32;
            for k in 0..per_channel {
                first += partial[(c * per_channel + k) * 2];
                second += partial[(c * per_channel + k) * 2 + 1];
            }
            if moments {
                let shifted = first / (count as f32);
                let mut var = second / (count as f32) - shifted * shifted;
                if var < 0.0f32 {
                    var = 0.0f32;
                }
                first_out[c] = shifted + x[at(0, c, channels, hw)];
                second_out[c] = var;
            } else {
                first_out[c] = first;
                second_out[c] = second;
            }
        }
    }

    /// Elementwise: forward, `y = swish?((x - mean) rstd gamma + beta)`; backward (from the sums
    /// of dz and dz x̂ over the channel), the input's gradient
    /// `gamma rstd (dz - (sum dz + x̂ sum dz x̂) / count)`.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        x: &Tensor<f32>,
        dy: &Tensor<f32>,
        mean_in: &Tensor<f32>,
        var_in: &Tensor<f32>,
        gamma_in: &Tensor<f32>,
        beta_in: &Tensor<f32>,
        sum_dz: &Tensor<f32>,
        sum_dzx: &Tensor<f32>,
        out: &mut Tensor<f32>,
        channels: usize,
        hw: usize,
        count: usize,
        epsilon: f32,
        #[comptime] backward: bool,
        #[comptime] act: bool,
    ) {
        let i = ABSOLUTE_POS;
        if i < x.len() {
            let c = (i / hw) % channels;
            let rstd = 1.0f32 / f32::sqrt(var_in[c] + epsilon);
            let xhat = (x[i] - mean_in[c]) * rstd;
            let gamma = gamma_in[c];
            let z = xhat * gamma + beta_in[c];
            if backward {
                let mut dz = dy[i];
                if act {
                    let (_, slope) = swish_and_slope(z);
                    dz *= slope;
                }
                let n = count as f32;
                out[i] = gamma * rstd * (dz - (sum_dz[c] + xhat * sum_dzx[c]) / n);
            } else if act {
                let (y, _) = swish_and_slope(z);
                out[i] = y;
            } else {
                out[i] = z;
            }
        }
    }
}

/// LayerNorm kernels: one unit per row of the last dim (rows are many: batch x tokens), each
/// reading its row in order.
mod ln {
    use cubecl::prelude::*;

    /// `y = (x - mean) rstd gamma + beta` per row; the row's mean and rstd kept for backward.
    #[cube(launch)]
    pub fn forward(
        x: &Tensor<f32>,
        gamma: &Tensor<f32>,
        beta: &Tensor<f32>,
        y: &mut Tensor<f32>,
        mean_out: &mut Tensor<f32>,
        rstd_out: &mut Tensor<f32>,
        rows: usize,
        width: usize,
        epsilon: f32,
    ) {
        let r = ABSOLUTE_POS;
        if r < rows {
            let start = r * width;
            let mut sum = 0.0f32;
            for j in 0..width {
                sum += x[start + j];
            }
            let mean = sum / (width as f32);
            let mut sq = 0.0f32;
            for j in 0..width {
                let d = x[start + j] - mean;
                sq += d * d;
            }
            let rstd = 1.0f32 / f32::sqrt(sq / (width as f32) + epsilon);
            for j in 0..width {
                y[start + j] = (x[start + j] - mean) * rstd * gamma[j] + beta[j];
            }
            mean_out[r] = mean;
            rstd_out[r] = rstd;
        }
    }

    /// Per row, with `g = dy gamma` and `x̂ = (x - mean) rstd`: the input's gradient
    /// `rstd (g - mean(g) - x̂ mean(g x̂))`, and `dy x̂` (summed over rows: gamma's gradient).
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        x: &Tensor<f32>,
        dy: &Tensor<f32>,
        gamma: &Tensor<f32>,
        mean_in: &Tensor<f32>,
        rstd_in: &Tensor<f32>,
        dx: &mut Tensor<f32>,
        dy_xhat: &mut Tensor<f32>,
        rows: usize,
        width: usize,
    ) {
        let r = ABSOLUTE_POS;
        if r < rows {
            let start = r * width;
            let mean = mean_in[r];
            let rstd = rstd_in[r];
            let mut sum_g = 0.0f32;
            let mut sum_gx = 0.0f32;
            for j in 0..width {
                let xhat = (x[start + j] - mean) * rstd;
                let g = dy[start + j] * gamma[j];
                sum_g += g;
                sum_gx += g * xhat;
            }
            let n = width as f32;
            let (mean_g, mean_gx) = (sum_g / n, sum_gx / n);
            for j in 0..width {
                let xhat = (x[start + j] - mean) * rstd;
                let d = dy[start + j];
                dx[start + j] = rstd * (d * gamma[j] - mean_g - xhat * mean_gx);
                dy_xhat[start + j] = d * xhat;
            }
        }
    }
}

/// Dropout masks: one unit per element.
mod mask {
    use cubecl::prelude::*;

    /// `mask[i] = 1` when `hash32(i ^ key) >= threshold`, else 0 (`kernels::softmax::hash32`).
    #[cube(launch)]
    pub fn dropout(mask: &mut Tensor<f32>, count: usize, key: u32, threshold: u32) {
        let i = ABSOLUTE_POS;
        if i < count {
            let mut h = u32::cast_from(i) ^ key;
            h = h ^ (h >> 16u32);
            h = h * 0x7feb_352du32;
            h = h ^ (h >> 15u32);
            h = h * 0x846c_a68bu32;
            h = h ^ (h >> 16u32);
            let mut keep = 0.0f32;
            if h >= threshold {
                keep = 1.0;
            }
            mask[i] = keep;
        }
    }
}

fn dropout_mask_of(like: &CubeTensor, key: u32, threshold: u32) -> CubeTensor {
    let mask = burn_cubecl::ops::numeric::empty_device_contiguous_dtype(
        like.client.clone(),
        like.device.clone(),
        like.shape(),
        burn::tensor::DType::F32,
    );
    let count = like.shape().num_elements();
    let (cubes, dim) = launch_1d(count);
    mask::dropout::launch(
        &like.client,
        cubes,
        dim,
        mask.clone().into_tensor_arg(),
        count,
        key,
        threshold,
    );
    mask
}

/// Softmax (+ dropout) kernels: one unit per row of the last dim (attention's rows are many:
/// batch x patch positions x heads x tokens).
mod softmax {
    use cubecl::prelude::*;

    /// `p = softmax(scale x)` per row; `y = p mask / (1 - drop)` when `masked` (then `p` is
    /// kept for backward), else `y = p`.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        x: &Tensor<f32>,
        mask: &Tensor<f32>,
        y: &mut Tensor<f32>,
        p_out: &mut Tensor<f32>,
        rows: usize,
        width: usize,
        scale: f32,
        keep_scale: f32,
        #[comptime] masked: bool,
    ) {
        let r = ABSOLUTE_POS;
        if r < rows {
            let start = r * width;
            let mut top = x[start] * scale;
            for j in 1..width {
                top = f32::max(top, x[start + j] * scale);
            }
            let mut sum = 0.0f32;
            for j in 0..width {
                sum += f32::exp(x[start + j] * scale - top);
            }
            let inv = 1.0f32 / sum;
            for j in 0..width {
                let p = f32::exp(x[start + j] * scale - top) * inv;
                if masked {
                    p_out[start + j] = p;
                    y[start + j] = p * mask[start + j] * keep_scale;
                } else {
                    y[start + j] = p;
                }
            }
        }
    }

    /// `dx = scale p (g - sum_j g_j p_j)` per row, with `g = dy mask / (1 - drop)` when
    /// `masked`, else `g = dy`.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        p: &Tensor<f32>,
        mask: &Tensor<f32>,
        dy: &Tensor<f32>,
        dx: &mut Tensor<f32>,
        rows: usize,
        width: usize,
        scale: f32,
        keep_scale: f32,
        #[comptime] masked: bool,
    ) {
        let r = ABSOLUTE_POS;
        if r < rows {
            let start = r * width;
            let mut dot = 0.0f32;
            for j in 0..width {
                let mut g = dy[start + j];
                if masked {
                    g *= mask[start + j] * keep_scale;
                }
                dot += g * p[start + j];
            }
            for j in 0..width {
                let mut g = dy[start + j];
                if masked {
                    g *= mask[start + j] * keep_scale;
                }
                dx[start + j] = scale * p[start + j] * (g - dot);
            }
        }
    }
}

/// Forward softmax (+ dropout) of a contiguous `x`: (output, the softmax before dropout).
fn softmax_forward(
    x: &CubeTensor,
    mask: &CubeTensor,
    scale: f32,
    drop: f64,
) -> (CubeTensor, CubeTensor) {
    let (rows, width) = rows_and_width(x);
    let empty = || {
        burn_cubecl::ops::numeric::empty_device_contiguous_dtype(
            x.client.clone(),
            x.device.clone(),
            x.shape(),
            x.dtype,
        )
    };
    let masked = drop > 0.0;
    let y = empty();
    let p = if masked { empty() } else { y.clone() };
    let (count, dim) = launch_1d(rows);
    softmax::forward::launch(
        &x.client,
        count,
        dim,
        x.clone().into_tensor_arg(),
        mask.clone().into_tensor_arg(),
        y.clone().into_tensor_arg(),
        p.clone().into_tensor_arg(),
        rows,
        width,
        scale,
        (1.0 / (1.0 - drop)) as f32,
        masked,
    );
    (y, p)
}

/// Rows of a LayerNorm's input (all dims but the last) and the width of each.
fn rows_and_width(x: &CubeTensor) -> (usize, usize) {
    let dims = x.shape();
    let width = dims[dims.num_dims() - 1];
    (dims.num_elements() / width.max(1), width)
}

fn launch_1d(count: usize) -> (CubeCount, CubeDim) {
    (
        CubeCount::Static(count.div_ceil(64).max(1) as u32, 1, 1),
        CubeDim::new_1d(64),
    )
}

/// Forward LayerNorm of a contiguous `x`: (output, per-row mean, per-row rstd).
fn layer_norm_forward(
    x: &CubeTensor,
    gamma: &CubeTensor,
    beta: &CubeTensor,
    epsilon: f32,
) -> (CubeTensor, CubeTensor, CubeTensor) {
    let (rows, width) = rows_and_width(x);
    let y = burn_cubecl::ops::numeric::empty_device_contiguous_dtype(
        x.client.clone(),
        x.device.clone(),
        x.shape(),
        x.dtype,
    );
    let (mean, rstd) = (vector_like(x, rows), vector_like(x, rows));
    let (count, dim) = launch_1d(rows);
    ln::forward::launch(
        &x.client,
        count,
        dim,
        x.clone().into_tensor_arg(),
        gamma.clone().into_tensor_arg(),
        beta.clone().into_tensor_arg(),
        y.clone().into_tensor_arg(),
        mean.clone().into_tensor_arg(),
        rstd.clone().into_tensor_arg(),
        rows,
        width,
        epsilon,
    );
    (y, mean, rstd)
}

/// Elements per block part when summing a channel: enough work per unit for its partial sums.
const NORM_PER_PART: usize = 16384;

/// What BatchNorm's kernels read per channel: the batch's mean and variance, gamma and beta.
/// Separate tensors, never views of one: burn's ops write in place into a tensor whose buffer
/// they see as held by nobody else, which a view's sibling would not know of.
#[derive(Debug, Clone)]
struct Channels {
    mean: CubeTensor,
    var: CubeTensor,
    gamma: CubeTensor,
    beta: CubeTensor,
}

fn vector_like(x: &CubeTensor, len: usize) -> CubeTensor {
    burn_cubecl::ops::numeric::empty_device_contiguous_dtype(
        x.client.clone(),
        x.device.clone(),
        [len].into(),
        x.dtype,
    )
}

/// Launches `norm::sums` and `norm::finish` over `x` (and, backward, `dy`): forward the batch's
/// mean and variance, backward the sums of dz and dz x̂, per channel.
fn norm_sums(
    x: &CubeTensor,
    dy: &CubeTensor,
    ch: &Channels,
    epsilon: f32,
    backward: bool,
    act: bool,
) -> (CubeTensor, CubeTensor) {
    use cubecl::features::Plane;
    let [b, c, h, w] = x.shape().dims::<4>();
    let (n, hw) = (b * h * w, h * w);
    let client = x.client.clone();
    let props = client.properties();
    let plane_min = props.hardware.plane_size_min.max(1) as usize;
    let plane_max = props.hardware.plane_size_max.max(1) as usize;
    let plane = plane_min > 1 && props.features.plane.contains(Plane::Ops);
    let units = if plane_min > 1 { 256 } else { 1 };
    let slots = if plane { units / plane_min } else { units };
    let parts = n.div_ceil(NORM_PER_PART).max(1);
    let per_part = n.div_ceil(parts);
    let shape: burn::tensor::Shape = [c * parts * slots * 2].into();
    // Planes wider than the smallest leave slots unwritten: those must read as zero.
    let partial = if plane && plane_max != plane_min {
        zeros_client(client.clone(), x.device.clone(), shape, x.dtype)
    } else {
        burn_cubecl::ops::numeric::empty_device_contiguous_dtype(
            client.clone(),
            x.device.clone(),
            shape,
            x.dtype,
        )
    };
    norm::sums::launch(
        &client,
        CubeCount::Static(c as u32, parts as u32, 1),
        CubeDim::new_1d(units as u32),
        x.clone().into_tensor_arg(),
        dy.clone().into_tensor_arg(),
        ch.mean.clone().into_tensor_arg(),
        ch.var.clone().into_tensor_arg(),
        ch.gamma.clone().into_tensor_arg(),
        ch.beta.clone().into_tensor_arg(),
        partial.clone().into_tensor_arg(),
        c,
        hw,
        per_part,
        slots,
        epsilon,
        backward,
        act,
        plane,
    );
    let (first, second) = (vector_like(x, c), vector_like(x, c));
    norm::finish::launch(
        &client,
        CubeCount::Static(c.div_ceil(64) as u32, 1, 1),
        CubeDim::new_1d(64),
        x.clone().into_tensor_arg(),
        partial.into_tensor_arg(),
        first.clone().into_tensor_arg(),
        second.clone().into_tensor_arg(),
        c,
        hw,
        parts * slots,
        n,
        !backward,
    );
    (first, second)
}

/// Launches `norm::apply`: the output forward, the input's gradient backward (from the sums
/// of dz and dz x̂).
fn norm_apply(
    x: &CubeTensor,
    dy: &CubeTensor,
    ch: &Channels,
    sums: (&CubeTensor, &CubeTensor),
    epsilon: f32,
    backward: bool,
    act: bool,
) -> CubeTensor {
    let [b, c, h, w] = x.shape().dims::<4>();
    let client = x.client.clone();
    let out = burn_cubecl::ops::numeric::empty_device_contiguous_dtype(
        client.clone(),
        x.device.clone(),
        x.shape(),
        x.dtype,
    );
    let len = b * c * h * w;
    norm::apply::launch(
        &client,
        CubeCount::Static(len.div_ceil(256) as u32, 1, 1),
        CubeDim::new_1d(256),
        x.clone().into_tensor_arg(),
        dy.clone().into_tensor_arg(),
        ch.mean.clone().into_tensor_arg(),
        ch.var.clone().into_tensor_arg(),
        ch.gamma.clone().into_tensor_arg(),
        ch.beta.clone().into_tensor_arg(),
        sums.0.clone().into_tensor_arg(),
        sums.1.clone().into_tensor_arg(),
        out.clone().into_tensor_arg(),
        c,
        h * w,
        b * h * w,
        epsilon,
        backward,
        act,
    );
    out
}

fn contiguous(t: CubeTensor) -> CubeTensor {
    if t.is_contiguous() {
        t
    } else {
        burn_cubecl::kernel::into_contiguous(t)
    }
}

/// Forward BatchNorm (and swish): the output and the channels' statistics.
fn norm_forward(
    x: &CubeTensor,
    gamma: CubeTensor,
    beta: CubeTensor,
    epsilon: f32,
    act: bool,
) -> (CubeTensor, Channels) {
    // Forward, the sums kernel reads no statistics: gamma and beta stand in for them.
    let inputs = Channels {
        mean: gamma.clone(),
        var: gamma.clone(),
        gamma: gamma.clone(),
        beta: beta.clone(),
    };
    let (mean, var) = norm_sums(x, x, &inputs, epsilon, false, act);
    let ch = Channels {
        mean,
        var,
        gamma,
        beta,
    };
    let y = norm_apply(x, x, &ch, (&ch.mean, &ch.var), epsilon, false, act);
    (y, ch)
}

/// Launches the kernel and sums the partial sums: `[C, 1, k, k]`.
fn weight_grad(
    x: CubeTensor,
    grad: CubeTensor,
    k: usize,
    stride: usize,
    [top, _, left, _]: [usize; 4],
) -> CubeTensor {
    use cubecl::features::Plane;
    let [n, c, _, _] = x.shape().dims::<4>();
    let [_, _, oh, ow] = grad.shape().dims::<4>();
    let client = x.client.clone();
    let props = client.properties();
    let plane_min = props.hardware.plane_size_min.max(1) as usize;
    // GPUs: 32 columns x 8 rows, reduced a plane at a time. A runtime whose planes are one unit
    // wide (the CPU runtime) gets one unit per block: its blocks already run in parallel.
    let (block, plane) = if plane_min > 1 && props.features.plane.contains(Plane::Ops) {
        (CubeDim::new_2d(32, 8), true)
    } else if plane_min > 1 {
        (CubeDim::new_2d(32, 8), false)
    } else {
        (CubeDim::new_2d(1, 1), false)
    };
    let units = (block.x * block.y) as usize;
    let slots = if plane {
        units.div_ceil(plane_min)
    } else {
        units
    };
    let rows_per_tile = PIXELS_PER_BLOCK.div_ceil(ow.max(1)).clamp(1, oh.max(1));
    let tiles = oh.div_ceil(rows_per_tile);
    // Zeros: planes wider than the smallest leave slots unwritten.
    let partial = zeros_client(
        client.clone(),
        x.device.clone(),
        [c, n * tiles, k * k, slots].into(),
        x.dtype,
    );
    let dtype = dtype_to_storage_type(x.dtype);
    kernel::depthwise_weight_grad_kernel::launch(
        &client,
        CubeCount::Static(c as u32, (n * tiles) as u32, 1),
        block,
        x.into_tensor_arg(),
        grad.into_tensor_arg(),
        partial.clone().into_tensor_arg(),
        stride,
        top,
        left,
        rows_per_tile,
        tiles,
        slots,
        k,
        plane,
        dtype,
    );
    let summed = CubeBackend::float_sum_dim(CubeBackend::float_sum_dim(partial, 3), 1);
    CubeBackend::float_reshape(summed, [c, 1, k, k].into())
}

// ---------------------------------------------------------------------------------------------
// The backend extension: cubecl (inference) and autodiff over it.

impl CubeOps for CubeBackend {
    fn cube_depthwise_conv(
        x: CubeTensor,
        weight: CubeTensor,
        bias: CubeTensor,
        stride: usize,
        padding: [usize; 4],
    ) -> CubeTensor {
        let channels = weight.shape()[0];
        CubeBackend::conv2d(x, weight, Some(bias), options(channels, stride, padding))
    }

    fn cube_batch_norm(
        x: CubeTensor,
        gamma: CubeTensor,
        beta: CubeTensor,
        epsilon: f64,
        act: bool,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        let x = contiguous(x);
        let (y, ch) = norm_forward(&x, gamma, beta, epsilon as f32, act);
        (y, ch.mean, ch.var)
    }

    fn cube_layer_norm(
        x: CubeTensor,
        gamma: CubeTensor,
        beta: CubeTensor,
        epsilon: f64,
    ) -> CubeTensor {
        let x = contiguous(x);
        let (gamma, beta) = (contiguous(gamma), contiguous(beta));
        layer_norm_forward(&x, &gamma, &beta, epsilon as f32).0
    }

    fn cube_softmax_dropout(x: CubeTensor, mask: CubeTensor, scale: f64, drop: f64) -> CubeTensor {
        let x = contiguous(x);
        // Without dropout the mask is a stand-in, never read: no copy for it.
        let mask = if drop > 0.0 { contiguous(mask) } else { mask };
        softmax_forward(&x, &mask, scale as f32, drop).0
    }

    fn cube_dropout_mask(like: CubeTensor, key: u32, threshold: u32) -> CubeTensor {
        dropout_mask_of(&like, key, threshold)
    }

    fn cube_depthwise_weight_grad(
        x: CubeTensor,
        grad: CubeTensor,
        k: usize,
        stride: usize,
        padding: [usize; 4],
    ) -> CubeTensor {
        weight_grad(x, grad, k, stride, padding)
    }
}

#[derive(Debug)]
struct SoftmaxBackward;

impl Backward<CubeBackend, 1> for SoftmaxBackward {
    /// The softmax before dropout, the mask, scale, drop.
    type State = (CubeTensor, CubeTensor, f32, f64);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = contiguous(grads.consume::<CubeBackend>(&ops.node));
        let (p, mask, scale, drop) = ops.state;
        let [x_parent] = ops.parents;
        let Some(parent) = x_parent else {
            return;
        };
        let (rows, width) = rows_and_width(&p);
        let dx = burn_cubecl::ops::numeric::empty_device_contiguous_dtype(
            p.client.clone(),
            p.device.clone(),
            p.shape(),
            p.dtype,
        );
        let (count, dim) = launch_1d(rows);
        softmax::backward::launch(
            &p.client,
            count,
            dim,
            p.clone().into_tensor_arg(),
            mask.into_tensor_arg(),
            dy.into_tensor_arg(),
            dx.clone().into_tensor_arg(),
            rows,
            width,
            scale,
            (1.0 / (1.0 - drop)) as f32,
            drop > 0.0,
        );
        grads.register::<CubeBackend>(parent.id, dx);
    }
}

#[derive(Debug)]
struct LayerNormBackward;

impl Backward<CubeBackend, 3> for LayerNormBackward {
    /// Input (contiguous), gamma, each row's mean and rstd.
    type State = (CubeTensor, CubeTensor, CubeTensor, CubeTensor);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = contiguous(grads.consume::<CubeBackend>(&ops.node));
        let (x, gamma, mean, rstd) = ops.state;
        let (rows, width) = rows_and_width(&x);
        let empty = || {
            burn_cubecl::ops::numeric::empty_device_contiguous_dtype(
                x.client.clone(),
                x.device.clone(),
                x.shape(),
                x.dtype,
            )
        };
        let (dx, dy_xhat) = (empty(), empty());
        let (count, dim) = launch_1d(rows);
        ln::backward::launch(
            &x.client,
            count,
            dim,
            x.clone().into_tensor_arg(),
            dy.clone().into_tensor_arg(),
            gamma.into_tensor_arg(),
            mean.into_tensor_arg(),
            rstd.into_tensor_arg(),
            dx.clone().into_tensor_arg(),
            dy_xhat.clone().into_tensor_arg(),
            rows,
            width,
        );
        let column_sum = |t: CubeTensor| {
            let t = CubeBackend::float_reshape(t, [rows, width].into());
            CubeBackend::float_reshape(CubeBackend::float_sum_dim(t, 0), [width].into())
        };
        let [x_parent, gamma_parent, beta_parent] = ops.parents;
        if let Some(parent) = beta_parent {
            grads.register::<CubeBackend>(parent.id, column_sum(dy));
        }
        if let Some(parent) = gamma_parent {
            grads.register::<CubeBackend>(parent.id, column_sum(dy_xhat));
        }
        if let Some(parent) = x_parent {
            grads.register::<CubeBackend>(parent.id, dx);
        }
    }
}

#[derive(Debug)]
struct BatchNormBackward;

impl Backward<CubeBackend, 3> for BatchNormBackward {
    /// Input, the channels' statistics and affine map, epsilon, swish.
    type State = (CubeTensor, Channels, f32, bool);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = contiguous(grads.consume::<CubeBackend>(&ops.node));
        let (x, ch, epsilon, act) = ops.state;
        // Sums over each channel of dz and dz x-hat: beta's and gamma's gradients.
        let (dbeta, dgamma) = norm_sums(&x, &dy, &ch, epsilon, true, act);
        let [x_parent, gamma_parent, beta_parent] = ops.parents;
        if let Some(parent) = x_parent {
            let dx = norm_apply(&x, &dy, &ch, (&dbeta, &dgamma), epsilon, true, act);
            grads.register::<CubeBackend>(parent.id, dx);
        }
        if let Some(parent) = gamma_parent {
            grads.register::<CubeBackend>(parent.id, dgamma);
        }
        if let Some(parent) = beta_parent {
            grads.register::<CubeBackend>(parent.id, dbeta);
        }
    }
}

type AutodiffTensor = FloatTensor<Autodiff<CubeBackend>>;

#[derive(Debug)]
struct DepthwiseBackward;

impl Backward<CubeBackend, 3> for DepthwiseBackward {
    /// Input, weight, stride, padding.
    type State = (CubeTensor, CubeTensor, usize, [usize; 4]);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<CubeBackend>(&ops.node);
        let (x, weight, stride, padding) = ops.state;
        let [x_parent, weight_parent, bias_parent] = ops.parents;
        let [channels, _, k, _] = weight.shape().dims::<4>();
        if let Some(parent) = bias_parent {
            let bias = CubeBackend::float_sum_dim(
                CubeBackend::float_sum_dim(CubeBackend::float_sum_dim(grad.clone(), 0), 2),
                3,
            );
            grads.register::<CubeBackend>(
                parent.id,
                CubeBackend::float_reshape(bias, [channels].into()),
            );
        }
        if let Some(parent) = weight_parent {
            let g = weight_grad(x.clone(), grad.clone(), k, stride, padding);
            grads.register::<CubeBackend>(parent.id, g);
        }
        if let Some(parent) = x_parent {
            let g =
                CubeBackend::conv2d_x_backward(x, weight, grad, options(channels, stride, padding));
            grads.register::<CubeBackend>(parent.id, g);
        }
    }
}

impl<C: CheckpointStrategy> CubeOps for Autodiff<CubeBackend, C> {
    fn cube_depthwise_conv(
        x: AutodiffTensor,
        weight: AutodiffTensor,
        bias: AutodiffTensor,
        stride: usize,
        padding: [usize; 4],
    ) -> AutodiffTensor {
        let nodes = [x.node(), weight.node(), bias.node()];
        let (x, weight, bias) = (
            x.into_primitive(),
            weight.into_primitive(),
            bias.into_primitive(),
        );
        let y = CubeBackend::cube_depthwise_conv(x.clone(), weight.clone(), bias, stride, padding);
        match DepthwiseBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((x, weight, stride, padding), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn cube_batch_norm(
        x: AutodiffTensor,
        gamma: AutodiffTensor,
        beta: AutodiffTensor,
        epsilon: f64,
        act: bool,
    ) -> (AutodiffTensor, AutodiffTensor, AutodiffTensor) {
        let nodes = [x.node(), gamma.node(), beta.node()];
        let x = contiguous(x.into_primitive());
        let (y, ch) = norm_forward(
            &x,
            gamma.into_primitive(),
            beta.into_primitive(),
            epsilon as f32,
            act,
        );
        let (mean, var) = (ch.mean.clone(), ch.var.clone());
        let y = match BatchNormBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((x, ch, epsilon as f32, act), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        (y, AutodiffTensor::new(mean), AutodiffTensor::new(var))
    }

    fn cube_layer_norm(
        x: AutodiffTensor,
        gamma: AutodiffTensor,
        beta: AutodiffTensor,
        epsilon: f64,
    ) -> AutodiffTensor {
        let nodes = [x.node(), gamma.node(), beta.node()];
        let x = contiguous(x.into_primitive());
        let gamma = contiguous(gamma.into_primitive());
        let beta = contiguous(beta.into_primitive());
        let (y, mean, rstd) = layer_norm_forward(&x, &gamma, &beta, epsilon as f32);
        match LayerNormBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((x, gamma, mean, rstd), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn cube_softmax_dropout(
        x: AutodiffTensor,
        mask: AutodiffTensor,
        scale: f64,
        drop: f64,
    ) -> AutodiffTensor {
        let nodes = [x.node()];
        let x = contiguous(x.into_primitive());
        let mask = mask.into_primitive();
        let mask = if drop > 0.0 { contiguous(mask) } else { mask };
        let (y, p) = softmax_forward(&x, &mask, scale as f32, drop);
        match SoftmaxBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((p, mask, scale as f32, drop), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn cube_dropout_mask(like: AutodiffTensor, key: u32, threshold: u32) -> AutodiffTensor {
        AutodiffTensor::new(dropout_mask_of(&like.into_primitive(), key, threshold))
    }

    fn cube_depthwise_weight_grad(
        x: AutodiffTensor,
        grad: AutodiffTensor,
        k: usize,
        stride: usize,
        padding: [usize; 4],
    ) -> AutodiffTensor {
        // A gradient itself: computed on the primitives, not tracked.
        AutodiffTensor::new(weight_grad(
            x.into_primitive(),
            grad.into_primitive(),
            k,
            stride,
            padding,
        ))
    }
}
