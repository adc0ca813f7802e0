//! The command line's types: what `mvlab` accepts, parsed by clap. No work happens here.

use crate::data::idx;
use crate::export::{ExportFormat, Quantization};
use crate::registry::{DEFAULT_DB, Location};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "mvlab",
    version,
    about = "Train, track and compare MobileViT image classifiers"
)]
pub struct Cli {
    /// Registry: a SQLite file (a path or sqlite://PATH) or a PostgreSQL database
    /// (postgres://user@host:port/db).
    #[arg(long, global = true, env = "MVLAB_DB", default_value = DEFAULT_DB)]
    pub db: Location,
    /// Where run folders (checkpoints) go: a folder (default: beside the SQLite file, or the
    /// current folder with PostgreSQL) or s3://bucket/prefix (endpoint and credentials from the
    /// AWS environment variables). Every worker sharing a registry must reach it.
    #[arg(long, global = true, env = "MVLAB_ARTIFACTS")]
    pub artifacts: Option<String>,
    /// With s3:// artifacts: the local folder runs train in and checkpoints are fetched to.
    #[arg(long, global = true, env = "MVLAB_SCRATCH")]
    pub scratch: Option<PathBuf>,
    /// On GPUs: how hard autotune tries kernels for a new layer shape (minimal, balanced,
    /// extensive, full); minimal starts fastest. Default: cubecl's (balanced).
    #[arg(long, global = true, env = "MVLAB_AUTOTUNE")]
    pub autotune: Option<crate::device::Autotune>,
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
        /// Train N runs that differ only in seed (train.seed, +1, ...), as one seed group.
        #[arg(long, value_parser = clap::value_parser!(u16).range(2..))]
        seeds: Option<u16>,
        /// After training, compare with this baseline (RUN, FILE.bpk or gN) on the new run's
        /// val images; exit 3 when the new one is significantly worse overall or on a class.
        #[arg(long, value_name = "RUN|GROUP")]
        gate: Option<String>,
        /// Significance level of the gate.
        #[arg(long, default_value_t = 0.05, value_parser = alpha)]
        gate_alpha: f64,
    },
    /// Is the difference real? Two runs, checkpoints or seed groups (gN) on the same val images.
    Compare {
        a: String,
        b: String,
        /// Image folder to compare on (default: the val split of A's run).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Significance level of the verdict and of the per-class flags.
        #[arg(long, default_value_t = 0.05, value_parser = alpha)]
        alpha: f64,
        #[arg(long)]
        json: bool,
        /// Also write one self-contained HTML page of the flipped images.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
    },
    /// A run's training images most likely mislabelled, and those forgotten most often, from
    /// its per-image training dynamics.
    Samples {
        run: i64,
        /// Images per list.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        top: u32,
        #[arg(long)]
        json: bool,
    },
    /// Reproducibility check: retrain a run's first epoch (or first steps) from its recorded
    /// config on its recorded data and compare the losses (exit 1 and name what changed when
    /// they differ).
    Rerun {
        run: i64,
        /// Check against the recorded losses (the only mode: a new run of the same config is
        /// `mvlab run` on its experiment file).
        #[arg(long, required = true)]
        verify: bool,
        /// Steps to retrain and compare [default: the whole first epoch].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        steps: Option<u32>,
        /// Largest relative difference of a step's loss that still matches.
        #[arg(long, default_value_t = 1e-4, value_parser = tolerance)]
        tolerance: f64,
        #[arg(long)]
        json: bool,
    },
    /// Continue a cancelled, failed or interrupted run to its final epoch.
    Resume { run: i64 },
    /// Delete a run: its registry rows and its files (also in an object store).
    Delete { run: i64 },
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
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
        top_k: u16,
        #[arg(long)]
        json: bool,
    },
    /// Export a run's best checkpoint or a checkpoint file for mobile runtimes, then measure the
    /// file in its runtime on the run's val split beside the float model (recorded for the run).
    Export {
        target: String,
        #[arg(long, value_enum, default_value_t = ExportFormat::Onnx)]
        format: ExportFormat,
        /// How the numbers are stored (default: none for ONNX, dynamic for TFLite). ONNX's
        /// int8 is weight-only: per-channel symmetric int8 weights behind DequantizeLinear,
        /// float activations. TFLite's dynamic is int8 weights with float activations (hybrid
        /// kernels); its int8 is full integer, calibrated on --calibrate training images.
        #[arg(long, value_enum)]
        quantize: Option<Quantization>,
        /// Training images a full-integer TFLite export calibrates its activations on (spread
        /// over the run's training split, loaded as evaluation loads them).
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
        calibrate: u32,
        /// An image folder to calibrate on and to measure the file on, instead of the run's
        /// training and val splits (needed for a checkpoint file of no run).
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// Print what was written and measured as JSON.
        #[arg(long)]
        json: bool,
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
    Bench(BenchArgs),
    /// Queue the trials of an experiment's [sweep] and work them (`sweep report SWEEP` ranks them).
    #[command(args_conflicts_with_subcommands = true)]
    Sweep {
        #[command(subcommand)]
        action: Option<SweepAction>,
        config: Option<PathBuf>,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Runs trained at once (0: only queue them, for `mvlab worker`).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(0..=1024))]
        workers: u16,
        /// Continue sweep N (after a crash or a stop) with its history: its interrupted trials
        /// resume, and a tpe sweep asks for trials until its budget is spent.
        #[arg(long, value_name = "SWEEP", conflicts_with = "config")]
        resume: Option<i64>,
        #[command(flatten)]
        slurm: SlurmArgs,
    },
    /// Submit a Slurm job array of workers that work the queue (`--slurm N`).
    Submit {
        #[command(flatten)]
        slurm: SlurmArgs,
        /// Only runs of this sweep.
        #[arg(long)]
        sweep: Option<i64>,
    },
    /// List queued and running runs.
    Queue {
        #[arg(long)]
        json: bool,
    },
    /// Work queued runs until the queue is empty (with --wait: stays empty that long).
    Worker(WorkerArgs),
}

