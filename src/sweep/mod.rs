//! Hyperparameter sweeps: expand a `[sweep]` section into trials (lists of `key=value`
//! overrides) or, for tpe, propose each next trial from the history (`search`), decide
//! pruning, and report a sweep (for several objectives, its Pareto front: `front`).

pub mod front;
pub mod importance;
pub mod search;
pub mod spec;

pub use spec::SweepSpec;

use crate::config::{self, PruneRule, SweepMethod, SweepSection};
use crate::registry::{Registry, RunRow};
use crate::status::{Metric, Objective, RunStatus};
use crate::train::EpochJudge;
use anyhow::{Context, Result, bail};
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::collections::BTreeMap;

/// One dimension of the search space.
#[derive(Debug, Clone, PartialEq)]
pub enum Space {
    Values(Vec<toml::Value>),
    Uniform(f64, f64),
    LogUniform(f64, f64),
    IntUniform(i64, i64),
}

fn number(v: Option<&toml::Value>, what: &str) -> Result<f64> {
    match v {
        Some(toml::Value::Float(f)) => Ok(*f),
        Some(toml::Value::Integer(i)) => Ok(*i as f64),
        _ => bail!("`{what}` must be a number"),
    }
}

pub fn parse_space(key: &str, v: &toml::Value) -> Result<Space> {
    let space = match v {
        toml::Value::Array(a) if !a.is_empty() => Space::Values(a.clone()),
        toml::Value::Array(_) => bail!("sweep.parameters.\"{key}\": the list of values is empty"),
        toml::Value::Table(t) => {
            let dist = t.get("distribution").and_then(|d| d.as_str()).unwrap_or("");
            if dist == "choice" {
                return match t.get("values") {
                    Some(toml::Value::Array(a)) if !a.is_empty() => Ok(Space::Values(a.clone())),
                    _ => {
                        bail!("sweep.parameters.\"{key}\": choice needs a non-empty `values` list")
                    }
                };
            }
            let bound = |name: &str| {
                number(t.get(name), name).with_context(|| format!("sweep.parameters.\"{key}\""))
            };
            let (min, max) = (bound("min")?, bound("max")?);
            if !(min.is_finite() && max.is_finite() && (max - min).is_finite()) {
                bail!(
                    "sweep.parameters.\"{key}\": min and max must be finite numbers, got {min} and {max}"
                );
            }
            match dist {
                _ if min > max => bail!("sweep.parameters.\"{key}\": min {min} is above max {max}"),
                "uniform" => Space::Uniform(min, max),
                "log_uniform" if min <= 0.0 => {
                    bail!("sweep.parameters.\"{key}\": log_uniform needs min > 0")
                }
                "log_uniform" => Space::LogUniform(min, max),
                "int_uniform" => {
                    let (lo, hi) = (min.ceil(), max.floor());
                    // i64 holds every integer of f64 magnitude below 2^63.
                    let limit = 9.0e18;
                    if lo > hi || lo.abs() > limit || hi.abs() > limit {
                        bail!(
                            "sweep.parameters.\"{key}\": int_uniform needs an integer between min {min} and max {max}"
                        );
                    }
                    Space::IntUniform(lo as i64, hi as i64)
                }
                other => bail!(
                    "sweep.parameters.\"{key}\": unknown distribution {other:?} (uniform, log_uniform, int_uniform or choice)"
                ),
            }
        }
        other => bail!(
            "sweep.parameters.\"{key}\": expected a list of values or a distribution table, got {other}"
        ),
    };
    Ok(space)
}

impl Space {
    pub fn sample(&self, rng: &mut StdRng) -> toml::Value {
        match self {
            Space::Values(v) => v[rng.random_range(0..v.len())].clone(),
            Space::Uniform(a, b) => {
                toml::Value::Float(if a == b { *a } else { rng.random_range(*a..*b) })
            }
            Space::LogUniform(a, b) => toml::Value::Float(if a == b {
                *a
            } else {
                rng.random_range(a.ln()..b.ln()).exp()
            }),
            Space::IntUniform(a, b) => toml::Value::Integer(rng.random_range(*a..=*b)),
        }
    }
}

pub fn format_override(key: &str, v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("{key}={s}"),
        other => format!("{key}={other}"),
    }
}

/// The swept dimensions of a `[sweep]`, each checked.
pub fn dims(sweep: &SweepSection) -> Result<Vec<(String, Space)>> {
    let mut dims: Vec<(String, Space)> = Vec::new();
    for (key, v) in &sweep.parameters {
        if key.starts_with("sweep") || key == "name" {
            bail!("sweep.parameters.\"{key}\": this key cannot be swept");
        }
        dims.push((key.clone(), parse_space(key, v)?));
    }
    if dims.is_empty() {
        bail!("sweep.parameters is empty");
    }
    Ok(dims)
}

/// The trials of a sweep: each a list of `key=value` overrides, checked against the config so
/// that a bad key or value is refused (naming the path) before anything is queued. A tpe
/// sweep has none up front (each is proposed when a worker asks); one draw from its space is
/// checked the same way.
pub fn expand(base_text: &str, sweep: &SweepSection) -> Result<Vec<Vec<String>>> {
    expand_with(base_text, &[], sweep)
}

/// `expand` for a config given with `--set` overrides: each trial is checked with
/// `base_overrides` applied before its own (as the trial's run will be), but holds only its own.
pub fn expand_with(
    base_text: &str,
    base_overrides: &[String],
    sweep: &SweepSection,
) -> Result<Vec<Vec<String>>> {
    let dims = dims(sweep)?;
    check_size(base_text, sweep, &dims)?;
    let with_base = |trial: &[String]| [base_overrides, trial].concat();
    let trials: Vec<Vec<(String, toml::Value)>> = match sweep.method() {
        SweepMethod::Grid => {
            let mut trials = vec![Vec::new()];
            for (key, space) in &dims {
                let Space::Values(values) = space else {
                    bail!(
                        "sweep.parameters.\"{key}\": grid sweeps take lists of values, not distributions"
                    );
                };
                trials = trials
                    .into_iter()
                    .flat_map(|t| {
                        values.iter().map(move |v| {
                            let mut t = t.clone();
                            t.push((key.clone(), v.clone()));
                            t
                        })
                    })
                    .collect();
            }
            trials
        }
        SweepMethod::Random => {
            if sweep.samples == 0 {
                bail!("sweep.samples: a random sweep needs samples >= 1");
            }
            let mut rng = StdRng::seed_from_u64(sweep.seed);
            (0..sweep.samples)
                .map(|_| {
                    dims.iter()
                        .map(|(k, s)| (k.clone(), s.sample(&mut rng)))
                        .collect()
                })
                .collect()
        }
        SweepMethod::Tpe => {
            let mut rng = StdRng::seed_from_u64(sweep.seed);
            let draw: Vec<String> = dims
                .iter()
                .map(|(k, s)| format_override(k, &s.sample(&mut rng)))
                .collect();
            config::parse(base_text, &with_base(&draw))
                .with_context(|| format!("sweep trial {}", draw.join(" ")))?;
            return Ok(Vec::new());
        }
    };
    let out: Vec<Vec<String>> = trials
        .iter()
        .map(|t| t.iter().map(|(k, v)| format_override(k, v)).collect())
        .collect();
    for t in &out {
        config::parse(base_text, &with_base(t))
            .with_context(|| format!("sweep trial {}", t.join(" ")))?;
    }
    Ok(out)
}

