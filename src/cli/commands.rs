//! The commands: each takes parsed arguments and does its work through config, jobs, eval,
//! checkpoint and the registry; progress output is in `progress`.

use super::args::{DataCommand, ImageFormat, ImportDataset, SlurmArgs};
use super::progress::{Bars, Stop, cancel_on_ctrl_c, stop_on_signals, worker_line};
use crate::checkpoint;
use crate::compare;
use crate::config;
use crate::data::{self, idx, synth};
use crate::fmt::{duration, metric, percent, truncate};
use crate::jobs;
use crate::model::{ModelConfig, summary};
use crate::registry::{Place, Registry, RunRow};
use crate::status::{Metric, RunStatus};
use crate::train::Outcome;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

/// Exit status of a run refused by its gate.
pub const EXIT_GATE: i32 = 3;

pub fn cmd_run(
    db: &Place,
    config_path: &Path,
    sets: &[String],
    seeds: Option<usize>,
    gate: Option<(&str, f64)>,
) -> Result<i32> {
    let loaded = config::load(config_path, sets)?;
    let reg = db.open()?;
    reg.artifacts.check()?;
    // The baseline is checked before any training.
    let baseline = gate
        .map(|(spec, _)| compare::side(db, spec).map_err(|e| anyhow::anyhow!("--gate: {e:#}")))
        .transpose()?;
    let seeds = jobs::group_seeds(&loaded, seeds)?;
    let (code, candidate) = if seeds.is_empty() {
        let run_id = jobs::create_run(&reg, &loaded, RunStatus::Running, None)?;
        eprintln!(
            "run {run_id}: {} ({})",
            loaded.config.name,
            config_path.display()
        );
        (execute_with_progress(&reg, run_id)?, run_id.to_string())
    } else {
        let (group, runs) = jobs::queue_seed_group(&reg, &loaded, &seeds)?;
        eprintln!(
            "group g{group}: {} runs ({}..{}) of {} with seeds {seeds:?}",
            runs.len(),
            runs[0],
            runs[runs.len() - 1],
            loaded.config.name
        );
        let opts = jobs::WorkOptions {
            sweep: Some(group),
            ..jobs::WorkOptions::default()
        };
        let code = work(&reg, &opts)?;
        if let Some(g) = compare::groups(&reg)?.into_iter().find(|g| g.id == group) {
            println!("{}", g.line());
        }
        (code, format!("g{group}"))
    };
    let (Some(baseline), Some((_, alpha)), 0) = (baseline, gate, code) else {
        return Ok(code);
    };
    let new = compare::side(db, &candidate)?;
    let images = match &new {
        compare::Side::Checkpoint { run: Some(r), .. } => compare::Images::ValOf(r),
        _ => compare::Images::Default,
    };
    let device = crate::device::select("auto")?;
    // The baseline is A, the new run B: on the new run's val images.
    let c = compare::compare(&baseline, &new, images, alpha, &device.device)?;
    println!("\ngate: {} against {}\n{}", c.b, c.a, compare::report(&c));
    Ok(if c.b_is_worse() {
        eprintln!("gate: refused ({} is significantly worse)", c.b);
        EXIT_GATE
    } else {
        eprintln!("gate: passed");
        0
    })
}

pub fn cmd_compare(
    db: &Place,
    a: &str,
    b: &str,
    data: Option<&Path>,
    alpha: f64,
    json: bool,
    html: Option<&Path>,
) -> Result<i32> {
    let (a, b) = (compare::side(db, a)?, compare::side(db, b)?);
    let images = match data {
        Some(dir) => compare::Images::Folder(dir),
        None => compare::Images::Default,
    };
    let device = crate::device::select("auto")?;
    let c = compare::compare(&a, &b, images, alpha, &device.device)?;
    if let Some(file) = html {
        crate::artifacts::write_atomic(file, compare::html(&c).as_bytes())?;
        eprintln!("wrote {}", file.display());
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&c)?);
    } else {
        print!("{}", compare::report(&c));
    }
    Ok(0)
}

