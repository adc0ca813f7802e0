//! Checkpoints: weights and optimizer files written atomically (temp file, fsync, rename) with
//! their sha256, the model card beside them, where training stands ([`TrainState`]), and a
//! checkpoint named on the command line (`resolve`). [`RunFolder`] owns a run folder's files.

mod folder;

pub use folder::{RunFile, RunFolder};

use crate::model::{MobileVit, ModelConfig};
use crate::registry::{CheckpointRow, Place, RunRow};
use crate::status::CheckpointKind;
use anyhow::{Context, Result, bail};
use burn::optim::ModuleOptimizer;
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelCard {
    pub model: ModelConfig,
    pub classes: Vec<String>,
}

/// Where a run stands after an epoch: enough to resume it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainState {
    pub epochs_done: usize,
    pub global_step: usize,
    pub best_metric: Option<f64>,
    pub best_epoch: usize,
    pub epochs_without_improvement: usize,
    /// `last.bpk` holds a moving average of the weights, and the trained ones are in
    /// `last.train.bpk` (absent in the state files of earlier versions: false).
    #[serde(default)]
    pub averaged: bool,
    /// The sha256 of the files saved with it that the registry does not record (the optimizer's
    /// state, the trained weights), by file name: checked before a resume trusts them.
    #[serde(default)]
    pub sha256: std::collections::BTreeMap<String, String>,
}

pub use crate::artifacts::write_atomic;

pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// Refuses a file whose bytes are not the ones recorded for it.
pub fn verify(path: &Path, expected: &str) -> Result<()> {
    let actual = sha256_file(path)?;
    if actual != expected {
        bail!(
            "{}: sha256 {actual} does not match the recorded {expected}; the file was changed or is corrupt",
            path.display()
        );
    }
    Ok(())
}

pub fn save_model(model: &MobileVit, path: &Path) -> Result<String> {
    // `valid` also applies BatchNorm's last running-statistics update, which burn keeps aside
    // until the next one: without it a resumed run would start from the step before.
    let bytes = model
        .valid()
        .into_record()
        .into_bytes()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    write_atomic(path, &bytes)
}

pub fn save_optimizer(optim: &ModuleOptimizer, path: &Path) -> Result<String> {
    let bytes = optim.into_bytes().map_err(|e| anyhow::anyhow!("{e}"))?;
    write_atomic(path, &bytes)
}

pub fn load_weights(model: MobileVit, path: &Path) -> Result<MobileVit> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read checkpoint {}", path.display()))?;
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes))
        .map_err(|e| anyhow::anyhow!("{}: not a checkpoint: {e}", path.display()))?;
    let model = model
        .try_load_record(record)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if !crate::model::all_finite(&model) {
        bail!(
            "{}: holds weights that are not finite numbers; it is corrupt or from a diverged run",
            path.display()
        );
    }
    Ok(model)
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<String> {
    write_atomic(path, serde_json::to_string_pretty(value)?.as_bytes())
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
}

/// A checkpoint file with the model card next to it, loaded into a model on `device`.
pub struct Loaded {
    pub model: MobileVit,
    pub card: ModelCard,
    pub path: PathBuf,
}

pub fn card_path(checkpoint: &Path) -> PathBuf {
    checkpoint
        .parent()
        .unwrap_or(Path::new("."))
        .join(RunFile::Card.name())
}

pub fn load(checkpoint: &Path, device: &Device) -> Result<Loaded> {
    if !checkpoint.is_file() {
        bail!("checkpoint {} does not exist", checkpoint.display());
    }
    let card: ModelCard = read_json(&card_path(checkpoint))
        .with_context(|| format!("{} has no model.json beside it", checkpoint.display()))?;
    let model = load_weights(card.model.init(device), checkpoint)?;
    Ok(Loaded {
        model,
        card,
        path: checkpoint.to_path_buf(),
    })
}

/// The checkpoint a run is judged by: its best, or its last while it has no best.
pub fn best_or_last(checkpoints: &[CheckpointRow]) -> Option<&CheckpointRow> {
    let pick = |kind| checkpoints.iter().find(|c| c.kind == kind);
    pick(CheckpointKind::Best).or_else(|| pick(CheckpointKind::Last))
}

/// What a command line names a checkpoint by: a run id (its best checkpoint, else its last) or
/// a `.bpk` file. Returns a local file (downloaded and checked when the run's artifacts are in
/// an object store) and, for a run id, the run.
pub fn resolve(db: &Place, target: &str) -> Result<(PathBuf, Option<RunRow>)> {
    let as_path = PathBuf::from(target);
    if as_path.is_file() {
        // A file of a run folder this registry records is checked against its record.
        let full = std::path::absolute(&as_path).unwrap_or_else(|_| as_path.clone());
        if let Ok(reg) = db.open()
            && let Some(ck) = reg.checkpoint_at(&full.display().to_string())?
        {
            verify(&as_path, &ck.sha256)?;
            return Ok((as_path, reg.run(ck.run_id).ok()));
        }
        return Ok((as_path, None));
    }
    let id: i64 = target
        .parse()
        .with_context(|| format!("{target} is neither a checkpoint file nor a run id"))?;
    let reg = db.open()?;
    let run = reg.run(id)?;
    let cks = reg.checkpoints(id)?;
    match best_or_last(&cks) {
        Some(c) => Ok((RunFolder::new(&reg.artifacts, id).local_copy(c)?, Some(run))),
        None => bail!("run {id} has no checkpoint yet"),
    }
}
