//! Adam / AdamW and the weights' moving average as multi-tensor kernels on cubecl devices.
//!
//! burn's optimizer updates a model tensor by tensor, about ten kernel launches each (moments,
//! bias correction, decay, the update), and the average three more: with ~250 tensors that is
//! thousands of small launches a step, and a GPU waits on the host issuing them. Here each
//! kernel takes a chunk of up to [`CHUNK`] tensors (a cubecl `Sequence`; one block row per
//! tensor), so a step's update is a handful of launches: the gradients' squared norm (for
//! clipping, kept on the device: no read back), the update itself, and the average. The maths
//! is burn's, in the same order, so results agree with `ModuleOptimizer` to rounding; the state
//! is saved in burn's optimizer file format, so a run can resume on either path.

use crate::config::{Optimizer, TrainSection};
use anyhow::{Context, Result, anyhow, bail};
use burn::backend::TensorMetadata;
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::store::burn_pack;
use burn::tensor::{Bytes, DType};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::{CubeCount, CubeDim, SequenceArg};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// Tensors per launch: every tensor is a kernel argument (four or five each), and a chunk
/// length is compiled once.
const CHUNK: usize = 32;

/// Blocks along each tensor and units per block; a unit strides over its tensor.
const BLOCKS: u32 = 8;
const UNITS: u32 = 256;

mod kernel {
    use cubecl::prelude::*;

    /// Partial sums of squares: block row `k` takes tensor `k` of the chunk, each unit sums its
    /// strided share into its own slot of `partial` (no barriers, no shared memory).
    #[cube(launch)]
    pub fn squares(
        tensors: &Sequence<OwnedTensor<f32>>,
        partial: &mut Tensor<f32>,
        #[comptime] count: usize,
    ) {
        let which = CUBE_POS_Y as usize;
        let units = (CUBE_COUNT_X * CUBE_DIM_X) as usize;
        let me = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
        let mut acc = 0.0f32;
        #[unroll]
        for k in 0..count {
            if which == k {
                let t = tensors.index(k);
                let mut i = me;
                while i < t.len() {
                    let v = t[i];
                    acc += v * v;
                    i += units;
                }
            }
        }
        partial[which * units + me] = acc;
    }

    /// One Adam (or, `decoupled`, AdamW) step for a chunk of tensors, as burn computes it:
    /// the gradient scaled by the clip factor (from the squared global norm `norm_sq[0]`), the
    /// L2 penalty added to it (Adam) or the weights decayed apart (AdamW), the moments updated
    /// in place (or started, `first`), and the new weights written to `out`.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub fn adam(
        params: &Sequence<OwnedTensor<f32>>,
        grads: &Sequence<OwnedTensor<f32>>,
        m1: &mut Sequence<OwnedTensor<f32>>,
        m2: &mut Sequence<OwnedTensor<f32>>,
        out: &mut Sequence<OwnedTensor<f32>>,
        norm_sq: &Tensor<f32>,
        lr: f32,
        beta_1: f32,
        beta_2: f32,
        // Adam: the combined factor and eps times sqrt(1 - b2^t); AdamW: 1 - b1^t, 1 - b2^t.
        factor_1: f32,
        factor_2: f32,
        epsilon: f32,
        weight_decay: f32,
        max_norm: f32,
        #[comptime] count: usize,
        #[comptime] decoupled: bool,
        #[comptime] clip: bool,
        #[comptime] first: bool,
    ) {
        let which = CUBE_POS_Y as usize;
        let units = (CUBE_COUNT_X * CUBE_DIM_X) as usize;
        let me = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
        let mut scale = 1.0f32;
        if clip {
            let norm = f32::sqrt(norm_sq[0]);
            if norm > max_norm && norm < f32::INFINITY {
                scale = max_norm / (norm + 1.0e-6f32);
            }
        }
        #[unroll]
        for k in 0..count {
            if which == k {
                let p = params.index(k);
                let g = grads.index(k);
                let m = m1.index_mut(k);
                let v = m2.index_mut(k);
                let o = out.index_mut(k);
                let mut i = me;
                while i < p.len() {
                    let w = p[i];
                    let mut grad = g[i];
                    if clip {
                        grad *= scale;
                    }
                    if !decoupled {
                        grad = w * weight_decay + grad;
                    }
                    let mut mi = grad * (1.0f32 - beta_1);
                    let mut vi = grad * grad * (1.0f32 - beta_2);
                    if !first {
                        mi = m[i] * beta_1 + mi;
                        vi = v[i] * beta_2 + vi;
                    }
                    m[i] = mi;
                    v[i] = vi;
                    if decoupled {
                        let delta = (mi / factor_1) / (f32::sqrt(vi / factor_2) + epsilon);
                        o[i] = w * (1.0f32 - lr * weight_decay) - delta * lr;
                    } else {
                        let delta = (mi * factor_1) / (f32::sqrt(vi) + factor_2);
                        o[i] = w - delta * lr;
                    }
                    i += units;
                }
            }
        }
    }

    /// The moving average of a chunk: `out = average * keep + current * (1 - keep)`.
    #[cube(launch)]
    pub fn blend(
        average: &Sequence<OwnedTensor<f32>>,
        current: &Sequence<OwnedTensor<f32>>,
        out: &mut Sequence<OwnedTensor<f32>>,
        keep: f32,
        #[comptime] count: usize,
    ) {
        let which = CUBE_POS_Y as usize;
        let units = (CUBE_COUNT_X * CUBE_DIM_X) as usize;
        let me = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
        #[unroll]
        for k in 0..count {
            if which == k {
                let a = average.index(k);
                let c = current.index(k);
                let o = out.index_mut(k);
                let mut i = me;
                while i < a.len() {
                    o[i] = a[i] * keep + c[i] * (1.0f32 - keep);
                    i += units;
                }
            }
        }
    }
}

