//! One training run: `(RunSpec, events, cancel) -> Outcome`. The loop steps the model on
//! batches from `data`, reports everything as [`RunEvent`]s, keeps the best and last
//! checkpoints, and finally evaluates the best weights on val as the reference does.

use crate::checkpoint::{self, ModelCard, TrainState};
use crate::config::ExperimentConfig;
use crate::data::loader::{Batch, Loader, LoaderOptions};
use crate::data::{self, Dataset};
use crate::model::{MobileVit, ModelConfig, timm};
use anyhow::{Context, Result};
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::Instant;

#[derive(Debug, Clone, Serialize)]
pub enum RunEvent {
    Started {
        device: String,
        train_images: usize,
        val_images: usize,
        batches_per_epoch: usize,
        epochs: usize,
        start_epoch: usize,
        classes: Vec<String>,
        run_dir: String,
    },
    Step {
        epoch: usize,
        step: usize,
        batch: usize,
        batches: usize,
        loss: f64,
        accuracy: f64,
        images_per_s: f64,
    },
    Epoch(EpochSummary),
    Checkpoint {
        epoch: usize,
        kind: String,
        path: String,
        sha256: String,
        metrics: String,
    },
    Log {
        level: String,
        message: String,
    },
    Finished(Outcome),
}

#[derive(Debug, Clone, Serialize)]
pub struct EpochSummary {
    pub epoch: usize,
    pub step: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub lr: f64,
    pub seconds: f64,
    pub images_per_s: f64,
    pub best_metric: f64,
    pub best_epoch: usize,
}

#[derive(Debug, Clone, Serialize)]
pub enum Outcome {
    Completed {
        best_metric: f64,
        best_epoch: usize,
        final_val_accuracy: f64,
        final_val_loss: f64,
        early_stopped: bool,
    },
    Failed(String),
    Cancelled {
        epochs_done: usize,
    },
    Pruned {
        epochs_done: usize,
    },
}

/// Decides after each epoch, from the epoch and its monitored value, whether to prune the run.
pub type EpochJudge = Arc<dyn Fn(usize, f64) -> Option<String> + Send + Sync>;

/// Stops a run between steps: `cancel` keeps it resumable, `prune` (or the judge) ends it for good.
#[derive(Clone, Default)]
pub struct Control {
    pub cancel: Arc<AtomicBool>,
    pub prune: Arc<AtomicBool>,
    pub judge: Option<EpochJudge>,
}

pub struct RunSpec {
    pub config: ExperimentConfig,
    pub run_dir: PathBuf,
    /// Continue from `run_dir`'s last checkpoint.
    pub resume: bool,
}

/// Cross-entropy against label-smoothed one-hot targets, as Keras computes it.
pub fn smoothed_cross_entropy(
    logits: Tensor<2>,
    labels: Tensor<1, Int>,
    smoothing: f64,
) -> Tensor<1> {
    let [_, classes] = logits.dims();
    let target = labels
        .one_hot::<2>(classes)
        .float()
        .mul_scalar(1.0 - smoothing)
        .add_scalar(smoothing / classes as f64);
    (target * log_softmax(logits, 1)).sum_dim(1).mean().neg()
}

pub fn batch_tensors(batch: Batch, device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
    let n = batch.len();
    let s = batch.size;
    let images = Tensor::<4>::from_data(TensorData::new(batch.images, [n, 3, s, s]), device);
    let labels = Tensor::<1, Int>::from_data(TensorData::new(batch.labels, [n]), device);
    (images, labels)
}

fn correct(logits: &Tensor<2>, labels: &Tensor<1, Int>) -> usize {
    let pred = logits.clone().argmax(1).squeeze_dim::<1>(1);
    pred.equal(labels.clone()).int().sum().into_scalar::<i64>() as usize
}

pub fn loader_options(c: &ExperimentConfig, train: bool) -> LoaderOptions {
    let d = &c.data;
    let augment = train && d.augment;
    LoaderOptions {
        image_size: d.image_size,
        resize_bigger: if augment {
            d.resize_bigger
        } else {
            d.image_size
        },
        augment,
        batch_size: c.train.batch_size,
        shuffle: train,
        seed: c.train.seed,
        workers: d.workers,
        prefetch: d.prefetch,
        cache_mb: d.cache_mb,
    }
}

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
        let indices = batch.indices.clone();
        let truth = batch.labels.clone();
        let n = batch.len();
        let (images, labels) = batch_tensors(batch, device);
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

fn emit(events: &Sender<RunEvent>, e: RunEvent) {
    let _ = events.send(e);
}

fn log(events: &Sender<RunEvent>, level: &str, message: String) {
    emit(
        events,
        RunEvent::Log {
            level: level.into(),
            message,
        },
    );
}

