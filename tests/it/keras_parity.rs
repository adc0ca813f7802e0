//! The keras flavour reproduces the Keras example's network number for number.
//! Fixture: scripts/make_keras_fixture.py (Keras 3 on TensorFlow).

use crate::common::{fixture, read_tensor as read};
use burn::prelude::*;
use mvlab::config::{Flavour, Variant};
use mvlab::model::ModelConfig;
use mvlab::model::timm::{Naming, load_with};

#[test]
fn keras_mobilevit_xxs_logits_match() {
    let device = Device::flex();
    let cfg = ModelConfig {
        flavour: Flavour::Keras,
        variant: Variant::Xxs,
        num_classes: 5,
        image_size: 64,
        dropout: 0.1,
    };
    let (model, report) = load_with(
        cfg.init(&device),
        &fixture("keras_mobilevit_xxs.safetensors"),
        Naming::Native,
    )
    .unwrap();
    assert!(!report.head_reinitialised);
    let io = fixture("keras_mobilevit_xxs_io.safetensors");
    let (shape, input) = read(&io, "input");
    let (_, expected) = read(&io, "logits");
    let (_, features) = read(&io, "features");
    let x = Tensor::<4>::from_data(
        TensorData::new(input, [shape[0], shape[1], shape[2], shape[3]]),
        &device,
    );
    let model = model.valid();
    // The logits are large (the fixture's weights are scaled up): compare relative to magnitude.
    let close = |got: &[f32], want: &[f32], what: &str| {
        assert_eq!(got.len(), want.len(), "{what}");
        let worst = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "{what}: max relative difference {worst}");
    };
    let got = model
        .forward(x.clone())
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap();
    close(&got, &expected, "logits");
    // The first MobileViT block's output, as Keras computes it.
    let mut h = model.stem.forward(x);
    for block in &model.blocks[..6] {
        h = block.forward(h);
    }
    close(
        &h.into_data().convert::<f32>().try_to_vec::<f32>().unwrap(),
        &features,
        "first MobileViT block",
    );
}
