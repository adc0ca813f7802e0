//! The registry on both backends, SQLite and a real PostgreSQL server started here: every query
//! round-trips, and worker processes racing over one queue take each run exactly once.

use crate::common::Timed;
use crate::common::*;
use mvlab::config::{Monitor, PruneRule, SweepMethod};
use mvlab::registry::{CheckpointMetrics, Location, MetricRow, NewRun, Registry};
use mvlab::status::Metric;
use mvlab::status::{CheckpointKind, LogLevel, RunStatus};
use std::process::Stdio;

/// A SQLite file in `dir`, and the PostgreSQL server when there is one.
fn backends(dir: &std::path::Path, pg: &Option<Postgres>) -> Vec<Location> {
    let mut v = vec![Location::Sqlite(dir.join("r.db"))];
    if let Some(pg) = pg {
        v.push(Location::Postgres(pg.url.clone()));
    }
    v
}

fn new_run(reg: &Registry, status: RunStatus, sweep_id: Option<i64>) -> i64 {
    reg.create_run(&NewRun {
        experiment_id: None,
        name: "t",
        status,
        config: "name = \"t\"\n[data]\nroot = \"x\"\n",
        overrides: &[],
        epochs_total: 3,
        monitor: Monitor::ValAccuracy,
        sweep_id,
        provenance: None,
    })
    .unwrap()
}

