//! Shared helpers for the integration tests: a tiny real dataset and configs that point at it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn mvlab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mvlab"))
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run mvlab");
    assert!(
        out.status.success(),
        "mvlab failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `classes` x `per_class` synthetic PNGs of `size` pixels under `dir/data`.
pub fn tiny_dataset(dir: &Path, classes: usize, per_class: usize, size: u32) -> PathBuf {
    let root = dir.join("data");
    let o = mvlab::data::synth::SynthOptions {
        classes,
        per_class,
        width: size,
        height: size,
        seed: 3,
        format: "png".into(),
    };
    mvlab::data::synth::generate(&root, &o).unwrap();
    root
}

/// An experiment file for a seconds-long run on `root`.
pub fn tiny_config(dir: &Path, root: &Path, epochs: usize, extra: &str) -> PathBuf {
    let text = format!(
        "name = \"tiny\"\n[model]\nflavour = \"paper\"\nvariant = \"xxs\"\n\
         [data]\nroot = \"{}\"\nimage_size = 32\nresize_bigger = 36\nval_fraction = 0.25\nworkers = 1\n\
         [train]\nepochs = {epochs}\nbatch_size = 8\nlr = 0.002\nseed = 1\ndevice = \"cpu\"\n{extra}",
        root.display()
    );
    let path = dir.join("tiny.toml");
    std::fs::write(&path, text).unwrap();
    path
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// One f32 tensor of a safetensors file: (shape, values).
pub fn read_tensor(file: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    let v = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (t.shape().to_vec(), v)
}

/// A tensor's values as f32.
pub fn values<const D: usize>(t: burn::tensor::Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `mvlab --db DB run CONFIG` in the background, output discarded.
pub fn spawn_run(db: &Path, config: &Path) -> std::process::Child {
    mvlab()
        .arg("--db")
        .arg(db)
        .arg("run")
        .arg(config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}
