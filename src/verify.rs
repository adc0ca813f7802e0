//! `mvlab rerun RUN --verify`: retrains a run's first steps from its recorded config on its
//! recorded data, in a scratch folder, and checks that each step's loss matches the one the
//! registry recorded. When they do not match, it names what changed since the run (the data's
//! fingerprint, with the files where the cache still knows them; the train/val lists; mvlab's
//! version or features; the device).

use crate::artifacts::{Artifacts, Owner};
use crate::checkpoint::RunFolder;
use crate::config;
use crate::data::fingerprint;
use crate::provenance::{self, Provenance};
use crate::registry::Registry;
use crate::status::Metric;
use crate::train::{self, Control, RunEvent, RunSpec};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// One step's loss, as recorded and as retrained.
#[derive(Debug, Clone, Serialize)]
pub struct StepCheck {
    pub step: i64,
    pub recorded: f64,
    pub rerun: f64,
    /// |rerun - recorded| / max(|recorded|, 1e-6).
    pub relative: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub run: i64,
    pub device: String,
    pub tolerance: f64,
    pub steps: Vec<StepCheck>,
    /// Every compared step's loss is within the tolerance.
    pub losses_match: bool,
    /// The dataset or the train/val lists differ from the recorded ones.
    pub data_changed: bool,
    /// The losses match on the recorded data.
    pub passed: bool,
    /// What differs from the run's recorded provenance (empty: nothing found).
    pub changed: Vec<String>,
}

