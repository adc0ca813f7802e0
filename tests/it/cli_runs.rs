//! End to end through the `mvlab` binary: real tiny trainings into a temp registry.

use crate::common::Timed;
use crate::common::*;
use mvlab::registry::Registry;
use mvlab::status::Metric;
use mvlab::status::{CheckpointKind, RunStatus};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn registry(dir: &std::path::Path) -> Registry {
    Registry::open(&dir.join("r.db")).unwrap()
}

#[test]
fn a_run_completes_with_metrics_checkpoints_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 8, 40);
    let cfg = tiny_config(dir.path(), &root, 2, "");
    let db = dir.path().join("r.db");
    let out = run_ok(mvlab().arg("--db").arg(&db).arg("run").arg(&cfg));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("run 1 completed"), "{stdout}");

    let reg = registry(dir.path());
    let run = reg.run(1).unwrap();
    assert_eq!(
        (run.status, run.epochs_done, run.epochs_total),
        (RunStatus::Completed, 2, 2)
    );
    assert!(run.final_metrics.unwrap().contains("final_val_accuracy"));
    assert_eq!(reg.epoch_series(1, Metric::ValAccuracy).unwrap().len(), 2);
    assert_eq!(reg.epoch_series(1, Metric::TrainLoss).unwrap().len(), 2);
    assert!(!reg.series(1, Metric::StepLoss).unwrap().is_empty());
    let cks = reg.checkpoints(1).unwrap();
    assert!(
        cks.iter().any(|c| c.kind == CheckpointKind::Best)
            && cks.iter().any(|c| c.kind == CheckpointKind::Last)
    );
    for c in &cks {
        assert_eq!(
            mvlab::checkpoint::sha256_file(std::path::Path::new(&c.path)).unwrap(),
            c.sha256,
            "{}",
            c.path
        );
    }

    let listing = run_ok(mvlab().arg("--db").arg(&db).args(["runs", "--json"]));
    let runs: serde_json::Value = serde_json::from_slice(&listing.stdout).unwrap();
    assert_eq!(runs[0]["status"], "completed");

    let shown = run_ok(mvlab().arg("--db").arg(&db).args(["show", "1", "--json"]));
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["epochs"].as_array().unwrap().len(), 2);

    let eval = run_ok(mvlab().arg("--db").arg(&db).args(["eval", "1", "--json"]));
    let eval: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert_eq!(eval["images"], 6); // 25% of 8 per class, 3 classes
    assert_eq!(eval["confusion"].as_array().unwrap().len(), 3);
    let total: u64 = eval["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(total, 6);

    let best = cks.iter().find(|c| c.kind == CheckpointKind::Best).unwrap();
    let image = root.join("disc/00000.png");
    let pred = run_ok(
        mvlab()
            .arg("--db")
            .arg(&db)
            .args(["predict", &best.path])
            .arg(&image)
            .args(["--top-k", "2", "--json"]),
    );
    let pred: serde_json::Value = serde_json::from_slice(&pred.stdout).unwrap();
    let top = pred[0]["top"].as_array().unwrap();
    assert_eq!(top.len(), 2);
    let p: f64 = top.iter().map(|t| t[1].as_f64().unwrap()).sum();
    assert!(p > 0.0 && p <= 1.0 + 1e-6);
}

/// Waits until the run has finished at least `epochs` epochs (as the registry says).
fn wait_for_epoch(dir: &std::path::Path, epochs: i64, child: &mut std::process::Child) {
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("mvlab exited early: {status}");
        }
        if let Ok(r) = registry(dir).run(1) {
            if r.epochs_done >= epochs {
                return;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(300), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigkill_leaves_a_consistent_registry_and_resume_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 40, 40);
    let cfg = tiny_config(dir.path(), &root, 4, "");
    let db = dir.path().join("r.db");
    let mut child = spawn_run(&db, &cfg);
    wait_for_epoch(dir.path(), 1, &mut child);
    child.kill().unwrap(); // SIGKILL, inside epoch 2
    child.wait();

    let reg = registry(dir.path());
    let run = reg.run(1).unwrap();
    assert_eq!(run.display_status(), RunStatus::Interrupted);
    let done = run.epochs_done;
    assert!(done >= 1 && done < 4, "{done}");
    let listing = run_ok(mvlab().arg("--db").arg(&db).args(["runs", "--json"]));
    assert!(String::from_utf8_lossy(&listing.stdout).contains("interrupted"));

    run_ok(mvlab().arg("--db").arg(&db).args(["resume", "1"]));
    let run = reg.run(1).unwrap();
    assert_eq!((run.status, run.epochs_done), (RunStatus::Completed, 4));
    assert_epochs_once(&reg, 1, 4);
}

