//! Runs training jobs on background threads and fans their events out: batched writes to the
//! registry, and every event to an observer (progress bars, or the TUI's channel).

use crate::config::{self, LoadedConfig};
use crate::registry::{MetricRow, NewRun, Registry, now};
use crate::status::{LogLevel, RunStatus};
use crate::train::{self, Control, Outcome, RunEvent, RunSpec};
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// Folder holding a run's checkpoints: `runs/<id>` under the registry's artifacts folder
/// (beside a SQLite file by default).
pub fn run_dir(reg: &Registry, run_id: i64) -> PathBuf {
    reg.artifacts.join("runs").join(run_id.to_string())
}

/// Records (or refreshes) the experiment file a run or sweep comes from; returns its id.
fn register_experiment(reg: &Registry, loaded: &LoadedConfig) -> Result<i64> {
    reg.upsert_experiment(
        &loaded.path.display().to_string(),
        &loaded.config.name,
        &loaded.text,
        &loaded.hash(),
        None,
    )
}

/// Registers the experiment file and a new run of it; returns the run id.
pub fn create_run(
    reg: &Registry,
    loaded: &LoadedConfig,
    status: RunStatus,
    sweep_id: Option<i64>,
) -> Result<i64> {
    let mut config = loaded.config.clone();
    if let Some(base) = loaded.path.parent() {
        config.resolve_paths(base);
    }
    // A missing or malformed dataset is refused before anything is recorded.
    crate::data::load_splits(&config.data, config.train.seed)
        .with_context(|| format!("{}", loaded.path.display()))?;
    let exp = register_experiment(reg, loaded)?;
    reg.create_run(&NewRun {
        experiment_id: Some(exp),
        name: &config.name,
        status,
        config: &config.to_toml(),
        overrides: &loaded.overrides,
        epochs_total: config.train.epochs,
        monitor: config.checkpoint.monitor,
        sweep_id,
    })
}

/// Queues every trial of the experiment's `[sweep]`; returns the sweep id and its runs.
pub fn queue_sweep(reg: &Registry, loaded: &LoadedConfig) -> Result<(i64, Vec<i64>)> {
    let Some(section) = loaded.config.sweep.clone() else {
        bail!("{} has no [sweep] section", loaded.path.display());
    };
    let trials = crate::sweep::expand(&loaded.text, &section)
        .map_err(|e| anyhow::anyhow!("{}: {e:#}", loaded.path.display()))?;
    let exp = register_experiment(reg, loaded)?;
    let sweep = reg.create_sweep(
        Some(exp),
        &loaded.config.name,
        &loaded.text,
        section.method,
        section.prune,
    )?;
    let mut runs = Vec::new();
    for trial in trials {
        let mut overrides = loaded.overrides.clone();
        overrides.extend(trial);
        let mut trial_cfg = LoadedConfig {
            config: config::parse(&loaded.text, &overrides)?,
            overrides,
            ..loaded.clone()
        };
        trial_cfg.config.sweep = None;
        runs.push(create_run(reg, &trial_cfg, RunStatus::Queued, Some(sweep))?);
    }
    Ok((sweep, runs))
}

