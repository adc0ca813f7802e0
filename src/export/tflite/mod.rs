//! LiteRT (TFLite) flatbuffers written by mvlab: the BatchNorm-folded model as builtin ops
//! (NHWC, batch 1), input `images` [1, S, S, 3] float32, output `logits` [1, classes], a
//! `serving_default` signature, and the class names and model settings in the file's
//! metadata. Float, dynamic-range (int8 weights, hybrid kernels) or full integer (int8
//! activations calibrated on training images).
//!
//! - `graph`: the model as a graph of TFLite ops, in float;
//! - `eval`: that graph run on the host (calibration, and checks without a runtime);
//! - `calibrate`: activation ranges for a full-integer file;
//! - `lower`: tensor types, quantization and op versions for a [`Quantization`] kind;
//! - `write` / `read`: the flatbuffer, through a hand-written `schema` (no generated code).

mod calibrate;
mod eval;
mod graph;
mod lower;
mod read;
mod schema;
mod write;

pub use read::{Inspection, Operator, OperatorCode, Signature, TensorInfo, inspect};
pub use schema::{builtin, tensor_type};

use super::{Calibration, Quantization};
use crate::checkpoint::ModelCard;
use crate::config::Flavour;
use crate::model::MobileVit;
use anyhow::{Context, Result, bail};
use rayon::prelude::*;

/// Metadata entries mvlab stores (JSON, except the runtime version and the kind).
pub const META_CLASSES: &str = "mvlab_classes";
pub const META_MODEL: &str = "mvlab_model";
pub const META_QUANTIZATION: &str = "mvlab_quantization";
/// TF's entry: the oldest runtime with every op version used, zero-padded to 16 bytes.
pub const META_MIN_RUNTIME: &str = "min_runtime_version";

fn ln_eps(card: &ModelCard) -> f32 {
    match card.model.flavour {
        Flavour::Keras => 1e-6,
        Flavour::Paper => 1e-5,
    }
}

/// `n` CHW images to NHWC.
fn to_nhwc(images: &[f32], s: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(images.len());
    for image in images.chunks_exact(3 * s * s) {
        for p in 0..s * s {
            for c in 0..3 {
                out.push(image[c * s * s + p]);
            }
        }
    }
    out
}

fn check_images(images: &[f32], n: usize, s: usize) -> Result<()> {
    if n == 0 || images.len() != n * 3 * s * s {
        bail!(
            "{} values are not {n} images of 3x{s}x{s} (the model's input size)",
            images.len()
        );
    }
    Ok(())
}

fn graph_of(model: &MobileVit, card: &ModelCard, integer: bool) -> Result<graph::Graph> {
    let model = model.for_inference();
    let g = graph::build(&model, card.model.image_size, ln_eps(card), integer);
    let classes = *g.shape(g.output).last().unwrap();
    if classes != card.classes.len() {
        bail!(
            "the model has {classes} outputs but the card names {} classes",
            card.classes.len()
        );
    }
    Ok(g)
}

/// The range each activation is quantized over, from the calibration images.
fn calibrate(g: &graph::Graph, c: &Calibration, s: usize) -> Vec<Option<(f32, f32)>> {
    calibrate::ranges(g, &to_nhwc(&c.images, s), 3 * s * s)
}

/// The TFLite file of `model`. `Int8` needs `calibration` (training images of the model's
/// input size) to set its activation ranges.
pub fn to_tflite(
    model: &MobileVit,
    card: &ModelCard,
    kind: Quantization,
    calibration: Option<&Calibration>,
) -> Result<Vec<u8>> {
    let s = card.model.image_size;
    let g = graph_of(model, card, kind == Quantization::Int8)?;
    let ranges = match (kind, calibration) {
        (Quantization::Int8, None) => bail!(
            "a full-integer TFLite file needs calibration images (--calibrate) to set its activation ranges"
        ),
        (Quantization::Int8, Some(c)) => {
            check_images(&c.images, c.n, s).context("calibration images")?;
            Some(calibrate(&g, c, s))
        }
        _ => None,
    };
    let lowered = lower::lower(&g, kind, ranges.as_deref());
    let mut runtime = lower::min_runtime_version(&lowered.ops).into_bytes();
    runtime.resize(16, 0);
    let extras = write::Extras {
        description: &format!(
            "mvlab {} ({}): MobileViT image classifier, RGB in [0, 1], NHWC",
            env!("CARGO_PKG_VERSION"),
            card.model.label()
        ),
        metadata: vec![
            (META_MIN_RUNTIME, runtime),
            (META_CLASSES, serde_json::to_vec(&card.classes)?),
            (META_MODEL, serde_json::to_vec(&card.model)?),
            (META_QUANTIZATION, kind.to_string().into_bytes()),
        ],
    };
    Ok(write::write(&lowered, &extras))
}

/// Class names and model settings stored in the metadata of a TFLite file mvlab wrote.
pub fn read_card(bytes: &[u8]) -> Result<ModelCard> {
    let file = inspect(bytes)?;
    let get = |name: &str| {
        file.metadata_bytes(bytes, name)
            .with_context(|| format!("this TFLite file has no {name} metadata"))
    };
    Ok(ModelCard {
        classes: serde_json::from_slice(get(META_CLASSES)?)
            .with_context(|| format!("{META_CLASSES} metadata"))?,
        model: serde_json::from_slice(get(META_MODEL)?)
            .with_context(|| format!("{META_MODEL} metadata"))?,
    })
}

/// Logits `[n, classes]` of the export graph evaluated in float on the host (as calibration
/// runs it), for `n` CHW images of the model's input size: checks the graph apart from any
/// runtime.
pub fn host_logits(
    model: &MobileVit,
    card: &ModelCard,
    images: &[f32],
    n: usize,
) -> Result<Vec<f32>> {
    let s = card.model.image_size;
    check_images(images, n, s)?;
    let g = graph_of(model, card, false)?;
    let images = to_nhwc(images, s);
    Ok(images
        .par_chunks_exact(3 * s * s)
        .flat_map_iter(|image| eval::run(&g, image, |_, _| {}))
        .collect())
}
