//! Work the UI thread never waits on: training jobs, registry snapshots, the experiments-folder
//! watcher and checkpoint comparisons. Each reports to the UI through one channel of [`Msg`].

use super::state::{ExperimentEntry, RunDetail, SamplesResult, Snapshot, Wanted};
use crate::config;
use crate::jobs;
use crate::registry::{CheckpointRow, Registry, RunRow};
use crate::status::{Metric, RunStatus};
use crate::train::{Control, Outcome, RunEvent};
use notify::{RecursiveMode, Watcher};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

pub enum Msg {
    Snapshot(Box<Snapshot>),
    Experiments(Vec<ExperimentEntry>),
    Event(i64, RunEvent),
    /// A run of this session was created or taken, and trains: what to say.
    RunStarted(i64, String),
    /// A job ended: its run (none when it could not be created) and how.
    JobDone(Option<i64>, Result<Outcome, String>),
    SweepStarted(i64, String),
    SweepDone(i64, Result<usize, String>),
    Deleted(i64, Result<(), String>),
    Comparison(Result<Box<crate::compare::Comparison>, String>),
    Samples(i64, SamplesResult),
    Status(String),
}

pub type Interest = Arc<Mutex<Wanted>>;

pub fn load_detail(reg: &Registry, run: i64) -> anyhow::Result<RunDetail> {
    let pts = |metric: Metric| -> anyhow::Result<Vec<(f64, f64)>> {
        Ok(reg
            .epoch_series(run, metric)?
            .into_iter()
            .map(|(e, v)| (e as f64, v))
            .collect())
    };
    let step_loss = reg
        .series(run, Metric::StepLoss)?
        .into_iter()
        .map(|(s, v)| (s as f64, v))
        .collect();
    Ok(RunDetail {
        train_loss: pts(Metric::TrainLoss)?,
        val_loss: pts(Metric::ValLoss)?,
        train_acc: pts(Metric::TrainAccuracy)?,
        val_acc: pts(Metric::ValAccuracy)?,
        step_loss,
        logs: reg.logs(run, 50)?,
        checkpoints: reg.checkpoints(run)?,
    })
}

/// Seeds already read, by run (id and creation time, as SQLite may give a deleted run's id to
/// a new one): a run's stored config never changes, so each is parsed once, not twice a second.
#[derive(Debug, Default)]
pub struct SeedCache(HashMap<(i64, String), Option<u64>>);

impl SeedCache {
    fn seeds(&mut self, runs: &[RunRow]) -> HashMap<i64, u64> {
        let mut kept = HashMap::with_capacity(runs.len());
        let mut seeds = HashMap::with_capacity(runs.len());
        for r in runs {
            let key = (r.id, r.created_at.clone());
            let seed = match self.0.remove(&key) {
                Some(seed) => seed,
                None => seed_of(&r.config),
            };
            if let Some(seed) = seed {
                seeds.insert(r.id, seed);
            }
            kept.insert(key, seed);
        }
        self.0 = kept; // deleted runs drop out
        seeds
    }
}

pub fn snapshot(
    reg: &Registry,
    wanted: &Wanted,
    cache: &mut SeedCache,
) -> anyhow::Result<Snapshot> {
    let sweep_report = wanted
        .sweep
        .map(|id| match crate::sweep::report(reg, id, None) {
            Ok(r) => (id, r.text, Arc::new(r.front)),
            Err(e) => (id, e.to_string(), Arc::default()),
        });
    let (runs, sweeps) = (reg.runs()?, reg.sweeps()?);
    let seeds = cache.seeds(&runs);
    let read = wanted
        .reads
        .iter()
        .map(|(view, read)| Ok((*view, read(reg)?)))
        .collect::<anyhow::Result<_>>()?;
    let mut s = Snapshot {
        groups: crate::compare::groups_of(reg, &runs, &sweeps)?,
        runs,
        seeds,
        details: BTreeMap::new(),
        checkpoints: reg.all_checkpoints()?,
        sweeps,
        sweep_report,
        read,
        tuning: crate::device::tuning::progress().line(),
        slurm: HashMap::new(),
    };
    for &id in &wanted.runs {
        if let Ok(d) = load_detail(reg, id) {
            s.details.insert(id, d);
        }
    }
    Ok(s)
}

/// `train.seed` of a stored config (every stored config has one: it is written in full).
fn seed_of(config: &str) -> Option<u64> {
    let table: toml::Table = config.parse().ok()?;
    let seed = table.get("train")?.get("seed")?.as_integer()?;
    u64::try_from(seed).ok()
}