/// A tensor of a model as a contiguous f32 cubecl tensor; `None` for one that is not (on another
/// device, or of another dtype).
fn primitive<const D: usize>(t: Tensor<D>) -> Option<CubeTensor> {
    let inner = if t.device().is_autodiff() {
        t.inner()
    } else {
        t
    };
    let p = inner.try_into_primitive::<CubeBackend>().ok()?;
    if p.dtype != DType::F32 {
        return None;
    }
    Some(if p.is_contiguous() {
        p
    } else {
        into_contiguous(p)
    })
}

fn contiguous_like(t: &CubeTensor) -> CubeTensor {
    empty_device_contiguous_dtype(t.client.clone(), t.device.clone(), t.shape(), t.dtype)
}

fn grid(count: usize) -> (CubeCount, CubeDim) {
    (
        CubeCount::Static(BLOCKS, count as u32, 1),
        CubeDim::new_1d(UNITS),
    )
}

fn sequence<'a>(
    tensors: impl IntoIterator<Item = &'a CubeTensor>,
) -> SequenceArg<cubecl::prelude::OwnedTensor<f32>> {
    tensors
        .into_iter()
        .map(|t| t.clone().into_tensor_arg())
        .collect()
}

/// The squared L2 norm of all of `tensors` together, as a one-element tensor on their device.
fn squared_norm(tensors: &[CubeTensor]) -> Option<CubeTensor> {
    let first = tensors.first()?;
    let slots = (BLOCKS * UNITS) as usize;
    let mut sums = Vec::new();
    for chunk in tensors.chunks(CHUNK) {
        let partial = empty_device_contiguous_dtype(
            first.client.clone(),
            first.device.clone(),
            [chunk.len() * slots].into(),
            DType::F32,
        );
        let (count, dim) = grid(chunk.len());
        kernel::squares::launch(
            &first.client,
            count,
            dim,
            sequence(chunk),
            partial.clone().into_tensor_arg(),
            chunk.len(),
        );
        sums.push(partial);
    }
    use burn::backend::ops::FloatTensorOps;
    let total = sums
        .into_iter()
        .map(CubeBackend::float_sum)
        .reduce(CubeBackend::float_add)?;
    Some(total)
}

/// The moments of one parameter and how many updates made them.
struct Moments {
    m1: CubeTensor,
    m2: CubeTensor,
    time: usize,
}

/// Adam or AdamW over a model's parameters, a chunk of tensors per launch.
pub struct FusedAdam {
    decoupled: bool,
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
    moments: HashMap<ParamId, Moments>,
}

/// A parameter being stepped: its id, weights, gradient and rate.
struct Entry {
    id: ParamId,
    weights: CubeTensor,
    grad: CubeTensor,
    lr: f64,
}

