//! Device selection: `auto`, `cpu`, `cuda[:N]`, `vulkan[:N]`, `cube-cpu`. GPU backends exist only
//! when mvlab was built with the matching cargo feature. `cube-cpu` is cubecl's CPU runtime: the
//! GPU code path (burn's cubecl ops and mvlab's cube kernels) run on the CPU, for parity tests. `vulkan` alone takes the best adapter Vulkan
//! offers (`CUBECL_WGPU_DEFAULT_DEVICE` overrides it), `vulkan:N` the N-th discrete GPU.

use anyhow::{Result, bail};
use burn::tensor::Device;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(usize),
    /// `None`: the default adapter.
    Vulkan(Option<usize>),
    CubeCpu,
}

impl DeviceChoice {
    pub fn parse(s: &str) -> Result<Self> {
        let (kind, index) = match s.split_once(':') {
            Some((k, i)) => match i.parse::<usize>() {
                Ok(i) => (k, Some(i)),
                Err(_) => bail!("device index in {s:?} is not a number"),
            },
            None => (s, None),
        };
        Ok(match kind {
            "auto" => DeviceChoice::Auto,
            "cpu" => DeviceChoice::Cpu,
            "cuda" => DeviceChoice::Cuda(index.unwrap_or(0)),
            "vulkan" => DeviceChoice::Vulkan(index),
            "cube-cpu" => DeviceChoice::CubeCpu,
            _ => bail!("expected auto, cpu, cuda[:N], vulkan[:N] or cube-cpu, got {s:?}"),
        })
    }
}

/// A resolved device and the words that say which one was taken.
pub struct Selected {
    pub device: Device,
    pub label: String,
    /// On cubecl devices: what the first steps will spend on compiling and autotuning kernels,
    /// and where the results are kept; said on screen before training or benchmarking.
    pub tuning: Option<String>,
}

impl Selected {
    pub fn is_cpu(&self) -> bool {
        self.device == Device::flex()
    }
}

pub fn select(spec: &str) -> Result<Selected> {
    let choice = DeviceChoice::parse(spec)?;
    if choice != DeviceChoice::Cpu {
        configure_cubecl();
    }
    match choice {
        DeviceChoice::Cpu => Ok(cpu()),
        DeviceChoice::Cuda(i) => checked(cuda(i)?),
        DeviceChoice::Vulkan(i) => checked(vulkan(i)?),
        DeviceChoice::CubeCpu => checked(cube_cpu()?),
        DeviceChoice::Auto => {
            // A discrete GPU only: the default Vulkan adapter may be a software renderer.
            for candidate in [cuda(0), vulkan(Some(0))].into_iter().flatten() {
                if probe(&candidate.device).is_ok() {
                    return Ok(candidate);
                }
            }
            Ok(cpu())
        }
    }
}

fn cpu() -> Selected {
    Selected {
        device: Device::flex(),
        label: "cpu (flex)".into(),
        tuning: None,
    }
}

/// A device asked for by name must answer, or the error says why.
fn checked(s: Selected) -> Result<Selected> {
    match probe(&s.device) {
        Ok(()) => Ok(s),
        Err(why) => bail!("device {} is not available: {why}", s.label),
    }
}

/// A GPU backend may be compiled in while no GPU is present: try one tiny op. The backend
/// reports that by panicking (on its own threads too), so the panic is caught and kept quiet.
fn probe(device: &Device) -> std::result::Result<(), String> {
    use std::sync::{Arc, Mutex};
    let message = Arc::new(Mutex::new(None::<String>));
    let seen = message.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info
            .payload()
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        seen.lock().unwrap().get_or_insert(text);
    }));
    let device = device.clone();
    let ok = std::panic::catch_unwind(move || {
        let t = burn::tensor::Tensor::<1>::ones([4], &device);
        t.sum().into_scalar::<f32>() == 4.0
    });
    std::panic::set_hook(previous);
    match ok {
        Ok(true) => Ok(()),
        Ok(false) => Err("a test computation gave a wrong result".into()),
        Err(_) => Err(short_reason(
            message
                .lock()
                .unwrap()
                .as_deref()
                .unwrap_or("the backend failed to start"),
        )),
    }
}

