//! The next trial of a tpe sweep, proposed from the sweep's whole history each time a worker
//! asks (so any worker on any machine, after any crash, proposes from the same facts): a few
//! seeded random draws first, then one tree-structured Parzen estimator per parameter (the
//! `tpe` crate) told every finished trial by its rank and every pending one as the worst so
//! far (the "constant liar", so parallel workers spread out instead of proposing alike).
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
        f: &dyn Fn(&[(String, toml::Value)]) -> f64,
    ) -> f64 {
        let search = Search {
            dims,
            seed,
            startup,
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

    #[test]
    fn tpe_beats_random_at_the_same_budget_on_standard_functions() {
        let square = vec![
            ("x".to_string(), Space::Uniform(-5.0, 5.0)),
            ("y".to_string(), Space::Uniform(-5.0, 5.0)),
        ];
        let branin_box = vec![
            ("x".to_string(), Space::Uniform(-5.0, 10.0)),
            ("y".to_string(), Space::Uniform(0.0, 15.0)),
        ];
        for (dims, f, optimum) in [
            (
                &square,
                &sphere as &dyn Fn(&[(String, toml::Value)]) -> f64,
                0.0,
            ),
            (&branin_box, &branin, 0.397887),
        ] {
            let (mut tpe_gap, mut random_gap) = (0.0, 0.0);
            for seed in 0..10 {
                tpe_gap += optimise(dims, seed, 60, 10, f) - optimum;
                random_gap += optimise(dims, seed, 60, usize::MAX, f) - optimum;
            }
            assert!(
                tpe_gap < random_gap / 2.0,
                "tpe {tpe_gap} vs random {random_gap}"
            );
            assert!(tpe_gap / 10.0 < 0.5, "tpe {tpe_gap}");
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
        let search = Search {
            dims: &dims,
            seed: 7,
            startup: 4,
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
