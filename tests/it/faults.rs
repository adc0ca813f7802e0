//! Faults injected for real: a disk that fills up under a run (under its run folders, and
//! under its SQLite registry too), `kill -9` at chosen moments (checkpoint writing included),
//! the PostgreSQL server stopped, crashed and frozen mid-run, and the S3 server going down
//! mid-run. Each time nothing recorded is lost and the run resumes or goes on.

use crate::common::{Proc, assert_epochs_once, mvlab, run_ok, tiny_config, tiny_dataset};
use mvlab::checkpoint;
use mvlab::registry::Registry;
use mvlab::status::RunStatus;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Every checkpoint the registry records for run 1 is a file with its recorded sha256.
fn recorded_checkpoints_intact(reg: &Registry) -> usize {
    let cks = reg.checkpoints(1).unwrap();
    for ck in &cks {
        checkpoint::verify(Path::new(&ck.path), &ck.sha256)
            .unwrap_or_else(|e| panic!("{} checkpoint of epoch {}: {e:#}", ck.kind, ck.epoch));
    }
    cks.len()
}

/// After a kill: each recorded checkpoint is whole, in place or kept beside it (the killed
/// process had begun to write its successor, which the registry had not recorded yet).
fn recorded_checkpoints_whole(reg: &Registry) -> usize {
    let cks = reg.checkpoints(1).unwrap();
    for ck in &cks {
        let kept = format!("{}.e{}", ck.path, ck.epoch);
        let whole = checkpoint::verify(Path::new(&ck.path), &ck.sha256).is_ok()
            || checkpoint::verify(Path::new(&kept), &ck.sha256).is_ok();
        assert!(
            whole,
            "{} checkpoint of epoch {}: neither {} nor {kept}",
            ck.kind, ck.epoch, ck.path
        );
    }
    cks.len()
}

fn spawn(db: &Path, args: &[&std::ffi::OsStr]) -> Proc {
    crate::common::spawn(
        mvlab()
            .arg("--db")
            .arg(db)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )
}

