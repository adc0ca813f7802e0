//! The deployed file measured, not the float model: an exported file run in the runtime that
//! will run it (tract in-process for ONNX, LiteRT for TFLite) on a run's val images, beside the
//! float model (burn) on the same images: its accuracy, the float model's, and how often the two
//! predict the same class; its batch-1 latency; the training images a full-integer file is
//! calibrated on. `mvlab export`, the sweep worker (at the end of each trial) and the dominated
//! pruning rule all measure through here, and a sweep is checked here before it is queued.

use super::latency::{self, Latency};
use super::litert::{self, Kernels, LiteRt};
use super::{Calibration, ExportFormat, ExportRequest, OnnxModel, Quantization};
use crate::checkpoint::ModelCard;
use crate::config::{DeployFormat, ExperimentConfig};
use crate::data::Dataset;
use crate::data::loader::Loader;
use crate::model::{MobileVit, ModelConfig};
use crate::registry::RunRow;
use anyhow::{Context, Result, bail};
use burn::prelude::*;
use serde::Serialize;
use std::path::Path;

/// Training images a sweep's full-integer TFLite file is calibrated on (`mvlab export
/// --calibrate` defaults to the same).
pub const CALIBRATION_IMAGES: usize = 200;

/// Images per call into the runtime: LiteRT runs in a child process per call, so batches are
/// large; the results do not depend on it (inference is per image).
const BATCH: usize = 64;

/// What a sweep deploys each trial as: the format, its quantization, and the file's name in
/// the run folder.
pub fn sweep_file(format: DeployFormat) -> (ExportFormat, Quantization, &'static str) {
    match format {
        DeployFormat::Onnx => (ExportFormat::Onnx, Quantization::Int8, "best.int8.onnx"),
        DeployFormat::Tflite => (ExportFormat::Tflite, Quantization::Int8, "best.int8.tflite"),
    }
}

/// An exported file loaded in the runtime that runs it.
pub enum Runtime {
    /// ONNX in tract, in this process.
    Tract(OnnxModel),
    /// TFLite in LiteRT (a python3 child process per call), with its default kernels: what an
    /// app gets.
    LiteRt(LiteRt),
}

impl Runtime {
    /// Loads `file` as `format` says; a TFLite file needs LiteRT installed (said first).
    pub fn load(file: &Path, format: ExportFormat) -> Result<Self> {
        match format {
            ExportFormat::Onnx => Ok(Self::Tract(OnnxModel::load(file)?)),
            ExportFormat::Tflite => {
                litert::available()?;
                Ok(Self::LiteRt(LiteRt::load(file)?))
            }
            ExportFormat::Safetensors => bail!(
                "{}: plain weights have no runtime of their own to measure them in",
                file.display()
            ),
        }
    }

    pub fn card(&self) -> &ModelCard {
        match self {
            Self::Tract(m) => &m.card,
            Self::LiteRt(m) => &m.card,
        }
    }

    /// The runtime's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Tract(_) => "tract",
            Self::LiteRt(_) => "LiteRT",
        }
    }

    /// Logits `[n, classes]` for `n` CHW images of the model's input size.
    pub fn logits(&self, images: &[f32], n: usize) -> Result<Vec<f32>> {
        match self {
            Self::Tract(m) => m.logits(images.to_vec(), n),
            Self::LiteRt(m) => m.logits(images, n, Kernels::Default),
        }
    }

    /// Batch-1 latency on one thread, as a phone app calls it: the median of
    /// [`latency::RUNS`] runs after [`latency::WARMUP`] untimed ones. Training in this process
    /// waits between its steps meanwhile.
    pub fn latency(&self) -> Result<Latency> {
        match self {
            Self::Tract(m) => latency::measure(m, latency::WARMUP, latency::RUNS),
            Self::LiteRt(m) => {
                let _quiet = crate::device::quiet_cpu()
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                m.latency(latency::WARMUP, latency::RUNS, 1)
            }
        }
    }
}

/// What a deployed file does on a set of labelled images, beside the float model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Deployed {
    pub size_bytes: u64,
    /// Images both were run on (unreadable ones are left out).
    pub images: usize,
    /// Top-1 accuracy of the file in its runtime.
    pub accuracy: f64,
    /// Top-1 accuracy of the float model (burn) on the same images.
    pub float_accuracy: f64,
    /// The share of the images on which the file and the float model predict the same class.
    pub agreement: f64,
}

/// Counts of right and agreeing predictions.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tally {
    pub images: usize,
    pub right: usize,
    pub float_right: usize,
    pub agree: usize,
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv { (i, v) } else { (bi, bv) }
        })
        .0
}

