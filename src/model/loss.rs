//! The training objective, shared by training, evaluation and the benchmarks.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

/// Cross-entropy against label-smoothed one-hot targets, as Keras computes it.
pub fn smoothed_cross_entropy(
    logits: Tensor<2>,
    labels: Tensor<1, Int>,
    smoothing: f64,
) -> Tensor<1> {
    let [_, classes] = logits.dims();
    let target = labels
        .one_hot::<2>(classes)
        .float()
        .mul_scalar(1.0 - smoothing)
        .add_scalar(smoothing / classes as f64);
    (target * log_softmax(logits, 1)).sum_dim(1).mean().neg()
}