/// Whether a dotted key changes what a trial's deployed file is: the model's settings and
/// the input size.
fn shapes_the_model(key: &str) -> bool {
    key.starts_with("model.") || key == "data.image_size"
}

/// The architectures a sweep's trials can have, each as the `key=value` overrides that give
/// it: every combination of the listed values of the keys that shape the model, a
/// distribution's bounds standing for it (the other keys keep the experiment's values).
fn architectures(dims: &[(String, Space)]) -> Vec<Vec<String>> {
    let mut combos = vec![Vec::new()];
    for (key, space) in dims.iter().filter(|(k, _)| shapes_the_model(k)) {
        let values = match space {
            Space::Values(v) => v.clone(),
            Space::IntUniform(a, b) => vec![toml::Value::Integer(*a), toml::Value::Integer(*b)],
            Space::Uniform(a, b) | Space::LogUniform(a, b) => {
                vec![toml::Value::Float(*a), toml::Value::Float(*b)]
            }
        };
        combos = combos
            .into_iter()
            .flat_map(|c| {
                values.iter().map(move |v| {
                    let mut c = c.clone();
                    c.push(format_override(key, v));
                    c
                })
            })
            .collect();
    }
    combos
}

/// A sweep that cannot measure what it optimises is refused before anything is queued, naming
/// the values at fault: a sweep whose objectives or budgets need its trials' deployed files
/// measured, when the format's runtime cannot run here (`deploy_format = "tflite"` without
/// LiteRT), or when an architecture its trials can have is one the format cannot express or
/// its runtime cannot run (each distinct architecture is exported with fresh weights, as the
/// trial's file will be, and run on one image).
pub fn check_measurable(
    base_text: &str,
    base_overrides: &[String],
    sweep: &SweepSection,
) -> Result<()> {
    let base = config::parse(base_text, base_overrides)?;
    if !measures_deployment(sweep, &base) {
        return Ok(());
    }
    let format = sweep.deploy_format;
    let measured = objectives(sweep, &base)
        .iter()
        .filter(|o| o.is_deployed())
        .map(|o| o.to_string())
        .chain(
            sweep
                .latency_budget_ms
                .map(|_| "sweep.latency_budget_ms".to_string()),
        )
        .chain(
            sweep
                .size_budget_mb
                .map(|_| "sweep.size_budget_mb".to_string()),
        )
        .collect::<Vec<_>>()
        .join(", ");
    if format == config::DeployFormat::Tflite
        && let Err(e) = crate::export::litert::available()
    {
        bail!(
            "sweep.deploy_format = \"tflite\": this sweep measures its trials' TFLite files ({measured}) in LiteRT, which cannot run here: {e:#}; nothing was queued (install it, or measure ONNX files: deploy_format = \"onnx\")"
        );
    }
    let dims = dims(sweep)?;
    let mut seen: Vec<crate::model::ModelConfig> = Vec::new();
    for arch in architectures(&dims) {
        let c = config::parse(base_text, &[base_overrides, arch.as_slice()].concat())
            .with_context(|| format!("sweep trial {}", arch.join(" ")))?;
        let mut model = crate::model::ModelConfig::from_section(&c.model, 2, c.data.image_size);
        model.dropout = 0.0;
        if seen.contains(&model) {
            continue;
        }
        if let Err(e) = crate::export::measure::check_measurable(format, &model) {
            let at = if arch.is_empty() {
                "the experiment's model".to_string()
            } else {
                arch.join(" ")
            };
            bail!(
                "{at}: with sweep.deploy_format = \"{format}\" this sweep measures each trial's {format} file ({measured}), and a {} model at {} px cannot be measured: {e:#}; nothing was queued",
                model.label(),
                model.image_size
            );
        }
        seen.push(model);
    }
    Ok(())
}

/// How many trials the sweep makes, refused before any is made when queueing them would not fit
/// in memory (each holds its overrides, and becomes a run row with its config).
fn check_size(base_text: &str, sweep: &SweepSection, dims: &[(String, Space)]) -> Result<()> {
    let count: u128 = match sweep.method() {
        SweepMethod::Grid => dims
            .iter()
            .map(|(_, s)| match s {
                Space::Values(v) => v.len() as u128,
                _ => 1,
            })
            .try_fold(1u128, |n, k| n.checked_mul(k))
            .unwrap_or(u128::MAX),
        SweepMethod::Random => sweep.samples as u128,
        // Asked one at a time: nothing is queued ahead.
        SweepMethod::Tpe => 0,
    };
    let per_trial = (base_text.len() + 64 * dims.len() + 512) as u128 * 2;
    let needed = count.saturating_mul(per_trial);
    if let Some(available) = crate::device::host_memory_available()
        && needed > available as u128 / 2
    {
        bail!(
            "sweep: {count} trials would take about {} of memory to queue ({} available); sweep fewer values",
            crate::fmt::bytes(needed.min(u64::MAX as u128) as u64),
            crate::fmt::bytes(available)
        );
    }
    Ok(())
}

/// What a sweep judges its trials by: its `objectives`, or the checkpoint's monitored metric.
pub fn objectives(section: &SweepSection, cfg: &config::ExperimentConfig) -> Vec<Objective> {
    if section.objectives.is_empty() {
        return vec![Objective {
            metric: cfg.checkpoint.monitor.metric(),
            maximize: cfg.checkpoint.mode.maximize(),
        }];
    }
    // Checked when the config was parsed.
    section
        .objectives
        .iter()
        .filter_map(|o| Objective::parse(o).ok())
        .collect()
}

/// Whether a sweep's trials get their deployed file measured (an objective or a budget needs
/// it).
pub fn measures_deployment(section: &SweepSection, cfg: &config::ExperimentConfig) -> bool {
    section.latency_budget_ms.is_some()
        || section.size_budget_mb.is_some()
        || objectives(section, cfg).iter().any(Objective::is_deployed)
}