/// A Slurm job array of workers in place of working here. Each value overrides the
/// experiment file's `[slurm]` table.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SlurmArgs {
    /// Submit a job array of N `mvlab worker`s to Slurm (sbatch) and return.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=10000))]
    pub slurm: Option<u16>,
    #[arg(long, requires = "slurm")]
    pub partition: Option<String>,
    /// Time limit per task, Slurm's format (minutes, HH:MM:SS, D-HH:MM:SS).
    #[arg(long, requires = "slurm")]
    pub time: Option<String>,
    #[arg(long, requires = "slurm")]
    pub cpus_per_task: Option<u32>,
    /// Memory per task, Slurm's format (8G).
    #[arg(long, requires = "slurm")]
    pub mem: Option<String>,
    /// GPUs per task (--gres=gpu:K).
    #[arg(long, requires = "slurm")]
    pub gpus: Option<u32>,
    #[arg(long, requires = "slurm")]
    pub account: Option<String>,
    /// Another #SBATCH option, as sbatch takes it (repeatable): --sbatch-arg=--qos=high.
    #[arg(
        long = "sbatch-arg",
        value_name = "OPTION",
        requires = "slurm",
        allow_hyphen_values = true
    )]
    pub sbatch_args: Vec<String>,
    /// Print the sbatch script (and Slurm's `--test-only` verdict) without queueing or submitting.
    #[arg(long, requires = "slurm")]
    pub dry_run: bool,
}

impl SlurmArgs {
    /// The file's `[slurm]` table with the command line's values over it, checked.
    pub fn section(
        &self,
        file: Option<&crate::config::SlurmSection>,
    ) -> anyhow::Result<crate::config::SlurmSection> {
        let mut s = file.cloned().unwrap_or_default();
        let pick = |cli: &Option<String>, file: &mut Option<String>| {
            if cli.is_some() {
                *file = cli.clone();
            }
        };
        pick(&self.partition, &mut s.partition);
        pick(&self.time, &mut s.time);
        pick(&self.mem, &mut s.mem);
        pick(&self.account, &mut s.account);
        s.cpus_per_task = self.cpus_per_task.or(s.cpus_per_task);
        s.gpus = self.gpus.or(s.gpus);
        s.sbatch.extend(self.sbatch_args.iter().cloned());
        if let Err((key, msg)) = s.check() {
            anyhow::bail!("slurm option {key}: {msg}");
        }
        Ok(s)
    }
}

/// How `mvlab worker` takes runs; many workers, on many machines, may share one registry.
#[derive(clap::Args, Debug, Clone)]
pub struct WorkerArgs {
    /// Runs trained at once in this process.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: u16,
    /// Only runs of this sweep.
    #[arg(long)]
    pub sweep: Option<i64>,
    /// Stop after this many runs (1: one run per Slurm array task or Kubernetes Job).
    #[arg(long)]
    pub max_runs: Option<usize>,
    /// When the queue is empty, keep polling for new work this many seconds.
    #[arg(long, default_value_t = 0.0, value_parser = seconds)]
    pub wait: f64,
    /// Also stay while runs it could take are held by other workers (they may come back to
    /// the queue); what the workers of a Slurm array do.
    #[arg(long)]
    pub drain: bool,
    /// Seconds without a heartbeat after which a run is taken from its worker and requeued.
    #[arg(long, default_value_t = crate::jobs::DEFAULT_LEASE_S, value_parser = seconds)]
    pub lease_s: f64,
    /// A run whose worker vanished this many times fails instead of being requeued.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
}

