//! Checkpoints in an object store (a real S3-compatible server, moto): a sweep drained by three
//! workers, each with a scratch folder of its own; eval and export of their runs from a fresh
//! folder; recorded checksums checked on download; an upload that cannot succeed records no
//! checkpoint. On SQLite and on a real PostgreSQL server.

use crate::common::Timed;
use crate::common::*;
use mvlab::registry::{Location, Registry};
use mvlab::status::RunStatus;
use std::process::{Command, Stdio};

fn with(cmd: &mut Command, s3: &S3, db: &str, artifacts: &str, scratch: &std::path::Path) {
    s3.env(cmd);
    cmd.args(["--db", db, "--artifacts", artifacts, "--scratch"])
        .arg(scratch);
}

#[test]
fn three_workers_drain_a_sweep_into_s3_and_a_fresh_folder_reads_it_back() {
    let Some(s3) = s3() else { return };
    let pg = postgres();
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 8, 40);
    let extra =
        "bn_recalibrate = 0\n[sweep]\n[sweep.parameters]\n\"train.seed\" = [1, 2, 3, 4, 5, 6]\n";
    let cfg = tiny_config(dir.path(), &root, 2, extra);
    assert_eq!(s3.http("PUT", "/mvlab", b"").0, 200, "bucket created");
    let mut dbs = vec![dir.path().join("r.db").display().to_string()];
    dbs.extend(pg.as_ref().map(|p| p.url.clone()));
    for (i, db) in dbs.iter().enumerate() {
        let artifacts = format!("s3://mvlab/case{i}");
        let mut queue = mvlab();
        with(&mut queue, &s3, db, &artifacts, &dir.path().join("q"));
        run_ok(queue.arg("sweep").arg(&cfg).args(["--workers", "0"]));
        let workers: Vec<_> = (0..3)
            .map(|w| {
                let mut c = mvlab();
                with(
                    &mut c,
                    &s3,
                    db,
                    &artifacts,
                    &dir.path().join(format!("scratch-{i}-{w}")),
                );
                c.arg("worker")
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn_guarded()
            })
            .collect();
        for w in workers {
            let out = w.output();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let reg = Registry::open(&db.parse::<Location>().unwrap()).unwrap();
        let runs = reg.sweep_runs(reg.sweeps().unwrap()[0].id).unwrap();
        assert_eq!(runs.len(), 6);
        for r in &runs {
            assert_eq!(r.status, RunStatus::Completed, "{db}: run {}", r.id);
            for ck in reg.checkpoints(r.id).unwrap() {
                assert!(
                    ck.path.starts_with(&format!(
                        "{artifacts}/{}.runs/{}/",
                        db.parse::<Location>().unwrap().short_name(),
                        r.id
                    )),
                    "{}",
                    ck.path
                );
            }
        }

        // A fresh folder on "another machine": eval and export download and check the files.
        let fresh = tempfile::tempdir().unwrap();
        let run = runs[0].id.to_string();
        let mut eval = mvlab();
        with(
            &mut eval,
            &s3,
            db,
            &artifacts,
            &fresh.path().join("scratch"),
        );
        let out = run_ok(
            eval.current_dir(fresh.path())
                .args(["eval", &run, "--json"]),
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["images"], 6, "{v}");
        let mut export = mvlab();
        with(
            &mut export,
            &s3,
            db,
            &artifacts,
            &fresh.path().join("scratch"),
        );
        run_ok(export.current_dir(fresh.path()).args([
            "export",
            &run,
            "--format",
            "safetensors",
            "--out",
            "m.safetensors",
        ]));
        assert!(fresh.path().join("m.safetensors").metadata().unwrap().len() > 1_000_000);

        // Bytes that are not what was recorded are refused.
        let best = reg
            .checkpoints(runs[1].id)
            .unwrap()
            .into_iter()
            .find(|c| c.kind == mvlab::status::CheckpointKind::Best)
            .unwrap();
        let key = best.path.trim_start_matches("s3://");
        assert_eq!(
            s3.http("PUT", &format!("/{key}"), b"not a checkpoint").0,
            200
        );
        let mut eval = mvlab();
        with(
            &mut eval,
            &s3,
            db,
            &artifacts,
            &fresh.path().join("scratch2"),
        );
        let out = eval.args(["eval", &runs[1].id.to_string()]).timed_output();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("does not match the recorded"), "{err}");
    }
}

