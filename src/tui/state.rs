//! What the workbench's parts share: the data every view reads ([`Data`]: the registry as last
//! read, the experiment files, what this session trains and the results of work asked for in
//! the background), what the refresher should read for it ([`Wanted`]), and the work a key may
//! ask for ([`Command`]).

use crate::registry::{CheckpointRow, LogRow, Registry, RunRow, SweepRow};
use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// One experiment file as the UI lists it.
#[derive(Debug, Clone)]
pub struct ExperimentEntry {
    pub path: PathBuf,
    pub name: String,
    pub text: String,
    /// The located error when the file does not parse or validate.
    pub error: Option<String>,
}

/// What the registry says about one run, for charts and logs.
#[derive(Debug, Clone, Default)]
pub struct RunDetail {
    pub train_loss: Vec<(f64, f64)>,
    pub val_loss: Vec<(f64, f64)>,
    pub train_acc: Vec<(f64, f64)>,
    pub val_acc: Vec<(f64, f64)>,
    pub step_loss: Vec<(f64, f64)>,
    /// The end of its log.
    pub logs: Vec<LogRow>,
    pub checkpoints: Vec<CheckpointRow>,
}

/// The registry as the refresher last read it.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub runs: Vec<RunRow>,
    /// Each run's `train.seed`, from its stored config.
    pub seeds: HashMap<i64, u64>,
    pub details: BTreeMap<i64, RunDetail>,
    pub checkpoints: Vec<CheckpointRow>,
    pub sweeps: Vec<SweepRow>,
    /// The report of the sweep the UI shows: its id, text and front.
    pub sweep_report: Option<(i64, String, Arc<crate::sweep::Front>)>,
    /// What views read for themselves ([`Wanted::reads`]), by view title.
    pub read: HashMap<&'static str, Arc<dyn Any + Send + Sync>>,
    /// What a GPU is autotuning for this session's runs, if anything.
    pub tuning: Option<String>,
    /// Seed groups, summarised over their runs.
    pub groups: Vec<crate::compare::GroupSummary>,
    /// Slurm's state of the runs' array tasks (`JOB_TASK` -> pending, running, ...), read
    /// every few seconds apart from the registry's refresh, where Slurm is.
    pub slurm: HashMap<String, String>,
}

/// A view's own read of the registry, made by the refresher: a view that needs data the
/// snapshot does not hold says how to read it in its own file. Its result is found under the
/// view's title in [`Snapshot::read`].
pub type Read = Arc<dyn Fn(&Registry) -> anyhow::Result<Arc<dyn Any + Send + Sync>> + Send + Sync>;

/// What the views show, so that the refresher reads just that: run details, one sweep's
/// report, and the views' own reads.
#[derive(Clone, Default)]
pub struct Wanted {
    pub runs: Vec<i64>,
    pub sweep: Option<i64>,
    pub reads: Vec<(&'static str, Read)>,
}

impl std::fmt::Debug for Wanted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wanted")
            .field("runs", &self.runs)
            .field("sweep", &self.sweep)
            .field("reads", &self.reads.iter().map(|r| r.0).collect::<Vec<_>>())
            .finish()
    }
}

/// What the user asked for that reaches past the screen: `effects` carries it out.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Create a run of this experiment file and train it.
    StartRun {
        path: PathBuf,
        name: String,
    },
    /// Queue the file's `[sweep]` and work it.
    StartSweep {
        path: PathBuf,
        name: String,
    },
    Cancel(i64),
    Resume(i64),
    /// Delete a run's rows and files (the user confirmed).
    Delete(i64),
    /// Compare two checkpoints (paired test) on the first one's val split.
    CompareCheckpoints(Box<CheckpointRow>, Box<CheckpointRow>),
    /// Read a run's per-image dynamics for the Samples view.
    LoadSamples(i64),
    /// Stop this session's training (runs stay resumable) before leaving.
    StopAll,
}

