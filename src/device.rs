//! Device selection: `auto`, `cpu`, `cuda[:N]`, `vulkan[:N]`. GPU backends exist only when
//! mvlab was built with the matching cargo feature. `vulkan` alone takes the best adapter Vulkan
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
            _ => bail!("expected auto, cpu, cuda[:N] or vulkan[:N], got {s:?}"),
        })
    }
}

/// A resolved device and the words that say which one was taken.
pub struct Selected {
    pub device: Device,
    pub label: String,
}

impl Selected {
    pub fn is_cpu(&self) -> bool {
        self.device == Device::flex()
    }
}

pub fn select(spec: &str) -> Result<Selected> {
    match DeviceChoice::parse(spec)? {
        DeviceChoice::Cpu => Ok(cpu()),
        DeviceChoice::Cuda(i) => checked(cuda(i)?),
        DeviceChoice::Vulkan(i) => checked(vulkan(i)?),
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
        Err(_) => Err(message
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| "the backend failed to start".into())),
    }
}

#[cfg(feature = "cuda")]
fn cuda(index: usize) -> Result<Selected> {
    Ok(Selected {
        device: Device::cuda(index),
        label: format!("cuda:{index}"),
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
        },
        None => Selected {
            device: Device::vulkan(DeviceKind::DefaultDevice),
            label: "vulkan".into(),
        },
    })
}

#[cfg(not(feature = "vulkan"))]
fn vulkan(_index: Option<usize>) -> Result<Selected> {
    bail!(
        "device vulkan needs mvlab built with the `vulkan` cargo feature (cargo build --release --features vulkan)"
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
    fn auto_falls_back_to_cpu_and_missing_backend_names_the_feature() {
        let s = select("auto").unwrap();
        assert!(!s.label.is_empty());
        if !cfg!(feature = "vulkan") {
            let e = select("vulkan").err().unwrap().to_string();
            assert!(e.contains("--features vulkan"), "{e}");
        }
    }
}
