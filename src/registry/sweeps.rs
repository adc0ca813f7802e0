//! Sweeps: a row per `[sweep]` queued, its runs, and what its runs reached at an epoch (for
//! the pruning rules).

use super::{Registry, RunRow, now};
use crate::config::{PruneRule, SweepMethod};
use crate::status::{Metric, SweepKind};
use anyhow::{Result, bail};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct SweepRow {
    pub id: i64,
    pub experiment_id: Option<i64>,
    pub name: String,
    pub config: String,
    #[sqlx(try_from = "String")]
    pub method: SweepMethod,
    #[sqlx(try_from = "String")]
    pub prune: PruneRule,
    pub created_at: String,
    #[sqlx(try_from = "String")]
    pub kind: SweepKind,
    /// The experiment file the sweep's trials are built from, and its `--set` overrides (JSON).
    pub path: Option<String>,
    pub overrides: String,
    /// When it began, unix seconds on the database's clock.
    pub started_s: Option<f64>,
    /// The sbatch script its workers were submitted with, and the Slurm job id.
    pub sbatch: Option<String>,
    pub slurm_job: Option<String>,
}

impl SweepRow {
    pub fn override_list(&self) -> Result<Vec<String>> {
        serde_json::from_str(&self.overrides).map_err(|e| {
            anyhow::anyhow!(
                "sweep {}: its recorded overrides are unreadable: {e}",
                self.id
            )
        })
    }
}

/// What a new sweep records.
pub struct NewSweep<'a> {
    pub experiment_id: Option<i64>,
    pub name: &'a str,
    pub config: &'a str,
    pub method: SweepMethod,
    pub prune: PruneRule,
    pub path: &'a str,
    pub overrides: &'a [String],
}

impl Registry {
    pub fn create_sweep(&self, s: &NewSweep) -> Result<i64> {
        let sql = format!(
            "INSERT INTO sweeps (experiment_id, name, config, method, prune, created_at, path, overrides, started_s)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, {}) RETURNING id",
            self.dialect().now_sql()
        );
        let q = sqlx::query_scalar::<_, i64>(&sql)
            .bind(s.experiment_id)
            .bind(s.name)
            .bind(s.config)
            .bind(s.method.as_ref())
            .bind(s.prune.as_ref())
            .bind(now())
            .bind(s.path)
            .bind(serde_json::to_string(s.overrides)?);
        Ok(self.block(q.fetch_one(&self.pool))?)
    }

    /// Takes the sweep's proposal hold for `hold_s` seconds (a worker proposing its next trial);
    /// false while another holder's hold lasts. A holder that dies loses it when it runs out.
    pub fn hold_sweep(&self, sweep: i64, token: &str, hold_s: f64) -> Result<bool> {
        let now_sql = self.dialect().now_sql();
        let sql = format!(
            "UPDATE sweeps SET ask_token = $1, ask_until = {now_sql} + $2
             WHERE id = $3 AND (ask_token IS NULL OR ask_token = $1 OR ask_until < {now_sql})"
        );
        let q = sqlx::query(&sql).bind(token).bind(hold_s).bind(sweep);
        Ok(self.block(q.execute(&self.pool))?.rows_affected() == 1)
    }

    pub fn release_sweep(&self, sweep: i64, token: &str) -> Result<()> {
        let q = sqlx::query(
            "UPDATE sweeps SET ask_token = NULL, ask_until = NULL WHERE id = $1 AND ask_token = $2",
        )
        .bind(sweep)
        .bind(token);
        self.block(q.execute(&self.pool))?;
        Ok(())
    }

    /// Seconds since the sweep began, on the database's clock.
    pub fn sweep_age_s(&self, sweep: i64) -> Result<Option<f64>> {
        let sql = format!(
            "SELECT {} - started_s FROM sweeps WHERE id = $1",
            self.dialect().now_sql()
        );
        let q = sqlx::query_scalar::<_, Option<f64>>(&sql).bind(sweep);
        Ok(self.block(q.fetch_optional(&self.pool))?.flatten())
    }

    /// A run's value of `metric` at `epoch` (any epoch's, the latest, when None).
    pub fn metric_at(&self, run: i64, metric: Metric, epoch: Option<i64>) -> Result<Option<f64>> {
        let (split, name) = metric.key();
        let q = sqlx::query_scalar::<_, f64>(
            "SELECT value FROM metrics WHERE run_id = $1 AND split = $2 AND name = $3
               AND ($4 IS NULL OR epoch = $4) ORDER BY epoch DESC, id DESC LIMIT 1",
        )
        .bind(run)
        .bind(split)
        .bind(name)
        .bind(epoch);
        Ok(self.block(q.fetch_optional(&self.pool))?)
    }

    /// A seed group: runs of one config that differ only in seed.
    pub fn create_seed_group(
        &self,
        experiment_id: Option<i64>,
        name: &str,
        config: &str,
    ) -> Result<i64> {
        let q = sqlx::query_scalar::<_, i64>(
            "INSERT INTO sweeps (experiment_id, name, config, method, prune, created_at, kind) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(experiment_id)
        .bind(name)
        .bind(config)
        .bind(SweepMethod::Grid.as_ref())
        .bind(PruneRule::None.as_ref())
        .bind(now())
        .bind(SweepKind::Seeds.as_ref());
        Ok(self.block(q.fetch_one(&self.pool))?)
    }

    pub fn sweeps(&self) -> Result<Vec<SweepRow>> {
        Ok(self.block(
            sqlx::query_as::<_, SweepRow>("SELECT * FROM sweeps ORDER BY id DESC")
                .fetch_all(&self.pool),
        )?)
    }

    pub fn sweep(&self, id: i64) -> Result<SweepRow> {
        match self.block(
            sqlx::query_as::<_, SweepRow>("SELECT * FROM sweeps WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool),
        )? {
            Some(s) => Ok(s),
            None => bail!("no sweep {id} in {}", self.location),
        }
    }

    /// Stores the sbatch script a sweep's workers were submitted with, and their job id.
    pub fn record_sweep_job(&self, sweep: i64, script: &str, job: &str) -> Result<()> {
        self.block(
            sqlx::query("UPDATE sweeps SET sbatch = $1, slurm_job = $2 WHERE id = $3")
                .bind(script)
                .bind(job)
                .bind(sweep)
                .execute(&self.pool),
        )?;
        Ok(())
    }

    pub fn sweep_runs(&self, sweep: i64) -> Result<Vec<RunRow>> {
        let sql = self.select_runs("WHERE sweep_id = $1 ORDER BY id");
        let q = sqlx::query_as::<_, RunRow>(&sql).bind(sweep);
        Ok(self.block(q.fetch_all(&self.pool))?)
    }

    /// The values of one per-epoch metric that the other runs of a sweep reached at `epoch`.
    pub fn sweep_mates_at(
        &self,
        sweep: i64,
        except_run: i64,
        epoch: usize,
        metric: Metric,
    ) -> Result<Vec<f64>> {
        let (split, name) = metric.key();
        let q = sqlx::query_scalar::<_, f64>(
            "SELECT m.value FROM metrics m JOIN runs r ON r.id = m.run_id
             WHERE r.sweep_id = $1 AND r.id != $2 AND m.epoch = $3 AND m.split = $4 AND m.name = $5",
        )
        .bind(sweep)
        .bind(except_run)
        .bind(epoch as i64)
        .bind(split)
        .bind(name);
        Ok(self.block(q.fetch_all(&self.pool))?)
    }
}