/// Work asked for in the background: not asked, under way, or its result.
#[derive(Debug, Default)]
pub enum Pending<T> {
    #[default]
    None,
    Running,
    Done(T),
}

/// Progress of a run trained in this session, kept current by its events.
#[derive(Debug, Clone)]
pub struct Live {
    pub epoch: usize,
    pub epochs: usize,
    pub batch: usize,
    pub batches: usize,
    pub start_epoch: usize,
    pub images_per_s: f64,
    pub loss: f64,
    pub lr: f64,
    pub started: Instant,
    pub steps: Vec<(f64, f64)>,
}

impl Live {
    /// Fraction of the run done, and the estimated seconds left.
    pub fn progress(&self) -> (f64, Option<f64>) {
        let total =
            ((self.epochs + 1).saturating_sub(self.start_epoch) * self.batches.max(1)) as f64;
        let done =
            ((self.epoch.saturating_sub(self.start_epoch)) * self.batches + self.batch) as f64;
        let frac = if total > 0.0 {
            (done / total).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let eta =
            (done > 0.0).then(|| self.started.elapsed().as_secs_f64() * (total - done) / done);
        (frac, eta)
    }
}

/// What every view reads: the registry as last read, the experiment files, what this session
/// is training, and the results views asked for.
pub struct Data {
    pub experiments_dir: PathBuf,
    pub experiments: Vec<ExperimentEntry>,
    pub snapshot: Snapshot,
    pub live: HashMap<i64, Live>,
    /// Runs training in this session, and sweeps worked by it.
    pub running: BTreeSet<i64>,
    pub sweeping: BTreeSet<i64>,
    /// Runs marked in Runs for the Compare view.
    pub marked_runs: BTreeSet<i64>,
    /// The run the Run, Samples and Logs views show: the one last selected in Runs, opened or
    /// started.
    pub focus: Option<i64>,
    /// The comparison of two checkpoints asked for in Checkpoints.
    pub comparison: Pending<ComparisonResult>,
    /// A run's samples asked for in Samples.
    pub samples: Option<(i64, Pending<SamplesResult>)>,
}

impl Data {
    pub fn new(experiments_dir: PathBuf) -> Self {
        Data {
            experiments_dir,
            experiments: Vec::new(),
            snapshot: Snapshot::default(),
            live: HashMap::new(),
            running: BTreeSet::new(),
            sweeping: BTreeSet::new(),
            marked_runs: BTreeSet::new(),
            focus: None,
            comparison: Pending::None,
            samples: None,
        }
    }

    /// The run in focus, else the newest one.
    pub fn focused_run(&self) -> Option<i64> {
        self.focus
            .or_else(|| self.snapshot.runs.iter().map(|r| r.id).max())
    }

    pub fn run(&self, id: i64) -> Option<&RunRow> {
        self.snapshot.runs.iter().find(|r| r.id == id)
    }

    /// The seed group a run belongs to, and the group's runs (oldest first).
    pub fn seed_group(&self, id: i64) -> Option<(i64, Vec<i64>)> {
        let group = self.run(id)?.sweep_id?;
        self.snapshot
            .sweeps
            .iter()
            .any(|s| s.id == group && s.kind == crate::status::SweepKind::Seeds)
            .then_some(())?;
        let mut members: Vec<i64> = self
            .snapshot
            .runs
            .iter()
            .filter(|r| r.sweep_id == Some(group))
            .map(|r| r.id)
            .collect();
        members.sort();
        Some((group, members))
    }

    /// Training in this session: single runs and sweep workers.
    pub fn busy(&self) -> bool {
        !self.running.is_empty() || !self.sweeping.is_empty()
    }
}

/// A finished comparison, or why there is none.
pub type ComparisonResult = Result<Box<crate::compare::Comparison>, String>;
/// A run's samples, or why there are none.
pub type SamplesResult = Result<Box<crate::samples::Samples>, String>;
