//! Checks on an evaluation that tell a user the val numbers mean nothing yet: predictions that
//! collapsed onto one class while training learns.

use crate::eval::Evaluation;

/// A warning when the model predicts (nearly) one class for all val images, or val accuracy
/// sits at the majority class's share while train accuracy is well above it. Names the likely
/// cause and the fix.
pub fn collapse_warning(
    ev: &Evaluation,
    classes: &[String],
    train_accuracy: f64,
    bn_recalibrate: usize,
) -> Option<String> {
    if ev.images == 0 || classes.len() < 2 {
        return None;
    }
    let n = ev.images as f64;
    let predicted: Vec<usize> = (0..classes.len())
        .map(|j| ev.confusion.iter().map(|row| row[j]).sum())
        .collect();
    let truth: Vec<usize> = ev.confusion.iter().map(|row| row.iter().sum()).collect();
    let (top, &top_count) = predicted.iter().enumerate().max_by_key(|(_, c)| **c)?;
    let majority = *truth.iter().max()? as f64 / n;
    // One class for nearly everything, where the images are not nearly all of that class.
    let one_class = top_count as f64 / n >= 0.95 && (truth[top] as f64 / n) < 0.9;
    // At the prior while train accuracy has covered at least half the way from it to 100%.
    let at_prior = (ev.accuracy - majority).abs() <= 0.02
        && train_accuracy >= majority + 0.5 * (1.0 - majority);
    if !(one_class || at_prior) {
        return None;
    }
    let what = if one_class {
        format!(
            "the model predicts \"{}\" for {:.0}% of the val images",
            classes[top],
            100.0 * top_count as f64 / n
        )
    } else {
        format!(
            "val accuracy {:.1}% is the majority class's share ({:.1}%) while train accuracy is {:.1}%",
            100.0 * ev.accuracy,
            100.0 * majority,
            100.0 * train_accuracy
        )
    };
    let advice = if bn_recalibrate == 0 {
        "likely cause: BatchNorm's running statistics still carry their initial values (a high \
         momentum such as Keras' 0.99 and few steps), so the eval-mode model is not the trained \
         one; fix: set train.bn_recalibrate = 10 to recompute them from training batches before \
         each evaluation"
    } else {
        "BatchNorm statistics are already recalibrated: the model may not have learned yet (try \
         more epochs, or a lower train.lr)"
    };
    Some(format!("val predictions collapsed: {what}; {advice}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(confusion: Vec<Vec<usize>>) -> Evaluation {
        let images = confusion.iter().flatten().sum();
        let right: usize = (0..confusion.len()).map(|i| confusion[i][i]).sum();
        Evaluation {
            loss: 1.0,
            accuracy: right as f64 / images as f64,
            images,
            confusion,
            predictions: Vec::new(),
        }
    }

    #[test]
    fn one_class_for_everything_is_a_collapse() {
        let classes = vec!["a".to_string(), "b".into(), "c".into()];
        let collapsed = ev(vec![vec![10, 0, 0], vec![10, 0, 0], vec![9, 0, 1]]);
        let w = collapse_warning(&collapsed, &classes, 0.9, 0).unwrap();
        assert!(
            w.contains("\"a\"") && w.contains("train.bn_recalibrate"),
            "{w}"
        );
        let healthy = ev(vec![vec![8, 1, 1], vec![2, 7, 1], vec![1, 1, 8]]);
        assert_eq!(collapse_warning(&healthy, &classes, 0.9, 0), None);
    }

    #[test]
    fn val_at_the_prior_while_train_learns_is_a_collapse() {
        let classes = vec!["a".to_string(), "b".into()];
        // 80 / 20 val split, accuracy 80%: the share of "a", though not all predictions are "a".
        let at_prior = ev(vec![vec![72, 8], vec![12, 8]]);
        assert!(collapse_warning(&at_prior, &classes, 0.99, 0).is_some());
        assert_eq!(
            collapse_warning(&at_prior, &classes, 0.82, 0),
            None,
            "train did not learn either"
        );
    }
}