/// A backend's start-up panic in a line. cudarc's, when no driver is installed, lists every
/// library path it tried (kilobytes of text): that becomes what the user needs to know.
fn short_reason(text: &str) -> String {
    let lower = text.to_lowercase();
    if lower.contains("libcuda") || lower.contains("nvcuda") || lower.contains("libnvrtc") {
        let lib = if lower.contains("nvrtc") {
            "the CUDA runtime compiler (libnvrtc)"
        } else {
            "the NVIDIA driver (libcuda)"
        };
        return format!("{lib} could not be loaded: no NVIDIA GPU or driver on this machine?");
    }
    let first = text.lines().next().unwrap_or("").trim();
    crate::fmt::truncate(first, 200)
}

/// Training steps and evaluation batches hold this for reading; a latency measurement holds it
/// for writing, so that the other runs of this process pause between their steps while it
/// times (a sweep's workers share the cores; their work would time as latency).
pub fn quiet_cpu() -> &'static std::sync::RwLock<()> {
    static GATE: std::sync::RwLock<()> = std::sync::RwLock::new(());
    &GATE
}

/// Memory this machine can still give a process (Linux `MemAvailable`, capped by the cgroup's
/// limit when there is one); `None` where it cannot be read.
pub fn host_memory_available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let available = kb.saturating_mul(1024);
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let used = std::fs::read_to_string("/sys/fs/cgroup/memory.current")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    Some(match (cgroup, used) {
        (Some(max), Some(used)) => available.min(max.saturating_sub(used)),
        _ => available,
    })
}

/// Where cubecl keeps what it learns about this machine's GPUs (autotune results, compiled
/// kernels) between runs: `MVLAB_GPU_CACHE`, else `$XDG_CACHE_HOME/mvlab/cubecl`, else
/// `~/.cache/mvlab/cubecl`. A `cubecl.toml` in the working directory that names a path wins.
pub fn gpu_cache_dir() -> std::path::PathBuf {
    use std::path::PathBuf;
    if let Some(dir) = std::env::var_os("MVLAB_GPU_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("mvlab").join("cubecl")
}

/// How hard burn's autotune tries candidate kernels on GPUs (cubecl's levels): `minimal` tunes
/// the fewest shapes and stops earliest, `full` measures every candidate on every exact shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::Display, strum::EnumString, strum::AsRefStr)]
#[strum(serialize_all = "snake_case")]
pub enum Autotune {
    Minimal,
    Balanced,
    Extensive,
    Full,
}

static AUTOTUNE: std::sync::OnceLock<Autotune> = std::sync::OnceLock::new();

/// Sets the autotune level for this process; it takes effect if set before the first GPU device
/// is selected (false when it came too late, or a level was set already).
pub fn set_autotune(level: Autotune) -> bool {
    AUTOTUNE.set(level).is_ok() && !CONFIGURED.load(std::sync::atomic::Ordering::SeqCst)
}

static CONFIGURED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// cubecl keeps its caches under the *build's* `target/` unless told otherwise, which an
/// installed binary does not have: point it at [`gpu_cache_dir`] (once, before any GPU use),
/// with the autotune level of [`set_autotune`] if one was set.
#[cfg(feature = "cube")]
fn configure_cubecl() {
    use cubecl::config::cache::CacheConfig;
    use cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        CONFIGURED.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
        if matches!(config.environment.path, CacheConfig::Target) {
            config.environment.path = CacheConfig::Directory(gpu_cache_dir());
        }
        // Compiled kernels kept between runs too (cuda, vulkan), not only tuning results.
        config.compilation.cache = true;
        // Autotune's results reach `log`, where `tuning` follows them.
        if let Ok(mut value) = serde_json::to_value(&config) {
            value["autotune"]["logger"]["log"] = "info".into();
            if let Ok(c) = serde_json::from_value(value) {
                config = c;
            }
        }
        tuning::install();
        if let Some(level) = AUTOTUNE.get() {
            use cubecl::config::autotune::AutotuneLevel;
            config.autotune.level = match level {
                Autotune::Minimal => AutotuneLevel::Minimal,
                Autotune::Balanced => AutotuneLevel::Balanced,
                Autotune::Extensive => AutotuneLevel::Extensive,
                Autotune::Full => AutotuneLevel::Full,
            };
        }
        // Refused only when cubecl's configuration was read already: it then stays as it was.
        let _ = CubeClRuntimeConfig::try_set(config);
    });
}

