//! Hostile input and faults, through the real binary: each case is refused (or survived) with an
//! error that names what is wrong, no panic, exit 0 only when the command did what was asked,
//! and nothing recorded or replaced that should not be.

use crate::common::Timed;
use crate::common::*;
use mvlab::registry::Registry;
use mvlab::status::{CheckpointKind, RunStatus};
use std::path::Path;
use std::process::Output;

fn registry(dir: &Path) -> Registry {
    Registry::open(&dir.join("r.db")).unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A failure that is an error, not a panic (Rust's panic message, or a signal's exit).
fn refused(out: &Output, expected: &[&str]) {
    let all = text(out);
    assert!(!out.status.success(), "expected a refusal: {all}");
    assert!(out.status.code().is_some(), "killed by a signal: {all}");
    assert!(!all.contains("panicked"), "a panic: {all}");
    for e in expected {
        assert!(all.contains(e), "{e:?} not in: {all}");
    }
}

/// A completed two-epoch tiny run in `dir` (registry r.db); returns the config file.
fn trained(dir: &Path) -> std::path::PathBuf {
    let root = tiny_dataset(dir, 3, 8, 40);
    let cfg = tiny_config(dir, &root, 2, "");
    run_ok(
        mvlab()
            .arg("--db")
            .arg(dir.join("r.db"))
            .arg("run")
            .arg(&cfg),
    );
    cfg
}

#[test]
fn item1_resume_loads_the_optimizer_on_the_runs_device_not_the_default_one() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 8, 40);
    let cfg = tiny_config(dir.path(), &root, 3, "");
    let db = dir.path().join("r.db");
    let reg = registry(dir.path());
    // Cancelled after its first epoch's checkpoint.
    let child = spawn_run(&db, &cfg);
    let start = std::time::Instant::now();
    while reg.run(1).map(|r| r.epochs_done).unwrap_or(0) < 1 {
        assert!(start.elapsed().as_secs() < 120, "no first epoch");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .timed_status();
    child.wait();
    assert_eq!(reg.run(1).unwrap().status, RunStatus::Cancelled);
    // The process's default device is one that cannot start here (as CUDA in a cuda build on a
    // machine without a driver): the run trains on the CPU and must resume there.
    let out = mvlab()
        .env("BURN_DEVICE", "cuda")
        .arg("--db")
        .arg(&db)
        .args(["resume", "1"])
        .timed_output();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(reg.run(1).unwrap().status, RunStatus::Completed);
}

#[test]
fn item2_a_diverged_evaluation_fails_the_run_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 8, 40);
    let cfg = tiny_config(dir.path(), &root, 3, "");
    let out = mvlab()
        .arg("--db")
        .arg(dir.path().join("r.db"))
        .arg("run")
        .arg(&cfg)
        .args(["--set", "train.lr=500"])
        .timed_output();
    refused(&out, &["diverged"]);
    let reg = registry(dir.path());
    let run = reg.run(1).unwrap();
    assert_eq!(run.status, RunStatus::Failed, "marked, not left running");
    assert!(run.error.unwrap_or_default().contains("diverged"));
    // What is recorded agrees with itself: no epoch past the last checkpoint, no NaN.
    let last = reg
        .checkpoints(1)
        .unwrap()
        .into_iter()
        .find(|c| c.kind == CheckpointKind::Last)
        .map_or(0, |c| c.epoch);
    assert_eq!(run.epochs_done, last);
    for m in reg.metrics(1).unwrap() {
        assert!(m.value.is_finite(), "{m:?}");
    }
}

#[test]
fn item3_export_replaces_only_regular_files() {
    let dir = tempfile::tempdir().unwrap();
    trained(dir.path());
    let db = dir.path().join("r.db");
    let fifo = dir.path().join("fifo.onnx");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .timed_status()
            .success()
    );
    let target = dir.path().join("precious.txt");
    std::fs::write(&target, b"keep me").unwrap();
    let link = dir.path().join("link.safetensors");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    for (out, format) in [(&fifo, "safetensors"), (&link, "safetensors")] {
        let o = mvlab()
            .arg("--db")
            .arg(&db)
            .args(["export", "1", "--format", format, "--out"])
            .arg(out)
            .timed_output();
        refused(&o, &["replaces only regular files"]);
    }
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo_like()
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let dev = mvlab()
        .arg("--db")
        .arg(&db)
        .args([
            "export",
            "1",
            "--format",
            "safetensors",
            "--out",
            "/dev/null",
        ])
        .timed_output();
    refused(&dev, &["device file"]);
}

trait FifoLike {
    fn is_fifo_like(&self) -> bool;
}

impl FifoLike for std::fs::FileType {
    fn is_fifo_like(&self) -> bool {
        std::os::unix::fs::FileTypeExt::is_fifo(self)
    }
}

