//! A plain float evaluator of the export graph on the host, op by op as TFLite defines them:
//! it gives the activation ranges a full-integer file is calibrated with, and lets the unit
//! tests check the graph against burn without a runtime.

use super::graph::{Data, Graph, Op, Padding};

/// Row-major strides of `shape`.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Element-wise `f(a, b)` with numpy broadcasting to `out`.
fn broadcast(
    a: &[f32],
    sa: &[usize],
    b: &[f32],
    sb: &[usize],
    out: &[usize],
    f: impl Fn(f32, f32) -> f32,
) -> Vec<f32> {
    if sa == sb {
        return a.iter().zip(b).map(|(x, y)| f(*x, *y)).collect();
    }
    let rank = out.len();
    // Strides of each operand over the output's axes (0 where it is broadcast).
    let aligned = |s: &[usize]| -> Vec<usize> {
        let st = strides(s);
        (0..rank)
            .map(|i| {
                let j = (i + s.len()).checked_sub(rank);
                match j {
                    Some(j) if s[j] != 1 => st[j],
                    _ => 0,
                }
            })
            .collect()
    };
    let (ta, tb) = (aligned(sa), aligned(sb));
    let total: usize = out.iter().product();
    let mut idx = vec![0usize; rank];
    let mut v = Vec::with_capacity(total);
    let (mut ia, mut ib) = (0usize, 0usize);
    for _ in 0..total {
        v.push(f(a[ia], b[ib]));
        for d in (0..rank).rev() {
            idx[d] += 1;
            ia += ta[d];
            ib += tb[d];
            if idx[d] < out[d] {
                break;
            }
            ia -= ta[d] * out[d];
            ib -= tb[d] * out[d];
            idx[d] = 0;
        }
    }
    v
}

/// A convolution's sizes: input `[h, w, ci]`, output `[ho, wo, co]`, kernel `k`.
struct ConvGeometry {
    input: [usize; 3],
    output: [usize; 3],
    k: usize,
    stride: usize,
    padding: Padding,
    depthwise: bool,
}

fn conv(x: &[f32], wt: &[f32], bias: &[f32], geometry: &ConvGeometry) -> Vec<f32> {
    let ConvGeometry {
        input: [h, w, ci],
        output: [ho, wo, co],
        k,
        stride,
        padding,
        depthwise,
    } = *geometry;
    let (top, left) = match padding {
        Padding::Valid => (0, 0),
        Padding::Same => (
            ((ho - 1) * stride + k).saturating_sub(h) / 2,
            ((wo - 1) * stride + k).saturating_sub(w) / 2,
        ),
    };
    let mut out = vec![0f32; ho * wo * co];
    for oy in 0..ho {
        for ox in 0..wo {
            let acc = &mut out[(oy * wo + ox) * co..(oy * wo + ox + 1) * co];
            acc.copy_from_slice(bias);
            for ky in 0..k {
                let Some(iy) = (oy * stride + ky).checked_sub(top).filter(|y| *y < h) else {
                    continue;
                };
                for kx in 0..k {
                    let Some(ix) = (ox * stride + kx).checked_sub(left).filter(|x| *x < w) else {
                        continue;
                    };
                    let px = &x[(iy * w + ix) * ci..(iy * w + ix + 1) * ci];
                    if depthwise {
                        let wk = &wt[(ky * k + kx) * co..(ky * k + kx + 1) * co];
                        for c in 0..co {
                            acc[c] += px[c] * wk[c];
                        }
                    } else {
                        for (c, a) in acc.iter_mut().enumerate() {
                            let wk = &wt[((c * k + ky) * k + kx) * ci..][..ci];
                            *a += px.iter().zip(wk).map(|(p, q)| p * q).sum::<f32>();
                        }
                    }
                }
            }
        }
    }
    out
}

fn transpose(x: &[f32], shape: &[usize], perm: &[usize]) -> Vec<f32> {
    let st = strides(shape);
    let out: Vec<usize> = perm.iter().map(|p| shape[*p]).collect();
    let src: Vec<usize> = perm.iter().map(|p| st[*p]).collect();
    let rank = out.len();
    let mut idx = vec![0usize; rank];
    let mut v = Vec::with_capacity(x.len());
    let mut i = 0usize;
    for _ in 0..x.len() {
        v.push(x[i]);
        for d in (0..rank).rev() {
            idx[d] += 1;
            i += src[d];
            if idx[d] < out[d] {
                break;
            }
            i -= src[d] * out[d];
            idx[d] = 0;
        }
    }
    v
}