#[test]
fn sigint_cancels_and_keeps_the_run_resumable() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 16, 40);
    let cfg = tiny_config(dir.path(), &root, 3, "");
    let db = dir.path().join("r.db");
    let mut child = mvlab()
        .arg("--db")
        .arg(&db)
        .arg("run")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn_guarded();
    wait_for_epoch(dir.path(), 1, &mut child);
    let ok = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .timed_status();
    assert!(ok.success());
    let out = child.output();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reg = registry(dir.path());
    let run = reg.run(1).unwrap();
    assert_eq!(run.status, RunStatus::Cancelled);
    assert!(
        reg.checkpoints(1)
            .unwrap()
            .iter()
            .any(|c| c.kind == CheckpointKind::Last)
    );
    run_ok(mvlab().arg("--db").arg(&db).args(["resume", "1"]));
    assert_eq!(reg.run(1).unwrap().epochs_done, 3);
}

#[test]
fn a_diverging_run_fails_with_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 8, 40);
    let cfg = tiny_config(dir.path(), &root, 3, "");
    let db = dir.path().join("r.db");
    let out = mvlab()
        .arg("--db")
        .arg(&db)
        .arg("run")
        .arg(&cfg)
        .args(["--set", "train.lr=1e30"])
        .timed_output();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("diverged at step"), "{err}");
    let run = registry(dir.path()).run(1).unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    assert!(run.error.unwrap().contains("diverged at step"));
}

#[test]
fn bad_configs_are_refused_with_their_location() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("syntax.toml", "name = \"x\"\n[train\nlr = 1\n", "line 2"),
        (
            "unknown.toml",
            "name = \"x\"\n[data]\nroot = \"d\"\n[train]\nlearning_rate = 0.1\n",
            "learning_rate",
        ),
        (
            "type.toml",
            "name = \"x\"\n[data]\nroot = \"d\"\n[train]\nepochs = \"many\"\n",
            "line 5",
        ),
        (
            "value.toml",
            "name = \"x\"\n[data]\nroot = \"d\"\n[train]\nbatch_size = 0\n",
            "train.batch_size",
        ),
        (
            "flavour.toml",
            "name = \"x\"\n[model]\nflavour = \"tiny\"\n[data]\nroot = \"d\"\n",
            "line 3",
        ),
        (
            "nodata.toml",
            "name = \"x\"\n[data]\nroot = \"missing\"\n",
            "does not exist",
        ),
    ];
    for (file, text, expected) in cases {
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        let out = mvlab()
            .arg("--db")
            .arg(dir.path().join("r.db"))
            .arg("run")
            .arg(&path)
            .timed_output();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{file}");
        assert!(
            err.contains(file) && err.contains(expected),
            "{file}: {err}"
        );
    }
    // Nothing was recorded for refused configs.
    assert!(registry(dir.path()).runs().unwrap().is_empty());
}

