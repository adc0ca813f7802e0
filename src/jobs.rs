//! Runs training jobs on background threads and fans their events out: batched writes to the
//! registry, and every event to an observer (progress bars, or the TUI's channel).

use crate::checkpoint::{RunFile, RunFolder};
use crate::config::{self, ExperimentConfig, LoadedConfig};
use crate::registry::{Lease, LeaseLost, MetricRow, NewRun, Registry};
use crate::status::{CheckpointKind, LogLevel, Metric, RunStatus};
use crate::train::{self, Control, Outcome, RunEvent, RunSpec};
use anyhow::{Context, Result, bail};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// A run's folder: `<runs>/<id>` under the registry's artifacts folder (`<stem>.runs` beside a
/// SQLite file by default), or under the scratch folder with an object store, and its stored
/// copy there.
pub fn run_folder(reg: &Registry, run_id: i64) -> RunFolder {
    RunFolder::new(&reg.artifacts, run_id)
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
    // A missing or malformed dataset, or a step too large for this machine, is refused before
    // anything is recorded.
    let (train_set, val_set) = crate::data::load_splits(&config.data, config.split_seed())
        .with_context(|| format!("{}", loaded.path.display()))?;
    train::check_memory(&config, train_set.classes.len())
        .with_context(|| format!("{}", loaded.path.display()))?;
    let provenance = crate::provenance::of_new_run(&loaded.path, &config, &train_set, &val_set)?;
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
        provenance: Some(&serde_json::to_string(&provenance)?),
    })
}

/// The seeds a run of `loaded` asks for as a group: `train.seeds`, or `count` seeds from
/// `train.seed` on (`--seeds N`); none when it is one run.
pub fn group_seeds(loaded: &LoadedConfig, count: Option<usize>) -> Result<Vec<u64>> {
    let t = &loaded.config.train;
    match (count, t.seeds.is_empty()) {
        (Some(_), false) => bail!(
            "{}: give the seeds either as train.seeds or as --seeds, not both",
            loaded.path.display()
        ),
        (Some(n), true) if n < 2 => bail!("--seeds: a group needs at least 2 seeds, got {n}"),
        (Some(n), true) => Ok((0..n as u64).map(|i| t.seed.wrapping_add(i)).collect()),
        (None, false) if t.seeds.len() < 2 => bail!(
            "{}: train.seeds: a group needs at least 2 seeds, got {}",
            loaded.path.display(),
            t.seeds.len()
        ),
        (None, false) => Ok(t.seeds.clone()),
        (None, true) => Ok(Vec::new()),
    }
}

/// Queues one run of `loaded` per seed as a seed group: each run differs only in `train.seed`
/// and keeps the split of the experiment's own split seed. Returns the group id and its runs.
pub fn queue_seed_group(
    reg: &Registry,
    loaded: &LoadedConfig,
    seeds: &[u64],
) -> Result<(i64, Vec<i64>)> {
    if loaded.config.sweep.is_some() {
        bail!(
            "{}: a seed group of a [sweep] is not supported; queue the sweep, or drop its section",
            loaded.path.display()
        );
    }
    let mut distinct = seeds.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() != seeds.len() {
        bail!("{}: train.seeds lists a seed twice", loaded.path.display());
    }
    let split_seed = loaded.config.split_seed();
    let exp = register_experiment(reg, loaded)?;
    let group = reg.create_seed_group(Some(exp), &loaded.config.name, &loaded.text)?;
    let mut runs = Vec::new();
    for seed in seeds {
        let mut overrides = loaded.overrides.clone();
        overrides.extend([
            format!("train.seed={seed}"),
            format!("data.split_seed={split_seed}"),
            "train.seeds=[]".to_string(),
        ]);
        let member = LoadedConfig {
            config: config::parse(&loaded.text, &overrides)?,
            overrides,
            ..loaded.clone()
        };
        runs.push(create_run(reg, &member, RunStatus::Queued, Some(group))?);
    }
    Ok((group, runs))
}

