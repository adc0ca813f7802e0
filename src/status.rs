//! The closed sets a run's life is told in: its status, its checkpoints' kinds and its log
//! lines' levels. The registry stores them as TEXT with these spellings (serde and strum agree),
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

from_stored_text!(RunStatus, CheckpointKind, LogLevel);

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
    }
}