/// Retrains `steps` steps of `run` (by default its whole first epoch) and compares their
/// losses with the recorded ones, within `tolerance` (relative). `on_step(done, of)` follows
/// the retraining.
pub fn rerun(
    reg: &Registry,
    run: i64,
    steps: Option<usize>,
    tolerance: f64,
    mut on_step: impl FnMut(usize, usize),
) -> Result<Verification> {
    let row = reg.run(run)?;
    let cfg = row.recorded_config()?;
    let steps = match steps {
        Some(n) => n,
        None => reg
            .metrics(run)?
            .iter()
            .filter(|m| m.metric == Metric::StepLoss && m.epoch == 1)
            .count(),
    };
    let recorded: Vec<(i64, f64)> = reg
        .series(run, Metric::StepLoss)?
        .into_iter()
        .filter(|&(step, _)| step >= 1 && step <= steps as i64)
        .collect();
    if recorded.is_empty() {
        bail!("run {run} recorded no training step to check against");
    }
    let steps = recorded.len();
    let device = crate::device::select(&cfg.train.device)?;
    let was = row.recorded_provenance()?;

    // The scratch run folder: nothing of the run's own folder is read or written.
    let scratch = tempfile::Builder::new()
        .prefix("mvlab-rerun-")
        .tempdir()
        .context("cannot create a scratch folder for the rerun")?;
    let spec = RunSpec {
        config: cfg.clone(),
        folder: RunFolder::new(
            &Artifacts::Local {
                root: scratch.path().to_path_buf(),
                owner: Owner::scratch(),
            },
            run,
        ),
        resume: false,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let control = Control {
        cancel: stop.clone(),
        ..Control::default()
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let label = device.label.clone();
    let mut losses: Vec<(i64, f64)> = Vec::new();
    let mut failure = None;
    std::thread::scope(|s| {
        let (spec, device, control) = (&spec, &device, &control);
        // The sender moves to the training thread, so the loop below also ends if it dies.
        s.spawn(move || train::run(spec, device, &tx, control));
        // Training ends with `Finished`; it is stopped after the last compared step.
        for event in rx.iter() {
            match event {
                RunEvent::Step { step, loss, .. } => {
                    if step <= steps {
                        losses.push((step as i64, loss));
                        on_step(losses.len(), steps);
                    }
                    if step >= steps {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
                RunEvent::Finished(outcome) => {
                    if let train::Outcome::Failed(e) = outcome {
                        failure = Some(e);
                    }
                    break;
                }
                _ => {}
            }
        }
    });
    if losses.len() < steps {
        match failure {
            Some(e) => bail!("the rerun of run {run} failed: {e}"),
            None if losses.is_empty() => {
                bail!("the rerun of run {run} stopped before its first step")
            }
            None => {}
        }
    }

    let mut checks = Vec::new();
    for (step, value) in &recorded {
        let rerun = losses
            .iter()
            .find(|(s, _)| s == step)
            .map_or(f64::NAN, |&(_, l)| l);
        checks.push(StepCheck {
            step: *step,
            recorded: *value,
            rerun,
            relative: (rerun - value).abs() / value.abs().max(1e-6),
        });
    }
    let losses_match = checks.iter().all(|c| c.relative <= tolerance);
    let (changed, data_changed) = match &was {
        Some(p) => differences(p, &cfg, &label)?,
        None => (
            vec!["run recorded no provenance (it predates it): causes cannot be named".into()],
            false,
        ),
    };
    // Matching losses on other data (a changed val image, say) do not reproduce the run.
    let passed = losses_match && !data_changed;
    Ok(Verification {
        run,
        device: label,
        tolerance,
        steps: checks,
        losses_match,
        data_changed,
        passed,
        changed,
    })
}

/// What differs between a run's recorded provenance and now, and whether the data is part of it.
fn differences(
    was: &Provenance,
    cfg: &config::ExperimentConfig,
    device: &str,
) -> Result<(Vec<String>, bool)> {
    // The caches name the files as they were last fingerprinted: read before fingerprinting
    // again rewrites them.
    let roots = provenance::data_roots(cfg);
    let cached: Vec<Option<Vec<fingerprint::FileEntry>>> = roots
        .iter()
        .map(|root| fingerprint::cached_entries(&provenance::cache_file(root)))
        .collect();
    let (dataset, entries) = provenance::dataset_fingerprint(cfg)?;
    let (train, val) = crate::data::load_splits(&cfg.data, cfg.split_seed())?;
    let now = Provenance {
        dataset,
        split_sha256: Some(provenance::split_sha256(cfg, &train, &val)),
        ..Provenance::default()
    };
    let mut out = provenance::data_differences(was, &now);
    if was.dataset.is_some() && was.dataset != now.dataset {
        for ((root, cached), entries) in roots.iter().zip(cached).zip(&entries) {
            let Some(cached) = cached else { continue };
            let c = fingerprint::changes(&cached, entries);
            for (what, list) in [
                ("changed", &c.changed),
                ("added", &c.added),
                ("removed", &c.removed),
            ] {
                for path in list.iter().take(5) {
                    out.push(format!("  {what}: {}", root.join(path).display()));
                }
                if list.len() > 5 {
                    out.push(format!("  and {} more {what}", list.len() - 5));
                }
            }
        }
    }
    let data_changed = !out.is_empty();
    let version = env!("CARGO_PKG_VERSION");
    if was.version != version {
        out.push(format!(
            "mvlab's version: {} then, {version} now",
            was.version
        ));
    }
    let features = provenance::features();
    if was.features != features {
        out.push(format!(
            "cargo features: [{}] then, [{}] now",
            was.features.join(", "),
            features.join(", ")
        ));
    }
    if let Some(d) = &was.device
        && d != device
    {
        out.push(format!("the device: {d} then, {device} now"));
    }
    let driver = provenance::driver();
    if was.driver.is_some() && was.driver != driver {
        out.push(format!(
            "the driver: {} then, {} now",
            was.driver.as_deref().unwrap_or("-"),
            driver.as_deref().unwrap_or("none")
        ));
    }
    Ok((out, data_changed))
}

/// The verdict as text.
pub fn report(v: &Verification) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let worst = v
        .steps
        .iter()
        .map(|c| c.relative)
        .fold(0.0f64, |a, b| if b.is_nan() || b > a { b } else { a });
    let _ = writeln!(
        out,
        "run {}: {} steps retrained on {}; largest relative loss difference {:.2e} (tolerance {:.0e})",
        v.run,
        v.steps.len(),
        v.device,
        worst,
        v.tolerance
    );
    for c in v
        .steps
        .iter()
        .filter(|c| !(c.relative <= v.tolerance))
        .take(5)
    {
        let _ = writeln!(
            out,
            "  step {}: recorded loss {:.6}, rerun {:.6}",
            c.step, c.recorded, c.rerun
        );
    }
    let _ = match (v.losses_match, v.data_changed) {
        (true, false) => writeln!(out, "verified: the losses match"),
        (true, true) => writeln!(
            out,
            "NOT reproduced: the losses match, but the data is not the data the run trained on"
        ),
        (false, _) => writeln!(out, "NOT reproduced: the losses differ"),
    };
    if v.changed.is_empty() {
        if !v.losses_match {
            let _ = writeln!(
                out,
                "nothing recorded changed (data, lists, version, features, device): the difference is in the computation itself"
            );
        }
    } else {
        let _ = writeln!(out, "changed since the run:");
        for c in &v.changed {
            let _ = writeln!(out, "  {c}");
        }
    }
    out
}
