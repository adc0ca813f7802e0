//! Sweeps that search (tpe) through the binary: several objectives with the int8 export
//! measured, the Pareto front of the report, a sweep killed with `kill -9` and resumed, and two
//! worker processes on PostgreSQL asking for trials at once.

use crate::common::*;
use mvlab::registry::{Location, Registry};
use mvlab::status::{Metric, RunStatus};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A tpe sweep of `samples` trials over the learning rate and the label smoothing (and more
/// in `extra`), `epochs` epochs each, at 64 pixels (the int8 export needs a multiple of 64).
fn tpe_config(
    dir: &Path,
    epochs: usize,
    samples: usize,
    startup: usize,
    extra: &str,
) -> std::path::PathBuf {
    let root = tiny_dataset(dir, 3, 12, 64);
    let cfg = tiny_config(
        dir,
        &root,
        epochs,
        &format!(
            "[sweep]\nmethod = \"tpe\"\nsamples = {samples}\nstartup_trials = {startup}\nseed = 3\n{extra}\
             [sweep.parameters]\n\"train.lr\" = {{ distribution = \"log_uniform\", min = 1e-4, max = 1e-2 }}\n\
             \"train.label_smoothing\" = {{ distribution = \"uniform\", min = 0.0, max = 0.2 }}\n"
        ),
    );
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "image_size = 32\nresize_bigger = 36",
        "image_size = 64\nresize_bigger = 72",
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

fn params(reg: &Registry, sweep: i64) -> Vec<Vec<String>> {
    reg.sweep_runs(sweep)
        .unwrap()
        .iter()
        .map(|r| r.override_list().unwrap())
        .collect()
}

#[test]
fn a_multi_objective_sweep_measures_each_export_and_reports_a_non_dominated_front() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "objectives = [\"val_accuracy:max\", \"int8_latency_ms:min\", \"size_mb:min\"]\n";
    let cfg = tpe_config(dir.path(), 1, 5, 3, extra);
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[sweep.parameters]\n",
        "[sweep.parameters]\n\"model.variant\" = [\"xxs\", \"xs\", \"s\"]\n",
    );
    std::fs::write(&cfg, text).unwrap();
    let db = dir.path().join("r.db");
    let out = run_ok(
        mvlab()
            .arg("--db")
            .arg(&db)
            .arg("sweep")
            .arg(&cfg)
            .args(["--workers", "2"]),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Pareto front"), "{stdout}");
    let reg = Registry::open(&db).unwrap();
    let runs = reg.sweep_runs(1).unwrap();
    assert_eq!(runs.len(), 5, "the budget: samples = 5");
    assert!(runs.iter().all(|r| r.status == RunStatus::Completed));

    let report = run_ok(
        mvlab()
            .arg("--db")
            .arg(&db)
            .args(["sweep", "report", "1", "--json", "--out"])
            .arg(dir.path().join("s.svg")),
    );
    let v: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    let front = v["front"].as_array().unwrap();
    assert!(!front.is_empty());
    assert!(dir.path().join("s-front.svg").exists());
    let oriented = |p: &serde_json::Value| {
        let x = &p["values"];
        [
            -x["val_accuracy"].as_f64().unwrap(),
            x["int8_latency_ms"].as_f64().unwrap(),
            x["size_mb"].as_f64().unwrap(),
        ]
    };
    for a in front {
        for b in front {
            let (a, b) = (oriented(a), oriented(b));
            let dominates =
                a.iter().zip(&b).all(|(x, y)| x <= y) && a.iter().zip(&b).any(|(x, y)| x < y);
            assert!(
                !dominates,
                "front points {a:?} and {b:?}: one dominates the other"
            );
        }
    }
    // Every trial off the front is dominated by one on it.
    for t in v["trials"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["front_rank"] != 0)
    {
        let t = oriented(t);
        assert!(
            front.iter().any(|f| {
                let f = oriented(f);
                f.iter().zip(&t).all(|(x, y)| x <= y) && f.iter().zip(&t).any(|(x, y)| x < y)
            }),
            "{t:?} is off the front but nothing dominates it"
        );
    }
    // The recorded latency is a measurement of the file `mvlab bench --onnx` times too (how
    // close the two are is a benchmark's to say, `scripts/latency_check.sh`: tests share the
    // cores with each other).
    for p in front {
        let run = p["run"].as_i64().unwrap();
        let file = dir.path().join(format!("r.runs/{run}/best.int8.onnx"));
        let bench = run_ok(mvlab().args(["bench", "--json", "--onnx"]).arg(&file));
        let b: serde_json::Value = serde_json::from_slice(&bench.stdout).unwrap();
        let (recorded, measured) = (
            p["values"]["int8_latency_ms"].as_f64().unwrap(),
            b["latency"]["median_ms"].as_f64().unwrap(),
        );
        eprintln!("run {run}: recorded {recorded:.2} ms, bench {measured:.2} ms");
        assert!(recorded.is_finite() && recorded > 0.0 && measured > 0.0);
        let size = std::fs::metadata(&file).unwrap().len() as f64 / 1e6;
        assert!((p["values"]["size_mb"].as_f64().unwrap() - size).abs() < 1e-6);
    }
}

#[test]
fn a_sweep_killed_mid_way_resumes_with_its_history_and_runs_no_trial_twice() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tpe_config(dir.path(), 3, 5, 2, "");
    let db = dir.path().join("r.db");
    let mut child = mvlab()
        .arg("--db")
        .arg(&db)
        .arg("sweep")
        .arg(&cfg)
        .args(["--workers", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn_guarded();
    // Killed once two trials are finished and others are training.
    let start = Instant::now();
    loop {
        let done = Registry::open(&db)
            .and_then(|r| r.sweep_runs(1))
            .map(|runs| {
                runs.iter()
                    .filter(|r| r.status == RunStatus::Completed)
                    .count()
            })
            .unwrap_or(0);
        if done >= 2 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the sweep ended before it was killed"
        );
        assert!(start.elapsed() < Duration::from_secs(300), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill_now();
    let reg = Registry::open(&db).unwrap();
    let before = reg.sweep_runs(1).unwrap();
    let finished: Vec<(i64, Vec<String>)> = before
        .iter()
        .filter(|r| r.status == RunStatus::Completed)
        .map(|r| (r.id, r.override_list().unwrap()))
        .collect();
    assert!(before.len() < 5, "killed before its budget was asked for");

    let out =
        run_ok(
            mvlab()
                .arg("--db")
                .arg(&db)
                .args(["sweep", "--resume", "1", "--workers", "2"]),
        );
    assert!(String::from_utf8_lossy(&out.stdout).contains("back in the queue"));
    let after = reg.sweep_runs(1).unwrap();
    assert_eq!(
        after.len(),
        5,
        "the budget counts the trials asked before the kill"
    );
    assert!(
        after.iter().all(|r| r.status == RunStatus::Completed),
        "{after:?}"
    );
    for (id, overrides) in &finished {
        let r = after.iter().find(|r| r.id == *id).unwrap();
        assert_eq!(&r.override_list().unwrap(), overrides, "history kept");
        assert_eq!(
            r.attempt, 1,
            "run {id} finished before the kill and was not run again"
        );
    }
    for r in &after {
        assert_epochs_once(&reg, r.id, 3);
    }
    let distinct: BTreeSet<Vec<String>> = params(&reg, 1).into_iter().collect();
    assert_eq!(distinct.len(), 5, "each trial a point of its own");
}

#[test]
fn two_worker_processes_on_postgresql_never_get_the_same_pending_point() {
    let Some(pg) = postgres() else { return };
    let dir = tempfile::tempdir().unwrap();
    // All random draws, seeded by the trial's number: two workers proposing from the same
    // history would get the same number, hence the same point.
    let cfg = tpe_config(dir.path(), 1, 8, 4, "");
    run_ok(
        mvlab()
            .arg("--db")
            .arg(&pg.url)
            .arg("sweep")
            .arg(&cfg)
            .args(["--workers", "0"]),
    );
    let workers: Vec<_> = (0..2)
        .map(|_| {
            mvlab()
                .arg("--db")
                .arg(&pg.url)
                .args(["worker", "--sweep", "1"])
                .current_dir(dir.path())
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
    let reg = Registry::open(&pg.url.parse::<Location>().unwrap()).unwrap();
    let runs = reg.sweep_runs(1).unwrap();
    assert_eq!(runs.len(), 8, "the budget, not one trial more");
    assert!(runs.iter().all(|r| r.status == RunStatus::Completed));
    let workers: BTreeSet<String> = runs.iter().filter_map(|r| r.worker.clone()).collect();
    assert_eq!(workers.len(), 2, "both workers took trials: {workers:?}");
    let distinct: BTreeSet<Vec<String>> = params(&reg, 1).into_iter().collect();
    assert_eq!(
        distinct.len(),
        8,
        "a point handed out twice: {:?}",
        params(&reg, 1)
    );
}

/// The dominated rule end to end: a grid whose last trial (the larger variant, with a learning
/// rate too small to learn anything) is beaten at the same epoch, in accuracy and in its
/// measured int8 size, by more than the margin by the first (the smaller variant, learning),
/// which finished before it; it is pruned at its first judged epoch and says by whom.
#[test]
fn a_trial_dominated_at_the_same_epoch_is_pruned_and_says_by_whom() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 12, 64);
    let cfg = tiny_config(
        dir.path(),
        &root,
        4,
        "[sweep]\nmethod = \"grid\"\nobjectives = [\"val_accuracy:max\", \"size_mb:min\"]\n\
         prune = \"dominated\"\nprune_warmup = 2\nprune_min_runs = 1\n\
         [sweep.parameters]\n\"model.variant\" = [\"xxs\", \"xs\"]\n\"train.lr\" = [0.003, 1e-9]\n",
    );
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "image_size = 32\nresize_bigger = 36",
        "image_size = 64\nresize_bigger = 72",
    );
    std::fs::write(&cfg, text).unwrap();
    let db = dir.path().join("d.db");
    run_ok(
        mvlab()
            .arg("--db")
            .arg(&db)
            .arg("sweep")
            .arg(&cfg)
            .args(["--workers", "1"]),
    );
    let reg = Registry::open(&db).unwrap();
    let runs = reg.sweep_runs(1).unwrap();
    let trial = |variant: &str, lr: &str| {
        runs.iter()
            .find(|r| {
                let o = r.override_list().unwrap();
                o.contains(&format!("model.variant={variant}"))
                    && o.iter()
                        .any(|x| x.starts_with("train.lr=") && x.contains(lr))
            })
            .unwrap_or_else(|| {
                let all: Vec<String> = runs.iter().map(|r| r.overrides.clone()).collect();
                panic!("trial {variant} {lr} in {all:?}")
            })
    };
    let learner = trial("xxs", "0.003");
    let stuck = trial("xs", "0.000000001");
    assert_eq!(learner.status, RunStatus::Completed);
    let acc = |r: &mvlab::registry::RunRow| reg.epoch_series(r.id, Metric::ValAccuracy).unwrap();
    assert!(
        acc(learner)[1].1 > acc(stuck)[1].1 * 1.02,
        "the set-up: the learner is ahead at epoch 2: {:?} vs {:?}",
        acc(learner),
        acc(stuck)
    );
    assert_eq!(stuck.status, RunStatus::Pruned, "{stuck:?}");
    assert_eq!(stuck.epochs_done, 2, "pruned at its first judged epoch");
    let log: Vec<String> = reg
        .logs(stuck.id, 1000)
        .unwrap()
        .into_iter()
        .map(|l| l.message)
        .collect();
    assert!(
        log.iter()
            .any(|m| m.contains("dominated") && m.contains(&format!("run {}", learner.id))),
        "{log:#?}"
    );
}
