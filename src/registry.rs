//! The registry: experiments, runs, metrics, checkpoints and run logs, in SQLite (embedded, WAL;
//! the default) or PostgreSQL (shared by many machines). One set of queries through sqlx's `Any`
//! driver (`$N` placeholders work on both), a migration folder per backend, and backend-specific
//! SQL only where the two must differ (the queue claim). sqlx is async; a small private runtime
//! sits behind this synchronous, typed API so training threads and the UI stay plain threads.

use crate::artifacts::Artifacts;
use crate::config::{Monitor, PruneRule, SweepMethod};
use crate::status::{CheckpointKind, LogLevel, RunStatus};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Where a registry lives: what `--db` / `MVLAB_DB` say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file: a plain path or `sqlite://PATH`.
    Sqlite(PathBuf),
    /// A PostgreSQL database: `postgres://user@host:port/db` (or `postgresql://`).
    Postgres(String),
}

impl FromStr for Location {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(Self::Postgres(s.to_string()));
        }
        if let Some(path) = s.strip_prefix("sqlite://") {
            let path = path.split('?').next().unwrap_or_default();
            if path.is_empty() {
                bail!("{s}: give the SQLite file, e.g. sqlite://runs/mvlab.db");
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            bail!("{s}: registries are SQLite files or postgres:// URLs, not {scheme}://");
        }
        Ok(Self::Sqlite(PathBuf::from(s)))
    }
}

impl From<&Path> for Location {
    fn from(p: &Path) -> Self {
        Self::Sqlite(p.to_path_buf())
    }
}

impl From<&PathBuf> for Location {
    fn from(p: &PathBuf) -> Self {
        Self::Sqlite(p.clone())
    }
}

impl From<&Location> for Location {
    fn from(l: &Location) -> Self {
        l.clone()
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(p) => write!(f, "{}", p.display()),
            // The password, if the URL has one, stays out of messages.
            Self::Postgres(url) => match url.split_once('@') {
                Some((who, rest)) => match who.rsplit_once(':') {
                    Some((user, _)) if user.contains("//") && !user.ends_with('/') => {
                        write!(f, "{user}:***@{rest}")
                    }
                    _ => f.write_str(url),
                },
                None => f.write_str(url),
            },
        }
    }
}

/// What the command line names: the registry, where run folders go if not the default (a
/// folder or `s3://bucket/prefix`), and the local scratch folder for an object store.
#[derive(Debug, Clone)]
pub struct Place {
    pub location: Location,
    pub artifacts: Option<String>,
    pub scratch: PathBuf,
}

impl Place {
    pub fn open(&self) -> Result<Registry> {
        let reg = Registry::open(&self.location)?;
        Ok(match &self.artifacts {
            Some(spec) => reg.with_artifacts(Artifacts::parse(spec, &self.scratch)?),
            None => reg,
        })
    }
}

#[derive(Clone)]
pub struct Registry {
    pool: AnyPool,
    rt: Arc<tokio::runtime::Runtime>,
    pub location: Location,
    /// Where run folders go: beside a SQLite file, the current folder for PostgreSQL, or as
    /// `--artifacts` says.
    pub artifacts: Artifacts,
}

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

    pub fn class_names(&self) -> Vec<String> {
        self.classes
            .as_deref()
            .and_then(|c| serde_json::from_str(c).ok())
            .unwrap_or_default()
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

/// A worker's hold on a run. Every write the worker makes for the run names the token, and
/// fails with [`LeaseLost`] once the run is no longer its own (its lease expired and another
/// worker took the run over, or the run was deleted).
#[derive(Debug, Clone)]
pub struct Lease {
    pub run: i64,
    pub token: String,
    pub lease_s: f64,
}

/// The error of a write whose lease is gone: the worker must stop the run and leave it alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseLost {
    pub run: i64,
}

impl std::fmt::Display for LeaseLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "run {} is no longer this worker's (its lease expired and the run was taken over, or it was deleted)",
            self.run
        )
    }
}

impl std::error::Error for LeaseLost {}

