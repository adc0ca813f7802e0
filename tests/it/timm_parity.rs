//! The paper flavour loads timm's mobilevit_xxs weights and reproduces timm's logits.
//! Fixture: scripts/make_timm_fixture.py.

use crate::common::{fixture, max_abs_diff, read_tensor as read, values};
use burn::prelude::*;
use mvlab::config::{Flavour, Variant};
use mvlab::model::{ModelConfig, timm};

fn xxs(num_classes: usize) -> ModelConfig {
    ModelConfig {
        flavour: Flavour::Paper,
        variant: Variant::Xxs,
        num_classes,
        image_size: 64,
        dropout: 0.0,
    }
}

#[test]
fn timm_mobilevit_xxs_logits_match() {
    let device = Device::flex();
    let (model, report) = timm::load(
        xxs(5).init(&device),
        &fixture("timm_mobilevit_xxs.safetensors"),
    )
    .unwrap();
    assert!(!report.head_reinitialised);
    let io = fixture("timm_mobilevit_xxs_io.safetensors");
    let (shape, input) = read(&io, "input");
    let (_, expected) = read(&io, "logits");
    let x = Tensor::<4>::from_data(
        TensorData::new(input, [shape[0], shape[1], shape[2], shape[3]]),
        &device,
    );
    let got = values(model.valid().forward(x));
    let max_diff = max_abs_diff(&got, &expected);
    assert!(
        max_diff < 1e-4,
        "max abs difference {max_diff}: got {got:?}, timm {expected:?}"
    );
}

#[test]
fn other_class_count_reinitialises_only_the_head() {
    let device = Device::flex();
    let (_, report) = timm::load(
        xxs(3).init(&device),
        &fixture("timm_mobilevit_xxs.safetensors"),
    )
    .unwrap();
    assert!(report.head_reinitialised);
}

#[test]
fn wrong_file_names_the_mismatched_tensors() {
    let device = Device::flex();
    let xs = ModelConfig {
        variant: Variant::Xs,
        ..xxs(5)
    };
    let err = timm::load(xs.init(&device), &fixture("timm_mobilevit_xxs.safetensors"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("mismatched tensors") && err.contains("stages.0.0.conv1_1x1.conv.weight"),
        "{err}"
    );
    let keras = ModelConfig {
        flavour: Flavour::Keras,
        ..xxs(5)
    };
    let err = timm::load(
        keras.init(&device),
        &fixture("timm_mobilevit_xxs.safetensors"),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("missing tensors"), "{err}");
}

#[test]
fn saved_weights_round_trip_through_timm_names() {
    let device = Device::flex();
    let model = xxs(5).init(&device);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.safetensors");
    std::fs::write(&file, timm::to_safetensors(&model).unwrap()).unwrap();
    let (loaded, _) = timm::load(xxs(5).init(&device), &file).unwrap();
    let x = Tensor::<4>::ones([1, 3, 64, 64], &device);
    let a = values(model.valid().forward(x.clone()));
    let b = values(loaded.valid().forward(x));
    // Same weights; only the memory layout of transposed linear weights differs.
    let max_diff = max_abs_diff(&a, &b);
    assert!(max_diff < 1e-6, "{a:?} vs {b:?}");
}
