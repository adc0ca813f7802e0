//! The next trial of a tpe sweep, proposed from the sweep's whole history each time a worker
//! asks (so any worker on any machine, after any crash, proposes from the same facts): a few
//! seeded random draws first, then tree-structured Parzen estimators told every finished trial
//! by its rank and every pending one as the worst so far (the "constant liar", so parallel
//! workers spread out instead of proposing alike). By default one estimator over all
//! parameters together (`joint`, as Optuna's multivariate TPE); with `multivariate = false`
//! one per parameter (the `tpe` crate).
//!
//! Ranks: with one objective, by its value; with several, by non-dominated front (MOTPE's
//! split: the best fronts are the "good" trials), within a front by crowding distance.
//! Infeasible trials (over a latency or size budget) rank after every feasible one, by how far
//! over they are; pruned trials rank by the values they had reached.

use super::Space;
use super::front;
use rand_tpe::SeedableRng as _;
use std::collections::BTreeMap;

/// A trial as the sampler sees it.
#[derive(Debug, Clone)]
pub struct Trial {
    pub params: BTreeMap<String, toml::Value>,
    pub state: TrialState,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TrialState {
    /// Queued or training: its result is not known yet.
    Pending,
    /// Its objectives, oriented so that lower is better, and how far over its budgets it is
    /// (0 when feasible).
    Done { oriented: Vec<f64>, violation: f64 },
}

/// How a sweep searches.
pub struct Search<'a> {
    pub dims: &'a [(String, Space)],
    pub seed: u64,
    /// Random draws before the estimators take over.
    pub startup: usize,
    /// One Parzen estimator over all parameters together (their interactions seen), rather
    /// than one per parameter.
    pub multivariate: bool,
}

/// Trials that tell the estimators which region is good: the best tenth (Optuna's and the
/// crate's default; a quarter spread the good region too wide on the standard functions).
const GAMMA: f64 = 0.1;
/// Candidates drawn from the good region's density, the best ratio of densities wins.
const CANDIDATES: usize = 24;

impl Search<'_> {
    /// The parameters of trial number `index` (0-based, in the order trials were asked).
    pub fn propose(&self, index: usize, history: &[Trial]) -> Vec<(String, toml::Value)> {
        let done = history
            .iter()
            .filter(|t| matches!(t.state, TrialState::Done { .. }))
            .count();
        let seed = self.seed ^ (index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        if done < self.startup.max(1) {
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
            return self
                .dims
                .iter()
                .map(|(k, s)| (k.clone(), s.sample(&mut rng)))
                .collect();
        }
        let scores = scores(history);
        if self.multivariate {
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
            return joint::propose(self.dims, history, &scores, &mut rng);
        }
        let mut rng = rand_tpe::rngs::StdRng::seed_from_u64(seed);
        self.dims
            .iter()
            .map(|(key, space)| {
                let value = match Encoding::of(space) {
                    Encoding::Constant(v) => v,
                    encoding => {
                        let mut tpe = tpe::TpeOptimizerBuilder::new()
                            .gamma(GAMMA)
                            .candidates(CANDIDATES)
                            .build(encoding.estimator(), encoding.range())
                            .expect("gamma and candidates are valid");
                        for (trial, score) in history.iter().zip(&scores) {
                            if let Some(x) = trial.params.get(key).and_then(|v| encoding.encode(v))
                            {
                                // In range by construction; a value from an edited space is left out.
                                let _ = tpe.tell(x, *score);
                            }
                        }
                        let x = tpe
                            .ask(&mut rng)
                            .expect("a Parzen estimator always samples");
                        encoding.decode(x)
                    }
                };
                (key.clone(), value)
            })
            .collect()
    }
}

