//! One training run: `(RunSpec, events, control) -> Outcome`. [`Session::setup`] builds the
//! loaders and takes the weights from `start` (fresh, pretrained or resumed);
//! [`Session::train_epoch`] steps the model through one epoch; [`Session::finish_epoch`]
//! evaluates and asks `policy` what to keep, which `save_checkpoints` writes;
//! [`run`] loops them and finally evaluates the best weights on val, as the reference does.
//! Everything is reported as [`RunEvent`]s. `schedule` gives each step's learning rate,
//! `health` tells when val predictions collapsed, `average` keeps the weights' moving average
//! that is evaluated and saved in place of the trained weights when `train.ema_decay` is set.

pub mod average;
#[cfg(feature = "cube")]
pub mod gpu_optim;
mod grads;
mod health;
pub mod optim;
mod policy;
pub mod schedule;
mod start;

use crate::checkpoint::{self, ModelCard, RunFile, RunFolder, TrainState};
use crate::config::ExperimentConfig;
use crate::data;
use crate::data::loader::{Loader, LoaderOptions};
use crate::eval::{Evaluation, evaluate};
use crate::model::loss::smoothed_cross_entropy;
use crate::model::{MobileVit, ModelConfig};
use crate::registry::CheckpointMetrics;
use crate::status::{CheckpointKind, LogLevel};
use anyhow::{Context, Result};
use average::WeightAverage;
use burn::prelude::*;
use serde::Serialize;
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
        /// The learning rate this step used.
        lr: f64,
        images_per_s: f64,
    },
    Epoch(EpochSummary),
    Checkpoint {
        epoch: usize,
        kind: CheckpointKind,
        path: String,
        sha256: String,
        metrics: CheckpointMetrics,
    },
    Log {
        level: LogLevel,
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
    /// The learning rate of the epoch's last step.
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
        /// Files of the dataset skipped as unreadable (entries and images), train and val.
        skipped: usize,
    },
    Failed(String),
    Cancelled {
        epochs_done: usize,
    },
    Pruned {
        epochs_done: usize,
        /// Why the sweep's rule stopped it.
        reason: String,
    },
}

/// One phrase for people: "completed (val accuracy 81.25%)", "pruned after epoch 3", ...
impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Completed {
                final_val_accuracy,
                early_stopped,
                ..
            } => write!(
                f,
                "completed{} (val accuracy {})",
                if *early_stopped { ", early stop" } else { "" },
                crate::fmt::percent(*final_val_accuracy)
            ),
            Outcome::Failed(e) => write!(f, "failed: {e}"),
            Outcome::Cancelled { epochs_done } => write!(f, "cancelled after epoch {epochs_done}"),
            Outcome::Pruned {
                epochs_done,
                reason,
            } => write!(f, "pruned after epoch {epochs_done}: {reason}"),
        }
    }
}

/// Decides after each epoch, from the epoch and its monitored value, whether to prune the run.
pub type EpochJudge = Arc<dyn Fn(usize, f64) -> Option<String> + Send + Sync>;

/// Whether the run still belongs to this worker (its lease holds), asked before an epoch's
/// checkpoint files are written.
pub type Ownership = Arc<dyn Fn() -> bool + Send + Sync>;

/// Stops a run: `cancel` between steps (the run stays resumable), the judge after an epoch
/// (pruned for good), `still_ours` before checkpoint files are written (a worker that lost its
/// lease must not overwrite the new owner's files).
#[derive(Clone, Default)]
pub struct Control {
    pub cancel: Arc<AtomicBool>,
    pub judge: Option<EpochJudge>,
    pub still_ours: Option<Ownership>,
}

pub struct RunSpec {
    pub config: ExperimentConfig,
    /// Where the run's files go (and, to resume, come from).
    pub folder: RunFolder,
    /// Continue from the folder's last checkpoint.
    pub resume: bool,
}

