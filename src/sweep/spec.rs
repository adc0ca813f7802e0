//! A sweep as the registry records it, read once: its stored experiment with the sweep's own
//! `--set` overrides applied, and what follows from that (the `[sweep]` section, the search
//! dimensions, the objectives, the monitor and mode the trials are ranked by). Every reader of
//! a sweep row works from a `SweepSpec`, so none can forget the overrides.

use super::{Space, dims, expand_with, objectives};
use crate::config::{self, ExperimentConfig, LoadedConfig, Mode, Monitor, SweepSection};
use crate::registry::{Registry, SweepRow};
use crate::status::Objective;
use anyhow::{Context, Result};

/// A sweep row's experiment with the sweep's overrides applied.
#[derive(Debug, Clone)]
pub struct SweepSpec {
    /// The sweep's id in the registry.
    pub id: i64,
    /// The experiment file the trials are built from, as stored (without the overrides).
    pub text: String,
    /// The file's path when the sweep was queued ("" when unknown).
    pub path: std::path::PathBuf,
    /// The sweep's `--set` overrides, in the order given; every trial's overrides start with them.
    pub overrides: Vec<String>,
    /// `text` with `overrides` applied.
    pub config: ExperimentConfig,
    /// The `[sweep]` section of `config`; None for a row that is no search (a seed group).
    pub section: Option<SweepSection>,
    /// The swept dimensions, each checked (empty without a section).
    pub dims: Vec<(String, Space)>,
    /// What the trials are judged by: the section's `objectives`, or the monitor and mode.
    pub objectives: Vec<Objective>,
    /// The metric the trials' best epochs are chosen by, and the report ranks by.
    pub monitor: Monitor,
    /// Whether a higher (`max`) or lower (`min`) `monitor` ranks first.
    pub mode: Mode,
}

impl SweepSpec {
    /// The spec of a sweep row: its stored config parsed with its recorded overrides. The only
    /// place a sweep row's config is parsed.
    pub fn from_row(row: &SweepRow) -> Result<Self> {
        let overrides = row.override_list()?;
        let config = config::parse(&row.config, &overrides)
            .with_context(|| format!("sweep {}: its stored config", row.id))?;
        let section = config.sweep.clone();
        let dims = match &section {
            Some(s) => dims(s).with_context(|| format!("sweep {}", row.id))?,
            None => Vec::new(),
        };
        let objectives = match &section {
            Some(s) => objectives(s, &config),
            None => vec![Objective {
                metric: config.checkpoint.monitor.metric(),
                maximize: config.checkpoint.mode.maximize(),
            }],
        };
        Ok(Self {
            id: row.id,
            text: row.config.clone(),
            path: row.path.clone().unwrap_or_default().into(),
            overrides,
            monitor: config.checkpoint.monitor,
            mode: config.checkpoint.mode,
            config,
            section,
            dims,
            objectives,
        })
    }

    /// The spec of sweep `id` in `reg`.
    pub fn load(reg: &Registry, id: i64) -> Result<Self> {
        Self::from_row(&reg.sweep(id)?)
    }

    /// Whether a higher ranking value ([`Self::rank_value`]) ranks first.
    pub fn maximize(&self) -> bool {
        match self.deployed_ranking() {
            Some(o) => o.maximize,
            None => self.mode.maximize(),
        }
    }

    /// The sweep's only objective when it is a measurement of the trials' deployed files
    /// (`deployed_val_accuracy:max`): the report then ranks by it, not by the monitor.
    pub fn deployed_ranking(&self) -> Option<Objective> {
        match self.objectives.as_slice() {
            [o] if o.is_deployed() => Some(*o),
            _ => None,
        }
    }

    /// What the report ranks by, e.g. `val_loss` or `deployed_val_accuracy`.
    pub fn ranked_name(&self) -> String {
        match self.deployed_ranking() {
            Some(o) => o.metric.objective_name(),
            None => self.monitor.to_string(),
        }
    }

    /// How the report orders the trials, e.g. "best val_loss (lowest first)" or
    /// "deployed_val_accuracy (highest first)".
    pub fn ranking(&self) -> String {
        let first = if self.maximize() { "highest" } else { "lowest" };
        match self.deployed_ranking() {
            Some(_) => format!("{} ({first} first)", self.ranked_name()),
            None => format!("best {} ({first} first)", self.monitor),
        }
    }

