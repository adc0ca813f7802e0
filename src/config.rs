//! Experiment configs: TOML types whose defaults are the reference recipe, dotted-path
//! overrides (`--set train.lr=0.001`) and validation errors that name the file, line and field.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use strum::{AsRefStr, Display, EnumString};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub model: ModelSection,
    #[serde(default)]
    pub data: DataSection,
    #[serde(default)]
    pub train: TrainSection,
    #[serde(default)]
    pub checkpoint: CheckpointSection,
    /// Hyperparameter sweep over dotted config paths; see `sweep.rs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<SweepSection>,
    /// How `--slurm N` asks a Slurm cluster for its workers; see `slurm.rs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm: Option<SlurmSection>,
}

/// What a Slurm job of workers asks for. Every field is optional: the cluster's defaults apply,
/// and `--partition`, `--time`, ... on the command line win over the file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SlurmSection {
    pub partition: Option<String>,
    /// Slurm's time format: minutes, `HH:MM:SS`, `D-HH:MM:SS`.
    pub time: Option<String>,
    pub cpus_per_task: Option<u32>,
    /// Memory per node, Slurm's format (`8G`).
    pub mem: Option<String>,
    /// GPUs per task, asked as `--gres=gpu:K`.
    pub gpus: Option<u32>,
    pub account: Option<String>,
    /// Seconds before the time limit at which Slurm warns the worker (USR1), so it checkpoints.
    pub warning_s: Option<u32>,
    /// Folder for the jobs' output files (default: `slurm/` in the current folder); every node
    /// must reach it.
    pub output: Option<PathBuf>,
    /// More `#SBATCH` arguments, each as sbatch takes it (`--qos=high`).
    #[serde(default)]
    pub sbatch: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SweepSection {
    /// Default: tpe when a parameter is a distribution, grid otherwise (see [`Self::method`]).
    #[serde(default, rename = "method")]
    pub method_given: Option<SweepMethod>,
    /// Trials of a random or tpe sweep (its budget).
    #[serde(default)]
    pub samples: usize,
    /// Wall-clock budget: no trial is started after this many minutes from the sweep's start.
    #[serde(default)]
    pub budget_minutes: Option<f64>,
    /// What a trial is judged by, each `metric:max` or `metric:min` (default: the checkpoint's
    /// monitor); several make the answer a Pareto front. See `sweep::objective`.
    #[serde(default)]
    pub objectives: Vec<String>,
    /// The file a trial is deployed as, whose latency, size and val accuracy are measured
    /// (`int8_latency_ms`, `size_mb`, `deployed_val_accuracy`): int8 ONNX in tract, or
    /// full-integer TFLite in LiteRT.
    #[serde(default)]
    pub deploy_format: DeployFormat,
    /// Trials over these are infeasible: shown apart and steered away from by the sampler.
    #[serde(default)]
    pub latency_budget_ms: Option<f64>,
    #[serde(default)]
    pub size_budget_mb: Option<f64>,
    /// Random draws before tpe models the history.
    #[serde(default = "default_startup")]
    pub startup_trials: usize,
    /// tpe models all parameters together (their interactions seen); false: one estimator
    /// per parameter.
    #[serde(default = "default_multivariate")]
    pub multivariate: bool,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub prune: PruneRule,
    /// Epochs before any pruning decision.
    #[serde(default = "default_one")]
    pub prune_warmup: usize,
    /// Sweep-mates needed at an epoch before the median rule prunes.
    #[serde(default = "default_two")]
    pub prune_min_runs: usize,
    #[serde(default = "default_eta")]
    pub eta: usize,
    /// How much better in every objective a sweep-mate must be to prune (dominated rule).
    #[serde(default = "default_margin")]
    pub prune_margin: f64,
    /// Dotted config key -> list of values (grid, or choice in random) or a distribution table
    /// `{ distribution = "uniform" | "log_uniform" | "int_uniform" | "choice", min, max, values }`.
    pub parameters: toml::Table,
}