impl Tally {
    /// Adds a batch: its labels, and the float model's and the file's logits `[n, classes]`.
    pub fn add(&mut self, labels: &[i64], float_logits: &[f32], deployed_logits: &[f32]) {
        let n = labels.len();
        if n == 0 {
            return;
        }
        let classes = float_logits.len() / n;
        for (i, &label) in labels.iter().enumerate() {
            let row = i * classes..(i + 1) * classes;
            let (f, d) = (
                argmax(&float_logits[row.clone()]),
                argmax(&deployed_logits[row]),
            );
            self.images += 1;
            self.right += usize::from(d as i64 == label);
            self.float_right += usize::from(f as i64 == label);
            self.agree += usize::from(d == f);
        }
    }

    pub fn deployed(&self, size_bytes: u64) -> Deployed {
        let share = |k: usize| {
            if self.images == 0 {
                0.0
            } else {
                k as f64 / self.images as f64
            }
        };
        Deployed {
            size_bytes,
            images: self.images,
            accuracy: share(self.right),
            float_accuracy: share(self.float_right),
            agreement: share(self.agree),
        }
    }
}

/// The float model's logits for `n` CHW images of `size` pixels.
fn float_logits(
    model: &MobileVit,
    images: &[f32],
    n: usize,
    size: usize,
    device: &Device,
) -> Vec<f32> {
    let _batch = crate::device::quiet_cpu().read();
    let x = Tensor::<4>::from_data(TensorData::new(images.to_vec(), [n, 3, size, size]), device);
    model
        .forward(x)
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 logits")
}

/// The file `file`, loaded in `runtime`, and the float model `model` (on `device`) over
/// `dataset` loaded as evaluation loads it with `config`'s settings; `progress` is told how
/// many images each batch held.
pub fn measure(
    file: &Path,
    runtime: &Runtime,
    model: &MobileVit,
    dataset: &Dataset,
    config: &ExperimentConfig,
    device: &Device,
    progress: &dyn Fn(usize),
) -> Result<Deployed> {
    let card = runtime.card();
    if dataset.classes != card.classes {
        bail!(
            "{} was exported with classes {:?}; the images have {:?}",
            file.display(),
            card.classes,
            dataset.classes
        );
    }
    let size = card.model.image_size;
    let size_bytes = std::fs::metadata(file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .len();
    let mut options = crate::eval::loader_options(config, size);
    options.batch_size = BATCH;
    let loader = Loader::new(dataset, options, &std::env::temp_dir())?;
    let inference = model.for_inference();
    let mut tally = Tally::default();
    for batch in loader.epoch(0) {
        if batch.is_empty() {
            continue;
        }
        let n = batch.len();
        let float = float_logits(&inference, &batch.images, n, size, device);
        let deployed = runtime
            .logits(&batch.images, n)
            .with_context(|| format!("{} in {}", file.display(), runtime.name()))?;
        if deployed.len() != float.len() {
            bail!(
                "{} gave {} logits for {n} images; the float model {}",
                runtime.name(),
                deployed.len(),
                float.len()
            );
        }
        tally.add(&batch.labels, &float, &deployed);
        progress(n);
    }
    if tally.images == 0 {
        bail!("none of the {} images could be read", dataset.items.len());
    }
    Ok(tally.deployed(size_bytes))
}

/// `n` images of `dataset` (spread evenly over it, so every class is in), loaded as evaluation
/// loads them at the model's `size`: what a full-integer TFLite file calibrates its activation
/// ranges on.
pub fn calibration(
    dataset: &Dataset,
    config: &ExperimentConfig,
    size: usize,
    n: usize,
) -> Result<Calibration> {
    let len = dataset.items.len();
    let picked: Vec<_> = if n >= len {
        dataset.items.clone()
    } else {
        (0..n).map(|i| dataset.items[i * len / n].clone()).collect()
    };
    let subset = Dataset {
        classes: dataset.classes.clone(),
        items: picked,
        unreadable: Vec::new(),
    };
    let mut options = crate::eval::loader_options(config, size);
    options.batch_size = BATCH;
    let loader = Loader::new(&subset, options, &std::env::temp_dir())?;
    let mut images = Vec::new();
    let mut count = 0;
    for batch in loader.epoch(0) {
        count += batch.len();
        images.extend(batch.images);
    }
    if count == 0 {
        bail!("no readable training image to calibrate on (of {len})");
    }
    Ok(Calibration { images, n: count })
}

/// A sweep trial's deployed file, measured.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub latency: Latency,
    pub size_bytes: u64,
    /// Its accuracy on the run's val split beside the float model's (when asked for).
    pub deployed: Option<Deployed>,
}

