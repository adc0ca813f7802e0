//! Runs (and the experiment files they come from): rows, creation, progress, ending, listing.

use super::{Lease, Registry, held, now};
use crate::config::Monitor;
use crate::status::RunStatus;
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RunRow {
    pub id: i64,
    pub experiment_id: Option<i64>,
    pub name: String,
    #[sqlx(try_from = "String")]
    pub status: RunStatus,
    pub config: String,
    pub overrides: String,
    pub device: Option<String>,
    pub epochs_total: i64,
    pub epochs_done: i64,
    #[sqlx(try_from = "String")]
    pub monitor: Monitor,
    pub best_metric: Option<f64>,
    pub best_epoch: Option<i64>,
    pub final_metrics: Option<String>,
    pub error: Option<String>,
    pub run_dir: Option<String>,
    pub classes: Option<String>,
    pub worker: Option<String>,
    pub pid: Option<i64>,
    pub sweep_id: Option<i64>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub heartbeat_at: Option<String>,
    /// The lease of the worker holding the run: never shown, only compared.
    #[serde(skip)]
    pub token: Option<String>,
    /// How many times a worker took the run.
    pub attempt: i64,
    /// The lease it was taken for, its last heartbeat (database clock, unix seconds), and how
    /// long ago that was when the row was read.
    pub lease_s: Option<f64>,
    pub beat_s: Option<f64>,
    pub beat_age_s: Option<f64>,
    /// Where the run comes from (JSON, `provenance::Provenance`).
    pub provenance: Option<String>,
    /// The Slurm array task (`JOB_TASK`) that last worked it.
    pub slurm_job: Option<String>,
    /// 1 when a cancel was asked for from elsewhere; its worker carries it out.
    pub cancel_requested: i64,
}

impl RunRow {
    /// A run marked running whose worker stopped heartbeating for longer than its lease
    /// (killed, crashed, partitioned, its machine gone), on any host; or, without waiting for
    /// the lease, one whose worker ran on this host and whose process is gone.
    pub fn is_orphaned(&self) -> bool {
        self.status == RunStatus::Running && (self.lease_expired() || self.worker_gone_here())
    }

    fn lease_expired(&self) -> bool {
        matches!((self.beat_age_s, self.lease_s), (Some(age), Some(lease)) if age > lease)
    }

    fn worker_gone_here(&self) -> bool {
        let here = self
            .worker
            .as_deref()
            .and_then(|w| w.split(':').next())
            .is_some_and(|host| host == this_host());
        here && self.pid.is_some_and(|p| !pid_alive(p))
    }

    /// Status as people should read it: an orphaned running run shows as interrupted.
    pub fn display_status(&self) -> RunStatus {
        if self.is_orphaned() {
            RunStatus::Interrupted
        } else {
            self.status
        }
    }

    /// The class names training recorded (none before it started).
    pub fn class_names(&self) -> Result<Vec<String>> {
        match self.classes.as_deref() {
            None => Ok(Vec::new()),
            Some(text) => self.json("classes", text),
        }
    }

    /// The experiment config the run was created with (overrides applied, paths absolute).
    pub fn recorded_config(&self) -> Result<crate::config::ExperimentConfig> {
        crate::config::parse(&self.config, &[])
            .with_context(|| format!("run {}: its recorded config", self.id))
    }

