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
/// in `extra`), `epochs` epochs each, at 64 pixels.
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

/// The case: a tpe sweep over accuracy and int8 latency at 48 pixels (feature maps
/// that are not multiples of the patch: the export resizes them as the model does) on the
/// shipped Fashion-MNIST sample measures every trial's file, and the front has all of them,
/// each with the deployed file's val accuracy recorded beside.
#[test]
fn a_sweep_at_48_pixels_measures_every_trial_and_its_front_has_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/fashion-mnist-sample");
    let cfg = dir.path().join("issue.toml");
    std::fs::write(
        &cfg,
        format!(
            "name = \"issue\"\n[model]\nflavour = \"paper\"\nvariant = \"xxs\"\n\
             [data]\nroot = \"{}\"\nimage_size = 48\nresize_bigger = 54\nval_fraction = 0.2\nworkers = 1\n\
             [train]\nepochs = 1\nbatch_size = 32\nlr = 0.002\nseed = 1\ndevice = \"cpu\"\nbn_recalibrate = 2\n\
             [sweep]\nmethod = \"tpe\"\nsamples = 2\nstartup_trials = 2\nseed = 3\n\
             objectives = [\"val_accuracy:max\", \"int8_latency_ms:min\"]\n\
             [sweep.parameters]\n\"train.lr\" = {{ distribution = \"log_uniform\", min = 1e-3, max = 1e-2 }}\n",
            sample.display()
        ),
    )
    .unwrap();
    let db = dir.path().join("r.db");
    let out = run_ok(
        mvlab()
            .arg("--db")
            .arg(&db)
            .arg("sweep")
            .arg(&cfg)
            .args(["--workers", "1"]),
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        !stdout.contains("could not be measured")
            && !stderr.contains("could not be measured")
            && !stdout.contains("unmeasured"),
        "{stdout}\n{stderr}"
    );
    let reg = Registry::open(&db).unwrap();
    let runs = reg.sweep_runs(1).unwrap();
    assert_eq!(runs.len(), 2);
    for r in &runs {
        assert_eq!(r.status, RunStatus::Completed, "{r:?}");
        let log: Vec<String> = reg
            .logs(r.id, 100)
            .unwrap()
            .into_iter()
            .map(|l| l.message)
            .collect();
        assert!(
            !log.iter().any(|m| m.contains("could not be measured")),
            "{log:#?}"
        );
        let deployed = reg
            .metric_at(r.id, Metric::DeployedValAccuracy, None)
            .unwrap()
            .expect("the deployed file's val accuracy");
        let export = reg.last_sweep_export(r.id).unwrap().unwrap();
        assert_eq!(
            (export.format.as_str(), export.quantize.as_str()),
            ("onnx", "int8")
        );
        assert_eq!(export.images, Some(120), "20% of 600 images");
        assert_eq!(export.val_accuracy, Some(deployed));
        assert!(export.agreement.unwrap() > 0.5, "{export:?}");
        assert!(
            dir.path()
                .join(format!("r.runs/{}/best.int8.onnx", r.id))
                .is_file()
        );
    }
    let report = run_ok(
        mvlab()
            .arg("--db")
            .arg(&db)
            .args(["sweep", "report", "1", "--json", "--out"])
            .arg(dir.path().join("s.svg")),
    );
    let v: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    let trials = v["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 2, "every trial measured: {v}");
    for t in trials {
        assert!(
            t["values"]["int8_latency_ms"].as_f64().unwrap() > 0.0,
            "{t}"
        );
        assert!(t["values"]["val_accuracy"].as_f64().is_some(), "{t}");
    }
    assert_eq!(v["unmeasured"].as_array().unwrap().len(), 0, "{v}");
    assert!(v["nothing_measured"].is_null(), "{v}");
    assert!(!v["front"].as_array().unwrap().is_empty());
}

/// A sweep measuring `[sweep] deploy_format = "tflite"` files where LiteRT cannot run (here no
/// python3 on PATH) is refused before anything is queued, naming the value at fault.
#[test]
fn a_sweep_that_cannot_measure_its_files_is_refused_before_anything_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tpe_config(
        dir.path(),
        1,
        2,
        2,
        "objectives = [\"val_accuracy:max\", \"int8_latency_ms:min\"]\ndeploy_format = \"tflite\"\n",
    );
    let db = dir.path().join("r.db");
    let empty = tempfile::tempdir().unwrap();
    let out = output(
        mvlab()
            .env("PATH", empty.path())
            .arg("--db")
            .arg(&db)
            .arg("sweep")
            .arg(&cfg)
            .args(["--workers", "1"]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("deploy_format = \"tflite\"")
            && stderr.contains("LiteRT")
            && stderr.contains("python3")
            && stderr.contains("nothing was queued"),
        "{stderr}"
    );
    let runs = run_ok(mvlab().arg("--db").arg(&db).args(["runs", "--json"]));
    let runs: serde_json::Value = serde_json::from_slice(&runs.stdout).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 0, "{runs}");
    assert!(Registry::open(&db).unwrap().sweeps().unwrap().is_empty());
    // A bad format is refused with its line, as every key is.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("deploy_format = \"tflite\"", "deploy_format = \"coreml\"");
    std::fs::write(&cfg, text).unwrap();
    let out = output(
        mvlab()
            .arg("--db")
            .arg(&db)
            .arg("sweep")
            .arg(&cfg)
            .args(["--workers", "0"]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("coreml") && stderr.contains("line "),
        "{stderr}"
    );
}