/// A trial's value of each objective (as recorded: the best epoch's metrics, its export's
/// measurements); None while any is missing.
pub fn trial_values(
    reg: &Registry,
    run: &RunRow,
    objectives: &[Objective],
) -> Result<Option<Vec<f64>>> {
    let mut values = Vec::new();
    for o in objectives {
        let epoch = if o.is_deployed() {
            None
        } else {
            run.best_epoch
        };
        match reg.metric_at(run.id, o.metric, epoch)? {
            Some(v) => values.push(v),
            None => return Ok(None),
        }
    }
    Ok(Some(values))
}

/// How far over its budgets a trial is: the sum of the relative excesses (0 when within).
pub fn violation(reg: &Registry, run: &RunRow, section: &SweepSection) -> Result<f64> {
    let mut over = 0.0;
    for (budget, metric) in [
        (section.latency_budget_ms, Metric::Int8LatencyMs),
        (section.size_budget_mb, Metric::SizeMb),
    ] {
        if let Some(b) = budget
            && let Some(v) = reg.metric_at(run.id, metric, None)?
        {
            over += (v / b - 1.0).max(0.0);
        }
    }
    Ok(over)
}

/// The value of a `key=value` override as the space holds it (numbers as numbers).
fn override_value(text: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_string()))
}

/// The sweep's trials as its sampler sees them; failed trials (and finished ones whose values
/// are missing) are left out.
pub fn history(
    reg: &Registry,
    sweep_id: i64,
    dims: &[(String, Space)],
    objectives: &[Objective],
    section: &SweepSection,
) -> Result<Vec<search::Trial>> {
    let mut trials = Vec::new();
    for run in reg.sweep_runs(sweep_id)? {
        let params: BTreeMap<String, toml::Value> = run
            .override_list()?
            .iter()
            .filter_map(|o| o.split_once('='))
            .filter(|(k, _)| dims.iter().any(|(d, _)| d == k))
            .map(|(k, v)| (k.to_string(), override_value(v)))
            .collect();
        let state = match run.status {
            RunStatus::Failed => continue,
            RunStatus::Completed | RunStatus::Pruned => {
                let Some(values) = trial_values(reg, &run, objectives)? else {
                    continue;
                };
                search::TrialState::Done {
                    oriented: values
                        .iter()
                        .zip(objectives)
                        .map(|(v, o)| if o.maximize { -v } else { *v })
                        .collect(),
                    violation: violation(reg, &run, section)?,
                }
            }
            _ => search::TrialState::Pending,
        };
        trials.push(search::Trial { params, state });
    }
    Ok(trials)
}

/// Why the sweep `sweep` (if any) starts no more trials: its `budget_minutes` are over.
pub fn out_of_time(reg: &Registry, sweep: Option<i64>) -> Result<Option<String>> {
    match sweep {
        Some(id) => SweepSpec::load(reg, id)?.out_of_time(reg),
        None => Ok(None),
    }
}

/// What a worker asking a sweep for work gets.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Trials to queue, each its number (0-based) and its `key=value` overrides: a tpe sweep's
    /// next one, or every trial of a grid or random sweep that no run has yet.
    Trials(Vec<(usize, Vec<String>)>),
    /// The sweep's budget is spent (why), or it is not one that asks.
    Done(String),
}

/// Whether a sweep has trials left to ask (its budget and its time), without proposing one.
pub fn is_open(reg: &Registry, spec: &SweepSpec) -> Result<bool> {
    let Some(section) = &spec.section else {
        return Ok(false);
    };
    let left = match section.method() {
        SweepMethod::Tpe => reg.sweep_runs(spec.id)?.len() < section.samples,
        _ => !missing_planned(reg, spec)?.is_empty(),
    };
    Ok(left && spec.out_of_time(reg)?.is_none())
}

/// A grid or random sweep's trials that no run of the sweep has (its expansion is fixed by the
/// file and the seed), with their indices. Found by the overrides, so that a deleted trial is
/// not mistaken for a later one.
fn missing_planned(reg: &Registry, spec: &SweepSpec) -> Result<Vec<(usize, Vec<String>)>> {
    let have: std::collections::HashSet<Vec<String>> = reg
        .sweep_runs(spec.id)?
        .iter()
        .map(|r| r.override_list())
        .collect::<Result<_>>()?;
    Ok(spec
        .planned()?
        .into_iter()
        .enumerate()
        .filter(|(_, trial)| !have.contains(&[spec.overrides.as_slice(), trial].concat()))
        .collect())
}

/// The next trials of a sweep: a grid or random sweep's planned ones that no run has, or a tpe
/// sweep's next one from its whole history. The caller holds the sweep (so that no other
/// worker proposes from the same history) and queues the trials before releasing it.
pub fn next_trial(reg: &Registry, spec: &SweepSpec) -> Result<Next> {
    let Some(section) = &spec.section else {
        return Ok(Next::Done("no [sweep] section".into()));
    };
    // Grid and random trials do not depend on the history: the next is the expansion's next.
    if section.method() != SweepMethod::Tpe {
        let missing = missing_planned(reg, spec)?;
        return Ok(if missing.is_empty() {
            Next::Done(format!("every trial of the {} asked", section.method()))
        } else {
            Next::Trials(missing)
        });
    }
    let asked = reg.sweep_runs(spec.id)?.len();
    if asked >= section.samples {
        return Ok(Next::Done(format!(
            "all {} trials (sweep.samples) asked",
            section.samples
        )));
    }
    if let Some(why) = spec.out_of_time(reg)? {
        return Ok(Next::Done(why));
    }
    let history = history(reg, spec.id, &spec.dims, &spec.objectives, section)?;
    let search = search::Search {
        dims: &spec.dims,
        seed: section.seed,
        startup: section.startup_trials,
        multivariate: section.multivariate,
    };
    let overrides = search
        .propose(asked, &history)
        .iter()
        .map(|(k, v)| format_override(k, v))
        .collect();
    Ok(Next::Trials(vec![(asked, overrides)]))
}

