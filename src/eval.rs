//! Evaluation in one place: a model over a loader (loss, accuracy, confusion), a stored checkpoint
//! on an image folder or on its run's val split, and two checkpoints side by side on the same
//! images. Training, `mvlab eval` and the workbench's Checkpoints view all come here.

use crate::checkpoint::{self, Loaded};
use crate::config::{self, ExperimentConfig};
use crate::data::loader::{Loader, LoaderOptions};
use crate::data::{self, Dataset};
use crate::model::MobileVit;
use crate::model::loss::smoothed_cross_entropy;
use crate::registry::RunRow;
use anyhow::{Result, bail};
use burn::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Results of running a model over a dataset.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub loss: f64,
    pub accuracy: f64,
    pub images: usize,
    /// confusion[true][predicted]
    pub confusion: Vec<Vec<usize>>,
    /// (item index, predicted class) for every image evaluated.
    pub predictions: Vec<(usize, usize)>,
}

impl Evaluation {
    pub fn per_class_accuracy(&self) -> Vec<Option<f64>> {
        self.confusion
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let n: usize = row.iter().sum();
                (n > 0).then(|| row[i] as f64 / n as f64)
            })
            .collect()
    }
}

/// The model in inference form (BatchNorm folded, no dropout) over every batch of `loader`.
pub fn evaluate(
    model: &MobileVit,
    loader: &Loader,
    classes: usize,
    smoothing: f64,
    device: &Device,
) -> Evaluation {
    let model = model.for_inference();
    let mut ev = Evaluation {
        loss: 0.0,
        accuracy: 0.0,
        images: 0,
        confusion: vec![vec![0; classes]; classes],
        predictions: Vec::new(),
    };
    let mut loss_sum = 0.0;
    for batch in loader.epoch(0) {
        if batch.is_empty() {
            continue;
        }
        let _batch = crate::device::quiet_cpu().read();
        let indices = batch.indices.clone();
        let truth = batch.labels.clone();
        let n = batch.len();
        let (images, labels) = batch.into_tensors(device);
        let logits = model.forward(images);
        loss_sum += smoothed_cross_entropy(logits.clone(), labels, smoothing).into_scalar::<f32>()
            as f64
            * n as f64;
        let pred = logits
            .argmax(1)
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .unwrap();
        for ((&i, &t), &p) in indices.iter().zip(&truth).zip(&pred) {
            ev.confusion[t as usize][p as usize] += 1;
            ev.predictions.push((i, p as usize));
        }
        ev.images += n;
    }
    if ev.images > 0 {
        let right: usize = (0..classes).map(|i| ev.confusion[i][i]).sum();
        ev.accuracy = right as f64 / ev.images as f64;
        ev.loss = loss_sum / ev.images as f64;
    }
    ev
}

/// A checkpoint evaluated on a dataset.
#[derive(Debug, Clone)]
pub struct CheckpointEvaluation {
    pub path: PathBuf,
    pub classes: Vec<String>,
    pub evaluation: Evaluation,
    /// Images that could not be read, with the reason; they are left out of the evaluation.
    pub skipped: Vec<(PathBuf, String)>,
}

/// A loaded checkpoint on `dataset`, at the checkpoint's image size with `config`'s loader
/// settings and label smoothing. The dataset's classes must be the model's.
fn loaded_on(
    loaded: &Loaded,
    dataset: &Dataset,
    config: &ExperimentConfig,
    device: &Device,
) -> Result<CheckpointEvaluation> {
    if dataset.classes != loaded.card.classes {
        bail!(
            "{} was trained on classes {:?}; the images have {:?}",
            loaded.path.display(),
            loaded.card.classes,
            dataset.classes
        );
    }
    let loader = Loader::new(
        dataset,
        loader_options(config, loaded.card.model.image_size),
        &std::env::temp_dir(),
    )?;
    let evaluation = evaluate(
        &loaded.model,
        &loader,
        dataset.classes.len(),
        config.train.label_smoothing,
        device,
    );
    Ok(CheckpointEvaluation {
        path: loaded.path.clone(),
        classes: dataset.classes.clone(),
        evaluation,
        skipped: loader.cache().bad(),
    })
}

/// How evaluation loads `config`'s images for a model of `image_size` pixels: resized to it,
/// not augmented, not shuffled (as training evaluates; `mvlab export` measures its files on the
/// same images).
pub fn loader_options(config: &ExperimentConfig, image_size: usize) -> LoaderOptions {
    let mut c = config.clone();
    c.data.image_size = image_size;
    LoaderOptions::for_experiment(&c, false)
}

/// The settings a checkpoint file without a run is evaluated with: the defaults.
pub fn default_config() -> ExperimentConfig {
    config::parse("name = \"eval\"\n[data]\nroot = \".\"\n", &[]).expect("built-in config")
}

/// The images a checkpoint is evaluated on, with the settings to load them: an image folder
/// (`data`), or the val split of `run`; the run's config (or the defaults without one).
pub fn images(run: Option<&RunRow>, data: Option<&Path>) -> Result<(Dataset, ExperimentConfig)> {
    let config = match run {
        Some(r) => r.recorded_config()?,
        None => default_config(),
    };
    let dataset = match (data, run) {
        (Some(dir), _) => data::scan(dir)?,
        (None, Some(r)) => r.recorded_splits(&config)?.1,
        (None, None) => bail!("evaluating a checkpoint file needs --data DIR"),
    };
    Ok((dataset, config))
}

/// The checkpoint file `path` on `dataset`, loaded as `config` says.
pub fn checkpoint_on(
    path: &Path,
    dataset: &Dataset,
    config: &ExperimentConfig,
    device: &Device,
) -> Result<CheckpointEvaluation> {
    let loaded = checkpoint::load(path, device)?;
    loaded_on(&loaded, dataset, config, device)
}

/// A checkpoint on an image folder (`data`), or on the val split of the run it belongs to.
pub fn checkpoint(
    path: &Path,
    run: Option<&RunRow>,
    data: Option<&Path>,
    device: &Device,
) -> Result<CheckpointEvaluation> {
    let (dataset, config) = images(run, data)?;
    checkpoint_on(path, &dataset, &config, device)
}
