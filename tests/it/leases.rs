//! Workers that die, stall or are stopped, on both backends (SQLite and a real PostgreSQL
//! server): leases on the database clock hand their runs to other workers, which resume them
//! from the last stored checkpoint; a stalled worker's writes are refused.

use crate::common::Proc;
use crate::common::Timed;
use crate::common::*;
use mvlab::registry::{Location, Registry, RunRow};
use mvlab::status::Metric;
use mvlab::status::RunStatus;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

struct Setup {
    _dir: tempfile::TempDir,
    _pg: Option<Postgres>,
    cases: Vec<(String, PathBuf)>,
}

/// One queued run of `epochs` epochs (a one-trial sweep), queued on each backend; each
/// backend gets its own artifacts folder, shared by its workers.
fn setup(epochs: usize) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 16, 40);
    let extra =
        "batch_size = 4\nbn_recalibrate = 0\n[sweep]\n[sweep.parameters]\n\"train.seed\" = [1]\n";
    let config = tiny_config(dir.path(), &root, epochs, extra);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("batch_size = 8\n", "");
    std::fs::write(&config, text).unwrap();
    let pg = postgres();
    let mut cases = vec![(
        dir.path().join("r.db").display().to_string(),
        dir.path().join("art-sqlite"),
    )];
    if let Some(pg) = &pg {
        cases.push((pg.url.clone(), dir.path().join("art-postgres")));
    }
    for (db, art) in &cases {
        run_ok(
            mvlab()
                .args(["--db", db, "--artifacts"])
                .arg(art)
                .arg("sweep")
                .arg(&config)
                .args(["--workers", "0"]),
        );
    }
    Setup {
        _dir: dir,
        _pg: pg,
        cases,
    }
}

fn worker(db: &str, art: &Path, args: &[&str]) -> Proc {
    mvlab()
        .args(["--db", db, "--artifacts"])
        .arg(art)
        .arg("worker")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn_guarded()
}

fn run_of(db: &str) -> RunRow {
    let reg = Registry::open(&db.parse::<Location>().unwrap()).unwrap();
    reg.run(1).unwrap()
}

fn wait_until(what: &str, timeout: Duration, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(child: &Proc, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .timed_status();
    assert!(ok.success());
}

fn finish(child: Proc) -> (i32, String) {
    let out = child.output();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The run completed, on its `attempt`-th taking, with every epoch recorded exactly once.
fn check_completed_once(db: &str, epochs: usize, attempt: i64) {
    let run = run_of(db);
    assert_eq!(
        (run.status, run.attempt),
        (RunStatus::Completed, attempt),
        "{db}"
    );
    let reg = Registry::open(&db.parse::<Location>().unwrap()).unwrap();
    let series = reg.epoch_series(1, Metric::ValAccuracy).unwrap();
    let recorded: Vec<i64> = series.iter().map(|p| p.0).collect();
    assert_eq!(
        recorded,
        (1..=epochs as i64).collect::<Vec<_>>(),
        "{db}: each epoch once"
    );
}

#[test]
fn a_killed_workers_run_is_resumed_by_another_from_its_last_checkpoint() {
    let s = setup(8);
    for (db, art) in &s.cases {
        let first = worker(db, art, &["--lease-s", "2"]);
        wait_until("the first checkpoint", Duration::from_secs(60), || {
            run_of(db).epochs_done >= 1
        });
        let mut first = first;
        first.kill().unwrap(); // SIGKILL: no chance to clean up
        first.wait();
        assert_eq!(
            run_of(db).status,
            RunStatus::Running,
            "{db}: still marked running"
        );
        let second = worker(
            db,
            art,
            &["--lease-s", "2", "--wait", "20", "--max-runs", "1"],
        );
        let (code, out) = finish(second);
        assert_eq!(code, 0, "{out}");
        check_completed_once(db, 8, 2);
        let reg = Registry::open(&db.parse::<Location>().unwrap()).unwrap();
        let logs = reg.logs(1, 200).unwrap();
        assert!(
            logs.iter()
                .any(|l| l.message.starts_with("resumed after epoch")),
            "{db}: resumed from the stored checkpoint, not from scratch"
        );
    }
}

#[test]
fn a_worker_stalled_past_its_lease_is_refused_and_gives_the_run_up() {
    let s = setup(30);
    for (db, art) in &s.cases {
        let stalled = worker(db, art, &["--lease-s", "2"]);
        wait_until("the first checkpoint", Duration::from_secs(60), || {
            run_of(db).epochs_done >= 1
        });
        signal(&stalled, "-STOP");
        let taker = worker(
            db,
            art,
            &["--lease-s", "2", "--wait", "20", "--max-runs", "1"],
        );
        wait_until("the run is taken over", Duration::from_secs(30), || {
            run_of(db).attempt == 2
        });
        signal(&stalled, "-CONT");
        let (code, out) = finish(stalled);
        assert_eq!(code, 0, "{db}: {out}");
        assert!(
            out.contains("given up"),
            "{db}: the stalled worker noticed: {out}"
        );
        let (code, out) = finish(taker);
        assert_eq!(code, 0, "{out}");
        check_completed_once(db, 30, 2);
    }
}

#[test]
fn sigterm_puts_the_run_back_in_the_queue_for_the_next_worker() {
    let s = setup(12);
    for (db, art) in &s.cases {
        let first = worker(db, art, &["--lease-s", "30"]);
        wait_until("the first checkpoint", Duration::from_secs(60), || {
            run_of(db).epochs_done >= 1
        });
        signal(&first, "-TERM");
        let (code, _) = finish(first);
        assert_eq!(code, 130, "{db}: stopped, not failed");
        let run = run_of(db);
        assert_eq!((run.status, run.attempt), (RunStatus::Queued, 1), "{db}");
        let (code, out) = finish(worker(db, art, &["--max-runs", "1"]));
        assert_eq!(code, 0, "{out}");
        check_completed_once(db, 12, 2);
    }
}