fn default_multivariate() -> bool {
    true
}
fn default_one() -> usize {
    1
}
fn default_margin() -> f64 {
    0.02
}
fn default_startup() -> usize {
    8
}

impl SweepSection {
    /// The method given, or tpe when a parameter is a distribution and grid when all are lists.
    pub fn method(&self) -> SweepMethod {
        self.method_given.unwrap_or_else(|| {
            let any_distribution = self.parameters.values().any(|v| {
                v.as_table().is_some_and(|t| {
                    t.get("distribution").and_then(|d| d.as_str()) != Some("choice")
                })
            });
            if any_distribution {
                SweepMethod::Tpe
            } else {
                SweepMethod::Grid
            }
        })
    }
}
fn default_two() -> usize {
    2
}
fn default_eta() -> usize {
    3
}

/// The file a sweep deploys each trial as (`sweep.deploy_format`), measured in the runtime
/// that runs it.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    Serialize,
    Deserialize,
    PartialEq,
    Eq,
    Display,
    AsRefStr,
    EnumString,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum DeployFormat {
    /// ONNX with int8 weights (per-channel, float activations), run by tract.
    #[default]
    Onnx,
    /// TFLite, full integer (int8 activations calibrated on 200 training images), run by
    /// LiteRT (python3 with `ai-edge-litert`).
    Tflite,
}

/// How a `[sweep]` turns its parameters into trials.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    Serialize,
    Deserialize,
    PartialEq,
    Eq,
    Display,
    AsRefStr,
    EnumString,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum SweepMethod {
    /// The cartesian product of the value lists.
    #[default]
    Grid,
    /// `samples` seeded draws from the lists and distributions.
    Random,
    /// Tree-structured Parzen estimator: each trial asked for when a worker is free, proposed
    /// from every finished and running trial (`sweep::search`).
    Tpe,
}

/// When a sweep stops its weaker runs early.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    Serialize,
    Deserialize,
    PartialEq,
    Eq,
    Display,
    AsRefStr,
    EnumString,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum PruneRule {
    #[default]
    None,
    /// Stop a run below its sweep-mates' median at the same epoch.
    Median,
    /// Successive halving: at epochs warmup, warmup*eta, ... keep the top 1/eta.
    Halving,
    /// Hyperband, asynchronously: trial k runs the halving of bracket k mod (brackets), whose
    /// first rung is warmup * eta^bracket, so some trials get longer before any judgement.
    Hyperband,
    /// For several objectives: stop a trial that a sweep-mate beats at the same epoch in every
    /// objective by at least `prune_margin` (relative), its export's latency and size included.
    Dominated,
}

#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    Serialize,
    Deserialize,
    PartialEq,
    Eq,
    Display,
    AsRefStr,
    EnumString,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Optimizer {
    /// Adam; `weight_decay` adds an L2 penalty to the gradients (Keras' and torch's Adam).
    #[default]
    Adam,
    /// AdamW: weight decay applied to the weights directly, apart from the gradients (the
    /// paper's and timm's recipe).
    #[serde(rename = "adamw")]
    #[strum(serialize = "adamw")]
    AdamW,
}

/// How the learning rate moves over a run, after the optional linear warmup.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    Serialize,
    Deserialize,
    PartialEq,
    Eq,
    Display,
    AsRefStr,
    EnumString,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Schedule {
    /// `lr` throughout (the reference recipe).
    #[default]
    Constant,
    /// Half a cosine from `lr` down to `min_lr` at the last step.
    Cosine,
    /// `lr` times `gamma` every `step_epochs` epochs.
    Step,
}

/// The metric that picks the best checkpoint, drives early stopping and pruning.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    Serialize,
    Deserialize,
    PartialEq,
    Eq,
    Display,
    AsRefStr,
    EnumString,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Monitor {
    #[default]
    ValAccuracy,
    ValLoss,
    TrainAccuracy,
    TrainLoss,
}

