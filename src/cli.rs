//! The command line: clap commands that wire config, data, train, jobs and registry together.

use crate::checkpoint;
use crate::config;
use crate::data::{self, idx, synth};
use crate::jobs;
use crate::model::{ModelConfig, summary};
use crate::registry::{DEFAULT_DB, Registry, RunRow};
use crate::train::{self, Control, Outcome, RunEvent};
use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

#[derive(Parser)]
#[command(
    name = "mvlab",
    version,
    about = "Train, track and compare MobileViT image classifiers"
)]
pub struct Cli {
    /// Registry file (SQLite).
    #[arg(long, global = true, env = "MVLAB_DB", default_value = DEFAULT_DB)]
    pub db: PathBuf,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Train an experiment headless, with progress bars.
    Run {
        config: PathBuf,
        /// Override a config key, e.g. --set train.lr=0.001 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// Continue a cancelled, failed or interrupted run to its final epoch.
    Resume { run: i64 },
    /// List runs.
    Runs {
        #[arg(long)]
        json: bool,
    },
    /// A run's config, progress, per-epoch metrics and checkpoints.
    Show {
        run: i64,
        #[arg(long)]
        json: bool,
    },
    /// Accuracy, per-class accuracy and confusion matrix of a run's best checkpoint or a checkpoint file.
    Eval {
        target: String,
        /// Image folder to evaluate on (default: the run's val split).
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Top-k labels for images.
    Predict {
        checkpoint: String,
        images: Vec<PathBuf>,
        #[arg(long, default_value_t = 3)]
        top_k: usize,
        #[arg(long)]
        json: bool,
    },
    /// Export a run's best checkpoint or a checkpoint file for mobile runtimes.
    Export {
        target: String,
        /// onnx or safetensors
        #[arg(long, default_value = "onnx")]
        format: String,
        /// int8: per-channel int8 weights, float activations (ONNX only).
        #[arg(long)]
        quantize: Option<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Keras-style table of the model an experiment describes.
    Summary {
        config: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Number of classes (default: counted from the data folder, else 5).
        #[arg(long)]
        classes: Option<usize>,
    },
    /// Dataset tools.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Training-step, inference and loader throughput.
    Bench(crate::bench::BenchArgs),
    /// Queue the trials of an experiment's [sweep] and work them (`sweep report SWEEP` ranks them).
    #[command(args_conflicts_with_subcommands = true)]
    Sweep {
        #[command(subcommand)]
        action: Option<SweepAction>,
        config: Option<PathBuf>,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Runs trained at once (0: only queue them, for `mvlab worker`).
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
    /// List queued and running runs.
    Queue {
        #[arg(long)]
        json: bool,
    },
    /// Work queued runs until the queue is empty.
    Worker {
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
}

#[derive(Subcommand)]
pub enum SweepAction {
    /// Runs ranked by best metric, the effect of each swept parameter, and an SVG of the curves.
    Report {
        sweep: i64,
        /// Where to write the plot (default sweep-<id>.svg).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum DataCommand {
    /// Classes, counts, image sizes and unreadable files of an image folder.
    Stats { dir: PathBuf },
    /// Draw a learnable synthetic dataset.
    Synth {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 5)]
        classes: usize,
        #[arg(long, default_value_t = 100)]
        per_class: usize,
        /// Image width (and height unless --height).
        #[arg(long, default_value_t = 64)]
        size: u32,
        #[arg(long)]
        height: Option<u32>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// jpg or png
        #[arg(long, default_value = "jpg")]
        format: String,
    },
    /// Import a dataset from its distributed files into an image folder.
    Import {
        /// Only `fashion-mnist` (IDX files, e.g. from Debian's dataset-fashion-mnist).
        dataset: String,
        #[arg(long, default_value = idx::DEBIAN_FASHION_MNIST)]
        from: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Images per class and split (0 = all).
        #[arg(long, default_value_t = 0)]
        per_class: usize,
    },
}

pub fn main() -> Result<i32> {
    let cli = Cli::parse();
    let db = cli.db.clone();
    match cli.command {
        None => crate::tui::run(&db).map(|_| 0),
        Some(Command::Run { config, sets }) => cmd_run(&db, &config, &sets),
        Some(Command::Resume { run }) => cmd_resume(&db, run),
        Some(Command::Runs { json }) => cmd_runs(&db, json).map(|_| 0),
        Some(Command::Show { run, json }) => cmd_show(&db, run, json).map(|_| 0),
        Some(Command::Eval { target, data, json }) => {
            cmd_eval(&db, &target, data.as_deref(), json).map(|_| 0)
        }
        Some(Command::Predict {
            checkpoint,
            images,
            top_k,
            json,
        }) => cmd_predict(&db, &checkpoint, &images, top_k, json).map(|_| 0),
        Some(Command::Export {
            target,
            format,
            quantize,
            out,
        }) => {
            let (path, _) = resolve_checkpoint(&db, &target)?;
            let loaded = checkpoint::load(&path, &burn::tensor::Device::flex())?;
            let bytes = crate::export::export(
                &loaded.model,
                &loaded.card,
                &format,
                quantize.as_deref(),
                &out,
            )?;
            println!(
                "wrote {} ({:.2} MB, {})",
                out.display(),
                bytes as f64 / 1e6,
                loaded.card.model.label()
            );
            Ok(0)
        }
        Some(Command::Summary {
            config,
            sets,
            classes,
        }) => cmd_summary(&config, &sets, classes).map(|_| 0),
        Some(Command::Data { command }) => cmd_data(command).map(|_| 0),
        Some(Command::Bench(args)) => crate::bench::run(&args).map(|_| 0),
        Some(Command::Sweep {
            action: Some(SweepAction::Report { sweep, out, json }),
            ..
        }) => {
            let reg = Registry::open(&db)?;
            let out = out.unwrap_or_else(|| PathBuf::from(format!("sweep-{sweep}.svg")));
            let report = crate::sweep::report(&reg, sweep, Some(&out))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report.json)?);
            } else {
                print!("{}", report.text);
            }
            Ok(0)
        }
        Some(Command::Sweep {
            action: None,
            config,
            sets,
            workers,
        }) => {
            let Some(config) = config else {
                bail!("give an experiment file with a [sweep] section")
            };
            cmd_sweep(&db, &config, &sets, workers)
        }
        Some(Command::Queue { json }) => cmd_queue(&db, json).map(|_| 0),
        Some(Command::Worker { workers }) => {
            let reg = Registry::open(&db)?;
            work(&reg, workers, None)
        }
    }
}

fn cmd_run(db: &Path, config_path: &Path, sets: &[String]) -> Result<i32> {
    let loaded = config::load(config_path, sets)?;
    let reg = Registry::open(db)?;
    let run_id = jobs::create_run(&reg, &loaded, "running", None)?;
    eprintln!(
        "run {run_id}: {} ({})",
        loaded.config.name,
        config_path.display()
    );
    execute_with_progress(&reg, run_id, false)
}

fn cmd_sweep(db: &Path, config_path: &Path, sets: &[String], workers: usize) -> Result<i32> {
    let loaded = config::load(config_path, sets)?;
    let reg = Registry::open(db)?;
    let (sweep, runs) = jobs::queue_sweep(&reg, &loaded)?;
    println!(
        "sweep {sweep}: queued {} runs ({}..{})",
        runs.len(),
        runs[0],
        runs[runs.len() - 1]
    );
    if workers == 0 {
        return Ok(0);
    }
    let code = work(&reg, workers, Some(sweep))?;
    print!("\n{}", crate::sweep::report(&reg, sweep, None)?.text);
    Ok(code)
}

/// Works the queue with `workers` runs at a time; one line per epoch and per finished run.
fn work(reg: &Registry, workers: usize, sweep: Option<i64>) -> Result<i32> {
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = cancel.clone();
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nstopping: running runs are cancelled after their step and stay resumable");
    });
    let results = jobs::work_queue(reg, workers, sweep, &cancel, |run, e| match e {
        RunEvent::Epoch(s) => eprintln!(
            "run {run} epoch {}: train loss {:.4} | val loss {:.4} acc {:.2}% | {:.1}s",
            s.epoch,
            s.train_loss,
            s.val_loss,
            s.val_accuracy * 100.0,
            s.seconds
        ),
        RunEvent::Log { level, message } if level != "info" || message.starts_with("pruned") => {
            eprintln!("run {run}: {message}")
        }
        _ => {}
    })?;
    for (run, outcome) in &results {
        let what = match outcome {
            Outcome::Completed {
                final_val_accuracy, ..
            } => format!(
                "completed (val accuracy {:.2}%)",
                final_val_accuracy * 100.0
            ),
            Outcome::Failed(e) => format!("failed: {e}"),
            Outcome::Cancelled { .. } => "cancelled".into(),
            Outcome::Pruned { epochs_done } => format!("pruned after epoch {epochs_done}"),
        };
        println!("worker {}: run {run} {what}", std::process::id());
    }
    Ok(if cancel.load(Ordering::SeqCst) {
        130
    } else {
        0
    })
}

