//! The model as a graph of TFLite builtin ops in float32, NHWC, batch 1: what the writer turns
//! into a flatbuffer (float, dynamic-range or full-integer) and what the host evaluator runs to
//! calibrate activation ranges. Built from the BatchNorm-folded model in the ONNX exporter's
//! order (stem, blocks, final conv, global average pool, head).

use super::super::{param, same_padding};
use crate::model::layers::{ConvNormAct, InvertedResidual, MobileVitBlock, TransformerLayer};
use crate::model::{Block, MobileVit};
use burn::nn::PaddingConfig2d;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    Same,
    Valid,
}

/// An op and its options. Inputs and output are tensors of the graph.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Inputs: x [1, H, W, Ci], weights [Co, k, k, Ci] (OHWI), bias [Co].
    Conv2d {
        stride: usize,
        padding: Padding,
    },
    /// Inputs: x [1, H, W, C], weights [1, k, k, C], bias [C].
    DepthwiseConv2d {
        stride: usize,
        padding: Padding,
    },
    /// Inputs: x [rows, In], weights [Out, In], bias [Out].
    FullyConnected,
    Logistic,
    Mul,
    Add,
    Sub,
    SquaredDifference,
    Rsqrt,
    /// Inputs: x, axes (int32).
    Mean {
        keep_dims: bool,
    },
    /// Inputs: x, shape (int32).
    Reshape,
    /// Inputs: x, perm (int32).
    Transpose,
    BatchMatMul {
        adj_y: bool,
    },
    /// Over the last axis.
    Softmax {
        beta: f32,
    },
    /// `x / max(|x|, 1e-6)` over the last axis (`|x|` the L2 norm).
    L2Normalization,
    Concatenation {
        axis: usize,
    },
    /// Inputs: x, size [h, w] (int32); align_corners false, half-pixel centres.
    ResizeBilinear,
    /// Inputs: x, paddings [rank, 2] (int32).
    Pad,
}

#[derive(Debug, Clone)]
pub enum Data {
    /// Computed by an op (or the graph's input).
    Activation,
    F32(Vec<f32>),
    I32(Vec<i32>),
}

#[derive(Debug, Clone)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Data,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<usize>,
    pub output: usize,
}

#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub tensors: Vec<Tensor>,
    pub nodes: Vec<Node>,
    pub input: usize,
    pub output: usize,
}

impl Graph {
    pub fn shape(&self, t: usize) -> &[usize] {
        &self.tensors[t].shape
    }

    fn tensor(&mut self, name: String, shape: Vec<usize>, data: Data) -> usize {
        self.tensors.push(Tensor { name, shape, data });
        self.tensors.len() - 1
    }

    fn fresh(&self, base: &str) -> String {
        format!("{base}_{}", self.tensors.len())
    }

    pub fn f32s(&mut self, base: &str, shape: Vec<usize>, v: Vec<f32>) -> usize {
        assert_eq!(shape.iter().product::<usize>(), v.len(), "{base}");
        let name = self.fresh(base);
        self.tensor(name, shape, Data::F32(v))
    }

    pub fn i32s(&mut self, base: &str, v: &[usize]) -> usize {
        let name = self.fresh(base);
        let v: Vec<i32> = v.iter().map(|x| *x as i32).collect();
        self.tensor(name, vec![v.len()], Data::I32(v))
    }

    fn node(&mut self, op: Op, inputs: Vec<usize>, shape: Vec<usize>, base: &str) -> usize {
        let name = self.fresh(base);
        let output = self.tensor(name, shape, Data::Activation);
        self.nodes.push(Node { op, inputs, output });
        output
    }

    pub fn logistic(&mut self, x: usize) -> usize {
        let s = self.shape(x).to_vec();
        self.node(Op::Logistic, vec![x], s, "logistic")
    }

    /// The shape two operands broadcast to (numpy rules).
    fn broadcast(&self, a: usize, b: usize) -> Vec<usize> {
        let (sa, sb) = (self.shape(a), self.shape(b));
        let rank = sa.len().max(sb.len());
        let dim =
            |s: &[usize], i: usize| (i + s.len()).checked_sub(rank).map(|j| s[j]).unwrap_or(1);
        (0..rank)
            .map(|i| {
                let (x, y) = (dim(sa, i), dim(sb, i));
                assert!(
                    x == y || x == 1 || y == 1,
                    "cannot broadcast {sa:?} with {sb:?}"
                );
                x.max(y)
            })
            .collect()
    }