impl FusedAdam {
    /// The optimizer `t` asks for (burn's default betas, `t`'s epsilon and weight decay).
    pub fn new(t: &TrainSection) -> Self {
        Self {
            decoupled: t.optimizer == Optimizer::AdamW,
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: t.adam_eps as f32,
            weight_decay: t.weight_decay as f32,
            moments: HashMap::new(),
        }
    }

    /// One update of `model` from `grads`: every gradient scaled together when their global
    /// norm is above `clip_norm` (0: never), the parameters whose id is in `head` at `head_lr`
    /// and the others at `lr` (a rate of 0: left as they are). Returns `None`, with the model
    /// untouched, when the model does not live on a cubecl device in f32.
    pub fn step<M: Module>(
        &mut self,
        model: M,
        grads: &GradientsParams,
        lr: f64,
        head: &HashSet<ParamId>,
        head_lr: f64,
        clip_norm: f64,
    ) -> std::result::Result<M, M> {
        let mut collect = Collect {
            grads,
            head,
            lr,
            head_lr,
            entries: Vec::new(),
            foreign: false,
        };
        model.visit(&mut collect);
        if collect.foreign {
            return Err(model);
        }
        let entries = collect.entries;
        if entries.is_empty() {
            return Ok(model);
        }
        let norm_sq = if clip_norm > 0.0 {
            let all: Vec<CubeTensor> = entries.iter().map(|e| e.grad.clone()).collect();
            squared_norm(&all)
        } else {
            None
        };
        let mut updated: HashMap<ParamId, CubeTensor> = HashMap::new();
        // Launches share a rate, a step count and whether the moments exist yet.
        let mut groups: HashMap<(u64, usize, bool), Vec<&Entry>> = HashMap::new();
        for e in entries.iter().filter(|e| e.lr != 0.0) {
            let time = self.moments.get(&e.id).map_or(0, |m| m.time);
            groups
                .entry((e.lr.to_bits(), time, time == 0))
                .or_default()
                .push(e);
        }
        let mut keys: Vec<_> = groups.keys().copied().collect();
        keys.sort();
        for key in keys {
            let (lr_bits, time, first) = key;
            let lr = f64::from_bits(lr_bits);
            for chunk in groups[&key].chunks(CHUNK) {
                let out = self.launch(chunk, lr, time + 1, first, clip_norm, norm_sq.as_ref());
                for (e, o) in chunk.iter().zip(out) {
                    updated.insert(e.id, o);
                }
            }
        }
        Ok(model.map(&mut Replace { updated }))
    }

    /// Launches the update of one chunk (update number `t` of each of its tensors); returns the
    /// new weights, in order.
    fn launch(
        &mut self,
        chunk: &[&Entry],
        lr: f64,
        t: usize,
        first: bool,
        clip_norm: f64,
        norm_sq: Option<&CubeTensor>,
    ) -> Vec<CubeTensor> {
        let client = chunk[0].weights.client.clone();
        for e in chunk {
            if first {
                self.moments.insert(
                    e.id,
                    Moments {
                        m1: contiguous_like(&e.weights),
                        m2: contiguous_like(&e.weights),
                        time: 0,
                    },
                );
            }
        }
        let out: Vec<CubeTensor> = chunk.iter().map(|e| contiguous_like(&e.weights)).collect();
        // As burn computes them, in f32 on the host.
        let time = t as i32;
        let (factor_1, factor_2) = if self.decoupled {
            (1.0 - self.beta_1.powi(time), 1.0 - self.beta_2.powi(time))
        } else {
            let bias_2 = (1.0 - self.beta_2.powi(time)).sqrt();
            (
                bias_2 / (1.0 - self.beta_1.powi(time)),
                self.epsilon * bias_2,
            )
        };
        let norm = norm_sq
            .cloned()
            .unwrap_or_else(|| contiguous_like(&chunk[0].weights));
        let moments: Vec<&Moments> = chunk.iter().map(|e| &self.moments[&e.id]).collect();
        let (count, dim) = grid(chunk.len());
        kernel::adam::launch(
            &client,
            count,
            dim,
            sequence(chunk.iter().map(|e| &e.weights)),
            sequence(chunk.iter().map(|e| &e.grad)),
            sequence(moments.iter().map(|m| &m.m1)),
            sequence(moments.iter().map(|m| &m.m2)),
            sequence(&out),
            norm.into_tensor_arg(),
            lr as f32,
            self.beta_1,
            self.beta_2,
            factor_1,
            factor_2,
            self.epsilon,
            self.weight_decay,
            clip_norm as f32,
            chunk.len(),
            self.decoupled,
            norm_sq.is_some(),
            first,
        );
        for e in chunk {
            if let Some(m) = self.moments.get_mut(&e.id) {
                m.time = t;
            }
        }
        out
    }