    /// The run's train and val lists, listed again from its recorded config and checked
    /// against the split recorded at its creation: images added, removed or moved since are
    /// refused, naming the data folders (runs recorded before the split was are trusted).
    pub fn recorded_splits(
        &self,
        cfg: &crate::config::ExperimentConfig,
    ) -> Result<(crate::data::Dataset, crate::data::Dataset)> {
        let (train, val) = crate::data::load_splits(&cfg.data, cfg.split_seed())
            .with_context(|| format!("run {}: listing its images", self.id))?;
        if let Some(recorded) = self.recorded_provenance()?.and_then(|p| p.split_sha256)
            && recorded != crate::provenance::split_sha256(cfg, &train, &val)
        {
            bail!(
                "run {}: its train/val lists changed since it trained (images added, removed or \
                 moved under {})",
                self.id,
                crate::provenance::data_roots(cfg)
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok((train, val))
    }

    /// Where the run comes from (None for runs recorded before mvlab recorded it).
    pub fn recorded_provenance(&self) -> Result<Option<crate::provenance::Provenance>> {
        match self.provenance.as_deref() {
            None => Ok(None),
            Some(text) => self.json("provenance", text).map(Some),
        }
    }

    /// The `--set` overrides the run was created with.
    pub fn override_list(&self) -> Result<Vec<String>> {
        self.json("overrides", &self.overrides)
    }

    /// A JSON column of this row, parsed; the error names the run and the column.
    fn json<T: serde::de::DeserializeOwned>(&self, column: &str, text: &str) -> Result<T> {
        serde_json::from_str(text).with_context(|| {
            format!(
                "run {}: its {column} column in the registry is not valid",
                self.id
            )
        })
    }

    /// Seconds between start and finish (or last heartbeat).
    pub fn duration_s(&self) -> Option<f64> {
        let parse = |s: &str| chrono::DateTime::parse_from_rfc3339(s).ok();
        let start = parse(self.started_at.as_deref()?)?;
        let end = self
            .finished_at
            .as_deref()
            .or(self.heartbeat_at.as_deref())
            .and_then(parse)?;
        Some((end - start).num_milliseconds() as f64 / 1000.0)
    }
}

/// This machine's name, as workers record it (`host:pid`).
pub fn this_host() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

pub fn pid_alive(pid: i64) -> bool {
    if pid as u32 == std::process::id() {
        return true;
    }
    Path::new(&format!("/proc/{pid}")).exists()
}

pub struct NewRun<'a> {
    pub experiment_id: Option<i64>,
    pub name: &'a str,
    pub status: RunStatus,
    pub config: &'a str,
    pub overrides: &'a [String],
    pub epochs_total: usize,
    pub monitor: Monitor,
    pub sweep_id: Option<i64>,
    pub provenance: Option<&'a str>,
}

impl Registry {
    /// `SELECT` of run rows with the age of their heartbeat, followed by `rest`.
    /// Runs marked running (of one sweep, if given): work that may still come back to the queue.
    pub fn count_running(&self, sweep: Option<i64>) -> Result<i64> {
        Ok(self.block(
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM runs WHERE status = 'running' AND ($1 IS NULL OR sweep_id = $1)",
            )
            .bind(sweep)
            .fetch_one(&self.pool),
        )?)
    }

    pub(super) fn select_runs(&self, rest: &str) -> String {
        format!(
            "SELECT *, {} - beat_s AS beat_age_s FROM runs {rest}",
            self.dialect().now_sql()
        )
    }

    /// Inserts or refreshes an experiment file's row; returns its id.
    pub fn upsert_experiment(
        &self,
        path: &str,
        name: &str,
        config: &str,
        hash: &str,
        error: Option<&str>,
    ) -> Result<i64> {
        let q = sqlx::query_scalar::<_, i64>(
            "INSERT INTO experiments (name, path, config, hash, error, updated_at) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT(path) DO UPDATE SET name = excluded.name, config = excluded.config,
               hash = excluded.hash, error = excluded.error, updated_at = excluded.updated_at
             RETURNING id",
        )
        .bind(name)
        .bind(path)
        .bind(config)
        .bind(hash)
        .bind(error)
        .bind(now());
        Ok(self.block(q.fetch_one(&self.pool))?)
    }

    pub fn create_run(&self, r: &NewRun) -> Result<i64> {
        let q = sqlx::query_scalar::<_, i64>(
            "INSERT INTO runs (experiment_id, name, status, config, overrides, epochs_total, monitor, sweep_id, created_at, provenance)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
        )
        .bind(r.experiment_id)
        .bind(r.name)
        .bind(r.status.as_ref())
        .bind(r.config)
        .bind(serde_json::to_string(r.overrides)?)
        .bind(r.epochs_total as i64)
        .bind(r.monitor.as_ref())
        .bind(r.sweep_id)
        .bind(now())
        .bind(r.provenance);
        Ok(self.block(q.fetch_one(&self.pool))?)
    }