/// Reads the registry twice a second (runs written by other processes show up too).
pub fn spawn_refresher(reg: Registry, interest: Interest, tx: Sender<Msg>) {
    let (jobs, slurm) = watch_slurm();
    std::thread::Builder::new()
        .name("mvlab-refresh".into())
        .spawn(move || {
            let mut seeds = SeedCache::default();
            loop {
                let ids = interest.lock().unwrap().clone();
                if let Ok(mut s) = snapshot(&reg, &ids, &mut seeds) {
                    // The watcher asks Slurm about the tasks of the runs this read found.
                    *jobs.lock().unwrap() = s
                        .runs
                        .iter()
                        .filter(|r| r.status.is_pending())
                        .filter_map(|r| r.slurm_job.clone())
                        .collect();
                    s.slurm = slurm.lock().unwrap().clone();
                    if tx.send(Msg::Snapshot(Box::new(s))).is_err() {
                        return;
                    }
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
        .expect("spawn refresher");
}

pub fn scan_experiments(dir: &Path) -> Vec<ExperimentEntry> {
    let mut out: Vec<ExperimentEntry> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let stem = path
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            match config::parse(&text, &[]) {
                Ok(c) => ExperimentEntry {
                    path,
                    name: c.name,
                    text,
                    error: None,
                },
                Err(e) => ExperimentEntry {
                    path,
                    name: stem,
                    text,
                    error: Some(e.to_string()),
                },
            }
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// Watches the experiments folder; sends a fresh listing after every change.
pub fn spawn_watcher(dir: PathBuf, tx: Sender<Msg>) -> Option<notify::RecommendedWatcher> {
    let _ = tx.send(Msg::Experiments(scan_experiments(&dir)));
    let watch_dir = dir.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            let _ = tx.send(Msg::Experiments(scan_experiments(&watch_dir)));
        }
    })
    .ok()?;
    watcher.watch(&dir, RecursiveMode::NonRecursive).ok()?;
    Some(watcher)
}

/// How a job gets its run.
#[derive(Debug, Clone)]
pub enum Start {
    /// A new run of this experiment file (the dataset is scanned here, off the UI thread).
    New(PathBuf),
    /// An existing run, resumed.
    Resume(i64),
}

/// Creates or takes a run on a background thread and trains it; `run` gets its id as soon as
/// it is known. Its events, start and end reach the UI.
pub fn spawn_job(
    reg: Registry,
    start: Start,
    run: Arc<OnceLock<i64>>,
    control: Control,
    tx: Sender<Msg>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("mvlab-job".into())
        .spawn(move || {
            let id = match &start {
                Start::New(path) => config::load(path, &[])
                    .and_then(|loaded| jobs::create_run(&reg, &loaded, RunStatus::Running, None))
                    .map_err(|e| format!("cannot start {}: {e:#}", path.display())),
                Start::Resume(id) => jobs::check_resumable(&reg, *id)
                    .map(|()| *id)
                    .map_err(|e| format!("{e:#}")),
            };
            let id = match id {
                Ok(id) => id,
                Err(e) => {
                    let _ = tx.send(Msg::JobDone(None, Err(e)));
                    return;
                }
            };
            let _ = run.set(id);
            let what = match &start {
                Start::New(path) => format!("started run {id} ({})", path.display()),
                Start::Resume(_) => format!("resuming run {id}"),
            };
            let _ = tx.send(Msg::RunStarted(id, what));
            let events = tx.clone();
            let opts = jobs::ExecuteOptions {
                control,
                ..jobs::ExecuteOptions::default()
            };
            let result = jobs::take(&reg, id).and_then(|lease| {
                jobs::execute(&reg, &lease, &opts, |e| {
                    let _ = events.send(Msg::Event(id, e.clone()));
                })
            });
            let _ = tx.send(Msg::JobDone(Some(id), result.map_err(|e| format!("{e:#}"))));
        })
        .expect("spawn job")
}

/// Queues an experiment's sweep and works it on one background worker (both off the UI
/// thread). Events reach the UI.
pub fn spawn_sweep(
    reg: Registry,
    path: PathBuf,
    cancel: Arc<AtomicBool>,
    tx: Sender<Msg>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("mvlab-sweep".into())
        .spawn(move || {
            let queued =
                config::load(&path, &[]).and_then(|loaded| jobs::queue_sweep(&reg, &loaded));
            let id = match queued {
                Ok((id, _)) => id,
                Err(e) => {
                    let _ = tx.send(Msg::Status(format!(
                        "cannot sweep {}: {e:#}",
                        path.display()
                    )));
                    return;
                }
            };
            let _ = tx.send(Msg::SweepStarted(
                id,
                format!("sweep {id} queued and training ({})", path.display()),
            ));
            let events = tx.clone();
            let opts = jobs::WorkOptions {
                sweep: Some(id),
                ..jobs::WorkOptions::default()
            };
            let result = jobs::work_queue(&reg, &opts, &cancel, |run, e| {
                let _ = events.send(Msg::Event(run, e.clone()));
            });
            let _ = tx.send(Msg::SweepDone(
                id,
                result.map(|r| r.len()).map_err(|e| format!("{e:#}")),
            ));
        })
        .expect("spawn sweep")
}

/// Deletes a run: its rows, then its files (locally and in an object store).
/// Slurm's state of the array tasks the refresher hands it (those of runs not yet ended),
/// every 5 s on a thread of its own (squeue can take seconds, or hang with a dead munge: its
/// deadline is 3 s), where Slurm is.
type Shared<T> = Arc<Mutex<T>>;
fn watch_slurm() -> (Shared<Vec<String>>, Shared<HashMap<String, String>>) {
    let (jobs, states): (Shared<Vec<String>>, Shared<HashMap<String, String>>) = Default::default();
    if !crate::slurm::available() {
        return (jobs, states);
    }
    let (asked, shared) = (jobs.clone(), states.clone());
    std::thread::Builder::new()
        .name("mvlab-slurm".into())
        .spawn(move || {
            loop {
                let jobs = asked.lock().unwrap().clone();
                if let Ok(s) = crate::slurm::states(&jobs) {
                    *shared.lock().unwrap() = s;
                }
                std::thread::sleep(Duration::from_secs(5));
            }
        })
        .expect("spawn slurm watch");
    (jobs, states)
}

/// Cancels a run another worker holds: asked in the registry (its worker looks every second
/// and marks it cancelled), and when a Slurm array task works it, that task is cancelled too.
pub fn spawn_remote_cancel(reg: Registry, id: i64, tx: Sender<Msg>) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("mvlab-cancel".into())
        .spawn(move || {
            let said = (|| -> anyhow::Result<String> {
                if !reg.request_cancel(id)? {
                    return Ok(format!("run {id} is not running"));
                }
                Ok(match reg.run(id)?.slurm_job {
                    Some(job) => {
                        crate::slurm::cancel(&job)?;
                        format!(
                            "run {id}: cancel asked of its worker, and Slurm task {job} cancelled"
                        )
                    }
                    None => {
                        format!("run {id}: cancel asked of its worker (it stops after its step)")
                    }
                })
            })();
            let _ = tx.send(Msg::Status(
                said.unwrap_or_else(|e| format!("run {id}: {e:#}")),
            ));
        })
        .expect("spawn cancel")
}

pub fn spawn_delete(reg: Registry, id: i64, tx: Sender<Msg>) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("mvlab-delete".into())
        .spawn(move || {
            let done = jobs::delete_run(&reg, id).map_err(|e| format!("{e:#}"));
            let _ = tx.send(Msg::Deleted(id, done));
        })
        .expect("spawn delete")
}