impl Monitor {
    /// The per-epoch metric the registry stores it as.
    pub fn metric(self) -> crate::status::Metric {
        use crate::status::Metric;
        match self {
            Self::ValAccuracy => Metric::ValAccuracy,
            Self::ValLoss => Metric::ValLoss,
            Self::TrainAccuracy => Metric::TrainAccuracy,
            Self::TrainLoss => Metric::TrainLoss,
        }
    }
}

crate::status::from_stored_text!(SweepMethod, PruneRule, Monitor);

/// Whether a larger or a smaller monitored value is better.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    Serialize,
    Deserialize,
    PartialEq,
    Eq,
    Display,
    AsRefStr,
    EnumString,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Mode {
    #[default]
    Max,
    Min,
}

impl Mode {
    pub fn maximize(self) -> bool {
        self == Self::Max
    }

    /// Whether `value` beats `best` (anything beats no best yet).
    pub fn improves(self, value: f64, best: Option<f64>) -> bool {
        match (best, self) {
            (None, _) => true,
            (Some(b), Self::Max) => value > b,
            (Some(b), Self::Min) => value < b,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Flavour {
    /// The Keras example's network (1,307,621 parameters with 5 classes).
    Keras,
    /// The paper's network, as timm / ml-cvnets build it.
    Paper,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    Xxs,
    Xs,
    S,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    pub flavour: Flavour,
    pub variant: Variant,
    /// Dropout in the transformer (keras) or before the classifier (paper).
    pub dropout: f64,
    /// A timm-named safetensors file to start from (paper flavour only).
    pub pretrained: Option<PathBuf>,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            flavour: Flavour::Keras,
            variant: Variant::Xxs,
            dropout: 0.1,
            pretrained: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    /// Image folder `ROOT/<class>/<image>`, split into train/val by `val_fraction`.
    pub root: Option<PathBuf>,
    /// Explicit train and val folders (instead of `root`).
    pub train_dir: Option<PathBuf>,
    pub val_dir: Option<PathBuf>,
    pub image_size: usize,
    /// Train images are resized to this, then randomly cropped to `image_size`.
    pub resize_bigger: usize,
    pub val_fraction: f64,
    pub augment: bool,
    /// Decode/augment threads.
    pub workers: usize,
    /// Batches prepared ahead of the training step.
    pub prefetch: usize,
    /// Decoded, pre-resized images above this size go to a memory-mapped file instead of RAM.
    pub cache_mb: usize,
    /// Use at most this many images per class (0 = all): handy to shrink a run.
    pub max_per_class: usize,
    /// The seed of the train/val split when it is not `train.seed`: a seed group keeps its
    /// base seed's split, so its runs differ only in initialisation and batch order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split_seed: Option<u64>,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            root: None,
            train_dir: None,
            val_dir: None,
            image_size: 256,
            resize_bigger: 280,
            val_fraction: 0.1,
            augment: true,
            workers: 2,
            prefetch: 4,
            cache_mb: 4096,
            max_per_class: 0,
            split_seed: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    pub epochs: usize,
    pub batch_size: usize,
    pub optimizer: Optimizer,
    pub lr: f64,
    /// Adam epsilon; Keras' default is 1e-7.
    pub adam_eps: f64,
    /// L2 penalty (adam) or decoupled decay rate (adamw); 0 = none.
    pub weight_decay: f64,
    pub schedule: Schedule,
    /// Epochs (fractions allowed) of linear warmup from lr/steps up to `lr`, before the schedule.
    pub warmup_epochs: f64,
    /// Where the cosine schedule ends.
    pub min_lr: f64,
    /// The step schedule: every this many epochs the rate is multiplied by `gamma`.
    pub step_epochs: usize,
    pub gamma: f64,
    /// Scale all gradients together when their global L2 norm is above this (0 = off).
    pub grad_clip_norm: f64,
    /// Before each evaluation and checkpoint, recompute BatchNorm's running statistics as exact
    /// averages over this many training batches, gradients off ("precise BN"; 0 = off).
    pub bn_recalibrate: usize,
    /// Evaluate and keep an exponential moving average of the weights, with this decay per step
    /// (warmed up as TensorFlow's `ExponentialMovingAverage` does); 0 = off.
    pub ema_decay: f64,
    /// Fine-tuning: train only the classifier.
    pub freeze_backbone: bool,
    /// Fine-tuning: the backbone's learning rate is `lr` times this.
    pub backbone_lr_scale: f64,
    pub label_smoothing: f64,
    pub seed: u64,
    /// Queue one run per seed, as a seed group (`mvlab run --seeds N` is the same with N seeds
    /// from `seed` on).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<u64>,
    /// `auto`, `cpu`, `cuda[:N]` or `vulkan[:N]`.
    pub device: String,
    /// Stop after this many epochs without improvement of the monitored metric (0 = never).
    pub patience: usize,
    /// Record every training image's loss and margin each epoch (`mvlab samples`).
    pub dynamics: bool,
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            epochs: 30,
            batch_size: 64,
            optimizer: Optimizer::Adam,
            lr: 2e-3,
            adam_eps: 1e-7,
            weight_decay: 0.0,
            schedule: Schedule::Constant,
            warmup_epochs: 0.0,
            min_lr: 0.0,
            step_epochs: 10,
            gamma: 0.1,
            grad_clip_norm: 0.0,
            // Not in the reference recipe (experiments/xxs.toml sets 0): without it small runs
            // evaluate with stale statistics and predict one class (BENCHMARKS.md).
            bn_recalibrate: 10,
            // Not in the reference recipe either: the last epoch's model is then about as good
            // as the best one under a constant rate (BENCHMARKS.md). Training is unchanged.
            ema_decay: 0.999,
            freeze_backbone: false,
            backbone_lr_scale: 1.0,
            label_smoothing: 0.1,
            seed: 42,
            seeds: Vec::new(),
            device: "auto".into(),
            patience: 0,
            dynamics: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSection {
    pub monitor: Monitor,
    pub mode: Mode,
}

impl Default for CheckpointSection {
    fn default() -> Self {
        Self {
            monitor: Monitor::ValAccuracy,
            mode: Mode::Max,
        }
    }
}

/// A config as loaded: the parsed value plus the text it came from (for the registry).
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: ExperimentConfig,
    pub path: PathBuf,
    pub text: String,
    pub overrides: Vec<String>,
}

impl LoadedConfig {
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.text.as_bytes()))
    }
}

