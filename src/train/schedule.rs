//! Learning-rate schedules: the rate of each optimizer step as a pure function of the step, so
//! a resumed run continues the same sequence.

use crate::config::{Schedule, TrainSection};

/// The learning rate of optimizer step `step` (0-based) in a run of `steps_per_epoch` steps an
/// epoch: an optional linear warmup up to `lr`, then the schedule.
pub fn lr_at(t: &TrainSection, step: usize, steps_per_epoch: usize) -> f64 {
    let per_epoch = steps_per_epoch.max(1) as f64;
    let warmup = (t.warmup_epochs * per_epoch).round();
    let s = step as f64;
    if s < warmup {
        return t.lr * (s + 1.0) / warmup;
    }
    match t.schedule {
        Schedule::Constant => t.lr,
        Schedule::Cosine => {
            let span = (t.epochs as f64 * per_epoch - warmup - 1.0).max(1.0);
            let progress = ((s - warmup) / span).min(1.0);
            t.min_lr + 0.5 * (t.lr - t.min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
        }
        Schedule::Step => {
            let epoch = step / steps_per_epoch.max(1);
            t.lr * t.gamma.powi((epoch / t.step_epochs.max(1)) as i32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn train(schedule: Schedule) -> TrainSection {
        TrainSection {
            epochs: 10,
            lr: 1e-2,
            schedule,
            ..TrainSection::default()
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn constant_is_lr_throughout() {
        let t = train(Schedule::Constant);
        assert!([0, 7, 99].iter().all(|&s| close(lr_at(&t, s, 10), 1e-2)));
    }

    #[test]
    fn cosine_runs_from_lr_to_min_lr_after_its_warmup() {
        let t = TrainSection {
            warmup_epochs: 1.0,
            min_lr: 1e-4,
            ..train(Schedule::Cosine)
        };
        // 10 steps an epoch: warmup over steps 0..10, then 90 cosine steps 10..=99.
        assert!(close(lr_at(&t, 0, 10), 1e-3));
        assert!(close(lr_at(&t, 4, 10), 5e-3));
        assert!(close(lr_at(&t, 9, 10), 1e-2));
        assert!(close(lr_at(&t, 10, 10), 1e-2));
        let mid = 10 + 89 / 2; // progress 44/89, just before half way
        let expected =
            1e-4 + 0.5 * (1e-2 - 1e-4) * (1.0 + (std::f64::consts::PI * 44.0 / 89.0).cos());
        assert!(close(lr_at(&t, mid, 10), expected));
        assert!(close(lr_at(&t, 99, 10), 1e-4), "ends at min_lr");
        assert!(close(lr_at(&t, 150, 10), 1e-4), "stays there");
        let lrs: Vec<f64> = (10..100).map(|s| lr_at(&t, s, 10)).collect();
        assert!(
            lrs.windows(2).all(|w| w[1] <= w[0]),
            "never rises after warmup"
        );
    }

    #[test]
    fn step_multiplies_by_gamma_every_step_epochs() {
        let t = TrainSection {
            step_epochs: 3,
            gamma: 0.5,
            ..train(Schedule::Step)
        };
        let at_epoch = |e: usize| lr_at(&t, e * 10 + 5, 10);
        assert!(close(at_epoch(0), 1e-2) && close(at_epoch(2), 1e-2));
        assert!(close(at_epoch(3), 5e-3) && close(at_epoch(5), 5e-3));
        assert!(close(at_epoch(6), 2.5e-3) && close(at_epoch(9), 1.25e-3));
    }
}
