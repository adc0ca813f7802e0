//! `mvlab bench`: images/s of a training step and of inference for each model, and of the data
//! loader (first epoch decodes, later epochs hit the cache). Warm-up, then the median of reps.

pub mod launches;
pub mod parity;
pub mod registry;

use crate::config::{Flavour, Variant};
use crate::data::loader::{Loader, LoaderOptions};
use crate::data::{self, synth};
use crate::model::loss::smoothed_cross_entropy;
use crate::model::{ModelConfig, summary};
use crate::train::average::WeightAverage;
use anyhow::{Result, bail};
use burn::optim::GradientsParams;
use burn::prelude::*;
use launches::{Launches, Phase, mark};
use serde::Serialize;
use std::time::Instant;

/// What `mvlab bench` measures (the command line builds it from its arguments).
#[derive(Debug, Clone)]
pub struct Options {
    /// keras-xxs, xxs, xs, s, or all.
    pub model: String,
    pub batch: usize,
    pub size: usize,
    pub device: String,
    /// Dropout of the models (the keras flavour's reference value is 0.1).
    pub dropout: f64,
    /// Timed repetitions (after one warm-up).
    pub reps: usize,
    /// Also measure the data loader on synthetic flower-sized JPEGs.
    pub loader: bool,
    /// Skip the models (with --loader: measure only the loader).
    pub no_models: bool,
    pub json: bool,
    /// Also run scripts/reference_bench.py (Keras/TensorFlow and PyTorch/timm) on the same
    /// workloads right after, and print mvlab/reference speed ratios.
    pub compare: bool,
    /// Also measure each model with burn's own ops in place of mvlab's fused CPU kernels (what
    /// the kernels bring, in the same run).
    pub unfused: bool,
    /// Only burn's own ops (mvlab's kernels off for the whole run).
    pub burn_ops: bool,
    /// Python with tensorflow, torch and timm installed, for --compare.
    pub python: String,
    /// Instead of timing: check the device's GPU code path against burn's ops and the CPU
    /// backend ([`parity`]); fails when a check does.
    pub parity: bool,
}

/// Forward-pass FLOPs per image, counted from the layer shapes (multiply-add = 2 FLOPs):
/// convolutions, linear layers and the two attention matmuls. Elementwise work is left out.
pub fn forward_flops(model: &crate::model::MobileVit, image_size: usize) -> f64 {
    use crate::model::Block;
    use crate::model::layers::{ConvNormAct, TransformerLayer};
    fn conv(c: &ConvNormAct, hw: &mut usize) -> f64 {
        let dims = c.conv.weight.val().dims();
        *hw = hw.div_ceil(c.conv.stride[0]);
        2.0 * (dims[0] * dims[1] * dims[2] * dims[3] * *hw * *hw) as f64
    }
    fn linear(l: &burn::nn::Linear, tokens: usize) -> f64 {
        let d = l.weight.val().dims();
        2.0 * (d[0] * d[1] * tokens) as f64
    }
    fn transformer(t: &TransformerLayer, groups: usize, n: usize) -> f64 {
        let tokens = groups * n;
        let attn = 2.0 * 2.0 * (groups * t.attn.heads * n * n * t.attn.head_dim) as f64;
        linear(&t.attn.qkv, tokens)
            + linear(&t.attn.proj, tokens)
            + linear(&t.fc1, tokens)
            + linear(&t.fc2, tokens)
            + attn
    }
    let mut hw = image_size;
    let mut f = conv(&model.stem, &mut hw);
    for block in &model.blocks {
        match block {
            Block::Mv2(b) => {
                f += conv(&b.expand, &mut hw)
                    + conv(&b.depthwise, &mut hw)
                    + conv(&b.project, &mut hw)
            }
            Block::Vit(b) => {
                f += conv(&b.conv_kxk, &mut hw) + conv(&b.conv_1x1, &mut hw);
                let p = b.patch;
                let n = hw.div_ceil(p) * hw.div_ceil(p);
                f += b
                    .transformer
                    .iter()
                    .map(|t| transformer(t, p * p, n))
                    .sum::<f64>();
                f += conv(&b.conv_proj, &mut hw) + conv(&b.conv_fusion, &mut hw);
            }
        }
    }
    f += conv(&model.final_conv, &mut hw);
    f + linear(&model.head, 1)
}

