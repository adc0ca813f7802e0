//! What the command line prints while runs train: progress bars for one run (plain lines when
//! stderr is not a terminal), one line per epoch and per finished run for queue workers, and
//! the Ctrl-C handling both share.

use crate::status::LogLevel;
use crate::train::RunEvent;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The first Ctrl-C sets `cancel` and prints `message`; a second one exits at once.
pub fn cancel_on_ctrl_c(cancel: Arc<AtomicBool>, message: &'static str) {
    let _ = ctrlc::set_handler(move || {
        if cancel.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\n{message}");
    });
}

/// What stopped a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Interrupt,
    Terminate,
    /// Slurm's warning before the time limit (`--signal=B:USR1@...`).
    TimeLimit,
}

/// For workers: the first Ctrl-C, SIGTERM, SIGHUP or USR1 sets `cancel` and records which (and
/// why, in `reason`, for the runs' logs); a second Ctrl-C exits at once. Other signals after
/// the first are ignored: Slurm follows a warning with SIGTERM, and the worker is stopping.
pub fn stop_on_signals(
    cancel: Arc<AtomicBool>,
    reason: Arc<std::sync::OnceLock<String>>,
) -> anyhow::Result<Arc<std::sync::OnceLock<Stop>>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR1])?;
    let stop = Arc::new(std::sync::OnceLock::new());
    let seen = stop.clone();
    std::thread::Builder::new()
        .name("mvlab-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let (kind, why) = match signal {
                    SIGUSR1 => (Stop::TimeLimit, "Slurm's time-limit warning, USR1"),
                    SIGINT => (Stop::Interrupt, "Ctrl-C"),
                    SIGHUP => (Stop::Terminate, "SIGHUP"),
                    _ => (Stop::Terminate, slurm_term()),
                };
                if seen.set(kind).is_err() {
                    if kind == Stop::Interrupt {
                        std::process::exit(130);
                    }
                    continue;
                }
                let _ = reason.set(why.to_string());
                cancel.store(true, Ordering::SeqCst);
                eprintln!(
                    "\nstopping ({why}): the runs in progress go back to the queue after their step"
                );
            }
        })?;
    Ok(stop)
}

fn slurm_term() -> &'static str {
    if std::env::var_os("SLURM_JOB_ID").is_some() {
        "SIGTERM from Slurm: scancel, preemption or the time limit"
    } else {
        "SIGTERM"
    }
}

/// One line for a queue worker's event, or None for events it does not report.
pub fn worker_line(run: i64, e: &RunEvent) -> Option<String> {
    match e {
        RunEvent::Epoch(s) => Some(format!(
            "run {run} epoch {}: train loss {:.4} | val loss {:.4} acc {} | {:.1}s",
            s.epoch,
            s.train_loss,
            s.val_loss,
            crate::fmt::percent(s.val_accuracy),
            s.seconds
        )),
        RunEvent::Log { level, message } if *level != LogLevel::Info => {
            Some(format!("run {run}: {message}"))
        }
        RunEvent::Finished(outcome) => Some(format!("run {run} {outcome}")),
        _ => None,
    }
}

/// Epoch and batch bars for one run, and a line while a GPU autotunes (which can take minutes
/// with no step to show).
pub struct Bars {
    multi: MultiProgress,
    epochs: ProgressBar,
    batches: ProgressBar,
    /// Bars draw only on a terminal; elsewhere (CI logs) lines are printed plainly.
    tty: bool,
    watcher: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
}

/// Shows what autotune is doing, every second on a terminal's batch bar, else a line for each
/// shape that takes more than a few seconds.
fn watch_tuning(bar: ProgressBar, tty: bool, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut said: Option<String> = None;
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(500));
            let progress = crate::device::tuning::progress();
            let Some(line) = progress.line() else {
                continue;
            };
            let key = progress.current.as_ref().map(|c| c.0.clone());
            if tty {
                bar.set_message(line);
            } else if key != said && progress.current_seconds().is_some_and(|s| s >= 3.0) {
                eprintln!("{line}");
                said = key;
            }
        }
    })
}

impl Bars {
    pub fn new() -> Self {
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
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = watch_tuning(batches.clone(), tty, stop.clone());
        Self {
            multi,
            epochs,
            batches,
            tty,
            watcher: Some((stop, watcher)),
        }
    }

    fn line(&self, text: String) {
        if self.tty {
            let _ = self.multi.println(text);
        } else {
            eprintln!("{text}");
        }
    }

    pub fn show(&self, e: &RunEvent) {
        match e {
            RunEvent::Started {
                epochs,
                start_epoch,
                batches_per_epoch,
                ..
            } => {
                self.epochs.set_length(*epochs as u64);
                self.epochs
                    .set_position(start_epoch.saturating_sub(1) as u64);
                // The dataset and device are said once, by the run's own info line.
                self.batches.set_length(*batches_per_epoch as u64);
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
                    "epoch {:>3}: train loss {:.4} acc {} | val loss {:.4} acc {} | {:.1}s, {:.1} img/s",
                    s.epoch,
                    s.train_loss,
                    crate::fmt::percent(s.train_accuracy),
                    s.val_loss,
                    crate::fmt::percent(s.val_accuracy),
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

    pub fn finish(&mut self) {
        if let Some((stop, watcher)) = self.watcher.take() {
            stop.store(true, Ordering::SeqCst);
            let _ = watcher.join();
        }
        self.batches.finish_and_clear();
        self.epochs.finish_and_clear();
    }
}

/// One plain bar for a counted job (hidden when stderr is not a terminal).
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        ProgressBar::new(len)
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) =
        ProgressStyle::with_template("{msg} {pos}/{len} [{bar:30.green/white}] eta {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}
