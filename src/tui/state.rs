//! What the workbench's parts share: the data every view reads ([`Data`]), what a key means
//! ([`Action`]) and the work it may ask for ([`Command`]).

use super::background::{ExperimentEntry, Snapshot};
use super::layout::Tab;
use crate::registry::{CheckpointRow, RunRow};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Instant;

/// What a key means, as a view or the app's own keys say it.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Show(Tab),
    /// Follow this run in the Run view.
    OpenRun(i64),
    /// Mark or unmark a run for the Compare view.
    ToggleCompare(i64),
    /// Mark these runs (a seed group) for the Compare view, or unmark them all when they are
    /// all marked.
    ToggleCompareAll(Vec<i64>),
    /// Ask before deleting a run.
    AskDelete(i64),
    Help,
    /// Leave, asking first while this session trains.
    AskQuit,
    /// Close the dialog: confirmed or not.
    Confirm(bool),
    /// Say something on the status line.
    Say(String),
    /// Work beyond the screen.
    Do(Command),
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

/// What every view reads: the registry as last read, the experiment files, and what this
/// session is training.
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
}

impl Data {
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
