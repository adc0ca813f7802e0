//! Sweeps and the persistent queue through the binary: concurrent workers, a killed worker,
//! pruning, and the report.

use crate::common::*;
use mvlab::registry::Registry;
use mvlab::status::Metric;
use mvlab::status::RunStatus;
use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn sweep_config(
    dir: &std::path::Path,
    root: &std::path::Path,
    epochs: usize,
    sweep: &str,
) -> std::path::PathBuf {
    tiny_config(
        dir,
        root,
        epochs,
        &format!("[checkpoint]\nmonitor = \"train_loss\"\nmode = \"min\"\n{sweep}"),
    )
}

#[test]
fn two_worker_processes_drain_a_queue_without_taking_a_run_twice() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 8, 40);
    let cfg = sweep_config(
        dir.path(),
        &root,
        1,
        "[sweep]\nmethod = \"grid\"\n[sweep.parameters]\n\"train.seed\" = [1, 2, 3, 4, 5, 6]\n",
    );
    let db = dir.path().join("r.db");
    let out = run_ok(
        mvlab()
            .arg("--db")
            .arg(&db)
            .arg("sweep")
            .arg(&cfg)
            .args(["--workers", "0"]),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("queued 6 runs"));
    let queue = run_ok(mvlab().arg("--db").arg(&db).args(["queue", "--json"]));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&queue.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        6
    );

    let spawn = || {
        mvlab()
            .arg("--db")
            .arg(&db)
            .arg("worker")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn_guarded()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.output(), b.output());
    assert!(a.status.success() && b.status.success());
    let mut taken = Vec::new();
    for out in [&a, &b] {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let run: i64 = line
                .split("run ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            taken.push(run);
        }
    }
    let unique: BTreeSet<i64> = taken.iter().copied().collect();
    assert_eq!(taken.len(), 6, "no run taken twice: {taken:?}");
    assert_eq!(unique, (1..=6).collect(), "none lost");
    let reg = Registry::open(&db).unwrap();
    for id in 1..=6 {
        assert_eq!(reg.run(id).unwrap().status, RunStatus::Completed);
        assert_eq!(
            reg.epoch_series(id, Metric::ValAccuracy).unwrap().len(),
            1,
            "run {id} trained once"
        );
    }
}

#[test]
fn a_killed_worker_leaves_its_run_resumable_and_the_queue_intact() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 40, 40);
    let cfg = sweep_config(
        dir.path(),
        &root,
        3,
        "[sweep]\n[sweep.parameters]\n\"train.seed\" = [1, 2, 3]\n",
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
    let mut worker = mvlab()
        .arg("--db")
        .arg(&db)
        .arg("worker")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn_guarded();
    let reg = Registry::open(&db).unwrap();
    let start = Instant::now();
    while reg.run(1).unwrap().epochs_done < 1 {
        assert!(start.elapsed() < Duration::from_secs(300));
        assert!(worker.try_wait().unwrap().is_none(), "worker ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    worker.kill_now();
    assert_eq!(reg.run(1).unwrap().display_status(), RunStatus::Interrupted);
    assert_eq!(reg.run(2).unwrap().status, RunStatus::Queued);
    assert_eq!(reg.run(3).unwrap().status, RunStatus::Queued);
    run_ok(mvlab().arg("--db").arg(&db).args(["resume", "1"]));
    run_ok(mvlab().arg("--db").arg(&db).arg("worker"));
    for id in 1..=3 {
        let r = reg.run(id).unwrap();
        assert_eq!(
            (r.status, r.epochs_done),
            (RunStatus::Completed, 3),
            "run {id}"
        );
    }
}

#[test]
fn median_pruning_stops_a_run_that_is_worse() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 40, 40);
    // Two runs that learn, then one whose learning rate is so small that it cannot.
    let sweep = "[sweep]\nprune = \"median\"\nprune_warmup = 2\nprune_min_runs = 2\n[sweep.parameters]\n\"train.lr\" = [0.001, 0.0015, 1e-12]\n";
    let cfg = sweep_config(dir.path(), &root, 3, sweep);
    let db = dir.path().join("r.db");
    let out = run_ok(mvlab().arg("--db").arg(&db).arg("sweep").arg(&cfg));
    let text = String::from_utf8_lossy(&out.stdout);
    let reg = Registry::open(&db).unwrap();
    assert_eq!(reg.run(1).unwrap().status, RunStatus::Completed, "{text}");
    assert_eq!(reg.run(2).unwrap().status, RunStatus::Completed, "{text}");
    let bad = reg.run(3).unwrap();
    assert_eq!(
        (bad.status, bad.epochs_done),
        (RunStatus::Pruned, 2),
        "{text}"
    );
    assert!(
        reg.logs(3, 10)
            .unwrap()
            .iter()
            .any(|l| l.message.contains("median rule"))
    );

    // The report ranks the runs, averages per value, and plots the curves.
    let svg = dir.path().join("curves.svg");
    let report = run_ok(
        mvlab()
            .arg("--db")
            .arg(&db)
            .args(["sweep", "report", "1", "--out"])
            .arg(&svg),
    );
    let report = String::from_utf8_lossy(&report.stdout);
    assert!(
        report.contains("ranked by best train_loss") && report.contains("train.lr"),
        "{report}"
    );
    let last_rank = report
        .lines()
        .find(|l| l.trim_start().starts_with("3 "))
        .unwrap();
    assert!(
        last_rank.contains("pruned"),
        "the pruned run ranks last: {report}"
    );
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("run 3") && svg.contains("polyline"),
        "curves drawn"
    );
}

