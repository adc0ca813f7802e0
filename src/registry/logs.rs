//! A run's log: info, warnings (skipped images, collapsed predictions) and errors.

use super::{Lease, Registry, now};
use crate::status::LogLevel;
use anyhow::Result;
use serde::Serialize;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct LogRow {
    pub time: String,
    #[sqlx(try_from = "String")]
    pub level: LogLevel,
    pub message: String,
}

impl Registry {
    /// A line in the held run's log.
    pub fn log(&self, lease: &Lease, level: LogLevel, message: &str) -> Result<()> {
        self.write_held(lease, async |tx| {
            sqlx::query(
                "INSERT INTO run_log (run_id, time, level, message) VALUES ($1, $2, $3, $4)",
            )
            .bind(lease.run)
            .bind(now())
            .bind(level.as_ref())
            .bind(message)
            .execute(&mut **tx)
            .await?;
            Ok(())
        })
    }

    pub fn logs(&self, run: i64, limit: usize) -> Result<Vec<LogRow>> {
        let q = sqlx::query_as::<_, LogRow>(
            "SELECT time, level, message FROM (SELECT * FROM run_log WHERE run_id = $1 ORDER BY id DESC LIMIT $2) AS recent ORDER BY id",
        )
        .bind(run)
        .bind(limit as i64);
        Ok(self.block(q.fetch_all(&self.pool))?)
    }
}
