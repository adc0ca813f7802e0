//! A run's folder: the one place that names its files, knows which belong to a checkpoint of
//! each kind (averaged or not) and where training stands, and moves them between the local
//! folder a run trains in and the artifacts store (publish, fetch, forget, delete).

use super::{TrainState, read_json, write_json};
use crate::artifacts::Artifacts;
use crate::registry::CheckpointRow;
use crate::status::CheckpointKind;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// The files of a run folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunFile {
    /// `model.json`: how to rebuild the model, and its class names.
    Card,
    /// The weights with the best monitored value so far.
    Best,
    /// The weights at the end of the last finished epoch (the average, when one is kept).
    Last,
    /// The weights being trained, beside `Last` when that holds their moving average.
    Trained,
    /// The optimizer's state at the end of the last finished epoch.
    Optimizer,
    /// Where training stands ([`TrainState`]).
    State,
    /// Per-image training dynamics, one record per epoch (`dynamics::DynamicsFile`).
    Dynamics,
}

impl RunFile {
    pub fn name(self) -> &'static str {
        match self {
            RunFile::Card => "model.json",
            RunFile::Best => "best.bpk",
            RunFile::Last => "last.bpk",
            RunFile::Trained => "last.train.bpk",
            RunFile::Optimizer => "last.optim.bpk",
            RunFile::State => "state.json",
            RunFile::Dynamics => "dynamics.bin",
        }
    }

    /// The weights a checkpoint row of `kind` records.
    pub fn weights(kind: CheckpointKind) -> Self {
        match kind {
            CheckpointKind::Best => RunFile::Best,
            CheckpointKind::Last => RunFile::Last,
        }
    }

    /// The files stored for a checkpoint of `kind`: its weights first (the file its row
    /// records, with their sha256), then what travels with them. The weights being trained
    /// travel with the last checkpoint when it holds their moving average (`averaged`).
    pub fn of(kind: CheckpointKind, averaged: bool) -> Vec<RunFile> {
        match kind {
            CheckpointKind::Best => vec![RunFile::Best, RunFile::Card],
            CheckpointKind::Last if averaged => vec![
                RunFile::Last,
                RunFile::Optimizer,
                RunFile::State,
                RunFile::Trained,
                RunFile::Card,
            ],
            CheckpointKind::Last => vec![
                RunFile::Last,
                RunFile::Optimizer,
                RunFile::State,
                RunFile::Card,
            ],
        }
    }
}

/// In each run folder: whose it is.
const MARKER: &str = "owner.json";

#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Marker {
    registry: String,
    run: i64,
}

/// One run's folder: local (`<runs>/<id>` under the artifacts folder, or under the scratch folder
/// when the artifacts are in an object store) and, with an object store, its stored copy.
#[derive(Debug, Clone)]
pub struct RunFolder {
    run: i64,
    dir: PathBuf,
    store: Artifacts,
}

impl RunFolder {
    pub fn new(store: &Artifacts, run: i64) -> Self {
        Self {
            run,
            dir: store.local_run_dir(run),
            store: store.clone(),
        }
    }

    pub fn run(&self) -> i64 {
        self.run
    }