    pub fn binary(&mut self, op: Op, a: usize, b: usize) -> usize {
        let shape = self.broadcast(a, b);
        let base = match op {
            Op::Mul => "mul",
            Op::Add => "add",
            Op::Sub => "sub",
            Op::SquaredDifference => "squared_difference",
            _ => unreachable!("not a binary op: {op:?}"),
        };
        self.node(op, vec![a, b], shape, base)
    }

    pub fn swish(&mut self, x: usize) -> usize {
        let s = self.logistic(x);
        self.binary(Op::Mul, x, s)
    }

    pub fn mean(&mut self, x: usize, axes: &[usize], keep_dims: bool) -> usize {
        let shape: Vec<usize> = self
            .shape(x)
            .iter()
            .enumerate()
            .filter_map(|(i, d)| match (axes.contains(&i), keep_dims) {
                (false, _) => Some(*d),
                (true, true) => Some(1),
                (true, false) => None,
            })
            .collect();
        let a = self.i32s("axes", axes);
        self.node(Op::Mean { keep_dims }, vec![x, a], shape, "mean")
    }

    pub fn reshape(&mut self, x: usize, shape: &[usize]) -> usize {
        assert_eq!(
            self.shape(x).iter().product::<usize>(),
            shape.iter().product::<usize>(),
            "reshape {:?} to {shape:?}",
            self.shape(x)
        );
        let s = self.i32s("shape", shape);
        self.node(Op::Reshape, vec![x, s], shape.to_vec(), "reshape")
    }

    pub fn transpose(&mut self, x: usize, perm: &[usize]) -> usize {
        let shape = perm.iter().map(|p| self.shape(x)[*p]).collect();
        let p = self.i32s("perm", perm);
        self.node(Op::Transpose, vec![x, p], shape, "transpose")
    }

    pub fn resize(&mut self, x: usize, h: usize, w: usize) -> usize {
        let [n, _, _, c] = self.shape(x).try_into().expect("NHWC");
        let size = self.i32s("size", &[h, w]);
        self.node(
            Op::ResizeBilinear,
            vec![x, size],
            vec![n, h, w, c],
            "resize",
        )
    }

    /// `x @ W^T + b` for `x` [rows, In] and `w` [Out, In].
    pub fn fully_connected(&mut self, x: usize, w: Vec<f32>, b: Vec<f32>, out: usize) -> usize {
        let s = self.shape(x).to_vec();
        let inp = *s.last().unwrap();
        let rows = s.iter().product::<usize>() / inp;
        let w = self.f32s("fc_weights", vec![out, inp], w);
        let b = self.f32s("fc_bias", vec![out], b);
        self.node(
            Op::FullyConnected,
            vec![x, w, b],
            vec![rows, out],
            "fully_connected",
        )
    }

    /// A burn `Linear` (weight `[in, out]`) as a fully connected op, with the LayerNorm scale
    /// and shift before it folded in when given.
    pub fn linear(&mut self, x: usize, l: &burn::nn::Linear, affine: Option<&Affine>) -> usize {
        let [inp, out] = l.weight.val().dims();
        let mut w = param(&l.weight);
        let mut b = l.bias.as_ref().map(param).unwrap_or_else(|| vec![0.0; out]);
        if let Some(a) = affine {
            a.fold(&mut w, &mut b, inp, out);
        }
        self.fully_connected(x, transpose_2d(&w, inp, out), b, out)
    }
}

/// A LayerNorm's scale and shift, applied by the dense layer (or 1x1 convolution) after it:
/// `(n * gamma + beta) W + b = n (gamma W) + (beta W + b)`.
pub struct Affine {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

impl Affine {
    /// Folds into `w` `[inp, out]` and `b` `[out]`.
    fn fold(&self, w: &mut [f32], b: &mut [f32], inp: usize, out: usize) {
        for i in 0..inp {
            for o in 0..out {
                b[o] += self.beta[i] * w[i * out + o];
                w[i * out + o] *= self.gamma[i];
            }
        }
    }
}

/// `[rows, cols]` to `[cols, rows]`.
pub fn transpose_2d(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = v[r * cols + c];
        }
    }
    t
}

struct Builder {
    g: Graph,
    ln_eps: f32,
    /// The graph of a full-integer file (see [`build`]).
    integer: bool,
}

impl Builder {
    /// Conv (BatchNorm folded in) and its swish. TFLite's SAME padding is TF's (the odd pixel
    /// after), so it stands for the Keras flavour's padding; the paper flavour's symmetric
    /// `k / 2` padding on a stride-2 conv of an even map differs from it and gets a PAD op.
    fn conv(&mut self, x: usize, c: &ConvNormAct) -> usize {
        self.conv_after(x, c, None)
    }