    /// A trial's value in the ranking: its best monitored value, or its deployed file's
    /// measurement ([`Self::deployed_ranking`]); None while it has none.
    pub fn rank_value(&self, reg: &Registry, run: &crate::registry::RunRow) -> Result<Option<f64>> {
        match self.deployed_ranking() {
            Some(o) => reg.metric_at(run.id, o.metric, None),
            None => Ok(run.best_metric),
        }
    }

    /// The file the trials are deployed as (and measured in).
    pub fn deploy_format(&self) -> config::DeployFormat {
        self.section
            .as_ref()
            .map(|s| s.deploy_format)
            .unwrap_or_default()
    }

    /// Whether the trials get their deployed file measured (an objective or a budget needs it).
    pub fn measures_deployment(&self) -> bool {
        self.section
            .as_ref()
            .is_some_and(|s| super::measures_deployment(s, &self.config))
    }

    /// The planned trials of a grid or random sweep (none for tpe, or without a section), each
    /// its `key=value` overrides after the sweep's own.
    pub fn planned(&self) -> Result<Vec<Vec<String>>> {
        match &self.section {
            Some(s) => expand_with(&self.text, &self.overrides, s),
            None => Ok(Vec::new()),
        }
    }

    /// A trial's experiment: the sweep's overrides, then the trial's, applied to the stored
    /// text; its `[sweep]` section dropped (a trial is one run).
    pub fn trial(&self, trial: &[String]) -> Result<LoadedConfig> {
        let overrides = [self.overrides.as_slice(), trial].concat();
        let mut config = config::parse(&self.text, &overrides)?;
        config.sweep = None;
        Ok(LoadedConfig {
            config,
            path: self.path.clone(),
            text: self.text.clone(),
            overrides,
        })
    }

    /// Why the sweep starts no more trials: its `budget_minutes` are over (None while not).
    pub fn out_of_time(&self, reg: &Registry) -> Result<Option<String>> {
        let Some(minutes) = self.section.as_ref().and_then(|s| s.budget_minutes) else {
            return Ok(None);
        };
        let id = self.id;
        Ok(reg
            .sweep_age_s(id)?
            .filter(|age| *age >= minutes * 60.0)
            .map(|_| format!("sweep {id}'s {minutes} minutes (sweep.budget_minutes) are over")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(config: &str, overrides: &[&str]) -> SweepRow {
        SweepRow {
            id: 4,
            experiment_id: None,
            name: "s".into(),
            config: config.into(),
            method: Default::default(),
            prune: Default::default(),
            created_at: "2026-01-01T00:00:00.000Z".into(),
            kind: crate::status::SweepKind::Sweep,
            path: Some("s.toml".into()),
            overrides: serde_json::to_string(overrides).unwrap(),
            started_s: None,
            sbatch: None,
            slurm_job: None,
        }
    }

    const FILE: &str = "name = \"s\"\n[data]\nroot = \".\"\n\
        [sweep]\n[sweep.parameters]\n\"train.lr\" = [0.1, 0.01]\n";

    #[test]
    fn the_overrides_decide_the_monitor_mode_and_objectives() {
        let plain = SweepSpec::from_row(&row(FILE, &[])).unwrap();
        assert_eq!(
            (plain.monitor, plain.mode),
            (Monitor::ValAccuracy, Mode::Max)
        );
        assert_eq!(plain.ranking(), "best val_accuracy (highest first)");
        let spec = SweepSpec::from_row(&row(
            FILE,
            &["checkpoint.monitor=val_loss", "checkpoint.mode=min"],
        ))
        .unwrap();
        assert_eq!((spec.monitor, spec.mode), (Monitor::ValLoss, Mode::Min));
        assert_eq!(spec.ranking(), "best val_loss (lowest first)");
        assert_eq!(spec.objectives.len(), 1);
        assert_eq!(spec.objectives[0].to_string(), "val_loss:min");
        assert_eq!(spec.dims.len(), 1);
        // A trial keeps the sweep's overrides ahead of its own, and is one run.
        let trial = spec.trial(&["train.lr=0.01".into()]).unwrap();
        assert_eq!(trial.overrides.len(), 3);
        assert_eq!(trial.config.checkpoint.monitor, Monitor::ValLoss);
        assert!(trial.config.sweep.is_none());
        assert_eq!(spec.planned().unwrap().len(), 2);
    }
}