/// Each trial's score for the estimators (lower is better): its rank among the finished
/// trials, the pending ones one worse than the worst.
fn scores(history: &[Trial]) -> Vec<f64> {
    let done: Vec<(usize, &Vec<f64>, f64)> = history
        .iter()
        .enumerate()
        .filter_map(|(i, t)| match &t.state {
            TrialState::Done {
                oriented,
                violation,
            } => Some((i, oriented, *violation)),
            TrialState::Pending => None,
        })
        .collect();
    let feasible: Vec<&(usize, &Vec<f64>, f64)> = done.iter().filter(|d| d.2 <= 0.0).collect();
    let points: Vec<Vec<f64>> = feasible.iter().map(|d| d.1.clone()).collect();
    let ranks = front::ranks(&points);
    // Crowding within each front: the lonelier point of a front is the better one.
    let mut crowd = vec![0.0; points.len()];
    for r in 0..=ranks.iter().copied().max().unwrap_or(0) {
        let members: Vec<usize> = (0..points.len()).filter(|&i| ranks[i] == r).collect();
        let of: Vec<Vec<f64>> = members.iter().map(|&i| points[i].clone()).collect();
        for (m, c) in members.iter().zip(front::crowding(&of)) {
            crowd[*m] = c;
        }
    }
    let mut order: Vec<usize> = (0..feasible.len()).collect();
    order.sort_by(|&a, &b| {
        ranks[a]
            .cmp(&ranks[b])
            .then(crowd[b].total_cmp(&crowd[a]))
            .then(points[a][0].total_cmp(&points[b][0]))
    });
    let mut score = vec![f64::NAN; history.len()];
    for (position, &f) in order.iter().enumerate() {
        score[feasible[f].0] = position as f64;
    }
    let mut over: Vec<&(usize, &Vec<f64>, f64)> = done.iter().filter(|d| d.2 > 0.0).collect();
    over.sort_by(|a, b| a.2.total_cmp(&b.2));
    for (position, d) in over.iter().enumerate() {
        score[d.0] = (feasible.len() + position) as f64;
    }
    let liar = done.len() as f64;
    score
        .iter()
        .map(|s| if s.is_nan() { liar } else { *s })
        .collect()
}

/// How one dimension is laid out for its estimator: a real interval (logarithmic for log
/// distributions, integers as unit cells) or the index of a choice.
enum Encoding<'a> {
    Constant(toml::Value),
    Real { lo: f64, hi: f64, log: bool },
    Integer { lo: i64, hi: i64 },
    Choice(&'a [toml::Value]),
}

impl<'a> Encoding<'a> {
    fn of(space: &'a Space) -> Self {
        match space {
            Space::Values(v) if v.len() == 1 => Encoding::Constant(v[0].clone()),
            Space::Values(v) => Encoding::Choice(v),
            Space::Uniform(a, b) if a == b => Encoding::Constant(toml::Value::Float(*a)),
            Space::LogUniform(a, b) if a == b => Encoding::Constant(toml::Value::Float(*a)),
            Space::IntUniform(a, b) if a == b => Encoding::Constant(toml::Value::Integer(*a)),
            Space::Uniform(a, b) => Encoding::Real {
                lo: *a,
                hi: *b,
                log: false,
            },
            Space::LogUniform(a, b) => Encoding::Real {
                lo: a.ln(),
                hi: b.ln(),
                log: true,
            },
            Space::IntUniform(a, b) => Encoding::Integer { lo: *a, hi: *b },
        }
    }

    fn range(&self) -> tpe::range::Range {
        let (start, end) = match self {
            Encoding::Real { lo, hi, .. } => (*lo, *hi),
            Encoding::Integer { lo, hi } => (*lo as f64, *hi as f64 + 1.0),
            Encoding::Choice(v) => (0.0, v.len() as f64),
            Encoding::Constant(_) => (0.0, 1.0),
        };
        tpe::range(start, end).expect("a dimension's range is not empty")
    }

    fn estimator(&self) -> tpe::density_estimation::DefaultEstimatorBuilder {
        match self {
            Encoding::Choice(_) => tpe::histogram_estimator(),
            _ => tpe::parzen_estimator(),
        }
    }

    fn encode(&self, v: &toml::Value) -> Option<f64> {
        let number = v.as_float().or_else(|| v.as_integer().map(|i| i as f64));
        match self {
            Encoding::Real { lo, hi, log } => {
                let x = number?;
                let x = if *log { x.ln() } else { x };
                // The interval is half-open: the top value is told just below it.
                Some(x.clamp(*lo, hi - (hi - lo) * 1e-9))
            }
            Encoding::Integer { lo, hi } => {
                let x = number?;
                Some(x.clamp(*lo as f64, *hi as f64) + 0.5)
            }
            Encoding::Choice(values) => values.iter().position(|c| c == v).map(|i| i as f64 + 0.5),
            Encoding::Constant(_) => None,
        }
    }