    /// Records that the run's worker starts (or restarts) it: where, on what, by whom.
    pub fn start_run(
        &self,
        lease: &Lease,
        device: &str,
        run_dir: &str,
        worker: &str,
    ) -> Result<()> {
        let sql = format!(
            "UPDATE runs SET device = $2, run_dir = $3, worker = $4, pid = $5,
               started_at = COALESCE(started_at, $6), heartbeat_at = $6, beat_s = {}, finished_at = NULL, error = NULL
             WHERE id = $7 AND token = $1",
            self.dialect().now_sql()
        );
        let q = sqlx::query(&sql)
            .bind(&lease.token)
            .bind(device)
            .bind(run_dir)
            .bind(worker)
            .bind(std::process::id() as i64)
            .bind(now())
            .bind(lease.run);
        let done = self.block(q.execute(&self.pool))?;
        held(lease, done.rows_affected())
    }

    /// Records the class names of the held run (known once its dataset is read).
    pub fn set_classes(&self, lease: &Lease, classes: &[String]) -> Result<()> {
        let q = sqlx::query("UPDATE runs SET classes = $2 WHERE id = $3 AND token = $1")
            .bind(&lease.token)
            .bind(serde_json::to_string(classes)?)
            .bind(lease.run);
        let done = self.block(q.execute(&self.pool))?;
        held(lease, done.rows_affected())
    }

    /// Adds where the run trains (device and driver) to its provenance, once training starts.
    pub fn record_device(&self, lease: &Lease, device: &str, driver: Option<&str>) -> Result<()> {
        let mut p = self
            .run(lease.run)?
            .recorded_provenance()?
            .unwrap_or_default();
        p.device = Some(device.to_string());
        p.driver = driver.map(str::to_string);
        let q = sqlx::query("UPDATE runs SET provenance = $2 WHERE id = $3 AND token = $1")
            .bind(&lease.token)
            .bind(serde_json::to_string(&p)?)
            .bind(lease.run);
        let done = self.block(q.execute(&self.pool))?;
        held(lease, done.rows_affected())
    }

    pub fn update_progress(
        &self,
        lease: &Lease,
        epochs_done: usize,
        best: Option<(f64, usize)>,
    ) -> Result<()> {
        let sql = format!(
            "UPDATE runs SET epochs_done = $2, best_metric = $3, best_epoch = $4, heartbeat_at = $5, beat_s = {}
             WHERE id = $6 AND token = $1",
            self.dialect().now_sql()
        );
        let q = sqlx::query(&sql)
            .bind(&lease.token)
            .bind(epochs_done as i64)
            .bind(best.map(|b| b.0))
            .bind(best.map(|b| b.1 as i64))
            .bind(now())
            .bind(lease.run);
        let done = self.block(q.execute(&self.pool))?;
        held(lease, done.rows_affected())
    }

    /// Ends a run: completed, failed, cancelled or pruned, with the reason when there is one;
    /// the lease is released.
    pub fn finish_run(
        &self,
        lease: &Lease,
        status: RunStatus,
        error: Option<&str>,
        final_metrics: Option<&str>,
    ) -> Result<()> {
        let q = sqlx::query(
            "UPDATE runs SET status = $2, error = $3, final_metrics = COALESCE($4, final_metrics), finished_at = $5,
               heartbeat_at = $5, token = NULL
             WHERE id = $6 AND token = $1",
        )
        .bind(&lease.token)
        .bind(status.as_ref())
        .bind(error)
        .bind(final_metrics)
        .bind(now())
        .bind(lease.run);
        let done = self.block(q.execute(&self.pool))?;
        held(lease, done.rows_affected())
    }

    pub fn runs(&self) -> Result<Vec<RunRow>> {
        Ok(self.block(
            sqlx::query_as::<_, RunRow>(&self.select_runs("ORDER BY id DESC"))
                .fetch_all(&self.pool),
        )?)
    }

    pub fn run(&self, id: i64) -> Result<RunRow> {
        match self.block(
            sqlx::query_as::<_, RunRow>(&self.select_runs("WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.pool),
        )? {
            Some(r) => Ok(r),
            None => bail!("no run {id} in {}", self.location),
        }
    }

    pub fn delete_run(&self, id: i64) -> Result<()> {
        self.block(
            sqlx::query("DELETE FROM runs WHERE id = $1")
                .bind(id)
                .execute(&self.pool),
        )?;
        Ok(())
    }
}
