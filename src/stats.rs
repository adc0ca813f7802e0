//! Statistics for "is this difference real?" when comparing image classifiers.
//!
//! Two settings come up:
//! - two models scored on the *same* validation images: the comparison is paired, so use
//!   McNemar's exact test on the images where they disagree ([`mcnemar_exact`]) and a paired
//!   bootstrap of the accuracy difference ([`paired_bootstrap`], [`paired_bootstrap_subset`]);
//! - groups of training runs (seeds) per configuration: Welch's t interval and test on the
//!   group means ([`welch`]).
//!
//! Plus what these need (Wilson interval, normal and Student t quantiles) and a sample-size
//! estimate for McNemar's test. Everything is `f64` and nothing panics: invalid or empty input
//! gives `None` (or NaN from the quantile functions), as documented on each function.

use std::f64::consts::{FRAC_2_SQRT_PI, LN_2, PI, SQRT_2};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// ln(2π).
const LN_2PI: f64 = 1.837_877_066_409_345_5;

/// Above this many discordant pairs McNemar's test switches from the exact sum (whose cost
/// grows like sqrt(b + c)) to the normal approximation, which is then off by far less than
/// anyone could care about.
const MCNEMAR_EXACT_LIMIT: u128 = 1_000_000_000_000;

/// Above this many degrees of freedom the t quantile comes from the Cornish–Fisher expansion
/// around the normal quantile (accurate to ~1e-12 there) instead of inverting the CDF.
const CORNISH_FISHER_DF: f64 = 1e5;

/// A point estimate with a 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
}

/// Result of [`welch`]: the 95% interval for mean(b) - mean(a), the two-sided p-value of
/// Welch's t test and the Welch–Satterthwaite degrees of freedom.
#[derive(Debug, Clone, Serialize)]
pub struct TwoSample {
    pub difference: Interval,
    pub p_value: f64,
    pub df: f64,
}

/// A proportion's 95% interval: Wilson score interval (good at small n and near 0/1).
///
/// `None` when `n == 0` or `successes > n`. The bounds are exactly 0 (1) when there are no
/// successes (failures), instead of a rounding-error neighbour.
pub fn wilson_interval(successes: u64, n: u64) -> Option<(f64, f64)> {
    if n == 0 || successes > n {
        return None;
    }
    let z = normal_quantile(0.975);
    let z2 = z * z;
    let nf = n as f64;
    let p = successes as f64 / nf;
    let denom = 1.0 + z2 / nf;
    let centre = (p + z2 / (2.0 * nf)) / denom;
    let half = z / denom * (p * (1.0 - p) / nf + z2 / (4.0 * nf * nf)).sqrt();
    let low = if successes == 0 {
        0.0
    } else {
        (centre - half).max(0.0)
    };
    let high = if successes == n {
        1.0
    } else {
        (centre + half).min(1.0)
    };
    Some((low, high))
}

/// McNemar's exact test on the discordant pairs: b = images A got right and B got wrong, c = the reverse.
/// Two-sided exact binomial p-value: p = min(1, 2 * P[X <= min(b,c)]) with X ~ Binomial(b+c, 0.5); p = 1 when b+c == 0.
///
/// Exact (to ~1e-13 relative) up to b + c = 10^12: the probability of the observed count comes
/// from Loader's saddle-point form of the binomial pmf (no cancellation at large n) and the
/// lower tail is summed relative to it with the ratio recurrence
/// P[X = k-1] / P[X = k] = k / (n - k + 1), stopping once the rest provably cannot matter.
/// Beyond 10^12 pairs it uses the normal approximation with continuity correction.
pub fn mcnemar_exact(b: u64, c: u64) -> f64 {
    // b == c puts min(b, c) at the median, so the doubled tail is >= 1.
    if b == c {
        return 1.0;
    }
    if u128::from(b) + u128::from(c) > MCNEMAR_EXACT_LIMIT {
        mcnemar_normal(b, c)
    } else {
        mcnemar_sum(b, c)
    }
}

/// The exact McNemar p-value; needs b != c and b + c <= 2^53 (so counts are exact in f64).
fn mcnemar_sum(b: u64, c: u64) -> f64 {
    let n = (b + c) as f64;
    let m = b.min(c) as f64;
    // ln P[X = m]; at m = 0 it is just 0.5^n.
    let ln_pm = if m == 0.0 {
        -n * LN_2
    } else {
        ln_binom_half_pmf(m, n)
    };
    // sum_{k <= m} P[X = k] / P[X = m]. The step ratio k / (n - k + 1) is < 1 (k <= m < n/2)
    // and shrinks as k falls, so after a step the rest is below ratio * step / (1 - step).
    let mut ratio = 1.0;
    let mut sum = 1.0;
    let mut k = m;
    while k >= 1.0 {
        let step = k / (n - k + 1.0);
        ratio *= step;
        sum += ratio;
        if ratio * step / (1.0 - step) <= sum * 1e-17 {
            break;
        }
        k -= 1.0;
    }
    (2.0 * (ln_pm + sum.ln()).exp()).min(1.0)
}

/// McNemar's test by the normal approximation with continuity correction (for huge counts).
fn mcnemar_normal(b: u64, c: u64) -> f64 {
    let n = b as f64 + c as f64;
    let z = (b.abs_diff(c) as f64 - 1.0).max(0.0) / n.sqrt();
    (2.0 * normal_sf(z)).min(1.0)
}

/// ln P[X = m] for X ~ Binomial(n, 1/2), 0 < m < n, in Loader's (2000) saddle-point form (as
/// in R's dbinom): Stirling remainders plus deviance terms (Loader's bd0), which avoid subtracting
/// two numbers of size n·ln 2.
fn ln_binom_half_pmf(m: f64, n: f64) -> f64 {
    let half = 0.5 * n;
    let lc = stirling_error(n)
        - stirling_error(m)
        - stirling_error(n - m)
        - deviance_term(m, half)
        - deviance_term(n - m, half);
    let lf = LN_2PI + m.ln() + (-m / n).ln_1p();
    lc - 0.5 * lf
}