    /// The state in burn's optimizer file format (burnpack: per parameter its two moments and
    /// its step count), so that `ModuleOptimizer` reads it too.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut tensors = Vec::new();
        let mut scalars = Vec::new();
        let mut ids: Vec<&ParamId> = self.moments.keys().collect();
        ids.sort_by_key(|id| id.val());
        for id in ids {
            let m = &self.moments[id];
            let key = id.val();
            for (name, t) in [("moment_1", &m.m1), ("moment_2", &m.m2)] {
                let shape = t.shape();
                let flat = reshape(t.clone(), &[shape.num_elements()]);
                let data = Tensor::<1>::from_primitive::<CubeBackend>(flat).into_data();
                let (bytes, _, dtype) = data.into_parts();
                tensors.push(burn_pack::Tensor::new(
                    format!("{key}.momentum.{name}"),
                    dtype,
                    shape,
                    Some(key),
                    bytes,
                ));
            }
            scalars.push((format!("{key}.momentum.time"), m.time as u64));
            scalars.push((format!("{key}.__rank"), m.m1.shape().num_dims() as u64));
        }
        let mut writer = burn_pack::Writer::new(tensors);
        for (key, value) in &scalars {
            writer = writer.with_scalar(key, burn_pack::Scalar::UInt(*value));
        }
        Ok(writer
            .into_bytes()
            .map_err(|e| anyhow!("cannot encode the optimizer state: {e:?}"))?
            .to_vec())
    }

    /// Reads a state saved by [`Self::to_bytes`] or by burn's `ModuleOptimizer`, onto `device`.
    /// `shapes` are the model's parameters' shapes: a state that does not fit them is refused.
    pub fn load(
        mut self,
        path: &Path,
        device: &Device,
        shapes: &HashMap<ParamId, Vec<usize>>,
    ) -> Result<Self> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let reader = burn_pack::Reader::from_bytes(Bytes::from_bytes_vec(bytes))
            .map_err(|e| anyhow!("{}: not an optimizer state: {e:?}", path.display()))?;
        let scalars = reader.scalars().clone();
        let tensors = reader
            .into_tensors()
            .map_err(|e| anyhow!("{}: not an optimizer state: {e:?}", path.display()))?;
        let mut parts: HashMap<u64, (Option<CubeTensor>, Option<CubeTensor>)> = HashMap::new();
        for t in tensors {
            let (name, dtype, shape, param_id, bytes) = t
                .into_parts()
                .map_err(|e| anyhow!("{}: unreadable tensor: {e:?}", path.display()))?;
            let Some(id) = param_id else {
                bail!("{}: tensor {name} names no parameter", path.display());
            };
            let expected = shapes.get(&ParamId::from(id)).with_context(|| {
                format!(
                    "{}: state of parameter {id}, which this model does not have",
                    path.display()
                )
            })?;
            let dims = shape.to_vec();
            if &dims != expected || dtype != DType::F32 {
                bail!(
                    "{}: {name} is {dtype:?} {dims:?}, the parameter is f32 {expected:?}",
                    path.display()
                );
            }
            let n = dims.iter().product::<usize>();
            if bytes.len() != n * 4 {
                bail!(
                    "{}: {name} holds {} bytes for {n} values",
                    path.display(),
                    bytes.len()
                );
            }
            let data = burn::tensor::TensorData::from_bytes(bytes, [n], dtype);
            let p = primitive(Tensor::<1>::from_data(data, device)).with_context(|| {
                format!("{}: {name} could not go to {device:?}", path.display())
            })?;
            let p = reshape(p, &dims);
            let slot = parts.entry(id).or_default();
            match name.rsplit('.').next() {
                Some("moment_1") => slot.0 = Some(p),
                Some("moment_2") => slot.1 = Some(p),
                _ => {} // amsgrad's maximum: not used by this optimizer
            }
        }
        self.moments.clear();
        for (id, slot) in parts {
            let time = scalars
                .get(&format!("{id}.momentum.time"))
                .and_then(|s| u64::try_from(*s).ok())
                .with_context(|| format!("{}: parameter {id} has no step count", path.display()))?;
            let (Some(m1), Some(m2)) = slot else {
                bail!("{}: parameter {id} lacks a moment", path.display());
            };
            self.moments.insert(
                ParamId::from(id),
                Moments {
                    m1,
                    m2,
                    time: time as usize,
                },
            );
        }
        Ok(self)
    }
}