fn exercise(reg: &Registry) {
    let e1 = reg
        .upsert_experiment("a.toml", "a", "x", "h1", None)
        .unwrap();
    let e2 = reg
        .upsert_experiment("a.toml", "a", "y", "h2", Some("bad"))
        .unwrap();
    assert_eq!(e1, e2, "{}", reg.location);
    let sweep = reg
        .create_sweep(&mvlab::registry::NewSweep {
            experiment_id: Some(e1),
            name: "s",
            config: "cfg",
            method: SweepMethod::Random,
            prune: PruneRule::Halving,
            path: "a.toml",
            overrides: &["train.epochs=2".into()],
        })
        .unwrap();
    let s = reg.sweep(sweep).unwrap();
    assert_eq!(
        s.override_list().unwrap(),
        vec!["train.epochs=2".to_string()]
    );
    assert!(s.started_s.is_some_and(|t| t > 1.7e9), "{:?}", s.started_s);
    // The proposal hold: one holder at a time, released, and lost once it runs out.
    assert!(reg.hold_sweep(sweep, "a", 30.0).unwrap());
    assert!(!reg.hold_sweep(sweep, "b", 30.0).unwrap());
    reg.release_sweep(sweep, "a").unwrap();
    assert!(reg.hold_sweep(sweep, "b", -1.0).unwrap());
    assert!(
        reg.hold_sweep(sweep, "c", 30.0).unwrap(),
        "b's hold ran out"
    );
    reg.release_sweep(sweep, "c").unwrap();
    assert_eq!(
        (s.method, s.prune),
        (SweepMethod::Random, PruneRule::Halving)
    );
    assert_eq!(reg.sweeps().unwrap().len(), 1);
    let a = new_run(reg, RunStatus::Queued, Some(sweep));
    let b = new_run(reg, RunStatus::Queued, Some(sweep));
    let other = new_run(reg, RunStatus::Queued, None);
    assert_eq!(reg.sweep_runs(sweep).unwrap().len(), 2);
    let (claimed, la) = reg.claim_queued("w1", Some(sweep), 60.0).unwrap().unwrap();
    assert_eq!(
        (claimed.id, claimed.status, claimed.attempt),
        (a, RunStatus::Running, 1)
    );
    let (claimed_b, lb) = reg.claim_queued("w2", Some(sweep), 60.0).unwrap().unwrap();
    assert_eq!(claimed_b.id, b);
    assert!(reg.claim_queued("w3", Some(sweep), 60.0).unwrap().is_none());
    assert_eq!(
        reg.claim_queued("w3", None, 60.0).unwrap().unwrap().0.id,
        other
    );
    assert!(
        reg.claim_run(a, "w4", 60.0, None).is_err(),
        "a held run cannot be taken"
    );
    reg.start_run(&la, "cpu", "runs/1", "w1").unwrap();
    reg.set_classes(&la, &["x".into(), "y".into()]).unwrap();
    assert_eq!(reg.run(a).unwrap().class_names().unwrap(), ["x", "y"]);
    let m = |run, epoch, value| MetricRow::new(run, epoch, epoch, Metric::ValAccuracy, value);
    let saved = CheckpointMetrics {
        train_loss: 1.0,
        train_accuracy: 0.5,
        val_loss: 1.5,
        val_accuracy: 0.25,
    };
    reg.insert_metrics(&la, &[m(a, 1, 0.5), m(a, 2, 0.7)])
        .unwrap();
    reg.insert_metrics(&lb, &[m(b, 1, 0.25), m(b, 2, 0.75)])
        .unwrap();
    assert_eq!(
        reg.epoch_series(a, Metric::ValAccuracy).unwrap(),
        vec![(1, 0.5), (2, 0.7)]
    );
    let mut mates = reg
        .sweep_mates_at(sweep, a, 2, Metric::ValAccuracy)
        .unwrap();
    mates.sort_by(f64::total_cmp);
    assert_eq!(mates, vec![0.75]);
    reg.truncate_metrics_after(&la, 1).unwrap();
    assert_eq!(reg.metrics(a).unwrap().len(), 1);
    reg.add_checkpoint(&la, 1, CheckpointKind::Last, "l1", &saved, "00")
        .unwrap();
    reg.add_checkpoint(&la, 2, CheckpointKind::Last, "l2", &saved, "11")
        .unwrap();
    reg.add_checkpoint(&la, 2, CheckpointKind::Best, "b2", &saved, "22")
        .unwrap();
    let cks = reg.checkpoints(a).unwrap();
    assert_eq!(cks.len(), 2);
    assert!(
        cks.iter()
            .any(|c| c.kind == CheckpointKind::Last && c.path == "l2")
    );
    assert_eq!(reg.all_checkpoints().unwrap().len(), 2);
    assert_eq!(cks[0].saved_metrics().unwrap(), saved);
    for i in 0..5 {
        reg.log(&la, LogLevel::Info, &format!("line {i}")).unwrap();
    }
    reg.log(&la, LogLevel::Warn, "last").unwrap();
    let logs = reg.logs(a, 3).unwrap();
    let texts: Vec<&str> = logs.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(
        texts,
        ["line 3", "line 4", "last"],
        "the newest, oldest first"
    );
    // Deployed files measured: one by `mvlab export` (unheld), one by the sweep's worker (held),
    // and one that could not be measured, with its reason.
    let export = mvlab::registry::NewExport {
        run_id: a,
        checkpoint_sha256: "22",
        checkpoint_kind: Some("best"),
        epoch: Some(2),
        format: "onnx",
        quantize: "int8",
        path: "/x/best.int8.onnx",
        size_bytes: Some(1_441_958),
        images: Some(367),
        val_accuracy: Some(0.84),
        float_val_accuracy: Some(0.843),
        agreement: Some(0.992),
        latency_ms: None,
        error: None,
    };
    reg.record_export(&export).unwrap();
    reg.record_sweep_export(
        &la,
        &mvlab::registry::NewExport {
            latency_ms: Some(3.5),
            ..export.clone()
        },
    )
    .unwrap();
    reg.record_sweep_export(
        &la,
        &mvlab::registry::NewExport {
            error: Some("no LiteRT"),
            size_bytes: None,
            ..export.clone()
        },
    )
    .unwrap();
    let exports = reg.exports(a).unwrap();
    assert_eq!(exports.len(), 3, "{}", reg.location);
    assert_eq!(exports[0].source, mvlab::registry::ExportSource::Export);
    assert_eq!(
        (exports[0].size_bytes, exports[0].images, exports[0].epoch),
        (Some(1_441_958), Some(367), Some(2))
    );
    assert_eq!(exports[0].agreement, Some(0.992));
    assert!(
        exports[0]
            .line()
            .contains("top-1 agreement 99.20% on 367 val images")
    );
    assert_eq!(exports[1].latency_ms, Some(3.5));
    let last = reg.last_sweep_export(a).unwrap().unwrap();
    assert_eq!(last.error.as_deref(), Some("no LiteRT"));
    assert!(last.line().contains("could not be measured: no LiteRT"));
    assert!(reg.last_sweep_export(b).unwrap().is_none());
    assert!(
        reg.record_sweep_export(
            &mvlab::registry::Lease {
                token: "someone-else".into(),
                ..la.clone()
            },
            &export
        )
        .unwrap_err()
        .is::<mvlab::registry::LeaseLost>(),
        "a sweep's measurement is written under the trial's lease"
    );
    reg.update_progress(&la, 2, Some((0.7, 2))).unwrap();
    reg.heartbeat(&la).unwrap();
    // Another worker's token is refused on every write, and nothing is written.
    let stranger = mvlab::registry::Lease {
        token: "someone-else".into(),
        ..la.clone()
    };
    let lost = |r: anyhow::Result<()>| r.unwrap_err().is::<mvlab::registry::LeaseLost>();
    assert!(lost(reg.heartbeat(&stranger)));
    assert!(lost(reg.insert_metrics(&stranger, &[m(a, 9, 0.1)])));
    assert!(lost(reg.log(&stranger, LogLevel::Info, "x")));
    assert!(lost(reg.add_checkpoint(
        &stranger,
        9,
        CheckpointKind::Last,
        "x",
        &saved,
        "00"
    )));
    assert!(lost(reg.update_progress(&stranger, 9, None)));
    assert!(lost(reg.set_classes(&stranger, &[])));
    assert!(lost(reg.truncate_metrics_after(&stranger, 0)));
    assert!(lost(reg.finish_run(
        &stranger,
        RunStatus::Failed,
        None,
        None
    )));
    assert_eq!(reg.metrics(a).unwrap().len(), 1);
    // A lease that lapsed (0 s) goes back to the queue at the next look, the old holder's writes
    // are refused, and at the attempt limit the run fails with the reason.
    let c = new_run(reg, RunStatus::Queued, None);
    let first = reg.claim_run(c, "w5", 0.0, None).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert!(reg.run(c).unwrap().is_orphaned(), "shown as interrupted");
    assert_eq!(reg.requeue_expired(2).unwrap(), (1, 0));
    assert_eq!(reg.run(c).unwrap().status, RunStatus::Queued);
    assert!(lost(reg.heartbeat(&first)));
    let (again, _second) = reg.claim_queued("w6", None, 0.0).unwrap().unwrap();
    assert_eq!((again.id, again.attempt), (c, 2));
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(reg.requeue_expired(2).unwrap(), (0, 1));
    let failed = reg.run(c).unwrap();
    assert_eq!(failed.status, RunStatus::Failed);
    assert!(
        failed
            .error
            .as_deref()
            .unwrap_or("")
            .contains("stopped heartbeating"),
        "{:?}",
        failed.error
    );
    reg.finish_run(&la, RunStatus::Completed, None, Some("{\"x\": 1}"))
        .unwrap();
    let r = reg.run(a).unwrap();
    assert_eq!(
        (r.status, r.epochs_done, r.best_metric, r.best_epoch),
        (RunStatus::Completed, 2, Some(0.7), Some(2))
    );
    assert!(r.duration_s().is_some());
    assert_eq!(reg.runs().unwrap().len(), 4);
    reg.delete_run(a).unwrap();
    assert!(reg.run(a).is_err());
    assert!(reg.checkpoints(a).unwrap().is_empty(), "deletes cascade");
    assert!(reg.exports(a).unwrap().is_empty());
    assert!(reg.logs(a, 10).unwrap().is_empty());
}