/// A trial whose deployed file cannot be written when its training ends (its path in the run
/// folder is taken by a folder) shows as unmeasured with the reason, in the report's text and
/// JSON and in the workbench's Sweeps view; a sweep of which no trial was measured exits
/// non-zero and says so.
#[test]
fn a_trial_whose_file_cannot_be_measured_is_reported_unmeasured_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 8, 32);
    let cfg = tiny_config(
        dir.path(),
        &root,
        1,
        "[sweep]\nmethod = \"grid\"\nobjectives = [\"val_accuracy:max\", \"size_mb:min\"]\n\
         [sweep.parameters]\n\"train.seed\" = [1]\n",
    );
    let db = dir.path().join("r.db");
    run_ok(
        mvlab()
            .arg("--db")
            .arg(&db)
            .arg("sweep")
            .arg(&cfg)
            .args(["--workers", "0"]),
    );
    // The run's folder, claimed as its worker will find it, with a folder where its file goes.
    let reg = Registry::open(&db).unwrap();
    let folder = mvlab::checkpoint::RunFolder::new(&reg.artifacts, 1);
    folder.claim(&[]).unwrap();
    std::fs::create_dir_all(folder.dir().join("best.int8.onnx/taken")).unwrap();
    let out =
        output(
            mvlab()
                .arg("--db")
                .arg(&db)
                .args(["sweep", "--resume", "1", "--workers", "1"]),
        );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(5), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("no trial of sweep 1 could be measured"),
        "{stderr}"
    );
    assert!(
        stdout.contains("completed (unmeasured)")
            && stdout.contains("unmeasured: 1 of 1 finished trials")
            && stdout.contains("run 1: ")
            && stdout.contains("best.int8.onnx is a folder"),
        "{stdout}"
    );
    assert_eq!(reg.run(1).unwrap().status, RunStatus::Completed);
    assert!(
        reg.logs(1, 100)
            .unwrap()
            .iter()
            .any(|l| l.message.contains("could not be measured"))
    );
    let report = |json: bool| {
        let mut cmd = mvlab();
        cmd.arg("--db")
            .arg(&db)
            .args(["sweep", "report", "1", "--out"])
            .arg(dir.path().join("s.svg"));
        if json {
            cmd.arg("--json");
        }
        output(&mut cmd)
    };
    let text = report(false);
    assert_eq!(text.status.code(), Some(5));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("run 1: ") && text.contains("is a folder"),
        "{text}"
    );
    let json = report(true);
    assert_eq!(json.status.code(), Some(5));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let unmeasured = v["unmeasured"].as_array().unwrap();
    assert_eq!(unmeasured.len(), 1, "{v}");
    assert_eq!(unmeasured[0]["run"], 1);
    assert!(
        unmeasured[0]["reason"]
            .as_str()
            .unwrap()
            .contains("best.int8.onnx is a folder"),
        "{v}"
    );
    assert!(v["ranking"][0]["unmeasured"].is_string(), "{v}");
    assert!(v["nothing_measured"].is_string(), "{v}");
    assert_eq!(v["trials"].as_array().unwrap().len(), 0);
    assert_eq!(v["deploy_format"], "onnx");

    // The workbench's Sweeps view shows the report, the reason included.
    use mvlab::tui::{app::App, app::Tab, background, background::Msg};
    let mut app = App::new(dir.path().to_path_buf());
    app.tab = Tab::Sweeps;
    let mut seeds = background::SeedCache::default();
    for _ in 0..2 {
        let s = background::snapshot(&reg, &app.wanted(), &mut seeds).unwrap();
        app.handle_msg(Msg::Snapshot(Box::new(s)));
    }
    let mut terminal = ratatui::Terminal::new(ratatui::backend::TestBackend::new(200, 40)).unwrap();
    terminal.draw(|f| mvlab::tui::ui::draw(f, &app)).unwrap();
    let buf = terminal.backend().buffer().clone();
    let screen: String = (0..buf.area.height)
        .map(|y| {
            (0..buf.area.width)
                .map(|x| buf[(x, y)].symbol())
                .collect::<String>()
                + "\n"
        })
        .collect();
    assert!(
        screen.contains("unmeasured: 1 of 1") && screen.contains("is a folder"),
        "{screen}"
    );
}

