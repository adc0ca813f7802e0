//! Leases: a worker's claim on a run (a token and an attempt count), its heartbeats on the
//! database's clock, expiry and requeueing. Every write of a held run checks its token.

use super::{Registry, RunRow, held, now};
use anyhow::{Result, bail};
use std::time::{Duration, Instant};

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

impl Registry {
    /// Atomically takes the oldest queued run (of one sweep, if given) for a worker: a single
    /// UPDATE ... RETURNING, so two workers, in one process or many, never get the same run.
    pub fn claim_queued(
        &self,
        worker: &str,
        sweep: Option<i64>,
        lease_s: f64,
    ) -> Result<Option<(RunRow, Lease)>> {
        let lock = self.dialect().claim_lock();
        let token = new_token(worker);
        let now_sql = self.dialect().now_sql();
        let sql = format!(
            "UPDATE runs SET status = 'running', worker = $1, pid = $2, heartbeat_at = $3, token = $5,
               attempt = attempt + 1, lease_s = $6, beat_s = {now_sql}, cancel_requested = 0
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
        let now_sql = self.dialect().now_sql();
        let sql = format!(
            "UPDATE runs SET status = 'running', worker = $1, pid = $2, heartbeat_at = $3, token = $4,
               attempt = attempt + 1, lease_s = $5, beat_s = {now_sql}, cancel_requested = 0
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
        let now_sql = self.dialect().now_sql();
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
        held(lease, done.rows_affected())
    }

    /// The worker is alive: stamps the database's clock on the run. A registry that cannot be
    /// reached for a moment (a server restarting after a crash, a connection cut mid-request)
    /// is asked again, with backoff, for up to half the lease: only then does the heartbeat
    /// fail, saying so, and the worker stops before it writes what may no longer be its own.
    /// (A server that answers says at once whether the run is still the lease's: the token
    /// decides, not the time.)
    pub fn heartbeat(&self, lease: &Lease) -> Result<()> {
        let limit = Duration::from_secs_f64((lease.lease_s / 2.0).clamp(1.0, 300.0));
        let (start, mut wait) = (Instant::now(), Duration::from_millis(100));
        loop {
            match self.heartbeat_once(lease) {
                Err(e) if super::unreachable(&e) => {
                    if start.elapsed() + wait >= limit {
                        return Err(e.context(format!(
                            "run {}: registry {} could not be reached for {:.0} s (half the run's {:.0} s lease)",
                            lease.run,
                            self.location,
                            start.elapsed().as_secs_f64(),
                            lease.lease_s
                        )));
                    }
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                done => return done,
            }
        }
    }

    fn heartbeat_once(&self, lease: &Lease) -> Result<()> {
        let sql = format!(
            "UPDATE runs SET heartbeat_at = $2, beat_s = {} WHERE id = $3 AND token = $1",
            self.dialect().now_sql()
        );
        let done = self.block(
            sqlx::query(&sql)
                .bind(&lease.token)
                .bind(now())
                .bind(lease.run)
                .execute(&self.pool),
        )?;
        held(lease, done.rows_affected())
    }

    /// Records the Slurm array task (`JOB_TASK`) working the held run.
    pub fn record_slurm_task(&self, lease: &Lease, job: &str) -> Result<()> {
        let done = self.block(
            sqlx::query("UPDATE runs SET slurm_job = $2 WHERE id = $3 AND token = $1")
                .bind(&lease.token)
                .bind(job)
                .bind(lease.run)
                .execute(&self.pool),
        )?;
        held(lease, done.rows_affected())
    }

    /// Asks the worker of a running run, wherever it is, to cancel it (it looks every second).
    /// False when the run is not running.
    pub fn request_cancel(&self, run: i64) -> Result<bool> {
        let done = self.block(
            sqlx::query(
                "UPDATE runs SET cancel_requested = 1 WHERE id = $1 AND status = 'running'",
            )
            .bind(run)
            .execute(&self.pool),
        )?;
        Ok(done.rows_affected() > 0)
    }

    /// Whether a cancel of the held run was asked for.
    pub fn cancel_requested(&self, lease: &Lease) -> Result<bool> {
        let asked: Option<i64> = self.block(
            sqlx::query_scalar("SELECT cancel_requested FROM runs WHERE id = $1 AND token = $2")
                .bind(lease.run)
                .bind(&lease.token)
                .fetch_optional(&self.pool),
        )?;
        match asked {
            Some(a) => Ok(a != 0),
            None => Err(super::LeaseLost { run: lease.run }.into()),
        }
    }
}