/// Waits until run 1 of `db` has a checkpoint recorded, `child` still training (if it ended,
/// the test fails with what it said).
fn wait_for_a_checkpoint(db: &Path, mut child: Proc) -> Proc {
    let start = Instant::now();
    while Registry::open(db)
        .and_then(|r| r.checkpoints(1))
        .map_or(true, |c| c.is_empty())
    {
        if child.try_wait().unwrap().is_some() {
            let out = child.output();
            panic!(
                "mvlab exited early ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(start.elapsed() < Duration::from_secs(600), "no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// Fills the disk under `dir` with a file written `chunk` bytes at a time; returns its path.
fn fill(dir: &Path, chunk: usize) -> std::path::PathBuf {
    use std::io::Write;
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; chunk];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    filler
}

/// A tmpfs of `mb` MiB at `dir`, unmounted when dropped. Where this process may not mount
/// (no root, no CAP_SYS_ADMIN) the test fails under CI and is skipped, saying so, elsewhere.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, mb: usize) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let out = crate::common::output_within(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
                .arg(dir),
            Duration::from_secs(60),
        );
        if !out.status.success() {
            crate::common::unavailable(
                "tmpfs mount for the disk-full test",
                &format!(
                    "run the tests as root or with CAP_SYS_ADMIN: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            );
            return None;
        }
        Some(Self(dir.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .stderr(Stdio::null())
            .status();
    }
}

/// What the registry holds of run 1: its metric rows as text, and the epoch of its checkpoint
/// of each kind (a newer checkpoint of a kind replaces the older one's row).
fn recorded(reg: &Registry) -> (Vec<String>, Vec<(String, i64)>) {
    let metrics = reg
        .metrics(1)
        .unwrap()
        .iter()
        .map(|m| format!("{} {} {:?} {}", m.epoch, m.step, m.metric, m.value))
        .collect();
    let checkpoints = reg
        .checkpoints(1)
        .unwrap()
        .iter()
        .map(|c| (c.kind.to_string(), c.epoch))
        .collect();
    (metrics, checkpoints)
}

/// The registry (a SQLite file) and the run folders beside it on a disk that fills up once
/// epoch 1's checkpoint is recorded: the run stops, with an error that says the disk is full
/// and names the file on it; every metric and checkpoint the registry held before the disk
/// filled is still there, each checkpoint whole; once space is freed `resume` completes the
/// run, each epoch recorded once.
#[test]
fn a_full_disk_under_the_registry_and_run_folders_fails_the_run_clearly_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 16, 40);
    let cfg = tiny_config(dir.path(), &root, 3, "");
    let small = dir.path().join("small");
    let Some(_disk) = SmallDisk::mount(&small, 96) else {
        return;
    };
    let db = small.join("r.db");
    let child = spawn(&db, &["run".as_ref(), cfg.as_os_str()]);
    // Once epoch 1's checkpoint is recorded, the disk fills up.
    let child = wait_for_a_checkpoint(&db, child);
    let before = {
        let reg = Registry::open(&db).unwrap();
        recorded(&reg)
    };
    assert!(!before.0.is_empty() && !before.1.is_empty());
    let filler = fill(&small, 1 << 16);
    let out = child.output();
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("disk full: {}", err.lines().last().unwrap_or(""));
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("disk is full") && err.contains(&small.display().to_string()),
        "the error says the disk is full and names the file on it: {err}"
    );
    let reg = Registry::open(&db).unwrap();
    let after = recorded(&reg);
    for row in &before.0 {
        assert!(
            after.0.contains(row),
            "metric {row}: recorded before the disk filled, gone after"
        );
    }
    for (kind, epoch) in &before.1 {
        assert!(
            after.1.iter().any(|(k, e)| k == kind && e >= epoch),
            "the {kind} checkpoint of epoch {epoch}: recorded before the disk filled, gone after ({:?})",
            after.1
        );
    }
    recorded_checkpoints_intact(&reg);
    let status = reg.run(1).unwrap().display_status();
    assert!(
        matches!(status, RunStatus::Failed | RunStatus::Interrupted),
        "{status:?}"
    );

    std::fs::remove_file(&filler).unwrap();
    run_ok(mvlab().arg("--db").arg(&db).args(["resume", "1"]));
    assert_eq!(reg.run(1).unwrap().status, RunStatus::Completed);
    recorded_checkpoints_intact(&reg);
    assert_epochs_once(&reg, 1, 3);
}

/// The run folders alone on a disk that fills up (`--artifacts` on it, the registry elsewhere):
/// the run fails, naming the file, and is marked failed; `resume` continues once space is freed.
#[test]
fn a_full_disk_fails_the_run_naming_the_file_and_resume_continues_once_freed() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 16, 40);
    let cfg = tiny_config(dir.path(), &root, 3, "");
    let db = dir.path().join("r.db");
    let small = dir.path().join("small");
    let Some(_disk) = SmallDisk::mount(&small, 96) else {
        return;
    };
    let artifacts = ["--artifacts".as_ref(), small.as_os_str()];
    let child = spawn(
        &db,
        &[&artifacts[..], &["run".as_ref(), cfg.as_os_str()]].concat(),
    );
    // Once epoch 1's checkpoint is recorded, the disk fills up.
    let child = wait_for_a_checkpoint(&db, child);
    let filler = fill(&small, 1 << 20);
    let out = child.output();
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("disk full: {}", err.lines().last().unwrap_or(""));
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the disk is full") && err.contains(&small.display().to_string()),
        "{err}"
    );
    let reg = Registry::open(&db).unwrap();
    assert_eq!(reg.run(1).unwrap().status, RunStatus::Failed);
    assert!(recorded_checkpoints_intact(&reg) > 0);

    std::fs::remove_file(&filler).unwrap();
    run_ok(
        mvlab()
            .arg("--db")
            .arg(&db)
            .args(artifacts)
            .args(["resume", "1"]),
    );
    assert_eq!(reg.run(1).unwrap().status, RunStatus::Completed);
    recorded_checkpoints_intact(&reg);
    assert_epochs_once(&reg, 1, 3);
}

/// Where in a run the kill -9 test kills it.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// In the middle of epoch N: once a step of it is recorded.
    Step(i64),
    /// As epoch N's checkpoint files are written: once the run folder's `state.json` says N
    /// epochs are done (at once, the registry has mostly not recorded the checkpoint yet).
    Files(i64),
    /// Once the registry records epoch N as done (the next epoch has begun).
    Recorded(i64),
}

impl KillAt {
    fn reached(self, reg: &Registry, state: &Path) -> bool {
        match self {
            KillAt::Step(n) => reg.metrics(1).is_ok_and(|rows| {
                rows.iter()
                    .any(|m| m.metric == mvlab::status::Metric::StepLoss && m.epoch >= n)
            }),
            KillAt::Files(n) => std::fs::read(state)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["epochs_done"].as_i64())
                .is_some_and(|done| done >= n),
            KillAt::Recorded(n) => reg.run(1).is_ok_and(|r| r.epochs_done >= n),
        }
    }
}

