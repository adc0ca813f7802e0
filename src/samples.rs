//! Which training images of a run look mislabelled, and which the model kept forgetting: the
//! run's recorded per-image dynamics ([`crate::dynamics`]) joined with its train list, and the
//! label its best checkpoint prefers for each listed image.

use crate::checkpoint::RunFolder;
use crate::config;
use crate::data::Dataset;
use crate::dynamics::{self, DynamicsFile, ImageStats};
use crate::registry::{CheckpointRow, Registry};
use crate::status::CheckpointKind;
use anyhow::{Context, Result, bail};
use burn::prelude::Device;
use serde::Serialize;
use std::path::PathBuf;

/// One listed training image.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub path: PathBuf,
    /// The label the dataset gives it.
    pub label: String,
    /// The class the run's best checkpoint predicts for it (None when it could not be read).
    pub preferred: Option<String>,
    #[serde(flatten)]
    pub stats: ImageStats,
}

/// A run's listed training images.
#[derive(Debug, Clone, Serialize)]
pub struct Samples {
    pub run: i64,
    /// Epochs recorded.
    pub epochs: usize,
    pub images: usize,
    /// Lowest mean confidence in the given label first (hard to learn: likely mislabelled).
    pub suspects: Vec<Sample>,
    /// Most forgetting events first.
    pub forgotten: Vec<Sample>,
    /// Why `preferred` is missing, when the best checkpoint could not be used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preferred_unavailable: Option<String>,
}

/// The `top` likeliest mislabelled and most forgotten training images of `run`.
///
/// The dynamics are indexed by the run's train list, so the list is rebuilt from the run's
/// config and checked against the one recorded when the run was created: if the data changed
/// since, the indices would name the wrong images, and that is refused.
pub fn of_run(reg: &Registry, run: i64, top: usize, device: &Device) -> Result<Samples> {
    let row = reg.run(run)?;
    let cfg = row.recorded_config()?;
    // The dynamics name images by their index in this list.
    let (train, _) = row
        .recorded_splits(&cfg)
        .with_context(|| format!("run {run}: its recorded dynamics name images by that list"))?;
    let checkpoints = reg.checkpoints(run)?;
    let last = checkpoints.iter().find(|c| c.kind == CheckpointKind::Last);
    let folder = RunFolder::new(&reg.artifacts, run);
    let path = folder.dynamics(last)?;
    if !path.is_file() {
        bail!(
            "run {run} has no per-image dynamics ({} is missing): it trained before mvlab \
             recorded them, or has not finished an epoch",
            path.display()
        );
    }
    let (images, epochs) = DynamicsFile::read(&path)?;
    if images != train.items.len() {
        bail!(
            "run {run}: {} records {images} training images, but its train split has {}",
            path.display(),
            train.items.len()
        );
    }
    if epochs.is_empty() {
        bail!("run {run} has not finished an epoch: no dynamics recorded yet");
    }
    let stats = dynamics::image_stats(images, &epochs);
    // Images seen in fewer than half the epochs (unreadable ones) are not ranked.
    let min_epochs = epochs.len().div_ceil(2);
    let suspects: Vec<ImageStats> = dynamics::mislabel_suspects(&stats, top, min_epochs)
        .into_iter()
        .cloned()
        .collect();
    let forgotten: Vec<ImageStats> = dynamics::most_forgotten(&stats, top)
        .into_iter()
        .cloned()
        .collect();

    // The label the model prefers: the best checkpoint on the listed images.
    let mut listed: Vec<usize> = suspects.iter().chain(&forgotten).map(|s| s.index).collect();
    listed.sort_unstable();
    listed.dedup();
    let (preferred, preferred_unavailable) =
        match preferred_labels(reg, &checkpoints, &train, &listed, &cfg, device) {
            Ok(p) => (p, None),
            Err(e) => (Default::default(), Some(format!("{e:#}"))),
        };
    let sample = |s: ImageStats| {
        let item = &train.items[s.index];
        Sample {
            path: item.path.clone(),
            label: train.classes[item.label].clone(),
            preferred: preferred
                .get(&s.index)
                .map(|&c: &usize| train.classes[c].clone()),
            stats: s,
        }
    };
    Ok(Samples {
        run,
        epochs: epochs.len(),
        images,
        suspects: suspects.into_iter().map(sample).collect(),
        forgotten: forgotten.into_iter().map(sample).collect(),
        preferred_unavailable,
    })
}

/// Train-list index -> the class the run's best checkpoint predicts, for `indices`.
fn preferred_labels(
    reg: &Registry,
    checkpoints: &[CheckpointRow],
    train: &Dataset,
    indices: &[usize],
    cfg: &config::ExperimentConfig,
    device: &Device,
) -> Result<std::collections::HashMap<usize, usize>> {
    let Some(ck) = crate::checkpoint::best_or_last(checkpoints) else {
        bail!("no checkpoint recorded");
    };
    let path = RunFolder::new(&reg.artifacts, ck.run_id).local_copy(ck)?;
    let subset = Dataset {
        classes: train.classes.clone(),
        items: indices.iter().map(|&i| train.items[i].clone()).collect(),
        unreadable: Vec::new(),
    };
    if subset.items.is_empty() {
        return Ok(Default::default());
    }
    let eval = crate::eval::checkpoint_on(&path, &subset, cfg, device)?;
    Ok(eval
        .evaluation
        .predictions
        .iter()
        .filter_map(|&(item, class)| Some((*indices.get(item)?, class)))
        .collect())
}

/// The listing `mvlab samples` prints.
pub fn report(s: &Samples) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "run {}: {} training images, {} epochs of dynamics",
        s.run, s.images, s.epochs
    );
    if let Some(why) = &s.preferred_unavailable {
        let _ = writeln!(out, "(the labels the model prefers are not shown: {why})");
    }
    let _ = writeln!(
        out,
        "\nLikeliest mislabelled (lowest mean confidence in the given label):"
    );
    table(&mut out, &s.suspects);
    let _ = writeln!(out, "\nForgotten most often (right, then wrong later):");
    if s.forgotten.is_empty() {
        let _ = writeln!(out, "  none: no image was forgotten");
    } else {
        table(&mut out, &s.forgotten);
    }
    out
}

fn table(out: &mut String, rows: &[Sample]) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "  {:>6} {:>5} {:>5} {:>6} {:>6}  {:<14} {:<14} path",
        "index", "conf", "var", "right", "forgot", "label", "model prefers"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "  {:>6} {:>5.2} {:>5.2} {:>5.0}% {:>6}  {:<14} {:<14} {}",
            r.stats.index,
            r.stats.confidence,
            r.stats.variability,
            100.0 * r.stats.correctness,
            r.stats.forgetting,
            r.label,
            r.preferred.as_deref().unwrap_or("?"),
            r.path.display()
        );
    }
}