#[test]
fn unreadable_images_are_skipped_counted_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 2, 6, 40);
    let good = std::fs::read(root.join("disc/00000.png")).unwrap();
    std::fs::write(root.join("disc/truncated.png"), &good[..good.len() / 2]).unwrap();
    std::fs::write(root.join("disc/empty.jpg"), b"").unwrap();
    std::fs::write(root.join("square/notes.jpg"), b"this is text, not a JPEG").unwrap();
    let cfg = tiny_config(dir.path(), &root, 2, "");
    let db = dir.path().join("r.db");
    let out = run_ok(mvlab().arg("--db").arg(&db).arg("run").arg(&cfg));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("3 unreadable files skipped"),
        "the total is said at the end: {stdout}"
    );
    let reg = registry(dir.path());
    let logs = reg.logs(1, 100).unwrap();
    assert!(
        logs.iter()
            .any(|l| l.message.contains("images used; 3 files skipped")),
        "{logs:?}"
    );
    let skipped: Vec<_> = logs
        .iter()
        .filter(|l| l.message.starts_with("skipped unreadable image"))
        .collect();
    assert_eq!(skipped.len(), 3, "{logs:?}");
    for name in ["truncated.png", "empty.jpg", "notes.jpg"] {
        assert!(skipped.iter().any(|l| l.message.contains(name)), "{name}");
    }
    assert_eq!(reg.run(1).unwrap().status, RunStatus::Completed);
}

#[test]
fn a_resumed_run_ends_where_an_uninterrupted_one_does() {
    let dir = tempfile::tempdir().unwrap();
    resumed_and_uninterrupted_agree(dir.path(), "ema_decay = 0.0\n");
}

#[test]
fn a_moving_average_resumes_with_its_run_and_leaves_training_alone() {
    let dir = tempfile::tempdir().unwrap();
    let averaged = "ema_decay = 0.9\nbn_recalibrate = 0\n";
    resumed_and_uninterrupted_agree(dir.path(), averaged);
    let run = dir.path().join("a/r.runs/1");
    let (evaluated, trained) = (
        std::fs::read(run.join("last.bpk")).unwrap(),
        std::fs::read(run.join("last.train.bpk")).unwrap(),
    );
    assert_ne!(
        evaluated, trained,
        "the average is saved apart from the trained weights"
    );
    let reg_a = registry(&dir.path().join("a"));
    assert!(
        reg_a.logs(1, 100).unwrap().iter().any(|l| l
            .message
            .contains("moving average of the weights (decay 0.9)")),
        "says what is evaluated"
    );

    // The same run without the average trains step for step the same, and evaluates otherwise.
    let cfg = tiny_config(
        dir.path(),
        &dir.path().join("data"),
        3,
        "ema_decay = 0.0\nbn_recalibrate = 0\n",
    );
    run_ok(
        mvlab()
            .arg("--db")
            .arg(dir.path().join("c/r.db"))
            .arg("run")
            .arg(&cfg),
    );
    let reg_c = registry(&dir.path().join("c"));
    let series = |r: &Registry, metric| r.epoch_series(1, metric).unwrap();
    assert_eq!(
        series(&reg_a, Metric::TrainLoss),
        series(&reg_c, Metric::TrainLoss)
    );
    assert_ne!(
        series(&reg_a, Metric::ValLoss),
        series(&reg_c, Metric::ValLoss)
    );
    // Without the average, the weights trained are the weights saved: no second file.
    let run_c = dir.path().join("c/r.runs/1");
    assert!(run_c.join("last.bpk").exists(), "{}", run_c.display());
    assert!(!run_c.join("last.train.bpk").exists());
}

/// Trains the tiny config with `extra` [train] keys twice: once through, and once interrupted
/// (SIGINT) after its first epoch and resumed. Both end with the same metrics.
fn resumed_and_uninterrupted_agree(dir: &Path, extra: &str) {
    let root = tiny_dataset(dir, 3, 40, 40);
    let cfg = tiny_config(dir, &root, 3, extra);
    let (db_a, db_b) = (dir.join("a/r.db"), dir.join("b/r.db"));
    run_ok(mvlab().arg("--db").arg(&db_a).arg("run").arg(&cfg));

    let mut child = spawn_run(&db_b, &cfg);
    let b_dir = dir.join("b");
    wait_for_epoch(&b_dir, 1, &mut child);
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .timed_status();
    child.wait();
    let reg_b = registry(&b_dir);
    assert_eq!(reg_b.run(1).unwrap().status, RunStatus::Cancelled);
    run_ok(mvlab().arg("--db").arg(&db_b).args(["resume", "1"]));

    let reg_a = registry(&dir.join("a"));
    for metric in [Metric::TrainLoss, Metric::ValLoss, Metric::ValAccuracy] {
        let (a, b) = (
            reg_a.epoch_series(1, metric).unwrap(),
            reg_b.epoch_series(1, metric).unwrap(),
        );
        assert_eq!(a.len(), 3);
        assert_eq!(a.len(), b.len(), "{metric:?}");
        for ((ea, va), (eb, vb)) in a.iter().zip(&b) {
            assert_eq!(ea, eb);
            assert!(
                (va - vb).abs() <= 1e-4 * va.abs().max(1.0),
                "{metric:?} epoch {ea}: {va} vs {vb}"
            );
        }
    }
}

