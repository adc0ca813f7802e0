//! Metrics: per-step and per-epoch values of a run, keyed by the closed set [`Metric`].

use super::{Lease, Registry, now};
use crate::status::Metric;
use anyhow::{Result, bail};
use serde::Serialize;

/// One recorded value. The table keeps a metric as its (split, name) columns; rows read back
/// carry the [`Metric`] they spell.
#[derive(Debug, Clone, Serialize)]
pub struct MetricRow {
    pub run_id: i64,
    pub step: i64,
    pub epoch: i64,
    pub metric: Metric,
    pub value: f64,
    pub time: String,
}

impl MetricRow {
    /// A value of `run` measured now.
    pub fn new(run: i64, step: usize, epoch: usize, metric: Metric, value: f64) -> Self {
        Self {
            run_id: run,
            step: step as i64,
            epoch: epoch as i64,
            metric,
            value,
            time: now(),
        }
    }
}

/// A metrics row as stored.
#[derive(sqlx::FromRow)]
struct Stored {
    id: i64,
    run_id: i64,
    step: i64,
    epoch: i64,
    split: String,
    name: String,
    value: f64,
    time: String,
}

impl TryFrom<Stored> for MetricRow {
    type Error = anyhow::Error;
    fn try_from(s: Stored) -> Result<Self> {
        let Some(metric) = Metric::from_key(&s.split, &s.name) else {
            bail!(
                "run {}: metrics row {} has an unknown metric {}/{}",
                s.run_id,
                s.id,
                s.split,
                s.name
            );
        };
        Ok(Self {
            run_id: s.run_id,
            step: s.step,
            epoch: s.epoch,
            metric,
            value: s.value,
            time: s.time,
        })
    }
}

impl Registry {
    /// Writes many metric points of the held run in one transaction. A value that is not a
    /// finite number is refused (naming it) and nothing of the batch is written.
    pub fn insert_metrics(&self, lease: &Lease, rows: &[MetricRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        if let Some(m) = rows.iter().find(|m| !m.value.is_finite()) {
            bail!(
                "run {}: {:?} at step {} (epoch {}) is {}, not a number the registry keeps",
                lease.run,
                m.metric,
                m.step,
                m.epoch,
                m.value
            );
        }
        self.write_held(lease, async |tx| {
            for m in rows {
                let (split, name) = m.metric.key();
                sqlx::query("INSERT INTO metrics (run_id, step, epoch, split, name, value, time) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                    .bind(lease.run)
                    .bind(m.step)
                    .bind(m.epoch)
                    .bind(split)
                    .bind(name)
                    .bind(m.value)
                    .bind(&m.time)
                    .execute(&mut **tx)
                    .await?;
            }
            Ok(())
        })
    }

    /// Forgets metrics recorded after `epoch` (a resumed run redoes that epoch).
    pub fn truncate_metrics_after(&self, lease: &Lease, epoch: usize) -> Result<()> {
        self.write_held(lease, async |tx| {
            sqlx::query("DELETE FROM metrics WHERE run_id = $1 AND epoch > $2")
                .bind(lease.run)
                .bind(epoch as i64)
                .execute(&mut **tx)
                .await?;
            Ok(())
        })
    }

    pub fn metrics(&self, run: i64) -> Result<Vec<MetricRow>> {
        let q = sqlx::query_as::<_, Stored>(
            "SELECT id, run_id, step, epoch, split, name, value, time FROM metrics WHERE run_id = $1 ORDER BY step, id",
        )
        .bind(run);
        self.block(q.fetch_all(&self.pool))?
            .into_iter()
            .map(MetricRow::try_from)
            .collect()
    }

    /// (step, value) of one metric, in step order.
    pub fn series(&self, run: i64, metric: Metric) -> Result<Vec<(i64, f64)>> {
        self.series_by(run, metric, "step")
    }

    /// Per-epoch values of one metric, in epoch order.
    pub fn epoch_series(&self, run: i64, metric: Metric) -> Result<Vec<(i64, f64)>> {
        self.series_by(run, metric, "epoch")
    }

    fn series_by(&self, run: i64, metric: Metric, by: &str) -> Result<Vec<(i64, f64)>> {
        let (split, name) = metric.key();
        let sql = format!(
            "SELECT {by}, value FROM metrics WHERE run_id = $1 AND split = $2 AND name = $3 ORDER BY {by}, id"
        );
        let q = sqlx::query_as::<_, (i64, f64)>(&sql)
            .bind(run)
            .bind(split)
            .bind(name);
        Ok(self.block(q.fetch_all(&self.pool))?)
    }
}