/// The pruning rule of a sweep run, judged after each epoch against its sweep-mates' values at
/// that epoch in the registry. None for runs outside a sweep or in a sweep that does not prune.
pub fn judge(reg: &Registry, run: &RunRow) -> Result<Option<EpochJudge>> {
    let Some(sweep_id) = run.sweep_id else {
        return Ok(None);
    };
    let spec = SweepSpec::load(reg, sweep_id)?;
    let Some(section) = spec.section.clone() else {
        return Ok(None);
    };
    if section.prune == PruneRule::None {
        return Ok(None);
    }
    let cfg = run.recorded_config()?;
    let maximize = cfg.checkpoint.mode.maximize();
    let metric = cfg.checkpoint.monitor.metric();
    let objectives = spec.objectives;
    // The trial's place in the sweep picks its Hyperband bracket.
    let index = reg
        .sweep_runs(sweep_id)?
        .iter()
        .position(|r| r.id == run.id)
        .unwrap_or(0);
    let (reg, run_id) = (reg.clone(), run.id);
    // The trial's own export measurements, taken once (from its first checkpoint) for the
    // dominated rule: latency and size depend on the architecture, not on the epoch.
    let own_deployed: std::sync::Mutex<Option<Vec<(Metric, f64)>>> = Default::default();
    Ok(Some(std::sync::Arc::new(
        move |epoch: usize, value: f64| {
            if epoch < section.prune_warmup {
                return None;
            }
            // The sweep-mate that beats the trial, under the dominated rule.
            let mut beater = None;
            let (prune, mates) = match section.prune {
                PruneRule::Median | PruneRule::Halving | PruneRule::Hyperband => {
                    let mates = reg.sweep_mates_at(sweep_id, run_id, epoch, metric).ok()?;
                    let prune = match section.prune {
                        PruneRule::Median => {
                            median_says_prune(value, &mates, maximize, section.prune_min_runs)
                        }
                        PruneRule::Halving => halving_says_prune(
                            epoch,
                            value,
                            &mates,
                            maximize,
                            section.prune_warmup,
                            section.eta,
                        ),
                        _ => {
                            let warmup = hyperband_warmup(index, &section, cfg.train.epochs);
                            halving_says_prune(epoch, value, &mates, maximize, warmup, section.eta)
                        }
                    };
                    (prune, mates.len())
                }
                PruneRule::Dominated => {
                    let mut own = own_deployed.lock().unwrap_or_else(|p| p.into_inner());
                    if own.is_none()
                        && objectives
                            .iter()
                            .any(|o| o.is_deployed() && o.metric != Metric::DeployedValAccuracy)
                    {
                        *own = measure_own_export(&reg, run_id, section.deploy_format);
                    }
                    let mine = vector_at(
                        &reg,
                        run_id,
                        epoch,
                        &objectives,
                        Some((metric, value)),
                        own.as_deref(),
                    )?;
                    let mates = reg.sweep_runs(sweep_id).ok()?;
                    let (ids, vectors): (Vec<i64>, Vec<Vec<f64>>) = mates
                        .iter()
                        .filter(|m| m.id != run_id)
                        .filter_map(|m| {
                            vector_at(&reg, m.id, epoch, &objectives, None, None).map(|v| (m.id, v))
                        })
                        .unzip();
                    beater = beaten_with_margin(&mine, &vectors, &objectives, section.prune_margin)
                        .map(|i| ids[i]);
                    (beater.is_some(), vectors.len())
                }
                PruneRule::None => (false, 0),
            };
            prune.then(|| {
                let what = if section.prune == PruneRule::Dominated {
                    format!(
                        "{} at epoch {epoch} are beaten in every objective by run {}'s (of {mates} sweep-mates)",
                        objectives.iter().map(|o| o.to_string()).collect::<Vec<_>>().join(", "),
                        beater.unwrap_or_default()
                    )
                } else {
                    format!("{} {value:.4} at epoch {epoch} loses to {mates} sweep-mates", cfg.checkpoint.monitor)
                };
                format!("{what} ({} rule)", section.prune)
            })
        },
    )))
}

/// The first of `others` that beats `mine` in every objective by at least `margin` of
/// `mine`'s value (the dominated rule).
pub fn beaten_with_margin(
    mine: &[f64],
    others: &[Vec<f64>],
    objectives: &[Objective],
    margin: f64,
) -> Option<usize> {
    others.iter().position(|v| {
        v.iter()
            .zip(mine)
            .zip(objectives)
            .all(|((theirs, ours), o)| {
                let by = margin * ours.abs().max(1e-12);
                if o.maximize {
                    *theirs >= ours + by
                } else {
                    *theirs <= ours - by
                }
            })
    })
}

/// Hyperband's brackets in the asynchronous form: trial `index` belongs to bracket
/// `index mod (s + 1)`, s the most halvings the epochs allow, whose first rung is
/// `warmup * eta^bracket`.
pub fn hyperband_warmup(index: usize, section: &SweepSection, epochs: usize) -> usize {
    let (warmup, eta) = (section.prune_warmup.max(1), section.eta.max(2));
    let mut brackets = 1;
    let mut rung = warmup;
    while rung.saturating_mul(eta) <= epochs {
        rung *= eta;
        brackets += 1;
    }
    warmup * eta.pow((index % brackets) as u32)
}

/// A run's objective values at `epoch`: epoch metrics at that epoch (`given` when the caller
/// has it before the registry does), export measurements from `deployed` or the registry.
/// The deployed file's val accuracy is measured once a trial ends: at an epoch, every trial's
/// float val accuracy stands in for it.
fn vector_at(
    reg: &Registry,
    run: i64,
    epoch: usize,
    objectives: &[Objective],
    given: Option<(Metric, f64)>,
    deployed: Option<&[(Metric, f64)]>,
) -> Option<Vec<f64>> {
    objectives
        .iter()
        .map(|o| {
            let metric = match o.metric {
                Metric::DeployedValAccuracy => Metric::ValAccuracy,
                m => m,
            };
            if let Some((_, v)) = given.filter(|(m, _)| *m == metric) {
                return Some(v);
            }
            if metric.key().0 == "deploy" {
                if let Some(d) = deployed {
                    return d.iter().find(|(m, _)| *m == metric).map(|(_, v)| *v);
                }
                return reg.metric_at(run, metric, None).ok().flatten();
            }
            reg.metric_at(run, metric, Some(epoch as i64))
                .ok()
                .flatten()
        })
        .collect()
}

/// The trial's deployed file measured from its last checkpoint (`probe.int8.onnx` or
/// `probe.int8.tflite` in its folder), as the sweep's worker measures it at the end: latency
/// and size.
fn measure_own_export(
    reg: &Registry,
    run: i64,
    format: config::DeployFormat,
) -> Option<Vec<(Metric, f64)>> {
    let row = reg.run(run).ok()?;
    let folder = crate::checkpoint::RunFolder::new(&reg.artifacts, run);
    let name = crate::export::measure::sweep_file(format)
        .2
        .replace("best.", "probe.");
    let m = crate::export::measure::sweep_checkpoint(
        &folder.path(crate::checkpoint::RunFile::Last),
        &row,
        format,
        &folder.dir().join(name),
        false,
    )
    .ok()?;
    Some(vec![
        (Metric::Int8LatencyMs, m.latency.median_ms),
        (Metric::SizeMb, m.size_bytes as f64 / 1e6),
    ])
}

