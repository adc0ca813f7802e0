//! Run folders belong to their registry: registries side by side keep their runs apart, a
//! folder another registry owns is refused, and a registry from before owners keeps its folders.

use crate::common::Timed;
use crate::common::{mvlab, run_of, run_ok, tiny_config, tiny_dataset};
use mvlab::checkpoint;
use mvlab::registry::Registry;
use std::path::Path;

fn run(db: &Path, cfg: &Path, args: &[&str]) -> std::process::Output {
    run_of(db, cfg).args(args).timed_output()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every recorded checkpoint of the registry's run `id` is where the row says, with its sha256.
fn checkpoints_intact(db: &Path, id: i64) -> Vec<String> {
    let reg = Registry::open(db).unwrap();
    let cks = reg.checkpoints(id).unwrap();
    assert!(
        !cks.is_empty(),
        "{}: run {id} has checkpoints",
        db.display()
    );
    cks.iter()
        .map(|ck| {
            checkpoint::verify(Path::new(&ck.path), &ck.sha256).unwrap();
            ck.path.clone()
        })
        .collect()
}

#[test]
fn registries_side_by_side_keep_their_runs_apart() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 2, 6, 32);
    let cfg = tiny_config(dir.path(), &root, 1, "");
    let (acc, acc3) = (dir.path().join("acc.db"), dir.path().join("acc3.db"));
    run_ok(&mut run_of(&acc, &cfg));
    let before = checkpoints_intact(&acc, 1);
    run_ok(run_of(&acc3, &cfg).args(["--seeds", "2"]));
    // Both run 1s evaluate: each registry's files are where it recorded them, unchanged.
    assert_eq!(checkpoints_intact(&acc, 1), before);
    for id in [1, 2] {
        let paths = checkpoints_intact(&acc3, id);
        assert!(paths.iter().all(|p| p.contains("acc3.runs")), "{paths:?}");
    }
    assert!(before.iter().all(|p| p.contains("acc.runs")), "{before:?}");
    for db in [&acc, &acc3] {
        run_ok(mvlab().arg("--db").arg(db).args(["eval", "1"]));
    }
}

/// `x.db` and `x.sqlite` in one folder: the first made keeps its runs in `x.runs`, the other,
/// whose stem is taken, in `x.sqlite.runs`; each registry's checkpoints stay where it recorded
/// them, unchanged, and evaluate. A new registry beside a leftover `y.runs` (its registry gone)
/// keeps clear of it the same way.
#[test]
fn registries_of_one_name_in_one_folder_keep_their_runs_apart() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 2, 6, 32);
    let cfg = tiny_config(dir.path(), &root, 1, "");
    let (db, sqlite) = (dir.path().join("x.db"), dir.path().join("x.sqlite"));
    run_ok(&mut run_of(&db, &cfg));
    let before = checkpoints_intact(&db, 1);
    run_ok(&mut run_of(&sqlite, &cfg));
    assert_eq!(checkpoints_intact(&db, 1), before);
    assert!(
        before.iter().all(|p| p.contains("/x.runs/1/")),
        "{before:?}"
    );
    let theirs = checkpoints_intact(&sqlite, 1);
    assert!(
        !theirs.is_empty() && theirs.iter().all(|p| p.contains("/x.sqlite.runs/1/")),
        "{theirs:?}"
    );
    assert_eq!(
        Registry::open(&db).unwrap().artifacts.owner().runs,
        "x.runs"
    );
    assert_eq!(
        Registry::open(&sqlite).unwrap().artifacts.owner().runs,
        "x.sqlite.runs"
    );
    for db in [&db, &sqlite] {
        run_ok(mvlab().arg("--db").arg(db).args(["eval", "1"]));
    }

    std::fs::create_dir_all(dir.path().join("y.runs/1")).unwrap();
    assert_eq!(
        Registry::open(&dir.path().join("y.db"))
            .unwrap()
            .artifacts
            .owner()
            .runs,
        "y.db.runs"
    );
}