    /// [`Self::conv`] of a 1x1 convolution that applies the LayerNorm `affine` before it.
    fn conv_after(&mut self, x: usize, c: &ConvNormAct, affine: Option<&Affine>) -> usize {
        assert!(
            c.bn.is_none(),
            "export works on the BatchNorm-folded inference model"
        );
        let conv = &c.conv;
        let mut w = param(&conv.weight);
        let [out, in_g, k, k2] = conv.weight.val().dims();
        assert_eq!(k, k2, "square kernels");
        let mut b = conv
            .bias
            .as_ref()
            .map(param)
            .unwrap_or_else(|| vec![0.0; out]);
        if let Some(a) = affine {
            assert!(k == 1 && conv.groups == 1, "folds into a 1x1 convolution");
            // OI11 is `[out, in]`: as `[in, out]` transposed.
            let mut t = transpose_2d(&w, out, in_g);
            a.fold(&mut t, &mut b, in_g, out);
            w = transpose_2d(&t, in_g, out);
        }
        let [_, h, wd, cin] = self.g.shape(x).try_into().expect("NHWC");
        let [s, _] = conv.stride;
        let ((top, bottom), (left, right)) = match conv.padding {
            PaddingConfig2d::Same => (same_padding(k, s, h), same_padding(k, s, wd)),
            PaddingConfig2d::Explicit(t, l, b2, r) => ((t, b2), (l, r)),
            PaddingConfig2d::Valid => ((0, 0), (0, 0)),
        };
        let ho = (h + top + bottom - k) / s + 1;
        let wo = (wd + left + right - k) / s + 1;
        let tf_same = same_padding(k, s, h).0 == top
            && same_padding(k, s, wd).0 == left
            && ho == h.div_ceil(s)
            && wo == wd.div_ceil(s);
        let (x, padding) = if top + bottom + left + right == 0 {
            (x, Padding::Valid)
        } else if tf_same {
            (x, Padding::Same)
        } else {
            let p = self
                .g
                .i32s("paddings", &[0, 0, top, bottom, left, right, 0, 0]);
            self.g.tensors[p].shape = vec![4, 2];
            let shape = vec![1, h + top + bottom, wd + left + right, cin];
            (
                self.g.node(Op::Pad, vec![x, p], shape, "pad"),
                Padding::Valid,
            )
        };
        let y = if conv.groups == 1 {
            assert_eq!(in_g, cin);
            // OIHW to OHWI.
            let mut t = Vec::with_capacity(w.len());
            for o in 0..out {
                for ky in 0..k {
                    for kx in 0..k {
                        for i in 0..cin {
                            t.push(w[((o * cin + i) * k + ky) * k + kx]);
                        }
                    }
                }
            }
            let wt = self.g.f32s("conv_weights", vec![out, k, k, cin], t);
            let bt = self.g.f32s("conv_bias", vec![out], b);
            let op = Op::Conv2d { stride: s, padding };
            self.g
                .node(op, vec![x, wt, bt], vec![1, ho, wo, out], "conv2d")
        } else {
            assert!(
                conv.groups == cin && in_g == 1 && out == cin,
                "only plain and depthwise convolutions"
            );
            // [C, 1, k, k] to [1, k, k, C].
            let mut t = Vec::with_capacity(w.len());
            for ky in 0..k {
                for kx in 0..k {
                    for ch in 0..out {
                        t.push(w[(ch * k + ky) * k + kx]);
                    }
                }
            }
            let wt = self.g.f32s("depthwise_weights", vec![1, k, k, out], t);
            let bt = self.g.f32s("depthwise_bias", vec![out], b);
            let op = Op::DepthwiseConv2d { stride: s, padding };
            self.g.node(
                op,
                vec![x, wt, bt],
                vec![1, ho, wo, out],
                "depthwise_conv2d",
            )
        };
        if c.act { self.g.swish(y) } else { y }
    }

    fn inverted_residual(&mut self, x: usize, b: &InvertedResidual) -> usize {
        let y = self.conv(x, &b.expand);
        let y = self.conv(y, &b.depthwise);
        let y = self.conv(y, &b.project);
        if b.residual {
            self.g.binary(Op::Add, y, x)
        } else {
            y
        }
    }

