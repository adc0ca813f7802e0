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
}

impl Registry {
    pub fn create_sweep(
        &self,
        experiment_id: Option<i64>,
        name: &str,
        config: &str,
        method: SweepMethod,
        prune: PruneRule,
    ) -> Result<i64> {
        let q = sqlx::query_scalar::<_, i64>(
            "INSERT INTO sweeps (experiment_id, name, config, method, prune, created_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(experiment_id)
        .bind(name)
        .bind(config)
        .bind(method.as_ref())
        .bind(prune.as_ref())
        .bind(now());
        Ok(self.block(q.fetch_one(&self.pool))?)
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
