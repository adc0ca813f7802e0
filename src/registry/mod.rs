//! The registry: experiments, runs, leases, metrics, checkpoints, sweeps and run logs, in
//! SQLite (embedded, WAL; the default) or PostgreSQL (shared by many machines). One set of
//! queries through sqlx's `Any` driver (`$N` placeholders work on both), a migration folder per
//! backend, and a [`Dialect`] for the few places where the two must differ. sqlx is async; a
//! small private runtime sits behind this synchronous, typed API so training threads and the UI
//! stay plain threads. One file per concern, each an `impl Registry` block: `runs`, `leases`,
//! `metrics`, `checkpoints`, `exports`, `sweeps`, `logs`.

mod checkpoints;
mod exports;
mod leases;
mod logs;
mod metrics;
mod runs;
mod sweeps;

pub use checkpoints::{CheckpointMetrics, CheckpointRow};
pub use exports::{ExportRow, ExportSource, NewExport};
pub use leases::{Lease, LeaseLost, new_token};
pub use logs::LogRow;
pub use metrics::MetricRow;
pub use runs::{NewRun, RunRow, pid_alive, this_host};
pub use sweeps::{NewSweep, SweepRow};

use crate::artifacts::{Artifacts, Owner};
use anyhow::{Context, Result, bail};
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
            Some(spec) => {
                let owner = reg.artifacts.owner().clone();
                reg.with_artifacts(Artifacts::parse(spec, &self.scratch, owner)?)
            }
            None => reg,
        })
    }
}

/// What differs between the two backends' SQL, in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The database's clock in unix seconds, as SQL: heartbeats and lease checks use the one
    /// clock every worker shares.
    pub fn now_sql(self) -> &'static str {
        match self {
            Dialect::Sqlite => "((julianday('now') - 2440587.5) * 86400.0)",
            Dialect::Postgres => "(extract(epoch from clock_timestamp())::double precision)",
        }
    }

    /// What a queue claim's subquery locks with. On PostgreSQL under READ COMMITTED, a worker
    /// that loses the race for a row would re-check it, find it taken and get nothing back
    /// although other runs are queued: SKIP LOCKED makes each claim pick a row nobody else is
    /// taking. SQLite writers are serialised, so the plain subquery is exact there.
    pub fn claim_lock(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
        }
    }

    fn max_connections(self) -> u32 {
        match self {
            Dialect::Sqlite => 4,
            Dialect::Postgres => 8,
        }
    }

    /// Statements run on every new connection: what the SQLite driver's own options would set,
    /// which an `Any` URL cannot.
    fn on_connect(self) -> &'static [&'static str] {
        match self {
            Dialect::Sqlite => &[
                "PRAGMA journal_mode = WAL",
                "PRAGMA synchronous = NORMAL",
                "PRAGMA busy_timeout = 30000",
                "PRAGMA foreign_keys = ON",
            ],
            Dialect::Postgres => &[],
        }
    }

    /// A read every usable registry answers (it reads the schema, so a corrupt file fails).
    fn probe(self) -> &'static str {
        match self {
            Dialect::Sqlite => "SELECT count(*) FROM sqlite_master",
            Dialect::Postgres => "SELECT 1",
        }
    }

    fn migrator(self) -> sqlx::migrate::Migrator {
        match self {
            Dialect::Sqlite => sqlx::migrate!("./migrations/sqlite"),
            Dialect::Postgres => sqlx::migrate!("./migrations/postgres"),
        }
    }
}

impl Location {
    pub fn dialect(&self) -> Dialect {
        match self {
            Location::Sqlite(_) => Dialect::Sqlite,
            Location::Postgres(_) => Dialect::Postgres,
        }
    }

