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
    /// Batch-1 latency of the best epoch's deployed file on the worker's CPU (sweeps): the int8
    /// ONNX export in tract, or the full-integer TFLite file in LiteRT (`deploy_format`).
    Int8LatencyMs,
    /// Size of that file.
    SizeMb,
    /// Val accuracy of that file, run in its runtime on the run's val split.
    DeployedValAccuracy,
}

impl Metric {
    pub const ALL: [Metric; 13] = [
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
        Metric::Int8LatencyMs,
        Metric::SizeMb,
        Metric::DeployedValAccuracy,
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
            Metric::Int8LatencyMs => ("deploy", "int8_latency_ms"),
            Metric::SizeMb => ("deploy", "size_mb"),
            Metric::DeployedValAccuracy => ("deploy", "val_accuracy"),
        }
    }

    /// Its name in a sweep's objectives: `val_accuracy`, `int8_latency_ms`,
    /// `deployed_val_accuracy`, ...
    pub fn objective_name(self) -> String {
        match self.key() {
            ("deploy", "val_accuracy") => "deployed_val_accuracy".to_string(),
            ("deploy", name) => name.to_string(),
            (split, name) => format!("{split}_{name}"),
        }
    }

    pub fn from_key(split: &str, name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.key() == (split, name))
    }
}

/// What a sweep judges its trials by: a metric of the run's best epoch (the weights it keeps,
/// and exports), or a measurement of that epoch's deployed file (`deploy` metrics: its
/// latency, size and val accuracy in the format the sweep names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Objective {
    pub metric: Metric,
    pub maximize: bool,
}

impl Objective {
    /// `val_accuracy:max`, `int8_latency_ms:min`, `size_mb:min`, `deployed_val_accuracy:max`,
    /// `train_loss:min`, ...
    pub fn parse(text: &str) -> Result<Self, String> {
        let (name, way) = text
            .split_once(':')
            .ok_or_else(|| format!("{text:?}: expected metric:max or metric:min"))?;
        let maximize = match way {
            "max" => true,
            "min" => false,
            other => return Err(format!("{text:?}: {other:?} is neither max nor min")),
        };
        let metric = Metric::ALL
            .into_iter()
            .filter(|m| m.key().0 != "step")
            .find(|m| m.objective_name() == name)
            .ok_or_else(|| {
                format!(
                    "{text:?}: unknown metric {name:?} (val_accuracy, val_loss, train_accuracy, train_loss, int8_latency_ms, size_mb, deployed_val_accuracy, ...)"
                )
            })?;
        Ok(Self { metric, maximize })
    }

    /// Whether a trial's value needs its deployed file measured.
    pub fn is_deployed(&self) -> bool {
        self.metric.key().0 == "deploy"
    }

    /// Whether `a` is better than `b`.
    pub fn better(&self, a: f64, b: f64) -> bool {
        if self.maximize { a > b } else { a < b }
    }
}

impl std::fmt::Display for Objective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let way = if self.maximize { "max" } else { "min" };
        write!(f, "{}:{way}", self.metric.objective_name())
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
        for text in [
            "val_accuracy:max",
            "int8_latency_ms:min",
            "size_mb:min",
            "deployed_val_accuracy:max",
            "train_loss:min",
        ] {
            assert_eq!(Objective::parse(text).unwrap().to_string(), text);
        }
        assert!(
            Objective::parse("val_acc:max")
                .unwrap_err()
                .contains("unknown metric")
        );
        assert_eq!(
            Objective::parse("deployed_val_accuracy:max")
                .unwrap()
                .metric,
            Metric::DeployedValAccuracy
        );
        assert_eq!(
            Objective::parse("val_accuracy:max").unwrap().metric,
            Metric::ValAccuracy
        );
        assert!(
            Objective::parse("deployed_val_accuracy:max")
                .unwrap()
                .is_deployed()
        );
        assert!(Objective::parse("val_accuracy").is_err());
        assert!(Objective::parse("val_accuracy:up").is_err());
    }
}
