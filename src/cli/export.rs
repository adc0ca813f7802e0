//! `mvlab export`: the file written, then measured as it will be deployed (its own runtime on
//! the run's val images, beside the float model), and the measurement recorded against the
//! checkpoint it was made from.

use super::commands::EXIT_PARTLY;
use crate::checkpoint;
use crate::export::measure::{self, Deployed, Runtime};
use crate::export::{ExportFormat, ExportRequest, Quantization};
use crate::fmt::percent;
use crate::registry::{NewExport, Place, RunRow};
use anyhow::{Result, bail};
use burn::prelude::*;
use std::path::{Path, PathBuf};

/// What `mvlab export` was asked.
pub struct ExportArgs<'a> {
    pub target: &'a str,
    pub format: ExportFormat,
    pub quantize: Option<Quantization>,
    /// Training images a full-integer TFLite file is calibrated on.
    pub calibrate: usize,
    /// Images to calibrate on and measure with instead of the run's splits (needed for a
    /// checkpoint file of no run).
    pub data: Option<&'a Path>,
    pub out: &'a Path,
    pub json: bool,
}

/// Where the measurement was made, for the line printed.
fn on_what(data: Option<&Path>, images: usize) -> String {
    match data {
        Some(dir) => format!("on {images} images of {}", dir.display()),
        None => format!("on {images} val images"),
    }
}

pub fn cmd_export(db: &Place, a: &ExportArgs) -> Result<i32> {
    let (path, run) = checkpoint::resolve(db, a.target)?;
    let device = Device::flex();
    let loaded = checkpoint::load(&path, &device)?;
    let kind = a
        .quantize
        .unwrap_or_else(|| Quantization::default_for(a.format));
    let size = loaded.card.model.image_size;
    // The settings images are loaded with: the run's, or the defaults for a file of no run.
    let config = match &run {
        Some(r) => r.recorded_config()?,
        None => crate::eval::default_config(),
    };
    let calibration = if a.format == ExportFormat::Tflite && kind == Quantization::Int8 {
        let train = match (a.data, &run) {
            (Some(dir), _) => crate::data::scan(dir)?,
            (None, Some(r)) => r.recorded_splits(&config)?.0,
            (None, None) => bail!(
                "{}: a full-integer TFLite file (--quantize int8) is calibrated on training images, \
                 and this checkpoint file belongs to no run of this registry: give the run's id \
                 (its training split is used) or --data DIR",
                a.target
            ),
        };
        if train.classes != loaded.card.classes {
            bail!(
                "{} was trained on classes {:?}; the calibration images have {:?}",
                path.display(),
                loaded.card.classes,
                train.classes
            );
        }
        Some(measure::calibration(&train, &config, size, a.calibrate)?)
    } else {
        None
    };
    let request = ExportRequest {
        format: a.format,
        quantize: a.quantize,
        calibration: calibration.as_ref(),
    };
    let bytes = crate::export::export(&loaded.model, &loaded.card, &request, a.out)?;
    let what = match a.format {
        ExportFormat::Safetensors => format!("{}, {}", loaded.card.model.label(), a.format),
        _ => format!("{}, {} {kind}", loaded.card.model.label(), a.format),
    };
    let wrote = format!(
        "wrote {} ({:.2} MB, {what})",
        a.out.display(),
        bytes as f64 / 1e6
    );
    let mut json = serde_json::json!({
        "file": a.out, "size_bytes": bytes, "format": a.format, "quantize": kind,
        "model": loaded.card.model.label(), "checkpoint": path,
        "run": run.as_ref().map(|r| r.id),
        "calibration_images": calibration.as_ref().map(|c| c.n),
    });
    let say = |json_value: &serde_json::Value, line: &str| -> Result<()> {
        if a.json {
            println!("{}", serde_json::to_string_pretty(json_value)?);
        } else {
            println!("{line}");
        }
        Ok(())
    };
    if a.format == ExportFormat::Safetensors {
        say(&json, &wrote)?;
        return Ok(0);
    }
    if run.is_none() && a.data.is_none() {
        json["measured"] = false.into();
        say(
            &json,
            &format!(
                "{wrote}; not measured: {} belongs to no run of this registry (--data DIR measures it on labelled images)",
                path.display()
            ),
        )?;
        return Ok(0);
    }
    let (dataset, config) = crate::eval::images(run.as_ref(), a.data)?;
    let bar = super::progress::bar(dataset.items.len() as u64, "measuring");
    let measured = Runtime::load(a.out, a.format).and_then(|runtime| {
        measure::measure(
            a.out,
            &runtime,
            &loaded.model,
            &dataset,
            &config,
            &device,
            &|n| bar.inc(n as u64),
        )
    });
    bar.finish_and_clear();
    // Recorded against the run's checkpoint when measured on its val split.
    let recorded = match (&run, a.data) {
        (Some(r), None) => Some(record(db, r, &path, a, kind, bytes, &measured)?),
        _ => None,
    };
    json["recorded"] = recorded.is_some().into();
    match measured {
        Ok(d) => {
            json["measured"] = true.into();
            json["images"] = d.images.into();
            json["accuracy"] = d.accuracy.into();
            json["float_accuracy"] = d.float_accuracy.into();
            json["agreement"] = d.agreement.into();
            json["measured_on"] = match (a.data, &run) {
                (Some(dir), _) => dir.display().to_string().into(),
                (None, Some(r)) => format!("val split of run {}", r.id).into(),
                (None, None) => serde_json::Value::Null,
            };
            let line = format!(
                "{wrote}: {} {} (float {}), top-1 agreement {} {}",
                if a.data.is_some() {
                    "accuracy"
                } else {
                    "val accuracy"
                },
                percent(d.accuracy),
                percent(d.float_accuracy),
                percent(d.agreement),
                on_what(a.data, d.images)
            );
            let line = match (&recorded, &run) {
                (Some(epoch), Some(r)) => format!(
                    "{line}\nrecorded for run {} ({epoch}): `mvlab show {}` lists it",
                    r.id, r.id
                ),
                _ => line,
            };
            say(&json, &line)?;
            Ok(0)
        }
        Err(e) => {
            json["measured"] = false.into();
            json["error"] = format!("{e:#}").into();
            say(&json, &wrote)?;
            eprintln!(
                "{} could not be measured: {e:#}; the file is written",
                a.out.display()
            );
            Ok(EXIT_PARTLY)
        }
    }
}

