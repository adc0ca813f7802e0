//! Inference on single images (top-k) and dataset statistics.

use crate::checkpoint::ModelCard;
use crate::data::{self, crop_to_chw};
use crate::model::MobileVit;
use anyhow::Result;
use burn::prelude::*;
use burn::tensor::activation::softmax;
use rayon::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Serialize)]
pub struct Prediction {
    pub image: PathBuf,
    pub top: Vec<(String, f64)>,
    pub error: Option<String>,
}

/// Resizes each image to the model's input size (as validation does) and returns the top-k classes.
pub fn predict(
    model: &MobileVit,
    card: &ModelCard,
    images: &[PathBuf],
    k: usize,
    device: &Device,
) -> Result<Vec<Prediction>> {
    let model = model.for_inference();
    let size = card.model.image_size;
    let mut out = Vec::new();
    for path in images {
        let chw = match load_chw(path, size) {
            Ok(c) => c,
            Err(e) => {
                out.push(Prediction {
                    image: path.clone(),
                    top: vec![],
                    error: Some(format!("{e:#}")),
                });
                continue;
            }
        };
        let x = Tensor::<4>::from_data(TensorData::new(chw, [1, 3, size, size]), device);
        let probs = softmax(model.forward(x), 1)
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap();
        out.push(Prediction {
            image: path.clone(),
            top: top_k(&probs, &card.classes, k),
            error: None,
        });
    }
    Ok(out)
}

/// Prepares one image as validation does: resized to `size`, CHW floats in [0, 1].
pub fn load_chw(path: &Path, size: usize) -> Result<Vec<f32>> {
    let img = data::decode_resized(path, size)?;
    let mut chw = vec![0.0f32; 3 * size * size];
    crop_to_chw(img.as_raw(), size, 0, 0, size, false, &mut chw);
    Ok(chw)
}

/// Top-k with an exported ONNX model (run by tract).
pub fn predict_onnx(
    model: &crate::export::OnnxModel,
    images: &[PathBuf],
    k: usize,
) -> Result<Vec<Prediction>> {
    let size = model.card.model.image_size;
    let mut out = Vec::new();
    for path in images {
        match load_chw(path, size) {
            Ok(chw) => {
                let logits = model.logits(chw, 1)?;
                out.push(Prediction {
                    image: path.clone(),
                    top: top_k(&softmax_vec(&logits), &model.card.classes, k),
                    error: None,
                });
            }
            Err(e) => out.push(Prediction {
                image: path.clone(),
                top: vec![],
                error: Some(format!("{e:#}")),
            }),
        }
    }
    Ok(out)
}

fn softmax_vec(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::MIN, f32::max);
    let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

pub fn top_k(probs: &[f32], classes: &[String], k: usize) -> Vec<(String, f64)> {
    let mut idx: Vec<usize> = (0..probs.len()).collect();
    idx.sort_by(|a, b| probs[*b].total_cmp(&probs[*a]));
    idx.into_iter()
        .take(k.max(1))
        .map(|i| {
            (
                classes
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| format!("class {i}")),
                probs[i] as f64,
            )
        })
        .collect()
}

/// `mvlab data stats`: decodes every image (in parallel) so unreadable files are found.
pub fn print_stats(dir: &Path) -> Result<()> {
    let ds = data::scan(dir)?;
    let bar = indicatif::ProgressBar::new(ds.items.len() as u64);
    let results: Vec<Result<(u32, u32), String>> = ds
        .items
        .par_iter()
        .map(|it| {
            let r = data::decode_rgb(&it.path)
                .map(|i| i.dimensions())
                .map_err(|e| format!("{e:#}"));
            bar.inc(1);
            r
        })
        .collect();
    bar.finish_and_clear();
    println!(
        "{}: {} images in {} classes",
        dir.display(),
        ds.items.len(),
        ds.classes.len()
    );
    let counts = ds.counts();
    for (c, n) in ds.classes.iter().zip(&counts) {
        println!("  {c:<20} {n:>7}");
    }
    let sizes: Vec<(u32, u32)> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    if let (Some(wmin), Some(wmax), Some(hmin), Some(hmax)) = (
        sizes.iter().map(|s| s.0).min(),
        sizes.iter().map(|s| s.0).max(),
        sizes.iter().map(|s| s.1).min(),
        sizes.iter().map(|s| s.1).max(),
    ) {
        println!("width {wmin}..{wmax}, height {hmin}..{hmax}");
    }
    let bad: Vec<(&PathBuf, &String)> = ds
        .items
        .iter()
        .zip(&results)
        .filter_map(|(it, r)| r.as_ref().err().map(|e| (&it.path, e)))
        .collect();
    println!("unreadable files: {}", bad.len() + ds.unreadable.len());
    for (p, e) in bad {
        println!("  {}: {e}", p.display());
    }
    for (p, e) in &ds.unreadable {
        println!("  {}: {e}", p.display());
    }
    Ok(())
}
