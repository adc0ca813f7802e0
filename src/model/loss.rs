//! The training objective, shared by training, evaluation and the benchmarks.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

/// Cross-entropy against label-smoothed one-hot targets, as Keras computes it:
/// `-(1 - s) log p[label] - (s / C) sum_c log p[c]`. The label's term is gathered rather than
/// multiplied by a one-hot matrix: building that matrix reads the labels back to the host (twice,
/// to check and to fill it), which stalls a GPU's queue every step.
pub fn smoothed_cross_entropy(
    logits: Tensor<2>,
    labels: Tensor<1, Int>,
    smoothing: f64,
) -> Tensor<1> {
    let [batch, classes] = logits.dims();
    let log_p = log_softmax(logits, 1);
    let of_label = log_p.clone().gather(1, labels.reshape([batch, 1]));
    let spread = log_p.sum_dim(1).mul_scalar(smoothing / classes as f64);
    (of_label.mul_scalar(1.0 - smoothing) + spread).mean().neg()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_one_hot_form() {
        let device = Device::flex();
        let logits = Tensor::<2>::from_data(
            TensorData::new(vec![2.0f32, 1.0, 0.0, -1.0, 0.5, 3.0], [2, 3]),
            &device,
        );
        let labels = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 2], [2]), &device);
        let s = 0.1;
        let ours = smoothed_cross_entropy(logits.clone(), labels.clone(), s).into_scalar::<f32>();
        let target = labels
            .one_hot::<2>(3)
            .float()
            .mul_scalar(1.0 - s)
            .add_scalar(s / 3.0);
        let reference = (target * log_softmax(logits, 1))
            .sum_dim(1)
            .mean()
            .neg()
            .into_scalar::<f32>();
        assert!((ours - reference).abs() < 1e-6, "{ours} vs {reference}");
    }
}