/// Reads, overrides and validates an experiment file. Errors name the file and location.
pub fn load(path: &Path, overrides: &[String]) -> Result<LoadedConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    let config =
        parse(&text, overrides).map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
    Ok(LoadedConfig {
        config,
        path: path.to_path_buf(),
        text,
        overrides: overrides.to_vec(),
    })
}

/// Parses TOML text, applies `key=value` overrides and validates. The error text carries the
/// line/column of the offending key where the text has one.
pub fn parse(text: &str, overrides: &[String]) -> Result<ExperimentConfig> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| located_toml_error(&e, text))?;
    for item in overrides {
        apply_override(&mut table, item)?;
    }
    let config: ExperimentConfig = if overrides.is_empty() {
        toml::from_str(text).map_err(|e| located_toml_error(&e, text))?
    } else {
        ExperimentConfig::deserialize(toml::Value::Table(table))
            .map_err(|e| anyhow::anyhow!("after --set {}: {}", overrides.join(" "), e.message()))?
    };
    if let Err((key, msg)) = validate(&config) {
        // The value came from the command line when an override set it (the last one wins).
        let from_set = overrides
            .iter()
            .rev()
            .find(|o| o.split_once('=').is_some_and(|(k, _)| k.trim() == key));
        if let Some(item) = from_set {
            bail!("--set {item}: field `{key}`: {msg}");
        }
        match locate_key(text, &key) {
            Some((line, col)) => bail!("line {line}, column {col}: field `{key}`: {msg}"),
            None => bail!("field `{key}`: {msg}"),
        }
    }
    Ok(config)
}

