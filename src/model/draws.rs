//! A run's own randomness: its initial weights from a generator seeded by the run's seed, its
//! dropout masks from seeds that mix the run's seed, the step and a counter. Nothing here seeds
//! or draws from burn's generator, which is one per process: runs that train side by side in
//! one process (sweep workers, the workbench) each draw exactly what they would draw alone.

use std::cell::Cell;

use burn::module::Param;
use burn::nn::Linear;
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use burn::tensor::{Distribution, TensorData};
use rand_tpe::SeedableRng;
use rand_tpe::rngs::StdRng;

/// A generator owned by whoever draws from it (a run's model init, a test's inputs).
pub struct Draws {
    rng: StdRng,
}

impl Draws {
    /// The same seed gives the same draws, whatever else the process is doing.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// An f32 tensor of `shape` drawn from `distribution`, on `device`.
    pub fn tensor<const D: usize>(
        &mut self,
        shape: [usize; D],
        distribution: Distribution,
        device: &Device,
    ) -> Tensor<D> {
        Tensor::from_data(
            TensorData::random::<f32, _, _>(shape, distribution, &mut self.rng),
            device,
        )
    }

    /// `param` drawn anew, uniform in `±1/sqrt(fan_in)`: burn's (and PyTorch's) default for
    /// convolutions and dense layers, weights and biases alike.
    fn kaiming<const D: usize>(
        &mut self,
        param: Param<Tensor<D>>,
        fan_in: usize,
    ) -> Param<Tensor<D>> {
        let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
        let dims: [usize; D] = param.lazy_shape().dims();
        let device = param.lazy_device();
        Param::from_tensor(self.tensor(dims, Distribution::Uniform(-bound, bound), &device))
    }

    /// A convolution's weight `[out, in / groups, k, k]` and bias, drawn.
    pub fn conv(&mut self, conv: Conv2d) -> Conv2d {
        let [_, per_group, kh, kw] = conv.weight.lazy_shape().dims();
        let fan_in = per_group * kh * kw;
        Conv2d {
            weight: self.kaiming(conv.weight, fan_in),
            bias: conv.bias.map(|b| self.kaiming(b, fan_in)),
            ..conv
        }
    }

    /// A dense layer's weight `[in, out]` and bias, drawn.
    pub fn linear(&mut self, linear: Linear) -> Linear {
        let [fan_in, _] = linear.weight.lazy_shape().dims();
        Linear {
            weight: self.kaiming(linear.weight, fan_in),
            bias: linear.bias.map(|b| self.kaiming(b, fan_in)),
        }
    }
}

/// Where this thread's dropout seeds come from: a key and how many seeds it has given.
#[derive(Clone, Copy)]
struct MaskStream {
    key: u64,
    drawn: u64,
}

thread_local! {
    /// Outside any [`DropoutSeeds`] scope: key 0, so dropout is still reproducible per thread.
    static MASKS: Cell<MaskStream> = const { Cell::new(MaskStream { key: 0, drawn: 0 }) };
}

/// While alive, the dropout layers run on this thread take their mask seeds from one training
/// step's stream: `(run seed, epoch, step)` and a counter of the masks drawn in the step. A
/// resumed run therefore draws the masks an uninterrupted one would. Dropped, the thread's
/// previous stream comes back.
pub struct DropoutSeeds {
    previous: MaskStream,
}

impl DropoutSeeds {
    pub fn for_step(seed: u64, epoch: usize, step: usize) -> Self {
        let key = mix(mix(mix(seed) ^ epoch as u64) ^ step as u64);
        Self {
            previous: MASKS.replace(MaskStream { key, drawn: 0 }),
        }
    }
}

impl Drop for DropoutSeeds {
    fn drop(&mut self) {
        MASKS.set(self.previous);
    }
}

/// The next dropout mask's seed on this thread (see [`DropoutSeeds`]).
pub fn next_dropout_seed() -> u64 {
    let s = MASKS.get();
    MASKS.set(MaskStream {
        drawn: s.drawn + 1,
        ..s
    });
    mix(s.key ^ mix(s.drawn.wrapping_add(0x9e37_79b9_7f4a_7c15)))
}

/// splitmix64's finaliser: a bijection that spreads every input bit over the output.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_draws_the_same_tensor_and_another_does_not() {
        let device = Device::flex();
        let draw = |seed| {
            Draws::new(seed)
                .tensor([64], Distribution::Default, &device)
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn dropout_seeds_follow_the_step_not_the_thread_history() {
        let seeds = |n| {
            let _scope = DropoutSeeds::for_step(42, 3, 5);
            (0..n).map(|_| next_dropout_seed()).collect::<Vec<_>>()
        };
        let first = seeds(4);
        // Draws outside the scope (another model on this thread) do not shift the stream.
        next_dropout_seed();
        assert_eq!(seeds(4), first);
        let distinct: std::collections::HashSet<_> = first.iter().collect();
        assert_eq!(distinct.len(), 4);
        let _other = DropoutSeeds::for_step(42, 3, 6);
        assert_ne!(next_dropout_seed(), first[0]);
    }
}