/// Drains queued runs (of one sweep, if given) with `workers` runs at a time in this process.
/// Each run's tensor work shares the process's one compute pool, so workers = cores keeps the
/// cores busy without oversubscribing them. Returns (run id, outcome) for every run worked.
pub fn work_queue(
    reg: &Registry,
    workers: usize,
    sweep: Option<i64>,
    cancel: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    observe: impl Fn(i64, &RunEvent) + Send + Sync,
) -> Result<Vec<(i64, Outcome)>> {
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = (0..workers.max(1))
            .map(|w| {
                let (results, observe) = (&results, &observe);
                scope.spawn(move || -> Result<()> {
                    let name = format!("{}#{w}", worker_name());
                    while !cancel.load(std::sync::atomic::Ordering::SeqCst) {
                        let Some(run) = reg.claim_queued(&name, sweep)? else {
                            break;
                        };
                        let control = Control {
                            cancel: cancel.clone(),
                            judge: crate::sweep::judge(reg, &run)?,
                        };
                        let resume = run_dir(reg, run.id).join("state.json").exists();
                        let outcome =
                            execute(reg, run.id, resume, &control, |e| observe(run.id, e))?;
                        results.lock().unwrap().push((run.id, outcome));
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a worker thread panicked"))??;
        }
        Ok(())
    })?;
    Ok(results.into_inner().unwrap())
}

/// Whether a run may be continued: stopped, failed, or left running by a process that is gone.
pub fn check_resumable(reg: &Registry, run_id: i64) -> Result<()> {
    let run = reg.run(run_id)?;
    match run.display_status() {
        s if s.is_resumable() => Ok(()),
        RunStatus::Running => bail!(
            "run {run_id} is still running (pid {})",
            run.pid.unwrap_or_default()
        ),
        s => {
            bail!("run {run_id} is {s}; only cancelled, failed or interrupted runs can be resumed")
        }
    }
}

/// Executes a registered run to its end on a training thread, recording its events in the
/// registry and passing each to `observe`. Returns the outcome.
pub fn execute(
    reg: &Registry,
    run_id: i64,
    resume: bool,
    control: &Control,
    mut observe: impl FnMut(&RunEvent),
) -> Result<Outcome> {
    let row = reg.run(run_id)?;
    let config =
        config::parse(&row.config, &[]).with_context(|| format!("run {run_id}: stored config"))?;
    let dir = run_dir(reg, run_id);
    let selected = crate::device::select(&config.train.device)?;
    if resume {
        let state: Option<crate::checkpoint::TrainState> =
            crate::checkpoint::read_json(&dir.join("state.json")).ok();
        // Metrics past the last checkpoint belong to work that is about to be redone.
        reg.truncate_metrics_after(run_id, state.map(|s| s.epochs_done).unwrap_or(0))?;
    }
    reg.start_run(
        run_id,
        &selected.label,
        &dir.display().to_string(),
        &[],
        &worker_name(),
    )?;
    let spec = RunSpec {
        config,
        run_dir: dir,
        resume,
    };
    let (tx, rx) = channel();
    let thread_control = control.clone();
    let handle = std::thread::Builder::new()
        .name(format!("mvlab-run-{run_id}"))
        .spawn(move || train::run(&spec, &selected, &tx, &thread_control))?;

    let mut pending: Vec<MetricRow> = Vec::new();
    let mut last_flush = Instant::now();
    let mut outcome = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(event) => {
                record(reg, run_id, &event, &mut pending)?;
                observe(&event);
                if let RunEvent::Finished(o) = event {
                    outcome = Some(o);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if last_flush.elapsed() >= Duration::from_secs(1) {
            reg.insert_metrics(&std::mem::take(&mut pending))?;
            reg.heartbeat(run_id)?;
            last_flush = Instant::now();
        }
    }
    reg.insert_metrics(&pending)?;
    let outcome = match (handle.join(), outcome) {
        (Ok(o), _) => o,
        (Err(panic), _) => {
            Outcome::Failed(format!("training thread panicked: {}", panic_text(&panic)))
        }
    };
    let (status, error, final_metrics) = match &outcome {
        Outcome::Completed { .. } => (
            RunStatus::Completed,
            None,
            Some(serde_json::to_string(&outcome)?),
        ),
        Outcome::Failed(e) => (RunStatus::Failed, Some(e.clone()), None),
        Outcome::Cancelled { .. } => (RunStatus::Cancelled, None, None),
        Outcome::Pruned { .. } => (RunStatus::Pruned, None, None),
    };
    reg.finish_run(run_id, status, error.as_deref(), final_metrics.as_deref())?;
    Ok(outcome)
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

pub fn worker_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}:{}", std::process::id())
}

fn record(reg: &Registry, run: i64, event: &RunEvent, pending: &mut Vec<MetricRow>) -> Result<()> {
    let row = |step: usize, epoch: usize, split: &str, name: &str, value: f64| MetricRow {
        run_id: run,
        step: step as i64,
        epoch: epoch as i64,
        split: split.into(),
        name: name.into(),
        value,
        time: now(),
    };
    match event {
        RunEvent::Started {
            device,
            classes,
            run_dir,
            ..
        } => {
            reg.start_run(run, device, run_dir, classes, &worker_name())?;
        }
        RunEvent::Step {
            epoch,
            step,
            loss,
            accuracy,
            lr,
            ..
        } => {
            pending.push(row(*step, *epoch, "step", "loss", *loss));
            pending.push(row(*step, *epoch, "step", "accuracy", *accuracy));
            pending.push(row(*step, *epoch, "step", "lr", *lr));
        }
        RunEvent::Epoch(e) => {
            for (split, name, v) in [
                ("train", "loss", e.train_loss),
                ("train", "accuracy", e.train_accuracy),
                ("val", "loss", e.val_loss),
                ("val", "accuracy", e.val_accuracy),
                ("train", "lr", e.lr),
                ("train", "epoch_seconds", e.seconds),
                ("train", "images_per_s", e.images_per_s),
            ] {
                pending.push(row(e.step, e.epoch, split, name, v));
            }
            reg.insert_metrics(&std::mem::take(pending))?;
            reg.update_progress(run, e.epoch, Some((e.best_metric, e.best_epoch)))?;
        }
        RunEvent::Checkpoint {
            epoch,
            kind,
            path,
            sha256,
            metrics,
        } => {
            reg.add_checkpoint(run, *epoch, *kind, path, metrics, sha256)?;
        }
        RunEvent::Log { level, message } => reg.log(run, *level, message)?,
        RunEvent::Finished(Outcome::Failed(e)) => reg.log(run, LogLevel::Error, e)?,
        RunEvent::Finished(_) => {}
    }
    Ok(())
}
