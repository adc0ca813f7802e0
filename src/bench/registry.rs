//! `mvlab bench --registry`: what one registry sustains with many workers at once. Each worker
//! is a thread with connections of its own (as a process of its own would have); it claims
//! queued runs and writes their metrics as training does (a batch of rows a second per run,
//! through the lease-checked transaction), until the queue is empty. Reports the claim latency
//! and the metric rows written per second, per worker count.

use crate::config::{Monitor, PruneRule, SweepMethod};
use crate::registry::{Dialect, MetricRow, NewRun, Place, Registry};
use crate::status::{Metric, RunStatus};
use anyhow::Result;
use serde::Serialize;
use std::time::Instant;

/// Runs each worker takes, batches each run writes, rows in a batch (about a second of a
/// training run's steps: loss, accuracy and lr of 7 steps).
const RUNS_PER_WORKER: usize = 5;
const BATCHES_PER_RUN: usize = 20;
const ROWS_PER_BATCH: usize = 21;

#[derive(Debug, Serialize)]
pub struct Load {
    pub backend: String,
    pub workers: usize,
    pub claims: usize,
    pub claim_ms_median: f64,
    pub claim_ms_p95: f64,
    pub metric_rows_per_s: f64,
    pub seconds: f64,
}

pub fn run(place: &Place, workers: &[usize], json: bool) -> Result<()> {
    let reg = place.open()?;
    let backend = match reg.dialect() {
        Dialect::Postgres => "postgres",
        Dialect::Sqlite => "sqlite",
    }
    .to_string();
    let mut loads = Vec::new();
    for &n in workers {
        let n = n.max(1);
        eprintln!("registry load: {n} worker(s) on {}…", reg.location);
        let sweep = reg.create_sweep(&crate::registry::NewSweep {
            experiment_id: None,
            name: "load",
            config: "",
            method: SweepMethod::Grid,
            prune: PruneRule::None,
            path: "",
            overrides: &[],
        })?;
        for _ in 0..n * RUNS_PER_WORKER {
            reg.create_run(&NewRun {
                experiment_id: None,
                name: "load",
                status: RunStatus::Queued,
                config: "",
                overrides: &[],
                epochs_total: 1,
                monitor: Monitor::ValAccuracy,
                sweep_id: Some(sweep),
                provenance: None,
            })?;
        }
        let started = Instant::now();
        let per_worker: Vec<Result<(Vec<f64>, usize)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..n)
                .map(|w| {
                    let location = reg.location.clone();
                    scope.spawn(move || work(&location, w, sweep))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let seconds = started.elapsed().as_secs_f64();
        let mut latencies = Vec::new();
        let mut rows = 0;
        for r in per_worker {
            let (l, r) = r?;
            latencies.extend(l);
            rows += r;
        }
        latencies.sort_by(f64::total_cmp);
        let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
        loads.push(Load {
            backend: backend.clone(),
            workers: n,
            claims: latencies.len(),
            claim_ms_median: pick(0.5),
            claim_ms_p95: pick(0.95),
            metric_rows_per_s: rows as f64 / seconds,
            seconds,
        });
        for run in reg.sweep_runs(sweep)? {
            reg.delete_run(run.id)?;
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&loads)?);
    } else {
        println!(
            "{:<9} {:>7} {:>7} {:>12} {:>10} {:>14}",
            "backend", "workers", "claims", "claim median", "claim p95", "metric rows/s"
        );
        for l in &loads {
            println!(
                "{:<9} {:>7} {:>7} {:>9.1} ms {:>7.1} ms {:>14.0}",
                l.backend,
                l.workers,
                l.claims,
                l.claim_ms_median,
                l.claim_ms_p95,
                l.metric_rows_per_s
            );
        }
    }
    Ok(())
}

/// One worker: claims until the sweep's queue is empty. Returns claim latencies (ms) and rows.
fn work(location: &crate::registry::Location, w: usize, sweep: i64) -> Result<(Vec<f64>, usize)> {
    let reg = Registry::open(location)?;
    let name = format!("load#{w}");
    let (mut latencies, mut rows) = (Vec::new(), 0);
    loop {
        let t = Instant::now();
        let Some((_, lease)) = reg.claim_queued(&name, Some(sweep), 60.0)? else {
            break;
        };
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
        for b in 0..BATCHES_PER_RUN {
            let batch: Vec<MetricRow> = (0..ROWS_PER_BATCH)
                .map(|i| {
                    MetricRow::new(
                        lease.run,
                        b * ROWS_PER_BATCH + i,
                        1,
                        Metric::StepLoss,
                        i as f64,
                    )
                })
                .collect();
            reg.insert_metrics(&lease, &batch)?;
            rows += batch.len();
        }
        reg.finish_run(&lease, RunStatus::Completed, None, None)?;
    }
    Ok((latencies, rows))
}