#[test]
fn a_folder_owned_by_another_registry_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 2, 6, 32);
    let cfg = tiny_config(dir.path(), &root, 1, "");
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    run_ok(&mut run_of(&a, &cfg));
    // b, made now, keeps its runs in b.runs; its run 1 would train in b.runs/1: put a's run 1
    // there.
    assert_eq!(Registry::open(&b).unwrap().artifacts.owner().runs, "b.runs");
    let theirs = dir.path().join("b.runs/1");
    std::fs::create_dir_all(dir.path().join("b.runs")).unwrap();
    let copy = std::process::Command::new("cp")
        .arg("-r")
        .arg(dir.path().join("a.runs/1"))
        .arg(&theirs)
        .timed_status();
    assert!(copy.success());
    let best = std::fs::read(theirs.join("best.bpk")).unwrap();
    let out = run(&b, &cfg, &[]);
    assert!(!out.status.success(), "wrote into a's folder");
    let err = stderr(&out);
    assert!(
        err.contains("b.runs/1") && err.contains("belongs to run 1 of registry"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(theirs.join("best.bpk")).unwrap(),
        best,
        "left as it was"
    );

    // Without the marker, files that are not the run's recorded checkpoints are refused too.
    std::fs::remove_file(theirs.join("owner.json")).unwrap();
    let out = mvlab()
        .arg("--db")
        .arg(&b)
        .args(["resume", "1"])
        .timed_output();
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("no owner's marker"),
        "{err}"
    );
    assert_eq!(std::fs::read(theirs.join("best.bpk")).unwrap(), best);
    // Once moved away, the run trains in its own folder; a folder left holding only the
    // temporary file of a marker write cut short (a kill -9 in `claim`) is its own too.
    std::fs::remove_dir_all(&theirs).unwrap();
    std::fs::create_dir_all(&theirs).unwrap();
    std::fs::write(theirs.join(".owner.json.4242-0.tmp"), "{\"regis").unwrap();
    run_ok(mvlab().arg("--db").arg(&b).args(["resume", "1"]));
    checkpoints_intact(&b, 1);
    checkpoints_intact(&a, 1);
}

/// A registry written before run folders had owners: its runs in `runs/<id>`, no id recorded.
#[test]
fn a_registry_from_before_owners_keeps_its_folders_and_adopts_them() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 16, 40);
    let cfg = tiny_config(dir.path(), &root, 3, "");
    let db = dir.path().join("old.db");
    // Run 1 cancelled after its first epoch (Ctrl-C): resumable, with its checkpoints.
    let mut child = run_of(&db, &cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn_guarded();
    let start = std::time::Instant::now();
    while Registry::open(&db)
        .and_then(|r| r.run(1))
        .map_or(true, |r| r.epochs_done < 1)
    {
        assert!(child.try_wait().unwrap().is_none(), "mvlab exited early");
        assert!(start.elapsed().as_secs() < 300, "no progress");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let int = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .timed_status();
    assert!(int.success());
    assert_eq!(child.wait().code(), Some(130));
    // Made old: the folder moved to `runs/1` and recorded there, no owner anywhere.
    std::fs::rename(dir.path().join("old.runs"), dir.path().join("runs")).unwrap();
    std::fs::remove_file(dir.path().join("runs/1/owner.json")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use sqlx::Connection;
        let url = format!("sqlite://{}", db.display());
        let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
        for sql in [
            "DELETE FROM registry_meta",
            "UPDATE checkpoints SET path = replace(path, 'old.runs', 'runs')",
            "UPDATE runs SET run_dir = replace(run_dir, 'old.runs', 'runs')",
        ] {
            sqlx::query(sql).execute(&mut c).await.unwrap();
        }
    });
    let before = checkpoints_intact(&db, 1);
    assert!(before.iter().all(|p| p.contains("/runs/1/")), "{before:?}");
    // Opened again: its runs stay in `runs`, and a new run goes there too, with an owner.
    run_ok(run_of(&db, &cfg).args(["--set", "train.epochs=1"]));
    assert!(dir.path().join("runs/2/owner.json").is_file());
    assert!(!dir.path().join("old.runs").exists());
    assert_eq!(Registry::open(&db).unwrap().artifacts.owner().runs, "runs");
    // Run 1's folder holds its recorded checkpoints unchanged: resuming adopts it.
    run_ok(mvlab().arg("--db").arg(&db).args(["resume", "1"]));
    assert!(dir.path().join("runs/1/owner.json").is_file());
    assert_eq!(Registry::open(&db).unwrap().run(1).unwrap().epochs_done, 3);
    run_ok(mvlab().arg("--db").arg(&db).args(["eval", "1"]));
}
