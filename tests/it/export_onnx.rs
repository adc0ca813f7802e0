//! Exported ONNX files run in tract (a real ONNX runtime) and agree with burn.

use crate::common::*;
use burn::prelude::*;
use mvlab::checkpoint::{self, ModelCard};
use mvlab::config::{Flavour, Variant};
use mvlab::data::loader::{Loader, LoaderOptions};
use mvlab::export::{self, OnnxModel};
use mvlab::model::ModelConfig;

fn burn_logits(model: &mvlab::model::MobileVit, images: &[f32], n: usize, s: usize) -> Vec<f32> {
    let x = Tensor::<4>::from_data(
        TensorData::new(images.to_vec(), [n, 3, s, s]),
        &Device::flex(),
    );
    values(model.valid().forward(x))
}

/// The logits onnxruntime (PyPI, installed by `.ci/run`) gives for `n` CHW images; `None`
/// (outside CI only) where it is not installed.
fn onnxruntime_logits(
    model: &std::path::Path,
    images: &[f32],
    n: usize,
    s: usize,
) -> Option<Vec<f32>> {
    let probe = output_within(
        std::process::Command::new("python3").args(["-c", "import onnxruntime"]),
        std::time::Duration::from_secs(60),
    );
    if !probe.status.success() {
        unavailable("onnxruntime", "python3 -m pip install onnxruntime");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.f32"), dir.path().join("out.f32"));
    let bytes: Vec<u8> = images.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&input, bytes).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/onnxruntime_logits.py");
    let out = output_within(
        std::process::Command::new("python3")
            .arg(script)
            .arg(model)
            .arg(&input)
            .arg(n.to_string())
            .arg(s.to_string())
            .arg(&output),
        std::time::Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "onnxruntime (python3 -m pip install onnxruntime): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(
        std::fs::read(&output)
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0
}

#[test]
fn every_flavour_and_variant_exports_and_matches_burn_in_fp32() {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let images: Vec<f32> = (0..2 * 3 * 64 * 64)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
        .collect();
    for (flavour, variant) in [
        (Flavour::Keras, Variant::Xxs),
        (Flavour::Paper, Variant::Xxs),
        (Flavour::Paper, Variant::Xs),
        (Flavour::Paper, Variant::S),
    ] {
        let cfg = ModelConfig {
            flavour,
            variant,
            num_classes: 5,
            image_size: 64,
            dropout: 0.1,
        };
        let model = cfg.init_seeded(11, &device);
        let card = ModelCard {
            model: cfg.clone(),
            classes: (0..5).map(|i| format!("c{i}")).collect(),
        };
        let path = dir.path().join(format!("{}.onnx", cfg.label()));
        let request = export::ExportRequest {
            format: export::ExportFormat::Onnx,
            quantize: None,
            calibration: None,
        };
        export::export(&model, &card, &request, &path).unwrap();
        let onnx = OnnxModel::load(&path).unwrap();
        assert_eq!(
            onnx.card.classes, card.classes,
            "class names travel in the metadata"
        );
        let got = onnx.logits(images.clone(), 2).unwrap();
        let want = burn_logits(&model, &images, 2, 64);
        assert!(
            max_abs_diff(&got, &want) < 1e-4,
            "{}: {got:?} vs {want:?}",
            cfg.label()
        );
    }
}

/// The sizes people use on phones and the reference's: where a feature map is not a multiple
/// of the patch (7x7 at 224 px, 5x5 at 160, 3x3 at 96) the graph resizes it as the model does.
#[test]
fn every_image_size_training_accepts_exports_and_matches_burn() {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    for size in [64, 96, 160, 224, 256] {
        let images: Vec<f32> = (0..3 * size * size)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
            .collect();
        for flavour in [Flavour::Keras, Flavour::Paper] {
            let cfg = ModelConfig {
                flavour,
                variant: Variant::Xxs,
                num_classes: 5,
                image_size: size,
                dropout: 0.0,
            };
            let model = cfg.init_seeded(size as u64, &device);
            let card = ModelCard {
                model: cfg.clone(),
                classes: (0..5).map(|i| format!("c{i}")).collect(),
            };
            let path = dir.path().join(format!("{}-{size}.onnx", cfg.label()));
            let request = export::ExportRequest {
                format: export::ExportFormat::Onnx,
                quantize: None,
                calibration: None,
            };
            export::export(&model, &card, &request, &path).unwrap();
            let want = burn_logits(&model, &images, 1, size);
            let tract = OnnxModel::load(&path)
                .unwrap()
                .logits(images.clone(), 1)
                .unwrap();
            let ort = onnxruntime_logits(&path, &images, 1, size);
            for (runtime, got) in [("tract", Some(tract)), ("onnxruntime", ort)] {
                let Some(got) = got else { continue };
                let diff = max_abs_diff(&got, &want);
                assert!(
                    diff < 1e-4,
                    "{} at {size} px in {runtime}: {diff}: {got:?} vs {want:?}",
                    cfg.label()
                );
            }
        }
    }
}

#[test]
fn a_trained_model_exports_to_fp32_and_int8() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 40, 64);
    let cfg = tiny_config(dir.path(), &root, 3, "");
    let db = dir.path().join("r.db");
    run_ok(mvlab().arg("--db").arg(&db).arg("run").arg(&cfg).args([
        "--set",
        "data.image_size=64",
        "--set",
        "data.resize_bigger=72",
    ]));
    let best = dir.path().join("r.runs/1/best.bpk");
    let loaded = checkpoint::load(&best, &Device::flex()).unwrap();

    let fp32 = dir.path().join("m.onnx");
    let int8 = dir.path().join("m-int8.onnx");
    run_ok(
        mvlab()
            .arg("--db")
            .arg(&db)
            .args(["export", "1", "--format", "onnx", "--out"])
            .arg(&fp32),
    );
    run_ok(
        mvlab()
            .arg("--db")
            .arg(&db)
            .args([
                "export",
                "1",
                "--format",
                "onnx",
                "--quantize",
                "int8",
                "--out",
            ])
            .arg(&int8),
    );
    let (fp32_size, int8_size) = (
        std::fs::metadata(&fp32).unwrap().len(),
        std::fs::metadata(&int8).unwrap().len(),
    );
    assert!(
        int8_size as f64 <= 0.35 * fp32_size as f64,
        "int8 {int8_size} bytes vs fp32 {fp32_size}"
    );

    // All 120 images, resized as validation does.
    let ds = mvlab::data::scan(&root).unwrap();
    let opts = LoaderOptions {
        image_size: 64,
        resize_bigger: 64,
        augment: false,
        batch_size: 40,
        shuffle: false,
        seed: 0,
        workers: 2,
        prefetch: 2,
        cache_mb: 64,
    };
    let loader = Loader::new(&ds, opts, dir.path()).unwrap();
    let (m32, m8) = (
        OnnxModel::load(&fp32).unwrap(),
        OnnxModel::load(&int8).unwrap(),
    );
    let (mut agree, mut total, mut worst) = (0, 0, 0.0f32);
    for batch in loader.epoch(0) {
        let n = batch.len();
        let want = burn_logits(&loaded.model, &batch.images, n, 64);
        worst = worst.max(max_abs_diff(
            &m32.logits(batch.images.clone(), n).unwrap(),
            &want,
        ));
        let q = m8.logits(batch.images, n).unwrap();
        for i in 0..n {
            total += 1;
            agree += (argmax(&q[i * 3..i * 3 + 3]) == argmax(&want[i * 3..i * 3 + 3])) as usize;
        }
    }
    assert!(worst < 1e-4, "fp32 max abs difference {worst}");
    assert_eq!(total, 120);
    println!(
        "int8 top-1 agreement with burn fp32: {agree}/{total}; fp32 max abs difference {worst}"
    );
    assert!(
        agree as f64 >= 0.99 * total as f64,
        "int8 top-1 agreement {agree}/{total}"
    );

    // predict takes the exported file and gives the checkpoint's answer.
    let image = root.join("square/00003.png");
    let top = |target: &std::path::Path| {
        let out = run_ok(
            mvlab()
                .arg("--db")
                .arg(&db)
                .arg("predict")
                .arg(target)
                .arg(&image)
                .arg("--json"),
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (
            v[0]["top"][0][0].as_str().unwrap().to_string(),
            v[0]["top"][0][1].as_f64().unwrap(),
        )
    };
    let (a, pa) = top(&best);
    let (b, pb) = top(&fp32);
    assert_eq!(a, b);
    assert!((pa - pb).abs() < 1e-4);
    assert_eq!(top(&int8).0, a);

    let st = dir.path().join("w.safetensors");
    run_ok(
        mvlab()
            .arg("--db")
            .arg(&db)
            .args(["export", "1", "--format", "safetensors", "--out"])
            .arg(&st),
    );
    assert!(std::fs::metadata(&st).unwrap().len() > 3_000_000);
}