fn located_toml_error(e: &toml::de::Error, text: &str) -> anyhow::Error {
    match e.span() {
        Some(span) => {
            let (line, col) = line_col(text, span.start);
            anyhow::anyhow!("line {line}, column {col}: {}", e.message())
        }
        None => anyhow::anyhow!("{}", e.message()),
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

/// Line and column of a dotted key in the TOML text, if it is written there.
pub fn locate_key(text: &str, dotted: &str) -> Option<(usize, usize)> {
    let doc = toml_edit::ImDocument::parse(text.to_string()).ok()?;
    let mut item = doc.as_item();
    let mut span = None;
    for part in dotted.split('.') {
        let table = item.as_table_like()?;
        let (key, value) = table.get_key_value(part)?;
        span = key.span().or_else(|| value.span());
        item = value;
    }
    span.map(|s| line_col(text, s.start))
}

/// Sets `a.b.c=value` in a TOML table. The value is read as TOML (number, bool, array, quoted
/// string) and falls back to a bare string.
pub fn apply_override(table: &mut toml::Table, item: &str) -> Result<()> {
    let (key, raw) = item
        .split_once('=')
        .with_context(|| format!("--set {item}: expected key=value, e.g. train.lr=0.001"))?;
    let key = key.trim();
    let value = parse_value(raw.trim());
    set_path(table, key, value).with_context(|| format!("--set {item}"))
}

pub fn parse_value(raw: &str) -> toml::Value {
    let wrapped = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&wrapped) {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

pub fn set_path(table: &mut toml::Table, dotted: &str, value: toml::Value) -> Result<()> {
    let parts: Vec<&str> = dotted.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("`{dotted}` is not a dotted key path");
    }
    let mut cur = table;
    for part in &parts[..parts.len() - 1] {
        let entry = cur
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        cur = entry
            .as_table_mut()
            .with_context(|| format!("`{part}` in `{dotted}` is not a table"))?;
    }
    cur.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

/// Checks values serde cannot: returns the dotted key and what was expected.
pub fn validate(c: &ExperimentConfig) -> std::result::Result<(), (String, String)> {
    let err = |k: &str, m: String| Err((k.to_string(), m));
    if c.name.trim().is_empty() {
        return err("name", "must not be empty".into());
    }
    if !(0.0..1.0).contains(&c.model.dropout) {
        return err(
            "model.dropout",
            format!("expected a value in [0, 1), got {}", c.model.dropout),
        );
    }
    let d = &c.data;
    if d.image_size < 32 {
        return err(
            "data.image_size",
            format!("expected at least 32 pixels, got {}", d.image_size),
        );
    }
    if d.resize_bigger < d.image_size {
        return err(
            "data.resize_bigger",
            format!(
                "expected at least data.image_size ({}), got {}",
                d.image_size, d.resize_bigger
            ),
        );
    }
    if d.root.is_some() && !(d.val_fraction > 0.0 && d.val_fraction < 1.0) {
        return err(
            "data.val_fraction",
            format!(
                "expected a value in (0, 1): the val split picks the best checkpoint, got {}",
                d.val_fraction
            ),
        );
    }
    // Threads and batches held at once: far beyond any machine's cores, a typo.
    if d.workers > 1024 {
        return err(
            "data.workers",
            format!("expected at most 1024 threads, got {}", d.workers),
        );
    }
    if d.prefetch > 1024 {
        return err(
            "data.prefetch",
            format!("expected at most 1024 batches ahead, got {}", d.prefetch),
        );
    }
    if d.root.is_none() && (d.train_dir.is_none() || d.val_dir.is_none()) {
        return err(
            "data.root",
            "set data.root, or both data.train_dir and data.val_dir".into(),
        );
    }
    if d.workers == 0 {
        return err("data.workers", "expected at least 1".into());
    }
    let t = &c.train;
    if t.epochs == 0 {
        return err("train.epochs", "expected at least 1".into());
    }
    if t.batch_size == 0 {
        return err("train.batch_size", "expected at least 1".into());
    }
    if !(t.lr.is_finite() && t.lr > 0.0) {
        return err(
            "train.lr",
            format!("expected a positive number, got {}", t.lr),
        );
    }
    // The optimizer computes in f32: outside its normal range a value becomes 0 or infinite.
    let f32_range = |v: f64| v >= f32::MIN_POSITIVE as f64 && v <= f32::MAX as f64;
    if !(t.adam_eps.is_finite() && t.adam_eps > 0.0 && f32_range(t.adam_eps)) {
        return err(
            "train.adam_eps",
            format!(
                "expected a positive number within f32's range, got {}",
                t.adam_eps
            ),
        );
    }
    if t.weight_decay != 0.0 && !f32_range(t.weight_decay) {
        return err(
            "train.weight_decay",
            format!(
                "expected 0 or a number within f32's range, got {}",
                t.weight_decay
            ),
        );
    }
    let non_negative = |k: &str, v: f64| {
        if v.is_finite() && v >= 0.0 {
            Ok(())
        } else {
            Err((k.to_string(), format!("expected a number >= 0, got {v}")))
        }
    };
    non_negative("train.weight_decay", t.weight_decay)?;
    non_negative("train.grad_clip_norm", t.grad_clip_norm)?;
    non_negative("train.backbone_lr_scale", t.backbone_lr_scale)?;
    if !(t.warmup_epochs.is_finite() && (0.0..t.epochs as f64).contains(&t.warmup_epochs)) {
        return err(
            "train.warmup_epochs",
            format!(
                "expected a value in [0, train.epochs = {}), got {}",
                t.epochs, t.warmup_epochs
            ),
        );
    }
    if !(t.min_lr.is_finite() && (0.0..=t.lr).contains(&t.min_lr)) {
        return err(
            "train.min_lr",
            format!(
                "expected a value in [0, train.lr = {}], got {}",
                t.lr, t.min_lr
            ),
        );
    }
    if t.step_epochs == 0 {
        return err("train.step_epochs", "expected at least 1".into());
    }
    if !(t.gamma > 0.0 && t.gamma <= 1.0) {
        return err(
            "train.gamma",
            format!("expected a value in (0, 1], got {}", t.gamma),
        );
    }
    if !(0.0..1.0).contains(&t.ema_decay) {
        return err(
            "train.ema_decay",
            format!("expected a value in [0, 1), got {}", t.ema_decay),
        );
    }
    if !(0.0..1.0).contains(&t.label_smoothing) {
        return err(
            "train.label_smoothing",
            format!("expected a value in [0, 1), got {}", t.label_smoothing),
        );
    }
    if let Err(e) = crate::device::DeviceChoice::parse(&t.device) {
        return err("train.device", e.to_string());
    }
    if let Some(s) = &c.sweep {
        if s.eta < 2 {
            return err("sweep.eta", format!("expected at least 2, got {}", s.eta));
        }
        if s.prune_min_runs == 0 {
            return err("sweep.prune_min_runs", "expected at least 1".into());
        }
        if s.method() == SweepMethod::Tpe && s.samples == 0 {
            return err(
                "sweep.samples",
                "a tpe sweep needs its budget: samples >= 1 (trials in all)".into(),
            );
        }
        if let Some(m) = s.budget_minutes.filter(|m| !(m.is_finite() && *m > 0.0)) {
            return err(
                "sweep.budget_minutes",
                format!("expected minutes > 0, got {m}"),
            );
        }
        for (key, v) in [
            ("sweep.latency_budget_ms", s.latency_budget_ms),
            ("sweep.size_budget_mb", s.size_budget_mb),
        ] {
            if let Some(v) = v.filter(|v| !(v.is_finite() && *v > 0.0)) {
                return err(key, format!("expected a number > 0, got {v}"));
            }
        }
        for (i, o) in s.objectives.iter().enumerate() {
            if let Err(e) = crate::status::Objective::parse(o) {
                return err(&format!("sweep.objectives[{i}]"), e);
            }
        }
    }
    if let Some(s) = &c.slurm {
        s.check().or_else(|(k, m)| err(&format!("slurm.{k}"), m))?;
    }
    Ok(())
}

impl SlurmSection {
    /// Values go into a shell script: one line each, and the extra arguments are options.
    /// Returns the field (relative to the section) and what is wrong.
    pub fn check(&self) -> std::result::Result<(), (String, String)> {
        let fields = [
            ("partition", self.partition.as_deref()),
            ("time", self.time.as_deref()),
            ("mem", self.mem.as_deref()),
            ("account", self.account.as_deref()),
        ];
        for (key, v) in fields {
            if let Some(v) = v.filter(|v| v.is_empty() || !is_plain_word(v)) {
                return Err((
                    key.into(),
                    format!("expected one word without spaces, quotes or newlines, got {v:?}"),
                ));
            }
        }
        for (i, a) in self.sbatch.iter().enumerate() {
            if !a.starts_with('-') || a.contains(['\n', '\r']) {
                return Err((
                    format!("sbatch[{i}]"),
                    format!("expected one sbatch option such as \"--qos=high\", got {a:?}"),
                ));
            }
        }
        if self.cpus_per_task == Some(0) {
            return Err(("cpus_per_task".into(), "expected at least 1".into()));
        }
        Ok(())
    }
}

fn is_plain_word(v: &str) -> bool {
    v.chars()
        .all(|c| c.is_ascii_graphic() && !matches!(c, '\'' | '"' | '\\' | '$' | '`'))
}

impl ExperimentConfig {
    /// The seed the train/val split is drawn with.
    pub fn split_seed(&self) -> u64 {
        self.data.split_seed.unwrap_or(self.train.seed)
    }

    /// The resolved config as TOML: what a run snapshots in the registry.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes")
    }

    /// Relative data paths are relative to the experiment file's folder; a path that exists only
    /// from the current directory (as typed in `--set data.root=...`) is taken from there.
    /// Either way the result is absolute.
    pub fn resolve_paths(&mut self, base: &Path) {
        for p in [
            &mut self.data.root,
            &mut self.data.train_dir,
            &mut self.data.val_dir,
            &mut self.model.pretrained,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                let candidate = base.join(&*p);
                if candidate.exists() || !p.exists() {
                    *p = candidate;
                }
            }
            // One spelling whichever folder the run was started from (the CLI passes relative
            // paths, the workbench absolute ones), so runs compare equal where they are.
            if let Ok(full) = p.canonicalize().or_else(|_| std::path::absolute(&*p)) {
                *p = full;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "name = \"t\"\n[data]\nroot = \"x\"\n";

    #[test]
    fn defaults_are_the_reference_recipe() {
        let c = parse(MINIMAL, &[]).unwrap();
        assert_eq!(c.model.flavour, Flavour::Keras);
        assert_eq!((c.data.image_size, c.data.resize_bigger), (256, 280));
        assert_eq!((c.train.epochs, c.train.batch_size), (30, 64));
        assert_eq!(
            (c.train.lr, c.train.label_smoothing, c.train.adam_eps),
            (2e-3, 0.1, 1e-7)
        );
        assert_eq!(c.checkpoint.monitor, Monitor::ValAccuracy);
    }

    #[test]
    fn overrides_set_nested_keys_with_types() {
        let sets = [
            "train.lr=0.01",
            "model.flavour=paper",
            "data.image_size=64",
            "data.augment=false",
        ];
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let c = parse(MINIMAL, &sets).unwrap();
        assert_eq!(c.train.lr, 0.01);
        assert_eq!(c.model.flavour, Flavour::Paper);
        assert_eq!(c.data.image_size, 64);
        assert!(!c.data.augment);
    }

    #[test]
    fn unknown_key_is_refused_with_its_line() {
        let text = "name = \"t\"\n[train]\nlrr = 0.1\n";
        let e = parse(text, &[]).unwrap_err().to_string();
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("lrr"), "{e}");
    }

    #[test]
    fn wrong_type_is_refused_with_its_line() {
        let e = parse("name = \"t\"\n[train]\nepochs = \"ten\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn invalid_value_names_field_and_location() {
        let text = "name = \"t\"\n[data]\nroot = \"x\"\n[train]\nlr = -1.0\n";
        let e = parse(text, &[]).unwrap_err().to_string();
        assert!(e.contains("train.lr") && e.contains("line 5"), "{e}");
        let e = parse(MINIMAL, &["model.flavour=tiny".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("tiny"), "{e}");
        let e = parse(MINIMAL, &["train.nope=1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn closed_sets_refuse_unknown_values_with_line_and_allowed_values() {
        let cases = [
            (
                "[sweep]\nprune = \"medain\"\n[sweep.parameters]\n\"train.lr\" = [0.1]\n",
                5,
                "medain",
                "median",
            ),
            (
                "[sweep]\nmethod = \"grdi\"\n[sweep.parameters]\n\"train.lr\" = [0.1]\n",
                5,
                "grdi",
                "random",
            ),
            ("[checkpoint]\nmode = \"maximum\"\n", 5, "maximum", "min"),
            (
                "[checkpoint]\nmonitor = \"val_acc\"\n",
                5,
                "val_acc",
                "val_accuracy",
            ),
            ("[train]\noptimizer = \"sgd\"\n", 5, "sgd", "adamw"),
            (
                "[sweep]\ndeploy_format = \"coreml\"\n[sweep.parameters]\n\"train.lr\" = [0.1]\n",
                5,
                "coreml",
                "tflite",
            ),
            ("[train]\nschedule = \"cosin\"\n", 5, "cosin", "cosine"),
        ];
        for (section, line, bad, allowed) in cases {
            let text = format!("{MINIMAL}{section}");
            let e = parse(&text, &[]).unwrap_err().to_string();
            assert!(
                e.contains(&format!("line {line}")) && e.contains(bad) && e.contains(allowed),
                "{e}"
            );
        }
        let c = parse(
            &format!("{MINIMAL}[sweep]\nprune = \"halving\"\nmethod = \"random\"\nsamples = 2\n[sweep.parameters]\n\"train.lr\" = [0.1]\n"),
            &[],
        )
        .unwrap();
        let sweep = c.sweep.unwrap();
        assert_eq!(
            (sweep.prune, sweep.method()),
            (PruneRule::Halving, SweepMethod::Random)
        );
    }

    #[test]
    fn trainer_options_parse_and_bad_ones_name_their_field() {
        let c = parse(
            MINIMAL,
            &[
                "train.optimizer=adamw".into(),
                "train.schedule=cosine".into(),
                "train.warmup_epochs=2.5".into(),
                "train.weight_decay=0.01".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            (c.train.optimizer, c.train.schedule),
            (Optimizer::AdamW, Schedule::Cosine)
        );
        assert_eq!(c.train.bn_recalibrate, 10, "on unless an experiment says 0");
        assert_eq!(c.train.ema_decay, 0.999, "on unless an experiment says 0");
        for (set, field) in [
            ("train.gamma=0", "train.gamma"),
            ("train.warmup_epochs=30", "train.warmup_epochs"),
            ("train.min_lr=0.5", "train.min_lr"),
            ("train.weight_decay=-1", "train.weight_decay"),
            ("train.step_epochs=0", "train.step_epochs"),
            ("train.ema_decay=1.0", "train.ema_decay"),
        ] {
            let e = parse(MINIMAL, &[set.into()]).unwrap_err().to_string();
            assert!(e.contains(field), "{set}: {e}");
        }
    }

    #[test]
    fn syntax_error_is_located() {
        let e = parse("name = \"t\"\n[data\n", &[]).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
    }
}