/// Queues every trial of the experiment's `[sweep]`; returns the sweep id and its runs.
pub fn queue_sweep(reg: &Registry, loaded: &LoadedConfig) -> Result<(i64, Vec<i64>)> {
    let Some(section) = loaded.config.sweep.clone() else {
        bail!("{} has no [sweep] section", loaded.path.display());
    };
    // Every trial checked (with the file's overrides) before anything is recorded, and what
    // it optimises measurable here.
    crate::sweep::expand_with(&loaded.text, &loaded.overrides, &section)
        .and_then(|_| crate::sweep::check_measurable(&loaded.text, &loaded.overrides, &section))
        .map_err(|e| anyhow::anyhow!("{}: {e:#}", loaded.path.display()))?;
    let exp = register_experiment(reg, loaded)?;
    let sweep = reg.create_sweep(&crate::registry::NewSweep {
        experiment_id: Some(exp),
        name: &loaded.config.name,
        config: &loaded.text,
        method: section.method(),
        prune: section.prune,
        path: &loaded.path.display().to_string(),
        overrides: &loaded.overrides,
    })?;
    // Grid and random trials go through the same ask as tpe's (under the sweep's hold, one
    // at a time), all at once since none depends on another's result; a tpe sweep's are
    // asked by its workers.
    let runs = if section.method() == config::SweepMethod::Tpe {
        Vec::new()
    } else {
        ask(reg, sweep)?
    };
    Ok((sweep, runs))
}

/// Asks a sweep for its next trial and queues it (a grid or random sweep: every trial it lacks);
/// the first run queued, None when the sweep's budget is spent.
pub fn ask_trial(reg: &Registry, sweep_id: i64) -> Result<Option<i64>> {
    Ok(ask(reg, sweep_id)?.first().copied())
}

/// Under the sweep's short hold, so that two workers (threads, processes or machines) never
/// propose from the same history, and each trial is recorded before the next is proposed:
/// the trials `sweep::next_trial` gives, queued.
fn ask(reg: &Registry, sweep_id: i64) -> Result<Vec<i64>> {
    let token = crate::registry::new_token(&worker_name());
    let start = Instant::now();
    // A proposal takes well under a second; a holder that died loses its hold after HOLD_S.
    const HOLD_S: f64 = 30.0;
    while !reg.hold_sweep(sweep_id, &token, HOLD_S)? {
        if start.elapsed() > Duration::from_secs_f64(2.0 * HOLD_S) {
            bail!(
                "sweep {sweep_id}: another worker has held it for {HOLD_S} s without proposing a trial"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let asked = (|| -> Result<Vec<i64>> {
        let spec = crate::sweep::SweepSpec::load(reg, sweep_id)?;
        let crate::sweep::Next::Trials(trials) = crate::sweep::next_trial(reg, &spec)? else {
            return Ok(Vec::new());
        };
        let mut runs = Vec::with_capacity(trials.len());
        for (index, trial) in trials {
            let loaded = spec
                .trial(&trial)
                .with_context(|| format!("sweep {sweep_id}, trial {}", index + 1))?;
            runs.push(create_run(reg, &loaded, RunStatus::Queued, Some(sweep_id))?);
        }
        Ok(runs)
    })();
    reg.release_sweep(sweep_id, &token)?;
    asked
}

/// Asks the sweep given (any method: a grid whose queueing was cut short gets its missing
/// trials), or any tpe sweep with budget left, for a trial; the run queued.
fn ask_any(reg: &Registry, sweep: Option<i64>) -> Result<Option<i64>> {
    let sweeps = match sweep {
        Some(s) => vec![s],
        None => reg
            .sweeps()?
            .into_iter()
            .filter(|s| s.method == config::SweepMethod::Tpe)
            .map(|s| s.id)
            .collect(),
    };
    for s in sweeps {
        // A finished sweep is passed over without taking its hold (a write).
        if !crate::sweep::is_open(reg, &crate::sweep::SweepSpec::load(reg, s)?)? {
            continue;
        }
        if let Some(run) = ask_trial(reg, s)? {
            return Ok(Some(run));
        }
    }
    Ok(None)
}

/// How long a worker's hold on a run lasts without a heartbeat (it beats about every second).
pub const DEFAULT_LEASE_S: f64 = 60.0;

/// How a worker takes runs from the queue.
#[derive(Debug, Clone)]
pub struct WorkOptions {
    /// Runs trained at once in this process.
    pub workers: usize,
    /// Only runs of this sweep.
    pub sweep: Option<i64>,
    pub lease_s: f64,
    /// A run whose worker vanished this many times fails instead of going back to the queue.
    pub max_attempts: usize,
    /// Stop after this many runs (in all; 1 = one run per job, as Slurm arrays want).
    pub max_runs: Option<usize>,
    /// When the queue is empty, keep looking this long before leaving.
    pub wait: Duration,
    /// Also keep looking while runs it could take are held by other workers (they may come
    /// back to the queue): the workers of a Slurm array stay until their sweep is done.
    pub drain: bool,
    /// Why `cancel` was set (a signal's name), for the log of the runs it sends back.
    pub stop_reason: Arc<std::sync::OnceLock<String>>,
}

impl Default for WorkOptions {
    fn default() -> Self {
        Self {
            workers: 1,
            sweep: None,
            lease_s: DEFAULT_LEASE_S,
            max_attempts: 3,
            max_runs: None,
            wait: Duration::ZERO,
            drain: false,
            stop_reason: Arc::default(),
        }
    }
}

/// What became of a run a worker took.
#[derive(Debug, Clone)]
pub enum Worked {
    Finished(Outcome),
    /// Its lease was lost (the worker stalled past it and another took the run): left alone.
    GaveUp(LeaseLost),
    /// Stopped with the worker and put back in the queue, its finished epochs kept.
    SentBack {
        epochs_done: usize,
    },
}

impl std::fmt::Display for Worked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Worked::Finished(o) => write!(f, "{o}"),
            Worked::GaveUp(e) => write!(f, "given up: {e}"),
            Worked::SentBack { epochs_done } => write!(
                f,
                "interrupted after epoch {epochs_done}: back in the queue, to resume from there"
            ),
        }
    }
}

