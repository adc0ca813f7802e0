//! Deployed files measured against the checkpoint they were made from: `mvlab export` of a
//! run's checkpoint, and each sweep trial's deployed file (or why it could not be measured).

use super::{Lease, Registry, now};
use anyhow::Result;
use serde::Serialize;

/// Who measured a deployed file.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, strum::Display, strum::EnumString, strum::AsRefStr,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ExportSource {
    /// `mvlab export` of the run's checkpoint.
    Export,
    /// The sweep worker, at the end of a trial.
    Sweep,
}

crate::status::from_stored_text!(ExportSource);

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ExportRow {
    pub id: i64,
    pub run_id: i64,
    #[sqlx(try_from = "String")]
    pub source: ExportSource,
    pub checkpoint_sha256: String,
    /// `best` or `last` when the file was made from a checkpoint the registry records.
    pub checkpoint_kind: Option<String>,
    pub epoch: Option<i64>,
    /// `onnx`, `tflite`.
    pub format: String,
    /// `none`, `dynamic`, `int8`.
    pub quantize: String,
    /// Where the file was written.
    pub path: String,
    pub size_bytes: Option<i64>,
    /// Val images it was measured on.
    pub images: Option<i64>,
    /// Top-1 accuracy of the file in its runtime, of the float model (burn) on the same images,
    /// and the share of the images on which both predict the same class.
    pub val_accuracy: Option<f64>,
    pub float_val_accuracy: Option<f64>,
    pub agreement: Option<f64>,
    /// Batch-1 latency in its runtime (sweeps).
    pub latency_ms: Option<f64>,
    /// Why it could not be measured.
    pub error: Option<String>,
    pub created_at: String,
}

impl ExportRow {
    /// One line: what the file is and what it measured (or why it was not).
    pub fn line(&self) -> String {
        let of = match (self.epoch, self.checkpoint_kind.as_deref()) {
            (Some(e), Some(k)) => format!("epoch {e} ({k})"),
            (Some(e), None) => format!("epoch {e}"),
            _ => format!(
                "checkpoint {}",
                &self.checkpoint_sha256[..12.min(self.checkpoint_sha256.len())]
            ),
        };
        let what = format!("{} {} of {of}", self.format, self.quantize);
        if let Some(e) = &self.error {
            return format!("{what}: could not be measured: {e}");
        }
        let mut parts = Vec::new();
        if let Some(b) = self.size_bytes {
            parts.push(format!("{:.2} MB", b as f64 / 1e6));
        }
        if let (Some(a), Some(f), Some(g), Some(n)) = (
            self.val_accuracy,
            self.float_val_accuracy,
            self.agreement,
            self.images,
        ) {
            parts.push(format!(
                "val accuracy {} (float {}), top-1 agreement {} on {n} val images",
                crate::fmt::percent(a),
                crate::fmt::percent(f),
                crate::fmt::percent(g)
            ));
        }
        if let Some(l) = self.latency_ms {
            parts.push(format!("{l:.2} ms at batch 1"));
        }
        format!("{what}: {} ({})", parts.join(", "), self.path)
    }
}

/// What a measured (or failed) deployed file records.
#[derive(Debug, Clone, Default)]
pub struct NewExport<'a> {
    pub run_id: i64,
    pub checkpoint_sha256: &'a str,
    pub checkpoint_kind: Option<&'a str>,
    pub epoch: Option<i64>,
    pub format: &'a str,
    pub quantize: &'a str,
    pub path: &'a str,
    pub size_bytes: Option<u64>,
    pub images: Option<usize>,
    pub val_accuracy: Option<f64>,
    pub float_val_accuracy: Option<f64>,
    pub agreement: Option<f64>,
    pub latency_ms: Option<f64>,
    pub error: Option<&'a str>,
}

const INSERT: &str = "INSERT INTO exports (run_id, source, checkpoint_sha256, checkpoint_kind, epoch, format, quantize, path, size_bytes, images, val_accuracy, float_val_accuracy, agreement, latency_ms, error, created_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)";

fn insert<'q>(
    e: &'q NewExport<'q>,
    source: ExportSource,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    sqlx::query(INSERT)
        .bind(e.run_id)
        .bind(source.to_string())
        .bind(e.checkpoint_sha256)
        .bind(e.checkpoint_kind)
        .bind(e.epoch)
        .bind(e.format)
        .bind(e.quantize)
        .bind(e.path)
        .bind(e.size_bytes.map(|b| b as i64))
        .bind(e.images.map(|n| n as i64))
        .bind(e.val_accuracy)
        .bind(e.float_val_accuracy)
        .bind(e.agreement)
        .bind(e.latency_ms)
        .bind(e.error)
        .bind(now())
}

impl Registry {
    /// Records what `mvlab export` measured of a file made from one of the run's checkpoints
    /// (the run need not be held: it is a fact about a checkpoint file).
    pub fn record_export(&self, e: &NewExport) -> Result<()> {
        self.block(insert(e, ExportSource::Export).execute(&self.pool))?;
        Ok(())
    }

    /// Records what the held sweep trial's worker measured of its deployed file (or why it
    /// could not).
    pub fn record_sweep_export(&self, lease: &Lease, e: &NewExport) -> Result<()> {
        self.write_held(lease, async |tx| {
            insert(e, ExportSource::Sweep).execute(&mut **tx).await?;
            Ok(())
        })
    }

    /// A run's measured files, oldest first.
    pub fn exports(&self, run: i64) -> Result<Vec<ExportRow>> {
        let q =
            sqlx::query_as::<_, ExportRow>("SELECT * FROM exports WHERE run_id = $1 ORDER BY id")
                .bind(run);
        Ok(self.block(q.fetch_all(&self.pool))?)
    }

    /// The last measurement the sweep worker recorded for a trial.
    pub fn last_sweep_export(&self, run: i64) -> Result<Option<ExportRow>> {
        let q = sqlx::query_as::<_, ExportRow>(
            "SELECT * FROM exports WHERE run_id = $1 AND source = $2 ORDER BY id DESC LIMIT 1",
        )
        .bind(run)
        .bind(ExportSource::Sweep.as_ref());
        Ok(self.block(q.fetch_optional(&self.pool))?)
    }
}
