//! The GPU code path against the CPU one, on cubecl's CPU runtime (`--features cube-cpu`): the
//! same cube kernels and burn cubecl ops that the cuda and vulkan builds run, compiled by LLVM
//! for this processor. The checks themselves are `mvlab::bench::parity` (also
//! `mvlab bench --parity --device cuda` on a GPU machine); `MVLAB_PARITY_DEVICE` picks another
//! device for this test.

use burn::prelude::*;

fn device() -> Device {
    crate::common::cube_setup();
    let spec = std::env::var("MVLAB_PARITY_DEVICE").unwrap_or_else(|_| "cube-cpu".into());
    mvlab::device::select(&spec)
        .unwrap_or_else(|e| panic!("{e}"))
        .device
}

#[test]
fn gpu_code_path_matches_burns_ops_and_the_cpu_backend() {
    let mut reported = 0;
    let checks = mvlab::bench::parity::run(&device(), &mut |c| {
        reported += 1;
        eprintln!(
            "{:<60} {:>10.2e} (tolerance {:.0e})",
            c.name, c.relative_error, c.tolerance
        );
    });
    // Five depthwise cases x 5 quantities, 4 for the 1x1 conv, 3 BatchNorm cases x 6, 2
    // LayerNorm cases x 4, 2 softmax cases x 2, the dropout mask, 9 per model flavour.
    assert_eq!(checks.len(), 5 * 5 + 4 + 3 * 6 + 2 * 4 + 2 * 2 + 1 + 2 * 9);
    assert_eq!(reported, checks.len(), "each check reported as it finishes");
    let failed: Vec<_> = checks.iter().filter(|c| !c.passed()).collect();
    assert!(failed.is_empty(), "failed: {failed:#?}");
}
