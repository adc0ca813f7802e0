//! Runs exported TFLite files in LiteRT, the runtime phones run (PyPI `ai-edge-litert`),
//! through a `python3` child process: logits for a batch of images, and batch-1 latency.
//! mvlab writes TFLite files without it; it is needed only to run them.

use super::latency::Latency;
use crate::checkpoint::ModelCard;
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const SCRIPT: &str = include_str!("litert.py");

/// Which LiteRT kernels run the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// The reference kernels: slow, exact to the op definitions (for checking a file).
    Reference,
    /// What an app gets (XNNPACK for float and dynamic files, optimised int8 kernels).
    Default,
}

/// Whether LiteRT can be run here: `Err` says what is missing and how to install it.
pub fn available() -> Result<()> {
    let out = Command::new("python3")
        .args(["-c", "import numpy, ai_edge_litert.interpreter"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(_) => bail!("LiteRT is not installed (python3 -m pip install ai-edge-litert)"),
        Err(e) => bail!("cannot run python3 ({e}); LiteRT needs python3 with ai-edge-litert"),
    }
}

/// A TFLite file ready to run in LiteRT.
pub struct LiteRt {
    path: PathBuf,
    pub card: ModelCard,
}

impl LiteRt {
    /// Reads the file's model card (checked before anything runs).
    pub fn load(path: &Path) -> Result<Self> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let card = super::tflite::read_card(&bytes)
            .with_context(|| format!("{} is not a TFLite file mvlab wrote", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            card,
        })
    }

    fn call(&self, request: serde_json::Value, input: &[u8]) -> Result<Vec<u8>> {
        let mut child = Command::new("python3")
            .args(["-c", SCRIPT])
            .arg(&self.path)
            .arg(request.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run python3 for LiteRT")?;
        let mut stdin = child.stdin.take().context("python3 stdin")?;
        // Written from a thread so that a large input cannot block on a full output pipe.
        let input = input.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output()?;
        let _ = writer.join();
        if !out.status.success() {
            bail!(
                "LiteRT could not run {}: {}",
                self.path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out.stdout)
    }

    /// Logits `[n, classes]` for `n` CHW images of the model's input size.
    pub fn logits(&self, images: &[f32], n: usize, kernels: Kernels) -> Result<Vec<f32>> {
        let s = self.card.model.image_size;
        if images.len() != n * 3 * s * s {
            bail!("{} values are not {n} images of 3x{s}x{s}", images.len());
        }
        // CHW to the file's NHWC.
        let mut nhwc = Vec::with_capacity(images.len() * 4);
        for i in 0..n {
            let image = &images[i * 3 * s * s..(i + 1) * 3 * s * s];
            for p in 0..s * s {
                for c in 0..3 {
                    nhwc.extend_from_slice(&image[c * s * s + p].to_le_bytes());
                }
            }
        }
        let kernels = match kernels {
            Kernels::Reference => "reference",
            Kernels::Default => "default",
        };
        let request = serde_json::json!({
            "mode": "logits", "n": n, "size": s, "kernels": kernels, "batch": 1,
        });
        let out = self.call(request, &nhwc)?;
        let classes = self.card.classes.len();
        if out.len() != n * classes * 4 {
            bail!(
                "LiteRT gave {} bytes for {n} images of {classes} classes",
                out.len()
            );
        }
        Ok(out
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// Batch-1 latency with LiteRT's default kernels on `threads` threads.
    pub fn latency(&self, warmup: usize, runs: usize, threads: usize) -> Result<Latency> {
        let request = serde_json::json!({
            "mode": "latency", "size": self.card.model.image_size, "kernels": "default",
            "warmup": warmup, "runs": runs.max(1), "threads": threads,
        });
        let out = self.call(request, &[])?;
        let answer: serde_json::Value = serde_json::from_slice(&out)?;
        let mut times: Vec<f64> = answer["times_ms"]
            .as_array()
            .context("LiteRT gave no times")?
            .iter()
            .filter_map(|t| t.as_f64())
            .collect();
        Latency::of(&mut times, threads)
    }
}