    fn decode(&self, x: f64) -> toml::Value {
        match self {
            Encoding::Real { lo, hi, log } => {
                let x = x.clamp(*lo, *hi);
                toml::Value::Float(if *log { x.exp() } else { x })
            }
            Encoding::Integer { lo, hi } => {
                toml::Value::Integer((x.floor() as i64).clamp(*lo, *hi))
            }
            Encoding::Choice(values) => {
                values[(x.floor().max(0.0) as usize).min(values.len() - 1)].clone()
            }
            Encoding::Constant(v) => v.clone(),
        }
    }
}

/// The multivariate estimator (as Optuna's `multivariate=True`): each trial a kernel over all
/// parameters at once in the unit cube, Gaussian per real dimension (bandwidth 0.2 ·
/// n^(-1/(d+4)), at least 1/min(100, n+1)), truncated to the cube, and for a choice the
/// trial's value with weight 1 - ε; plus a wide prior kernel. Candidates are drawn from the
/// good trials' mixture and the one with the best log ratio of good to bad density wins.
mod joint {
    use super::{CANDIDATES, Encoding, Trial};
    use crate::sweep::Space;
    use rand::Rng;

    /// The weight a choice kernel leaves to the other values.
    const EPSILON: f64 = 0.2;

    /// One trial in the unit cube: a position per real dimension, an index per choice.
    #[derive(Clone)]
    enum Coord {
        Real(f64),
        Choice(usize),
    }

    struct Mixture {
        points: Vec<Vec<Coord>>,
        sigma: f64,
    }

    fn normal_cdf(z: f64) -> f64 {
        1.0 - crate::stats::normal_sf(z)
    }

    /// log of a Gaussian kernel at `x` around `mu`, truncated to [0, 1].
    fn log_kernel(x: f64, mu: f64, sigma: f64) -> f64 {
        let z = (x - mu) / sigma;
        let mass = (normal_cdf((1.0 - mu) / sigma) - normal_cdf(-mu / sigma)).max(1e-300);
        -0.5 * z * z - (sigma * (2.0 * std::f64::consts::PI).sqrt()).ln() - mass.ln()
    }

    impl Mixture {
        fn new(points: Vec<Vec<Coord>>, dims: usize) -> Self {
            let n = points.len().max(1) as f64;
            let sigma = (0.2 * n.powf(-1.0 / (dims as f64 + 4.0))).max(1.0 / (n + 1.0).min(100.0));
            Self { points, sigma }
        }

        /// log density at `x`: the prior (weight 1) and one kernel per point (weight 1 each).
        fn log_density(&self, x: &[Coord], arity: &[usize]) -> f64 {
            let mut logs = Vec::with_capacity(self.points.len() + 1);
            // The prior: a Gaussian of width 1 at the centre, uniform over choices.
            logs.push(
                x.iter()
                    .zip(arity)
                    .map(|(c, &k)| match c {
                        Coord::Real(u) => log_kernel(*u, 0.5, 1.0),
                        Coord::Choice(_) => -(k as f64).ln(),
                    })
                    .sum::<f64>(),
            );
            for p in &self.points {
                logs.push(
                    x.iter()
                        .zip(p)
                        .zip(arity)
                        .map(|((c, q), &k)| match (c, q) {
                            (Coord::Real(u), Coord::Real(m)) => log_kernel(*u, *m, self.sigma),
                            (Coord::Choice(a), Coord::Choice(b)) if a == b => (1.0 - EPSILON).ln(),
                            (Coord::Choice(_), Coord::Choice(_)) => {
                                (EPSILON / (k as f64 - 1.0).max(1.0)).ln()
                            }
                            _ => f64::NEG_INFINITY,
                        })
                        .sum::<f64>(),
                );
            }
            let top = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            top + logs.iter().map(|l| (l - top).exp()).sum::<f64>().ln() - (logs.len() as f64).ln()
        }