/// Records the measurement (or why there is none) against the run's checkpoint `weights`;
/// returns which checkpoint that is, in words.
fn record(
    db: &Place,
    run: &RunRow,
    weights: &Path,
    a: &ExportArgs,
    kind: Quantization,
    bytes: u64,
    measured: &Result<Deployed>,
) -> Result<String> {
    let reg = db.open()?;
    let sha256 = checkpoint::sha256_file(weights)?;
    let ck = reg
        .checkpoints(run.id)?
        .into_iter()
        .find(|c| c.sha256 == sha256);
    let file: PathBuf = std::path::absolute(a.out).unwrap_or_else(|_| a.out.to_path_buf());
    let (format, quantize, file) = (
        a.format.to_string(),
        kind.to_string(),
        file.display().to_string(),
    );
    let error = measured.as_ref().err().map(|e| format!("{e:#}"));
    let d = measured.as_ref().ok();
    reg.record_export(&NewExport {
        run_id: run.id,
        checkpoint_sha256: &sha256,
        checkpoint_kind: ck.as_ref().map(|c| c.kind.as_ref()),
        epoch: ck.as_ref().map(|c| c.epoch),
        format: &format,
        quantize: &quantize,
        path: &file,
        size_bytes: Some(bytes),
        images: d.map(|d| d.images),
        val_accuracy: d.map(|d| d.accuracy),
        float_val_accuracy: d.map(|d| d.float_accuracy),
        agreement: d.map(|d| d.agreement),
        latency_ms: None,
        error: error.as_deref(),
    })?;
    Ok(match ck {
        Some(c) => format!("its {} checkpoint, epoch {}", c.kind, c.epoch),
        None => format!("checkpoint sha256 {}", &sha256[..16]),
    })
}