/// `budget_minutes` ends a random sweep too: the trials still queued when it is over are not
/// started, and say why.
#[test]
fn a_sweep_out_of_time_starts_no_more_trials() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 16, 40);
    let cfg = sweep_config(
        dir.path(),
        &root,
        3,
        "[sweep]\nmethod = \"random\"\nsamples = 4\nbudget_minutes = 0.02\n[sweep.parameters]\n\"train.lr\" = { distribution = \"log_uniform\", min = 1e-3, max = 1e-2 }\n",
    );
    let db = dir.path().join("r.db");
    run_ok(mvlab().arg("--db").arg(&db).arg("sweep").arg(&cfg));
    let reg = Registry::open(&db).unwrap();
    let runs = reg.sweep_runs(1).unwrap();
    assert_eq!(runs.len(), 4);
    let cancelled: Vec<_> = runs
        .iter()
        .filter(|r| r.status == RunStatus::Cancelled)
        .collect();
    // Four runs of three epochs take longer than 1.2 s: the last at least was not started.
    assert!(!cancelled.is_empty(), "{runs:?}");
    for r in &cancelled {
        assert_eq!(r.epochs_done, 0);
        assert!(
            r.error
                .as_deref()
                .is_some_and(|e| e.contains("not started") && e.contains("budget_minutes")),
            "{:?}",
            r.error
        );
    }
    assert!(
        runs.iter()
            .all(|r| matches!(r.status, RunStatus::Completed | RunStatus::Cancelled))
    );
}

/// Grid trials are asked one at a time like tpe's (all at once when the sweep is queued): a
/// trial that goes missing is asked again by `sweep --resume`, found by its parameters, and no
/// other trial is queued twice.
#[test]
fn a_grid_sweep_asks_its_missing_trial_again_on_resume_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 8, 40);
    let cfg = sweep_config(
        dir.path(),
        &root,
        1,
        "[sweep]\nmethod = \"grid\"\n[sweep.parameters]\n\"train.seed\" = [1, 2, 3]\n\"train.lr\" = [0.002, 0.001]\n",
    );
    let db = dir.path().join("g.db");
    let out = run_ok(
        mvlab()
            .arg("--db")
            .arg(&db)
            .arg("sweep")
            .arg(&cfg)
            .args(["--workers", "0"]),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("queued 6 runs (1..6)"));
    let reg = Registry::open(&db).unwrap();
    let trial_of = |r: &mvlab::registry::RunRow| r.override_list().unwrap();
    let planned: BTreeSet<Vec<String>> = reg.runs().unwrap().iter().map(trial_of).collect();
    assert_eq!(planned.len(), 6);
    let lost = reg.run(3).unwrap();
    run_ok(mvlab().arg("--db").arg(&db).args(["delete", "3"]));
    run_ok(
        mvlab()
            .arg("--db")
            .arg(&db)
            .args(["sweep", "--resume", "1", "--workers", "2"]),
    );
    let runs = reg.runs().unwrap();
    assert_eq!(runs.len(), 6, "one trial asked again, none twice");
    assert!(runs.iter().all(|r| r.status == RunStatus::Completed));
    assert_eq!(runs.iter().map(trial_of).collect::<BTreeSet<_>>(), planned);
    let again = runs
        .iter()
        .find(|r| trial_of(r) == trial_of(&lost))
        .unwrap();
    assert_eq!(again.id, 7);
}