/// Peak f32 throughput of this machine: cores x clock x SIMD lanes x 2 (FMA) x 2 FMA units per
/// core (an assumption that holds for current x86 server cores).
pub fn peak_gflops() -> (f64, String) {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mhz = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    let lanes = if info.contains(" avx512f") {
        16.0
    } else if info.contains(" avx2") || info.contains(" fma") {
        8.0
    } else {
        4.0
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    let model = info
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("")
        .trim()
        .to_string();
    let peak = cores * mhz / 1000.0 * lanes * 2.0 * 2.0;
    (
        peak,
        format!("{model}, {cores} cores at {mhz:.0} MHz, {lanes} f32 lanes x 2 FMA units"),
    )
}

#[derive(Debug, Serialize)]
pub struct ModelBench {
    pub model: String,
    pub params: usize,
    /// Forward GFLOPs per image; a training step counts 3x (forward + backward).
    pub gflops_per_image: f64,
    pub train_gflops_per_s: f64,
    pub infer_gflops_per_s: f64,
    pub batch: usize,
    pub size: usize,
    pub device: String,
    pub train_step_s: f64,
    pub train_images_per_s: f64,
    /// One update of the weights' moving average (`train.ema_decay`), added to a step when on.
    pub ema_update_s: f64,
    pub infer_s: f64,
    pub infer_images_per_s: f64,
    pub peak_rss_mb: f64,
    /// The first training step, which compiles kernels and (on GPUs) autotunes them.
    pub first_step_s: f64,
    /// On cubecl devices: kernel launches of one training step by phase, of one inference,
    /// and the distinct kernels the first step compiled.
    pub launches: Option<Launches>,
    pub infer_launches: Option<u64>,
    pub first_step_kernels: Option<usize>,
    /// Shapes autotuned in the first step, candidates tried, and seconds spent tuning (which
    /// includes compiling the candidates); the rest of the first step over a warm one is
    /// mostly compiling.
    pub first_step_tuned: usize,
    pub first_step_trials: usize,
    pub first_step_tuning_s: f64,
}

#[derive(Debug, Serialize)]
pub struct LoaderBench {
    pub workers: usize,
    pub images: usize,
    pub first_epoch_images_per_s: f64,
    pub cached_epoch_images_per_s: f64,
}

pub fn model_configs(which: &str, size: usize) -> Result<Vec<ModelConfig>> {
    let mk = |flavour, variant| ModelConfig {
        flavour,
        variant,
        num_classes: 5,
        image_size: size,
        dropout: 0.1,
    };
    Ok(match which {
        "keras-xxs" | "keras" => vec![mk(Flavour::Keras, Variant::Xxs)],
        "xxs" => vec![mk(Flavour::Paper, Variant::Xxs)],
        "xs" => vec![mk(Flavour::Paper, Variant::Xs)],
        "s" => vec![mk(Flavour::Paper, Variant::S)],
        "all" => vec![
            mk(Flavour::Keras, Variant::Xxs),
            mk(Flavour::Paper, Variant::Xxs),
            mk(Flavour::Paper, Variant::Xs),
            mk(Flavour::Paper, Variant::S),
        ],
        other => bail!("--model: expected keras-xxs, xxs, xs, s or all, got {other}"),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

pub fn bench_model(
    cfg: &ModelConfig,
    batch: usize,
    reps: usize,
    selected: &crate::device::Selected,
) -> ModelBench {
    let device = selected.device.clone().autodiff();
    let mut model = cfg.init(&device);
    // The optimizer a run uses on this device (the fused kernels on cubecl devices).
    let recipe = crate::config::TrainSection {
        adam_eps: 1e-7,
        ..Default::default()
    };
    let mut optim = crate::train::optim::Optim::new(&recipe, &selected.device);
    let n = cfg.image_size;
    let images = crate::model::draws::Draws::new(0).tensor(
        [batch, 3, n, n],
        burn::tensor::Distribution::Uniform(0.0, 1.0),
        &device,
    );
    let labels = Tensor::<1, Int>::from_data(
        TensorData::new(
            (0..batch)
                .map(|i| (i % cfg.num_classes) as i64)
                .collect::<Vec<_>>(),
            [batch],
        ),
        &device,
    );
    let mut counter = launches::Counter::start(&device);
    let mut step_launches = Launches::default();
    let (mut train_times, mut first_step_s, mut first_step_kernels) = (Vec::new(), 0.0, None);
    let tuning_before = crate::device::tuning::progress();
    let mut tuning_first = tuning_before.clone();
    for rep in 0..=reps {
        let t = Instant::now();
        mark(&counter, Phase::Forward);
        let loss = smoothed_cross_entropy(model.forward(images.clone()), labels.clone(), 0.1);
        mark(&counter, Phase::Backward);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        mark(&counter, Phase::Optimizer);
        model = optim.apply(&recipe, 2e-3, model, grads);
        mark(&counter, Phase::Other);
        // Reading a parameter back waits for the step to really finish on async devices.
        let _ = model
            .head
            .bias
            .as_ref()
            .unwrap()
            .val()
            .sum()
            .into_scalar::<f32>();
        let counted = counter.as_ref().map(|c| c.take());
        if rep == 0 {
            first_step_s = t.elapsed().as_secs_f64();
            tuning_first = crate::device::tuning::progress();
            first_step_kernels = counter.as_mut().map(|c| c.new_kernels());
        } else {
            train_times.push(t.elapsed().as_secs_f64());
            if rep == 1 {
                step_launches.add(counted.unwrap_or_default());
            }
        }
    }
    let mut average = WeightAverage::start(&model, cfg.init(&device), 0.999);
    let mut ema_times = Vec::new();
    for rep in 0..=reps {
        let t = Instant::now();
        mark(&counter, Phase::Average);
        average.update(&model, rep);
        mark(&counter, Phase::Other);
        let _ = average.model.head.weight.val().sum().into_scalar::<f32>();
        let counted = counter.as_ref().map(|c| c.take());
        if rep > 0 {
            ema_times.push(t.elapsed().as_secs_f64());
        }
        if rep == 1 {
            step_launches.average += counted.unwrap_or_default().average;
        }
    }
    let eval = model.valid();
    let fused = eval.for_inference();
    let plain = images.clone().without_autodiff();
    let mut infer_times = Vec::new();
    let mut infer_launches = None;
    for rep in 0..=reps {
        let t = Instant::now();
        let _ = fused.forward(plain.clone()).sum().into_scalar::<f32>();
        let counted = counter.as_ref().map(|c| c.take());
        if rep > 0 {
            infer_times.push(t.elapsed().as_secs_f64());
        }
        if rep == 1 {
            infer_launches = counted.map(|l| l.total());
        }
    }
    let (ts, is) = (median(train_times), median(infer_times));
    let gflops = forward_flops(&eval, n) / 1e9;
    ModelBench {
        model: cfg.label(),
        params: summary::count_params(&eval).total,
        gflops_per_image: gflops,
        train_gflops_per_s: 3.0 * gflops * batch as f64 / ts,
        infer_gflops_per_s: gflops * batch as f64 / is,
        batch,
        size: n,
        device: selected.label.clone(),
        train_step_s: ts,
        train_images_per_s: batch as f64 / ts,
        ema_update_s: median(ema_times),
        infer_s: is,
        infer_images_per_s: batch as f64 / is,
        peak_rss_mb: peak_rss_mb(),
        first_step_s,
        launches: counter.is_some().then_some(step_launches),
        infer_launches,
        first_step_kernels,
        first_step_tuned: tuning_first.tuned - tuning_before.tuned,
        first_step_trials: tuning_first.trials - tuning_before.trials,
        first_step_tuning_s: tuning_first.seconds - tuning_before.seconds,
    }
}

fn print_model(b: &ModelBench, peak: Option<f64>) {
    let of_peak = peak
        .map(|p| format!(", {:.1}% of peak", 100.0 * b.train_gflops_per_s / p))
        .unwrap_or_default();
    println!(
        "{:<10} {:>9} params {:>5.2} GFLOP/img | train step {:>7.3} s = {:>6.2} img/s ({:>5.1} GFLOP/s{of_peak}), moving average +{:.1} ms | inference {:>7.3} s = {:>6.2} img/s ({:>5.1} GFLOP/s) | peak RSS {:.0} MB",
        b.model,
        summary::group(b.params),
        b.gflops_per_image,
        b.train_step_s,
        b.train_images_per_s,
        b.train_gflops_per_s,
        1e3 * b.ema_update_s,
        b.infer_s,
        b.infer_images_per_s,
        b.infer_gflops_per_s,
        b.peak_rss_mb
    );
    if let (Some(l), Some(i)) = (&b.launches, b.infer_launches) {
        println!(
            "{:<10} kernel launches: training step {l}, inference {i}; first step {:.1} s: {} kernels compiled, {} shapes autotuned ({} candidates, {:.1} s)",
            "",
            b.first_step_s,
            b.first_step_kernels.unwrap_or(0),
            b.first_step_tuned,
            b.first_step_trials,
            b.first_step_tuning_s
        );
    }
}

/// Runs scripts/reference_bench.py with the same batch, size and thread count.
fn run_reference(
    args: &Options,
    selected: &crate::device::Selected,
) -> Result<Vec<serde_json::Value>> {
    let script = [
        "scripts/reference_bench.py",
        concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/reference_bench.py"),
    ]
    .into_iter()
    .map(std::path::PathBuf::from)
    .find(|p| p.exists())
    .ok_or_else(|| {
        anyhow::anyhow!("scripts/reference_bench.py not found (run from the mvlab checkout)")
    })?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    // On a GPU the reference is PyTorch on that GPU (Keras/TensorFlow runs on the CPU only).
    let device = if selected.is_cpu() { "cpu" } else { "cuda" };
    eprintln!(
        "running the reference frameworks ({} {})…",
        args.python,
        script.display()
    );
    let out = std::process::Command::new(&args.python)
        .arg(&script)
        .args([
            "--batch",
            &args.batch.to_string(),
            "--size",
            &args.size.to_string(),
        ])
        .args([
            "--threads",
            &threads.to_string(),
            "--reps",
            &args.reps.max(1).to_string(),
            "--device",
            device,
            "--json",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", args.python))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}); its messages are above",
            script.display(),
            out.status
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Loader throughput at 280 -> 256 on `count` synthetic 500x375 JPEGs.
pub fn bench_loader(count: usize, batch: usize, workers: usize) -> Result<LoaderBench> {
    let dir = tempfile_dir()?;
    let per_class = count.div_ceil(5);
    synth::generate(
        &dir,
        &synth::SynthOptions {
            classes: 5,
            per_class,
            width: 500,
            height: 375,
            seed: 1,
            format: "jpg".into(),
        },
    )?;
    let ds = data::scan(&dir)?;
    let opts = LoaderOptions {
        image_size: 256,
        resize_bigger: 280,
        augment: true,
        batch_size: batch,
        shuffle: true,
        seed: 0,
        workers,
        prefetch: 4,
        cache_mb: 4096,
    };
    let loader = Loader::new(&ds, opts, &dir)?;
    let mut rates = Vec::new();
    for epoch in 1..=2 {
        let t = Instant::now();
        let n: usize = loader.epoch(epoch).into_iter().map(|b| b.len()).sum();
        rates.push(n as f64 / t.elapsed().as_secs_f64());
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(LoaderBench {
        workers,
        images: ds.items.len(),
        first_epoch_images_per_s: rates[0],
        cached_epoch_images_per_s: rates[1],
    })
}

fn run_parity(selected: &crate::device::Selected, json: bool) -> Result<()> {
    if selected.is_cpu() {
        bail!(
            "--parity compares a GPU device with the CPU: give --device cuda, vulkan or cube-cpu"
        );
    }
    eprintln!(
        "checking {} against burn's ops and the CPU backend…",
        selected.label
    );
    if let Some(note) = &selected.tuning {
        eprintln!("{note}");
    }
    let checks = parity::run(&selected.device, &mut |c| {
        if !json {
            println!(
                "{:<4} {:<64} {:>9.1e}  (tolerance {:.0e})",
                if c.passed() { "ok" } else { "FAIL" },
                c.name,
                c.relative_error,
                c.tolerance
            );
        }
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    }
    let failed = checks.iter().filter(|c| !c.passed()).count();
    if failed > 0 {
        bail!(
            "{failed} of {} parity checks failed on {}",
            checks.len(),
            selected.label
        );
    }
    println!("{} checks passed on {}", checks.len(), selected.label);
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("mvlab-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

pub fn run(args: &Options) -> Result<()> {
    let selected = crate::device::select(&args.device)?;
    if args.parity {
        return run_parity(&selected, args.json);
    }
    let _burn_ops = args.burn_ops.then(crate::model::fused::burn_ops);
    let (cpu_peak, machine) = peak_gflops();
    // The % of peak column is for the CPU, whose peak is known from /proc/cpuinfo.
    let peak = selected.is_cpu().then_some(cpu_peak);
    if !args.json {
        match peak {
            Some(p) => println!("machine: {machine}: peak {p:.0} GFLOP/s (f32)"),
            None => println!("machine: {machine}; models run on {}", selected.label),
        }
    }
    if let Some(note) = &selected.tuning {
        eprintln!("{note}");
    }
    let mut models = Vec::new();
    if !args.no_models {
        for mut cfg in model_configs(&args.model, args.size)? {
            cfg.dropout = args.dropout;
            eprintln!(
                "benchmarking {} (batch {}, {}x{}) on {}…",
                cfg.label(),
                args.batch,
                args.size,
                args.size,
                selected.label
            );
            // Each result is printed as soon as it is measured (a long run may be cut short).
            for burn_ops in std::iter::once(false).chain(args.unfused.then_some(true)) {
                let guard = burn_ops.then(crate::model::fused::burn_ops);
                let mut b = bench_model(&cfg, args.batch, args.reps.max(1), &selected);
                drop(guard);
                if burn_ops {
                    b.model = format!("{} (burn ops)", b.model);
                }
                if !args.json {
                    print_model(&b, peak);
                }
                models.push(b);
            }
        }
    }
    let mut loaders = Vec::new();
    if args.loader {
        for workers in [1, 2] {
            let l = bench_loader(256, args.batch, workers)?;
            if !args.json {
                println!(
                    "loader     {} worker(s), {} JPEGs 500x375 -> 280 -> 256 | first epoch {:>7.1} img/s | cached {:>7.1} img/s",
                    l.workers, l.images, l.first_epoch_images_per_s, l.cached_epoch_images_per_s
                );
            }
            loaders.push(l);
        }
    }
    let reference = if args.compare {
        run_reference(args, &selected)?
    } else {
        Vec::new()
    };
    let mut ratios = Vec::new();
    for r in &reference {
        let ours = match r["model"].as_str() {
            Some("keras-xxs") => models.iter().find(|m| m.model == "keras-xxs"),
            Some("xxs") => models.iter().find(|m| m.model == "paper-xxs"),
            _ => None,
        };
        let (Some(m), Some(rt), Some(ri)) =
            (ours, r["train_step_s"].as_f64(), r["infer_s"].as_f64())
        else {
            continue;
        };
        let row = serde_json::json!({
            "model": m.model, "reference": r["framework"], "reference_train_step_s": rt, "reference_infer_s": ri,
            "train_speed_ratio": rt / m.train_step_s, "infer_speed_ratio": ri / m.infer_s,
        });
        if !args.json {
            println!(
                "{:<10} vs {}: train step {:.3} s vs {:.3} s = {:.2}x | inference {:.3} s vs {:.3} s = {:.2}x (mvlab speed / reference speed)",
                m.model,
                r["framework"].as_str().unwrap_or("?"),
                m.train_step_s,
                rt,
                rt / m.train_step_s,
                m.infer_s,
                ri,
                ri / m.infer_s
            );
        }
        ratios.push(row);
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "models": models, "loader": loaders, "reference": ratios })
            )?
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flops_match_torch_flop_counter_for_timm_models() {
        // torch.utils.flop_counter.FlopCounterMode on timm mobilevit_{xxs,xs,s}(num_classes=5), 1x3x256x256.
        let device = burn::tensor::Device::flex();
        for (cfg, torch) in model_configs("all", 256).unwrap().into_iter().skip(1).zip([
            814_091_392.0,
            2_051_059_456.0,
            4_000_389_376.0,
        ]) {
            let ours = forward_flops(&cfg.init(&device), 256);
            assert!(
                (ours - torch).abs() / torch < 0.005,
                "{}: {ours} vs torch {torch}",
                cfg.label()
            );
        }
        let (peak, _) = peak_gflops();
        assert!(peak > 0.0);
    }
}
