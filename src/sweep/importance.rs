//! Which parameters matter: for each swept parameter, the share of the objective's variance
//! across trials that its value explains (a one-way ANOVA's effect size, as PED-ANOVA and
//! fANOVA measure importance for one parameter at a time; epsilon squared, so that a parameter
//! with many values and few trials does not look important by chance), with numbers grouped into
//! quantile bins. The uncertainty comes from bootstrap resamples of the trials: each share is reported
//! with the interval holding 90% of the resamples' shares.

use rand::{Rng, SeedableRng, rngs::StdRng};

/// Below this many finished trials the shares say little (said beside them).
pub const FEW_TRIALS: usize = 10;
const RESAMPLES: usize = 200;
const BINS: usize = 3;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Importance {
    pub key: String,
    /// Share of the variance explained, on all trials (0..1).
    pub share: f64,
    /// 5th and 95th percentiles of the share over bootstrap resamples.
    pub low: f64,
    pub high: f64,
}

/// `trials`: each trial's parameter values (as text, numbers parseable) and objective value.
pub fn importance(keys: &[String], trials: &[(Vec<String>, f64)], seed: u64) -> Vec<Importance> {
    let mut out: Vec<Importance> = keys
        .iter()
        .enumerate()
        .map(|(k, key)| {
            let groups = group_of(trials.iter().map(|t| t.0[k].as_str()).collect());
            let all: Vec<usize> = (0..trials.len()).collect();
            let share = eta_squared(&all, &groups, trials);
            let mut rng = StdRng::seed_from_u64(seed ^ k as u64);
            let mut shares: Vec<f64> = (0..RESAMPLES)
                .map(|_| {
                    let pick: Vec<usize> = (0..trials.len())
                        .map(|_| rng.random_range(0..trials.len()))
                        .collect();
                    eta_squared(&pick, &groups, trials)
                })
                .collect();
            shares.sort_by(f64::total_cmp);
            let at = |q: f64| shares[((shares.len() - 1) as f64 * q).round() as usize];
            Importance {
                key: key.clone(),
                share,
                low: at(0.05),
                high: at(0.95),
            }
        })
        .collect();
    out.sort_by(|a, b| b.share.total_cmp(&a.share));
    out
}

/// Each trial's group for one parameter: its value's quantile bin when all values are
/// numbers with more than BINS distinct values, else the value itself.
fn group_of(values: Vec<&str>) -> Vec<usize> {
    let numbers: Option<Vec<f64>> = values.iter().map(|v| v.parse::<f64>().ok()).collect();
    let mut distinct: Vec<&str> = values.clone();
    distinct.sort();
    distinct.dedup();
    match numbers {
        Some(x) if distinct.len() > BINS => {
            let mut sorted = x.clone();
            sorted.sort_by(f64::total_cmp);
            x.iter()
                .map(|v| {
                    let below = sorted.partition_point(|s| s < v);
                    (below * BINS / sorted.len()).min(BINS - 1)
                })
                .collect()
        }
        _ => values
            .iter()
            .map(|v| distinct.binary_search(v).unwrap_or(0))
            .collect(),
    }
}

/// The share of the picked trials' variance that the groups explain beyond what as many groups
/// would explain by chance (epsilon squared: eta squared corrected for its upward bias, which is
/// large with few trials per group); 0 when it cannot be told.
fn eta_squared(pick: &[usize], groups: &[usize], trials: &[(Vec<String>, f64)]) -> f64 {
    let n = pick.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mean = pick.iter().map(|&i| trials[i].1).sum::<f64>() / n;
    let total: f64 = pick.iter().map(|&i| (trials[i].1 - mean).powi(2)).sum();
    if total <= 0.0 {
        return 0.0;
    }
    let mut by: std::collections::BTreeMap<usize, (f64, f64)> = Default::default();
    for &i in pick {
        let e = by.entry(groups[i]).or_default();
        e.0 += trials[i].1;
        e.1 += 1.0;
    }
    let k = by.len() as f64;
    if n <= k {
        return 0.0;
    }
    let between: f64 = by
        .values()
        .map(|(sum, count)| count * (sum / count - mean).powi(2))
        .sum();
    let within_mean_square = (total - between) / (n - k);
    ((between - (k - 1.0) * within_mean_square) / total).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parameter_that_drives_the_objective_ranks_first_with_a_tight_interval() {
        let mut rng = StdRng::seed_from_u64(1);
        let trials: Vec<(Vec<String>, f64)> = (0..60)
            .map(|_| {
                let lr: f64 = rng.random_range(-4.0..-1.0);
                let noise: f64 = rng.random_range(0.0..1.0);
                let variant = ["xxs", "s"][rng.random_range(0..2)];
                (
                    vec![lr.to_string(), noise.to_string(), variant.to_string()],
                    -(lr + 2.5).powi(2) + 0.01 * noise,
                )
            })
            .collect();
        let keys = ["lr".to_string(), "noise".to_string(), "variant".to_string()];
        let imp = importance(&keys, &trials, 3);
        assert_eq!(imp[0].key, "lr");
        assert!(imp[0].share > 0.5 && imp[0].low > 0.3, "{imp:?}");
        let noise = imp.iter().find(|i| i.key == "noise").unwrap();
        assert!(
            noise.share < 0.2 && noise.low <= noise.share && noise.share <= noise.high + 1e-12,
            "{imp:?}"
        );
    }

    #[test]
    fn a_parameter_that_does_nothing_looks_unimportant_even_with_few_trials() {
        // Eta squared of pure noise in 3 groups of 8 trials averages (k-1)/(n-1) = 0.29; the
        // corrected share averages 0.
        let mut rng = StdRng::seed_from_u64(2);
        let mean_share: f64 = (0..50)
            .map(|s| {
                let trials: Vec<(Vec<String>, f64)> = (0..8)
                    .map(|_| {
                        (
                            vec![rng.random_range(0.0..1.0f64).to_string()],
                            rng.random_range(0.0..1.0),
                        )
                    })
                    .collect();
                importance(&["x".to_string()], &trials, s)[0].share
            })
            .sum::<f64>()
            / 50.0;
        assert!(mean_share < 0.15, "{mean_share}");
    }
}
