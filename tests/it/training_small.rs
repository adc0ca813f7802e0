//! Training that gives meaningful validation on small datasets: BatchNorm recalibration, the
//! collapse warning, and learning-rate schedules across a resume. Real images, a real registry.

use crate::common::*;
use mvlab::config;
use mvlab::jobs;
use mvlab::jobs::ExecuteOptions;
use mvlab::registry::Registry;
use mvlab::status::{LogLevel, Metric, RunStatus};
use mvlab::train::{Outcome, RunEvent};
use std::path::Path;
use std::sync::atomic::Ordering;

/// Trains `cfg` with `sets` to its end; returns the run id.
fn train(reg: &Registry, cfg: &Path, sets: &[&str]) -> i64 {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let loaded = config::load(cfg, &sets).unwrap();
    let id = jobs::create_run(reg, &loaded, RunStatus::Running, None).unwrap();
    let lease = jobs::take(reg, id).unwrap();
    let outcome = jobs::execute(reg, &lease, &ExecuteOptions::default(), |_| {}).unwrap();
    assert!(matches!(outcome, Outcome::Completed { .. }), "{outcome:?}");
    id
}

fn collapse_warnings(reg: &Registry, id: i64) -> usize {
    reg.logs(id, 100)
        .unwrap()
        .iter()
        .filter(|l| l.level == LogLevel::Warn && l.message.contains("collapsed"))
        .count()
}

#[test]
fn recalibration_makes_a_collapsed_small_run_evaluate_well_and_the_warning_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 24, 40);
    // The Keras flavour: BatchNorm momentum 0.99, so 27 steps leave the running statistics
    // near their initial values.
    let cfg = tiny_config(dir.path(), &root, 3, "");
    // Each run in a process of its own: tests running beside each other share the device's
    // random generator (dropout), and the two runs are compared step for step below.
    let db = dir.path().join("r.db");
    for recalibrate in [0, 6] {
        run_ok(
            mvlab()
                .arg("--db")
                .arg(&db)
                .arg("run")
                .arg(&cfg)
                .args(["--set", "model.flavour=keras", "--set"])
                .arg(format!("train.bn_recalibrate={recalibrate}")),
        );
    }
    let reg = Registry::open(&db).unwrap();
    let (plain, recal) = (1, 2);
    let best = |id| reg.run(id).unwrap().best_metric.unwrap();
    assert!(
        best(plain) <= 0.4,
        "collapsed to the prior (1/3): {}",
        best(plain)
    );
    assert!(best(recal) >= 0.7, "recalibrated: {}", best(recal));
    assert_eq!(collapse_warnings(&reg, plain), 3, "one warning per epoch");
    assert_eq!(collapse_warnings(&reg, recal), 0, "none in a healthy run");
    let logs = reg.logs(plain, 100).unwrap();
    let warning = logs.iter().find(|l| l.level == LogLevel::Warn).unwrap();
    assert!(
        warning.message.contains("BatchNorm") && warning.message.contains("train.bn_recalibrate"),
        "names the cause and the fix: {}",
        warning.message
    );
    // Training itself is the same: recalibration touches only the running statistics.
    let train_acc = |id| reg.epoch_series(id, Metric::TrainAccuracy).unwrap();
    assert_eq!(train_acc(plain), train_acc(recal));
}

#[test]
fn a_resumed_cosine_run_continues_the_same_learning_rates() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 8, 40);
    let schedule =
        "schedule = \"cosine\"\nwarmup_epochs = 1.0\nmin_lr = 0.0001\nbn_recalibrate = 0\n";
    let cfg = tiny_config(dir.path(), &root, 4, schedule);
    let reg = Registry::open(&dir.path().join("r.db")).unwrap();
    let whole = train(&reg, &cfg, &[]);

    // The same run, cancelled after its second epoch, then resumed.
    let loaded = config::load(&cfg, &[]).unwrap();
    let id = jobs::create_run(&reg, &loaded, RunStatus::Running, None).unwrap();
    let opts = ExecuteOptions::default();
    let cancel = opts.control.cancel.clone();
    let lease = jobs::take(&reg, id).unwrap();
    let outcome = jobs::execute(&reg, &lease, &opts, |e| {
        if let RunEvent::Epoch(s) = e
            && s.epoch == 2
        {
            cancel.store(true, Ordering::SeqCst);
        }
    })
    .unwrap();
    assert!(
        matches!(outcome, Outcome::Cancelled { epochs_done: 2 }),
        "{outcome:?}"
    );
    let lease = jobs::take(&reg, id).unwrap();
    jobs::execute(&reg, &lease, &ExecuteOptions::default(), |_| {}).unwrap();

    let step_lrs = |id| -> Vec<(i64, f64)> { reg.series(id, Metric::StepLr).unwrap() };
    let (a, b) = (step_lrs(whole), step_lrs(id));
    assert_eq!(a.len(), 4 * 3, "3 steps an epoch: {a:?}");
    assert_eq!(a, b, "same steps, same rates");
    assert!(a[0].1 < a[2].1, "warming up: {a:?}");
    assert!(
        (a[a.len() - 1].1 - 1e-4).abs() < 1e-12,
        "ends at min_lr: {a:?}"
    );
    assert_eq!(
        reg.epoch_series(whole, Metric::TrainLr).unwrap(),
        reg.epoch_series(id, Metric::TrainLr).unwrap()
    );
}