/// Stirling's remainder δ(n) = ln Γ(n + 1) - [(n + 1/2) ln n - n + ln sqrt(2π)] for real n >= 1.
fn stirling_error(n: f64) -> f64 {
    if n <= 15.0 {
        // Small n: directly (ln Γ is accurate to ~1e-15 absolute here).
        ln_gamma(n + 1.0) - (n + 0.5) * n.ln() + n - 0.5 * LN_2PI
    } else {
        // Asymptotic series; at n > 15 the first omitted term is below 1e-15.
        const S0: f64 = 1.0 / 12.0;
        const S1: f64 = 1.0 / 360.0;
        const S2: f64 = 1.0 / 1260.0;
        const S3: f64 = 1.0 / 1680.0;
        const S4: f64 = 1.0 / 1188.0;
        let nn = n * n;
        (S0 - (S1 - (S2 - (S3 - S4 / nn) / nn) / nn) / nn) / n
    }
}

/// x ln(x / np) + np - x, computed without cancellation when x is close to np (Loader's bd0).
fn deviance_term(x: f64, np: f64) -> f64 {
    if (x - np).abs() < 0.1 * (x + np) {
        // Series in v = (x - np) / (x + np): all odd powers, converges fast for |v| < 0.1.
        let v = (x - np) / (x + np);
        let v2 = v * v;
        let mut s = (x - np) * v;
        let mut ej = 2.0 * x * v;
        for j in 1..1000 {
            ej *= v2;
            let next = s + ej / f64::from(2 * j + 1);
            if next == s {
                break;
            }
            s = next;
        }
        s
    } else {
        x * (x / np).ln() + np - x
    }
}

/// Paired bootstrap of the accuracy difference (B minus A) over the same images:
/// `a_right[i]`, `b_right[i]` say whether each model got image i right. Resamples image indices with replacement
/// `resamples` times with a seeded StdRng; returns the point difference and the percentile 95% interval.
/// None when the slices are empty or of different lengths.
///
/// Also `None` when `resamples == 0`. The percentiles interpolate linearly between order
/// statistics. Cost is `resamples * len` random draws.
pub fn paired_bootstrap(
    a_right: &[bool],
    b_right: &[bool],
    resamples: usize,
    seed: u64,
) -> Option<Interval> {
    if a_right.len() != b_right.len() {
        return None;
    }
    let diffs: Vec<i8> = a_right
        .iter()
        .zip(b_right)
        .map(|(&a, &b)| i8::from(b) - i8::from(a))
        .collect();
    bootstrap_mean(&diffs, resamples, seed)
}

/// Same, for a subset of the images (per-class differences): indices into the slices.
///
/// `None` also when `subset` is empty or holds an index out of range. Repeated indices count
/// as often as they are listed.
pub fn paired_bootstrap_subset(
    a_right: &[bool],
    b_right: &[bool],
    subset: &[usize],
    resamples: usize,
    seed: u64,
) -> Option<Interval> {
    if a_right.len() != b_right.len() {
        return None;
    }
    let diffs = subset
        .iter()
        .map(|&i| Some(i8::from(*b_right.get(i)?) - i8::from(*a_right.get(i)?)))
        .collect::<Option<Vec<i8>>>()?;
    bootstrap_mean(&diffs, resamples, seed)
}

/// Percentile bootstrap of the mean of per-image differences in {-1, 0, 1}.
fn bootstrap_mean(diffs: &[i8], resamples: usize, seed: u64) -> Option<Interval> {
    if diffs.is_empty() || resamples == 0 {
        return None;
    }
    let n = diffs.len();
    // Integer sums: exact, and cheaper than f64 in the inner loop.
    let estimate = diffs.iter().map(|&d| i64::from(d)).sum::<i64>() as f64 / n as f64;
    let mut rng = StdRng::seed_from_u64(seed);
    // Capacity capped so an absurd `resamples` cannot abort on allocation up front.
    let mut means = Vec::with_capacity(resamples.min(1 << 20));
    for _ in 0..resamples {
        let total: i64 = (0..n)
            .map(|_| i64::from(diffs[rng.random_range(0..n)]))
            .sum();
        means.push(total as f64 / n as f64);
    }
    means.sort_by(f64::total_cmp);
    Some(Interval {
        estimate,
        low: percentile(&means, 0.025),
        high: percentile(&means, 0.975),
    })
}

/// Percentile of sorted, non-empty data, interpolating between order statistics.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let last = sorted.len().saturating_sub(1);
    let h = last as f64 * q;
    let i = (h.floor() as usize).min(last);
    let j = (i + 1).min(last);
    match (sorted.get(i), sorted.get(j)) {
        (Some(&lo), Some(&hi)) => lo + (h - i as f64) * (hi - lo),
        _ => f64::NAN,
    }
}

/// Mean and sample standard deviation (n-1); std is 0 for one value; None for none. NaN values are ignored.
///
/// Infinite values propagate (the mean becomes infinite or NaN, the std NaN).
pub fn mean_std(values: &[f64]) -> Option<(f64, f64)> {
    let (mean, var, _) = summarize(values)?;
    Some((mean, var.sqrt()))
}

/// Mean, sample variance (0 for one value) and count of the non-NaN values; `None` if none.
fn summarize(values: &[f64]) -> Option<(f64, f64, f64)> {
    // Welford's running update: no overflow from a large sum, no cancellation from sum of squares.
    let mut count = 0.0;
    let mut mean = 0.0;
    let mut m2 = 0.0;
    for &x in values.iter().filter(|x| !x.is_nan()) {
        count += 1.0;
        let d = x - mean;
        mean += d / count;
        m2 += d * (x - mean);
    }
    if count == 0.0 {
        return None;
    }
    let var = if count > 1.0 {
        (m2 / (count - 1.0)).max(0.0)
    } else {
        0.0
    };
    Some((mean, var, count))
}