/// Median rule: prune when `value` is worse than the median of sweep-mates at this epoch.
pub fn median_says_prune(value: f64, mates: &[f64], maximize: bool, min_runs: usize) -> bool {
    if mates.len() < min_runs.max(1) {
        return false;
    }
    let mut m = mates.to_vec();
    m.sort_by(f64::total_cmp);
    let median = if m.len() % 2 == 1 {
        m[m.len() / 2]
    } else {
        (m[m.len() / 2 - 1] + m[m.len() / 2]) / 2.0
    };
    if maximize {
        value < median
    } else {
        value > median
    }
}

/// Successive halving: at rung epochs (warmup * eta^k) keep the top 1/eta of the runs that got there.
pub fn halving_says_prune(
    epoch: usize,
    value: f64,
    mates: &[f64],
    maximize: bool,
    warmup: usize,
    eta: usize,
) -> bool {
    let eta = eta.max(2);
    let mut rung = warmup.max(1);
    while rung < epoch {
        match rung.checked_mul(eta) {
            Some(next) => rung = next,
            None => return false,
        }
    }
    if rung != epoch || mates.is_empty() {
        return false;
    }
    let better = mates
        .iter()
        .filter(|m| if maximize { **m > value } else { **m < value })
        .count();
    let keep = (mates.len() + 1).div_ceil(eta);
    better >= keep
}

/// Best metric per value of each swept key: (key, [(value, mean best, runs)]).
pub fn effects(trials: &[(Vec<String>, Option<f64>)]) -> Vec<(String, Vec<(String, f64, usize)>)> {
    let mut by_key: BTreeMap<String, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    for (overrides, best) in trials {
        let Some(best) = best else { continue };
        for o in overrides {
            if let Some((k, v)) = o.split_once('=') {
                by_key
                    .entry(k.into())
                    .or_default()
                    .entry(v.into())
                    .or_default()
                    .push(*best);
            }
        }
    }
    by_key
        .into_iter()
        .map(|(k, vals)| {
            let rows = vals
                .into_iter()
                .map(|(v, b)| (v, b.iter().sum::<f64>() / b.len() as f64, b.len()))
                .collect();
            (k, rows)
        })
        .collect()
}

/// A finished (or running) sweep: ranking, per-parameter effects, and an SVG of the val curves.
/// The runs are ranked by the sweep's monitor and mode, its `--set` overrides applied.
pub struct Report {
    pub text: String,
    pub json: serde_json::Value,
    /// The trials by their objectives (the workbench plots it).
    pub front: Front,
    /// Some (saying so) when the sweep measures its trials' deployed files, some trials have
    /// finished, and none of them could be measured.
    pub nothing_measured: Option<String>,
}

