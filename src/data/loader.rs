//! Batches for training and evaluation: per-epoch shuffling, decode + augment on a worker
//! pool, bounded prefetch. Deterministic for a given seed and epoch, whatever the thread count.

use super::cache::{Fetched, ImageCache};
use super::{Dataset, Item, crop_to_chw};
use crate::config::ExperimentConfig;
use anyhow::Result;
use burn::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use rayon::prelude::*;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};

#[derive(Debug, Clone)]
pub struct LoaderOptions {
    pub image_size: usize,
    /// Resize target before the random crop; equal to `image_size` when not augmenting.
    pub resize_bigger: usize,
    pub augment: bool,
    pub batch_size: usize,
    pub shuffle: bool,
    pub seed: u64,
    pub workers: usize,
    pub prefetch: usize,
    pub cache_mb: usize,
}

impl LoaderOptions {
    /// The loader an experiment asks for: augmented and shuffled for training, plain for
    /// evaluation.
    pub fn for_experiment(c: &ExperimentConfig, train: bool) -> Self {
        let d = &c.data;
        let augment = train && d.augment;
        Self {
            image_size: d.image_size,
            resize_bigger: if augment {
                d.resize_bigger
            } else {
                d.image_size
            },
            augment,
            batch_size: c.train.batch_size,
            shuffle: train,
            seed: c.train.seed,
            workers: d.workers,
            prefetch: d.prefetch,
            cache_mb: d.cache_mb,
        }
    }
}

/// A batch in NCHW layout, ready for `TensorData`.
pub struct Batch {
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
    /// Indices into the dataset's items (for per-image reports).
    pub indices: Vec<usize>,
    pub size: usize,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Images `[n, 3, size, size]` and labels `[n]` on `device`.
    pub fn into_tensors(self, device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
        let (n, s) = (self.len(), self.size);
        let images = Tensor::<4>::from_data(TensorData::new(self.images, [n, 3, s, s]), device);
        let labels = Tensor::<1, Int>::from_data(TensorData::new(self.labels, [n]), device);
        (images, labels)
    }
}

pub struct Loader {
    items: Arc<Vec<Item>>,
    cache: Arc<ImageCache>,
    opts: LoaderOptions,
    pool: Arc<rayon::ThreadPool>,
}

impl Loader {
    pub fn new(ds: &Dataset, opts: LoaderOptions, spill_dir: &Path) -> Result<Self> {
        let side = if opts.augment {
            opts.resize_bigger
        } else {
            opts.image_size
        };
        let cache = ImageCache::new(ds.items.len(), side, opts.cache_mb, spill_dir)?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.workers.max(1))
            .thread_name(|i| format!("mvlab-loader-{i}"))
            .build()?;
        Ok(Self {
            items: Arc::new(ds.items.clone()),
            cache: Arc::new(cache),
            opts,
            pool: Arc::new(pool),
        })
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn batches_per_epoch(&self) -> usize {
        self.items.len().div_ceil(self.opts.batch_size)
    }

    pub fn cache(&self) -> &ImageCache {
        &self.cache
    }

    /// The sample order of an epoch.
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.items.len()).collect();
        if self.opts.shuffle {
            order.shuffle(&mut StdRng::seed_from_u64(mix(
                self.opts.seed,
                epoch as u64,
                u64::MAX,
            )));
        }
        order
    }

    /// Starts producing the batches of `epoch` in the background; at most `prefetch` wait ready.
    pub fn epoch(&self, epoch: usize) -> Receiver<Batch> {
        let (tx, rx) = sync_channel(self.opts.prefetch.max(1));
        let order = self.order(epoch);
        let (items, cache, opts, pool) = (
            self.items.clone(),
            self.cache.clone(),
            self.opts.clone(),
            self.pool.clone(),
        );
        std::thread::Builder::new()
            .name("mvlab-batcher".into())
            .spawn(move || {
                for chunk in order.chunks(opts.batch_size) {
                    let batch = pool.install(|| make_batch(chunk, &items, &cache, &opts, epoch));
                    if tx.send(batch).is_err() {
                        return; // the consumer stopped listening
                    }
                }
            })
            .expect("spawn batcher thread");
        rx
    }
}

fn mix(seed: u64, epoch: u64, index: u64) -> u64 {
    // SplitMix-style mixing: a distinct, reproducible stream per (seed, epoch, sample).
    let mut z = seed
        ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ index.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn make_batch(
    chunk: &[usize],
    items: &[Item],
    cache: &ImageCache,
    opts: &LoaderOptions,
    epoch: usize,
) -> Batch {
    let size = opts.image_size;
    let per_image = 3 * size * size;
    let samples: Vec<Option<(Vec<f32>, i64, usize)>> = chunk
        .par_iter()
        .map(|&i| {
            let Fetched::Pixels(px) = cache.fetch(i, &items[i]) else {
                return None;
            };
            let mut out = vec![0.0f32; per_image];
            if opts.augment {
                let mut rng = StdRng::seed_from_u64(mix(opts.seed, epoch as u64, i as u64));
                let room = cache.side - size;
                let (x0, y0) = (rng.random_range(0..=room), rng.random_range(0..=room));
                let flip = rng.random_bool(0.5);
                crop_to_chw(&px, cache.side, x0, y0, size, flip, &mut out);
            } else {
                crop_to_chw(&px, cache.side, 0, 0, size, false, &mut out);
            }
            Some((out, items[i].label as i64, i))
        })
        .collect();
    let mut batch = Batch {
        images: Vec::with_capacity(chunk.len() * per_image),
        labels: Vec::new(),
        indices: Vec::new(),
        size,
    };
    for (img, label, i) in samples.into_iter().flatten() {
        batch.images.extend_from_slice(&img);
        batch.labels.push(label);
        batch.indices.push(i);
    }
    batch
}
