//! The closed sets a run's life is told in: its status, its checkpoints' kinds, its log
//! lines' levels and the metrics recorded for it. The registry stores them as TEXT with these spellings (serde and strum agree),
//! training events carry them, and the CLI and the UI show them.

use serde::{Deserialize, Serialize};
use strum::{AsRefStr, Display, EnumString, VariantNames};

/// sqlx reads these columns as `String` and converts (`#[sqlx(try_from = "String")]`), so the
/// same row types work on any sqlx driver.
macro_rules! from_stored_text {
    ($($ty:ty),+) => {$(
        impl TryFrom<String> for $ty {
            type Error = strum::ParseError;
            fn try_from(s: String) -> Result<Self, strum::ParseError> {
                s.parse()
            }
        }
    )+};
}
pub(crate) use from_stored_text;

/// Where a run stands.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    Display,
    EnumString,
    AsRefStr,
    VariantNames,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
    Pruned,
    /// Never stored: a run marked running whose process is gone (shown so, resumable).
    Interrupted,
}

impl RunStatus {
    /// A run in one of these may be continued with `mvlab resume`.
    pub fn is_resumable(self) -> bool {
        matches!(
            self,
            Self::Queued | Self::Cancelled | Self::Failed | Self::Interrupted
        )
    }

    /// Still to be worked or being worked: what `mvlab queue` lists.
    pub fn is_pending(self) -> bool {
        matches!(self, Self::Queued | Self::Running)
    }
}

/// Which of a run's two weight files a checkpoint row describes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Display, EnumString, AsRefStr,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum CheckpointKind {
    /// The weights with the best monitored value so far.
    Best,
    /// The weights at the end of the last finished epoch (the optimizer state is beside them).
    Last,
}

/// What a group of queued runs is: a `[sweep]` over hyperparameters, or a seed group (runs
/// that differ only in seed, summarised as mean ± std).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Display, EnumString, AsRefStr,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum SweepKind {
    Sweep,
    Seeds,
}

/// How much a run's log line matters.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    Display,
    EnumString,
    AsRefStr,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum LogLevel {
    Info,
    Warn,
    Error,
}

from_stored_text!(RunStatus, CheckpointKind, LogLevel, SweepKind);

/// What the registry records of a run, each stored as a (split, name) pair: per step (`step`),
/// per epoch (`train`, `val`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    StepLoss,
    StepAccuracy,
    /// The learning rate a step used.
    StepLr,
    TrainLoss,
    TrainAccuracy,
    /// The learning rate of an epoch's last step.
    TrainLr,
    EpochSeconds,
    ImagesPerS,
    ValLoss,
    ValAccuracy,
}

impl Metric {
    pub const ALL: [Metric; 10] = [
        Metric::StepLoss,
        Metric::StepAccuracy,
        Metric::StepLr,
        Metric::TrainLoss,
        Metric::TrainAccuracy,
        Metric::TrainLr,
        Metric::EpochSeconds,
        Metric::ImagesPerS,
        Metric::ValLoss,
        Metric::ValAccuracy,
    ];

    /// The (split, name) the registry stores it under.
    pub fn key(self) -> (&'static str, &'static str) {
        match self {
            Metric::StepLoss => ("step", "loss"),
            Metric::StepAccuracy => ("step", "accuracy"),
            Metric::StepLr => ("step", "lr"),
            Metric::TrainLoss => ("train", "loss"),
            Metric::TrainAccuracy => ("train", "accuracy"),
            Metric::TrainLr => ("train", "lr"),
            Metric::EpochSeconds => ("train", "epoch_seconds"),
            Metric::ImagesPerS => ("train", "images_per_s"),
            Metric::ValLoss => ("val", "loss"),
            Metric::ValAccuracy => ("val", "accuracy"),
        }
    }

    pub fn from_key(split: &str, name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.key() == (split, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_agree_between_text_and_serde() {
        for s in RunStatus::VARIANTS {
            let v: RunStatus = s.parse().unwrap();
            assert_eq!(v.as_ref(), *s);
            assert_eq!(serde_json::to_string(&v).unwrap(), format!("\"{s}\""));
        }
        assert_eq!("last".parse::<CheckpointKind>(), Ok(CheckpointKind::Last));
        assert_eq!(LogLevel::Warn.to_string(), "warn");
        assert!("runing".parse::<RunStatus>().is_err());
        for m in Metric::ALL {
            let (split, name) = m.key();
            assert_eq!(Metric::from_key(split, name), Some(m));
        }
    }
}
