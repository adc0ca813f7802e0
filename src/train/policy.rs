//! When to checkpoint and when to stop: which value is watched, whether an epoch improved on
//! the best so far (its weights become the best checkpoint), and when no improvement for
//! `train.patience` epochs stops training. Decided from the numbers alone; how the files are
//! written is the session's (burn-train keeps its `CheckpointingStrategy` apart the same way).

use crate::checkpoint::TrainState;
use crate::config::{CheckpointSection, Monitor};

/// An epoch's results as the policy sees them.
pub struct EpochResults {
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
}

pub struct Policy<'a> {
    pub checkpoint: &'a CheckpointSection,
    /// Epochs without improvement that stop training (0: never).
    pub patience: usize,
}

impl Policy<'_> {
    /// The watched value of an epoch.
    pub fn monitored(&self, r: &EpochResults) -> f64 {
        match self.checkpoint.monitor {
            Monitor::ValAccuracy => r.val_accuracy,
            Monitor::ValLoss => r.val_loss,
            Monitor::TrainAccuracy => r.train_accuracy,
            Monitor::TrainLoss => r.train_loss,
        }
    }

    /// Records epoch `epoch` with its watched value in `state`; true when it is the new best
    /// (its weights are to be the best checkpoint).
    pub fn observe(&self, state: &mut TrainState, epoch: usize, monitored: f64) -> bool {
        state.epochs_done = epoch;
        let improved = self.checkpoint.mode.improves(monitored, state.best_metric);
        if improved {
            state.best_metric = Some(monitored);
            state.best_epoch = epoch;
            state.epochs_without_improvement = 0;
        } else {
            state.epochs_without_improvement += 1;
        }
        improved
    }

    /// Why training stops after this epoch, if it does.
    pub fn stop_early(&self, state: &TrainState) -> Option<String> {
        (self.patience > 0 && state.epochs_without_improvement >= self.patience).then(|| {
            format!(
                "early stop: no improvement of {} for {} epochs",
                self.checkpoint.monitor, self.patience
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mode;

    #[test]
    fn the_best_is_kept_and_patience_stops() {
        let section = CheckpointSection {
            monitor: Monitor::ValLoss,
            mode: Mode::Min,
        };
        let policy = Policy {
            checkpoint: &section,
            patience: 2,
        };
        let mut state = TrainState::default();
        let results = |val_loss| EpochResults {
            train_loss: 9.0,
            train_accuracy: 0.0,
            val_loss,
            val_accuracy: 0.0,
        };
        let seen: Vec<bool> = [1.0, 0.5, 0.7, 0.6]
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                let m = policy.monitored(&results(v));
                let improved = policy.observe(&mut state, i + 1, m);
                assert_eq!(policy.stop_early(&state).is_some(), i == 3);
                improved
            })
            .collect();
        assert_eq!(seen, [true, true, false, false]);
        assert_eq!(
            (state.best_epoch, state.best_metric, state.epochs_done),
            (2, Some(0.5), 4)
        );
    }
}