#[test]
fn every_query_round_trips_on_sqlite_and_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let pg = postgres();
    for location in backends(dir.path(), &pg) {
        exercise(&Registry::open(&location).unwrap());
        // Opening again finds the migrations applied.
        Registry::open(&location).unwrap();
    }
}

#[test]
fn a_registry_url_names_its_backend_and_bad_ones_are_refused() {
    let l = |s: &str| s.parse::<Location>();
    assert_eq!(
        l("runs/x.db").unwrap(),
        Location::Sqlite("runs/x.db".into())
    );
    assert_eq!(
        l("sqlite://runs/x.db").unwrap(),
        Location::Sqlite("runs/x.db".into())
    );
    assert!(matches!(
        l("postgres://u@h:5/db").unwrap(),
        Location::Postgres(_)
    ));
    assert!(matches!(
        l("postgresql://u@h/db").unwrap(),
        Location::Postgres(_)
    ));
    let e = l("mysql://h/db").unwrap_err().to_string();
    assert!(e.contains("mysql"), "{e}");
    assert_eq!(
        l("postgres://u:secret@h:5/db").unwrap().to_string(),
        "postgres://u:***@h:5/db",
        "no password in messages"
    );
    // The command line takes the same, and an unreachable server is an error, not a new file.
    let dir = tempfile::tempdir().unwrap();
    let out = mvlab()
        .current_dir(dir.path())
        .args(["--db", "postgres://mv@127.0.0.1:1/none", "runs"])
        .timed_output();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot open registry postgres://"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing created"
    );
}