pub fn cmd_samples(db: &Place, run: i64, top: usize, json: bool) -> Result<()> {
    let reg = db.open()?;
    let device = crate::device::select("auto")?;
    let samples = crate::samples::of_run(&reg, run, top, &device.device)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&samples)?);
    } else {
        print!("{}", crate::samples::report(&samples));
    }
    Ok(())
}

/// Exit 0 when the rerun's losses match the recorded ones, 1 when they do not.
pub fn cmd_rerun(
    db: &Place,
    run: i64,
    steps: Option<usize>,
    tolerance: f64,
    json: bool,
) -> Result<i32> {
    let reg = db.open()?;
    // Its length is set once the steps to retrain are known.
    let bar = crate::cli::progress::bar(steps.unwrap_or(0) as u64, "retraining");
    let v = crate::verify::rerun(&reg, run, steps, tolerance, |done, of| {
        bar.set_length(of as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", crate::verify::report(&v));
    }
    Ok(if v.passed { 0 } else { 1 })
}

pub fn cmd_sweep(
    db: &Place,
    config_path: &Path,
    sets: &[String],
    workers: u16,
    slurm: &SlurmArgs,
) -> Result<i32> {
    let loaded = config::load(config_path, sets)?;
    if slurm.dry_run {
        let section = loaded
            .config
            .sweep
            .as_ref()
            .with_context(|| format!("{} has no [sweep] section", config_path.display()))?;
        crate::sweep::expand_with(&loaded.text, &loaded.overrides, section)
            .and_then(|_| crate::sweep::check_measurable(&loaded.text, &loaded.overrides, section))
            .map_err(|e| anyhow::anyhow!("{}: {e:#}", config_path.display()))?;
        super::submit::sweep_on_slurm(db, None, slurm, loaded.config.slurm.as_ref())?;
        return Ok(0);
    }
    let reg = db.open()?;
    reg.artifacts.check()?;
    let (sweep, runs) = jobs::queue_sweep(&reg, &loaded)?;
    match (runs.first(), runs.last()) {
        (Some(first), Some(last)) => {
            println!(
                "sweep {sweep}: queued {} runs ({first}..{last})",
                runs.len()
            )
        }
        _ => {
            let section = loaded
                .config
                .sweep
                .as_ref()
                .expect("a sweep has its section");
            println!(
                "sweep {sweep}: {} ({} trials{}), each proposed from the ones before when a worker asks; objectives {}",
                section.method(),
                section.samples,
                section
                    .budget_minutes
                    .map(|m| format!(" or {m} minutes"))
                    .unwrap_or_default(),
                crate::sweep::objectives(section, &loaded.config)
                    .iter()
                    .map(|o| o.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    if slurm.slurm.is_some() {
        super::submit::sweep_on_slurm(
            db,
            Some((&reg, sweep)),
            slurm,
            loaded.config.slurm.as_ref(),
        )?;
        return Ok(0);
    }
    if workers == 0 {
        return Ok(0);
    }
    work_sweep(&reg, sweep, workers)
}

/// `mvlab sweep --resume N`: the sweep's trials whose worker is gone go back to the queue at
/// once (their lease need not run out), then workers go on with its history.
pub fn cmd_sweep_resume(db: &Place, sweep: i64, workers: u16) -> Result<i32> {
    let reg = db.open()?;
    reg.artifacts.check()?;
    reg.sweep(sweep)?;
    let mut back = 0;
    for run in reg.sweep_runs(sweep)? {
        if run.is_orphaned() {
            let lease = reg.claim_run(
                run.id,
                &jobs::worker_name(),
                jobs::DEFAULT_LEASE_S,
                run.token.as_deref(),
            )?;
            reg.requeue(&lease)?;
            back += 1;
        }
    }
    let runs = reg.sweep_runs(sweep)?;
    println!(
        "sweep {sweep}: {} trials so far ({} finished), {back} interrupted ones back in the queue",
        runs.len(),
        runs.iter()
            .filter(|r| matches!(
                r.status,
                crate::status::RunStatus::Completed | crate::status::RunStatus::Pruned
            ))
            .count()
    );
    work_sweep(&reg, sweep, workers.max(1))
}

fn work_sweep(reg: &crate::registry::Registry, sweep: i64, workers: u16) -> Result<i32> {
    let opts = jobs::WorkOptions {
        workers: workers.into(),
        sweep: Some(sweep),
        ..jobs::WorkOptions::default()
    };
    let code = work(reg, &opts)?;
    let report = crate::sweep::report(reg, sweep, None)?;
    print!("\n{}", report.text);
    match report.nothing_measured {
        Some(why) if code == 0 => {
            eprintln!("{why}");
            Ok(EXIT_UNMEASURED)
        }
        _ => Ok(code),
    }
}

/// Exit status of a sweep (worked, or reported) that measures its trials' deployed files and
/// could measure none of its finished trials.
pub const EXIT_UNMEASURED: i32 = 5;

/// Works the queue; one line per epoch and per finished run. Ctrl-C, SIGTERM (how Slurm and
/// Kubernetes stop a job) or Slurm's time-limit warning (USR1) puts the runs in progress back
/// in the queue after their step; after the warning a Slurm task also requeues itself, so its
/// next attempt goes on with them.
pub fn work(reg: &Registry, opts: &jobs::WorkOptions) -> Result<i32> {
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = stop_on_signals(cancel.clone(), opts.stop_reason.clone())?;
    let results = jobs::work_queue(reg, opts, &cancel, |run, e| {
        if let Some(line) = worker_line(run, e) {
            eprintln!("{line}");
        }
    })?;
    for (run, worked) in &results {
        println!("worker {}: run {run} {worked}", jobs::worker_name());
    }
    if stop.get() == Some(&Stop::TimeLimit) {
        if let Some(task) = crate::slurm::Task::current() {
            eprintln!("requeueing Slurm job {} for what is left", task.job);
            task.requeue()?;
        }
    }
    Ok(if cancel.load(Ordering::SeqCst) {
        130
    } else {
        0
    })
}

pub fn cmd_queue(db: &Place, json: bool) -> Result<()> {
    let reg = db.open()?;
    let runs: Vec<RunRow> = reg
        .runs()?
        .into_iter()
        .filter(|r| r.status.is_pending())
        .rev()
        .collect();
    let slurm = slurm_states(&runs);
    if json {
        let rows: Vec<serde_json::Value> = runs
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r)?;
                v["slurm_state"] = r
                    .slurm_job
                    .as_ref()
                    .and_then(|j| slurm.get(j))
                    .map(|s| serde_json::Value::String(s.clone()))
                    .unwrap_or(serde_json::Value::Null);
                Ok(v)
            })
            .collect::<Result<_>>()?;
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:>4}  {:<20} {:<12} {:>6}  {:>7}  {:>7}  {:>9}  {:<22} worker",
        "id", "experiment", "status", "sweep", "epoch", "attempt", "heartbeat", "slurm"
    );
    for r in &runs {
        let held = r.status == RunStatus::Running;
        let job = match &r.slurm_job {
            Some(j) => match slurm.get(j) {
                Some(state) => format!("{j} {state}"),
                None => j.clone(),
            },
            None => "-".into(),
        };
        println!(
            "{:>4}  {:<20} {:<12} {:>6}  {:>7}  {:>7}  {:>9}  {job:<22} {}",
            r.id,
            truncate(&r.name, 20),
            r.display_status().as_ref(),
            r.sweep_id.map(|s| s.to_string()).unwrap_or("-".into()),
            format!("{}/{}", r.epochs_done, r.epochs_total),
            r.attempt,
            r.beat_age_s
                .filter(|_| held)
                .map(crate::fmt::ago)
                .unwrap_or_else(|| "-".into()),
            if held {
                r.worker.as_deref().unwrap_or("-")
            } else {
                "-"
            }
        );
    }
    Ok(())
}

/// Slurm's state of the runs' jobs, when Slurm is here and answers (else none: the queue is
/// shown without it, and says so).
fn slurm_states(runs: &[RunRow]) -> std::collections::HashMap<String, String> {
    let jobs: Vec<String> = runs.iter().filter_map(|r| r.slurm_job.clone()).collect();
    if jobs.is_empty() || !crate::slurm::available() {
        return Default::default();
    }
    crate::slurm::states(&jobs).unwrap_or_else(|e| {
        eprintln!("(Slurm's job states left out: {e:#})");
        Default::default()
    })
}

pub fn cmd_resume(db: &Place, run: i64) -> Result<i32> {
    let reg = db.open()?;
    jobs::check_resumable(&reg, run)?;
    eprintln!("resuming run {run}");
    execute_with_progress(&reg, run)
}

/// Runs with bars on stderr; Ctrl-C cancels (the run stays resumable), a second Ctrl-C exits at once.
fn execute_with_progress(reg: &Registry, run_id: i64) -> Result<i32> {
    let opts = jobs::ExecuteOptions::default();
    cancel_on_ctrl_c(
        opts.control.cancel.clone(),
        "cancelling after this step (Ctrl-C again to quit now)…",
    );
    let mut bars = Bars::new();
    let lease = jobs::take(reg, run_id)?;
    let outcome = jobs::execute(reg, &lease, &opts, |e| bars.show(e))?;
    bars.finish();
    Ok(match &outcome {
        Outcome::Completed {
            best_metric,
            best_epoch,
            final_val_accuracy,
            final_val_loss,
            early_stopped,
            skipped,
        } => {
            let row = reg.run(run_id)?;
            println!(
                "run {run_id} completed{}: best {} {:.4} at epoch {best_epoch}; best weights on val: accuracy {}, loss {:.4}; took {}{}",
                if *early_stopped { " (early stop)" } else { "" },
                row.monitor,
                best_metric,
                percent(*final_val_accuracy),
                final_val_loss,
                duration(row.duration_s().unwrap_or(0.0)),
                if *skipped > 0 {
                    format!("; {skipped} unreadable files skipped (mvlab show {run_id} lists them)")
                } else {
                    String::new()
                }
            );
            0
        }
        Outcome::Failed(_) => {
            eprintln!("run {run_id} {outcome}");
            1
        }
        Outcome::Cancelled { .. } => {
            eprintln!("run {run_id} {outcome}; continue it with `mvlab resume {run_id}`");
            130
        }
        Outcome::Pruned { .. } => {
            eprintln!("run {run_id} {outcome}");
            0
        }
    })
}

pub fn cmd_delete(db: &Place, run: i64) -> Result<()> {
    let reg = db.open()?;
    if reg.run(run)?.display_status() == RunStatus::Running {
        bail!("run {run} is running; stop it first (Ctrl-C where it trains, or wait)");
    }
    jobs::delete_run(&reg, run)?;
    println!("deleted run {run}");
    Ok(())
}

pub fn cmd_runs(db: &Place, json: bool) -> Result<()> {
    let reg = db.open()?;
    let runs = reg.runs()?;
    let groups = compare::groups(&reg)?;
    if json {
        let out: Vec<serde_json::Value> = runs
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r).unwrap();
                v["status"] = r.display_status().as_ref().into();
                // A seed group's mean ± std beside each of its runs.
                if let Some(g) = groups.iter().find(|g| Some(g.id) == r.sweep_id) {
                    v["group"] = serde_json::to_value(g).unwrap();
                }
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{:>4}  {:<20} {:<12} {:>7}  {:>9}  {:>8}  device",
        "id", "experiment", "status", "epoch", "best", "time"
    );
    for r in &runs {
        println!(
            "{:>4}  {:<20} {:<12} {:>7}  {:>9}  {:>8}  {}",
            r.id,
            truncate(&r.name, 20),
            r.display_status().as_ref(),
            format!("{}/{}", r.epochs_done, r.epochs_total),
            metric(r.best_metric),
            r.duration_s().map(duration).unwrap_or_else(|| "-".into()),
            r.device.as_deref().unwrap_or("-"),
        );
    }
    if !groups.is_empty() {
        println!();
        for g in &groups {
            println!("{}", g.line());
        }
    }
    Ok(())
}

pub fn cmd_show(db: &Place, run: i64, json: bool) -> Result<()> {
    let reg = db.open()?;
    let r = reg.run(run)?;
    let cks = reg.checkpoints(run)?;
    let series = |metric| reg.epoch_series(run, metric);
    let (tl, ta, vl, va) = (
        series(Metric::TrainLoss)?,
        series(Metric::TrainAccuracy)?,
        series(Metric::ValLoss)?,
        series(Metric::ValAccuracy)?,
    );
    let logs = reg.logs(run, 20)?;
    let exports = reg.exports(run)?;
    if json {
        let v = serde_json::json!({
            "run": r, "status": r.display_status(), "checkpoints": cks, "logs": logs,
            "exports": exports,
            "provenance": r.provenance.as_deref().and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok()),
            "epochs": tl.iter().enumerate().map(|(i, (e, l))| serde_json::json!({
                "epoch": e, "train_loss": l, "train_accuracy": ta.get(i).map(|x| x.1),
                "val_loss": vl.get(i).map(|x| x.1), "val_accuracy": va.get(i).map(|x| x.1)})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "run {} — {} [{}] on {}",
        r.id,
        r.name,
        r.display_status(),
        r.device.as_deref().unwrap_or("-")
    );
    println!(
        "epochs {}/{}, best {} {} at epoch {}",
        r.epochs_done,
        r.epochs_total,
        r.monitor,
        metric(r.best_metric),
        r.best_epoch.unwrap_or(0)
    );
    if let Some(e) = &r.error {
        println!("error: {e}");
    }
    if r.overrides != "[]" {
        println!("overrides: {}", r.overrides);
    }
    if let Some(p) = r.provenance.as_deref() {
        match serde_json::from_str::<crate::provenance::Provenance>(p) {
            Ok(p) => {
                println!("provenance:");
                for line in crate::provenance::describe(&p) {
                    println!("  {line}");
                }
            }
            Err(e) => println!("provenance: unreadable record ({e})"),
        }
    }
    println!(
        "\n{:>5}  {:>10}  {:>9}  {:>10}  {:>9}",
        "epoch", "train loss", "train acc", "val loss", "val acc"
    );
    for (i, (e, l)) in tl.iter().enumerate() {
        println!(
            "{:>5}  {:>10.4}  {:>8.2}%  {:>10.4}  {:>8.2}%",
            e,
            l,
            ta.get(i).map_or(0.0, |x| x.1 * 100.0),
            vl.get(i).map_or(0.0, |x| x.1),
            va.get(i).map_or(0.0, |x| x.1 * 100.0)
        );
    }
    println!("\ncheckpoints:");
    for c in &cks {
        println!(
            "  {:<4} epoch {:>3}  {}  sha256 {}",
            c.kind.as_ref(),
            c.epoch,
            c.path,
            &c.sha256[..16.min(c.sha256.len())]
        );
    }
    if !exports.is_empty() {
        println!(
            "\nexports (each file run in its runtime on the val split, beside the float model):"
        );
        for e in &exports {
            println!(
                "  {} {:<6} {}",
                &e.created_at[..19.min(e.created_at.len())],
                e.source,
                e.line()
            );
        }
    }
    if !logs.is_empty() {
        println!("\nlog:");
        for l in &logs {
            println!(
                "  {} [{}] {}",
                &l.time[..19.min(l.time.len())],
                l.level,
                l.message
            );
        }
    }
    println!("\nconfig:\n{}", r.config);
    Ok(())
}

pub fn cmd_eval(db: &Place, target: &str, data_dir: Option<&Path>, json: bool) -> Result<()> {
    let (path, run) = checkpoint::resolve(db, target)?;
    let device = crate::device::select("auto")?;
    let result = crate::eval::checkpoint(&path, run.as_ref(), data_dir, &device.device)?;
    let (ev, classes) = (&result.evaluation, &result.classes);
    // The files exported from this checkpoint and measured on the same val split.
    let exports: Vec<crate::registry::ExportRow> = match (&run, data_dir) {
        (Some(r), None) => {
            let sha256 = checkpoint::sha256_file(&path)?;
            db.open()?
                .exports(r.id)?
                .into_iter()
                .filter(|e| e.checkpoint_sha256 == sha256 && e.error.is_none())
                .collect()
        }
        _ => Vec::new(),
    };
    if json {
        let per_class: Vec<_> = classes
            .iter()
            .zip(ev.per_class_accuracy())
            .map(|(c, a)| serde_json::json!({"class": c, "accuracy": a}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "checkpoint": path, "images": ev.images, "accuracy": ev.accuracy, "loss": ev.loss,
                "per_class": per_class, "confusion": ev.confusion, "classes": classes,
                "skipped": result.skipped.len(), "exports": exports,
            }))?
        );
        return Ok(());
    }
    println!(
        "{}: {} images, accuracy {}, loss {:.4}",
        path.display(),
        ev.images,
        percent(ev.accuracy),
        ev.loss
    );
    if !result.skipped.is_empty() {
        println!("skipped {} unreadable image(s)", result.skipped.len());
    }
    if !exports.is_empty() {
        println!("\nexported from this checkpoint, measured in their runtime on these images:");
        for e in &exports {
            println!("  {}", e.line());
        }
    }
    println!("\nper class:");
    for (c, a) in classes.iter().zip(ev.per_class_accuracy()) {
        println!("  {:<16} {}", c, a.map(percent).unwrap_or("-".into()));
    }
    println!("\n{}", render_confusion(classes, &ev.confusion));
    Ok(())
}

pub fn render_confusion(classes: &[String], m: &[Vec<usize>]) -> String {
    let w = classes
        .iter()
        .map(|c| c.len())
        .max()
        .unwrap_or(4)
        .clamp(4, 14);
    let mut s = format!(
        "confusion (rows: true, columns: predicted)\n{:>w$} ",
        "",
        w = w
    );
    for (j, _) in classes.iter().enumerate() {
        s += &format!("{j:>5}");
    }
    s += "\n";
    for (i, row) in m.iter().enumerate() {
        s += &format!(
            "{:>w$} ",
            truncate(&format!("{i} {}", classes[i]), w),
            w = w
        );
        for v in row {
            s += &format!("{v:>5}");
        }
        s += "\n";
    }
    s
}

/// Exit code of a command that did part of what was asked: some of its inputs could not be
/// read (the rest are done, and the unreadable ones said).
pub const EXIT_PARTLY: i32 = 4;

pub fn cmd_predict(
    db: &Place,
    target: &str,
    images: &[PathBuf],
    top_k: usize,
    json: bool,
) -> Result<i32> {
    if images.is_empty() {
        bail!("give at least one image");
    }
    let results = if target.ends_with(".onnx") {
        let model = crate::export::OnnxModel::load(Path::new(target))?;
        crate::infer::predict_onnx(&model, images, top_k)?
    } else {
        let (path, _) = checkpoint::resolve(db, target)?;
        let device = crate::device::select("auto")?;
        let loaded = checkpoint::load(&path, &device.device)?;
        crate::infer::predict(&loaded.model, &loaded.card, images, top_k, &device.device)?
    };
    let unreadable = results.iter().filter(|r| r.error.is_some()).count();
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        for r in &results {
            println!("{}", r.image.display());
            match &r.error {
                Some(e) => println!("  unreadable: {e}"),
                None => {
                    for (label, p) in &r.top {
                        println!("  {:<20} {:>6.2}%", label, p * 100.0);
                    }
                }
            }
        }
    }
    if unreadable == results.len() {
        bail!("none of the {} images could be read", results.len());
    }
    if unreadable > 0 {
        eprintln!("{unreadable} of {} images could not be read", results.len());
        return Ok(EXIT_PARTLY);
    }
    Ok(0)
}