#[test]
fn a_run_records_the_same_data_paths_whichever_way_its_file_was_named() {
    let dir = tempfile::tempdir().unwrap();
    tiny_dataset(dir.path(), 3, 8, 40);
    let exp = dir.path().join("experiments");
    std::fs::create_dir_all(&exp).unwrap();
    let cfg = tiny_config(dir.path(), Path::new("../data"), 1, "");
    std::fs::rename(&cfg, exp.join("tiny.toml")).unwrap();
    let db = dir.path().join("r.db");
    // As typed on the command line, relative to the current folder...
    run_ok(
        mvlab()
            .current_dir(dir.path())
            .arg("--db")
            .arg(&db)
            .args(["run", "experiments/tiny.toml"]),
    );
    // ...and as the workbench names it, absolute.
    let reg = Registry::open(&db).unwrap();
    let loaded = mvlab::config::load(&exp.join("tiny.toml"), &[]).unwrap();
    let id = mvlab::jobs::create_run(&reg, &loaded, RunStatus::Queued, None).unwrap();
    let root = |id| {
        mvlab::config::parse(&reg.run(id).unwrap().config, &[])
            .unwrap()
            .data
            .root
            .unwrap()
    };
    assert_eq!(root(1), root(id));
    assert_eq!(root(1), dir.path().join("data").canonicalize().unwrap());
}

#[test]
fn a_bad_export_format_or_quantization_is_refused_with_the_allowed_values() {
    for (flag, bad, allowed) in [
        ("--format", "coreml", "onnx, tflite, safetensors"),
        ("--quantize", "int4", "int8"),
    ] {
        let out = mvlab()
            .args(["export", "1", "--out", "x.onnx", flag, bad])
            .timed_output();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains(bad) && err.contains(allowed), "{err}");
    }
}