        /// A draw: the prior or a point's kernel, chosen uniformly.
        fn sample(&self, arity: &[usize], rng: &mut rand::rngs::StdRng) -> Vec<Coord> {
            let k = rng.random_range(0..=self.points.len());
            arity
                .iter()
                .enumerate()
                .map(|(j, &n)| {
                    let centre = if k == 0 {
                        None
                    } else {
                        Some(&self.points[k - 1][j])
                    };
                    match (n, centre) {
                        (0, None) => Coord::Real(truncated(0.5, 1.0, rng)),
                        (0, Some(Coord::Real(m))) => Coord::Real(truncated(*m, self.sigma, rng)),
                        (n, Some(Coord::Choice(c))) if !rng.random_bool(EPSILON) || n == 1 => {
                            Coord::Choice(*c)
                        }
                        (n, _) => Coord::Choice(rng.random_range(0..n)),
                    }
                })
                .collect()
        }
    }

    /// A normal draw truncated to [0, 1], by inverting the CDF over the interval's mass.
    fn truncated(mu: f64, sigma: f64, rng: &mut rand::rngs::StdRng) -> f64 {
        let (a, b) = (normal_cdf(-mu / sigma), normal_cdf((1.0 - mu) / sigma));
        let p = a + (b - a) * rng.random::<f64>();
        (mu + sigma * crate::stats::normal_quantile(p.clamp(1e-12, 1.0 - 1e-12))).clamp(0.0, 1.0)
    }

    /// A dimension's value in the cube: (position, arity 0) for a real one, (index, arity) for
    /// a choice.
    fn to_coord(encoding: &Encoding, v: &toml::Value) -> Option<Coord> {
        let x = encoding.encode(v)?;
        Some(match encoding {
            Encoding::Choice(_) => Coord::Choice(x.floor() as usize),
            _ => {
                let r = encoding.range();
                Coord::Real(((x - r.start()) / (r.end() - r.start())).clamp(0.0, 1.0))
            }
        })
    }

    fn from_coord(encoding: &Encoding, c: &Coord) -> toml::Value {
        match c {
            Coord::Choice(i) => encoding.decode(*i as f64 + 0.5),
            Coord::Real(u) => {
                let r = encoding.range();
                encoding.decode(r.start() + u * (r.end() - r.start()))
            }
        }
    }