    /// LayerNorm over the last axis, decomposed as TF's converter does: MEAN,
    /// SQUARED_DIFFERENCE, MEAN, ADD epsilon, RSQRT, SUB, MUL, MUL gamma, ADD beta.
    ///
    /// In a full-integer file that form fails: one int8 scale for the squared deviations of
    /// every token leaves the variance of a quiet token a few steps, or none (its RSQRT then
    /// saturates). There the centred tokens go to L2_NORMALIZATION, whose int8 kernel sums the
    /// squares in int32: `LN(x) = sqrt(d) * l2_normalize(x - mean) * gamma + beta` (epsilon,
    /// below what int8 resolves, aside), and `sqrt(d) * gamma` and `beta` are returned to be
    /// folded into the layer after it (so that no tensor carries their per-channel spread).
    fn layer_norm(&mut self, x: usize, ln: &burn::nn::LayerNorm) -> (usize, Option<Affine>) {
        let last = self.g.shape(x).len() - 1;
        let d = ln.gamma.val().dims()[0];
        let mut affine = Affine {
            gamma: param(&ln.gamma),
            beta: ln.beta.as_ref().map(param).unwrap_or_else(|| vec![0.0; d]),
        };
        let mean = self.g.mean(x, &[last], true);
        if self.integer {
            let centred = self.g.binary(Op::Sub, x, mean);
            let shape = self.g.shape(x).to_vec();
            let unit = self.g.node(
                Op::L2Normalization,
                vec![centred],
                shape,
                "l2_normalization",
            );
            let scale = (d as f32).sqrt();
            affine.gamma.iter_mut().for_each(|g| *g *= scale);
            return (unit, Some(affine));
        }
        let sq = self.g.binary(Op::SquaredDifference, x, mean);
        let var = self.g.mean(sq, &[last], true);
        let eps = self.g.f32s("epsilon", vec![1], vec![self.ln_eps]);
        let var = self.g.binary(Op::Add, var, eps);
        let inv = self
            .g
            .node(Op::Rsqrt, vec![var], self.g.shape(var).to_vec(), "rsqrt");
        let centred = self.g.binary(Op::Sub, x, mean);
        let normed = self.g.binary(Op::Mul, centred, inv);
        let gamma = self.g.f32s("ln_gamma", vec![d], affine.gamma);
        let y = self.g.binary(Op::Mul, normed, gamma);
        let beta = self.g.f32s("ln_beta", vec![d], affine.beta);
        (self.g.binary(Op::Add, y, beta), None)
    }

    /// Tokens `x` [batch * n, d] (batch sequences of n tokens).
    fn transformer(&mut self, x: usize, t: &TransformerLayer, batch: usize, n: usize) -> usize {
        let (heads, dh) = (t.attn.heads, t.attn.head_dim);
        let inner = heads * dh;
        let (y, affine) = self.layer_norm(x, &t.norm1);
        // The fused qkv projection as three: q, k and v columns of `[d, 3 * inner]`.
        let [d, _] = t.attn.qkv.weight.val().dims();
        let mut w = param(&t.attn.qkv.weight);
        let mut bias = t
            .attn
            .qkv
            .bias
            .as_ref()
            .map(param)
            .unwrap_or_else(|| vec![0.0; 3 * inner]);
        if let Some(a) = &affine {
            a.fold(&mut w, &mut bias, d, 3 * inner);
        }
        let mut parts = Vec::new();
        for part in 0..3 {
            let mut wp = Vec::with_capacity(inner * d);
            for o in 0..inner {
                for i in 0..d {
                    wp.push(w[i * 3 * inner + part * inner + o]);
                }
            }
            let bp = bias[part * inner..(part + 1) * inner].to_vec();
            let p = self.g.fully_connected(y, wp, bp, inner);
            let p = self.g.reshape(p, &[batch, n, heads, dh]);
            parts.push(self.g.transpose(p, &[0, 2, 1, 3]));
        }
        let shape = vec![batch, heads, n, n];
        let scores = self.g.node(
            Op::BatchMatMul { adj_y: true },
            vec![parts[0], parts[1]],
            shape.clone(),
            "batch_matmul",
        );
        let scale = self
            .g
            .f32s("attention_scale", vec![1], vec![1.0 / (dh as f32).sqrt()]);
        let scores = self.g.binary(Op::Mul, scores, scale);
        let weights = self
            .g
            .node(Op::Softmax { beta: 1.0 }, vec![scores], shape, "softmax");
        let a = self.g.node(
            Op::BatchMatMul { adj_y: false },
            vec![weights, parts[2]],
            vec![batch, heads, n, dh],
            "batch_matmul",
        );
        let a = self.g.transpose(a, &[0, 2, 1, 3]);
        let a = self.g.reshape(a, &[batch * n, inner]);
        let a = self.g.linear(a, &t.attn.proj, None);
        let x = self.g.binary(Op::Add, x, a);
        let (y, affine) = self.layer_norm(x, &t.norm2);
        let y = self.g.linear(y, &t.fc1, affine.as_ref());
        let y = self.g.swish(y);
        let y = self.g.linear(y, &t.fc2, None);
        let y = if t.fc2_act { self.g.swish(y) } else { y };
        self.g.binary(Op::Add, x, y)
    }

