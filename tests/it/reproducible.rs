//! The same config, seed, build and machine give the same run: every recorded metric but the
//! timings, and the checkpoint files byte for byte, also with other processes busy beside it.

use crate::common::Proc;
use crate::common::Timed;
use crate::common::{run_of, run_ok, tiny_config, tiny_dataset};
use mvlab::registry::Registry;
use mvlab::status::Metric;
use std::process::Command;

/// CPU-bound processes beside the run, one per core: the threads of the run get preempted
/// and rayon's work stealing splits the work differently.
/// Killed and reaped when dropped ([`Proc`]).
struct Busy(Vec<Proc>);

impl Busy {
    fn start() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Busy(
            (0..cores)
                .map(|_| {
                    Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn_guarded()
                })
                .collect(),
        )
    }
}

fn recorded(reg: &Registry, id: i64) -> (Vec<(i64, i64, Metric, u64)>, Vec<(String, String)>) {
    let metrics = reg
        .metrics(id)
        .unwrap()
        .into_iter()
        .filter(|m| !matches!(m.metric, Metric::EpochSeconds | Metric::ImagesPerS))
        .map(|m| (m.step, m.epoch, m.metric, m.value.to_bits()))
        .collect();
    let mut checkpoints: Vec<(String, String)> = reg
        .checkpoints(id)
        .unwrap()
        .into_iter()
        .map(|c| (format!("{} epoch {}", c.kind, c.epoch), c.sha256))
        .collect();
    checkpoints.sort();
    (metrics, checkpoints)
}

#[test]
fn the_same_seed_gives_the_same_run_alone_and_beside_a_busy_machine() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 16, 40);
    let cfg = tiny_config(dir.path(), &root, 4, "");
    let db = dir.path().join("r.db");
    run_ok(&mut run_of(&db, &cfg));
    {
        let _busy = Busy::start();
        run_ok(&mut run_of(&db, &cfg));
    }
    // The same file as seed 1 of a seed group.
    run_ok(run_of(&db, &cfg).args(["--seeds", "2"]));
    let reg = Registry::open(&db).unwrap();
    let alone = recorded(&reg, 1);
    assert!(
        alone.0.len() > 4 * 4,
        "metrics of 4 epochs: {}",
        alone.0.len()
    );
    assert!(!alone.1.is_empty());
    for id in [2, 3] {
        let again = recorded(&reg, id);
        let first = alone.0.iter().zip(&again.0).find(|(a, b)| a != b);
        assert_eq!(first, None, "run {id}: the first metric that differs");
        assert_eq!(alone.0.len(), again.0.len(), "run {id}");
        assert_eq!(alone.1, again.1, "run {id}: checkpoint sha256");
    }
}

/// A Keras-flavour experiment with dropout in its transformer and head, so that dropout masks
/// are drawn every step: `seed` and `lr` set, `extra` appended.
fn dropout_config(
    dir: &std::path::Path,
    root: &std::path::Path,
    file: &str,
    seed: u64,
    lr: &str,
    extra: &str,
) -> std::path::PathBuf {
    let text = format!(
        "name = \"{}\"\n[model]\nflavour = \"keras\"\nvariant = \"xxs\"\ndropout = 0.2\n\
         [data]\nroot = \"{}\"\nimage_size = 32\nresize_bigger = 36\nval_fraction = 0.25\nworkers = 1\n\
         [train]\nepochs = 2\nbatch_size = 8\nlr = {lr}\nseed = {seed}\ndevice = \"cpu\"\n{extra}",
        file.trim_end_matches(".toml"),
        root.display()
    );
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    path
}

/// The run of `name` in a registry (the only one of that name).
fn run_named(reg: &Registry, name: &str) -> i64 {
    let runs: Vec<_> = reg
        .runs()
        .unwrap()
        .into_iter()
        .filter(|r| r.name == name)
        .collect();
    assert_eq!(runs.len(), 1, "runs named {name}");
    runs[0].id
}

#[test]
fn the_same_seed_gives_the_same_run_beside_other_runs_in_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 16, 40);
    let same = dropout_config(dir.path(), &root, "same.toml", 42, "0.002", "");

    // Alone, one run in its process.
    let alone_db = dir.path().join("alone.db");
    run_ok(&mut run_of(&alone_db, &same));
    let alone_reg = Registry::open(&alone_db).unwrap();
    let alone = recorded(&alone_reg, 1);
    assert!(
        alone.0.len() > 2 * 4,
        "metrics of 2 epochs: {}",
        alone.0.len()
    );
    assert!(!alone.1.is_empty());
    let check = |what: &str, got: (Vec<(i64, i64, Metric, u64)>, Vec<(String, String)>)| {
        let first = alone.0.iter().zip(&got.0).find(|(a, b)| a != b);
        assert_eq!(first, None, "{what}: the first metric that differs");
        assert_eq!(alone.0.len(), got.0.len(), "{what}: metrics");
        assert_eq!(alone.1, got.1, "{what}: checkpoint sha256");
    };

    // Two trials of a sweep trained side by side by `--workers 2`, identical but for a
    // setting that does nothing over 2 epochs: each is the run its seed names.
    let sweep = dropout_config(
        dir.path(),
        &root,
        "sweep.toml",
        42,
        "0.002",
        "[sweep]\nmethod = \"grid\"\n[sweep.parameters]\n\"train.patience\" = [50, 60]\n",
    );
    let sweep_db = dir.path().join("sweep.db");
    run_ok(
        crate::common::mvlab()
            .arg("--db")
            .arg(&sweep_db)
            .arg("sweep")
            .arg(&sweep)
            .args(["--workers", "2"]),
    );
    let sweep_reg = Registry::open(&sweep_db).unwrap();
    let trials = sweep_reg.runs().unwrap();
    assert_eq!(trials.len(), 2);
    for trial in &trials {
        check(
            &format!("sweep trial {}", trial.id),
            recorded(&sweep_reg, trial.id),
        );
    }

    // In the workbench, started while another experiment (another seed and rate) trains.
    let experiments = dir.path().join("experiments");
    std::fs::create_dir_all(&experiments).unwrap();
    let beside = dropout_config(&experiments, &root, "beside.toml", 7, "0.001", "");
    let same_there = experiments.join("same.toml");
    std::fs::copy(&same, &same_there).unwrap();
    let wb_db = dir.path().join("workbench.db");
    let wb_reg = Registry::open(&wb_db).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut effects = mvlab::tui::effects::Effects::new(wb_reg.clone(), tx);
    let mut app = mvlab::tui::app::App::new(experiments.clone());
    for (path, name) in [(beside, "beside"), (same_there, "same")] {
        effects.perform(mvlab::tui::state::Command::StartRun {
            path,
            name: name.into(),
        });
    }
    let started = std::time::Instant::now();
    let mut done = 0;
    while done < 2 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(600),
            "the workbench's runs did not finish; status: {}",
            app.status
        );
        if let Ok(msg) = rx.recv_timeout(std::time::Duration::from_millis(50)) {
            if let mvlab::tui::background::Msg::JobDone(id, result) = &msg {
                assert!(result.is_ok(), "run {id:?}: {result:?}");
                done += 1;
            }
            app.handle_msg(msg);
        }
        effects.reap();
    }
    check("workbench", recorded(&wb_reg, run_named(&wb_reg, "same")));
}
