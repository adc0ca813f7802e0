//! "Is this difference real?" Two checkpoints on the same val images, compared pair by pair:
//! each side's accuracy with a Wilson interval, the paired difference with a bootstrap interval,
//! McNemar's exact test over the images where they disagree, per-class changes (Holm-adjusted,
//! the classes that got significantly worse flagged), the flipped images and a verdict in words.
//! A seed group against a seed group compares their runs' accuracies (Welch), and a run against
//! a group asks whether the run lies outside where another seed of the group would land.
//! `mvlab compare`, the `run --gate` check and the workbench's Checkpoints view come here.

use crate::checkpoint;
use crate::data::Dataset;
use crate::eval::{self, CheckpointEvaluation};
use crate::provenance::{self, Provenance};
use crate::registry::{Place, RunRow};
use crate::stats::{self, Interval};
use crate::status::{RunStatus, SweepKind};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Bootstrap resamples for the paired intervals (seeded: the same answer every time).
const RESAMPLES: usize = 2000;

/// What a command line names a side by.
#[derive(Debug, Clone)]
pub enum Side {
    /// A run's best checkpoint, or a checkpoint file; the run when it is one of ours.
    Checkpoint {
        label: String,
        path: PathBuf,
        run: Option<RunRow>,
    },
    /// A seed group (`gN`): its completed runs' best checkpoints.
    Group {
        id: i64,
        label: String,
        members: Vec<(PathBuf, RunRow)>,
    },
}

impl Side {
    pub fn label(&self) -> &str {
        match self {
            Side::Checkpoint { label, .. } | Side::Group { label, .. } => label,
        }
    }

    /// A run this side comes from (its val split is the default set of images).
    fn run(&self) -> Option<&RunRow> {
        match self {
            Side::Checkpoint { run, .. } => run.as_ref(),
            Side::Group { members, .. } => members.first().map(|(_, r)| r),
        }
    }
}

/// `RUN`, `FILE.bpk` or `gN` (a seed group).
pub fn side(db: &Place, spec: &str) -> Result<Side> {
    if let Some(id) = spec.strip_prefix('g').and_then(|n| n.parse::<i64>().ok()) {
        let reg = db.open()?;
        let group = reg.sweep(id)?;
        if group.kind != SweepKind::Seeds {
            bail!(
                "{spec}: sweep {id} is a hyperparameter sweep, not a seed group (`mvlab sweep report {id}` ranks its trials)"
            );
        }
        let mut members = Vec::new();
        for run in reg.sweep_runs(id)? {
            if run.status == RunStatus::Completed {
                let (path, _) = checkpoint::resolve(db, &run.id.to_string())?;
                members.push((path, run));
            }
        }
        if members.len() < 2 {
            bail!(
                "{spec}: group {id} has {} completed runs; a group comparison needs at least 2",
                members.len()
            );
        }
        return Ok(Side::Group {
            id,
            label: format!("group {id} ({} seeds)", members.len()),
            members,
        });
    }
    let (path, run) = checkpoint::resolve(db, spec)?;
    let label = match &run {
        Some(r) if spec.parse::<i64>().is_ok() => format!("run {}", r.id),
        _ => path.display().to_string(),
    };
    Ok(Side::Checkpoint { label, path, run })
}

/// A recorded checkpoint as a side ("run 3 best e7"), its file fetched where it is stored.
pub fn checkpoint_side(
    reg: &crate::registry::Registry,
    ck: &crate::registry::CheckpointRow,
) -> Result<Side> {
    let path = checkpoint::RunFolder::new(&reg.artifacts, ck.run_id).local_copy(ck)?;
    Ok(Side::Checkpoint {
        label: format!("run {} {} e{}", ck.run_id, ck.kind, ck.epoch),
        path,
        run: Some(reg.run(ck.run_id)?),
    })
}

