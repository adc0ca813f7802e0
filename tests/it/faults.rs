//! Faults injected for real: a disk that fills up under a run, `kill -9` at random moments
//! (checkpoint writing included), the PostgreSQL server and the S3 server going down mid-run. Each time nothing recorded is lost and the run resumes.

use crate::common::{assert_epochs_once, mvlab, run_ok, tiny_config, tiny_dataset};
use mvlab::checkpoint;
use mvlab::registry::Registry;
use mvlab::status::RunStatus;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

/// Whether the run folder's state is past the last checkpoint the registry records.
fn folder_ahead(state: &Path, reg: &Registry) -> bool {
    let Some(done) = std::fs::read(state)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["epochs_done"].as_i64())
    else {
        return false;
    };
    let recorded = reg
        .checkpoints(1)
        .map(|c| {
            c.iter()
                .filter(|c| c.kind == mvlab::status::CheckpointKind::Last)
                .map(|c| c.epoch)
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(i64::MAX);
    done > recorded
}

fn spawn(db: &Path, args: &[&std::ffi::OsStr]) -> Child {
    mvlab()
        .arg("--db")
        .arg(db)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A tmpfs of `mb` MiB at `dir`, unmounted when dropped; None (with a note) where this process
/// may not mount.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, mb: usize) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // A capability of the machine, not a package CI could install: said, not failed.
            eprintln!(
                "SKIPPED: the disk-full test cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)"
            );
            return None;
        }
        Some(Self(dir.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

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
    let mut child = spawn(
        &db,
        &[&artifacts[..], &["run".as_ref(), cfg.as_os_str()]].concat(),
    );
    // Once epoch 1's checkpoint is recorded, the disk fills up.
    let start = Instant::now();
    while Registry::open(&db)
        .and_then(|r| r.checkpoints(1))
        .map_or(true, |c| c.is_empty())
    {
        assert!(child.try_wait().unwrap().is_none(), "mvlab exited early");
        assert!(start.elapsed() < Duration::from_secs(300), "no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    let filler = small.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 1 << 20];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    let out = child.wait_with_output().unwrap();
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

#[test]
fn kill_9_at_random_moments_never_leaves_registry_and_folder_apart() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 40, 40);
    let epochs = 12;
    let cfg = tiny_config(dir.path(), &root, epochs, "");
    let db = dir.path().join("r.db");
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (mut kills, mut completed) = (0, false);
    let mut landed = Vec::new();
    for attempt in 0..16 {
        let mut child = if attempt == 0 {
            spawn(&db, &["run".as_ref(), cfg.as_os_str()])
        } else {
            spawn(&db, &["resume".as_ref(), "1".as_ref()])
        };
        // Every other time at a random moment (start-up, a step, an evaluation, a checkpoint's
        // files); else the moment the folder holds an epoch the registry has not recorded.
        let delay = if attempt % 2 == 0 {
            let delay = rng.random_range(200..2000);
            std::thread::sleep(Duration::from_millis(delay));
            delay
        } else {
            let start = Instant::now();
            let reg = Registry::open(&db).unwrap();
            while child.try_wait().unwrap().is_none()
                && start.elapsed() < Duration::from_secs(10)
                && !folder_ahead(&dir.path().join("r.runs/1/state.json"), &reg)
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            start.elapsed().as_millis() as u64
        };
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        let out = child.wait_with_output().unwrap();
        let reg = Registry::open(&db).unwrap();
        let run = reg.run(1).unwrap();
        recorded_checkpoints_whole(&reg);
        landed.push(format!("{delay} ms: {} epochs", run.epochs_done));
        if run.status == RunStatus::Completed {
            completed = true;
            break;
        }
        assert!(
            out.status.code().is_none(),
            "attempt {attempt}: exited by itself without completing: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            run.display_status(),
            RunStatus::Interrupted,
            "attempt {attempt}"
        );
    }
    if !completed {
        run_ok(mvlab().arg("--db").arg(&db).args(["resume", "1"]));
    }
    assert!(
        kills >= 5,
        "only {kills} kills landed: {}",
        landed.join(", ")
    );
    let reg = Registry::open(&db).unwrap();
    assert_eq!(reg.run(1).unwrap().status, RunStatus::Completed);
    recorded_checkpoints_intact(&reg);
    assert_epochs_once(&reg, 1, epochs as i64);
    eprintln!(
        "kill -9: {kills} kills ({}), run completed with every epoch recorded once",
        landed.join(", ")
    );
}

/// Run 1 trains against a PostgreSQL registry that goes down for `down` after its first epoch;
/// returns the registry, the run's exit code and the folder it ran in (its run folders).
fn postgres_down_mid_run(
    pg: &crate::common::Postgres,
    down: Duration,
) -> (Registry, Option<i32>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 40, 40);
    let cfg = tiny_config(dir.path(), &root, 5, "");
    let child = mvlab()
        .arg("--db")
        .arg(&pg.url)
        .arg("run")
        .arg(&cfg)
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let location = pg.url.parse::<mvlab::registry::Location>().unwrap();
    let reg = Registry::open(&location).unwrap();
    let start = Instant::now();
    while reg.run(1).map_or(true, |r| r.epochs_done < 1) {
        assert!(start.elapsed() < Duration::from_secs(300), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    pg.outage(down);
    let out = child.wait_with_output().unwrap();
    drop(reg);
    let reg = Registry::open(&location).unwrap();
    let code = out.status.code();
    if code != Some(0) {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    (reg, code, dir)
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
    let child = run
        .arg("run")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let reg = Registry::open(&db).unwrap();
    let start = Instant::now();
    while reg.checkpoints(1).map_or(true, |c| c.is_empty()) {
        assert!(start.elapsed() < Duration::from_secs(300), "no upload");
        std::thread::sleep(Duration::from_millis(10));
    }
    let at_kill = reg.run(1).unwrap().epochs_done;
    s3.outage(Duration::from_secs(6));
    let out = child.wait_with_output().unwrap();
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