fn cmd_queue(db: &Path, json: bool) -> Result<()> {
    let reg = Registry::open(db)?;
    let runs: Vec<RunRow> = reg
        .runs()?
        .into_iter()
        .filter(|r| r.status == "queued" || r.status == "running")
        .rev()
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(());
    }
    println!(
        "{:>4}  {:<20} {:<12} {:>6}  {:>7}  worker",
        "id", "experiment", "status", "sweep", "epoch"
    );
    for r in &runs {
        println!(
            "{:>4}  {:<20} {:<12} {:>6}  {:>7}  {}",
            r.id,
            truncate(&r.name, 20),
            r.display_status(),
            r.sweep_id.map(|s| s.to_string()).unwrap_or("-".into()),
            format!("{}/{}", r.epochs_done, r.epochs_total),
            r.worker.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

fn cmd_resume(db: &Path, run: i64) -> Result<i32> {
    let reg = Registry::open(db)?;
    jobs::check_resumable(&reg, run)?;
    eprintln!("resuming run {run}");
    execute_with_progress(&reg, run, true)
}

/// Runs with bars on stderr; Ctrl-C cancels (the run stays resumable), a second Ctrl-C exits at once.
fn execute_with_progress(reg: &Registry, run_id: i64, resume: bool) -> Result<i32> {
    let control = Control::default();
    let cancel = control.cancel.clone();
    let _ = ctrlc::set_handler(move || {
        if cancel.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ncancelling after this step (Ctrl-C again to quit now)…");
    });
    let bars = Bars::new();
    let outcome = jobs::execute(reg, run_id, resume, &control, |e| bars.show(e))?;
    bars.finish();
    Ok(match outcome {
        Outcome::Completed {
            best_metric,
            best_epoch,
            final_val_accuracy,
            final_val_loss,
            early_stopped,
        } => {
            let row = reg.run(run_id)?;
            println!(
                "run {run_id} completed{}: best {} {:.4} at epoch {best_epoch}; best weights on val: accuracy {:.2}%, loss {:.4}; took {}",
                if early_stopped { " (early stop)" } else { "" },
                row.monitor,
                best_metric,
                final_val_accuracy * 100.0,
                final_val_loss,
                fmt_duration(row.duration_s().unwrap_or(0.0)),
            );
            0
        }
        Outcome::Failed(e) => {
            eprintln!("run {run_id} failed: {e}");
            1
        }
        Outcome::Cancelled { epochs_done } => {
            eprintln!(
                "run {run_id} cancelled after epoch {epochs_done}; continue it with `mvlab resume {run_id}`"
            );
            130
        }
        Outcome::Pruned { epochs_done } => {
            eprintln!("run {run_id} pruned after epoch {epochs_done}");
            0
        }
    })
}

struct Bars {
    multi: MultiProgress,
    epochs: ProgressBar,
    batches: ProgressBar,
    /// Bars draw only on a terminal; elsewhere (CI logs) lines are printed plainly.
    tty: bool,
}

impl Bars {
    fn new() -> Self {
        let multi = MultiProgress::new();
        let epochs = multi.add(ProgressBar::new(0));
        epochs.set_style(
            ProgressStyle::with_template("epoch {pos}/{len} [{bar:30.cyan/blue}] {msg}")
                .unwrap()
                .progress_chars("=> "),
        );
        let batches = multi.add(ProgressBar::new(0));
        batches.set_style(
            ProgressStyle::with_template(
                "  batch {pos}/{len} [{bar:30.green/white}] {msg} eta {eta}",
            )
            .unwrap()
            .progress_chars("=> "),
        );
        Self {
            multi,
            epochs,
            batches,
            tty: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        }
    }

    fn line(&self, text: String) {
        if self.tty {
            let _ = self.multi.println(text);
        } else {
            eprintln!("{text}");
        }
    }

    fn show(&self, e: &RunEvent) {
        match e {
            RunEvent::Started {
                device,
                train_images,
                val_images,
                epochs,
                start_epoch,
                batches_per_epoch,
                ..
            } => {
                self.epochs.set_length(*epochs as u64);
                self.epochs
                    .set_position(start_epoch.saturating_sub(1) as u64);
                self.batches.set_length(*batches_per_epoch as u64);
                self.line(format!(
                    "device {device}: {train_images} train / {val_images} val images"
                ));
            }
            RunEvent::Step {
                batch,
                batches,
                loss,
                accuracy,
                images_per_s,
                ..
            } => {
                self.batches.set_length(*batches as u64);
                self.batches.set_position(*batch as u64);
                self.batches.set_message(format!(
                    "loss {loss:.4} acc {:.1}% {images_per_s:.1} img/s",
                    accuracy * 100.0
                ));
            }
            RunEvent::Epoch(s) => {
                self.epochs.set_position(s.epoch as u64);
                self.batches.set_position(0);
                let line = format!(
                    "epoch {:>3}: train loss {:.4} acc {:.2}% | val loss {:.4} acc {:.2}% | {:.1}s, {:.1} img/s",
                    s.epoch,
                    s.train_loss,
                    s.train_accuracy * 100.0,
                    s.val_loss,
                    s.val_accuracy * 100.0,
                    s.seconds,
                    s.images_per_s
                );
                self.epochs
                    .set_message(format!("best {:.4} @ {}", s.best_metric, s.best_epoch));
                self.line(line);
            }
            RunEvent::Log { level, message } => {
                self.line(format!("[{level}] {message}"));
            }
            RunEvent::Checkpoint { .. } | RunEvent::Finished(_) => {}
        }
    }

    fn finish(&self) {
        self.batches.finish_and_clear();
        self.epochs.finish_and_clear();
    }
}

pub fn fmt_duration(s: f64) -> String {
    let s = s.max(0.0) as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

fn cmd_runs(db: &Path, json: bool) -> Result<()> {
    let reg = Registry::open(db)?;
    let runs = reg.runs()?;
    if json {
        let out: Vec<serde_json::Value> = runs
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r).unwrap();
                v["status"] = r.display_status().into();
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
            r.display_status(),
            format!("{}/{}", r.epochs_done, r.epochs_total),
            r.best_metric
                .map(|b| format!("{b:.4}"))
                .unwrap_or_else(|| "-".into()),
            r.duration_s()
                .map(fmt_duration)
                .unwrap_or_else(|| "-".into()),
            r.device.as_deref().unwrap_or("-"),
        );
    }
    Ok(())
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).collect::<String>() + "…"
    }
}