#[cfg(not(feature = "cube"))]
fn configure_cubecl() {}

/// What autotune is doing, followed through cubecl's log records ("Tuning {key}" when a shape
/// is tuned, "Fastest result …" with one line per candidate tried when it is done).
pub mod tuning {
    use std::sync::Mutex;
    use std::time::Instant;

    /// Tuning so far in this process.
    #[derive(Debug, Clone, Default)]
    pub struct Progress {
        /// Shapes tuned (done), candidates tried, seconds spent.
        pub tuned: usize,
        pub trials: usize,
        pub seconds: f64,
        /// The one being tuned now, since when.
        pub current: Option<(String, Instant)>,
    }

    impl Progress {
        /// Seconds the shape being tuned has taken so far.
        pub fn current_seconds(&self) -> Option<f64> {
            self.current.as_ref().map(|c| c.1.elapsed().as_secs_f64())
        }

        /// A line for people while a shape is being tuned.
        pub fn line(&self) -> Option<String> {
            let (key, since) = self.current.as_ref()?;
            let op = key.split([' ', '-']).next().unwrap_or(key);
            Some(format!(
                "GPU autotuning {op} ({} shapes done, this one {:.0}s; results are kept for later runs)",
                self.tuned,
                since.elapsed().as_secs_f64()
            ))
        }
    }

    static PROGRESS: Mutex<Option<Progress>> = Mutex::new(None);

    pub fn progress() -> Progress {
        PROGRESS
            .lock()
            .ok()
            .and_then(|p| p.clone())
            .unwrap_or_default()
    }

    struct Hook;

    impl log::Log for Hook {
        fn enabled(&self, metadata: &log::Metadata) -> bool {
            metadata.target().starts_with("cubecl")
        }

        fn log(&self, record: &log::Record) {
            if !self.enabled(record.metadata()) {
                return;
            }
            let text = record.args().to_string();
            let Ok(mut guard) = PROGRESS.lock() else {
                return;
            };
            let p = guard.get_or_insert_with(Progress::default);
            if let Some(key) = text.strip_prefix("Tuning ") {
                p.current = Some((key.to_string(), Instant::now()));
            } else if text.starts_with("Fastest result") {
                if let Some((_, since)) = p.current.take() {
                    p.seconds += since.elapsed().as_secs_f64();
                }
                p.tuned += 1;
                p.trials += text.matches(" - Tuning:").count();
            }
        }

        fn flush(&self) {}
    }

    static HOOK: Hook = Hook;

    /// Listens to cubecl's log records (once; leaves another logger in place if one is set).
    pub fn install() {
        if log::set_logger(&HOOK).is_ok() {
            log::set_max_level(log::LevelFilter::Info);
        }
    }
}