pub fn report(reg: &Registry, sweep_id: i64, svg: Option<&std::path::Path>) -> Result<Report> {
    let sweep = reg.sweep(sweep_id)?;
    let spec = SweepSpec::from_row(&sweep)?;
    let mut runs = reg.sweep_runs(sweep_id)?;
    let maximize = spec.maximize();
    // Each trial's value in the ranking: its best monitored value, or its deployed file's
    // measurement when that is the sweep's one objective.
    let value: BTreeMap<i64, Option<f64>> = runs
        .iter()
        .map(|r| Ok((r.id, spec.rank_value(reg, r)?)))
        .collect::<Result<_>>()?;
    runs.sort_by(|a, b| {
        let (x, y) = (
            value[&a.id].unwrap_or(f64::NAN),
            value[&b.id].unwrap_or(f64::NAN),
        );
        match (x.is_nan(), y.is_nan()) {
            (true, true) => a.id.cmp(&b.id),
            (true, false) => std::cmp::Ordering::Greater,
            (false, true) => std::cmp::Ordering::Less,
            _ if maximize => y.total_cmp(&x),
            _ => x.total_cmp(&y),
        }
    });
    // Each run's swept parameters, as `key=value` overrides.
    let is_swept = |o: &String| {
        o.split_once('=')
            .is_some_and(|(k, _)| spec.dims.iter().any(|(d, _)| d == k))
    };
    let params: BTreeMap<i64, Vec<String>> = runs
        .iter()
        .map(|r| {
            let all = r.override_list()?;
            Ok((r.id, all.into_iter().filter(is_swept).collect()))
        })
        .collect::<Result<_>>()?;
    let swept = |r: &RunRow| params[&r.id].clone();
    let mut text = format!(
        "sweep {} — {} ({}, pruning {}), {} runs, ranked by {}\n\n",
        sweep.id,
        sweep.name,
        sweep.method,
        sweep.prune,
        runs.len(),
        spec.ranking()
    );
    if let Some(job) = &sweep.slurm_job {
        text += &format!("workers: Slurm job {job}\n\n");
    }
    // The Slurm array task that last worked each trial, when any did.
    let on_slurm = runs.iter().any(|r| r.slurm_job.is_some());
    let slurm_col = |v: &str| {
        if on_slurm {
            format!(" {v:<10}")
        } else {
            String::new()
        }
    };
    // The finished trials whose deployed file could not be measured, with the reason.
    let unmeasured = unmeasured(reg, &spec, &runs)?;
    let value_col = if spec.deployed_ranking().is_some() {
        "deployed"
    } else {
        "best"
    };
    text += &format!(
        "{:>4} {:>4} {:<10} {:>6} {:>8}{}  {}\n",
        "rank",
        "run",
        "status",
        "epochs",
        value_col,
        slurm_col("slurm"),
        "parameters"
    );
    for (i, r) in runs.iter().enumerate() {
        let status = if unmeasured.contains_key(&r.id) {
            format!("{} (unmeasured)", r.display_status())
        } else {
            r.display_status().to_string()
        };
        text += &format!(
            "{:>4} {:>4} {:<10} {:>6} {:>8}{}  {}\n",
            i + 1,
            r.id,
            status,
            format!("{}/{}", r.epochs_done, r.epochs_total),
            crate::fmt::metric(value[&r.id]),
            slurm_col(r.slurm_job.as_deref().unwrap_or("-")),
            swept(r).join(" ")
        );
    }
    let finished = runs
        .iter()
        .filter(|r| matches!(r.status, RunStatus::Completed | RunStatus::Pruned))
        .count();
    if !unmeasured.is_empty() {
        let (format, kind, _) = crate::export::measure::sweep_file(spec.deploy_format());
        text += &format!(
            "\nunmeasured: {} of {finished} finished trials, whose {format} {kind} file could not be measured (left out of the front and the search):\n",
            unmeasured.len()
        );
        for (run, why) in &unmeasured {
            text += &format!("  run {run}: {why}\n");
        }
    }
    let trials: Vec<(Vec<String>, Option<f64>)> =
        runs.iter().map(|r| (swept(r), value[&r.id])).collect();
    let effects = effects(&trials);
    text += &format!(
        "\neffect of each parameter (mean best {} per value):\n",
        spec.ranked_name()
    );
    for (key, rows) in &effects {
        text += &format!("  {key}\n");
        if rows.len() > 6 {
            text += &format!(
                "    {} values, too many to list (see the importance below)\n",
                rows.len()
            );
            continue;
        }
        for (v, mean, n) in rows {
            text += &format!(
                "    {v:<14} {mean:.4}  ({n} run{})\n",
                if *n == 1 { "" } else { "s" }
            );
        }
    }
    let keys: Vec<String> = effects.iter().map(|(k, _)| k.clone()).collect();
    let measured: Vec<(Vec<String>, f64)> = runs
        .iter()
        .filter(|r| matches!(r.status, RunStatus::Completed | RunStatus::Pruned))
        .filter_map(|r| {
            let best = value[&r.id]?;
            let values: Option<Vec<String>> = keys
                .iter()
                .map(|k| {
                    params[&r.id]
                        .iter()
                        .find_map(|o| o.strip_prefix(&format!("{k}=")).map(str::to_string))
                })
                .collect();
            Some((values?, best))
        })
        .collect();
    let importance = importance::importance(&keys, &measured, 0);
    if !importance.is_empty() {
        text += &format!(
            "\nimportance: the share of the best {}'s variance each parameter explains (90% of {} bootstrap resamples of the trials between the brackets)\n",
            spec.ranked_name(),
            200
        );
        for i in &importance {
            text += &format!(
                "  {:<28} {:.2} [{:.2}, {:.2}]\n",
                i.key, i.share, i.low, i.high
            );
        }
        if measured.len() < importance::FEW_TRIALS {
            text += &format!(
                "  only {} finished trials: too few to say which parameters matter (at least {} are needed)\n",
                measured.len(),
                importance::FEW_TRIALS
            );
        }
    }
    let front = Front::of(reg, &runs, &spec, &params)?;
    text += &front.text();
    let metric = spec.monitor.metric();
    let curves: Vec<(i64, Vec<(i64, f64)>)> = runs
        .iter()
        .map(|r| Ok((r.id, reg.epoch_series(r.id, metric)?)))
        .collect::<Result<_>>()?;
    if let Some(path) = svg {
        plot_curves(
            path,
            &format!("sweep {} — {}", sweep.id, spec.monitor),
            &curves,
        )?;
        text += &format!("\ncurves: {}\n", path.display());
        if front.objectives.len() > 1 {
            let front_svg = path.with_file_name(format!(
                "{}-front.svg",
                path.file_stem().and_then(|s| s.to_str()).unwrap_or("sweep")
            ));
            plot_front(
                &front_svg,
                &format!("sweep {} — Pareto front", sweep.id),
                &front,
            )?;
            text += &format!("front: {}\n", front_svg.display());
        }
    }
    let nothing_measured = (finished > 0 && unmeasured.len() == finished).then(|| {
        format!(
            "no trial of sweep {} could be measured: {}",
            sweep.id,
            unmeasured.values().next().cloned().unwrap_or_default()
        )
    });
    let json = serde_json::json!({
        "sweep": sweep,
        "ranked_by": {"monitor": spec.monitor, "mode": if spec.maximize() { "max" } else { "min" }, "value": spec.ranked_name()},
        "ranking": runs.iter().map(|r| serde_json::json!({"run": r.id, "status": r.display_status(), "best": r.best_metric, "value": value[&r.id], "parameters": swept(r), "slurm_job": r.slurm_job, "unmeasured": unmeasured.get(&r.id)})).collect::<Vec<_>>(),
        "deploy_format": spec.measures_deployment().then(|| spec.deploy_format()),
        "unmeasured": unmeasured.iter().map(|(run, why)| serde_json::json!({"run": run, "reason": why})).collect::<Vec<_>>(),
        "nothing_measured": nothing_measured,
        "importance": importance,
        "importance_trials": measured.len(),
        "importance_too_few": measured.len() < importance::FEW_TRIALS,
        "objectives": front.objectives.iter().map(|o| o.to_string()).collect::<Vec<_>>(),
        "trials": front.json(false),
        "front": front.json(true),
        "effects": effects.iter().map(|(k, rows)| serde_json::json!({"key": k, "values": rows.iter().map(|(v, m, n)| serde_json::json!({"value": v, "mean_best": m, "runs": n})).collect::<Vec<_>>()})).collect::<Vec<_>>(),
    });
    Ok(Report {
        text,
        json,
        front,
        nothing_measured,
    })
}

/// The finished trials of a sweep that measures its deployed files whose file could not be
/// measured, with the reason the worker recorded.
fn unmeasured(reg: &Registry, spec: &SweepSpec, runs: &[RunRow]) -> Result<BTreeMap<i64, String>> {
    let mut out = BTreeMap::new();
    if !spec.measures_deployment() {
        return Ok(out);
    }
    for r in runs {
        if !matches!(r.status, RunStatus::Completed | RunStatus::Pruned)
            || reg.metric_at(r.id, Metric::Int8LatencyMs, None)?.is_some()
        {
            continue;
        }
        let why = match reg.last_sweep_export(r.id)? {
            Some(e) => e
                .error
                .unwrap_or_else(|| "its measurement was not recorded".into()),
            None if r.best_epoch.is_none() => "it has no best checkpoint".into(),
            None => "no measurement was recorded (its worker stopped before it)".into(),
        };
        out.insert(r.id, why);
    }
    Ok(out)
}

/// A sweep's trials by their objectives: each finished trial's values, whether it is within
/// its budgets, and its non-dominated front among the feasible ones (0 = the Pareto front).
#[derive(Debug, Default)]
pub struct Front {
    pub objectives: Vec<Objective>,
    pub trials: Vec<FrontTrial>,
}

#[derive(Debug)]
pub struct FrontTrial {
    pub run: i64,
    pub values: Vec<f64>,
    pub feasible: bool,
    /// None when infeasible.
    pub rank: Option<usize>,
    pub parameters: Vec<String>,
}