#[test]
fn item4_an_image_size_beyond_memory_is_refused_with_the_estimate() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 8, 40);
    let cfg = tiny_config(dir.path(), &root, 1, "");
    let db = dir.path().join("r.db");
    let huge = [
        "--set",
        "data.image_size=100000",
        "--set",
        "data.resize_bigger=100000",
    ];
    let started = std::time::Instant::now();
    let out = mvlab()
        .arg("--db")
        .arg(&db)
        .arg("run")
        .arg(&cfg)
        .args(huge)
        .timed_output();
    refused(&out, &["needs about", "(estimated)", "data.image_size"]);
    assert!(
        registry(dir.path()).runs().unwrap().is_empty(),
        "nothing recorded"
    );
    // The summary computes shapes, not activations: it answers at once.
    let out = run_ok(mvlab().arg("summary").arg(&cfg).args(huge));
    assert!(
        text(&out).contains("Training memory: about"),
        "{}",
        text(&out)
    );
    assert!(started.elapsed().as_secs() < 60);
}

#[test]
fn item5_sweeps_with_bad_bounds_or_beyond_memory_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 4, 40);
    let base = std::fs::read_to_string(tiny_config(dir.path(), &root, 1, "")).unwrap();
    let thousand: Vec<String> = (0..1000)
        .map(|i| format!("{}", 1e-4 + i as f64 * 1e-6))
        .collect();
    let list = thousand.join(", ");
    let cases = [
        (
            "\"train.lr\" = { distribution = \"uniform\", min = nan, max = 0.1 }\n",
            "finite",
        ),
        (
            "\"train.lr\" = { distribution = \"log_uniform\", min = 1e-4, max = inf }\n",
            "finite",
        ),
        (
            "\"train.batch_size\" = { distribution = \"int_uniform\", min = 1.2, max = 1.8 }\n",
            "int_uniform needs an integer",
        ),
    ];
    for (i, (params, expected)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("s{i}.toml"));
        std::fs::write(
            &path,
            format!(
                "{base}[sweep]\nmethod = \"random\"\nsamples = 2\n[sweep.parameters]\n{params}"
            ),
        )
        .unwrap();
        let out = mvlab()
            .arg("--db")
            .arg(dir.path().join("r.db"))
            .args(["sweep", "--workers", "0"])
            .arg(&path)
            .timed_output();
        refused(&out, &[expected]);
    }
    for (name, section) in [
        (
            "samples",
            "[sweep]\nmethod = \"random\"\nsamples = 1000000000\n[sweep.parameters]\n\"train.lr\" = [0.1]\n".to_string(),
        ),
        (
            "grid",
            format!(
                "[sweep]\n[sweep.parameters]\n\"train.lr\" = [{list}]\n\"train.min_lr\" = [{list}]\n\"model.dropout\" = [{}]\n",
                (0..1000).map(|i| format!("{}", i as f64 / 2000.0)).collect::<Vec<_>>().join(", ")
            ),
        ),
    ] {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, format!("{base}{section}")).unwrap();
        let out = mvlab()
            .arg("--db")
            .arg(dir.path().join("r.db"))
            .args(["sweep", "--workers", "0"])
            .arg(&path)
            .timed_output();
        refused(&out, &["trials would take about", "of memory"]);
    }
    assert!(
        registry(dir.path()).runs().unwrap().is_empty(),
        "nothing queued"
    );
}

#[test]
fn item6_a_corrupt_registry_is_named_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.db");
    std::fs::write(
        &bad,
        (0..4096).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = mvlab().arg("--db").arg(&bad).arg("runs").timed_output();
    refused(&out, &["bad.db", "not an SQLite database"]);
    assert!(started.elapsed().as_secs() < 20, "no pool timeout");
    // A registry cut short.
    trained(dir.path());
    let good = std::fs::read(dir.path().join("r.db")).unwrap();
    let cut = dir.path().join("cut.db");
    std::fs::write(&cut, &good[..good.len() / 3]).unwrap();
    let out = mvlab().arg("--db").arg(&cut).arg("runs").timed_output();
    // SQLite may read what survives; either it answers or it names the file.
    if !out.status.success() {
        refused(&out, &["cut.db"]);
    }
}