/// Exports the checkpoint `weights` (its model card beside it) of `run` as the sweep's
/// `format` to `out` (a full-integer TFLite file calibrated on [`CALIBRATION_IMAGES`] of the
/// run's training images), then measures the file in its runtime: batch-1 latency, size and,
/// with `accuracy`, val accuracy and agreement with the float model on the run's val split.
pub fn sweep_checkpoint(
    weights: &Path,
    run: &RunRow,
    format: DeployFormat,
    out: &Path,
    accuracy: bool,
) -> Result<Measured> {
    let (export_format, kind, _) = sweep_file(format);
    // A file that could not be run is not exported at all.
    if export_format == ExportFormat::Tflite {
        litert::available().context("the TFLite file cannot be run here")?;
    }
    let device = Device::flex();
    let loaded = crate::checkpoint::load(weights, &device)?;
    let config = run.recorded_config()?;
    let splits = if accuracy || kind == Quantization::Int8 && export_format == ExportFormat::Tflite
    {
        Some(run.recorded_splits(&config)?)
    } else {
        None
    };
    let size = loaded.card.model.image_size;
    let calibration = match (&splits, export_format, kind) {
        (Some((train, _)), ExportFormat::Tflite, Quantization::Int8) => Some(
            calibration(train, &config, size, CALIBRATION_IMAGES)
                .context("calibrating the TFLite file")?,
        ),
        _ => None,
    };
    let request = ExportRequest {
        format: export_format,
        quantize: Some(kind),
        calibration: calibration.as_ref(),
    };
    let size_bytes = super::export(&loaded.model, &loaded.card, &request, out)?;
    let runtime = Runtime::load(out, export_format)?;
    let latency = runtime.latency()?;
    let deployed = match (&splits, accuracy) {
        (Some((_, val)), true) => Some(measure(
            out,
            &runtime,
            &loaded.model,
            val,
            &config,
            &device,
            &|_| {},
        )?),
        _ => None,
    };
    Ok(Measured {
        latency,
        size_bytes,
        deployed,
    })
}

/// Whether a sweep deploying as `format` can measure a trial of architecture `model`: a
/// model of fresh weights exported as the sweep would (to a temporary folder) and run on one
/// image in the format's runtime. Err says why not.
pub fn check_measurable(format: DeployFormat, model: &ModelConfig) -> Result<()> {
    let (export_format, kind, name) = sweep_file(format);
    let device = Device::flex();
    let net = model.init(&device);
    let card = ModelCard {
        model: model.clone(),
        classes: (0..model.num_classes).map(|i| format!("c{i}")).collect(),
    };
    let s = model.image_size;
    let image: Vec<f32> = (0..3 * s * s).map(|i| (i % 251) as f32 / 251.0).collect();
    let calibration = Calibration {
        images: [image.clone(), image.iter().map(|v| 1.0 - v).collect()].concat(),
        n: 2,
    };
    let request = ExportRequest {
        format: export_format,
        quantize: Some(kind),
        calibration: (export_format == ExportFormat::Tflite).then_some(&calibration),
    };
    let dir = tempfile::tempdir()?;
    let out = dir.path().join(name);
    super::export(&net, &card, &request, &out)?;
    let runtime = Runtime::load(&out, export_format)?;
    let logits = runtime.logits(&image, 1)?;
    if logits.len() != model.num_classes || !logits.iter().all(|v| v.is_finite()) {
        bail!(
            "{} gave {logits:?} for one image of {} classes",
            runtime.name(),
            model.num_classes
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tally_counts_accuracy_and_agreement_on_the_same_images() {
        let mut t = Tally::default();
        // Three images of two classes: the file agrees with the float model on two of them.
        let labels = [0, 1, 1];
        let float = [2.0, 1.0, 0.0, 3.0, 0.0, 1.0];
        let deployed = [1.5, 1.0, 0.5, 0.0, 0.0, 1.0];
        t.add(&labels, &float, &deployed);
        assert_eq!(
            t,
            Tally {
                images: 3,
                right: 2,
                float_right: 3,
                agree: 2
            }
        );
        let d = t.deployed(10);
        assert_eq!((d.images, d.size_bytes), (3, 10));
        assert!((d.accuracy - 2.0 / 3.0).abs() < 1e-12 && d.float_accuracy == 1.0);
        assert!((d.agreement - 2.0 / 3.0).abs() < 1e-12);
        t.add(&[], &[], &[]);
        assert_eq!(t.images, 3);
    }

    #[test]
    fn onnx_measures_every_image_size_and_tflite_is_its_own_file() {
        let mut model = ModelConfig::tiny();
        for size in [32, 48, 64] {
            model.image_size = size;
            check_measurable(DeployFormat::Onnx, &model).unwrap();
        }
        assert_eq!(sweep_file(DeployFormat::Tflite).2, "best.int8.tflite");
        assert_eq!(
            sweep_file(DeployFormat::Onnx).1,
            Quantization::Int8,
            "onnx deploys its int8 weight-only file"
        );
    }
}