    fn mobilevit(&mut self, x: usize, b: &MobileVitBlock) -> usize {
        let y = self.conv(x, &b.conv_kxk);
        let y = self.conv(y, &b.conv_1x1);
        let [_, h, w, d] = self.g.shape(y).try_into().expect("NHWC");
        let p = b.patch;
        // As the model does: a map that is not a multiple of the patch is resized up to one
        // (bilinear, half-pixel centres) and back after.
        let (ph, pw) = (h.div_ceil(p) * p, w.div_ceil(p) * p);
        let resized = (ph, pw) != (h, w);
        let y = if resized { self.g.resize(y, ph, pw) } else { y };
        let (nh, nw) = (ph / p, pw / p);
        let n = nh * nw;
        // Unfold: [1, ph, pw, d] to p*p sequences of n tokens (sequence a*p + b holds the
        // pixels at (a, b) in their patch), with 4D transposes only.
        let mut t = if p == 1 {
            self.g.reshape(y, &[n, d])
        } else {
            let t = self.g.reshape(y, &[nh, p, nw, p * d]);
            let t = self.g.transpose(t, &[1, 0, 2, 3]);
            let t = self.g.reshape(t, &[p, n, p, d]);
            let t = self.g.transpose(t, &[0, 2, 1, 3]);
            self.g.reshape(t, &[p * p * n, d])
        };
        for layer in &b.transformer {
            t = self.transformer(t, layer, p * p, n);
        }
        let mut affine = None;
        if let Some(norm) = &b.norm {
            (t, affine) = self.layer_norm(t, norm);
        }
        let y = if p == 1 {
            self.g.reshape(t, &[1, ph, pw, d])
        } else {
            let t = self.g.reshape(t, &[p, p, n, d]);
            let t = self.g.transpose(t, &[0, 2, 1, 3]);
            let t = self.g.reshape(t, &[p, nh, nw, p * d]);
            let t = self.g.transpose(t, &[1, 0, 2, 3]);
            self.g.reshape(t, &[1, ph, pw, d])
        };
        // A folded LayerNorm scale and shift commute with the fold and the resize (whose
        // weights sum to one): the 1x1 projection applies them.
        let y = if resized { self.g.resize(y, h, w) } else { y };
        let y = self.conv_after(y, &b.conv_proj, affine.as_ref());
        let [_, _, _, cx] = self.g.shape(x).try_into().expect("NHWC");
        let [_, _, _, cy] = self.g.shape(y).try_into().expect("NHWC");
        let cat = self.g.node(
            Op::Concatenation { axis: 3 },
            vec![x, y],
            vec![1, h, w, cx + cy],
            "concatenation",
        );
        self.conv(cat, &b.conv_fusion)
    }
}

/// The graph of `model` (BatchNorm folded) for `size` x `size` images: input `images`
/// [1, size, size, 3], output `logits` [1, classes]. `integer`: the graph of a full-integer
/// file, its LayerNorms normalizing with L2_NORMALIZATION and leaving their scale and shift
/// to the dense layer or 1x1 convolution after them (see [`Builder::layer_norm`]).
pub fn build(model: &MobileVit, size: usize, ln_eps: f32, integer: bool) -> Graph {
    let mut b = Builder {
        g: Graph::default(),
        ln_eps,
        integer,
    };
    let input =
        b.g.tensor("images".into(), vec![1, size, size, 3], Data::Activation);
    b.g.input = input;
    let mut x = b.conv(input, &model.stem);
    for block in &model.blocks {
        x = match block {
            Block::Mv2(blk) => b.inverted_residual(x, blk),
            Block::Vit(blk) => b.mobilevit(x, blk),
        };
    }
    x = b.conv(x, &model.final_conv);
    let pooled = b.g.mean(x, &[1, 2], false);
    let logits = b.g.linear(pooled, &model.head, None);
    b.g.tensors[logits].name = "logits".into();
    b.g.output = logits;
    b.g
}