/// Evaluates two checkpoints on a thread of its own; the result reaches the UI.
pub fn spawn_comparison(
    reg: Registry,
    a: CheckpointRow,
    b: CheckpointRow,
    tx: Sender<Msg>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("mvlab-compare".into())
        .spawn(move || {
            let r = (|| -> anyhow::Result<crate::compare::Comparison> {
                let (sa, sb) = (
                    crate::compare::checkpoint_side(&reg, &a)?,
                    crate::compare::checkpoint_side(&reg, &b)?,
                );
                let device = crate::device::select("auto")?;
                crate::compare::compare(
                    &sa,
                    &sb,
                    crate::compare::Images::Default,
                    0.05,
                    &device.device,
                )
            })()
            .map(Box::new)
            .map_err(|e| format!("{e:#}"));
            let _ = tx.send(Msg::Comparison(r));
        })
        .expect("spawn comparison")
}

/// Reads a run's per-image dynamics (and runs its best checkpoint on the listed images) on a
/// thread of its own; the result reaches the UI.
pub fn spawn_samples(reg: Registry, run: i64, tx: Sender<Msg>) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("mvlab-samples".into())
        .spawn(move || {
            let r = crate::device::select("auto")
                .and_then(|d| crate::samples::of_run(&reg, run, 50, &d.device))
                .map(Box::new)
                .map_err(|e| format!("{e:#}"));
            let _ = tx.send(Msg::Samples(run, r));
        })
        .expect("spawn samples")
}