    /// The local folder the run trains in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, file: RunFile) -> PathBuf {
        self.dir.join(file.name())
    }

    /// Makes sure the local folder is this run's before anything is written into it: a folder
    /// with this registry's marker for this run is, a new or empty one gets the marker, and
    /// one without a marker (kept from before markers) is adopted when the checkpoints the
    /// registry records for the run are in it with their recorded sha256. Any other folder
    /// belongs to someone else and is refused, naming both.
    pub fn claim(&self, recorded: &[CheckpointRow]) -> Result<()> {
        let owner = self.store.owner();
        let marker = self.dir.join(MARKER);
        let mine = Marker {
            registry: owner.registry.clone(),
            run: self.run,
        };
        if marker.exists() {
            let found: Marker = read_json(&marker)?;
            if found == mine {
                return Ok(());
            }
            bail!(
                "run folder {} belongs to run {} of registry {}, not to run {} of this one ({}); \
                 it is left as it is: give this registry its own folder with --artifacts",
                self.dir.display(),
                found.run,
                found.registry,
                self.run,
                owner.registry
            );
        }
        // A write cut short (a kill between creating its temporary file and renaming it, the
        // marker's own included) leaves only a temporary file: that is not another run's work.
        let leftover = |e: &std::fs::DirEntry| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with('.') && name.ends_with(".tmp")
        };
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .filter(|e| !leftover(e))
                .count(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", self.dir.display()));
            }
        };
        if entries > 0 && !self.store.is_remote() {
            let ours = !recorded.is_empty()
                && recorded.iter().all(|ck| {
                    self.local_file(ck).starts_with(&self.dir)
                        && super::verify(&self.local_file(ck), &ck.sha256).is_ok()
                });
            if !ours {
                bail!(
                    "run folder {} has files but no owner's marker, and they are not run {}'s \
                     recorded checkpoints: another registry's run may have used it; move it \
                     away if it is not needed, or give this registry its own folder with --artifacts",
                    self.dir.display(),
                    self.run
                );
            }
        }
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        write_json(&marker, &mine).map(|_| ())
    }

    /// The files a checkpoint of `kind` overwrites in place (locally; an object store keeps
    /// each epoch's apart).
    fn overwritten(kind: CheckpointKind) -> &'static [RunFile] {
        match kind {
            CheckpointKind::Best => &[RunFile::Best],
            CheckpointKind::Last => &[
                RunFile::Last,
                RunFile::Trained,
                RunFile::Optimizer,
                RunFile::State,
            ],
        }
    }

    fn kept(&self, file: RunFile, epoch: usize) -> PathBuf {
        self.dir.join(format!("{}.e{epoch}", file.name()))
    }

    /// Before a checkpoint of `kind` replaces the files of the one of epoch `epoch`: they stay
    /// reachable (hard links, no copy) until the registry records their successor, so that a
    /// process killed in between leaves the recorded checkpoint whole.
    pub fn keep(&self, kind: CheckpointKind, epoch: usize) -> Result<()> {
        for &file in Self::overwritten(kind) {
            let (path, kept) = (self.path(file), self.kept(file, epoch));
            if !path.exists() {
                continue;
            }
            let _ = std::fs::remove_file(&kept);
            std::fs::hard_link(&path, &kept)
                .with_context(|| format!("cannot keep {} as {}", path.display(), kept.display()))?;
        }
        Ok(())
    }

    /// Once the registry records the checkpoint of `kind` at `epoch`: the kept files of earlier
    /// ones go. Files that are not there are no error.
    pub fn forget_kept(&self, kind: CheckpointKind, epoch: usize) {
        let Ok(listing) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in listing.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let old = Self::overwritten(kind).iter().any(|f| {
                name.strip_prefix(&format!("{}.e", f.name()))
                    .and_then(|e| e.parse::<usize>().ok())
                    .is_some_and(|e| e < epoch)
            });
            if old {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Puts back the recorded checkpoints whose files a killed process had begun to replace
    /// (the registry had not recorded the new ones): their kept files, when their sha256 is
    /// the recorded one.
    pub fn restore_recorded(&self, recorded: &[CheckpointRow]) -> Result<()> {
        if self.store.is_remote() {
            return Ok(());
        }
        for ck in recorded {
            let weights = RunFile::weights(ck.kind);
            if super::verify(&self.local_file(ck), &ck.sha256).is_ok()
                || self.local_file(ck) != self.path(weights)
            {
                continue;
            }
            let epoch = ck.epoch as usize;
            let kept = self.kept(weights, epoch);
            if super::verify(&kept, &ck.sha256).is_err() {
                continue; // fetch names the mismatch
            }
            for &file in Self::overwritten(ck.kind) {
                let kept = self.kept(file, epoch);
                if kept.exists() {
                    std::fs::rename(&kept, self.path(file)).with_context(|| {
                        format!("cannot put back {}", self.path(file).display())
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Where training stands: `None` for a folder without a state (nothing finished yet); an
    /// error, naming the file, for one that cannot be read or is not a state.
    pub fn state(&self) -> Result<Option<TrainState>> {
        let path = self.path(RunFile::State);
        if !path.exists() {
            return Ok(None);
        }
        read_json(&path).map(Some)
    }

    pub fn write_state(&self, state: &TrainState) -> Result<String> {
        write_json(&self.path(RunFile::State), state)
    }

    /// Makes a checkpoint's complete files durable: nothing to do for a local folder, an upload
    /// of each (retried) under a key of their own epoch with an object store, so that a recorded
    /// checkpoint always names a consistent set. Returns what the registry records for it: its
    /// weights' path or URL.
    pub fn publish(&self, kind: CheckpointKind, epoch: usize, averaged: bool) -> Result<String> {
        let files = RunFile::of(kind, averaged);
        if !self.store.is_remote() {
            return Ok(self.path(files[0]).display().to_string());
        }
        let mut recorded = Vec::new();
        for file in files {
            let rel = format!("{}-e{epoch}/{}", kind, file.name());
            recorded.push(self.store.publish(self.run, &self.path(file), &rel)?);
        }
        // The per-image dynamics travel with the last checkpoint, when they are recorded.
        let dynamics = self.path(RunFile::Dynamics);
        if kind == CheckpointKind::Last && dynamics.is_file() {
            let rel = format!("{kind}-e{epoch}/{}", RunFile::Dynamics.name());
            self.store.publish(self.run, &dynamics, &rel)?;
        }
        Ok(recorded.swap_remove(0))
    }

    /// Gets the recorded checkpoints' files into the local folder so that the run can continue
    /// here: downloaded from an object store (a run begun on another machine), and in every
    /// case the weights checked against their recorded sha256 before they are trusted.
    pub fn fetch(&self, recorded: &[CheckpointRow]) -> Result<()> {
        for ck in recorded {
            if !self.store.is_remote() {
                super::verify(&self.local_file(ck), &ck.sha256)
                    .with_context(|| format!("run {}: {} checkpoint", self.run, ck.kind))?;
                continue;
            }
            self.store
                .fetch(&ck.path, &self.dir, Some(&ck.sha256))
                .with_context(|| format!("run {}: {} checkpoint", self.run, ck.kind))?;
            for file in &RunFile::of(ck.kind, false)[1..] {
                self.store.fetch_sibling(&ck.path, file.name(), &self.dir)?;
            }
            if ck.kind == CheckpointKind::Last && self.state()?.is_some_and(|s| s.averaged) {
                self.store
                    .fetch_sibling(&ck.path, RunFile::Trained.name(), &self.dir)?;
            }
            if ck.kind == CheckpointKind::Last {
                // Runs recorded before dynamics existed have none: training then starts a file.
                self.store
                    .fetch_sibling(&ck.path, RunFile::Dynamics.name(), &self.dir)
                    .ok();
            }
        }
        Ok(())
    }

    /// A recorded checkpoint as a local file with its model card beside it, checked against
    /// its recorded sha256: the file itself in a local folder; with an object store, downloaded
    /// into a folder of its own under the local one.
    pub fn local_copy(&self, ck: &CheckpointRow) -> Result<PathBuf> {
        if !self.store.is_remote() {
            let file = self.local_file(ck);
            super::verify(&file, &ck.sha256)
                .with_context(|| format!("run {}: {} checkpoint", self.run, ck.kind))?;
            return Ok(file);
        }
        let dir = self.dir.join(format!("fetched-{}-e{}", ck.kind, ck.epoch));
        let file = self
            .store
            .fetch(&ck.path, &dir, Some(&ck.sha256))
            .with_context(|| format!("run {}: {} checkpoint", self.run, ck.kind))?;
        self.store
            .fetch_sibling(&ck.path, RunFile::Card.name(), &dir)?;
        Ok(file)
    }

    /// Where a recorded checkpoint of a local folder is: as recorded when that is an absolute
    /// path, else (rows of versions that recorded paths relative to where they ran) in this
    /// folder.
    fn local_file(&self, ck: &CheckpointRow) -> PathBuf {
        let recorded = PathBuf::from(&ck.path);
        if recorded.is_absolute() {
            recorded
        } else {
            self.path(RunFile::weights(ck.kind))
        }
    }

    /// Drops a superseded checkpoint's stored files (an object store keeps each epoch's files
    /// apart; local files are overwritten in place). Files that are not there are no error.
    pub fn forget(&self, superseded: &CheckpointRow) {
        let mut names: Vec<&str> = RunFile::of(superseded.kind, true)
            .into_iter()
            .map(RunFile::name)
            .collect();
        if superseded.kind == CheckpointKind::Last {
            names.push(RunFile::Dynamics.name());
        }
        self.store.forget(&superseded.path, &names);
    }

    /// The run's per-image dynamics as a local file: the run folder's, or with an object store
    /// the copy stored beside its last checkpoint.
    pub fn dynamics(&self, last: Option<&CheckpointRow>) -> Result<PathBuf> {
        let local = self.path(RunFile::Dynamics);
        if local.is_file() || !self.store.is_remote() {
            return Ok(local);
        }
        let Some(ck) = last else {
            bail!(
                "run {} has no checkpoint yet, so no recorded dynamics",
                self.run
            );
        };
        let dir = self.dir.join(format!("fetched-{}-e{}", ck.kind, ck.epoch));
        self.store
            .fetch_sibling(&ck.path, RunFile::Dynamics.name(), &dir)
            .with_context(|| format!("run {}: dynamics", self.run))
    }

    /// Deletes the run's files: the local folder, and every object under the run's prefix in
    /// an object store.
    pub fn delete(&self) -> Result<()> {
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir)
                .with_context(|| format!("cannot delete {}", self.dir.display()))?;
        }
        self.store.delete_run(self.run)
    }
}