fn cmd_show(db: &Path, run: i64, json: bool) -> Result<()> {
    let reg = Registry::open(db)?;
    let r = reg.run(run)?;
    let cks = reg.checkpoints(run)?;
    let series = |split, name| reg.epoch_series(run, split, name);
    let (tl, ta, vl, va) = (
        series("train", "loss")?,
        series("train", "accuracy")?,
        series("val", "loss")?,
        series("val", "accuracy")?,
    );
    let logs = reg.logs(run, 20)?;
    if json {
        let v = serde_json::json!({
            "run": r, "status": r.display_status(), "checkpoints": cks, "logs": logs,
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
        r.best_metric
            .map(|b| format!("{b:.4}"))
            .unwrap_or("-".into()),
        r.best_epoch.unwrap_or(0)
    );
    if let Some(e) = &r.error {
        println!("error: {e}");
    }
    if r.overrides != "[]" {
        println!("overrides: {}", r.overrides);
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
            c.kind,
            c.epoch,
            c.path,
            &c.sha256[..16.min(c.sha256.len())]
        );
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

/// A run id (its best checkpoint) or a checkpoint file path.
pub fn resolve_checkpoint(db: &Path, target: &str) -> Result<(PathBuf, Option<RunRow>)> {
    let as_path = PathBuf::from(target);
    if as_path.is_file() {
        return Ok((as_path, None));
    }
    let id: i64 = target
        .parse()
        .with_context(|| format!("{target} is neither a checkpoint file nor a run id"))?;
    let reg = Registry::open(db)?;
    let run = reg.run(id)?;
    let cks = reg.checkpoints(id)?;
    let best = cks
        .iter()
        .find(|c| c.kind == "best")
        .or_else(|| cks.iter().find(|c| c.kind == "last"));
    match best {
        Some(c) => Ok((PathBuf::from(&c.path), Some(run))),
        None => bail!("run {id} has no checkpoint yet"),
    }
}

fn cmd_eval(db: &Path, target: &str, data_dir: Option<&Path>, json: bool) -> Result<()> {
    let (path, run) = resolve_checkpoint(db, target)?;
    let device = crate::device::select("auto")?;
    let loaded = checkpoint::load(&path, &device.device)?;
    let classes = loaded.card.classes.clone();
    let (dataset, config) = match (data_dir, &run) {
        (Some(dir), _) => {
            let ds = data::scan(dir)?;
            if ds.classes != classes {
                bail!(
                    "{} has classes {:?}, the model was trained on {:?}",
                    dir.display(),
                    ds.classes,
                    classes
                );
            }
            let mut cfg = run
                .as_ref()
                .map(|r| config::parse(&r.config, &[]))
                .transpose()?
                .unwrap_or_else(|| default_eval_config(&loaded.card.model));
            cfg.data.image_size = loaded.card.model.image_size;
            (ds, cfg)
        }
        (None, Some(r)) => {
            let cfg = config::parse(&r.config, &[])?;
            let (_, val) = data::load_splits(&cfg.data, cfg.train.seed)?;
            (val, cfg)
        }
        (None, None) => bail!("evaluating a checkpoint file needs --data DIR"),
    };
    let loader = data::loader::Loader::new(
        &dataset,
        train::loader_options(&config, false),
        &std::env::temp_dir(),
    )?;
    let ev = train::evaluate(
        &loaded.model,
        &loader,
        classes.len(),
        config.train.label_smoothing,
        &device.device,
    );
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
                "skipped": loader.cache().bad().len(),
            }))?
        );
        return Ok(());
    }
    println!(
        "{}: {} images, accuracy {:.2}%, loss {:.4}",
        path.display(),
        ev.images,
        ev.accuracy * 100.0,
        ev.loss
    );
    let bad = loader.cache().bad();
    if !bad.is_empty() {
        println!("skipped {} unreadable image(s)", bad.len());
    }
    println!("\nper class:");
    for (c, a) in classes.iter().zip(ev.per_class_accuracy()) {
        println!(
            "  {:<16} {}",
            c,
            a.map(|a| format!("{:.2}%", a * 100.0))
                .unwrap_or("-".into())
        );
    }
    println!("\n{}", render_confusion(&classes, &ev.confusion));
    Ok(())
}