pub fn cmd_summary(config_path: &Path, sets: &[String], classes: Option<usize>) -> Result<()> {
    let loaded = config::load(config_path, sets)?;
    let c = &loaded.config;
    let classes = classes.unwrap_or_else(|| {
        c.data
            .root
            .as_ref()
            .or(c.data.train_dir.as_ref())
            .and_then(|r| data::scan(r).ok())
            .map(|d| d.classes.len())
            .unwrap_or(5)
    });
    if classes < 2 {
        bail!("--classes {classes}: a classifier needs at least 2 classes");
    }
    let cfg = ModelConfig::from_section(&c.model, classes, c.data.image_size);
    let model = cfg.init(&burn::tensor::Device::flex());
    print!("{}", summary::render(&model, &cfg));
    let batch = c.train.batch_size;
    println!(
        "Training memory: about {} for a step of batch {batch} on the CPU ({} an image), estimated",
        crate::fmt::bytes(
            summary::training_bytes(&model, &cfg, batch, false).min(u64::MAX as u128) as u64
        ),
        crate::fmt::bytes(
            summary::training_bytes(&model, &cfg, 1, false).min(u64::MAX as u128) as u64
        )
    );
    Ok(())
}

pub fn cmd_data(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Stats { dir } => crate::infer::print_stats(&dir),
        DataCommand::Synth {
            out,
            classes,
            per_class,
            size,
            height,
            seed,
            format,
        } => {
            let (classes, per_class) = (usize::from(classes), per_class as usize);
            let height_px = height.unwrap_or(size);
            let image_bytes = size as u64 * height_px as u64 * 3;
            if let Some(available) = crate::device::host_memory_available()
                && image_bytes > available / 4
            {
                bail!(
                    "--size {size} x {height_px}: one image takes {} to draw, {} of memory is available",
                    crate::fmt::bytes(image_bytes),
                    crate::fmt::bytes(available)
                );
            }
            let o = synth::SynthOptions {
                classes,
                per_class,
                width: size,
                height: height.unwrap_or(size),
                seed,
                format: match format {
                    ImageFormat::Jpg => "jpg".into(),
                    ImageFormat::Png => "png".into(),
                },
            };
            let n = synth::generate(&out, &o)?;
            println!(
                "wrote {n} images in {} classes to {}",
                classes,
                out.display()
            );
            Ok(())
        }
        DataCommand::Fingerprint { dir } => {
            let start = std::time::Instant::now();
            let cache = crate::provenance::cache_file(&dir);
            let (fp, entries) = crate::data::fingerprint::fingerprint_files(&dir, &cache)?;
            println!(
                "{} {} files {} bytes in {:.1} ms (links followed; cache {})",
                fp.sha256,
                fp.files,
                fp.bytes,
                start.elapsed().as_secs_f64() * 1e3,
                cache.display()
            );
            let unreadable: Vec<_> = entries
                .iter()
                .filter(|e| e.sha256 == crate::data::fingerprint::UNREADABLE)
                .collect();
            if !unreadable.is_empty() {
                println!(
                    "{} unreadable (dangling links, loops, no permission):",
                    unreadable.len()
                );
                for e in unreadable {
                    println!("  {}", e.path);
                }
            }
            Ok(())
        }
        DataCommand::Import {
            dataset,
            from,
            out,
            per_class,
        } => {
            let ImportDataset::FashionMnist = dataset;
            let file = |name: &str| {
                let gz = from.join(format!("{name}.gz"));
                if gz.exists() { gz } else { from.join(name) }
            };
            let mut total = 0;
            for split in ["train", "t10k"] {
                let (imgs, labels) = (
                    file(&format!("{split}-images-idx3-ubyte")),
                    file(&format!("{split}-labels-idx1-ubyte")),
                );
                if !imgs.exists() {
                    bail!(
                        "{} not found (install Debian's dataset-fashion-mnist, or pass --from DIR)",
                        imgs.display()
                    );
                }
                total += idx::import(
                    &imgs,
                    &labels,
                    &out,
                    split,
                    per_class,
                    &idx::FASHION_MNIST_CLASSES,
                )?;
            }
            println!("wrote {total} images to {}", out.display());
            Ok(())
        }
    }
}

