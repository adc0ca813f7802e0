//! Kernel launches of one paper-xxs training step on the GPU code path (cubecl's CPU runtime
//! here; a launch is counted where it is issued, so a GPU issues the same number). The ceilings
//! guard the count against regressions (a fused kernel falling back to burn's per-tensor ops,
//! an op split into more launches); they are about 5% above what the step launches now, 1,478
//! (BENCHMARKS.md), against 7,181 a step with burn's ops throughout.

use mvlab::bench::bench_model;
use mvlab::config::{Flavour, Variant};
use mvlab::model::ModelConfig;

#[test]
fn a_paper_xxs_training_step_stays_under_its_launch_ceilings() {
    crate::common::cube_setup();
    let selected = mvlab::device::select("cube-cpu").unwrap_or_else(|e| panic!("{e}"));
    // The shapes of the parity test's paper-xxs (32x32, batch 4), so that both share the
    // compiled kernels and autotune results in cubecl's cache.
    let cfg = ModelConfig {
        flavour: Flavour::Paper,
        variant: Variant::Xxs,
        num_classes: 3,
        image_size: 32,
        dropout: 0.0,
    };
    let b = bench_model(&cfg, 4, 1, &selected);
    let step = b.launches.expect("launches are counted on cubecl devices");
    eprintln!(
        "paper-xxs training step: {step}; inference {:?}",
        b.infer_launches
    );
    assert!(
        step.forward > 0 && step.backward > 0,
        "the counter sees the step: {step}"
    );
    for (phase, count, ceiling) in [
        ("forward", step.forward, 735),
        ("backward", step.backward, 795),
        // One launch per chunk of parameters (plus the global norm), not per tensor: burn's
        // Adam launches thousands for paper-xxs's ~250 tensors.
        ("optimizer", step.optimizer, 16),
        ("moving average", step.average, 10),
        ("the whole step", step.total(), 1_555),
    ] {
        assert!(
            count <= ceiling,
            "{phase}: {count} launches, ceiling {ceiling} ({step})"
        );
    }
    let inference = b.infer_launches.expect("inference launches are counted");
    assert!(
        inference <= 630,
        "inference: {inference} launches, ceiling 630"
    );
}