fn reshape(t: CubeTensor, dims: &[usize]) -> CubeTensor {
    use burn::backend::ops::FloatTensorOps;
    CubeBackend::float_reshape(t, dims.to_vec().into())
}

/// Gathers the parameters that have gradients, with their rates.
struct Collect<'a> {
    grads: &'a GradientsParams,
    head: &'a HashSet<ParamId>,
    lr: f64,
    head_lr: f64,
    entries: Vec<Entry>,
    /// A parameter off cubecl or not f32: the caller uses burn's optimizer instead.
    foreign: bool,
}

impl ModuleVisitor for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(grad) = self.grads.get::<D>(param.id) else {
            return;
        };
        match (primitive(param.val()), primitive(grad)) {
            (Some(weights), Some(grad)) => self.entries.push(Entry {
                id: param.id,
                weights,
                grad,
                lr: if self.head.contains(&param.id) {
                    self.head_lr
                } else {
                    self.lr
                },
            }),
            _ => self.foreign = true,
        }
    }
}

/// Puts the new weights in place of the old, keeping each parameter's id and training flag.
struct Replace {
    updated: HashMap<ParamId, CubeTensor>,
}

impl ModuleMapper for Replace {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(new) = self.updated.remove(&param.id) else {
            return param;
        };
        param.map(|old| {
            let tracked = old.is_require_grad();
            let value = Tensor::<D>::from_primitive::<CubeBackend>(new);
            if old.device().is_autodiff() {
                Tensor::from_inner(value).set_require_grad(tracked)
            } else {
                value
            }
        })
    }
}

/// The moving average's update on cubecl devices: `average = average * keep + current *
/// (1 - keep)` for every float tensor (weights and running statistics) in visiting order, a
/// chunk per launch. `Err` hands the average back when a tensor is not on cubecl in f32.
pub fn blend<M: Module>(average: M, current: &M, keep: f64) -> std::result::Result<M, M> {
    let mut a = Floats(Vec::new(), false);
    average.visit(&mut a);
    let mut c = Floats(Vec::new(), false);
    current.visit(&mut c);
    if a.1 || c.1 || a.0.len() != c.0.len() {
        return Err(average);
    }
    let mut out = Vec::with_capacity(a.0.len());
    for (av, cu) in a.0.chunks(CHUNK).zip(c.0.chunks(CHUNK)) {
        let o: Vec<CubeTensor> = av.iter().map(contiguous_like).collect();
        let (count, dim) = grid(av.len());
        kernel::blend::launch(
            &av[0].client,
            count,
            dim,
            sequence(av),
            sequence(cu),
            sequence(&o),
            keep as f32,
            av.len(),
        );
        out.extend(o);
    }
    Ok(average.map(&mut InOrder(out.into_iter())))
}

/// Every float tensor of a module, in visiting order (the flag: one was not cubecl f32).
struct Floats(Vec<CubeTensor>, bool);

impl ModuleVisitor for Floats {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        match primitive(param.val().detach()) {
            Some(p) => self.0.push(p),
            None => self.1 = true,
        }
    }
}

/// Replaces every float tensor, in visiting order.
struct InOrder(std::vec::IntoIter<CubeTensor>);

impl ModuleMapper for InOrder {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(new) = self.0.next() else {
            return param;
        };
        param.map(|old| {
            let tracked = old.is_require_grad();
            let value = Tensor::<D>::from_primitive::<CubeBackend>(new);
            if old.device().is_autodiff() {
                Tensor::from_inner(value).set_require_grad(tracked)
            } else {
                value
            }
        })
    }
}
