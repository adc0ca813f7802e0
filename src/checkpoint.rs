//! Checkpoint files in a run folder: `model.json` (how to rebuild the model, class names),
//! `best.bpk` / `last.bpk` (weights), `last.optim.bpk` (Adam state) and `state.json` (where
//! training stands). Every file is written atomically: temp file, fsync, rename.

use crate::model::{MobileVit, ModelConfig};
use crate::registry::{Place, RunRow};
use crate::status::CheckpointKind;
use anyhow::{Context, Result, bail};
use burn::optim::ModuleOptimizer;
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write;
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
}

/// Writes bytes atomically and returns their sha256.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    {
        let mut f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot move {} into place", path.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(hex::encode(Sha256::digest(bytes)))
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

pub fn save_model(model: &MobileVit, path: &Path) -> Result<String> {
    let bytes = model
        .clone()
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
    model
        .try_load_record(record)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

pub fn load_optimizer(optim: ModuleOptimizer, path: &Path) -> Result<ModuleOptimizer> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    optim
        .from_bytes(Bytes::from_bytes_vec(bytes))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
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
        .join("model.json")
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

/// What a command line names a checkpoint by: a run id (its best checkpoint, else its last) or
/// a `.bpk` file. Returns the file and, for a run id, the run.
pub fn resolve(db: &Place, target: &str) -> Result<(PathBuf, Option<RunRow>)> {
    let as_path = PathBuf::from(target);
    if as_path.is_file() {
        return Ok((as_path, None));
    }
    let id: i64 = target
        .parse()
        .with_context(|| format!("{target} is neither a checkpoint file nor a run id"))?;
    let reg = db.open()?;
    let run = reg.run(id)?;
    let cks = reg.checkpoints(id)?;
    let pick = |kind| cks.iter().find(|c| c.kind == kind);
    match pick(CheckpointKind::Best).or_else(|| pick(CheckpointKind::Last)) {
        Some(c) => Ok((PathBuf::from(&c.path), Some(run))),
        None => bail!("run {id} has no checkpoint yet"),
    }
}