fn default_eval_config(m: &ModelConfig) -> config::ExperimentConfig {
    let mut c =
        config::parse("name = \"eval\"\n[data]\nroot = \".\"\n", &[]).expect("built-in config");
    c.data.image_size = m.image_size;
    c
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

fn cmd_predict(
    db: &Path,
    target: &str,
    images: &[PathBuf],
    top_k: usize,
    json: bool,
) -> Result<()> {
    if images.is_empty() {
        bail!("give at least one image");
    }
    let results = if target.ends_with(".onnx") {
        let model = crate::export::OnnxModel::load(Path::new(target))?;
        crate::infer::predict_onnx(&model, images, top_k)?
    } else {
        let (path, _) = resolve_checkpoint(db, target)?;
        let device = crate::device::select("auto")?;
        let loaded = checkpoint::load(&path, &device.device)?;
        crate::infer::predict(&loaded.model, &loaded.card, images, top_k, &device.device)?
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(());
    }
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
    Ok(())
}

fn cmd_summary(config_path: &Path, sets: &[String], classes: Option<usize>) -> Result<()> {
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
    let cfg = ModelConfig::from_section(&c.model, classes, c.data.image_size);
    let device = burn::tensor::Device::flex();
    let model = cfg.init(&device);
    print!("{}", summary::render(&model, &cfg, &device));
    Ok(())
}

fn cmd_data(cmd: DataCommand) -> Result<()> {
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
            if format != "jpg" && format != "png" {
                bail!("--format: expected jpg or png, got {format}");
            }
            let o = synth::SynthOptions {
                classes,
                per_class,
                width: size,
                height: height.unwrap_or(size),
                seed,
                format,
            };
            let n = synth::generate(&out, &o)?;
            println!(
                "wrote {n} images in {} classes to {}",
                classes,
                out.display()
            );
            Ok(())
        }
        DataCommand::Import {
            dataset,
            from,
            out,
            per_class,
        } => {
            if dataset != "fashion-mnist" {
                bail!("unknown dataset {dataset:?}: only fashion-mnist can be imported");
            }
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