impl Front {
    /// The finished trials among `runs` by the spec's objectives, with their `params` (empty
    /// for a sweep without a `[sweep]` section).
    pub fn of(
        reg: &Registry,
        runs: &[RunRow],
        spec: &SweepSpec,
        params: &BTreeMap<i64, Vec<String>>,
    ) -> Result<Self> {
        let Some(section) = &spec.section else {
            return Ok(Self::default());
        };
        let objectives = spec.objectives.clone();
        let mut trials = Vec::new();
        for r in runs {
            if !matches!(r.status, RunStatus::Completed | RunStatus::Pruned) {
                continue;
            }
            let Some(values) = trial_values(reg, r, &objectives)? else {
                continue;
            };
            trials.push(FrontTrial {
                run: r.id,
                values,
                feasible: violation(reg, r, section)? <= 0.0,
                rank: None,
                parameters: params.get(&r.id).cloned().unwrap_or_default(),
            });
        }
        let feasible: Vec<usize> = (0..trials.len()).filter(|&i| trials[i].feasible).collect();
        let points: Vec<Vec<f64>> = feasible
            .iter()
            .map(|&i| {
                trials[i]
                    .values
                    .iter()
                    .zip(&objectives)
                    .map(|(v, o)| if o.maximize { -v } else { *v })
                    .collect()
            })
            .collect();
        for (&i, r) in feasible.iter().zip(front::ranks(&points)) {
            trials[i].rank = Some(r);
        }
        trials.sort_by_key(|t| (t.rank.unwrap_or(usize::MAX), t.run));
        Ok(Self { objectives, trials })
    }

    /// The non-dominated feasible trials.
    pub fn pareto(&self) -> impl Iterator<Item = &FrontTrial> {
        self.trials.iter().filter(|t| t.rank == Some(0))
    }

    fn text(&self) -> String {
        if self.objectives.len() < 2 {
            return String::new();
        }
        let names: Vec<String> = self.objectives.iter().map(|o| o.to_string()).collect();
        // Each column as wide as its name, 20 at least, with a space before it.
        let widths: Vec<usize> = names.iter().map(|n| n.len().max(19) + 1).collect();
        let mut text = format!(
            "\nPareto front ({} of {} measured trials; none of them is better than another in every objective):\n  {:>4}  {}  parameters\n",
            self.pareto().count(),
            self.trials.len(),
            "run",
            names
                .iter()
                .zip(&widths)
                .map(|(n, w)| format!("{n:>w$}"))
                .collect::<String>()
        );
        for t in self.pareto() {
            text += &format!(
                "  {:>4}  {}  {}\n",
                t.run,
                t.values
                    .iter()
                    .zip(&widths)
                    .map(|(v, w)| format!("{v:>w$.4}"))
                    .collect::<String>(),
                t.parameters.join(" ")
            );
        }
        let over = self.trials.iter().filter(|t| !t.feasible).count();
        if over > 0 {
            text += &format!("  {over} trials over the latency or size budget are left out\n");
        }
        text
    }

    fn json(&self, pareto_only: bool) -> Vec<serde_json::Value> {
        self.trials
            .iter()
            .filter(|t| !pareto_only || t.rank == Some(0))
            .map(|t| {
                let values: serde_json::Map<String, serde_json::Value> = self
                    .objectives
                    .iter()
                    .zip(&t.values)
                    .map(|(o, v)| (o.metric.objective_name(), serde_json::json!(v)))
                    .collect();
                serde_json::json!({"run": t.run, "values": values, "feasible": t.feasible, "front_rank": t.rank, "parameters": t.parameters})
            })
            .collect()
    }
}

/// The trials by their first two objectives, coloured by front (the Pareto front joined by a
/// line), infeasible ones grey.
fn plot_front(path: &std::path::Path, title: &str, front: &Front) -> Result<()> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("{}: {e}", path.display());
    let span = |k: usize| {
        let (lo, hi) = front
            .trials
            .iter()
            .map(|t| t.values[k])
            .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
        if lo > hi {
            (0.0, 1.0)
        } else {
            let pad = 0.05 * (hi - lo) + 1e-6;
            (lo - pad, hi + pad)
        }
    };
    let ((x0, x1), (y0, y1)) = (span(1), span(0));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .light_line_style(RGBColor(238, 238, 238))
            .bold_line_style(RGBColor(210, 210, 210))
            .x_desc(front.objectives[1].to_string())
            .y_desc(front.objectives[0].to_string())
            .draw()
            .map_err(|e| err(&e))?;
        let mut pareto: Vec<(f64, f64)> =
            front.pareto().map(|t| (t.values[1], t.values[0])).collect();
        pareto.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(pareto, RED.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label("Pareto front")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED.stroke_width(2)));
        for t in &front.trials {
            let color = match t.rank {
                Some(0) => RED.to_rgba(),
                Some(r) => Palette99::pick(r).mix(0.8),
                None => RGBAColor(160, 160, 160, 0.8),
            };
            chart
                .draw_series([Circle::new((t.values[1], t.values[0]), 5, color.filled())])
                .map_err(|e| err(&e))?;
            chart
                .draw_series([Text::new(
                    format!("{}", t.run),
                    (t.values[1], t.values[0]),
                    ("sans-serif", 12),
                )])
                .map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    crate::artifacts::write_atomic(path, svg.as_bytes())?;
    Ok(())
}