    /// The SQLite file's stem, or the PostgreSQL database's name: what a new registry's runs
    /// folder is named after.
    pub fn short_name(&self) -> String {
        let name = match self {
            Location::Sqlite(path) => path.file_stem().map(|s| s.to_string_lossy().into_owned()),
            Location::Postgres(url) => url
                .split('?')
                .next()
                .and_then(|u| u.rsplit_once('/'))
                .map(|(_, db)| db.to_string()),
        };
        name.filter(|n| !n.is_empty() && !n.contains(['/', '\\']))
            .unwrap_or_else(|| "mvlab".into())
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

/// `./mvlab.db`, unless `--db` or `MVLAB_DB` say otherwise (clap handles both).
pub const DEFAULT_DB: &str = "mvlab.db";

impl Registry {
    /// Opens (creating if needed) and migrates the registry at `location`.
    pub fn open(location: impl Into<Location>) -> Result<Self> {
        let location = location.into();
        let dialect = location.dialect();
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
                // Absolute, so that what runs record reads the same from any folder.
                let base = dir.map(PathBuf::from).unwrap_or_else(|| ".".into());
                let base = std::path::absolute(&base).unwrap_or(base);
                (format!("sqlite://{}?mode=rwc", path.display()), base)
            }
            Location::Postgres(url) => (
                url.clone(),
                std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            ),
        };
        // One plain connection first, set up and read as the pool's will be: a registry that
        // cannot be reached, read or written fails at once with the driver's reason, where the
        // pool would retry until its timeout and then say only that it timed out.
        rt.block_on(async {
            let mut probe = <sqlx::AnyConnection as sqlx::Connection>::connect(&url).await?;
            for statement in dialect.on_connect() {
                sqlx::Executor::execute(&mut probe, *statement).await?;
            }
            sqlx::Executor::execute(&mut probe, dialect.probe()).await?;
            Ok::<_, sqlx::Error>(())
        })
        .map_err(|e| unusable(&location, e))?;
        let pool = rt
            .block_on(
                AnyPoolOptions::new()
                    .max_connections(dialect.max_connections())
                    .acquire_timeout(Duration::from_secs(60))
                    .after_connect(move |conn, _| {
                        Box::pin(async move {
                            for statement in dialect.on_connect() {
                                sqlx::Executor::execute(&mut *conn, *statement).await?;
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
        let migrator = dialect.migrator();
        let mut attempt = 0;
        loop {
            match rt.block_on(migrator.run(&pool)) {
                Ok(()) => break,
                Err(sqlx::migrate::MigrateError::VersionMissing(v)) => bail!(
                    "registry {location} was written by a newer mvlab (migration {v} is not known to this one)"
                ),
                Err(_) if attempt < 5 => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(50 * attempt));
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot migrate registry {location}"));
                }
            }
        }
        let owner = rt
            .block_on(owner(&pool, &location))
            .with_context(|| format!("cannot read registry {location}'s id"))?;
        Ok(Self {
            pool,
            rt: Arc::new(rt),
            location,
            artifacts: Artifacts::Local {
                root: artifacts,
                owner,
            },
        })
    }

    /// Run folders in `artifacts` instead of the default place.
    pub fn with_artifacts(mut self, artifacts: Artifacts) -> Self {
        self.artifacts = artifacts;
        self
    }

    pub fn dialect(&self) -> Dialect {
        self.location.dialect()
    }

    /// Runs a query (or a transaction) of this registry to its end; an error that says the
    /// disk is full says which registry's disk.
    fn block<T, E: Into<anyhow::Error>>(
        &self,
        f: impl std::future::Future<Output = std::result::Result<T, E>>,
    ) -> Result<T> {
        self.rt.block_on(f).map_err(|e| self.explain(e.into()))
    }

    /// `e`, with what it means for this registry where the driver's words do not name it: a
    /// SQLite file (or its `-wal` beside it) that cannot grow, or a server whose disk is full.
    fn explain(&self, e: anyhow::Error) -> anyhow::Error {
        let full = e
            .chain()
            .filter_map(|c| c.downcast_ref::<sqlx::Error>())
            .any(|s| match s {
                // SQLITE_FULL (13), PostgreSQL's disk_full (53100).
                sqlx::Error::Database(d) => {
                    d.code().is_some_and(|c| c == "13" || c == "53100")
                        || d.message().contains("disk is full")
                }
                sqlx::Error::Io(io) => io.kind() == std::io::ErrorKind::StorageFull,
                _ => false,
            });
        if !full {
            return e;
        }
        let what = match &self.location {
            Location::Sqlite(path) => format!(
                "registry {}: the disk is full, so the registry cannot grow; what it recorded before is kept (free space beside it, then resume)",
                path.display()
            ),
            Location::Postgres(_) => format!(
                "registry {}: the server's disk is full; what it recorded before is kept",
                self.location
            ),
        };
        e.context(what)
    }

    /// The lease-checked write: in one transaction, stamps the run's heartbeat if `lease` still
    /// holds (on PostgreSQL this also locks the row, so a takeover waits for the commit), runs
    /// `write`, and commits; fails with [`LeaseLost`] when the run is no longer the lease's.
    fn write_held<T>(
        &self,
        lease: &Lease,
        write: impl AsyncFnOnce(&mut sqlx::Transaction<'static, sqlx::Any>) -> Result<T>,
    ) -> Result<T> {
        self.block(async {
            let mut tx = self.pool.begin().await?;
            let sql = format!(
                "UPDATE runs SET heartbeat_at = $2, beat_s = {} WHERE id = $3 AND token = $1",
                self.dialect().now_sql()
            );
            let stamped = sqlx::query(&sql)
                .bind(&lease.token)
                .bind(now())
                .bind(lease.run)
                .execute(&mut *tx)
                .await?;
            held(lease, stamped.rows_affected())?;
            let out = write(&mut tx).await?;
            tx.commit().await?;
            Ok::<_, anyhow::Error>(out)
        })
    }
}

/// The registry's id and its runs' folder, made at its first open by this version: a new
/// registry's runs go in `<name>.runs` (the SQLite file's stem, or the PostgreSQL database's
/// name), or, for a SQLite file whose stem another registry beside it already has (`x.db`
/// beside `x.sqlite`), in `<file name>.runs` (`x.sqlite.runs`), so that registries side by side
/// never share a folder; one that already has runs keeps `runs`, where they are (each folder is
/// adopted by its marker on the next write). The name, once recorded, never changes.
async fn owner(pool: &AnyPool, location: &Location) -> Result<Owner> {
    let read = async || -> Result<(Option<String>, Option<String>)> {
        let get = async |key: &str| {
            sqlx::query_scalar::<_, String>("SELECT value FROM registry_meta WHERE key = $1")
                .bind(key.to_string())
                .fetch_optional(pool)
                .await
        };
        Ok((get("id").await?, get("runs").await?))
    };
    if let (Some(registry), Some(runs)) = read().await? {
        return Ok(Owner { registry, runs });
    }
    let existing: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM runs")
        .fetch_one(pool)
        .await?;
    let runs = if existing > 0 {
        "runs".to_string()
    } else {
        new_runs_folder(location)
    };
    let id = format!("{:032x}", rand::random::<u128>());
    // Two processes opening a new registry at once: the first insert wins, both read it.
    for (key, value) in [("id", id), ("runs", runs)] {
        sqlx::query(
            "INSERT INTO registry_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(value)
        .execute(pool)
        .await?;
    }
    match read().await? {
        (Some(registry), Some(runs)) => Ok(Owner { registry, runs }),
        _ => bail!("registry {location}: its id could not be recorded"),
    }
}

/// The runs folder of a new registry at `location` (see [`owner`]).
fn new_runs_folder(location: &Location) -> String {
    let by_stem = format!("{}.runs", location.short_name());
    let Location::Sqlite(path) = location else {
        return by_stem;
    };
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return by_stem;
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if stem_taken(dir, &name, &location.short_name(), &by_stem) {
        format!("{name}.runs")
    } else {
        by_stem
    }
}

/// Whether a registry beside the SQLite file `name` in `dir` has, or may take, the runs folder
/// `by_stem` named after their common `stem`: that folder already holds something (a new
/// registry has no runs yet), or another file of that stem beside it is named as a SQLite
/// database (`x.sqlite` beside `x.db`; not the `-wal` and `-shm` files).
fn stem_taken(dir: &Path, name: &str, stem: &str, by_stem: &str) -> bool {
    let folder = dir.join(by_stem);
    if std::fs::read_dir(&folder).is_ok_and(|mut entries| entries.next().is_some()) {
        return true;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let path = e.path();
        let other = e.file_name().to_string_lossy().into_owned();
        other != name
            && path
                .file_stem()
                .is_some_and(|s| s.to_string_lossy() == stem)
            && path.is_file()
            && named_as_sqlite(&path)
    })
}

/// Whether `path` is named as a SQLite database is (`.db`, `.sqlite`, `.sqlite3`, `.db3`), its
/// companions (`-wal`, `-shm`, `-journal`) not. Decided by the name alone: opening and closing
/// a database file that this process has open would drop the process's POSIX locks on it, and
/// SQLite's shared memory would then be truncated under its other connections (SIGBUS).
fn named_as_sqlite(path: &Path) -> bool {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| matches!(e.as_str(), "db" | "sqlite" | "sqlite3" | "db3"))
}

/// Whether `e` says the registry could not be reached (a server restarting or gone, a dropped
/// connection) rather than that it refused the write: worth trying again.
pub fn unreachable(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<sqlx::Error>())
        .any(|e| match e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => true,
            // Connection exceptions (08) and an administrator's shutdown or a server starting (57P).
            sqlx::Error::Database(d) => d
                .code()
                .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
            _ => false,
        })
}

/// Why a registry cannot be used, in words that say what to do.
fn unusable(location: &Location, e: sqlx::Error) -> anyhow::Error {
    let reason = e.to_string();
    let lower = reason.to_lowercase();
    let advice = match location {
        Location::Sqlite(path)
            if lower.contains("not a database") || lower.contains("malformed") =>
        {
            format!(
                "{} is not an SQLite database (corrupt, truncated, or another kind of file); move it away or give another --db",
                path.display()
            )
        }
        Location::Sqlite(path)
            if lower.contains("unable to open")
                || lower.contains("readonly")
                || lower.contains("read-only") =>
        {
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            format!(
                "{} cannot be opened for writing; SQLite also creates {}-wal and -shm beside it, so {} must be writable",
                path.display(),
                path.display(),
                dir.display()
            )
        }
        _ => reason.clone(),
    };
    anyhow::anyhow!("cannot open registry {location}: {advice} ({reason})")
}

/// A lease-checked UPDATE's outcome: no row changed means the run is no longer the lease's.
fn held(lease: &Lease, affected: u64) -> Result<()> {
    if affected == 0 {
        return Err(LeaseLost { run: lease.run }.into());
    }
    Ok(())
}