/// The words said before the first GPU steps: they compile kernels and autotune them on shapes
/// not seen before (burn's autotune, in every cubecl build: seconds to minutes), which looks like
/// a hang unless said.
#[cfg_attr(not(feature = "cube"), allow(dead_code))]
fn tuning_note() -> String {
    let dir = gpu_cache_dir();
    let warm = std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some());
    if warm {
        format!(
            "GPU: the first steps compile kernels; tuning results of earlier runs are read from {} (new shapes are autotuned)",
            dir.display()
        )
    } else {
        format!(
            "GPU: the first steps compile and autotune kernels for every layer shape (first run here; the results are kept in {} for later runs)",
            dir.display()
        )
    }
}

#[cfg(feature = "cuda")]
fn cuda(index: usize) -> Result<Selected> {
    Ok(Selected {
        device: Device::cuda(index),
        label: format!("cuda:{index}"),
        tuning: Some(tuning_note()),
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda(_index: usize) -> Result<Selected> {
    bail!(
        "device cuda needs mvlab built with the `cuda` cargo feature (cargo build --release --features cuda)"
    )
}

#[cfg(feature = "vulkan")]
fn vulkan(index: Option<usize>) -> Result<Selected> {
    use burn::tensor::DeviceKind;
    Ok(match index {
        Some(i) => Selected {
            device: Device::vulkan(DeviceKind::DiscreteGpu(i)),
            label: format!("vulkan:{i}"),
            tuning: Some(tuning_note()),
        },
        None => Selected {
            device: Device::vulkan(DeviceKind::DefaultDevice),
            label: "vulkan".into(),
            tuning: Some(tuning_note()),
        },
    })
}

#[cfg(not(feature = "vulkan"))]
fn vulkan(_index: Option<usize>) -> Result<Selected> {
    bail!(
        "device vulkan needs mvlab built with the `vulkan` cargo feature (cargo build --release --features vulkan)"
    )
}

#[cfg(feature = "cube-cpu")]
fn cube_cpu() -> Result<Selected> {
    Ok(Selected {
        device: Device::cpu(),
        label: "cube-cpu (cubecl CPU runtime)".into(),
        tuning: Some(tuning_note()),
    })
}

#[cfg(not(feature = "cube-cpu"))]
fn cube_cpu() -> Result<Selected> {
    bail!(
        "device cube-cpu needs mvlab built with the `cube-cpu` cargo feature (scripts/llvm_kit.sh, then cargo build --release --features cube-cpu)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_specs() {
        assert_eq!(DeviceChoice::parse("auto").unwrap(), DeviceChoice::Auto);
        assert_eq!(
            DeviceChoice::parse("cuda:1").unwrap(),
            DeviceChoice::Cuda(1)
        );
        assert_eq!(
            DeviceChoice::parse("vulkan").unwrap(),
            DeviceChoice::Vulkan(None)
        );
        assert_eq!(
            DeviceChoice::parse("vulkan:1").unwrap(),
            DeviceChoice::Vulkan(Some(1))
        );
        assert!(DeviceChoice::parse("tpu").is_err());
        assert!(DeviceChoice::parse("cuda:x").is_err());
    }

    #[test]
    fn long_driver_errors_become_one_line() {
        let cudarc = format!(
            "Unable to dynamically load the \"cuda\" shared library - searched for library names: {}",
            ["libcuda.so", "libcuda.so.1", "/usr/lib64/libcuda.so"]
                .repeat(40)
                .join(", ")
        );
        let short = short_reason(&cudarc);
        assert!(
            short.len() < 120 && short.contains("NVIDIA driver"),
            "{short}"
        );
        let other = format!("first line\n{}", "x".repeat(5000));
        assert_eq!(short_reason(&other), "first line");
        assert!(short_reason(&"y".repeat(1000)).chars().count() <= 201);
    }

    #[test]
    fn auto_falls_back_to_cpu_and_missing_backend_names_the_feature() {
        let s = select("auto").unwrap();
        assert!(!s.label.is_empty());
        if !cfg!(feature = "vulkan") {
            let e = select("vulkan").err().unwrap().to_string();
            assert!(e.contains("--features vulkan"), "{e}");
        }
    }
}