fn plot_curves(
    path: &std::path::Path,
    title: &str,
    curves: &[(i64, Vec<(i64, f64)>)],
) -> Result<()> {
    use plotters::prelude::*;
    let max_epoch = curves
        .iter()
        .flat_map(|c| c.1.iter().map(|p| p.0))
        .max()
        .unwrap_or(1)
        .max(1);
    let (lo, hi) = curves
        .iter()
        .flat_map(|c| c.1.iter().map(|p| p.1))
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo > hi {
        (0.0, 1.0)
    } else {
        (lo - 0.02 * (hi - lo + 1e-9), hi + 0.02 * (hi - lo + 1e-9))
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(1i64..max_epoch, lo..hi)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for (i, (run, points)) in curves.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label(format!("run {run}"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    crate::artifacts::write_atomic(path, svg.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "name = \"s\"\n[data]\nroot = \"d\"\n";

    fn section(text: &str) -> SweepSection {
        let full = format!("{BASE}{text}");
        config::parse(&full, &[]).unwrap().sweep.unwrap()
    }

    #[test]
    fn grid_is_the_cartesian_product() {
        let s = section(
            "[sweep]\nmethod = \"grid\"\n[sweep.parameters]\n\"train.lr\" = [0.001, 0.002, 0.004]\n\"model.variant\" = [\"xxs\", \"xs\"]\n",
        );
        let t = expand(BASE, &s).unwrap();
        assert_eq!(t.len(), 6);
        assert!(t.contains(&vec![
            "model.variant=xs".to_string(),
            "train.lr=0.004".to_string()
        ]));
    }

    #[test]
    fn random_draws_are_seeded_and_inside_their_distributions() {
        let text = "[sweep]\nmethod = \"random\"\nsamples = 200\nseed = 4\n[sweep.parameters]\n\
                    \"train.lr\" = { distribution = \"log_uniform\", min = 1e-4, max = 1e-2 }\n\
                    \"train.batch_size\" = { distribution = \"int_uniform\", min = 8, max = 16 }\n\
                    \"train.label_smoothing\" = { distribution = \"uniform\", min = 0.0, max = 0.2 }\n\
                    \"model.variant\" = { distribution = \"choice\", values = [\"xxs\", \"s\"] }\n";
        let s = section(text);
        let a = expand(BASE, &s).unwrap();
        assert_eq!(a, expand(BASE, &s).unwrap());
        assert_eq!(a.len(), 200);
        let vals = |key: &str| -> Vec<String> {
            a.iter()
                .flat_map(|t| {
                    t.iter()
                        .filter(|o| o.starts_with(key))
                        .map(|o| o.split_once('=').unwrap().1.to_string())
                })
                .collect()
        };
        let lrs: Vec<f64> = vals("train.lr")
            .iter()
            .map(|v| v.parse().unwrap())
            .collect();
        assert!(lrs.iter().all(|l| (1e-4..1e-2).contains(l)));
        // Log-uniform: about half of the draws fall below the geometric midpoint 1e-3.
        let below = lrs.iter().filter(|l| **l < 1e-3).count();
        assert!((70..130).contains(&below), "{below}");
        let bs: Vec<i64> = vals("train.batch_size")
            .iter()
            .map(|v| v.parse().unwrap())
            .collect();
        assert!(bs.iter().all(|b| (8..=16).contains(b)) && bs.contains(&8) && bs.contains(&16));
        let variants = vals("model.variant");
        assert!(
            variants.iter().all(|v| v == "xxs" || v == "s") && variants.iter().any(|v| v == "s")
        );
        let mut other = s.clone();
        other.seed = 5;
        assert_ne!(a, expand(BASE, &other).unwrap());
    }

    #[test]
    fn bad_keys_and_values_are_refused_with_their_path() {
        let e = expand(
            BASE,
            &section("[sweep]\n[sweep.parameters]\n\"train.lrr\" = [0.1]\n"),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("lrr"), "{e:#}");
        let e = expand(
            BASE,
            &section("[sweep]\n[sweep.parameters]\n\"train.batch_size\" = [0]\n"),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("train.batch_size"), "{e:#}");
        let e = expand(BASE, &section("[sweep]\nmethod = \"grid\"\n[sweep.parameters]\n\"train.lr\" = { distribution = \"uniform\", min = 1.0, max = 2.0 }\n"))
            .unwrap_err();
        assert!(format!("{e:#}").contains("grid sweeps take lists"), "{e:#}");
        let e = expand(BASE, &section("[sweep]\nmethod = \"random\"\nsamples = 2\n[sweep.parameters]\n\"train.lr\" = { distribution = \"gauss\", min = 1.0, max = 2.0 }\n"))
            .unwrap_err();
        assert!(
            format!("{e:#}").contains("train.lr") && format!("{e:#}").contains("gauss"),
            "{e:#}"
        );
    }

    #[test]
    fn the_dominated_rule_needs_a_mate_better_everywhere_by_the_margin() {
        let objectives = [
            Objective::parse("val_accuracy:max").unwrap(),
            Objective::parse("int8_latency_ms:min").unwrap(),
        ];
        let mine = [0.50, 10.0];
        let beaten = |other: [f64; 2], margin| {
            beaten_with_margin(&mine, &[other.to_vec()], &objectives, margin).is_some()
        };
        assert!(beaten([0.60, 8.0], 0.02), "more accurate and faster");
        assert!(
            !beaten([0.60, 12.0], 0.02),
            "more accurate but slower: not dominated"
        );
        assert!(!beaten([0.505, 8.0], 0.02), "within the margin on accuracy");
        assert!(beaten([0.505, 8.0], 0.0));
        assert!(
            beaten_with_margin(&mine, &[], &objectives, 0.02).is_none(),
            "no mates, no pruning"
        );
    }

    #[test]
    fn hyperband_brackets_start_their_halving_later_and_later() {
        let s = section(
            "[sweep]\nprune = \"hyperband\"\neta = 3\n[sweep.parameters]\n\"train.lr\" = [0.1]\n",
        );
        let warmups: Vec<usize> = (0..4).map(|i| hyperband_warmup(i, &s, 9)).collect();
        assert_eq!(warmups, vec![1, 3, 9, 1]);
        assert_eq!(
            hyperband_warmup(1, &s, 2),
            1,
            "one bracket when the epochs allow no halving"
        );
    }

    #[test]
    fn pruning_rules() {
        assert!(median_says_prune(0.3, &[0.5, 0.6], true, 2));
        assert!(!median_says_prune(0.7, &[0.5, 0.6], true, 2));
        assert!(
            !median_says_prune(0.3, &[0.5], true, 2),
            "too few sweep-mates"
        );
        assert!(median_says_prune(2.0, &[1.0, 1.5, 3.0], false, 2));
        // eta 2, warmup 1: rungs at epochs 1, 2, 4; keep the top half.
        assert!(halving_says_prune(2, 0.1, &[0.5, 0.6, 0.7], true, 1, 2));
        assert!(!halving_says_prune(2, 0.65, &[0.5, 0.6, 0.7], true, 1, 2));
        assert!(
            !halving_says_prune(3, 0.1, &[0.5, 0.6, 0.7], true, 1, 2),
            "not a rung"
        );
    }

    #[test]
    fn effects_average_best_metric_per_value() {
        let trials = vec![
            (vec!["train.lr=0.1".to_string()], Some(0.5)),
            (vec!["train.lr=0.1".to_string()], Some(0.7)),
            (vec!["train.lr=0.2".to_string()], Some(0.9)),
            (vec!["train.lr=0.3".to_string()], None),
        ];
        let e = effects(&trials);
        assert_eq!(e[0].0, "train.lr");
        assert_eq!(
            e[0].1,
            vec![("0.1".to_string(), 0.6, 2), ("0.2".to_string(), 0.9, 1)]
        );
    }
}