impl WorkerArgs {
    pub fn options(&self) -> crate::jobs::WorkOptions {
        crate::jobs::WorkOptions {
            workers: self.workers.into(),
            sweep: self.sweep,
            lease_s: self.lease_s,
            max_attempts: self.max_attempts as usize,
            max_runs: self.max_runs,
            wait: std::time::Duration::from_secs_f64(self.wait),
            drain: self.drain,
            ..crate::jobs::WorkOptions::default()
        }
    }
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
    /// The dataset fingerprint runs record (content hashes cached by mtime), and how long it took.
    Fingerprint { dir: PathBuf },
    /// Draw a learnable synthetic dataset.
    Synth {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
        classes: u16,
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
        per_class: u32,
        /// Image width (and height unless --height), 1 to 65535 pixels (JPEG's limit).
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65535))]
        size: u32,
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=65535))]
        height: Option<u32>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, value_enum, default_value_t = ImageFormat::Jpg)]
        format: ImageFormat,
    },
    /// Import a dataset from its distributed files into an image folder.
    Import {
        /// The dataset (IDX files, e.g. from Debian's dataset-fashion-mnist).
        #[arg(value_enum)]
        dataset: ImportDataset,
        #[arg(long, default_value = idx::DEBIAN_FASHION_MNIST)]
        from: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Images per class and split (0 = all).
        #[arg(long, default_value_t = 0)]
        per_class: usize,
    },
}

/// Image files `mvlab data synth` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImageFormat {
    Jpg,
    Png,
}

/// Datasets `mvlab data import` reads from their distributed files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImportDataset {
    FashionMnist,
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// keras-xxs, xxs, xs, s, or all.
    #[arg(long, default_value = "all")]
    pub model: String,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Dropout of the models (the keras flavour's reference value is 0.1).
    #[arg(long, default_value_t = 0.1)]
    pub dropout: f64,
    /// Timed repetitions (after one warm-up).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub reps: u32,
    /// Also measure the data loader on synthetic flower-sized JPEGs.
    #[arg(long)]
    pub loader: bool,
    /// Skip the models (with --loader: measure only the loader).
    #[arg(long)]
    pub no_models: bool,
    #[arg(long)]
    pub json: bool,
    /// Also run scripts/reference_bench.py (Keras/TensorFlow and PyTorch/timm) on the same
    /// workloads right after, and print mvlab/reference speed ratios.
    #[arg(long)]
    pub compare: bool,
    /// Also measure each model with burn's own ops in place of mvlab's fused CPU kernels (what
    /// the kernels bring, in the same run).
    #[arg(long)]
    pub unfused: bool,
    /// Measure only with burn's own ops (mvlab's CPU and GPU kernels off), e.g. to profile them.
    #[arg(long, conflicts_with = "unfused")]
    pub burn_ops: bool,
    /// Python with tensorflow, torch and timm installed, for --compare.
    #[arg(long, env = "MVLAB_PYTHON", default_value = "python3")]
    pub python: String,
    /// Check the GPU code path on --device against burn's ops and the CPU backend instead of
    /// timing (kernels, then keras-xxs and paper-xxs: logits, loss, gradients, three steps).
    #[arg(long)]
    pub parity: bool,
    /// Instead of the models: load on the registry (--db), claim latency and metric rows
    /// written per second with this many concurrent workers (a list).
    #[arg(long, value_delimiter = ',', num_args = 0.., default_missing_value = "1,4,16")]
    pub registry: Option<Vec<usize>>,
    /// Instead of the models: batch-1 latency of an exported ONNX file on this CPU through
    /// tract (what a sweep records as `int8_latency_ms`), the median of --reps runs.
    #[arg(long, value_name = "FILE.onnx", conflicts_with = "registry")]
    pub onnx: Option<PathBuf>,
    /// Instead of the models: batch-1 latency of an exported TFLite file in LiteRT (default
    /// kernels: XNNPACK for float and dynamic files), on 1 thread and on all cores.
    #[arg(long, value_name = "FILE.tflite", conflicts_with_all = ["registry", "onnx"])]
    pub tflite: Option<PathBuf>,
}

impl BenchArgs {
    pub fn options(self) -> crate::bench::Options {
        crate::bench::Options {
            model: self.model,
            batch: self.batch,
            size: self.size,
            device: self.device,
            dropout: self.dropout,
            reps: self.reps as usize,
            loader: self.loader,
            no_models: self.no_models,
            json: self.json,
            compare: self.compare,
            unfused: self.unfused,
            burn_ops: self.burn_ops,
            python: self.python,
            parity: self.parity,
        }
    }
}

/// A number of seconds: finite, at least 0, at most a year.
fn seconds(text: &str) -> Result<f64, String> {
    let v: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && (0.0..=365.0 * 86400.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("expected seconds from 0 to a year, got {text}"))
    }
}

/// A significance level: a number strictly between 0 and 1.
fn alpha(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(a) if a > 0.0 && a < 1.0 => Ok(a),
        Ok(a) => Err(format!("expected a value in (0, 1), got {a}")),
        Err(e) => Err(e.to_string()),
    }
}

fn tolerance(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(t) if t.is_finite() && t >= 0.0 => Ok(t),
        Ok(t) => Err(format!("expected a finite value >= 0, got {t}")),
        Err(e) => Err(e.to_string()),
    }
}