/// A token no other claim will have: the worker's name (host:pid) and 64 random bits.
pub fn new_token(worker: &str) -> String {
    format!("{worker}:{:016x}", rand::random::<u64>())
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct MetricRow {
    pub run_id: i64,
    pub step: i64,
    pub epoch: i64,
    pub split: String,
    pub name: String,
    pub value: f64,
    pub time: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct CheckpointRow {
    pub id: i64,
    pub run_id: i64,
    pub epoch: i64,
    #[sqlx(try_from = "String")]
    pub kind: CheckpointKind,
    pub path: String,
    pub metrics: String,
    pub sha256: String,
    pub created_at: String,
}

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
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct LogRow {
    pub time: String,
    #[sqlx(try_from = "String")]
    pub level: LogLevel,
    pub message: String,
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
}

/// `./mvlab.db`, unless `--db` or `MVLAB_DB` say otherwise (clap handles both).
pub const DEFAULT_DB: &str = "mvlab.db";

impl Registry {
    /// Opens (creating if needed) and migrates the registry at `location`.
    pub fn open(location: impl Into<Location>) -> Result<Self> {
        let location = location.into();
        sqlx::any::install_default_drivers();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("mvlab-registry")
            .enable_all()
            .build()?;
        let (url, artifacts) = match &location {
            Location::Sqlite(path) => {
                let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
                if let Some(dir) = dir {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                }
                let base = dir.map(PathBuf::from).unwrap_or_else(|| ".".into());
                (format!("sqlite://{}?mode=rwc", path.display()), base)
            }
            Location::Postgres(url) => (url.clone(), PathBuf::from(".")),
        };
        let sqlite = matches!(location, Location::Sqlite(_));
        // One plain connection first: a registry that cannot be reached fails at once with the
        // driver's reason, where the pool would retry until its timeout.
        rt.block_on(<sqlx::AnyConnection as sqlx::Connection>::connect(&url))
            .with_context(|| format!("cannot open registry {location}"))?;
        let pool = rt
            .block_on(
                AnyPoolOptions::new()
                    .max_connections(if sqlite { 4 } else { 8 })
                    .acquire_timeout(Duration::from_secs(60))
                    .after_connect(move |conn, _| {
                        Box::pin(async move {
                            // What the SQLite driver's own options would set, which an Any URL cannot.
                            if sqlite {
                                for pragma in [
                                    "PRAGMA journal_mode = WAL",
                                    "PRAGMA synchronous = NORMAL",
                                    "PRAGMA busy_timeout = 30000",
                                    "PRAGMA foreign_keys = ON",
                                ] {
                                    sqlx::Executor::execute(&mut *conn, pragma).await?;
                                }
                            }
                            Ok(())
                        })
                    })
                    .connect(&url),
            )
            .with_context(|| format!("cannot open registry {location}"))?;
        // Two processes opening a new SQLite registry at once may both try to apply the
        // migrations; the loser's attempt fails, and on a retry it finds them applied.
        // (PostgreSQL's migrator takes an advisory lock.)
        let mut attempt = 0;
        loop {
            let migrated = match location {
                Location::Sqlite(_) => {
                    rt.block_on(sqlx::migrate!("./migrations/sqlite").run(&pool))
                }
                Location::Postgres(_) => {
                    rt.block_on(sqlx::migrate!("./migrations/postgres").run(&pool))
                }
            };
            match migrated {
                Ok(()) => break,
                Err(_) if attempt < 5 => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(50 * attempt));
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot migrate registry {location}"));
                }
            }
        }
        Ok(Self {
            pool,
            rt: Arc::new(rt),
            location,
            artifacts: Artifacts::Local(artifacts),
        })
    }

    /// Run folders in `artifacts` instead of the default place.
    pub fn with_artifacts(mut self, artifacts: Artifacts) -> Self {
        self.artifacts = artifacts;
        self
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.location, Location::Postgres(_))
    }

    /// The database's clock in unix seconds, as SQL: heartbeats and lease checks use the one
    /// clock every worker shares.
    fn db_now(&self) -> &'static str {
        if self.is_postgres() {
            "(extract(epoch from clock_timestamp())::double precision)"
        } else {
            "((julianday('now') - 2440587.5) * 86400.0)"
        }
    }

    /// `SELECT` of run rows with the age of their heartbeat, followed by `rest`.
    fn select_runs(&self, rest: &str) -> String {
        format!(
            "SELECT *, {} - beat_s AS beat_age_s FROM runs {rest}",
            self.db_now()
        )
    }

    /// Runs `sql` (an UPDATE of the run's row with `token = $1` in its WHERE) and turns "no row"
    /// into [`LeaseLost`].
    fn held(&self, lease: &Lease, affected: u64) -> Result<()> {
        if affected == 0 {
            return Err(LeaseLost { run: lease.run }.into());
        }
        Ok(())
    }

    fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
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
            "INSERT INTO runs (experiment_id, name, status, config, overrides, epochs_total, monitor, sweep_id, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
        )
        .bind(r.experiment_id)
        .bind(r.name)
        .bind(r.status.as_ref())
        .bind(r.config)
        .bind(serde_json::to_string(r.overrides)?)
        .bind(r.epochs_total as i64)
        .bind(r.monitor.as_ref())
        .bind(r.sweep_id)
        .bind(now());
        Ok(self.block(q.fetch_one(&self.pool))?)
    }

    /// Records where and on what the run's worker trains it.
    pub fn start_run(
        &self,
        lease: &Lease,
        device: &str,
        run_dir: &str,
        classes: &[String],
        worker: &str,
    ) -> Result<()> {
        let sql = format!(
            "UPDATE runs SET device = $2, run_dir = $3, classes = $4, worker = $5, pid = $6,
               started_at = COALESCE(started_at, $7), heartbeat_at = $7, beat_s = {}, finished_at = NULL, error = NULL
             WHERE id = $8 AND token = $1",
            self.db_now()
        );
        let q = sqlx::query(&sql)
            .bind(&lease.token)
            .bind(device)
            .bind(run_dir)
            .bind(serde_json::to_string(classes)?)
            .bind(worker)
            .bind(std::process::id() as i64)
            .bind(now())
            .bind(lease.run);
        let done = self.block(q.execute(&self.pool))?;
        self.held(lease, done.rows_affected())
    }

    /// Atomically takes the oldest queued run (of one sweep, if given) for a worker: a single
    /// UPDATE ... RETURNING, so two workers, in one process or many, never get the same run.
    pub fn claim_queued(
        &self,
        worker: &str,
        sweep: Option<i64>,
        lease_s: f64,
    ) -> Result<Option<(RunRow, Lease)>> {
        // On PostgreSQL under READ COMMITTED, a worker that loses the race for a row would
        // re-check it, find it taken and get nothing back although other runs are queued:
        // SKIP LOCKED makes each claim pick a row nobody else is taking. SQLite writers are
        // serialised, so the plain subquery is exact there.
        let lock = if self.is_postgres() {
            "FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let token = new_token(worker);
        let now_sql = self.db_now();
        let sql = format!(
            "UPDATE runs SET status = 'running', worker = $1, pid = $2, heartbeat_at = $3, token = $5,
               attempt = attempt + 1, lease_s = $6, beat_s = {now_sql}
             WHERE id = (SELECT id FROM runs WHERE status = 'queued' AND ($4 IS NULL OR sweep_id = $4)
                         ORDER BY id LIMIT 1 {lock})
               AND status = 'queued'
             RETURNING *, CAST(0.0 AS DOUBLE PRECISION) AS beat_age_s"
        );
        let q = sqlx::query_as::<_, RunRow>(&sql)
            .bind(worker)
            .bind(std::process::id() as i64)
            .bind(now())
            .bind(sweep)
            .bind(&token)
            .bind(lease_s);
        let row = self.block(q.fetch_optional(&self.pool))?;
        Ok(row.map(|r| {
            let lease = Lease {
                run: r.id,
                token,
                lease_s,
            };
            (r, lease)
        }))
    }

    /// Takes one run for this worker: a new run, or one to resume (queued, cancelled, failed,
    /// or running with an expired lease, or held by `dead_holder`, a token whose worker is known
    /// to be gone). A run another worker holds is refused.
    pub fn claim_run(
        &self,
        id: i64,
        worker: &str,
        lease_s: f64,
        dead_holder: Option<&str>,
    ) -> Result<Lease> {
        let token = new_token(worker);
        let now_sql = self.db_now();
        let sql = format!(
            "UPDATE runs SET status = 'running', worker = $1, pid = $2, heartbeat_at = $3, token = $4,
               attempt = attempt + 1, lease_s = $5, beat_s = {now_sql}
             WHERE id = $6 AND (status IN ('queued', 'cancelled', 'failed')
               OR (status = 'running' AND (token IS NULL OR token = $7 OR beat_s IS NULL
                   OR {now_sql} - beat_s > lease_s)))"
        );
        let q = sqlx::query(&sql)
            .bind(worker)
            .bind(std::process::id() as i64)
            .bind(now())
            .bind(&token)
            .bind(lease_s)
            .bind(id)
            .bind(dead_holder);
        if self.block(q.execute(&self.pool))?.rows_affected() == 0 {
            let run = self.run(id)?;
            bail!(
                "run {id} is {} (worker {}); it cannot be taken",
                run.display_status(),
                run.worker.as_deref().unwrap_or("-")
            );
        }
        Ok(Lease {
            run: id,
            token,
            lease_s,
        })
    }

    /// What any worker does before it looks for work: runs whose worker stopped heartbeating
    /// for longer than their lease go back to the queue (to resume from their last checkpoint),
    /// or fail with the reason once they were taken `max_attempts` times. Returns (requeued,
    /// failed).
    pub fn requeue_expired(&self, max_attempts: usize) -> Result<(u64, u64)> {
        let now_sql = self.db_now();
        let expired = format!(
            "status = 'running' AND token IS NOT NULL AND beat_s IS NOT NULL AND {now_sql} - beat_s > lease_s"
        );
        let failed = self.block(
            sqlx::query(&format!(
                "UPDATE runs SET status = 'failed', token = NULL, finished_at = $1,
                   error = 'its worker ' || COALESCE(worker, '?') || ' stopped heartbeating, after ' || attempt || ' attempt(s)'
                 WHERE {expired} AND attempt >= $2"
            ))
            .bind(now())
            .bind(max_attempts as i64)
            .execute(&self.pool),
        )?;
        let requeued = self.block(
            sqlx::query(&format!(
                "UPDATE runs SET status = 'queued', token = NULL WHERE {expired} AND attempt < $1"
            ))
            .bind(max_attempts as i64)
            .execute(&self.pool),
        )?;
        Ok((requeued.rows_affected(), failed.rows_affected()))
    }

    /// Gives a held run back to the queue (its worker was asked to stop: SIGTERM, Ctrl-C).
    pub fn requeue(&self, lease: &Lease) -> Result<()> {
        let done = self.block(
            sqlx::query(
                "UPDATE runs SET status = 'queued', token = NULL WHERE id = $2 AND token = $1",
            )
            .bind(&lease.token)
            .bind(lease.run)
            .execute(&self.pool),
        )?;
        self.held(lease, done.rows_affected())
    }

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
        split: &str,
        name: &str,
    ) -> Result<Vec<f64>> {
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

    /// The worker is alive: stamps the database's clock on the run.
    pub fn heartbeat(&self, lease: &Lease) -> Result<()> {
        let sql = format!(
            "UPDATE runs SET heartbeat_at = $2, beat_s = {} WHERE id = $3 AND token = $1",
            self.db_now()
        );
        let done = self.block(
            sqlx::query(&sql)
                .bind(&lease.token)
                .bind(now())
                .bind(lease.run)
                .execute(&self.pool),
        )?;
        self.held(lease, done.rows_affected())
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
            self.db_now()
        );
        let q = sqlx::query(&sql)
            .bind(&lease.token)
            .bind(epochs_done as i64)
            .bind(best.map(|b| b.0))
            .bind(best.map(|b| b.1 as i64))
            .bind(now())
            .bind(lease.run);
        let done = self.block(q.execute(&self.pool))?;
        self.held(lease, done.rows_affected())
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
        self.held(lease, done.rows_affected())
    }

    /// In a transaction: stamps the heartbeat if the lease still holds (on PostgreSQL this also
    /// locks the row, so a takeover waits for the commit), else fails with [`LeaseLost`].
    async fn hold_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        lease: &Lease,
    ) -> Result<()> {
        let sql = format!(
            "UPDATE runs SET heartbeat_at = $2, beat_s = {} WHERE id = $3 AND token = $1",
            self.db_now()
        );
        let done = sqlx::query(&sql)
            .bind(&lease.token)
            .bind(now())
            .bind(lease.run)
            .execute(&mut **tx)
            .await?;
        self.held(lease, done.rows_affected())
    }

    /// Writes many metric points of the held run in one transaction.
    pub fn insert_metrics(&self, lease: &Lease, rows: &[MetricRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        self.block(async {
            let mut tx = self.pool.begin().await?;
            self.hold_in(&mut tx, lease).await?;
            for m in rows {
                sqlx::query("INSERT INTO metrics (run_id, step, epoch, split, name, value, time) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                    .bind(lease.run)
                    .bind(m.step)
                    .bind(m.epoch)
                    .bind(&m.split)
                    .bind(&m.name)
                    .bind(m.value)
                    .bind(&m.time)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Forgets metrics recorded after `epoch` (a resumed run redoes that epoch).
    pub fn truncate_metrics_after(&self, lease: &Lease, epoch: usize) -> Result<()> {
        self.block(async {
            let mut tx = self.pool.begin().await?;
            self.hold_in(&mut tx, lease).await?;
            sqlx::query("DELETE FROM metrics WHERE run_id = $1 AND epoch > $2")
                .bind(lease.run)
                .bind(epoch as i64)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    pub fn metrics(&self, run: i64) -> Result<Vec<MetricRow>> {
        let q = sqlx::query_as::<_, MetricRow>(
            "SELECT run_id, step, epoch, split, name, value, time FROM metrics WHERE run_id = $1 ORDER BY step, id",
        )
        .bind(run);
        Ok(self.block(q.fetch_all(&self.pool))?)
    }

    /// Per-epoch values of one metric (`split` = train/val), in epoch order.
    pub fn epoch_series(&self, run: i64, split: &str, name: &str) -> Result<Vec<(i64, f64)>> {
        let q = sqlx::query_as::<_, (i64, f64)>(
            "SELECT epoch, value FROM metrics WHERE run_id = $1 AND split = $2 AND name = $3 ORDER BY epoch, id",
        )
        .bind(run)
        .bind(split)
        .bind(name);
        Ok(self.block(q.fetch_all(&self.pool))?)
    }

    /// Records a checkpoint file of the held run (after the file is complete).
    pub fn add_checkpoint(
        &self,
        lease: &Lease,
        epoch: usize,
        kind: CheckpointKind,
        path: &str,
        metrics: &str,
        sha256: &str,
    ) -> Result<()> {
        self.block(async {
            let mut tx = self.pool.begin().await?;
            self.hold_in(&mut tx, lease).await?;
            // One file per kind: an older row of the same kind would point at overwritten bytes.
            sqlx::query("DELETE FROM checkpoints WHERE run_id = $1 AND kind = $2")
                .bind(lease.run)
                .bind(kind.as_ref())
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO checkpoints (run_id, epoch, kind, path, metrics, sha256, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(lease.run)
            .bind(epoch as i64)
            .bind(kind.as_ref())
            .bind(path)
            .bind(metrics)
            .bind(sha256)
            .bind(now())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
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

    pub fn all_checkpoints(&self) -> Result<Vec<CheckpointRow>> {
        let q = sqlx::query_as::<_, CheckpointRow>(
            "SELECT * FROM checkpoints ORDER BY run_id DESC, kind, id",
        );
        Ok(self.block(q.fetch_all(&self.pool))?)
    }

    /// A line in the held run's log.
    pub fn log(&self, lease: &Lease, level: LogLevel, message: &str) -> Result<()> {
        self.block(async {
            let mut tx = self.pool.begin().await?;
            self.hold_in(&mut tx, lease).await?;
            sqlx::query(
                "INSERT INTO run_log (run_id, time, level, message) VALUES ($1, $2, $3, $4)",
            )
            .bind(lease.run)
            .bind(now())
            .bind(level.as_ref())
            .bind(message)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
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
