//! Checkpoint rows: which weight files a run has (one per kind), their sha256, and the metrics
//! they were saved with.

use super::{Lease, Registry, now};
use crate::status::CheckpointKind;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The metrics a checkpoint was saved with (its row's `metrics` column, as JSON).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMetrics {
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct CheckpointRow {
    pub id: i64,
    pub run_id: i64,
    pub epoch: i64,
    #[sqlx(try_from = "String")]
    pub kind: CheckpointKind,
    pub path: String,
    /// JSON of [`CheckpointMetrics`]: read it with [`CheckpointRow::saved_metrics`].
    pub metrics: String,
    pub sha256: String,
    pub created_at: String,
}

impl CheckpointRow {
    /// The metrics it was saved with; the error names the row.
    pub fn saved_metrics(&self) -> Result<CheckpointMetrics> {
        serde_json::from_str(&self.metrics).with_context(|| {
            format!(
                "run {}: the metrics of its {} checkpoint (row {}) are not valid",
                self.run_id, self.kind, self.id
            )
        })
    }
}

impl Registry {
    /// Records a checkpoint file of the held run (after the file is complete); it replaces the
    /// run's earlier row of the same kind.
    pub fn add_checkpoint(
        &self,
        lease: &Lease,
        epoch: usize,
        kind: CheckpointKind,
        path: &str,
        metrics: &CheckpointMetrics,
        sha256: &str,
    ) -> Result<()> {
        let metrics = serde_json::to_string(metrics)?;
        self.write_held(lease, async |tx| {
            // One file per kind: an older row of the same kind would point at overwritten bytes.
            sqlx::query("DELETE FROM checkpoints WHERE run_id = $1 AND kind = $2")
                .bind(lease.run)
                .bind(kind.as_ref())
                .execute(&mut **tx)
                .await?;
            sqlx::query(
                "INSERT INTO checkpoints (run_id, epoch, kind, path, metrics, sha256, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(lease.run)
            .bind(epoch as i64)
            .bind(kind.as_ref())
            .bind(path)
            .bind(&metrics)
            .bind(sha256)
            .bind(now())
            .execute(&mut **tx)
            .await?;
            Ok(())
        })
    }

    pub fn checkpoints(&self, run: i64) -> Result<Vec<CheckpointRow>> {
        let q = sqlx::query_as::<_, CheckpointRow>(
            "SELECT * FROM checkpoints WHERE run_id = $1 ORDER BY epoch, id",
        )
        .bind(run);
        Ok(self.block(q.fetch_all(&self.pool))?)
    }

    /// The checkpoint recorded at `path`, if one is.
    pub fn checkpoint_at(&self, path: &str) -> Result<Option<CheckpointRow>> {
        let q = sqlx::query_as::<_, CheckpointRow>(
            "SELECT * FROM checkpoints WHERE path = $1 ORDER BY id DESC LIMIT 1",
        )
        .bind(path);
        Ok(self.block(q.fetch_optional(&self.pool))?)
    }

    pub fn all_checkpoints(&self) -> Result<Vec<CheckpointRow>> {
        let q = sqlx::query_as::<_, CheckpointRow>(
            "SELECT * FROM checkpoints ORDER BY run_id DESC, kind, id",
        );
        Ok(self.block(q.fetch_all(&self.pool))?)
    }
}