fn mean(x: &[f32], shape: &[usize], axes: &[usize]) -> Vec<f32> {
    let kept: Vec<usize> = shape
        .iter()
        .enumerate()
        .map(|(i, d)| if axes.contains(&i) { 1 } else { *d })
        .collect();
    let st = strides(&kept);
    let count: usize = axes.iter().map(|a| shape[*a]).product();
    let mut sums = vec![0f64; kept.iter().product()];
    let rank = shape.len();
    let mut idx = vec![0usize; rank];
    for v in x {
        let o: usize = (0..rank)
            .map(|d| if axes.contains(&d) { 0 } else { idx[d] * st[d] })
            .sum();
        sums[o] += *v as f64;
        for d in (0..rank).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    sums.iter().map(|s| (*s / count as f64) as f32).collect()
}

/// TFLite's bilinear resize with half-pixel centres (align_corners false), NHWC, batch 1.
fn resize(x: &[f32], [h, w, c]: [usize; 3], ho: usize, wo: usize) -> Vec<f32> {
    let coords = |o: usize, inp: usize, out: usize| {
        let src = ((o as f32 + 0.5) * (inp as f32 / out as f32) - 0.5).max(0.0);
        let lo = (src.floor() as usize).min(inp - 1);
        let hi = (lo + 1).min(inp - 1);
        (lo, hi, src - lo as f32)
    };
    let mut v = Vec::with_capacity(ho * wo * c);
    for oy in 0..ho {
        let (y0, y1, fy) = coords(oy, h, ho);
        for ox in 0..wo {
            let (x0, x1, fx) = coords(ox, w, wo);
            let at = |y: usize, xx: usize, ch: usize| x[(y * w + xx) * c + ch];
            for ch in 0..c {
                let top = at(y0, x0, ch) * (1.0 - fx) + at(y0, x1, ch) * fx;
                let bottom = at(y1, x0, ch) * (1.0 - fx) + at(y1, x1, ch) * fx;
                v.push(top * (1.0 - fy) + bottom * fy);
            }
        }
    }
    v
}

/// Runs `g` on one NHWC image; `observe(tensor, values)` sees every activation as it is made.
/// Returns the output's values.
pub fn run(g: &Graph, input: &[f32], mut observe: impl FnMut(usize, &[f32])) -> Vec<f32> {
    assert_eq!(input.len(), g.shape(g.input).iter().product::<usize>());
    // Each activation is dropped after its last reader.
    let mut last_use = vec![0usize; g.tensors.len()];
    for (i, node) in g.nodes.iter().enumerate() {
        for t in &node.inputs {
            last_use[*t] = i;
        }
    }
    let mut values: Vec<Option<Vec<f32>>> = vec![None; g.tensors.len()];
    observe(g.input, input);
    values[g.input] = Some(input.to_vec());
    for (i, node) in g.nodes.iter().enumerate() {
        let get = |k: usize| -> &[f32] {
            let t = node.inputs[k];
            match &g.tensors[t].data {
                Data::F32(v) => v,
                Data::Activation => values[t].as_deref().expect("computed before use"),
                Data::I32(_) => panic!("int32 tensor read as float"),
            }
        };
        let ints = |k: usize| -> Vec<usize> {
            match &g.tensors[node.inputs[k]].data {
                Data::I32(v) => v.iter().map(|x| *x as usize).collect(),
                _ => panic!("expected an int32 tensor"),
            }
        };
        let shape = |k: usize| g.shape(node.inputs[k]);
        let out_shape = g.shape(node.output);
        let y = match &node.op {
            Op::Conv2d { stride, padding } | Op::DepthwiseConv2d { stride, padding } => {
                let s = shape(0);
                let o = out_shape;
                let geometry = ConvGeometry {
                    input: [s[1], s[2], s[3]],
                    output: [o[1], o[2], o[3]],
                    k: shape(1)[1],
                    stride: *stride,
                    padding: *padding,
                    depthwise: matches!(node.op, Op::DepthwiseConv2d { .. }),
                };
                conv(get(0), get(1), get(2), &geometry)
            }
            Op::FullyConnected => {
                let (x, w, b) = (get(0), get(1), get(2));
                let [out, inp] = shape(1).try_into().unwrap();
                let mut v = Vec::with_capacity(x.len() / inp * out);
                for row in x.chunks_exact(inp) {
                    for o in 0..out {
                        let wr = &w[o * inp..(o + 1) * inp];
                        v.push(b[o] + row.iter().zip(wr).map(|(p, q)| p * q).sum::<f32>());
                    }
                }
                v
            }
            Op::Logistic => get(0).iter().map(|x| 1.0 / (1.0 + (-x).exp())).collect(),
            Op::Rsqrt => get(0).iter().map(|x| 1.0 / x.sqrt()).collect(),
            Op::Mul | Op::Add | Op::Sub | Op::SquaredDifference => {
                let f: fn(f32, f32) -> f32 = match node.op {
                    Op::Mul => |a, b| a * b,
                    Op::Add => |a, b| a + b,
                    Op::Sub => |a, b| a - b,
                    _ => |a, b| (a - b) * (a - b),
                };
                broadcast(get(0), shape(0), get(1), shape(1), out_shape, f)
            }
            Op::Mean { .. } => mean(get(0), shape(0), &ints(1)),
            Op::Reshape => get(0).to_vec(),
            Op::Pad => {
                let p = ints(1);
                let [_, h, w, c] = shape(0).try_into().unwrap();
                let [_, ho, wo, _] = out_shape.try_into().unwrap();
                let x = get(0);
                let mut v = vec![0f32; ho * wo * c];
                for y in 0..h {
                    for xx in 0..w {
                        let o = ((y + p[2]) * wo + xx + p[4]) * c;
                        v[o..o + c].copy_from_slice(&x[(y * w + xx) * c..(y * w + xx + 1) * c]);
                    }
                }
                v
            }
            Op::Transpose => transpose(get(0), shape(0), &ints(1)),
            Op::BatchMatMul { adj_y } => {
                let (sa, sb) = (shape(0), shape(1));
                let r = sa.len();
                let (m, k) = (sa[r - 2], sa[r - 1]);
                let n = if *adj_y { sb[r - 2] } else { sb[r - 1] };
                let batches: usize = sa[..r - 2].iter().product();
                let (a, b) = (get(0), get(1));
                let mut v = vec![0f32; batches * m * n];
                for bi in 0..batches {
                    let a = &a[bi * m * k..(bi + 1) * m * k];
                    let b = &b[bi * k * n..(bi + 1) * k * n];
                    let out = &mut v[bi * m * n..(bi + 1) * m * n];
                    for i in 0..m {
                        for j in 0..n {
                            out[i * n + j] = (0..k)
                                .map(|l| {
                                    let bv = if *adj_y { b[j * k + l] } else { b[l * n + j] };
                                    a[i * k + l] * bv
                                })
                                .sum();
                        }
                    }
                }
                v
            }
            Op::Softmax { beta } => {
                let n = *shape(0).last().unwrap();
                let mut v = Vec::with_capacity(get(0).len());
                for row in get(0).chunks_exact(n) {
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let e: Vec<f32> = row.iter().map(|x| ((x - max) * beta).exp()).collect();
                    let sum: f32 = e.iter().sum();
                    v.extend(e.iter().map(|x| x / sum));
                }
                v
            }
            Op::L2Normalization => {
                let n = *shape(0).last().unwrap();
                let mut v = Vec::with_capacity(get(0).len());
                for row in get(0).chunks_exact(n) {
                    let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
                    v.extend(row.iter().map(|x| x / norm));
                }
                v
            }
            Op::Concatenation { axis } => {
                let outer: usize = out_shape[..*axis].iter().product();
                let mut v = Vec::with_capacity(out_shape.iter().product());
                for o in 0..outer {
                    for k in 0..node.inputs.len() {
                        let inner: usize = shape(k)[*axis..].iter().product();
                        v.extend_from_slice(&get(k)[o * inner..(o + 1) * inner]);
                    }
                }
                v
            }
            Op::ResizeBilinear => {
                let s = shape(0);
                resize(get(0), [s[1], s[2], s[3]], out_shape[1], out_shape[2])
            }
        };
        debug_assert_eq!(y.len(), out_shape.iter().product::<usize>());
        observe(node.output, &y);
        values[node.output] = Some(y);
        for t in &node.inputs {
            if last_use[*t] == i && *t != g.output {
                values[*t] = None;
            }
        }
    }
    values[g.output].take().expect("the output is computed")
}