/// `kill -9` five times, at points the test chooses (mid-epoch, while an epoch's checkpoint
/// files are written, just after an epoch is recorded), each waited for, so the number of
/// kills is the test's and not the machine's speed: each time the registry and the run folder
/// agree (every recorded checkpoint whole), the run is interrupted, and in the end `resume`
/// completes it with every epoch recorded once.
#[test]
fn kill_9_at_chosen_moments_never_leaves_registry_and_folder_apart() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 40, 40);
    let epochs = 8;
    let cfg = tiny_config(dir.path(), &root, epochs, "");
    let db = dir.path().join("r.db");
    let state = dir.path().join("r.runs/1/state.json");
    let points = [
        KillAt::Step(1),
        KillAt::Recorded(2),
        KillAt::Files(3),
        KillAt::Step(5),
        KillAt::Files(6),
    ];
    let mut landed = Vec::new();
    for (attempt, point) in points.into_iter().enumerate() {
        let mut child = if attempt == 0 {
            spawn(&db, &["run".as_ref(), cfg.as_os_str()])
        } else {
            spawn(&db, &["resume".as_ref(), "1".as_ref()])
        };
        let reg = Registry::open(&db).unwrap();
        let start = Instant::now();
        while !point.reached(&reg, &state) {
            if let Some(status) = child.try_wait().unwrap() {
                let out = child.output();
                panic!(
                    "attempt {attempt}: mvlab ended ({status}) before {point:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(600),
                "attempt {attempt}: {point:?} not reached"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let out = child.kill_now();
        assert!(
            out.status.code().is_none(),
            "attempt {attempt}: exited by itself at {point:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let run = reg.run(1).unwrap();
        recorded_checkpoints_whole(&reg);
        landed.push(format!("{point:?}: {} epochs recorded", run.epochs_done));
        assert_eq!(
            run.display_status(),
            RunStatus::Interrupted,
            "attempt {attempt}"
        );
        assert!(
            run.epochs_done < epochs as i64,
            "killed after the last epoch"
        );
    }
    run_ok(mvlab().arg("--db").arg(&db).args(["resume", "1"]));
    let reg = Registry::open(&db).unwrap();
    assert_eq!(reg.run(1).unwrap().status, RunStatus::Completed);
    recorded_checkpoints_intact(&reg);
    assert_epochs_once(&reg, 1, epochs as i64);
    eprintln!(
        "kill -9: {} kills ({}), run completed with every epoch recorded once",
        points.len(),
        landed.join(", ")
    );
}

/// Run 1 trains against a PostgreSQL registry; after its first epoch is recorded `fault` is
/// done to the server (given the running `mvlab run`). Returns the registry, the run's exit
/// code and the folder it ran in (its run folders).
fn postgres_fault_mid_run(
    pg: &crate::common::Postgres,
    fault: impl FnOnce(&crate::common::Postgres, &mut Proc),
) -> (Registry, Option<i32>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 40, 40);
    let cfg = tiny_config(dir.path(), &root, 5, "");
    let mut child = crate::common::spawn(
        mvlab()
            .arg("--db")
            .arg(&pg.url)
            .arg("run")
            .arg(&cfg)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let location = pg.url.parse::<mvlab::registry::Location>().unwrap();
    let reg = Registry::open(&location).unwrap();
    let start = Instant::now();
    while reg.run(1).map_or(true, |r| r.epochs_done < 1) {
        assert!(child.try_wait().unwrap().is_none(), "mvlab exited early");
        assert!(start.elapsed() < Duration::from_secs(600), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    fault(pg, &mut child);
    let out = child.output();
    drop(reg);
    let reg = Registry::open(&location).unwrap();
    let code = out.status.code();
    if code != Some(0) {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    (reg, code, dir)
}

/// Run 1 trains against a PostgreSQL registry that goes down (`pg_ctl -m fast stop`) for
/// `down` after its first epoch.
fn postgres_down_mid_run(
    pg: &crate::common::Postgres,
    down: Duration,
) -> (Registry, Option<i32>, tempfile::TempDir) {
    postgres_fault_mid_run(pg, |pg, _| pg.outage(down))
}

/// Freezes the server (SIGSTOP) and keeps it frozen until the run stands at an epoch's end
/// waiting for it: both its recording thread (its writes, every second) and its training
/// thread (which asks the registry whether the run is still its own before it writes the
/// epoch's checkpoint) have requests the server has not read.
fn freeze_across_an_epoch_end(pg: &crate::common::Postgres, child: &mut Proc) {
    pg.freeze();
    let start = Instant::now();
    while pg.waiting_clients() < 2 {
        if child.try_wait().unwrap().is_some() {
            pg.thaw();
            panic!("mvlab ended while the server was frozen");
        }
        if start.elapsed() > Duration::from_secs(600) {
            pg.thaw();
            panic!("the run did not reach an epoch's end");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A server frozen (every process SIGSTOPped: connections open, nothing answered) across an
/// epoch's end, then let go (SIGCONT) 10 s later: the run's requests wait and go on, and the
/// run completes by itself, each epoch recorded once.
#[test]
fn a_postgresql_server_frozen_across_an_epochs_end_holds_the_run_up_and_loses_nothing() {
    let Some(pg) = crate::common::postgres() else {
        return;
    };
    let (reg, code, _dir) = postgres_fault_mid_run(&pg, |pg, child| {
        freeze_across_an_epoch_end(pg, child);
        std::thread::sleep(Duration::from_secs(10));
        pg.thaw();
    });
    assert_eq!(code, Some(0));
    assert_eq!(reg.run(1).unwrap().status, RunStatus::Completed);
    assert_epochs_once(&reg, 1, 5);
}

/// A server that crashes (every process killed at once, mid-request) across an epoch's end
/// and restarts (crash recovery): the run's cut requests are tried again (the one that asks
/// whether the run is still its own included), and the run completes by itself, each epoch
/// recorded once.
#[test]
fn a_postgresql_server_crashing_across_an_epochs_end_loses_no_epoch() {
    let Some(pg) = crate::common::postgres() else {
        return;
    };
    let (reg, code, _dir) = postgres_fault_mid_run(&pg, |pg, child| {
        freeze_across_an_epoch_end(pg, child);
        pg.crash_and_restart();
    });
    assert_eq!(code, Some(0));
    assert_eq!(reg.run(1).unwrap().status, RunStatus::Completed);
    assert_epochs_once(&reg, 1, 5);
}

/// A short outage: the run's writes wait for the server (the pool reconnects within its 60 s
/// acquire timeout) and training goes on meanwhile.
#[test]
fn a_postgresql_outage_of_seconds_in_the_middle_of_a_run_loses_no_epoch() {
    let Some(pg) = crate::common::postgres() else {
        return;
    };
    let (reg, code, _dir) = postgres_down_mid_run(&pg, Duration::from_secs(3));
    assert_eq!(code, Some(0));
    assert_eq!(reg.run(1).unwrap().status, RunStatus::Completed);
    assert_epochs_once(&reg, 1, 5);
}

/// Longer than the lease: the run stops before it writes a checkpoint it may no longer own
/// (its heartbeat fails), and is marked cancelled once the server is back (writes that failed
/// as unreachable are tried again with backoff); `resume` completes it, each epoch once.
#[test]
fn a_postgresql_outage_longer_than_the_lease_leaves_the_run_resumable() {
    let Some(pg) = crate::common::postgres() else {
        return;
    };
    let (reg, code, dir) = postgres_down_mid_run(&pg, Duration::from_secs(70));
    assert_eq!(code, Some(130));
    assert_eq!(reg.run(1).unwrap().status, RunStatus::Cancelled);
    run_ok(
        mvlab()
            .arg("--db")
            .arg(&pg.url)
            .args(["resume", "1"])
            .current_dir(dir.path()),
    );
    assert_eq!(reg.run(1).unwrap().status, RunStatus::Completed);
    assert_epochs_once(&reg, 1, 5);
}

/// The S3 server killed after the run's first upload and started again 6 s later (with the
/// objects it had): the uploads that meet the dead server are retried, the run completes, and
/// every checkpoint the registry records is in the store with its recorded sha256.
#[test]
fn an_s3_server_down_for_seconds_mid_run_loses_nothing_and_records_only_what_it_holds() {
    let Some(mut s3) = crate::common::s3_on_disk("mvlab") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 40, 40);
    let cfg = tiny_config(dir.path(), &root, 8, "");
    let db = dir.path().join("r.db");
    let place = |s3: &crate::common::S3, c: &mut Command, scratch: &str| {
        s3.env(c);
        c.arg("--db")
            .arg(&db)
            .args(["--artifacts", "s3://mvlab/f", "--scratch"])
            .arg(dir.path().join(scratch));
    };
    let mut run = mvlab();
    place(&s3, &mut run, "scratch");
    let child = crate::common::spawn(
        run.arg("run")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let reg = Registry::open(&db).unwrap();
    let start = Instant::now();
    while reg.checkpoints(1).map_or(true, |c| c.is_empty()) {
        assert!(start.elapsed() < Duration::from_secs(300), "no upload");
        std::thread::sleep(Duration::from_millis(10));
    }
    let at_kill = reg.run(1).unwrap().epochs_done;
    s3.outage(Duration::from_secs(6));
    let out = child.output();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(at_kill < 8, "the run had ended before the server went down");
    assert_eq!(reg.run(1).unwrap().status, RunStatus::Completed);
    assert_epochs_once(&reg, 1, 8);
    let cks = reg.checkpoints(1).unwrap();
    assert!(
        cks.iter().any(|c| c.epoch == 8),
        "the last epoch's checkpoint"
    );
    for ck in &cks {
        checkpoint::verify(&s3.stored_object(&ck.path), &ck.sha256)
            .unwrap_or_else(|e| panic!("{} checkpoint of epoch {}: {e:#}", ck.kind, ck.epoch));
    }
    // And from a fresh folder, through the server, as another machine would.
    let mut eval = mvlab();
    place(&s3, &mut eval, "fresh");
    run_ok(eval.args(["eval", "1"]));
}