/// Runs training to its end and reports the outcome (also as the last event).
pub fn run(
    spec: &RunSpec,
    device: &crate::device::Selected,
    events: &Sender<RunEvent>,
    control: &Control,
) -> Outcome {
    let outcome = match run_inner(spec, device, events, control) {
        Ok(o) => o,
        Err(e) => Outcome::Failed(format!("{e:#}")),
    };
    emit(events, RunEvent::Finished(outcome.clone()));
    outcome
}

fn report_bad_images(loader: &Loader, reported: &mut usize, events: &Sender<RunEvent>) {
    let bad = loader.cache().bad();
    for (path, reason) in bad.iter().skip(*reported) {
        log(
            events,
            "warn",
            format!("skipped unreadable image {}: {reason}", path.display()),
        );
    }
    *reported = bad.len();
}

fn run_inner(
    spec: &RunSpec,
    selected: &crate::device::Selected,
    events: &Sender<RunEvent>,
    control: &Control,
) -> Result<Outcome> {
    let c = &spec.config;
    let t = &c.train;
    let (train_set, val_set): (Dataset, Dataset) = data::load_splits(&c.data, t.seed)?;
    let classes = train_set.classes.clone();
    let model_cfg = ModelConfig::from_section(&c.model, classes.len(), c.data.image_size);
    std::fs::create_dir_all(&spec.run_dir)
        .with_context(|| format!("cannot create {}", spec.run_dir.display()))?;
    checkpoint::write_json(
        &spec.run_dir.join("model.json"),
        &ModelCard {
            model: model_cfg.clone(),
            classes: classes.clone(),
        },
    )?;

    let spill = spec.run_dir.join("cache");
    let train_loader = Loader::new(&train_set, loader_options(c, true), &spill)?;
    let val_loader = Loader::new(&val_set, loader_options(c, false), &spill)?;
    let device = selected.device.clone().autodiff();
    let plain = selected.device.clone();

    device.seed(t.seed);
    let mut model = model_cfg.init(&device);
    let mut optim = AdamConfig::new().with_epsilon(t.adam_eps as f32).init();
    let mut state = TrainState::default();
    let last_path = spec.run_dir.join("last.bpk");
    let optim_path = spec.run_dir.join("last.optim.bpk");
    let best_path = spec.run_dir.join("best.bpk");
    let state_path = spec.run_dir.join("state.json");
    if spec.resume && state_path.exists() {
        state = checkpoint::read_json(&state_path)?;
        model = checkpoint::load_weights(model, &last_path)?;
        optim = checkpoint::load_optimizer(optim, &optim_path)?;
        log(
            events,
            "info",
            format!(
                "resumed after epoch {} (step {})",
                state.epochs_done, state.global_step
            ),
        );
    } else if let Some(pretrained) = &c.model.pretrained {
        let (m, report) = timm::load(model, pretrained)?;
        model = m;
        log(
            events,
            "info",
            format!(
                "loaded {} tensors from {}{}",
                report.loaded,
                pretrained.display(),
                if report.head_reinitialised {
                    " (classifier re-initialised for this number of classes)"
                } else {
                    ""
                }
            ),
        );
    }

    emit(
        events,
        RunEvent::Started {
            device: selected.label.clone(),
            train_images: train_loader.len(),
            val_images: val_loader.len(),
            batches_per_epoch: train_loader.batches_per_epoch(),
            epochs: t.epochs,
            start_epoch: state.epochs_done + 1,
            classes: classes.clone(),
            run_dir: spec.run_dir.display().to_string(),
        },
    );
    log(
        events,
        "info",
        format!(
            "{}: {} train / {} val images, {} classes, {} on {}; decode cache {}",
            model_cfg.label(),
            train_loader.len(),
            val_loader.len(),
            classes.len(),
            c.data.image_size,
            selected.label,
            train_loader.cache().describe()
        ),
    );

    let maximize = c.checkpoint.mode == "max";
    let (mut reported_bad, mut reported_bad_val) = (0, 0);
    let mut early_stopped = false;
    for epoch in state.epochs_done + 1..=t.epochs {
        // Seeding per epoch makes a resumed run draw the same dropout masks as an uninterrupted one.
        device.seed(t.seed.wrapping_add(epoch as u64 * 7919));
        let started = Instant::now();
        let (mut loss_sum, mut right, mut seen) = (0.0f64, 0usize, 0usize);
        let batches = train_loader.batches_per_epoch();
        for (b, batch) in train_loader.epoch(epoch).into_iter().enumerate() {
            if control.cancel.load(Ordering::Relaxed) {
                return Ok(Outcome::Cancelled {
                    epochs_done: state.epochs_done,
                });
            }
            if control.prune.load(Ordering::Relaxed) {
                return Ok(Outcome::Pruned {
                    epochs_done: state.epochs_done,
                });
            }
            if batch.is_empty() {
                continue;
            }
            let step_start = Instant::now();
            let n = batch.len();
            let (images, labels) = batch_tensors(batch, &device);
            let logits = model.forward(images);
            let loss = smoothed_cross_entropy(logits.clone(), labels.clone(), t.label_smoothing);
            let loss_value = loss.clone().into_scalar::<f32>() as f64;
            state.global_step += 1;
            if !loss_value.is_finite() {
                anyhow::bail!(
                    "diverged at step {} (epoch {epoch}): loss is {loss_value}",
                    state.global_step
                );
            }
            let ok = correct(&logits, &labels);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(t.lr, model, grads);
            loss_sum += loss_value * n as f64;
            right += ok;
            seen += n;
            emit(
                events,
                RunEvent::Step {
                    epoch,
                    step: state.global_step,
                    batch: b + 1,
                    batches,
                    loss: loss_value,
                    accuracy: ok as f64 / n as f64,
                    images_per_s: n as f64 / step_start.elapsed().as_secs_f64(),
                },
            );
        }
        report_bad_images(&train_loader, &mut reported_bad, events);
        let train_seconds = started.elapsed().as_secs_f64();
        let ev = evaluate(
            &model,
            &val_loader,
            classes.len(),
            t.label_smoothing,
            &plain,
        );
        report_bad_images(&val_loader, &mut reported_bad_val, events);
        let train_loss = loss_sum / seen.max(1) as f64;
        let train_accuracy = right as f64 / seen.max(1) as f64;
        let monitored = match c.checkpoint.monitor.as_str() {
            "val_loss" => ev.loss,
            "train_loss" => train_loss,
            "train_accuracy" => train_accuracy,
            _ => ev.accuracy,
        };
        let improved = match state.best_metric {
            None => true,
            Some(best) => {
                if maximize {
                    monitored > best
                } else {
                    monitored < best
                }
            }
        };
        state.epochs_done = epoch;
        let metrics = serde_json::json!({
            "train_loss": train_loss, "train_accuracy": train_accuracy,
            "val_loss": ev.loss, "val_accuracy": ev.accuracy,
        })
        .to_string();
        if improved {
            state.best_metric = Some(monitored);
            state.best_epoch = epoch;
            state.epochs_without_improvement = 0;
            let sha = checkpoint::save_model(&model, &best_path)?;
            emit(
                events,
                RunEvent::Checkpoint {
                    epoch,
                    kind: "best".into(),
                    path: best_path.display().to_string(),
                    sha256: sha,
                    metrics: metrics.clone(),
                },
            );
        } else {
            state.epochs_without_improvement += 1;
        }
        // Weights, optimizer, then the state that points at them: a crash between leaves the previous epoch's state.
        let sha = checkpoint::save_model(&model, &last_path)?;
        checkpoint::save_optimizer(&optim, &optim_path)?;
        checkpoint::write_json(&state_path, &state)?;
        emit(
            events,
            RunEvent::Checkpoint {
                epoch,
                kind: "last".into(),
                path: last_path.display().to_string(),
                sha256: sha,
                metrics,
            },
        );
        emit(
            events,
            RunEvent::Epoch(EpochSummary {
                epoch,
                step: state.global_step,
                train_loss,
                train_accuracy,
                val_loss: ev.loss,
                val_accuracy: ev.accuracy,
                lr: t.lr,
                seconds: started.elapsed().as_secs_f64(),
                images_per_s: seen as f64 / train_seconds,
                best_metric: state.best_metric.unwrap_or(monitored),
                best_epoch: state.best_epoch,
            }),
        );
        if let Some(reason) = control
            .judge
            .as_ref()
            .and_then(|judge| judge(epoch, monitored))
        {
            log(
                events,
                "info",
                format!("pruned after epoch {epoch}: {reason}"),
            );
            return Ok(Outcome::Pruned {
                epochs_done: state.epochs_done,
            });
        }
        if t.patience > 0 && state.epochs_without_improvement >= t.patience {
            log(
                events,
                "info",
                format!(
                    "early stop: no improvement of {} for {} epochs",
                    c.checkpoint.monitor, t.patience
                ),
            );
            early_stopped = true;
            break;
        }
    }

    // As the reference: evaluate the best weights on val.
    let best = checkpoint::load_weights(model_cfg.init(&plain), &best_path)?;
    let ev = evaluate(&best, &val_loader, classes.len(), t.label_smoothing, &plain);
    Ok(Outcome::Completed {
        best_metric: state.best_metric.unwrap_or(f64::NAN),
        best_epoch: state.best_epoch,
        final_val_accuracy: ev.accuracy,
        final_val_loss: ev.loss,
        early_stopped,
    })
}