/// One objective, the deployed file's val accuracy: each trial's file is measured on its val
/// split, and the report ranks the trials by that (text and JSON).
#[test]
fn a_sweep_on_the_deployed_accuracy_ranks_its_trials_by_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 8, 32);
    let cfg = tiny_config(
        dir.path(),
        &root,
        2,
        "[sweep]\nmethod = \"grid\"\nobjectives = [\"deployed_val_accuracy:max\"]\n\
         [sweep.parameters]\n\"train.lr\" = [0.003, 1e-9]\n",
    );
    let db = dir.path().join("r.db");
    let out = run_ok(
        mvlab()
            .arg("--db")
            .arg(&db)
            .arg("sweep")
            .arg(&cfg)
            .args(["--workers", "1"]),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ranked by deployed_val_accuracy (highest first)"),
        "{stdout}"
    );
    let reg = Registry::open(&db).unwrap();
    let mut expected: Vec<(f64, i64)> = reg
        .sweep_runs(1)
        .unwrap()
        .iter()
        .map(|r| {
            let v = reg
                .metric_at(r.id, Metric::DeployedValAccuracy, None)
                .unwrap()
                .unwrap();
            let e = reg.last_sweep_export(r.id).unwrap().unwrap();
            assert_eq!(e.val_accuracy, Some(v));
            assert_eq!(e.images, Some(6));
            (v, r.id)
        })
        .collect();
    assert_eq!(expected.len(), 2);
    expected.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let report = run_ok(
        mvlab()
            .arg("--db")
            .arg(&db)
            .args(["sweep", "report", "1", "--json", "--out"])
            .arg(dir.path().join("s.svg")),
    );
    let v: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(v["ranked_by"]["value"], "deployed_val_accuracy", "{v}");
    assert_eq!(v["ranked_by"]["mode"], "max", "{v}");
    let ranked: Vec<(f64, i64)> = v["ranking"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["value"].as_f64().unwrap(), r["run"].as_i64().unwrap()))
        .collect();
    assert_eq!(ranked, expected, "{v}");
    let text = run_ok(
        mvlab()
            .arg("--db")
            .arg(&db)
            .args(["sweep", "report", "1", "--out"])
            .arg(dir.path().join("s.svg")),
    );
    let text = String::from_utf8_lossy(&text.stdout);
    let ranked: Vec<i64> = text
        .lines()
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            let _rank: usize = cols.next()?.parse().ok()?;
            let run: i64 = cols.next()?.parse().ok()?;
            l.contains("train.lr=").then_some(run)
        })
        .collect();
    assert_eq!(
        ranked,
        expected.iter().map(|e| e.1).collect::<Vec<_>>(),
        "{text}"
    );
}

/// A `deploy_format = "tflite"` sweep queued where LiteRT runs, worked by a worker where it does
/// not (no python3 on the worker's PATH): its trial trains, its file cannot be measured, the
/// report says why, and the sweep exits non-zero.
#[test]
fn a_tflite_sweep_worked_where_litert_cannot_run_reports_its_trial_unmeasured() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 8, 32);
    let cfg = tiny_config(
        dir.path(),
        &root,
        1,
        "[sweep]\nmethod = \"grid\"\ndeploy_format = \"tflite\"\n\
         objectives = [\"val_accuracy:max\", \"int8_latency_ms:min\"]\n\
         [sweep.parameters]\n\"train.seed\" = [1]\n",
    );
    let db = dir.path().join("r.db");
    run_ok(
        mvlab()
            .arg("--db")
            .arg(&db)
            .arg("sweep")
            .arg(&cfg)
            .args(["--workers", "0"]),
    );
    let empty = tempfile::tempdir().unwrap();
    let out = output(
        mvlab()
            .env("PATH", empty.path())
            .arg("--db")
            .arg(&db)
            .args(["sweep", "--resume", "1", "--workers", "1"]),
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(5), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("whose tflite int8 file could not be measured")
            && stdout.contains("python3"),
        "{stdout}"
    );
    let reg = Registry::open(&db).unwrap();
    assert_eq!(reg.run(1).unwrap().status, RunStatus::Completed);
    let export = reg.last_sweep_export(1).unwrap().unwrap();
    assert_eq!(export.format, "tflite");
    assert!(
        export.error.as_deref().unwrap_or("").contains("python3"),
        "{export:?}"
    );
    let json = output(
        mvlab()
            .arg("--db")
            .arg(&db)
            .args(["sweep", "report", "1", "--json", "--out"])
            .arg(dir.path().join("s.svg")),
    );
    assert_eq!(json.status.code(), Some(5));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["deploy_format"], "tflite");
    assert!(
        v["unmeasured"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("python3"),
        "{v}"
    );
}