#[test]
fn eight_worker_processes_take_each_of_200_queued_runs_once() {
    let pg = postgres();
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 2, 3, 32);
    let seeds: Vec<String> = (0..200).map(|s| s.to_string()).collect();
    let extra = format!(
        "bn_recalibrate = 0\n[sweep]\n[sweep.parameters]\n\"train.seed\" = [{}]\n",
        seeds.join(", ")
    );
    let cfg = tiny_config(dir.path(), &root, 1, &extra);
    for location in backends(dir.path(), &pg) {
        // Checkpoints of 200 runs: in memory where there is a RAM disk.
        let shm = std::path::Path::new("/dev/shm");
        let art = if shm.is_dir() {
            tempfile::tempdir_in(shm).unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        let db = match &location {
            Location::Sqlite(p) => p.display().to_string(),
            Location::Postgres(url) => url.clone(),
        };
        let with_db = |c: &mut std::process::Command| {
            c.arg("--db").arg(&db).arg("--artifacts").arg(art.path());
        };
        let mut queue = mvlab();
        with_db(&mut queue);
        run_ok(queue.args(["sweep"]).arg(&cfg).args(["--workers", "0"]));
        let mut workers: Vec<_> = (0..8)
            .map(|_| {
                let mut c = mvlab();
                with_db(&mut c);
                c.arg("worker")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn_guarded()
            })
            .collect();
        // A worker leaves when it finds nothing to claim: from then on nothing is queued (every
        // run is claimed, and a held lease is not requeued while its worker beats).
        let reg = Registry::open(&location).unwrap();
        let sweep = reg.sweeps().unwrap()[0].id;
        let started = std::time::Instant::now();
        while !workers.is_empty() {
            assert!(
                started.elapsed() < crate::common::DEADLINE,
                "{location}: {} workers still running after {:?}",
                workers.len(),
                crate::common::DEADLINE
            );
            workers.retain_mut(|w| match w.try_wait().unwrap() {
                Some(status) => {
                    assert!(status.success(), "{location}: a worker failed");
                    let queued = reg
                        .sweep_runs(sweep)
                        .unwrap()
                        .iter()
                        .filter(|r| r.status == RunStatus::Queued)
                        .count();
                    assert_eq!(
                        queued, 0,
                        "{location}: a worker quit while runs were still queued"
                    );
                    false
                }
                None => true,
            });
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let runs = reg.sweep_runs(sweep).unwrap();
        assert_eq!(runs.len(), 200, "{location}");
        let mut claimers = std::collections::BTreeSet::new();
        for r in &runs {
            assert_eq!(r.status, RunStatus::Completed, "{location}: run {}", r.id);
            claimers.insert(r.worker.clone().unwrap());
            // Each run was set up once (one start line) and recorded its one epoch once.
            let starts = reg
                .logs(r.id, 100)
                .unwrap()
                .iter()
                .filter(|l| l.message.contains(" train / "))
                .count();
            assert_eq!(starts, 1, "{location}: run {} started {starts} times", r.id);
            assert_eq!(
                reg.epoch_series(r.id, Metric::ValAccuracy).unwrap().len(),
                1
            );
        }
        assert!(
            claimers.len() >= 2,
            "{location}: the workers shared the queue"
        );
    }
}