/// A sweep given `--set checkpoint.monitor=val_loss --set checkpoint.mode=min` over a file that
/// monitors val_accuracy is ranked by its lowest best val loss, and says so: in the text
/// report, the `--json` report, and the workbench's Sweeps view.
#[test]
fn a_sweep_is_ranked_by_the_monitor_and_mode_its_overrides_give() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 8, 40);
    let cfg = tiny_config(
        dir.path(),
        &root,
        2,
        "[sweep]\nmethod = \"grid\"\n[sweep.parameters]\n\"train.lr\" = [0.01, 0.002, 1e-6]\n",
    );
    let db = dir.path().join("r.db");
    run_ok(mvlab().arg("--db").arg(&db).arg("sweep").arg(&cfg).args([
        "--set",
        "checkpoint.monitor=val_loss",
        "--set",
        "checkpoint.mode=min",
    ]));
    // The expected order: each run's lowest val loss over its epochs, lowest first.
    let reg = Registry::open(&db).unwrap();
    let mut best: Vec<(f64, i64)> = reg
        .sweep_runs(1)
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r.status, RunStatus::Completed, "run {}", r.id);
            let losses = reg.epoch_series(r.id, Metric::ValLoss).unwrap();
            assert_eq!(losses.len(), 2, "run {}", r.id);
            let low = losses.iter().map(|(_, v)| *v).fold(f64::INFINITY, f64::min);
            (low, r.id)
        })
        .collect();
    assert_eq!(best.len(), 3);
    best.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(best[0].0 < best[2].0, "the runs' losses differ: {best:?}");
    let expected: Vec<i64> = best.iter().map(|(_, id)| *id).collect();

    let report = |json: bool| {
        let mut cmd = mvlab();
        cmd.arg("--db")
            .arg(&db)
            .args(["sweep", "report", "1", "--out"])
            .arg(dir.path().join("curves.svg"));
        if json {
            cmd.arg("--json");
        }
        String::from_utf8_lossy(&run_ok(&mut cmd).stdout).into_owned()
    };
    // Text: the header names the ranking, and the rank column follows it.
    let text = report(false);
    assert!(
        text.contains("ranked by best val_loss (lowest first)"),
        "{text}"
    );
    let ranked: Vec<i64> = text
        .lines()
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            let rank: usize = cols.next()?.parse().ok()?;
            let run: i64 = cols.next()?.parse().ok()?;
            (rank >= 1 && l.contains("train.lr=")).then_some(run)
        })
        .collect();
    assert_eq!(ranked, expected, "{text}");

    // JSON: the same order, and what it is ranked by.
    let v: serde_json::Value = serde_json::from_str(&report(true)).unwrap();
    assert_eq!(v["ranked_by"]["monitor"], "val_loss", "{v}");
    assert_eq!(v["ranked_by"]["mode"], "min", "{v}");
    let ranked: Vec<i64> = v["ranking"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run"].as_i64().unwrap())
        .collect();
    assert_eq!(ranked, expected, "{v}");
    let first_best = v["ranking"][0]["best"].as_f64().unwrap();
    assert!(
        (first_best - best[0].0).abs() <= 1e-6 * best[0].0.abs(),
        "{v}"
    );

    // The workbench's Sweeps view shows the same ranking.
    use mvlab::tui::{app::App, app::Tab, background, background::Msg};
    let mut app = App::new(dir.path().to_path_buf());
    app.tab = Tab::Sweeps;
    let mut seeds = background::SeedCache::default();
    // The first snapshot lists the sweep; the view then asks for its report.
    for _ in 0..2 {
        let s = background::snapshot(&reg, &app.wanted(), &mut seeds).unwrap();
        app.handle_msg(Msg::Snapshot(Box::new(s)));
    }
    let mut terminal = ratatui::Terminal::new(ratatui::backend::TestBackend::new(160, 40)).unwrap();
    terminal.draw(|f| mvlab::tui::ui::draw(f, &app)).unwrap();
    let buf = terminal.backend().buffer().clone();
    let screen: Vec<String> = (0..buf.area.height)
        .map(|y| (0..buf.area.width).map(|x| buf[(x, y)].symbol()).collect())
        .collect();
    let all = screen.join("\n");
    assert!(
        all.contains("ranked by best val_loss (lowest first)"),
        "{all}"
    );
    // The table's rows inside the ranking panel: "│   1    2 completed ... train.lr=… │".
    let ranked: Vec<i64> = screen
        .iter()
        .filter_map(|l| l.split('│').find(|cell| cell.contains("train.lr=")))
        .filter_map(|row| {
            let mut cols = row.split_whitespace();
            let _rank: usize = cols.next()?.parse().ok()?;
            cols.next()?.parse().ok()
        })
        .collect();
    assert_eq!(ranked, expected, "{all}");
}