/// `mvlab export` of a trained run measures the file it wrote: run by tract on the run's val
/// split beside the float model, its val accuracy, the float model's (what `mvlab eval` says)
/// and their top-1 agreement, recorded against the checkpoint and listed by `mvlab show` and
/// `mvlab eval`. A checkpoint file of no run is written but not measured unless given
/// `--data`, and cannot be calibrated for full-integer TFLite without a run or `--data`.
#[test]
fn an_export_is_measured_on_the_val_split_and_recorded_against_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 8, 40);
    let cfg = tiny_config(dir.path(), &root, 2, "");
    let db = dir.path().join("r.db");
    run_ok(mvlab().arg("--db").arg(&db).arg("run").arg(&cfg));
    let eval = run_ok(mvlab().arg("--db").arg(&db).args(["eval", "1", "--json"]));
    let eval: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    let float = eval["accuracy"].as_f64().unwrap();

    let export = |quantize: &str, json: bool| {
        let mut cmd = mvlab();
        cmd.arg("--db")
            .arg(&db)
            .args([
                "export",
                "1",
                "--format",
                "onnx",
                "--quantize",
                quantize,
                "--out",
            ])
            .arg(dir.path().join(format!("m-{quantize}.onnx")));
        if json {
            cmd.arg("--json");
        }
        String::from_utf8_lossy(&run_ok(&mut cmd).stdout).into_owned()
    };
    let line = export("none", false);
    assert!(
        line.contains("onnx none): val accuracy ")
            && line.contains("(float ")
            && line.contains("top-1 agreement 100.00% on 6 val images")
            && line.contains("recorded for run 1"),
        "{line}"
    );
    let v: serde_json::Value = serde_json::from_str(&export("int8", true)).unwrap();
    assert_eq!(
        (v["format"].as_str(), v["quantize"].as_str()),
        (Some("onnx"), Some("int8"))
    );
    assert_eq!(v["images"], 6, "{v}");
    assert_eq!(v["measured"], true);
    assert_eq!(v["recorded"], true);
    assert!(
        (v["float_accuracy"].as_f64().unwrap() - float).abs() < 1e-9,
        "the float model on the same images as `mvlab eval`: {v} vs {float}"
    );
    let agreement = v["agreement"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&agreement), "{v}");
    let size = std::fs::metadata(dir.path().join("m-int8.onnx"))
        .unwrap()
        .len();
    assert_eq!(v["size_bytes"].as_u64(), Some(size));

    // Recorded against the best checkpoint: `mvlab show` (JSON and text), `mvlab eval`.
    let reg = Registry::open(&db).unwrap();
    let best = reg
        .checkpoints(1)
        .unwrap()
        .into_iter()
        .find(|c| c.kind == CheckpointKind::Best)
        .unwrap();
    let shown = run_ok(mvlab().arg("--db").arg(&db).args(["show", "1", "--json"]));
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    let exports = shown["exports"].as_array().unwrap();
    assert_eq!(exports.len(), 2, "{shown}");
    assert_eq!(exports[0]["quantize"], "none");
    assert_eq!(exports[0]["agreement"], 1.0);
    assert_eq!(exports[1]["quantize"], "int8");
    assert_eq!(exports[1]["source"], "export");
    assert_eq!(exports[1]["agreement"].as_f64(), Some(agreement));
    assert_eq!(exports[1]["epoch"].as_i64(), Some(best.epoch));
    assert_eq!(
        exports[1]["checkpoint_sha256"].as_str(),
        Some(best.sha256.as_str())
    );
    assert_eq!(exports[1]["size_bytes"].as_u64(), Some(size));
    let text = run_ok(mvlab().arg("--db").arg(&db).args(["show", "1"]));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("exports")
            && text.contains("onnx int8 of epoch")
            && text.contains("top-1 agreement"),
        "{text}"
    );
    let eval = run_ok(mvlab().arg("--db").arg(&db).args(["eval", "1"]));
    let eval = String::from_utf8_lossy(&eval.stdout);
    assert!(
        eval.contains("exported from this checkpoint") && eval.contains("onnx none"),
        "{eval}"
    );

    // A checkpoint file of no run: written, not measured, unless --data gives images.
    let alone = dir.path().join("alone");
    std::fs::create_dir_all(&alone).unwrap();
    std::fs::copy(&best.path, alone.join("best.bpk")).unwrap();
    std::fs::copy(
        std::path::Path::new(&best.path).with_file_name("model.json"),
        alone.join("model.json"),
    )
    .unwrap();
    let out = run_ok(
        mvlab()
            .arg("--db")
            .arg(&db)
            .arg("export")
            .arg(alone.join("best.bpk"))
            .arg("--out")
            .arg(alone.join("m.onnx")),
    );
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(
        line.contains("not measured") && line.contains("--data"),
        "{line}"
    );
    let out = run_ok(
        mvlab()
            .arg("--db")
            .arg(&db)
            .arg("export")
            .arg(alone.join("best.bpk"))
            .arg("--out")
            .arg(alone.join("m.onnx"))
            .arg("--data")
            .arg(&root),
    );
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(
        line.contains("accuracy") && line.contains("on 24 images of"),
        "{line}"
    );
    let out = mvlab()
        .arg("--db")
        .arg(&db)
        .arg("export")
        .arg(alone.join("best.bpk"))
        .args(["--format", "tflite", "--quantize", "int8", "--out"])
        .arg(alone.join("m.tflite"))
        .timed_output();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("calibrated on training images")
            && err.contains("--data"),
        "{err}"
    );
    assert!(!alone.join("m.tflite").exists());
    assert_eq!(
        reg.exports(1).unwrap().len(),
        2,
        "files of no run are not recorded"
    );
}
