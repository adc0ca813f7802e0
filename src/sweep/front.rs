//! Several objectives at once: dominance, non-dominated fronts and the hypervolume a set of
//! trials covers. Points are oriented so that lower is better in every coordinate.

/// Whether `a` dominates `b`: no worse anywhere, better somewhere.
pub fn dominates(a: &[f64], b: &[f64]) -> bool {
    a.iter().zip(b).all(|(x, y)| x <= y) && a.iter().zip(b).any(|(x, y)| x < y)
}

/// Each point's front: 0 for the non-dominated ones, 1 for those only they dominate, ...
pub fn ranks(points: &[Vec<f64>]) -> Vec<usize> {
    let n = points.len();
    let mut rank = vec![usize::MAX; n];
    let mut dominated_by = vec![0usize; n];
    let mut dominating: Vec<Vec<usize>> = vec![Vec::new(); n];
    for i in 0..n {
        for j in 0..n {
            if i != j && dominates(&points[i], &points[j]) {
                dominating[i].push(j);
                dominated_by[j] += 1;
            }
        }
    }
    let mut current: Vec<usize> = (0..n).filter(|&i| dominated_by[i] == 0).collect();
    let mut r = 0;
    while !current.is_empty() {
        let mut next = Vec::new();
        for &i in &current {
            rank[i] = r;
            for &j in &dominating[i] {
                dominated_by[j] -= 1;
                if dominated_by[j] == 0 {
                    next.push(j);
                }
            }
        }
        current = next;
        r += 1;
    }
    rank
}

/// Crowding distance of each point within its own set (NSGA-II): larger is lonelier; the
/// extremes of each coordinate get infinity.
pub fn crowding(points: &[Vec<f64>]) -> Vec<f64> {
    let n = points.len();
    let mut d = vec![0.0; n];
    let Some(dims) = points.first().map(Vec::len) else {
        return d;
    };
    for k in 0..dims {
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| points[a][k].total_cmp(&points[b][k]));
        let (lo, hi) = (points[order[0]][k], points[order[n - 1]][k]);
        d[order[0]] = f64::INFINITY;
        d[order[n - 1]] = f64::INFINITY;
        if hi > lo {
            for w in 1..n.saturating_sub(1) {
                d[order[w]] += (points[order[w + 1]][k] - points[order[w - 1]][k]) / (hi - lo);
            }
        }
    }
    d
}

/// The volume dominated by `points` and bounded by `reference` (a point worse than all of
/// them in every coordinate); points not better than the reference add nothing. Exact, by
/// slicing along the last coordinate (fine for the tens of trials of a sweep).
pub fn hypervolume(points: &[Vec<f64>], reference: &[f64]) -> f64 {
    let inside: Vec<Vec<f64>> = points
        .iter()
        .filter(|p| p.iter().zip(reference).all(|(x, r)| x < r))
        .cloned()
        .collect();
    slice_volume(inside, reference)
}

fn slice_volume(mut points: Vec<Vec<f64>>, reference: &[f64]) -> f64 {
    let dims = reference.len();
    if points.is_empty() {
        return 0.0;
    }
    if dims == 1 {
        let best = points.iter().map(|p| p[0]).fold(f64::INFINITY, f64::min);
        return reference[0] - best;
    }
    let last = dims - 1;
    points.sort_by(|a, b| a[last].total_cmp(&b[last]));
    let mut volume = 0.0;
    for i in 0..points.len() {
        let top = points.get(i + 1).map_or(reference[last], |p| p[last]);
        let depth = top - points[i][last];
        if depth > 0.0 {
            let below: Vec<Vec<f64>> = points[..=i].iter().map(|p| p[..last].to_vec()).collect();
            volume += depth * slice_volume(below, &reference[..last]);
        }
    }
    volume
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fronts_crowding_and_hypervolume_of_known_sets() {
        let p = vec![
            vec![1.0, 4.0],
            vec![2.0, 2.0],
            vec![4.0, 1.0],
            vec![3.0, 3.0],
            vec![4.0, 4.0],
        ];
        assert_eq!(ranks(&p), vec![0, 0, 0, 1, 2]);
        let c = crowding(&p[..3]);
        assert!(c[0].is_infinite() && c[2].is_infinite() && c[1].is_finite());
        // Staircase of the first three against (5, 5): 4*1 + 3*1... computed by hand: 11.
        assert!((hypervolume(&p, &[5.0, 5.0]) - 11.0).abs() < 1e-12);
        // Unit cube corner points in 3-D against (1,1,1): a single point at the origin fills it.
        assert!((hypervolume(&[vec![0.0, 0.0, 0.0]], &[1.0, 1.0, 1.0]) - 1.0).abs() < 1e-12);
        let three = vec![
            vec![0.0, 0.5, 0.5],
            vec![0.5, 0.0, 0.5],
            vec![0.5, 0.5, 0.0],
        ];
        // Inclusion-exclusion: 3 * 0.25 - 3 * 0.125 + 0.125 = 0.5.
        assert!((hypervolume(&three, &[1.0, 1.0, 1.0]) - 0.5).abs() < 1e-12);
        assert_eq!(hypervolume(&[vec![6.0, 0.0]], &[5.0, 5.0]), 0.0);
    }
}