/// Two-sample comparison of group means (e.g. best val accuracy of seeds of config A vs seeds of config B):
/// Welch's t interval (95%) for mean(b) - mean(a), with Welch–Satterthwaite degrees of freedom and the
/// Student t quantile computed here. Also the two-sided p-value of Welch's t test.
/// Needs >= 2 values on each side; None otherwise. If both variances are 0: interval collapses to the difference, p = 1 if equal else 0.
///
/// NaN values are ignored (as in [`mean_std`]) before counting. `None` also when an input is
/// infinite or the statistics overflow. When both variances are 0 the Welch df is undefined;
/// `df` then reports the pooled value n_a + n_b - 2.
pub fn welch(a: &[f64], b: &[f64]) -> Option<TwoSample> {
    let (mean_a, var_a, n_a) = summarize(a)?;
    let (mean_b, var_b, n_b) = summarize(b)?;
    if n_a < 2.0 || n_b < 2.0 {
        return None;
    }
    let diff = mean_b - mean_a;
    // Squared standard errors of the two means.
    let (w_a, w_b) = (var_a / n_a, var_b / n_b);
    let se2 = w_a + w_b;
    if !diff.is_finite() || !se2.is_finite() {
        return None;
    }
    if se2 == 0.0 {
        return Some(TwoSample {
            difference: Interval {
                estimate: diff,
                low: diff,
                high: diff,
            },
            p_value: if diff == 0.0 { 1.0 } else { 0.0 },
            df: n_a + n_b - 2.0,
        });
    }
    // Welch–Satterthwaite, written with the shares w/se2 in [0, 1] so nothing under/overflows.
    let (s_a, s_b) = (w_a / se2, w_b / se2);
    let df = 1.0 / (s_a * s_a / (n_a - 1.0) + s_b * s_b / (n_b - 1.0));
    let se = se2.sqrt();
    let p_value = t_two_sided_p(diff / se, df);
    let half = t_quantile(0.975, df) * se;
    if !p_value.is_finite() || !half.is_finite() {
        return None;
    }
    Some(TwoSample {
        difference: Interval {
            estimate: diff,
            low: diff - half,
            high: diff + half,
        },
        p_value,
        df,
    })
}

/// Student t quantile (inverse CDF), used above; public for tests.
///
/// NaN when `p` is outside [0, 1], `df <= 0` or either is NaN; ±infinity at p = 0 or 1;
/// `df = +inf` gives the normal quantile. Otherwise closed forms for df = 1 and 2, the
/// Cornish–Fisher expansion for df > 1e5, and else bisection on the CDF (regularized
/// incomplete beta) to full double precision. Works for fractional df too.
pub fn t_quantile(p: f64, df: f64) -> f64 {
    if p.is_nan() || !(0.0..=1.0).contains(&p) || df.is_nan() || df <= 0.0 {
        return f64::NAN;
    }
    if df.is_infinite() {
        return normal_quantile(p);
    }
    if p == 0.0 {
        return f64::NEG_INFINITY;
    }
    if p == 1.0 {
        return f64::INFINITY;
    }
    if p == 0.5 {
        return 0.0;
    }
    // Work with the smaller tail probability q: it keeps full precision in the tails.
    let upper = p > 0.5;
    let q = if upper { 1.0 - p } else { p };
    let t = if df == 1.0 {
        // Cauchy.
        1.0 / (PI * q).tan()
    } else if df == 2.0 {
        (1.0 - 2.0 * q) / (2.0 * q * (1.0 - q)).sqrt()
    } else if df > CORNISH_FISHER_DF {
        cornish_fisher(-normal_quantile(q), df)
    } else {
        t_upper_quantile_bisect(q, df)
    };
    if upper { t } else { -t }
}

/// The t value with upper tail probability q (0 < q < 0.5), by bisection on the tail.
fn t_upper_quantile_bisect(q: f64, df: f64) -> f64 {
    let tail = |t: f64| 0.5 * t_two_sided_p(t, df);
    // Bracket: double until the tail drops to q (heavy tails at tiny df may never: +inf).
    let (mut lo, mut hi) = (0.0_f64, 1.0_f64);
    while tail(hi) > q {
        lo = hi;
        hi *= 2.0;
        if hi.is_infinite() {
            return f64::INFINITY;
        }
    }
    // Each step halves the bracket; stop when it can no longer shrink in f64.
    for _ in 0..2000 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if tail(mid) > q {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Cornish–Fisher expansion of the t quantile in the normal quantile z
/// (Abramowitz & Stegun 26.7.5); for large df only.
fn cornish_fisher(z: f64, df: f64) -> f64 {
    let z2 = z * z;
    let g1 = z * (z2 + 1.0) / 4.0;
    let g2 = z * ((5.0 * z2 + 16.0) * z2 + 3.0) / 96.0;
    let g3 = z * (((3.0 * z2 + 19.0) * z2 + 17.0) * z2 - 15.0) / 384.0;
    let g4 = z * ((((79.0 * z2 + 776.0) * z2 + 1482.0) * z2 - 1920.0) * z2 - 945.0) / 92160.0;
    z + (g1 + (g2 + (g3 + g4 / df) / df) / df) / df
}

/// Two-sided p-value P[|T| > |t|] of Student's t with `df` degrees of freedom:
/// I_x(df/2, 1/2) with x = df / (df + t²).
/// Two-sided p-value of Student's t statistic `t` with `df` degrees of freedom (NaN for NaN
/// input or df <= 0).
pub fn t_two_sided_p(t: f64, df: f64) -> f64 {
    if t.is_nan() || df.is_nan() || df <= 0.0 {
        return f64::NAN;
    }
    // x and 1 - x computed separately, so neither loses precision; s² may overflow to
    // infinity, which gives x = 0, y = 1 correctly.
    let s = t.abs() / df.sqrt();
    let s2 = s * s;
    let x = 1.0 / (1.0 + s2);
    let y = 1.0 / (1.0 + 1.0 / s2);
    regularized_incomplete_beta(0.5 * df, 0.5, x, y)
}

/// Regularized incomplete beta I_x(a, b) for a, b > 0, given x and y = 1 - x (both, so the
/// caller can supply whichever is accurate). Continued fraction as in Numerical Recipes,
/// using the symmetry I_x(a, b) = 1 - I_y(b, a) where the fraction converges slowly.
fn regularized_incomplete_beta(a: f64, b: f64, x: f64, y: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if y <= 0.0 {
        return 1.0;
    }
    // ln x via ln_1p(-y) when x is near 1 (and likewise ln y): exact even when the other is tiny.
    let ln_x = if x > 0.5 { (-y).ln_1p() } else { x.ln() };
    let ln_y = if y > 0.5 { (-x).ln_1p() } else { y.ln() };
    let ln_front = a * ln_x + b * ln_y - ln_beta(a, b);
    let value = if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_continued_fraction(a, b, x) / a
    } else {
        1.0 - ln_front.exp() * beta_continued_fraction(b, a, y) / b
    };
    value.clamp(0.0, 1.0)
}

/// The continued fraction of I_x(a, b) (Numerical Recipes' betacf), modified Lentz method.
fn beta_continued_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    const EPS: f64 = 1e-16;
    // Keeps Lentz's divisions away from zero.
    let guard = |v: f64| if v.abs() < TINY { TINY } else { v };
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 / guard(1.0 - qab * x / qap);
    let mut h = d;
    // Converges in O(sqrt(max(a, b))) steps at worst; the cap only guards against NaN loops.
    for m in 1..100_000 {
        let m = f64::from(m);
        let m2 = 2.0 * m;
        // Even step.
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 / guard(1.0 + aa * d);
        c = guard(1.0 + aa / c);
        h *= d * c;
        // Odd step.
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 / guard(1.0 + aa * d);
        c = guard(1.0 + aa / c);
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() < EPS || delta.is_nan() {
            break;
        }
    }
    h
}