pub fn cmd_sweep_report(db: &Place, sweep: i64, out: Option<PathBuf>, json: bool) -> Result<i32> {
    let reg = db.open()?;
    let out = out.unwrap_or_else(|| PathBuf::from(format!("sweep-{sweep}.svg")));
    let report = crate::sweep::report(&reg, sweep, Some(&out))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report.json)?);
    } else {
        print!("{}", report.text);
    }
    Ok(match report.nothing_measured {
        Some(why) => {
            eprintln!("{why}");
            EXIT_UNMEASURED
        }
        None => 0,
    })
}

/// `mvlab bench --tflite FILE`: the file's batch-1 latency in LiteRT on 1 thread and on all
/// cores.
pub fn cmd_bench_tflite(file: &Path, reps: usize, json: bool) -> Result<()> {
    use crate::export::{latency, litert};
    litert::available()?;
    let model = litert::LiteRt::load(file)?;
    let size = std::fs::metadata(file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?
        .len();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rows = Vec::new();
    for threads in [1, cores] {
        if rows.iter().any(|(t, _)| *t == threads) {
            continue;
        }
        let l = model.latency(latency::WARMUP, reps.max(latency::RUNS), threads)?;
        rows.push((threads, l));
    }
    if json {
        let latency: Vec<_> = rows.iter().map(|(_, l)| l).collect();
        println!(
            "{}",
            serde_json::json!({"file": file, "runtime": "litert", "latency": latency, "size_bytes": size})
        );
    } else {
        for (threads, l) in &rows {
            println!(
                "{}: LiteRT batch-1 latency {:.2} ms (median of {}, {:.2}-{:.2} ms, {threads} thread{}), {}",
                file.display(),
                l.median_ms,
                l.runs,
                l.min_ms,
                l.max_ms,
                if *threads == 1 { "" } else { "s" },
                crate::fmt::bytes(size)
            );
        }
    }
    Ok(())
}

/// `mvlab bench --onnx FILE`: the file's batch-1 latency through tract on this CPU.
pub fn cmd_bench_onnx(file: &Path, reps: usize, json: bool) -> Result<()> {
    use crate::export::latency;
    let model = crate::export::OnnxModel::load(file)?;
    // The sweep's measurement takes latency::RUNS; more reps than asked are cheap at batch 1.
    let l = latency::measure(&model, latency::WARMUP, reps.max(latency::RUNS))?;
    let size = std::fs::metadata(file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?
        .len();
    if json {
        println!(
            "{}",
            serde_json::json!({"file": file, "latency": l, "size_bytes": size})
        );
    } else {
        println!(
            "{}: batch-1 latency {:.2} ms (median of {}, {:.2}-{:.2} ms, {} thread), {}",
            file.display(),
            l.median_ms,
            l.runs,
            l.min_ms,
            l.max_ms,
            l.threads,
            crate::fmt::bytes(size)
        );
    }
    Ok(())
}