fn emit(events: &Sender<RunEvent>, e: RunEvent) {
    let _ = events.send(e);
}

fn log(events: &Sender<RunEvent>, level: LogLevel, message: String) {
    emit(events, RunEvent::Log { level, message });
}

/// Refuses a run whose training step would not fit in this machine's memory, with the estimate
/// (`model::summary::training_bytes`). On a GPU the step lives in the GPU's memory, which the
/// GPU itself reports when it runs short; here the host's is checked for runs on the CPU.
pub fn check_memory(config: &ExperimentConfig, classes: usize) -> Result<()> {
    use crate::device::DeviceChoice;
    let on_cpu = match DeviceChoice::parse(&config.train.device) {
        Ok(DeviceChoice::Cpu) => true,
        Ok(DeviceChoice::Auto) => !cfg!(any(feature = "cuda", feature = "vulkan")),
        _ => false,
    };
    let Some(available) = crate::device::host_memory_available().filter(|_| on_cpu) else {
        return Ok(());
    };
    let cfg = ModelConfig::from_section(&config.model, classes, config.data.image_size);
    let model = cfg.init(&Device::flex());
    let batch = config.train.batch_size;
    let needed = crate::model::summary::training_bytes(&model, &cfg, batch, false);
    if needed > available as u128 {
        let one = crate::model::summary::training_bytes(&model, &cfg, 1, false);
        anyhow::bail!(
            "a training step of {} at {} pixels with batch {batch} needs about {} (estimated), and {} is available; lower data.image_size{}",
            cfg.label(),
            cfg.image_size,
            crate::fmt::bytes(needed.min(u64::MAX as u128) as u64),
            crate::fmt::bytes(available),
            if one <= available as u128 {
                " or train.batch_size"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// Runs training to its end and reports the outcome (also as the last event).
pub fn run(
    spec: &RunSpec,
    device: &crate::device::Selected,
    events: &Sender<RunEvent>,
    control: &Control,
) -> Outcome {
    let outcome = match run_epochs(spec, device, events, control) {
        Ok(o) => o,
        Err(e) => Outcome::Failed(format!("{e:#}")),
    };
    emit(events, RunEvent::Finished(outcome.clone()));
    outcome
}

fn run_epochs(
    spec: &RunSpec,
    selected: &crate::device::Selected,
    events: &Sender<RunEvent>,
    control: &Control,
) -> Result<Outcome> {
    let (mut s, mut model) = Session::setup(spec, selected, events)?;
    let t = &spec.config.train;
    let mut early_stopped = false;
    for epoch in s.state.epochs_done + 1..=t.epochs {
        let (stepped, totals) = s.train_epoch(model, epoch, control, events)?;
        model = stepped;
        let Some(totals) = totals else {
            return Ok(Outcome::Cancelled {
                epochs_done: s.state.epochs_done,
            });
        };
        if control.still_ours.as_ref().is_some_and(|ours| !ours()) {
            return Ok(Outcome::Cancelled {
                epochs_done: s.state.epochs_done,
            });
        }
        let monitored = s.finish_epoch(&model, epoch, totals, events)?;
        if let Some(reason) = control
            .judge
            .as_ref()
            .and_then(|judge| judge(epoch, monitored))
        {
            log(
                events,
                LogLevel::Info,
                format!("pruned after epoch {epoch}: {reason}"),
            );
            return Ok(Outcome::Pruned {
                epochs_done: s.state.epochs_done,
                reason,
            });
        }
        if let Some(why) = s.policy().stop_early(&s.state) {
            log(events, LogLevel::Info, why);
            early_stopped = true;
            break;
        }
    }
    // As the reference: evaluate the best weights on val.
    let best = checkpoint::load_weights(s.model_cfg.init(&s.plain), &s.folder.path(RunFile::Best))?;
    let ev = s.evaluate(&best);
    Ok(Outcome::Completed {
        best_metric: s.state.best_metric.unwrap_or(f64::NAN),
        best_epoch: s.state.best_epoch,
        final_val_accuracy: ev.accuracy,
        final_val_loss: ev.loss,
        early_stopped,
        skipped: s.skipped(),
    })
}

/// What one epoch of steps added up to.
struct EpochTotals {
    loss_sum: f64,
    right: usize,
    seen: usize,
    last_lr: f64,
    started: Instant,
    train_seconds: f64,
}

/// A run between epochs: data, optimizer, and where training stands. The model is passed
/// through by value: the optimizer updates its parameters in place only when it holds the one
/// reference to them.
struct Session {
    config: ExperimentConfig,
    classes: Vec<String>,
    model_cfg: ModelConfig,
    train_loader: Loader,
    val_loader: Loader,
    /// The autodiff device training steps on, and the plain one evaluation runs on.
    device: Device,
    plain: Device,
    optim: optim::Optim,
    /// The moving average of the weights, evaluated in their place (`train.ema_decay`).
    average: Option<WeightAverage>,
    state: TrainState,
    /// The run's files: `Best` and `Last` hold the evaluated weights, `Trained` the weights
    /// being trained when they differ (a moving average is kept).
    folder: RunFolder,
    /// Unreadable images already reported, train and val.
    reported_bad: (usize, usize),
    /// Dataset entries that could not be listed at all (broken links, loops).
    unreadable_entries: usize,
    /// Where each epoch's per-image loss and margin go (none when the file is unusable).
    dynamics: Option<crate::dynamics::DynamicsFile>,
    /// Whether the dynamics' cost has been logged (once a session).
    dynamics_reported: bool,
    /// On cubecl devices, when the session started, until its first step is logged: that step
    /// compiles and autotunes kernels, the cold start people wait through.
    until_first_step: Option<Instant>,
}

impl Session {
    /// Loaders, model (fresh, pretrained or resumed), optimizer and training state.
    fn setup(
        spec: &RunSpec,
        selected: &crate::device::Selected,
        events: &Sender<RunEvent>,
    ) -> Result<(Self, MobileVit)> {
        let c = &spec.config;
        let t = &c.train;
        let (train_set, val_set) = data::load_splits(&c.data, c.split_seed())?;
        let classes = train_set.classes.clone();
        let model_cfg = ModelConfig::from_section(&c.model, classes.len(), c.data.image_size);
        let folder = spec.folder.clone();
        std::fs::create_dir_all(folder.dir())
            .with_context(|| format!("cannot create {}", folder.dir().display()))?;
        checkpoint::write_json(
            &folder.path(RunFile::Card),
            &ModelCard {
                model: model_cfg.clone(),
                classes: classes.clone(),
            },
        )?;
        let spill = folder.dir().join("cache");
        let train_loader = Loader::new(&train_set, LoaderOptions::for_experiment(c, true), &spill)?;
        let val_loader = Loader::new(&val_set, LoaderOptions::for_experiment(c, false), &spill)?;
        let device = selected.device.clone().autodiff();
        let plain = selected.device.clone();

        let start::Start {
            model,
            optim,
            state,
            average,
        } = start::weights(spec, &model_cfg, &device, &plain, events)?;
        let averaged = average.is_some();

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
                run_dir: folder.dir().display().to_string(),
            },
        );
        if let Some(note) = &selected.tuning {
            log(events, LogLevel::Info, note.clone());
        }
        log(
            events,
            LogLevel::Info,
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
        if averaged {
            log(
                events,
                LogLevel::Info,
                format!(
                    "evaluating and saving a moving average of the weights (decay {})",
                    t.ema_decay
                ),
            );
        }
        let dynamics = spec
            .config
            .train
            .dynamics
            .then(|| open_dynamics(&folder, train_set.items.len(), events))
            .flatten();
        for (path, reason) in train_set.unreadable.iter().chain(&val_set.unreadable) {
            log(
                events,
                LogLevel::Warn,
                format!("skipped unreadable entry {}: {reason}", path.display()),
            );
        }
        let session = Self {
            config: c.clone(),
            classes,
            model_cfg,
            train_loader,
            val_loader,
            device,
            plain,
            optim,
            average,
            state,
            folder,
            reported_bad: (0, 0),
            unreadable_entries: train_set.unreadable.len() + val_set.unreadable.len(),
            dynamics,
            dynamics_reported: false,
            until_first_step: selected.tuning.is_some().then(Instant::now),
        };
        Ok((session, model))
    }

    /// Steps the model through one epoch's batches. No totals when cancelled (between steps).
    fn train_epoch(
        &mut self,
        mut model: MobileVit,
        epoch: usize,
        control: &Control,
        events: &Sender<RunEvent>,
    ) -> Result<(MobileVit, Option<EpochTotals>)> {
        let t = &self.config.train;
        let started = Instant::now();
        let (mut loss_sum, mut right, mut seen) = (0.0f64, 0usize, 0usize);
        let batches = self.train_loader.batches_per_epoch();
        let mut last_lr = t.lr;
        let classes = self.classes.len();
        // This epoch's observations by train-list index, when the dynamics are recorded, and
        // the host time they cost (turning logits into observations, writing the file).
        let mut observed = self.dynamics.as_ref().map(|d| vec![None; d.images()]);
        let mut dynamics_seconds = 0.0;
        for (b, batch) in self.train_loader.epoch(epoch).into_iter().enumerate() {
            if control.cancel.load(Ordering::Relaxed) {
                return Ok((model, None));
            }
            let _step = crate::device::quiet_cpu().read();
            if batch.is_empty() {
                continue;
            }
            let step_start = Instant::now();
            let n = batch.len();
            let given: Option<(Vec<usize>, Vec<usize>)> = observed.is_some().then(|| {
                let labels = batch.labels.iter().map(|&l| l as usize).collect();
                (batch.indices.clone(), labels)
            });
            let (images, labels) = batch.into_tensors(&self.device);
            let lr = schedule::lr_at(t, self.state.global_step, batches);
            // The step's dropout masks from (seed, epoch, batch): a resumed run draws the
            // masks an uninterrupted one would, whatever trains beside it.
            let _masks = crate::model::draws::DropoutSeeds::for_step(t.seed, epoch, b);
            let logits = model.forward(images);
            let loss = smoothed_cross_entropy(logits.clone(), labels.clone(), t.label_smoothing);
            // Loss, right answers and the logits (per-image dynamics) are read back once, after
            // the whole step is issued: each read waits for the device, which would leave a GPU
            // idle between phases.
            let mut parts = vec![
                loss.clone().detach().reshape([1]),
                correct(&logits, &labels),
            ];
            if given.is_some() {
                parts.push(logits.clone().detach().reshape([n * classes]));
            }
            let measured = Tensor::cat(parts, 0);
            model = self.optim.step(t, lr, model, loss);
            if let Some(average) = &mut self.average {
                average.update(&model, self.state.global_step);
            }
            self.state.global_step += 1;
            let values = read_values(measured);
            let (loss_value, ok) = (
                values.first().map_or(f64::NAN, |&v| v as f64),
                values.get(1).map_or(0.0, |&v| v as f64),
            );
            if let (Some(observed), Some((indices, given))) = (&mut observed, &given)
                && values.len() == 2 + n * classes
                && given.iter().all(|&l| l < classes)
            {
                let timer = Instant::now();
                let seen = crate::dynamics::observe(&values[2..], classes, given);
                for (&i, o) in indices.iter().zip(seen) {
                    if let Some(slot) = observed.get_mut(i) {
                        *slot = Some(o);
                    }
                }
                dynamics_seconds += timer.elapsed().as_secs_f64();
            }
            if !loss_value.is_finite() {
                anyhow::bail!(
                    "diverged at step {} (epoch {epoch}): loss is {loss_value}",
                    self.state.global_step
                );
            }
            if let Some(since) = self.until_first_step.take() {
                let tuning = crate::device::tuning::progress();
                log(
                    events,
                    LogLevel::Info,
                    format!(
                        "first training step {:.1} s after the start: {} shapes autotuned ({:.1} s), the rest mostly compiling kernels",
                        since.elapsed().as_secs_f64(),
                        tuning.tuned,
                        tuning.seconds
                    ),
                );
            }
            let ok = ok as usize;
            last_lr = lr;
            loss_sum += loss_value * n as f64;
            right += ok;
            seen += n;
            emit(
                events,
                RunEvent::Step {
                    epoch,
                    step: self.state.global_step,
                    batch: b + 1,
                    batches,
                    loss: loss_value,
                    accuracy: ok as f64 / n as f64,
                    lr,
                    images_per_s: rate(n, step_start.elapsed().as_secs_f64()),
                },
            );
        }
        report_bad_images(&self.train_loader, &mut self.reported_bad.0, events);
        if let (Some(file), Some(observed)) = (&mut self.dynamics, observed) {
            let timer = Instant::now();
            let record = crate::dynamics::EpochRecord {
                epoch: epoch as u32,
                observations: observed,
            };
            if let Err(e) = file.append(&record) {
                log(events, LogLevel::Warn, format!("per-image dynamics: {e:#}"));
                self.dynamics = None;
            }
            dynamics_seconds += timer.elapsed().as_secs_f64();
            // Said once per session, so that what recording them costs is on record.
            if self.dynamics.is_some() && !self.dynamics_reported {
                self.dynamics_reported = true;
                log(
                    events,
                    LogLevel::Info,
                    format!(
                        "per-image dynamics recorded: {:.1} ms of this epoch's {:.2} s ({})",
                        dynamics_seconds * 1e3,
                        started.elapsed().as_secs_f64(),
                        RunFile::Dynamics.name()
                    ),
                );
            }
        }
        let totals = EpochTotals {
            loss_sum,
            right,
            seen,
            last_lr,
            started,
            train_seconds: started.elapsed().as_secs_f64(),
        };
        Ok((model, Some(totals)))
    }

    /// Files skipped so far: entries that could not be listed and images that could not be
    /// decoded, train and val.
    fn skipped(&self) -> usize {
        self.unreadable_entries
            + self.train_loader.cache().bad().len()
            + self.val_loader.cache().bad().len()
    }

    /// When this run checkpoints and stops, as its config says.
    fn policy(&self) -> policy::Policy<'_> {
        policy::Policy {
            checkpoint: &self.config.checkpoint,
            patience: self.config.train.patience,
        }
    }

    fn evaluate(&self, model: &MobileVit) -> Evaluation {
        evaluate(
            model,
            &self.val_loader,
            self.classes.len(),
            self.config.train.label_smoothing,
            &self.plain,
        )
    }

    /// "Precise BN" over `train.bn_recalibrate` training batches (a stream of its own per epoch,
    /// so the training order is untouched), when asked for.
    fn recalibrate(&self, model: &MobileVit, epoch: usize, events: &Sender<RunEvent>) {
        let k = self.config.train.bn_recalibrate;
        if k == 0 {
            return;
        }
        let started = Instant::now();
        let batches = self
            .train_loader
            .epoch(RECALIBRATION_STREAM - epoch)
            .into_iter()
            .filter(|b| !b.is_empty())
            .take(k)
            .map(|b| b.into_tensors(&self.device).0);
        // Training-mode passes draw dropout masks too: from this epoch's stream of their own.
        let _masks = crate::model::draws::DropoutSeeds::for_step(
            self.config.train.seed,
            epoch,
            RECALIBRATION_STREAM,
        );
        let used = model.recalibrate_batch_norm(batches);
        log(
            events,
            LogLevel::Info,
            format!(
                "epoch {epoch}: BatchNorm statistics recalibrated over {used} training batches in {:.1}s",
                started.elapsed().as_secs_f64()
            ),
        );
    }

    /// Writes the epoch's checkpoints as the policy decided: the best weights when the epoch
    /// `improved`, then always the last weights, optimizer and state (what is saved as best and
    /// last is the moving average when one is kept, the `trained` weights beside it). Returns their events, to be
    /// emitted after the epoch's metrics.
    fn save_checkpoints(
        &mut self,
        trained: &MobileVit,
        epoch: usize,
        improved: bool,
        previous_best: usize,
        metrics: CheckpointMetrics,
    ) -> Result<Vec<RunEvent>> {
        let model = self.average.as_ref().map_or(trained, |a| &a.model);
        let mut checkpoints = Vec::new();
        if improved {
            if previous_best > 0 {
                self.folder.keep(CheckpointKind::Best, previous_best)?;
            }
            let sha = checkpoint::save_model(model, &self.folder.path(RunFile::Best))?;
            let recorded = self.folder.publish(CheckpointKind::Best, epoch, false)?;
            checkpoints.push(RunEvent::Checkpoint {
                epoch,
                kind: CheckpointKind::Best,
                path: recorded,
                sha256: sha,
                metrics,
            });
        }
        // Weights, optimizer, then the state that points at them; the previous epoch's files
        // are kept until the registry records these, so a crash anywhere leaves it whole.
        if epoch > 1 {
            self.folder.keep(CheckpointKind::Last, epoch - 1)?;
        }
        let averaged = self.average.is_some();
        let sha = checkpoint::save_model(model, &self.folder.path(RunFile::Last))?;
        self.state.sha256.clear();
        if averaged {
            let trained_sha = checkpoint::save_model(trained, &self.folder.path(RunFile::Trained))?;
            self.state
                .sha256
                .insert(RunFile::Trained.name().into(), trained_sha);
        }
        let optim_sha = self.optim.save(&self.folder.path(RunFile::Optimizer))?;
        self.state
            .sha256
            .insert(RunFile::Optimizer.name().into(), optim_sha);
        self.state.averaged = averaged;
        self.folder.write_state(&self.state)?;
        let recorded = self.folder.publish(CheckpointKind::Last, epoch, averaged)?;
        checkpoints.push(RunEvent::Checkpoint {
            epoch,
            kind: CheckpointKind::Last,
            path: recorded,
            sha256: sha,
            metrics,
        });
        Ok(checkpoints)
    }

    /// Recalibrates BatchNorm if asked, evaluates on val and applies the checkpoint policy: the
    /// best weights when the monitored value improved, then always the last weights, optimizer
    /// and state. The weights evaluated and saved as best and last are the moving average when
    /// one is kept (the trained ones are saved beside it, to resume). Returns the monitored value.
    fn finish_epoch(
        &mut self,
        trained: &MobileVit,
        epoch: usize,
        totals: EpochTotals,
        events: &Sender<RunEvent>,
    ) -> Result<f64> {
        let model = self.average.as_ref().map_or(trained, |a| &a.model);
        self.recalibrate(model, epoch, events);
        let ev = self.evaluate(model);
        report_bad_images(&self.val_loader, &mut self.reported_bad.1, events);
        if epoch == self.state.epochs_done + 1 && self.skipped() > 0 {
            log(
                events,
                LogLevel::Warn,
                format!(
                    "{} train / {} val images used; {} files skipped as unreadable (listed above)",
                    totals.seen,
                    ev.images,
                    self.skipped()
                ),
            );
        }
        if ev.images == 0 {
            anyhow::bail!(
                "epoch {epoch}: no val image could be evaluated ({} unreadable); the best checkpoint cannot be chosen",
                self.val_loader.cache().bad().len()
            );
        }
        let train_loss = totals.loss_sum / totals.seen.max(1) as f64;
        let train_accuracy = totals.right as f64 / totals.seen.max(1) as f64;
        // Nothing is recorded or saved from an epoch whose numbers are not numbers.
        for (what, v) in [
            ("val loss", ev.loss),
            ("val accuracy", ev.accuracy),
            ("train loss", train_loss),
        ] {
            if !v.is_finite() {
                anyhow::bail!(
                    "diverged at epoch {epoch}: {what} is {v} (train loss {train_loss:.4}); lower train.lr or set train.grad_clip_norm"
                );
            }
        }
        let t = &self.config.train;
        if let Some(w) =
            health::collapse_warning(&ev, &self.classes, train_accuracy, t.bn_recalibrate)
        {
            log(events, LogLevel::Warn, format!("epoch {epoch}: {w}"));
        }
        // Built from the config's fields, not `self.policy()`: the state is updated below.
        let policy = policy::Policy {
            checkpoint: &self.config.checkpoint,
            patience: self.config.train.patience,
        };
        let monitored = policy.monitored(&policy::EpochResults {
            train_loss,
            train_accuracy,
            val_loss: ev.loss,
            val_accuracy: ev.accuracy,
        });
        let previous_best = self.state.best_epoch;
        let improved = policy.observe(&mut self.state, epoch, monitored);
        let metrics = CheckpointMetrics {
            train_loss,
            train_accuracy,
            val_loss: ev.loss,
            val_accuracy: ev.accuracy,
        };
        let checkpoints =
            self.save_checkpoints(trained, epoch, improved, previous_best, metrics)?;
        // The epoch's metrics are recorded before its checkpoints: a process killed between
        // leaves metrics past the last recorded checkpoint, which a resume drops and redoes,
        // never a checkpoint whose epoch has no metrics.
        emit(
            events,
            RunEvent::Epoch(EpochSummary {
                epoch,
                step: self.state.global_step,
                train_loss,
                train_accuracy,
                val_loss: ev.loss,
                val_accuracy: ev.accuracy,
                lr: totals.last_lr,
                seconds: totals.started.elapsed().as_secs_f64(),
                images_per_s: rate(totals.seen, totals.train_seconds),
                best_metric: self.state.best_metric.unwrap_or(monitored),
                best_epoch: self.state.best_epoch,
            }),
        );
        for checkpoint in checkpoints {
            emit(events, checkpoint);
        }
        Ok(monitored)
    }
}

/// The run's per-image dynamics file, created or reopened for `images` training images; none
/// (with a warning) when it is unusable: training goes on without it.
fn open_dynamics(
    folder: &RunFolder,
    images: usize,
    events: &Sender<RunEvent>,
) -> Option<crate::dynamics::DynamicsFile> {
    crate::dynamics::DynamicsFile::create_or_open(&folder.path(RunFile::Dynamics), images)
        .map_err(|e| {
            log(
                events,
                LogLevel::Warn,
                format!("per-image dynamics are not recorded: {e:#}"),
            )
        })
        .ok()
}

/// Loader epochs counted down from here feed recalibration, far from the training epochs.
const RECALIBRATION_STREAM: usize = usize::MAX / 2;

/// Images per second, 0 when nothing was timed.
fn rate(images: usize, seconds: f64) -> f64 {
    if seconds > 0.0 {
        images as f64 / seconds
    } else {
        0.0
    }
}

/// How many of the batch's predictions are right, as a one-element tensor.
fn correct(logits: &Tensor<2>, labels: &Tensor<1, Int>) -> Tensor<1> {
    let pred = logits.clone().detach().argmax(1).squeeze_dim::<1>(1);
    pred.equal(labels.clone()).float().sum().reshape([1])
}

/// A tensor's values, read back at once (empty when they cannot be read).
fn read_values(t: Tensor<1>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default()
}

fn report_bad_images(loader: &Loader, reported: &mut usize, events: &Sender<RunEvent>) {
    let bad = loader.cache().bad();
    for (path, reason) in bad.iter().skip(*reported) {
        log(
            events,
            LogLevel::Warn,
            format!("skipped unreadable image {}: {reason}", path.display()),
        );
    }
    *reported = bad.len();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrainSection;
    use burn::optim::GradientsParams;

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    /// The stem's filters, a transformer weight and the classifier's weights.
    fn weights(m: &MobileVit) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let vit = m
            .blocks
            .iter()
            .find_map(|b| match b {
                crate::model::Block::Vit(v) => Some(v),
                _ => None,
            })
            .unwrap();
        (
            values(m.stem.conv.weight.val()),
            values(vit.transformer[0].norm1.gamma.val()),
            values(m.head.weight.val()),
        )
    }

    fn after_steps(t: &TrainSection) -> (MobileVit, MobileVit) {
        let device = Device::flex().autodiff();
        let cfg = ModelConfig::tiny();
        let start = cfg.init_seeded(5, &device);
        let mut draws = crate::model::draws::Draws::new(5);
        let mut model = start.clone();
        let mut optim = optim::Optim::new(t, &Device::flex());
        for _ in 0..3 {
            let x = draws.tensor(
                [4, 3, 32, 32],
                burn::tensor::Distribution::Uniform(0.0, 1.0),
                &device,
            );
            let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 0], [4]), &device);
            let loss = smoothed_cross_entropy(model.forward(x), y, 0.1);
            model = optim.step(t, 1e-2, model, loss);
        }
        (start, model)
    }

    #[test]
    fn clipping_scales_all_gradients_to_the_global_norm() {
        let device = Device::flex().autodiff();
        let model = ModelConfig::tiny().init_seeded(9, &device);
        let x = crate::model::draws::Draws::new(9).tensor(
            [2, 3, 32, 32],
            burn::tensor::Distribution::Uniform(0.0, 1.0),
            &device,
        );
        let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 2], [2]), &device);
        let loss = smoothed_cross_entropy(model.forward(x), y, 0.1);
        let mut g = GradientsParams::from_grads(loss.backward(), &model);
        let head_before = values(g.get::<2>(model.head.weight.id).unwrap());
        let before = grads::clip_global_norm(&mut g, &model, 1e9);
        assert!(before > 0.0);
        let limit = before / 4.0;
        assert!((grads::clip_global_norm(&mut g, &model, limit) - before).abs() < 1e-3 * before);
        let after = grads::global_norm(&g, &model);
        assert!((after - limit).abs() < 1e-3 * limit, "{after} vs {limit}");
        // Every tensor by the same factor: directions are kept.
        let head_after = values(g.get::<2>(model.head.weight.id).unwrap());
        for (a, b) in head_before.iter().zip(&head_after) {
            assert!((a / 4.0 - b).abs() <= 1e-4 * a.abs().max(1e-6), "{a} {b}");
        }
        let head = grads::split_off(&mut g, &model.head);
        assert_eq!(head.len(), 2, "weight and bias");
        assert!(g.get::<2>(model.head.weight.id).is_none());
    }

    #[test]
    fn a_frozen_backbone_keeps_its_weights_while_the_classifier_learns() {
        let frozen = TrainSection {
            freeze_backbone: true,
            ..TrainSection::default()
        };
        let (start, end) = after_steps(&frozen);
        let (s, e) = (weights(&start), weights(&end));
        assert_eq!(s.0, e.0, "stem unchanged");
        assert_eq!(s.1, e.1, "transformer unchanged");
        assert_ne!(s.2, e.2, "classifier trained");

        let whole = TrainSection::default();
        let (start, end) = after_steps(&whole);
        let (s, e) = (weights(&start), weights(&end));
        assert!(s.0 != e.0 && s.1 != e.1 && s.2 != e.2, "everything trains");
    }
}