/// ln B(a, b) for a, b > 0.
fn ln_beta(a: f64, b: f64) -> f64 {
    let (p, q) = if a < b { (a, b) } else { (b, a) };
    if q < 10.0 {
        return ln_gamma(p) + ln_gamma(q) - ln_gamma(p + q);
    }
    // ln Γ(q) - ln Γ(p + q) from Stirling's form ln Γ(x) = (x - 1/2) ln x - x + ln sqrt(2π) + δ(x)
    // (δ = stirling_error), with the difference taken analytically: subtracting the two
    // ln Γ values would lose digits in proportion to their size (t with huge df: q = df/2).
    let ln_ratio = -(q - 0.5) * (p / q).ln_1p() - p * (p + q).ln() + p + stirling_error(q)
        - stirling_error(p + q);
    ln_gamma(p) + ln_ratio
}

/// ln Γ(x) for x > 0: Lanczos approximation (g = 7, 9 terms), relative error ~1e-15.
#[allow(clippy::excessive_precision)] // the published coefficients, as printed
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const COEF: [f64; 9] = [
        0.999_999_999_999_809_93,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_13,
        -176.615_029_162_140_59,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_571_6e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection Γ(x)Γ(1-x) = π / sin(πx) keeps the series in its accurate range.
        return (PI / (PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = COEF[0];
    for (i, &c) in COEF.iter().enumerate().skip(1) {
        sum += c / (x + i as f64);
    }
    let t = x + G + 0.5;
    0.5 * LN_2PI + (x + 0.5) * t.ln() - t + sum.ln()
}

/// How many paired images would be needed to detect an accuracy difference of `delta` (e.g. 0.01)
/// with McNemar's test at alpha = 0.05 (two-sided) and power 0.8, given the observed rate of
/// discordant pairs `discordant` (fraction of images where the two models disagree in correctness, e.g. 0.08).
///
/// Connor (1987): n = (z_{α/2} sqrt(ψ) + z_β sqrt(ψ - δ²))² / δ², rounded up, with ψ the
/// discordant rate. Since |b - c| <= b + c, a difference δ needs at least a fraction δ of
/// discordant pairs, so ψ < δ is raised to ψ = δ (the least disagreement that can produce δ).
/// `None` for δ <= 0, ψ <= 0, either above 1 or NaN, or when n does not fit in a u64.
pub fn mcnemar_sample_size(delta: f64, discordant: f64) -> Option<u64> {
    // Written as !(x > 0) so NaN is rejected too.
    if !(delta > 0.0 && delta <= 1.0 && discordant > 0.0 && discordant <= 1.0) {
        return None;
    }
    let psi = discordant.max(delta);
    let z_alpha = normal_quantile(0.975);
    let z_beta = normal_quantile(0.8);
    let root = z_alpha * psi.sqrt() + z_beta * (psi - delta * delta).max(0.0).sqrt();
    let n = (root * root / (delta * delta)).ceil();
    // 2^64 is the first f64 a u64 cannot hold.
    if n.is_finite() && n < 18_446_744_073_709_551_616.0 {
        Some(n as u64)
    } else {
        None
    }
}

/// Standard normal quantile (inverse CDF) — Acklam's algorithm or similar, |error| < 1e-8.
///
/// Wichura's AS241 (PPND16), relative error ~1e-16. NaN outside [0, 1] or for NaN;
/// ±infinity at 0 and 1.
#[allow(clippy::excessive_precision)] // the published coefficients, as printed
pub fn normal_quantile(p: f64) -> f64 {
    if p.is_nan() || !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    if p == 0.0 {
        return f64::NEG_INFINITY;
    }
    if p == 1.0 {
        return f64::INFINITY;
    }
    let q = p - 0.5;
    if q.abs() <= 0.425 {
        // Central region: rational function in r = 0.180625 - q².
        let r = 0.180625 - q * q;
        let num = (((((((2.509_080_928_730_122_672_7e3 * r + 3.343_057_558_358_812_810_5e4)
            * r
            + 6.726_577_092_700_870_085_3e4)
            * r
            + 4.592_195_393_154_987_145_7e4)
            * r
            + 1.373_169_376_550_946_112_5e4)
            * r
            + 1.971_590_950_306_551_442_7e3)
            * r
            + 1.331_416_678_917_843_774_5e2)
            * r
            + 3.387_132_872_796_366_608_0)
            * q;
        let den = ((((((5.226_495_278_852_854_561_0e3 * r + 2.872_908_573_572_194_267_4e4) * r
            + 3.930_789_580_009_271_061_0e4)
            * r
            + 2.121_379_430_158_659_586_7e4)
            * r
            + 5.394_196_021_424_751_107_7e3)
            * r
            + 6.871_870_074_920_579_083_0e2)
            * r
            + 4.231_333_070_160_091_125_2e1)
            * r
            + 1.0;
        return num / den;
    }
    // Tails: rational functions in r = sqrt(-ln(tail probability)).
    let tail = if q < 0.0 { p } else { 1.0 - p };
    let r = (-tail.ln()).sqrt();
    let x = if r <= 5.0 {
        let r = r - 1.6;
        let num = ((((((7.745_450_142_783_414_076_40e-4 * r + 2.272_384_498_926_918_458_33e-2)
            * r
            + 2.417_807_251_774_506_117_70e-1)
            * r
            + 1.270_458_252_452_368_382_58)
            * r
            + 3.647_848_324_763_204_605_04)
            * r
            + 5.769_497_221_460_691_405_50)
            * r
            + 4.630_337_846_156_545_295_90)
            * r
            + 1.423_437_110_749_683_577_34;
        let den = ((((((1.050_750_071_644_416_843_24e-9 * r + 5.475_938_084_995_344_946_00e-4)
            * r
            + 1.519_866_656_361_645_719_66e-2)
            * r
            + 1.481_039_764_274_800_745_90e-1)
            * r
            + 6.897_673_349_851_000_045_50e-1)
            * r
            + 1.676_384_830_183_803_849_40)
            * r
            + 2.053_191_626_637_758_821_87)
            * r
            + 1.0;
        num / den
    } else {
        let r = r - 5.0;
        let num = ((((((2.010_334_399_292_288_132_65e-7 * r + 2.711_555_568_743_487_578_15e-5)
            * r
            + 1.242_660_947_388_078_438_60e-3)
            * r
            + 2.653_218_952_657_612_309_30e-2)
            * r
            + 2.965_605_718_285_048_912_30e-1)
            * r
            + 1.784_826_539_917_291_335_80)
            * r
            + 5.463_784_911_164_114_369_90)
            * r
            + 6.657_904_643_501_103_777_20;
        let den =
            ((((((2.044_263_103_389_939_785_64e-15 * r + 1.421_511_758_316_445_888_70e-7) * r
                + 1.846_318_317_510_054_681_80e-5)
                * r
                + 7.868_691_311_456_132_591_00e-4)
                * r
                + 1.487_536_129_085_061_485_25e-2)
                * r
                + 1.369_298_809_227_358_053_10e-1)
                * r
                + 5.998_322_065_558_879_376_90e-1)
                * r
                + 1.0;
        num / den
    };
    if q < 0.0 { -x } else { x }
}

/// Upper tail P[Z > z] of the standard normal.
pub fn normal_sf(z: f64) -> f64 {
    0.5 * erfc(z / SQRT_2)
}

/// Complementary error function, relative error ~1e-14: a positive-term series for erf below
/// 2.5 (no cancellation) and the Laplace continued fraction for erfc above.
fn erfc(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    if x < 2.5 {
        // erf(x) = 2/sqrt(π) e^{-x²} Σ_k (2x²)^k x / (1·3·…·(2k+1)).
        let two_x2 = 2.0 * x * x;
        let mut term = x;
        let mut sum = x;
        for k in 1..200 {
            term *= two_x2 / f64::from(2 * k + 1);
            sum += term;
            if term <= sum * 1e-17 {
                break;
            }
        }
        1.0 - FRAC_2_SQRT_PI * (-x * x).exp() * sum
    } else {
        // erfc(x) = e^{-x²}/sqrt(π) / (x + (1/2)/(x + 1/(x + (3/2)/(x + …)))), modified Lentz.
        const TINY: f64 = 1e-300;
        let mut f = x;
        let mut c = x;
        let mut d = 0.0;
        for k in 1..1000 {
            let a = 0.5 * f64::from(k);
            d = x + a * d;
            d = 1.0 / if d == 0.0 { TINY } else { d };
            c = x + a / c;
            if c == 0.0 {
                c = TINY;
            }
            let delta = c * d;
            f *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        0.5 * FRAC_2_SQRT_PI * (-x * x).exp() / f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(actual: f64, expected: f64, tol: f64) -> bool {
        (actual - expected).abs() <= tol
    }

    fn rel_close(actual: f64, expected: f64, rel: f64) -> bool {
        (actual - expected).abs() <= rel * expected.abs()
    }

    /// Exact two-sided McNemar p for small n from integer binomial coefficients.
    fn mcnemar_by_fractions(b: u64, c: u64) -> f64 {
        let n = b + c;
        let m = b.min(c);
        let mut coef: u128 = 1; // C(n, k)
        let mut tail: u128 = 0;
        for k in 0..=m {
            if k > 0 {
                coef = coef * u128::from(n - k + 1) / u128::from(k);
            }
            tail += coef;
        }
        (2.0 * tail as f64 / 2f64.powi(n as i32)).min(1.0)
    }

    #[test]
    fn mcnemar_small_tables_match_exact_fractions() {
        // b=7, c=1: 2 * (C(8,0) + C(8,1)) / 2^8 = 2 * 9 / 256 = 9/128.
        assert!(rel_close(mcnemar_exact(7, 1), 9.0 / 128.0, 1e-13));
        assert!(rel_close(mcnemar_exact(1, 7), 0.0703125, 1e-13));
        // b=0, c=10: 2 * C(10,0) / 2^10 = 2/1024 = 1/512.
        assert!(rel_close(mcnemar_exact(0, 10), 2.0 / 1024.0, 1e-13));
        assert_eq!(mcnemar_exact(3, 3), 1.0);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        assert_eq!(mcnemar_exact(0, 1), 1.0);
        for (b, c) in [
            (1, 2),
            (5, 0),
            (12, 4),
            (20, 31),
            (40, 60),
            (3, 30),
            (55, 45),
        ] {
            let exact = mcnemar_by_fractions(b, c);
            let got = mcnemar_exact(b, c);
            assert!(
                rel_close(got, exact, 1e-12),
                "b={b} c={c}: {got} vs {exact}"
            );
        }
    }

    #[test]
    fn mcnemar_large_counts() {
        // Exact values from Python's arbitrary-precision integers:
        // 2 * sum_{k<=m} comb(n, k) / 2**n as a Fraction, then float.
        let p = mcnemar_exact(5200, 4800);
        assert!(rel_close(p, 6.593_515_598_672_442e-5, 1e-12), "{p}");
        assert!(rel_close(
            mcnemar_exact(480, 520),
            0.217_448_293_204_140_94,
            1e-11
        ));
        // b + c = 1,000,000 (terms down to m - 30000 summed exactly in Python).
        let p = mcnemar_exact(500_800, 499_200);
        assert!(rel_close(p, 0.109_820_556_506_149_41, 1e-12), "{p}");
        // Sanity against the normal approximation with continuity correction:
        // z = (400 - 1) / sqrt(10000) = 3.99, 2 * (1 - Φ(3.99)) ≈ 6.6e-5.
        let z = 3.99;
        let approx = 2.0 * normal_sf(z);
        assert!(rel_close(approx, 6.607_329_525_880_49e-5, 1e-9));
        assert!(rel_close(mcnemar_exact(5200, 4800), approx, 0.01));
        // Far tail stays finite and positive, and underflow gives 0, not NaN.
        let far = mcnemar_exact(600_000, 400_000);
        assert!(far.is_finite() && far >= 0.0);
        assert_eq!(mcnemar_exact(1_000_000, 0), 0.0);
    }

    #[test]
    fn mcnemar_switch_to_normal_is_seamless() {
        // Just under the exact limit, both methods agree closely.
        let (b, c) = (500_000_600_000, 499_999_400_000);
        let exact = mcnemar_sum(b, c);
        let approx = mcnemar_normal(b, c);
        assert!(rel_close(exact, approx, 1e-5), "{exact} vs {approx}");
        // Huge counts do not overflow or panic.
        assert_eq!(mcnemar_exact(u64::MAX, u64::MAX), 1.0);
        assert_eq!(mcnemar_exact(u64::MAX, 0), 0.0);
        assert!(mcnemar_exact(u64::MAX, u64::MAX - 1) > 0.99);
    }

    #[test]
    fn binomial_pmf_matches_log_gamma_form() {
        for (m, n) in [(1.0, 2.0), (3.0, 10.0), (17.0, 40.0), (400.0, 1000.0)] {
            let direct = ln_gamma(n + 1.0) - ln_gamma(m + 1.0) - ln_gamma(n - m + 1.0) - n * LN_2;
            assert!(close(ln_binom_half_pmf(m, n), direct, 1e-11), "m={m} n={n}");
        }
    }

    /// Two correlated models on `n` images: A right with prob 0.80, B with prob 0.83; the true
    /// difference is 0.03. A shared latent draw makes their errors overlap.
    fn synthetic(n: usize, seed: u64) -> (Vec<bool>, Vec<bool>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut a = Vec::with_capacity(n);
        let mut b = Vec::with_capacity(n);
        for _ in 0..n {
            let u: f64 = rng.random_range(0.0..1.0);
            let v = if rng.random_range(0.0..1.0) < 0.7 {
                u
            } else {
                rng.random_range(0.0..1.0)
            };
            a.push(u < 0.80);
            b.push(v < 0.83);
        }
        (a, b)
    }

    #[test]
    fn bootstrap_covers_true_difference() {
        let truth = 0.03;
        let datasets = 200;
        // ~0.5 s with optimizations; unoptimized builds (the RNG is ~50x slower there) check
        // the same coverage on smaller datasets.
        let (images, resamples) = if cfg!(debug_assertions) {
            (500, 200)
        } else {
            (2000, 400)
        };
        let mut covered = 0;
        for seed in 0..datasets {
            let (a, b) = synthetic(images, 1000 + seed);
            let iv = paired_bootstrap(&a, &b, resamples, seed).expect("valid input");
            assert!(iv.low <= iv.estimate && iv.estimate <= iv.high);
            if iv.low <= truth && truth <= iv.high {
                covered += 1;
            }
        }
        let coverage = f64::from(covered) / datasets as f64;
        assert!((0.90..=0.99).contains(&coverage), "coverage {coverage}");
    }

    #[test]
    fn bootstrap_basics() {
        let (a, b) = synthetic(500, 7);
        let iv = paired_bootstrap(&a, &b, 300, 42).expect("valid input");
        let right = |v: &[bool]| v.iter().filter(|&&x| x).count() as f64;
        assert!(close(iv.estimate, (right(&b) - right(&a)) / 500.0, 1e-15));
        // Width near the analytic one: var(d) / n with d in {-1, 0, 1}.
        let d: Vec<f64> = a
            .iter()
            .zip(&b)
            .map(|(&x, &y)| f64::from(i8::from(y) - i8::from(x)))
            .collect();
        let (_, sd) = mean_std(&d).expect("non-empty");
        let expected = 2.0 * 1.96 * sd / 500f64.sqrt();
        let width = iv.high - iv.low;
        assert!(rel_close(width, expected, 0.2), "{width} vs {expected}");
        // Each half of a larger run's interval is close to 1.96 standard errors (the 2.5% and
        // 97.5% percentiles; the 5%/95% pair would give 1.645, 16% less). Percentile noise and
        // the 1/4000 grid of resampled means keep the halves within ~7% of 1.96 SE.
        let (a4, b4) = synthetic(4000, 8);
        let big = paired_bootstrap(&a4, &b4, 5000, 9).expect("valid input");
        let d4: Vec<f64> = a4
            .iter()
            .zip(&b4)
            .map(|(&x, &y)| f64::from(i8::from(y) - i8::from(x)))
            .collect();
        let half = 1.959_964 * mean_std(&d4).expect("non-empty").1 / 4000f64.sqrt();
        assert!(
            rel_close(big.high - big.estimate, half, 0.08),
            "{big:?} vs {half}"
        );
        assert!(
            rel_close(big.estimate - big.low, half, 0.08),
            "{big:?} vs {half}"
        );
        // Seeded: same seed, same interval; the full subset reproduces the full bootstrap.
        assert_eq!(paired_bootstrap(&a, &b, 300, 42), Some(iv));
        let all: Vec<usize> = (0..500).collect();
        assert_eq!(paired_bootstrap_subset(&a, &b, &all, 300, 42), Some(iv));
        // A subset where B is always right and A always wrong: difference exactly 1.
        let a2 = [false, true, false, true];
        let b2 = [true, true, true, false];
        let sub = paired_bootstrap_subset(&a2, &b2, &[0, 2], 100, 1).expect("valid");
        assert_eq!((sub.estimate, sub.low, sub.high), (1.0, 1.0, 1.0));
    }

    #[test]
    fn percentile_interpolates() {
        let v = [0.0, 1.0, 2.0, 3.0, 4.0];
        assert!(close(percentile(&v, 0.3), 1.2, 1e-15));
        assert!(close(percentile(&v, 0.975), 3.9, 1e-15));
        assert_eq!(percentile(&v, 1.0), 4.0);
        assert_eq!(percentile(&[5.0], 0.025), 5.0);
    }

    #[test]
    fn wilson_known_values() {
        let (lo, hi) = wilson_interval(8, 10).expect("n > 0");
        assert!(
            close(lo, 0.490_162_471_536_641_83, 1e-12) && close(hi, 0.943_317_848_545_624_7, 1e-12)
        );
        assert!(close(lo, 0.4902, 5e-5) && close(hi, 0.9433, 5e-5));
        let (lo, hi) = wilson_interval(0, 10).expect("n > 0");
        assert_eq!(lo, 0.0);
        assert!(close(hi, 0.277_532_799_862_889_15, 1e-12));
        let (lo, hi) = wilson_interval(10, 10).expect("n > 0");
        assert!(close(lo, 0.722_467_200_137_110_9, 1e-12) && hi == 1.0);
        assert_eq!(wilson_interval(0, 0), None);
        assert_eq!(wilson_interval(11, 10), None);
        let (lo, hi) = wilson_interval(u64::MAX / 2, u64::MAX).expect("n > 0");
        assert!(lo < 0.5 && hi > 0.5 && hi - lo < 1e-8);
    }

    #[test]
    fn quantiles_known_values() {
        assert!(close(normal_quantile(0.975), 1.959_963_984_540_054, 1e-14));
        assert!(close(normal_quantile(0.025), -1.959_963_984_540_054, 1e-14));
        assert!(close(normal_quantile(0.8), 0.841_621_233_572_914_4, 1e-14));
        assert!(close(normal_quantile(1e-10), -6.361_340_902_404_056, 1e-12));
        assert!(close(normal_quantile(1e-300), -37.047_096_299_361_2, 1e-10));
        assert_eq!(normal_quantile(0.5), 0.0);
        // Round trip through the independent erfc.
        for p in [1e-12, 1e-5, 0.01, 0.3, 0.6, 0.99] {
            let z = normal_quantile(p);
            assert!(rel_close(normal_sf(-z), p, 1e-12), "p={p}");
        }
        // erfc against Python's math.erfc.
        assert!(rel_close(erfc(0.5), 0.479_500_122_186_953_5, 1e-14));
        assert!(rel_close(erfc(1.0), 0.157_299_207_050_285_13, 1e-14));
        assert!(rel_close(erfc(3.0), 2.209_049_699_858_543_8e-5, 1e-13));
        assert!(rel_close(erfc(6.0), 2.151_973_671_249_891_6e-17, 1e-13));
        assert!(rel_close(erfc(2.499_999_999), erfc(2.5), 1e-8));

        // Student t, against tables.
        assert!(close(t_quantile(0.975, 10.0), 2.228_138_851_986_273, 1e-9));
        assert!(close(t_quantile(0.975, 1.0), 12.706_204_736_174_7, 1e-9));
        assert!(close(t_quantile(0.975, 2.0), 4.302_652_729_749_464, 1e-9));
        assert!(close(t_quantile(0.975, 30.0), 2.042_272_456_301_238, 1e-9));
        assert!(close(t_quantile(0.995, 5.0), 4.032_142_983_557_536, 1e-9));
        assert!(close(t_quantile(0.975, 1000.0), 1.962_339_080_826_4, 1e-9));
        assert!(close(t_quantile(0.025, 10.0), -2.228_138_851_986_273, 1e-9));
        assert!(close(t_quantile(0.975, 1e9), 1.959_963_986_5, 1e-8));
        assert_eq!(t_quantile(0.5, 7.0), 0.0);
    }

    #[test]
    fn t_quantile_inverts_the_cdf() {
        for df in [0.5, 1.0, 2.0, 3.0, 4.41, 17.0, 250.0, 5e4] {
            for p in [1e-12, 1e-4, 0.025, 0.3, 0.499, 0.9, 0.975, 0.999_999] {
                let t = t_quantile(p, df);
                let upper = 0.5 * t_two_sided_p(t, df);
                let cdf = if t >= 0.0 { 1.0 - upper } else { upper };
                assert!(rel_close(cdf, p, 1e-9), "df={df} p={p}: t={t} cdf={cdf}");
            }
        }
        // The Cornish–Fisher expansion is already within 1e-9 at df = 100 for p = 0.975 (its
        // last term is ~1.6e-8 there, so this checks all four).
        let cf = cornish_fisher(normal_quantile(0.975), 100.0);
        assert!(
            close(cf, t_upper_quantile_bisect(0.025, 100.0), 1e-9),
            "{cf}"
        );
        // The Cornish–Fisher branch meets the bisection branch.
        for p in [1e-10_f64, 0.025, 0.9] {
            let z = -normal_quantile(p.min(1.0 - p));
            let cf = cornish_fisher(z, 1e5);
            let bisect = t_upper_quantile_bisect(p.min(1.0 - p), 1e5);
            assert!(close(cf, bisect, 1e-9), "p={p}: {cf} vs {bisect}");
        }
    }

    /// P[|T| > t] by numerical integration: with x = sqrt(df) tan θ the t density becomes
    /// cos^(df-1) θ on [0, π/2), smooth for df >= 1, so Simpson's rule is very accurate.
    fn t_two_sided_by_integration(t: f64, df: f64) -> f64 {
        let simpson = |lo: f64, hi: f64| {
            let n = 20_000;
            let h = (hi - lo) / f64::from(n);
            let f = |th: f64| th.cos().powf(df - 1.0);
            let mut s = f(lo) + f(hi);
            for i in 1..n {
                s += f(lo + h * f64::from(i)) * if i % 2 == 1 { 4.0 } else { 2.0 };
            }
            s * h / 3.0
        };
        let theta = (t.abs() / df.sqrt()).atan();
        simpson(theta, PI / 2.0) / simpson(0.0, PI / 2.0)
    }

    #[test]
    fn welch_by_hand() {
        let a = [1.0, 2.0, 3.0, 4.0];
        let b = [2.0, 4.0, 6.0, 8.0];
        let r = welch(&a, &b).expect("enough data");
        // By hand: means 2.5 and 5; variances 5/3 and 20/3; se² = 5/12 + 20/12 = 25/12;
        // df = (25/12)² / ((5/12)²/3 + (20/12)²/3) = 75/17; t = 2.5 / sqrt(25/12) = sqrt(3).
        let se = (25.0f64 / 12.0).sqrt();
        assert!(close(r.difference.estimate, 2.5, 1e-15));
        assert!(close(r.df, 75.0 / 17.0, 1e-12));
        let p = t_two_sided_by_integration(3f64.sqrt(), 75.0 / 17.0);
        assert!(close(r.p_value, p, 1e-9), "{} vs {p}", r.p_value);
        // The interval ends are where the two-sided p-value is exactly 0.05.
        let half = r.difference.high - r.difference.estimate;
        assert!(close(r.difference.estimate - r.difference.low, half, 1e-12));
        assert!(close(
            t_two_sided_by_integration(half / se, 75.0 / 17.0),
            0.05,
            1e-9
        ));
        // Swapping the groups flips the sign only.
        let s = welch(&b, &a).expect("enough data");
        assert!(close(s.difference.estimate, -2.5, 1e-15) && close(s.p_value, r.p_value, 1e-15));
        // Integer df agrees with the tabled t quantile: equal sizes and variances give df = 2n - 2.
        let c = [11.0, 12.0, 13.0, 14.0, 15.0, 16.0];
        let d = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let e = welch(&d, &c).expect("enough data");
        assert!(close(e.df, 10.0, 1e-12));
        let se = (2.0 * 3.5 / 6.0f64).sqrt();
        assert!(close(
            e.difference.high - 10.0,
            2.228_138_851_986_273 * se,
            1e-9
        ));
    }

    #[test]
    fn welch_degenerate() {
        assert!(welch(&[1.0], &[1.0, 2.0]).is_none());
        assert!(welch(&[], &[]).is_none());
        assert!(welch(&[1.0, f64::NAN], &[1.0, 2.0]).is_none());
        assert!(welch(&[1.0, f64::INFINITY], &[1.0, 2.0]).is_none());
        assert!(welch(&[f64::NAN; 3], &[1.0, 2.0]).is_none());
        let same = welch(&[0.5, 0.5], &[0.5, 0.5, 0.5]).expect("two each");
        assert_eq!(same.p_value, 1.0);
        assert_eq!(
            same.difference,
            Interval {
                estimate: 0.0,
                low: 0.0,
                high: 0.0
            }
        );
        let apart = welch(&[0.5, 0.5], &[0.7, 0.7]).expect("two each");
        assert_eq!(apart.p_value, 0.0);
        assert!(close(apart.difference.low, 0.2, 1e-15));
        // One group constant: df is n - 1 of the other.
        let one = welch(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]).expect("enough");
        assert!(close(one.df, 2.0, 1e-12));
        // NaNs are skipped; tiny and huge spreads stay finite.
        let nan = welch(&[1.0, f64::NAN, 2.0], &[3.0, 4.0]).expect("two each");
        assert!(close(nan.difference.estimate, 2.0, 1e-15));
        assert!(welch(&[1e-300, 2e-300], &[1.0, 1.0 + 1e-300]).is_some());
        let big = welch(&[-1e300, 1e300], &[0.0, 1.0]);
        assert!(big.is_none() || big.is_some_and(|r| r.p_value.is_finite()));
    }

    #[test]
    fn mean_std_cases() {
        assert_eq!(mean_std(&[]), None);
        assert_eq!(mean_std(&[f64::NAN]), None);
        assert_eq!(mean_std(&[3.0]), Some((3.0, 0.0)));
        assert_eq!(mean_std(&[f64::NAN, 3.0]), Some((3.0, 0.0)));
        let (m, s) = mean_std(&[1.0, 2.0, 3.0, 4.0]).expect("values");
        assert!(close(m, 2.5, 1e-15) && close(s, (5.0f64 / 3.0).sqrt(), 1e-15));
        let (m, s) = mean_std(&[1e308, 1e308, 1e308]).expect("values");
        assert!(close(m, 1e308, 1e293) && s == 0.0);
    }

    #[test]
    fn sample_size() {
        // Connor (1987) with δ = 0.05, ψ = 0.1: (1.95996 sqrt(0.1) + 0.84162 sqrt(0.0975))² / 0.0025
        // = 311.59 → 312.
        let formula = |d: f64, psi: f64| {
            let (za, zb) = (1.959_963_984_540_054, 0.841_621_233_572_914_4);
            ((za * psi.sqrt() + zb * (psi - d * d).sqrt()).powi(2) / (d * d)).ceil() as u64
        };
        assert_eq!(mcnemar_sample_size(0.05, 0.1), Some(formula(0.05, 0.1)));
        assert_eq!(mcnemar_sample_size(0.05, 0.1), Some(312));
        assert_eq!(mcnemar_sample_size(0.01, 0.08), Some(formula(0.01, 0.08)));
        // Rounded up, not to nearest: 1567.42 → 1568, 3137.19 → 3138 (values from the formula).
        assert_eq!(mcnemar_sample_size(0.02, 0.08), Some(1568));
        assert_eq!(mcnemar_sample_size(0.02, 0.16), Some(3138));
        // Larger differences need fewer images; more disagreement needs more.
        let n1 = mcnemar_sample_size(0.01, 0.08).expect("valid");
        let n2 = mcnemar_sample_size(0.02, 0.08).expect("valid");
        let n3 = mcnemar_sample_size(0.02, 0.16).expect("valid");
        assert!(n1 > n2 && n3 > n2);
        // ψ below δ is raised to δ.
        assert_eq!(
            mcnemar_sample_size(0.05, 0.01),
            mcnemar_sample_size(0.05, 0.05)
        );
        assert_eq!(mcnemar_sample_size(1.0, 1.0), Some(4));
        for (d, psi) in [
            (0.0, 0.1),
            (-0.1, 0.1),
            (0.1, 0.0),
            (f64::NAN, 0.1),
            (0.1, f64::NAN),
            (2.0, 0.5),
            (0.1, 1.5),
        ] {
            assert_eq!(mcnemar_sample_size(d, psi), None, "{d} {psi}");
        }
        assert_eq!(mcnemar_sample_size(1e-12, 1.0), None);
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        assert_eq!(paired_bootstrap(&[], &[], 100, 0), None);
        assert_eq!(paired_bootstrap(&[true], &[true, false], 100, 0), None);
        assert_eq!(paired_bootstrap(&[true], &[false], 0, 0), None);
        assert_eq!(paired_bootstrap_subset(&[true], &[false], &[], 10, 0), None);
        assert_eq!(
            paired_bootstrap_subset(&[true], &[false], &[1], 10, 0),
            None
        );
        assert_eq!(
            paired_bootstrap_subset(&[true], &[false, true], &[0], 10, 0),
            None
        );
        let one = paired_bootstrap(&[true], &[false], 10, 0).expect("one image");
        assert_eq!((one.estimate, one.low, one.high), (-1.0, -1.0, -1.0));
        for p in [f64::NAN, -0.1, 1.1] {
            assert!(normal_quantile(p).is_nan());
            assert!(t_quantile(p, 5.0).is_nan());
        }
        assert_eq!(normal_quantile(0.0), f64::NEG_INFINITY);
        assert_eq!(normal_quantile(1.0), f64::INFINITY);
        assert_eq!(t_quantile(1.0, 3.0), f64::INFINITY);
        assert_eq!(t_quantile(0.0, 3.0), f64::NEG_INFINITY);
        for df in [0.0, -1.0, f64::NAN] {
            assert!(t_quantile(0.9, df).is_nan());
        }
        assert_eq!(t_quantile(0.975, f64::INFINITY), normal_quantile(0.975));
        // Very heavy tails: huge or infinite, never NaN.
        assert!(t_quantile(1e-300, 0.01) == f64::NEG_INFINITY || t_quantile(1e-300, 0.01) < -1e100);
        assert!(t_quantile(1e-300, 1.0) < -1e299);
        assert!(t_quantile(1e-300, 3.0).is_finite());
        assert!(t_two_sided_p(f64::INFINITY, 3.0) == 0.0 && t_two_sided_p(0.0, 3.0) == 1.0);
    }
}