/// Works queued runs (of one sweep, if given) with `workers` runs at a time in this process,
/// until the queue stays empty for `wait`, `max_runs` are done or `cancel` is set (then the
/// runs in progress go back to the queue, resumable by any worker). Before each claim, runs
/// whose worker stopped heartbeating are requeued (or failed after `max_attempts`). Each run's
/// tensor work shares the process's one compute pool, so workers = cores keeps the cores busy
/// without oversubscribing them. Returns what became of every run taken.
pub fn work_queue(
    reg: &Registry,
    opts: &WorkOptions,
    cancel: &Arc<AtomicBool>,
    observe: impl Fn(i64, &RunEvent) + Send + Sync,
) -> Result<Vec<(i64, Worked)>> {
    let results = std::sync::Mutex::new(Vec::new());
    let taken = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = (0..opts.workers.max(1))
            .map(|w| {
                let (results, observe, taken) = (&results, &observe, &taken);
                scope.spawn(move || -> Result<()> {
                    let name = format!("{}#{w}", worker_name());
                    let mut idle_since = Instant::now();
                    while !cancel.load(Ordering::SeqCst) {
                        if opts
                            .max_runs
                            .is_some_and(|m| taken.fetch_add(1, Ordering::SeqCst) >= m)
                        {
                            break;
                        }
                        reg.requeue_expired(opts.max_attempts)?;
                        let claimed = reg.claim_queued(&name, opts.sweep, opts.lease_s)?;
                        // An empty queue: a tpe sweep with budget left proposes its next trial.
                        if claimed.is_none() && ask_any(reg, opts.sweep)?.is_some() {
                            if opts.max_runs.is_some() {
                                taken.fetch_sub(1, Ordering::SeqCst);
                            }
                            continue;
                        }
                        let Some((run, lease)) = claimed else {
                            if opts.max_runs.is_some() {
                                taken.fetch_sub(1, Ordering::SeqCst);
                            }
                            if idle_since.elapsed() >= opts.wait
                                && !(opts.drain && reg.count_running(opts.sweep)? > 0)
                            {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(500));
                            continue;
                        };
                        // A queued trial of a sweep whose time is up is not started.
                        if let Some(why) = crate::sweep::out_of_time(reg, run.sweep_id)? {
                            reg.finish_run(
                                &lease,
                                RunStatus::Cancelled,
                                Some(&format!("not started: {why}")),
                                None,
                            )?;
                            if opts.max_runs.is_some() {
                                taken.fetch_sub(1, Ordering::SeqCst);
                            }
                            continue;
                        }
                        let opts = ExecuteOptions {
                            control: Control {
                                cancel: cancel.clone(),
                                judge: crate::sweep::judge(reg, &run)?,
                                ..Control::default()
                            },
                            on_cancel: OnCancel::Requeue,
                            stop_reason: opts.stop_reason.clone(),
                        };
                        let worked = match execute(reg, &lease, &opts, |e| observe(run.id, e)) {
                            Ok(Outcome::Cancelled { epochs_done })
                                if reg.run(run.id)?.status == RunStatus::Queued =>
                            {
                                Worked::SentBack { epochs_done }
                            }
                            Ok(outcome) => Worked::Finished(outcome),
                            Err(e) => match e.downcast::<LeaseLost>() {
                                Ok(lost) => Worked::GaveUp(lost),
                                Err(e) => return Err(e),
                            },
                        };
                        results.lock().unwrap().push((run.id, worked));
                        idle_since = Instant::now();
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

/// Deletes a run: its registry rows, then its files (the local folder, and its objects when the
/// artifacts are in an object store).
pub fn delete_run(reg: &Registry, run_id: i64) -> Result<()> {
    reg.run(run_id)?;
    reg.delete_run(run_id)?;
    run_folder(reg, run_id).delete().with_context(|| {
        format!("run {run_id} is deleted from the registry, but not all of its files")
    })
}

/// Whether a run may be continued: stopped, failed, or left running by a worker that is gone.
pub fn check_resumable(reg: &Registry, run_id: i64) -> Result<()> {
    let run = reg.run(run_id)?;
    match run.display_status() {
        s if s.is_resumable() => Ok(()),
        RunStatus::Running => bail!(
            "run {run_id} is still running (worker {}, last heartbeat {})",
            run.worker.as_deref().unwrap_or("-"),
            run.beat_age_s
                .map(|a| format!("{a:.0}s ago"))
                .unwrap_or_else(|| "-".into())
        ),
        s => {
            bail!("run {run_id} is {s}; only cancelled, failed or interrupted runs can be resumed")
        }
    }
}

/// Takes a run for this process (a new one, or one to resume) with the default lease; a run
/// whose worker is known to be gone is taken over from it.
pub fn take(reg: &Registry, run_id: i64) -> Result<Lease> {
    let run = reg.run(run_id)?;
    let dead = run.is_orphaned().then_some(run.token.as_deref()).flatten();
    reg.claim_run(run_id, &worker_name(), DEFAULT_LEASE_S, dead)
}

/// What becomes of a run whose training was cancelled (between steps).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnCancel {
    /// Marked cancelled: `mvlab resume` or the workbench continues it.
    #[default]
    Keep,
    /// Back in the queue, for any worker (a worker asked to stop: SIGTERM, Ctrl-C).
    Requeue,
}

/// How [`execute`] runs a held run.
#[derive(Clone, Default)]
pub struct ExecuteOptions {
    /// Cancels between steps, judges after each epoch (sweeps).
    pub control: Control,
    pub on_cancel: OnCancel,
    /// Said in the log of a run sent back to the queue (`OnCancel::Requeue`).
    pub stop_reason: Arc<std::sync::OnceLock<String>>,
}

/// Executes a held run to its end on a training thread, recording its events in the registry
/// (every write checked against the lease) and passing each to `observe`. A run with a recorded
/// last checkpoint continues from it (wherever it was trained before), any other starts afresh.
/// Returns the outcome, or [`LeaseLost`] when the run stopped being this worker's: then
/// training stops and nothing more is written.
pub fn execute(
    reg: &Registry,
    lease: &Lease,
    opts: &ExecuteOptions,
    observe: impl FnMut(&RunEvent),
) -> Result<Outcome> {
    let prepared = match prepare(reg, lease) {
        Ok(p) => p,
        Err(e) if e.is::<LeaseLost>() => return Err(e),
        Err(e) => {
            // Marked failed with the reason (it stays resumable once that is fixed).
            let _ = finish(
                reg,
                lease,
                &Outcome::Failed(format!("{e:#}")),
                OnCancel::Keep,
                None,
            );
            return Err(e);
        }
    };
    let outcome = train_recorded(reg, lease, prepared, &opts.control, observe)?;
    if matches!(outcome, Outcome::Completed { .. } | Outcome::Pruned { .. }) {
        measure_deployment(reg, lease)?;
    }
    // A cancel asked for in the registry (from the workbench) is a cancel, whatever stopped
    // the worker.
    let on_cancel = match outcome {
        Outcome::Cancelled { .. } if reaching(|| reg.cancel_requested(lease))? => OnCancel::Keep,
        _ => opts.on_cancel,
    };
    let why = opts.stop_reason.get().map(String::as_str);
    reaching(|| finish(reg, lease, &outcome, on_cancel, why))?;
    Ok(outcome)
}

/// For a trial of a sweep that needs them: the best epoch's weights deployed as the sweep's
/// `deploy_format` says (`best.int8.onnx` or `best.int8.tflite` in the run folder), measured
/// in its runtime ([`crate::export::measure`]): batch-1 latency on this CPU, size, and val
/// accuracy beside the float model's, recorded as the epoch's `deploy` metrics and as a row of
/// the run's exports. A measurement that fails is logged and recorded with its reason; the
/// trial then has no values, the sampler leaves it out and the report shows it unmeasured.
fn measure_deployment(reg: &Registry, lease: &Lease) -> Result<()> {
    use crate::export::measure;
    let run = reg.run(lease.run)?;
    let (Some(sweep_id), Some(best_epoch)) = (run.sweep_id, run.best_epoch) else {
        return Ok(());
    };
    let spec = crate::sweep::SweepSpec::load(reg, sweep_id)?;
    if !spec.measures_deployment() {
        return Ok(());
    }
    let format = spec.deploy_format();
    let (export_format, kind, name) = measure::sweep_file(format);
    let folder = run_folder(reg, lease.run);
    let (weights, out) = (folder.path(RunFile::Best), folder.dir().join(name));
    let best = reg
        .checkpoints(lease.run)?
        .into_iter()
        .find(|c| c.kind == CheckpointKind::Best);
    let sha256 = match &best {
        Some(c) => c.sha256.clone(),
        None => crate::checkpoint::sha256_file(&weights).unwrap_or_default(),
    };
    let (format_name, kind_name, path) = (
        export_format.to_string(),
        kind.to_string(),
        out.display().to_string(),
    );
    let record = crate::registry::NewExport {
        run_id: lease.run,
        checkpoint_sha256: &sha256,
        checkpoint_kind: best.as_ref().map(|c| c.kind.as_ref()),
        epoch: Some(best_epoch),
        format: &format_name,
        quantize: &kind_name,
        path: &path,
        ..Default::default()
    };
    match measure::sweep_checkpoint(&weights, &run, format, &out, true) {
        Ok(m) => {
            let mut rows = vec![
                (Metric::Int8LatencyMs, m.latency.median_ms),
                (Metric::SizeMb, m.size_bytes as f64 / 1e6),
            ];
            if let Some(d) = &m.deployed {
                rows.push((Metric::DeployedValAccuracy, d.accuracy));
            }
            let rows: Vec<MetricRow> = rows
                .into_iter()
                .map(|(metric, v)| MetricRow::new(lease.run, 0, best_epoch as usize, metric, v))
                .collect();
            reaching(|| reg.insert_metrics(lease, &rows))?;
            let measured = crate::registry::NewExport {
                size_bytes: Some(m.size_bytes),
                images: m.deployed.map(|d| d.images),
                val_accuracy: m.deployed.map(|d| d.accuracy),
                float_val_accuracy: m.deployed.map(|d| d.float_accuracy),
                agreement: m.deployed.map(|d| d.agreement),
                latency_ms: Some(m.latency.median_ms),
                ..record.clone()
            };
            reaching(|| reg.record_sweep_export(lease, &measured))?;
            let accuracy = m
                .deployed
                .map(|d| {
                    format!(
                        ", val accuracy {} (float {}), top-1 agreement {} on {} val images",
                        crate::fmt::percent(d.accuracy),
                        crate::fmt::percent(d.float_accuracy),
                        crate::fmt::percent(d.agreement),
                        d.images
                    )
                })
                .unwrap_or_default();
            reaching(|| {
                reg.log(
                    lease,
                    LogLevel::Info,
                    &format!(
                        "{format_name} {kind_name} file of epoch {best_epoch}: {:.2} ms at batch 1 (median of {}, {} thread), {:.2} MB{accuracy}",
                        m.latency.median_ms,
                        m.latency.runs,
                        m.latency.threads,
                        m.size_bytes as f64 / 1e6
                    ),
                )
            })
        }
        Err(e) => {
            let reason = format!("{e:#}");
            let failed = crate::registry::NewExport {
                error: Some(&reason),
                ..record.clone()
            };
            reaching(|| reg.record_sweep_export(lease, &failed))?;
            reaching(|| {
                reg.log(
                    lease,
                    LogLevel::Warn,
                    &format!(
                        "the deployed file ({format_name} {kind_name}) could not be measured: {reason}"
                    ),
                )
            })
        }
    }
}

/// A held run ready to train: its stored config, its folder (with the files of a recorded
/// checkpoint fetched and checked), and its device.
struct Prepared {
    config: ExperimentConfig,
    folder: RunFolder,
    resume: bool,
    device: crate::device::Selected,
}

fn prepare(reg: &Registry, lease: &Lease) -> Result<Prepared> {
    let run_id = lease.run;
    let row = reg.run(run_id)?;
    let config = row.recorded_config()?;
    let folder = run_folder(reg, run_id);
    reg.artifacts.check()?;
    let device = crate::device::select(&config.train.device)?;
    let recorded = reg.checkpoints(run_id)?;
    folder.claim(&recorded)?;
    folder.restore_recorded(&recorded)?;
    let resume = recorded.iter().any(|c| c.kind == CheckpointKind::Last);
    let done = if resume {
        folder.fetch(&recorded)?;
        let state = folder.state()?.with_context(|| {
            format!(
                "run {run_id}: its last checkpoint is recorded but {} is missing; it cannot be resumed",
                folder.path(RunFile::State).display()
            )
        })?;
        state.epochs_done
    } else {
        0
    };
    // Metrics past the last checkpoint belong to work that is about to be redone.
    reg.truncate_metrics_after(lease, done)?;
    reg.start_run(
        lease,
        &device.label,
        &folder.dir().display().to_string(),
        &worker_name(),
    )?;
    reg.record_device(lease, &device.label, crate::provenance::driver().as_deref())?;
    if let Some(task) = crate::slurm::Task::current() {
        reg.record_slurm_task(lease, &task.job)?;
        reg.log(
            lease,
            LogLevel::Info,
            &format!(
                "Slurm job {} on node {}{}",
                task.job,
                task.node,
                match task.restarts {
                    0 => String::new(),
                    n => format!(", requeued {n} time(s)"),
                }
            ),
        )?;
    }
    Ok(Prepared {
        config,
        folder,
        resume,
        device,
    })
}

/// Trains on a thread of its own while this one records its events (metrics batched about
/// once a second, with a heartbeat) and passes them on. On a lost lease it stops the training
/// thread and returns [`LeaseLost`] without writing more.
fn train_recorded(
    reg: &Registry,
    lease: &Lease,
    prepared: Prepared,
    control: &Control,
    mut observe: impl FnMut(&RunEvent),
) -> Result<Outcome> {
    let run_id = lease.run;
    let Prepared {
        config,
        folder,
        resume,
        device,
    } = prepared;
    let spec = RunSpec {
        config,
        folder,
        resume,
    };
    // The run's own stop flag: set by the caller's flag, or when the lease is lost. Before it
    // writes an epoch's checkpoint files, training asks whether the run is still ours.
    let stop = Arc::new(AtomicBool::new(false));
    let (check_reg, check_lease) = (reg.clone(), lease.clone());
    let thread_control = Control {
        cancel: stop.clone(),
        judge: control.judge.clone(),
        still_ours: Some(Arc::new(move || check_reg.heartbeat(&check_lease).is_ok())),
    };
    let (tx, rx) = channel();
    let handle = std::thread::Builder::new()
        .name(format!("mvlab-run-{run_id}"))
        .spawn(move || train::run(&spec, &device, &tx, &thread_control))?;

    let mut pending = Unwritten::default();
    let mut last_flush = Instant::now();
    let mut lost: Option<anyhow::Error> = None;
    let keep = |r: Result<()>, lost: &mut Option<anyhow::Error>| -> Result<()> {
        match r {
            Err(e) if e.is::<LeaseLost>() => {
                stop.store(true, Ordering::SeqCst);
                *lost = Some(e);
                Ok(())
            }
            other => other,
        }
    };
    // A write that fails for another reason (the registry refused it) stops training too: the
    // run then ends failed with that reason, rather than training on unrecorded.
    let mut refused: Option<anyhow::Error> = None;
    loop {
        if control.cancel.load(Ordering::SeqCst) {
            stop.store(true, Ordering::SeqCst);
        }
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(event) if lost.is_none() && refused.is_none() => {
                let written = reaching(|| record(reg, lease, &event, &mut pending));
                if let Err(e) = keep(written, &mut lost) {
                    stop.store(true, Ordering::SeqCst);
                    refused = Some(e);
                } else if lost.is_none() {
                    observe(&event);
                }
            }
            Ok(_) => {} // the lease is gone or a write was refused: drain without writing
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if lost.is_none() && refused.is_none() && last_flush.elapsed() >= Duration::from_secs(1) {
            let flushed = reaching(|| {
                reg.insert_metrics(lease, &pending.rows)?;
                pending.rows.clear();
                reg.heartbeat(lease)?;
                if reg.cancel_requested(lease)? {
                    stop.store(true, Ordering::SeqCst);
                }
                Ok(())
            });
            if let Err(e) = keep(flushed, &mut lost) {
                stop.store(true, Ordering::SeqCst);
                refused = Some(e);
            }
            last_flush = Instant::now();
        }
    }
    let joined = handle.join();
    if let Some(e) = lost {
        return Err(e);
    }
    if let Some(e) = refused {
        return Ok(Outcome::Failed(format!("{e:#}")));
    }
    reaching(|| reg.insert_metrics(lease, &pending.rows))?;
    Ok(match joined {
        Ok(o) => o,
        Err(panic) => Outcome::Failed(format!("training thread panicked: {}", panic_text(&panic))),
    })
}

/// Records how the run ended and releases its lease (or puts it back in the queue).
fn finish(
    reg: &Registry,
    lease: &Lease,
    outcome: &Outcome,
    on_cancel: OnCancel,
    why: Option<&str>,
) -> Result<()> {
    let (status, error, final_metrics) = match outcome {
        Outcome::Completed { .. } => (
            RunStatus::Completed,
            None,
            Some(serde_json::to_string(outcome)?),
        ),
        Outcome::Failed(e) => (RunStatus::Failed, Some(e.clone()), None),
        Outcome::Cancelled { .. } if on_cancel == OnCancel::Requeue => {
            let done = reg.run(lease.run)?.epochs_done;
            reg.log(
                lease,
                LogLevel::Warn,
                &format!(
                    "interrupted ({}) after {done} epoch(s): back in the queue, to resume from its last checkpoint",
                    why.unwrap_or("its worker was stopped")
                ),
            )?;
            return reg.requeue(lease);
        }
        Outcome::Cancelled { .. } => (RunStatus::Cancelled, None, None),
        Outcome::Pruned { .. } => (RunStatus::Pruned, None, None),
    };
    reg.finish_run(lease, status, error.as_deref(), final_metrics.as_deref())
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// `host:pid`: who holds a run, readable in `mvlab queue`.
pub fn worker_name() -> String {
    format!("{}:{}", crate::registry::this_host(), std::process::id())
}

/// What the recorder holds until it is written: step metrics (flushed about every second
/// and with their epoch's), and the progress of an epoch whose last checkpoint is not recorded.
#[derive(Default)]
struct Unwritten {
    rows: Vec<MetricRow>,
    progress: Option<(usize, (f64, usize))>,
}

/// An epoch's summary as metric rows.
fn epoch_rows(lease: &Lease, e: &train::EpochSummary) -> Vec<MetricRow> {
    [
        (Metric::TrainLoss, e.train_loss),
        (Metric::TrainAccuracy, e.train_accuracy),
        (Metric::ValLoss, e.val_loss),
        (Metric::ValAccuracy, e.val_accuracy),
        (Metric::TrainLr, e.lr),
        (Metric::EpochSeconds, e.seconds),
        (Metric::ImagesPerS, e.images_per_s),
    ]
    .into_iter()
    .map(|(metric, value)| MetricRow::new(lease.run, e.step, e.epoch, metric, value))
    .collect()
}

/// How long a run's writes wait for a registry that cannot be reached (a PostgreSQL server
/// restarting) before the run stops; its lease may expire meanwhile, and then the next write
/// finds it taken over and stops training.
const REACH_FOR: Duration = Duration::from_secs(120);

/// `write` again, with backoff, while the registry cannot be reached; any other error at once.
fn reaching<T>(mut write: impl FnMut() -> Result<T>) -> Result<T> {
    let (start, mut wait) = (Instant::now(), Duration::from_millis(100));
    loop {
        match write() {
            Err(e) if crate::registry::unreachable(&e) && start.elapsed() < REACH_FOR => {
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            done => return done,
        }
    }
}

fn record(reg: &Registry, lease: &Lease, event: &RunEvent, pending: &mut Unwritten) -> Result<()> {
    match event {
        RunEvent::Started { classes, .. } => reg.set_classes(lease, classes)?,
        RunEvent::Step {
            epoch,
            step,
            loss,
            accuracy,
            lr,
            ..
        } => {
            for (metric, value) in [
                (Metric::StepLoss, loss),
                (Metric::StepAccuracy, accuracy),
                (Metric::StepLr, lr),
            ] {
                pending
                    .rows
                    .push(MetricRow::new(lease.run, *step, *epoch, metric, *value));
            }
        }
        RunEvent::Epoch(e) => {
            // The rows are emptied only once they are in, so the arm can run again after a
            // failed write without a row twice. The progress waits for the epoch's last
            // checkpoint: `epochs_done` never counts an epoch a resume would redo.
            let mut rows = pending.rows.clone();
            rows.extend(epoch_rows(lease, e));
            reg.insert_metrics(lease, &rows)?;
            pending.rows.clear();
            pending.progress = Some((e.epoch, (e.best_metric, e.best_epoch)));
        }
        RunEvent::Checkpoint {
            epoch,
            kind,
            path,
            sha256,
            metrics,
        } => {
            // An object store keeps each epoch's files apart: the replaced ones go. (Local
            // files are overwritten in place.)
            let superseded = if reg.artifacts.is_remote() {
                reg.checkpoints(lease.run)?
                    .into_iter()
                    .find(|c| c.kind == *kind && c.path != *path)
            } else {
                None
            };
            reg.add_checkpoint(lease, *epoch, *kind, path, metrics, sha256)?;
            if *kind == CheckpointKind::Last
                && let Some((done, best)) = pending.progress.filter(|p| p.0 == *epoch)
            {
                reg.update_progress(lease, done, Some(best))?;
                pending.progress = None;
            }
            let folder = run_folder(reg, lease.run);
            folder.forget_kept(*kind, *epoch);
            if let Some(old) = superseded {
                folder.forget(&old);
            }
        }
        RunEvent::Log { level, message } => reg.log(lease, *level, message)?,
        RunEvent::Finished(Outcome::Failed(e)) => reg.log(lease, LogLevel::Error, e)?,
        RunEvent::Finished(_) => {}
    }
    Ok(())
}
