//! Batch-1 latency of an exported ONNX model on this CPU, as a phone app would call it: tract
//! runs the optimised plan on one image (tract's plans run on the calling thread), a few
//! untimed runs first, then the median of the timed ones.

use super::OnnxModel;
use anyhow::Result;
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Latency {
    /// Median of the timed runs, milliseconds.
    pub median_ms: f64,
    /// Fastest and slowest timed run.
    pub min_ms: f64,
    pub max_ms: f64,
    pub runs: usize,
    /// Threads the runs used.
    pub threads: usize,
}

pub const WARMUP: usize = 3;
pub const RUNS: usize = 15;

/// Times `runs` batch-1 forward passes of `model` after `warmup` untimed ones, on a fixed
/// input (latency does not depend on the pixel values).
pub fn measure(model: &OnnxModel, warmup: usize, runs: usize) -> Result<Latency> {
    // Training beside it in this process waits between its steps (a poisoned gate still gates).
    let _quiet = crate::device::quiet_cpu()
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let s = model.card.model.image_size;
    let image: Vec<f32> = (0..3 * s * s).map(|i| (i % 251) as f32 / 251.0).collect();
    for _ in 0..warmup {
        model.logits(image.clone(), 1)?;
    }
    let mut times = Vec::with_capacity(runs.max(1));
    for _ in 0..runs.max(1) {
        let input = image.clone();
        let started = Instant::now();
        model.logits(input, 1)?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Latency::of(&mut times, 1)
}

impl Latency {
    /// The summary of timed runs (milliseconds) made on `threads` threads.
    pub fn of(times: &mut [f64], threads: usize) -> Result<Latency> {
        anyhow::ensure!(!times.is_empty(), "no timed runs");
        times.sort_by(f64::total_cmp);
        let n = times.len();
        let median_ms = if n % 2 == 1 {
            times[n / 2]
        } else {
            (times[n / 2 - 1] + times[n / 2]) / 2.0
        };
        Ok(Latency {
            median_ms,
            min_ms: times[0],
            max_ms: times[n - 1],
            runs: n,
            threads,
        })
    }
}