    pub(super) fn propose(
        dims: &[(String, Space)],
        history: &[Trial],
        scores: &[f64],
        rng: &mut rand::rngs::StdRng,
    ) -> Vec<(String, toml::Value)> {
        let encodings: Vec<Encoding> = dims.iter().map(|(_, s)| Encoding::of(s)).collect();
        let free: Vec<usize> = (0..dims.len())
            .filter(|&j| !matches!(encodings[j], Encoding::Constant(_)))
            .collect();
        let arity: Vec<usize> = free
            .iter()
            .map(|&j| match &encodings[j] {
                Encoding::Choice(v) => v.len(),
                _ => 0,
            })
            .collect();
        // Trials with every free parameter in the space, best first.
        let mut told: Vec<(f64, Vec<Coord>)> = history
            .iter()
            .zip(scores)
            .filter_map(|(t, s)| {
                let coords: Option<Vec<Coord>> = free
                    .iter()
                    .map(|&j| {
                        t.params
                            .get(&dims[j].0)
                            .and_then(|v| to_coord(&encodings[j], v))
                    })
                    .collect();
                Some((*s, coords?))
            })
            .collect();
        told.sort_by(|a, b| a.0.total_cmp(&b.0));
        let n_good = ((told.len() as f64 * 0.1).ceil() as usize)
            .clamp(1, 25)
            .min(told.len());
        let bad: Vec<Vec<Coord>> = told.split_off(n_good).into_iter().map(|t| t.1).collect();
        let good = Mixture::new(told.into_iter().map(|t| t.1).collect(), free.len());
        let bad = Mixture::new(bad, free.len());
        let best = (0..CANDIDATES)
            .map(|_| good.sample(&arity, rng))
            .map(|x| {
                let ratio = good.log_density(&x, &arity) - bad.log_density(&x, &arity);
                (ratio, x)
            })
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, x)| x)
            .unwrap_or_default();
        let mut chosen = best.into_iter();
        dims.iter()
            .zip(&encodings)
            .map(|((key, _), encoding)| {
                let value = match encoding {
                    Encoding::Constant(v) => v.clone(),
                    _ => from_coord(
                        encoding,
                        &chosen.next().expect("one coordinate per free dimension"),
                    ),
                };
                (key.clone(), value)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn float(t: &[(String, toml::Value)], i: usize) -> f64 {
        t[i].1.as_float().unwrap()
    }

    /// Runs `budget` trials of a search over `dims` on `f` (minimised); the best value found.
    fn optimise(
        dims: &[(String, Space)],
        seed: u64,
        budget: usize,
        startup: usize,
        multivariate: bool,
        f: &dyn Fn(&[(String, toml::Value)]) -> f64,
    ) -> f64 {
        let search = Search {
            dims,
            seed,
            startup,
            multivariate,
        };
        let mut history: Vec<Trial> = Vec::new();
        let mut best = f64::INFINITY;
        for i in 0..budget {
            let t = search.propose(i, &history);
            let v = f(&t);
            best = best.min(v);
            history.push(Trial {
                params: t.into_iter().collect(),
                state: TrialState::Done {
                    oriented: vec![v],
                    violation: 0.0,
                },
            });
        }
        best
    }

    fn sphere(t: &[(String, toml::Value)]) -> f64 {
        (float(t, 0) - 0.3).powi(2) + (float(t, 1) + 1.2).powi(2)
    }

    /// Branin's function: three global minima of 0.397887.
    fn branin(t: &[(String, toml::Value)]) -> f64 {
        let (x, y) = (float(t, 0), float(t, 1));
        let pi = std::f64::consts::PI;
        let b = 5.1 / (4.0 * pi * pi);
        (y - b * x * x + 5.0 / pi * x - 6.0).powi(2)
            + 10.0 * (1.0 - 1.0 / (8.0 * pi)) * x.cos()
            + 10.0
    }

    /// The box [x0, x1] x [y0, y1] as two uniform parameters, x and y.
    fn plane(x0: f64, x1: f64, y0: f64, y1: f64) -> Vec<(String, Space)> {
        vec![
            ("x".to_string(), Space::Uniform(x0, x1)),
            ("y".to_string(), Space::Uniform(y0, y1)),
        ]
    }

    fn rosenbrock(t: &[(String, toml::Value)]) -> f64 {
        let (x, y) = (float(t, 0), float(t, 1));
        (1.0 - x).powi(2) + 100.0 * (y - x * x).powi(2)
    }

    #[test]
    fn tpe_beats_random_at_the_same_budget_on_standard_functions() {
        let (square, branin_box) = (plane(-5.0, 5.0, -5.0, 5.0), plane(-5.0, 10.0, 0.0, 15.0));
        for (dims, f, optimum) in [
            (
                &square,
                &sphere as &dyn Fn(&[(String, toml::Value)]) -> f64,
                0.0,
            ),
            (&branin_box, &branin, 0.397887),
        ] {
            for multivariate in [false, true] {
                let (mut tpe_gap, mut random_gap) = (0.0, 0.0);
                for seed in 0..10 {
                    tpe_gap += optimise(dims, seed, 60, 10, multivariate, f) - optimum;
                    random_gap += optimise(dims, seed, 60, usize::MAX, false, f) - optimum;
                }
                assert!(
                    tpe_gap < random_gap / 2.0,
                    "tpe (multivariate {multivariate}) {tpe_gap} vs random {random_gap}"
                );
                assert!(tpe_gap / 10.0 < 0.5, "tpe {tpe_gap}");
            }
        }
    }

    /// Gaps to the optimum summed over 30 seeds, 60 trials (10 random first); the table in
    /// BENCHMARKS.md. Run with --nocapture to see it.
    #[test]
    fn the_multivariate_estimator_sees_interactions_and_beats_random_everywhere() {
        let (square, branin_box) = (plane(-5.0, 5.0, -5.0, 5.0), plane(-5.0, 10.0, 0.0, 15.0));
        let rosen_box = plane(-2.0, 2.0, -1.0, 3.0);
        let box5: Vec<(String, Space)> = (0..5)
            .map(|i| (format!("x{i}"), Space::Uniform(-1.0, 1.0)))
            .collect();
        // Correlated: the sum and the differences matter.
        let ellipsoid = |t: &[(String, toml::Value)]| {
            let x: Vec<f64> = (0..5).map(|i| float(t, i)).collect();
            let s: f64 = x.iter().sum::<f64>() - 1.0;
            10.0 * s * s + (1..5).map(|i| (x[i] - x[i - 1]).powi(2)).sum::<f64>()
        };
        let mixed = vec![
            ("a".to_string(), Space::LogUniform(1e-4, 1e-1)),
            ("b".to_string(), Space::IntUniform(8, 64)),
            (
                "c".to_string(),
                Space::Values(vec!["p".into(), "q".into(), "r".into()]),
            ),
        ];
        let mixed_f = |t: &[(String, toml::Value)]| {
            let a = float(t, 0).ln() - (3e-3f64).ln();
            let b = (t[1].1.as_integer().unwrap() - 32) as f64 / 16.0;
            let c = if t[2].1.as_str() == Some("q") {
                0.0
            } else {
                1.0
            };
            a * a + b * b + c + (a * b).abs()
        };
        for (name, dims, f, optimum) in [
            (
                "sphere",
                &square,
                &sphere as &dyn Fn(&[(String, toml::Value)]) -> f64,
                0.0,
            ),
            ("branin", &branin_box, &branin, 0.397887),
            ("rosenbrock", &rosen_box, &rosenbrock, 0.0),
            ("ellipsoid5", &box5, &ellipsoid, 0.0),
            ("mixed", &mixed, &mixed_f, 0.0),
        ] {
            let (mut u, mut m, mut r) = (0.0, 0.0, 0.0);
            for seed in 0..30 {
                u += optimise(dims, seed, 60, 10, false, f) - optimum;
                m += optimise(dims, seed, 60, 10, true, f) - optimum;
                r += optimise(dims, seed, 60, usize::MAX, false, f) - optimum;
            }
            eprintln!("{name}: univariate {u:.3} multivariate {m:.3} random {r:.3}");
            assert!(m < r / 2.0, "{name}: multivariate {m} vs random {r}");
            if name == "rosenbrock" {
                assert!(m < u, "{name}: multivariate {m} vs univariate {u}");
            }
        }
    }

    #[test]
    fn proposals_are_seeded_by_index_and_pending_trials_push_the_next_elsewhere() {
        let dims = vec![
            ("lr".to_string(), Space::LogUniform(1e-4, 1e-1)),
            ("bs".to_string(), Space::IntUniform(8, 64)),
            (
                "v".to_string(),
                Space::Values(vec!["xxs".into(), "xs".into(), "s".into()]),
            ),
        ];
        for multivariate in [false, true] {
            let search = Search {
                dims: &dims,
                seed: 7,
                startup: 4,
                multivariate,
            };
            let mut history = Vec::new();
            for i in 0..12 {
                let t = search.propose(i, &history);
                assert_eq!(
                    t,
                    search.propose(i, &history),
                    "same index, same history: same point"
                );
                let lr = t[0].1.as_float().unwrap();
                let bs = t[1].1.as_integer().unwrap();
                assert!((1e-4..=1e-1).contains(&lr) && (8..=64).contains(&bs));
                history.push(Trial {
                    params: t.into_iter().collect(),
                    state: TrialState::Done {
                        oriented: vec![(lr.ln() + 6.0).abs()],
                        violation: 0.0,
                    },
                });
            }
            let a = search.propose(12, &history);
            history.push(Trial {
                params: a.clone().into_iter().collect(),
                state: TrialState::Pending,
            });
            assert_ne!(
                search.propose(13, &history),
                a,
                "a pending trial is not proposed again"
            );
        }
    }

    #[test]
    fn scores_rank_fronts_then_infeasible_then_pending() {
        let t = |oriented: Vec<f64>, violation| Trial {
            params: BTreeMap::new(),
            state: TrialState::Done {
                oriented,
                violation,
            },
        };
        let history = vec![
            t(vec![1.0, 1.0], 0.0),
            t(vec![0.0, 0.0], 0.5),
            t(vec![2.0, 2.0], 0.0),
            Trial {
                params: BTreeMap::new(),
                state: TrialState::Pending,
            },
            t(vec![0.5, 3.0], 0.0),
        ];
        let s = scores(&history);
        assert!(s[0] < s[2] && s[4] < s[2], "front 0 before front 1: {s:?}");
        assert!(s[1] > s[2], "infeasible after every feasible trial: {s:?}");
        assert!(s[3] > s[1], "pending worst: {s:?}");
    }
}
