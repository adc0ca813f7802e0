//! Where a run's weights begin: drawn fresh, loaded from a pretrained file, or resumed from the
//! run folder's last checkpoint (weights, optimizer, moving average and state, each checked
//! against the sha256 the state recorded).

use super::average::WeightAverage;
use super::{RunEvent, RunSpec, log, optim};
use crate::checkpoint::{self, RunFile, TrainState};
use crate::model::{MobileVit, ModelConfig, timm};
use crate::status::LogLevel;
use anyhow::{Context, Result};
use burn::prelude::*;
use std::sync::mpsc::Sender;

pub struct Start {
    pub model: MobileVit,
    pub optim: optim::Optim,
    pub state: TrainState,
    /// The moving average of the weights, when `train.ema_decay` keeps one.
    pub average: Option<WeightAverage>,
}

/// The weights, optimizer and state training starts from. A fresh model's weights are drawn
/// from the run's seed (a generator of the run's own).
pub fn weights(
    spec: &RunSpec,
    model_cfg: &ModelConfig,
    device: &Device,
    plain: &Device,
    events: &Sender<RunEvent>,
) -> Result<Start> {
    let c = &spec.config;
    let t = &c.train;
    let folder = &spec.folder;
    let model = model_cfg.init_seeded(t.seed, device);
    let optim = optim::Optim::new(t, plain);
    let averaged = t.ema_decay > 0.0;
    if spec.resume {
        let state = folder.state()?.with_context(|| {
            format!(
                "run {}: its last checkpoint is recorded but {} is missing; it cannot be resumed",
                folder.run(),
                folder.path(RunFile::State).display()
            )
        })?;
        let last = folder.path(RunFile::Last);
        for file in [RunFile::Trained, RunFile::Optimizer] {
            if let Some(sha) = state.sha256.get(file.name()) {
                checkpoint::verify(&folder.path(file), sha)?;
            }
        }
        let (model, average) = if state.averaged {
            // `last` is the average, the trained weights are beside it.
            let saved = checkpoint::load_weights(model_cfg.init(device), &last)?;
            let average = averaged.then(|| WeightAverage::resume(saved, t.ema_decay));
            let model = checkpoint::load_weights(model, &folder.path(RunFile::Trained))?;
            (model, average)
        } else {
            (checkpoint::load_weights(model, &last)?, None)
        };
        let optim = optim.load(&folder.path(RunFile::Optimizer), &model, plain)?;
        log(
            events,
            LogLevel::Info,
            format!(
                "resumed after epoch {} (step {})",
                state.epochs_done, state.global_step
            ),
        );
        let average = match average {
            None if averaged => Some(WeightAverage::start(
                &model,
                model_cfg.init(device),
                t.ema_decay,
            )),
            a => a,
        };
        return Ok(Start {
            model,
            optim,
            state,
            average,
        });
    }
    let model = match &c.model.pretrained {
        Some(pretrained) => {
            let (model, report) = timm::load(model, pretrained)?;
            log(
                events,
                LogLevel::Info,
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
            model
        }
        None => model,
    };
    let average =
        averaged.then(|| WeightAverage::start(&model, model_cfg.init(device), t.ema_decay));
    Ok(Start {
        model,
        optim,
        state: TrainState::default(),
        average,
    })
}