#[test]
fn a_store_that_cannot_take_files_is_refused_before_any_training() {
    let Some(s3) = s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 8, 40);
    let cfg = tiny_config(dir.path(), &root, 2, "bn_recalibrate = 0\n");
    let db = dir.path().join("r.db").display().to_string();
    // No such bucket: found out at once, before a run is recorded or an epoch trained.
    let mut run = mvlab();
    with(
        &mut run,
        &s3,
        &db,
        "s3://no-such-bucket/x",
        &dir.path().join("scratch"),
    );
    let started = std::time::Instant::now();
    let out = run.arg("run").arg(&cfg).timed_output();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("s3://no-such-bucket/x") && err.contains("cannot store files there"),
        "{err}"
    );
    assert!(started.elapsed().as_secs() < 60);
    let reg = Registry::open(&dir.path().join("r.db")).unwrap();
    assert!(reg.runs().unwrap().is_empty(), "nothing recorded");
}

#[test]
fn a_run_killed_on_one_machine_resumes_on_another_from_the_object_store() {
    let Some(s3) = s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 16, 40);
    let extra = "bn_recalibrate = 0\n[sweep]\n[sweep.parameters]\n\"train.seed\" = [1]\n";
    let cfg = tiny_config(dir.path(), &root, 8, extra);
    assert_eq!(s3.http("PUT", "/resume", b"").0, 200);
    let db = dir.path().join("r.db").display().to_string();
    let artifacts = "s3://resume/x";
    let mut queue = mvlab();
    with(&mut queue, &s3, &db, artifacts, &dir.path().join("q"));
    run_ok(queue.arg("sweep").arg(&cfg).args(["--workers", "0"]));
    // "Machine" A: its own scratch folder; killed after its first stored checkpoint.
    let mut a = mvlab();
    with(&mut a, &s3, &db, artifacts, &dir.path().join("machine-a"));
    let mut a = a
        .args(["worker", "--lease-s", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn_guarded();
    let reg = Registry::open(&dir.path().join("r.db")).unwrap();
    let start = std::time::Instant::now();
    while reg.run(1).unwrap().epochs_done < 1 {
        assert!(start.elapsed().as_secs() < 60, "no first checkpoint");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    a.kill().unwrap();
    a.wait();
    // "Machine" B: nothing of A's folder; it downloads the checkpoint and finishes the run.
    let mut b = mvlab();
    with(&mut b, &s3, &db, artifacts, &dir.path().join("machine-b"));
    run_ok(b.args([
        "worker",
        "--lease-s",
        "2",
        "--wait",
        "20",
        "--max-runs",
        "1",
    ]));
    let run = reg.run(1).unwrap();
    assert_eq!((run.status, run.attempt), (RunStatus::Completed, 2));
    assert_epochs_once(&reg, 1, 8);
    let logs = reg.logs(1, 200).unwrap();
    assert!(
        logs.iter()
            .any(|l| l.message.starts_with("resumed after epoch"))
    );
    assert!(
        dir.path().join("machine-b/r.runs/1/state.json").exists(),
        "B trained in its own folder"
    );
}

/// The objects stored under `prefix` in `bucket` (moto lists them as XML).
fn keys(s3: &S3, bucket: &str, prefix: &str) -> Vec<String> {
    let (status, body) = s3.http(
        "GET",
        &format!("/{bucket}?list-type=2&prefix={prefix}"),
        b"",
    );
    assert_eq!(status, 200, "{body}");
    body.split("<Key>")
        .skip(1)
        .filter_map(|k| k.split("</Key>").next())
        .map(String::from)
        .collect()
}

#[test]
fn deleting_a_run_removes_its_objects_from_the_store() {
    let Some(s3) = s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 8, 40);
    let cfg = tiny_config(
        dir.path(),
        &root,
        2,
        "bn_recalibrate = 0
",
    );
    assert_eq!(s3.http("PUT", "/gone", b"").0, 200);
    let db = dir.path().join("r.db").display().to_string();
    let scratch = dir.path().join("scratch");
    for _ in 0..3 {
        let mut run = mvlab();
        with(&mut run, &s3, &db, "s3://gone/p", &scratch);
        run_ok(run.arg("run").arg(&cfg));
    }
    for run in 1..=3 {
        assert!(
            keys(&s3, "gone", &format!("p/r.runs/{run}/")).len() >= 4,
            "run {run} stored its checkpoints"
        );
    }

    // Run 1 trained in its scratch folder, which the delete takes too.
    assert!(scratch.join("r.runs/1").is_dir());
    // `mvlab delete` and the workbench's delete both go through `jobs::delete_run`.
    let mut delete = mvlab();
    with(&mut delete, &s3, &db, "s3://gone/p", &scratch);
    run_ok(delete.args(["delete", "1"]));
    assert_eq!(keys(&s3, "gone", "p/r.runs/1/"), Vec::<String>::new());
    assert!(!scratch.join("r.runs/1").exists());

    assert!(
        keys(&s3, "gone", "p/r.runs/3/").len() >= 4,
        "other runs keep theirs"
    );
}