#[test]
fn item7_changed_checkpoint_bytes_are_refused_by_eval_predict_and_export() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = trained(dir.path());
    let db = dir.path().join("r.db");
    let best = dir.path().join("r.runs/1/best.bpk");
    let mut bytes = std::fs::read(&best).unwrap();
    let middle = bytes.len() / 2;
    let end = middle + 4096.min(bytes.len() - middle);
    for b in &mut bytes[middle..end] {
        *b ^= 0x5a;
    }
    std::fs::write(&best, &bytes).unwrap();
    let image = std::fs::read_dir(cfg.parent().unwrap().join("data/disc"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    for args in [
        vec!["eval", "1"],
        vec![
            "eval",
            best.to_str().unwrap(),
            "--data",
            root_of(&cfg).as_str(),
        ],
        vec!["predict", "1", image.to_str().unwrap()],
        vec![
            "export",
            "1",
            "--format",
            "safetensors",
            "--out",
            "x.safetensors",
        ],
    ] {
        let out = mvlab()
            .current_dir(dir.path())
            .arg("--db")
            .arg(&db)
            .args(&args)
            .timed_output();
        refused(&out, &["does not match the recorded"]);
    }
    assert!(!dir.path().join("x.safetensors").exists());
}

fn root_of(cfg: &Path) -> String {
    cfg.parent().unwrap().join("data").display().to_string()
}

#[test]
fn item8_an_empty_val_split_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 8, 40);
    let cfg = tiny_config(dir.path(), &root, 1, "");
    let out = mvlab()
        .arg("--db")
        .arg(dir.path().join("r.db"))
        .arg("run")
        .arg(&cfg)
        .args(["--set", "data.val_fraction=0"])
        .timed_output();
    refused(&out, &["data.val_fraction"]);
    assert!(registry(dir.path()).runs().unwrap().is_empty());
}

#[test]
fn item9_a_relative_db_records_absolute_paths() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 8, 40);
    let cfg = tiny_config(dir.path(), &root, 1, "");
    std::fs::create_dir_all(dir.path().join("a")).unwrap();
    run_ok(
        mvlab()
            .current_dir(dir.path().join("a"))
            .args(["--db", "rel/r.db", "run"])
            .arg(&cfg),
    );
    let reg = Registry::open(&dir.path().join("a/rel/r.db")).unwrap();
    let run = reg.run(1).unwrap();
    assert!(Path::new(run.run_dir.as_deref().unwrap()).is_absolute());
    for c in reg.checkpoints(1).unwrap() {
        assert!(Path::new(&c.path).is_absolute(), "{}", c.path);
    }
    // Read from another folder, the same run evaluates.
    run_ok(
        mvlab()
            .current_dir(dir.path())
            .args(["--db", "a/rel/r.db", "eval", "1"]),
    );
}

#[test]
fn item10_synthetic_images_of_no_size_are_refused() {
    for args in [["--size", "0"], ["--height", "0"]] {
        let dir = tempfile::tempdir().unwrap();
        let out = mvlab()
            .args(["data", "synth", "--out"])
            .arg(dir.path())
            .args(args)
            .timed_output();
        refused(&out, &["0"]);
        assert_eq!(out.status.code(), Some(2), "a usage error");
    }
}

#[test]
fn smaller_ones() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = trained(dir.path());
    let db = dir.path().join("r.db");
    let run = |args: &[&str]| mvlab().arg("--db").arg(&db).args(args).timed_output();
    let c = cfg.to_str().unwrap();
    // --set mistakes say why, and a bad value set on the command line is blamed there.
    refused(
        &run(&["run", c, "--set", "train.lr.x=1"]),
        &["is not a table"],
    );
    refused(
        &run(&["run", c, "--set", "train..lr=1"]),
        &["not a dotted key path"],
    );
    refused(
        &run(&["run", c, "--set", "train.lr=nan"]),
        &["--set train.lr=nan", "train.lr"],
    );
    // predict: nothing readable is a failure, some unreadable a partial success (exit 4).
    let junk = dir.path().join("junk.jpg");
    std::fs::write(&junk, b"not an image").unwrap();
    refused(
        &run(&["predict", "1", junk.to_str().unwrap()]),
        &["could be read"],
    );
    let good = std::fs::read_dir(dir.path().join("data/disc"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let out = run(&[
        "predict",
        "1",
        good.to_str().unwrap(),
        junk.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    refused(
        &run(&["predict", "1", good.to_str().unwrap(), "--top-k", "0"]),
        &["top-k"],
    );
}

#[test]
fn a_missing_state_fails_a_resume_and_keeps_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 8, 40);
    let cfg = tiny_config(dir.path(), &root, 3, "");
    let db = dir.path().join("r.db");
    let reg = registry(dir.path());
    let child = spawn_run(&db, &cfg);
    let start = std::time::Instant::now();
    while reg.run(1).map(|r| r.epochs_done).unwrap_or(0) < 1 {
        assert!(start.elapsed().as_secs() < 120, "no first epoch");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .timed_status();
    child.wait();
    let before = reg.metrics(1).unwrap().len();
    std::fs::remove_file(dir.path().join("r.runs/1/state.json")).unwrap();
    let out = mvlab()
        .arg("--db")
        .arg(&db)
        .args(["resume", "1"])
        .timed_output();
    refused(&out, &["state.json", "cannot be resumed"]);
    assert_eq!(
        reg.metrics(1).unwrap().len(),
        before,
        "nothing recorded was lost"
    );
    assert_eq!(reg.run(1).unwrap().status, RunStatus::Failed);
}