/// One side of a paired comparison.
#[derive(Debug, Clone, Serialize)]
pub struct SideResult {
    pub label: String,
    pub right: usize,
    /// Accuracy with its 95% Wilson interval.
    pub accuracy: Interval,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassChange {
    pub class: String,
    pub images: usize,
    pub a: f64,
    pub b: f64,
    /// B minus A, with a paired bootstrap 95% interval.
    pub difference: Interval,
    /// McNemar's exact p over this class's images, Holm-adjusted across the classes.
    pub p_value: f64,
    /// Significantly worse in B at the comparison's alpha.
    pub worse: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlipDirection {
    /// A had it right, B has it wrong.
    Broke,
    /// A had it wrong, B has it right.
    Fixed,
}

#[derive(Debug, Clone, Serialize)]
pub struct Flip {
    pub image: PathBuf,
    pub truth: String,
    pub a: String,
    pub b: String,
    pub direction: FlipDirection,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    BBetter,
    BWorse,
    NoEvidence,
}

/// Two checkpoints on the same images.
#[derive(Debug, Clone, Serialize)]
pub struct Paired {
    pub images: usize,
    pub a: SideResult,
    pub b: SideResult,
    /// B minus A, paired bootstrap 95% interval.
    pub difference: Interval,
    /// Images only A got right, and only B.
    pub only_a_right: usize,
    pub only_b_right: usize,
    pub p_value: f64,
    pub per_class: Vec<ClassChange>,
    pub flips: Vec<Flip>,
    /// Paired val images needed to see a 1-point difference at this disagreement rate.
    pub images_for_one_point: Option<u64>,
}

/// A run's or group's accuracies, one per run, on the same images.
#[derive(Debug, Clone, Serialize)]
pub struct GroupResult {
    pub label: String,
    pub accuracies: Vec<f64>,
    pub mean: f64,
    pub std: f64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Test {
    Paired(Paired),
    /// Welch's two-sample interval over the groups' runs.
    Groups {
        a: GroupResult,
        b: GroupResult,
        difference: Interval,
        p_value: f64,
    },
    /// Whether B lies outside the 95% prediction interval of another seed of group A (or the
    /// other way round): t with k-1 degrees of freedom.
    RunAgainstGroup {
        a: GroupResult,
        b: GroupResult,
        difference: Interval,
        p_value: f64,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub a: String,
    pub b: String,
    pub classes: Vec<String>,
    pub alpha: f64,
    pub test: Test,
    pub verdict: Verdict,
    /// The verdict in words.
    pub summary: String,
    /// Why the numbers may not be comparable (different data or split).
    pub warnings: Vec<String>,
    /// Images that could not be read and were left out.
    pub skipped: usize,
}

impl Comparison {
    /// B is significantly worse overall, or on some class: what `run --gate` refuses.
    pub fn b_is_worse(&self) -> bool {
        self.verdict == Verdict::BWorse
            || matches!(&self.test, Test::Paired(p) if p.per_class.iter().any(|c| c.worse))
    }
}

/// Where the images come from: a folder, or the val split of the run named first (A's unless
/// told otherwise).
pub enum Images<'a> {
    Folder(&'a Path),
    ValOf(&'a RunRow),
    /// The val split of A's run (or B's when A has none).
    Default,
}

/// Compares B with A on the same images at significance level `alpha`.
pub fn compare(
    a: &Side,
    b: &Side,
    images: Images,
    alpha: f64,
    device: &burn::prelude::Device,
) -> Result<Comparison> {
    if !(alpha > 0.0 && alpha < 1.0) {
        bail!("alpha: expected a value in (0, 1), got {alpha}");
    }
    let (dataset, config) = match images {
        Images::Folder(dir) => eval::images(a.run().or(b.run()), Some(dir))?,
        Images::ValOf(run) => eval::images(Some(run), None)?,
        Images::Default => match a.run().or(b.run()) {
            Some(run) => eval::images(Some(run), None)?,
            None => {
                bail!("neither side is a run of this registry: name the images with --data DIR")
            }
        },
    };
    let evaluate = |path: &Path| -> Result<CheckpointEvaluation> {
        eval::checkpoint_on(path, &dataset, &config, device)
            .with_context(|| format!("evaluating {}", path.display()))
    };
    let warnings = provenance_warnings(a, b);
    let (test, skipped) = match (a, b) {
        (Side::Checkpoint { path: pa, .. }, Side::Checkpoint { path: pb, .. }) => {
            let (ea, eb) = (evaluate(pa)?, evaluate(pb)?);
            let skipped = ea.skipped.len().max(eb.skipped.len());
            (
                Test::Paired(paired(a.label(), b.label(), &dataset, &ea, &eb, alpha)),
                skipped,
            )
        }
        _ => {
            let accuracies = |side: &Side| -> Result<Vec<f64>> {
                match side {
                    Side::Checkpoint { path, .. } => Ok(vec![evaluate(path)?.evaluation.accuracy]),
                    Side::Group { members, .. } => members
                        .iter()
                        .map(|(p, _)| Ok(evaluate(p)?.evaluation.accuracy))
                        .collect(),
                }
            };
            let (ga, gb) = (
                group_result(a.label(), accuracies(a)?),
                group_result(b.label(), accuracies(b)?),
            );
            (two_sample(ga, gb), 0)
        }
    };
    let (verdict, summary) = verdict(&test, alpha);
    Ok(Comparison {
        a: a.label().to_string(),
        b: b.label().to_string(),
        classes: dataset.classes.clone(),
        alpha,
        test,
        verdict,
        summary,
        warnings,
        skipped,
    })
}

fn group_result(label: &str, accuracies: Vec<f64>) -> GroupResult {
    let (mean, std) = stats::mean_std(&accuracies).unwrap_or((f64::NAN, f64::NAN));
    GroupResult {
        label: label.to_string(),
        accuracies,
        mean,
        std,
    }
}

fn two_sample(a: GroupResult, b: GroupResult) -> Test {
    if a.accuracies.len() >= 2 && b.accuracies.len() >= 2 {
        let w = stats::welch(&a.accuracies, &b.accuracies);
        let (difference, p_value) = match w {
            Some(w) => (w.difference, w.p_value),
            None => (nan_interval(b.mean - a.mean), f64::NAN),
        };
        return Test::Groups {
            a,
            b,
            difference,
            p_value,
        };
    }
    // One run against a group: where would another seed of the group land?
    let (group, single, sign) = if a.accuracies.len() >= 2 {
        (&a, &b, 1.0)
    } else {
        (&b, &a, -1.0)
    };
    let k = group.accuracies.len() as f64;
    let spread = group.std * (1.0 + 1.0 / k).sqrt();
    let estimate = sign * (single.mean - group.mean);
    let (difference, p_value) = if spread > 0.0 {
        let half = stats::t_quantile(0.975, k - 1.0) * spread;
        let t = (single.mean - group.mean) / spread;
        (
            Interval {
                estimate,
                low: estimate - half,
                high: estimate + half,
            },
            stats::t_two_sided_p(t, k - 1.0),
        )
    } else {
        (nan_interval(estimate), f64::NAN)
    };
    Test::RunAgainstGroup {
        a,
        b,
        difference,
        p_value,
    }
}

fn nan_interval(estimate: f64) -> Interval {
    Interval {
        estimate,
        low: f64::NAN,
        high: f64::NAN,
    }
}

/// The paired comparison of two evaluations of the same dataset.
fn paired(
    a_label: &str,
    b_label: &str,
    dataset: &Dataset,
    ea: &CheckpointEvaluation,
    eb: &CheckpointEvaluation,
    alpha: f64,
) -> Paired {
    let pa: BTreeMap<usize, usize> = ea.evaluation.predictions.iter().copied().collect();
    let pb: BTreeMap<usize, usize> = eb.evaluation.predictions.iter().copied().collect();
    // Images both evaluated (an unreadable one is left out of both).
    let mut items = Vec::new();
    for (&i, &p) in &pa {
        if let (Some(&q), Some(item)) = (pb.get(&i), dataset.items.get(i)) {
            items.push((item, p, q));
        }
    }
    let a_right: Vec<bool> = items.iter().map(|(it, p, _)| *p == it.label).collect();
    let b_right: Vec<bool> = items.iter().map(|(it, _, q)| *q == it.label).collect();
    let n = items.len();
    let side = |label: &str, right: &[bool]| {
        let r = right.iter().filter(|&&x| x).count();
        let (low, high) =
            stats::wilson_interval(r as u64, n as u64).unwrap_or((f64::NAN, f64::NAN));
        SideResult {
            label: label.to_string(),
            right: r,
            accuracy: Interval {
                estimate: if n > 0 { r as f64 / n as f64 } else { f64::NAN },
                low,
                high,
            },
        }
    };
    let only = |x: &[bool], y: &[bool]| x.iter().zip(y).filter(|(a, b)| **a && !**b).count();
    let (only_a, only_b) = (only(&a_right, &b_right), only(&b_right, &a_right));
    let difference = stats::paired_bootstrap(&a_right, &b_right, RESAMPLES, 0)
        .unwrap_or_else(|| nan_interval(f64::NAN));
    let p_value = stats::mcnemar_exact(only_b as u64, only_a as u64);

    let mut per_class = Vec::new();
    for (k, class) in dataset.classes.iter().enumerate() {
        let subset: Vec<usize> = (0..n).filter(|&i| items[i].0.label == k).collect();
        if subset.is_empty() {
            continue;
        }
        let acc = |right: &[bool]| {
            subset.iter().filter(|&&i| right[i]).count() as f64 / subset.len() as f64
        };
        let b_only = subset
            .iter()
            .filter(|&&i| b_right[i] && !a_right[i])
            .count();
        let a_only = subset
            .iter()
            .filter(|&&i| a_right[i] && !b_right[i])
            .count();
        per_class.push(ClassChange {
            class: class.clone(),
            images: subset.len(),
            a: acc(&a_right),
            b: acc(&b_right),
            difference: stats::paired_bootstrap_subset(
                &a_right, &b_right, &subset, RESAMPLES, k as u64,
            )
            .unwrap_or_else(|| nan_interval(f64::NAN)),
            p_value: stats::mcnemar_exact(b_only as u64, a_only as u64),
            worse: false,
        });
    }
    holm(&mut per_class, alpha);

    let name = |c: usize| {
        dataset
            .classes
            .get(c)
            .cloned()
            .unwrap_or_else(|| c.to_string())
    };
    let flips = items
        .iter()
        .zip(a_right.iter().zip(&b_right))
        .filter(|(_, (ra, rb))| ra != rb)
        .map(|((it, p, q), (ra, _))| Flip {
            image: it.path.clone(),
            truth: name(it.label),
            a: name(*p),
            b: name(*q),
            direction: if *ra {
                FlipDirection::Broke
            } else {
                FlipDirection::Fixed
            },
        })
        .collect();
    let discordant = (only_a + only_b) as f64 / n.max(1) as f64;
    Paired {
        images: n,
        a: side(a_label, &a_right),
        b: side(b_label, &b_right),
        difference,
        only_a_right: only_a,
        only_b_right: only_b,
        p_value,
        per_class,
        flips,
        images_for_one_point: stats::mcnemar_sample_size(0.01, discordant),
    }
}

/// Holm's step-down adjustment of the per-class p-values (so that with ten classes one of them
/// is not flagged by chance one time in three), then the flags.
fn holm(classes: &mut [ClassChange], alpha: f64) {
    let mut order: Vec<usize> = (0..classes.len()).collect();
    order.sort_by(|&x, &y| classes[x].p_value.total_cmp(&classes[y].p_value));
    let m = classes.len();
    let mut running: f64 = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        let adjusted = (classes[i].p_value * (m - rank) as f64).min(1.0);
        running = running.max(adjusted);
        classes[i].p_value = running;
    }
    for c in classes.iter_mut() {
        c.worse = c.p_value < alpha && c.b < c.a;
    }
}

fn points(x: f64) -> String {
    format!("{:+.1}", x * 100.0)
}

fn p_text(p: f64) -> String {
    if p.is_nan() {
        "p undefined".into()
    } else if p < 0.001 {
        format!("p = {p:.1e}")
    } else {
        format!("p = {p:.3}")
    }
}

fn verdict(test: &Test, alpha: f64) -> (Verdict, String) {
    let (d, p, how) = match test {
        Test::Paired(x) => (&x.difference, x.p_value, "paired, McNemar"),
        Test::Groups {
            difference,
            p_value,
            ..
        } => (difference, *p_value, "two-sample over seeds, Welch"),
        Test::RunAgainstGroup {
            difference,
            p_value,
            ..
        } => (
            difference,
            *p_value,
            "a run against another seed of the group",
        ),
    };
    let measured = format!(
        "{} points (95% CI {}..{}), {}",
        points(d.estimate),
        points(d.low),
        points(d.high),
        p_text(p)
    );
    if p < alpha && d.estimate > 0.0 {
        return (Verdict::BBetter, format!("B is better: {measured} [{how}]"));
    }
    if p < alpha && d.estimate < 0.0 {
        return (Verdict::BWorse, format!("B is worse: {measured} [{how}]"));
    }
    let mut text = format!("no evidence of a difference ({}) [{how}]", p_text(p));
    match test {
        Test::Paired(x) if x.only_a_right + x.only_b_right == 0 => {
            text.push_str(": the two are right on the same images")
        }
        Test::Paired(x) => {
            if let Some(n) = x.images_for_one_point {
                text.push_str(&format!(
                    "; to see a 1-point difference you would need about {n} val images"
                ));
            }
        }
        Test::Groups { .. } | Test::RunAgainstGroup { .. } if p.is_nan() => {
            text.push_str("; the runs' accuracies do not vary, so no interval can be drawn")
        }
        _ => text.push_str("; more seeds would narrow the interval"),
    }
    (Verdict::NoEvidence, text)
}

/// Different data or split between the runs behind the two sides.
fn provenance_warnings(a: &Side, b: &Side) -> Vec<String> {
    let runs = |s: &Side| -> Vec<RunRow> {
        match s {
            Side::Checkpoint { run, .. } => run.iter().cloned().collect(),
            Side::Group { members, .. } => members.iter().map(|(_, r)| r.clone()).collect(),
        }
    };
    let mut out = Vec::new();
    // Each run's record; one that cannot be read is said instead of skipped silently.
    let mut records = |side: &Side| -> Vec<(i64, Provenance)> {
        let mut got = Vec::new();
        for r in runs(side) {
            match r.recorded_provenance() {
                Ok(p) => got.extend(p.map(|p| (r.id, p))),
                Err(e) => out.push(format!("{e:#}; its data and split cannot be checked")),
            }
        }
        got
    };
    let (ra, rb) = (records(a), records(b));
    for (ia, pa) in &ra {
        for (ib, pb) in &rb {
            for d in provenance::data_differences(pa, pb) {
                out.push(format!(
                    "run {ia} and run {ib}: {d}; some of these val images may have been trained on"
                ));
            }
        }
    }
    // A run on both sides (or in a group twice) would say the same thing twice.
    let mut seen = std::collections::HashSet::new();
    out.retain(|w| seen.insert(w.clone()));
    out
}

/// The comparison as text: both sides, the difference, the verdict, the classes and flips.
pub fn report(c: &Comparison) -> String {
    let mut out = String::new();
    let pct = |x: f64| format!("{:.1}%", x * 100.0);
    let interval = |i: &Interval| {
        format!(
            "{} (95% CI {}..{})",
            pct(i.estimate),
            pct(i.low),
            pct(i.high)
        )
    };
    match &c.test {
        Test::Paired(p) => {
            out.push_str(&format!("{} val images, paired\n", p.images));
            out.push_str(&format!("  A {}: {}\n", p.a.label, interval(&p.a.accuracy)));
            out.push_str(&format!("  B {}: {}\n", p.b.label, interval(&p.b.accuracy)));
            out.push_str(&format!(
                "  only A right on {}, only B right on {} (McNemar exact {})\n",
                p.only_a_right,
                p.only_b_right,
                p_text(p.p_value)
            ));
        }
        Test::Groups { a, b, .. } | Test::RunAgainstGroup { a, b, .. } => {
            for (tag, g) in [("A", a), ("B", b)] {
                out.push_str(&format!(
                    "  {tag} {}: {} ± {} over {} run(s)\n",
                    g.label,
                    pct(g.mean),
                    pct(if g.std.is_nan() { 0.0 } else { g.std }),
                    g.accuracies.len()
                ));
            }
        }
    }
    out.push_str(&format!("{}\n", c.summary));
    if let Test::Paired(p) = &c.test {
        out.push_str("\nper class (B minus A, points; p Holm-adjusted):\n");
        for k in &p.per_class {
            out.push_str(&format!(
                "  {:<16} {:>4} images  {} -> {}  {} ({}..{})  {}{}\n",
                crate::fmt::truncate(&k.class, 16),
                k.images,
                pct(k.a),
                pct(k.b),
                points(k.difference.estimate),
                points(k.difference.low),
                points(k.difference.high),
                p_text(k.p_value),
                if k.worse { "  WORSE" } else { "" }
            ));
        }
        if !p.flips.is_empty() {
            out.push_str(&format!("\nflipped images ({}):\n", p.flips.len()));
            for f in p.flips.iter().take(20) {
                out.push_str(&format!(
                    "  {} {}: truth {}, A {}, B {}\n",
                    match f.direction {
                        FlipDirection::Broke => "right->wrong",
                        FlipDirection::Fixed => "wrong->right",
                    },
                    f.image.display(),
                    f.truth,
                    f.a,
                    f.b
                ));
            }
            if p.flips.len() > 20 {
                out.push_str(&format!(
                    "  … {} more (--json lists all)\n",
                    p.flips.len() - 20
                ));
            }
        }
    }
    for w in &c.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    if c.skipped > 0 {
        out.push_str(&format!("{} unreadable image(s) left out\n", c.skipped));
    }
    out
}

/// One self-contained HTML page of the flipped images (inlined as PNG thumbnails) to share.
pub fn html(c: &Comparison) -> String {
    use base64::Engine;
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let mut page = format!(
        "<!doctype html><meta charset=utf-8><title>mvlab compare</title>\
         <style>body{{font-family:sans-serif}}figure{{display:inline-block;margin:6px;width:160px;font-size:12px}}\
         img{{width:160px;image-rendering:pixelated}}.broke{{color:#b00}}.fixed{{color:#070}}</style>\
         <h1>A: {} &nbsp; B: {}</h1><p>{}</p>",
        esc(&c.a),
        esc(&c.b),
        esc(&c.summary)
    );
    for w in &c.warnings {
        page.push_str(&format!("<p><b>warning:</b> {}</p>", esc(w)));
    }
    let Test::Paired(p) = &c.test else {
        page.push_str("<p>A group comparison has no per-image flips.</p>");
        return page;
    };
    page.push_str(&format!("<h2>{} flipped images</h2>", p.flips.len()));
    for f in &p.flips {
        let thumb = image::open(&f.image).ok().and_then(|im| {
            let mut png = Vec::new();
            im.thumbnail(160, 160)
                .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .ok()?;
            Some(base64::engine::general_purpose::STANDARD.encode(png))
        });
        let (class, what) = match f.direction {
            FlipDirection::Broke => ("broke", "right → wrong"),
            FlipDirection::Fixed => ("fixed", "wrong → right"),
        };
        page.push_str(&format!(
            "<figure>{}<figcaption class={class}>{what}<br>truth {}<br>A {} · B {}<br><small>{}</small></figcaption></figure>",
            match thumb {
                Some(b64) => format!("<img src=\"data:image/png;base64,{b64}\">"),
                None => "<p>(unreadable)</p>".into(),
            },
            esc(&f.truth),
            esc(&f.a),
            esc(&f.b),
            esc(&f.image.display().to_string())
        ));
    }
    page
}

/// A seed group's runs summarised: the monitored metric's best and final values as mean ± std
/// over its completed runs.
#[derive(Debug, Clone, Serialize)]
pub struct GroupSummary {
    pub id: i64,
    pub name: String,
    pub monitor: crate::config::Monitor,
    pub runs: Vec<i64>,
    pub completed: usize,
    pub best_mean: Option<f64>,
    pub best_std: Option<f64>,
    pub final_mean: Option<f64>,
    pub final_std: Option<f64>,
}

impl GroupSummary {
    /// One line for people: "group g3 quickstart: 3/3 runs completed; val_accuracy best
    /// 0.9410 ± 0.0840, final ...".
    pub fn line(&self) -> String {
        let pm = |m: Option<f64>, s: Option<f64>| match (m, s) {
            (Some(m), Some(s)) => format!("{m:.4} ± {s:.4}"),
            _ => "-".into(),
        };
        format!(
            "group g{} {}: {}/{} runs completed; {} best {}, final {}",
            self.id,
            self.name,
            self.completed,
            self.runs.len(),
            self.monitor,
            pm(self.best_mean, self.best_std),
            pm(self.final_mean, self.final_std)
        )
    }
}

/// Every seed group of the registry, newest first.
pub fn groups(reg: &crate::registry::Registry) -> Result<Vec<GroupSummary>> {
    groups_of(reg, &reg.runs()?, &reg.sweeps()?)
}

/// [`groups`] from runs and sweeps already read (the workbench's snapshot): only the final
/// values of completed runs are read.
pub fn groups_of(
    reg: &crate::registry::Registry,
    all_runs: &[RunRow],
    sweeps: &[crate::registry::SweepRow],
) -> Result<Vec<GroupSummary>> {
    let mut out = Vec::new();
    for g in sweeps.iter().filter(|s| s.kind == SweepKind::Seeds) {
        let mut runs: Vec<&RunRow> = all_runs
            .iter()
            .filter(|r| r.sweep_id == Some(g.id))
            .collect();
        runs.sort_by_key(|r| r.id);
        let done: Vec<&RunRow> = runs
            .iter()
            .copied()
            .filter(|r| r.status == RunStatus::Completed)
            .collect();
        let best: Vec<f64> = done.iter().filter_map(|r| r.best_metric).collect();
        let mut last = Vec::new();
        for r in &done {
            if let Some((_, v)) = reg.epoch_series(r.id, r.monitor.metric())?.last() {
                last.push(*v);
            }
        }
        let (best_mean, best_std) = split(stats::mean_std(&best));
        let (final_mean, final_std) = split(stats::mean_std(&last));
        out.push(GroupSummary {
            id: g.id,
            name: g.name.clone(),
            monitor: runs.first().map(|r| r.monitor).unwrap_or_default(),
            runs: runs.iter().map(|r| r.id).collect(),
            completed: done.len(),
            best_mean,
            best_std,
            final_mean,
            final_std,
        });
    }
    Ok(out)
}

fn split(x: Option<(f64, f64)>) -> (Option<f64>, Option<f64>) {
    (x.map(|v| v.0), x.map(|v| v.1))
}
