//! The integration tests, one binary (each module an area): real files, a real SQLite
//! registry, PostgreSQL and S3-compatible servers the tests start themselves, the real `mvlab`
//! binary, and the GPU code path on cubecl's CPU runtime (`--features cube-cpu`).

#![allow(dead_code)]

mod common;

mod architecture;
mod artifacts_s3;
mod cli_runs;
mod data_pipeline;
mod evidence;
mod export_onnx;
mod export_tflite;
mod faults;
mod fused_equivalence;
mod fused_kernels;
#[cfg(feature = "cube")]
mod gpu_launches;
#[cfg(feature = "cube")]
mod gpu_optim;
#[cfg(feature = "cube")]
mod gpu_parity;
mod hostile;
mod keras_parity;
mod leases;
mod model_behaviour;
mod properties;
mod registry_backends;
mod reproducible;
mod run_folders;
mod search;
mod slurm;
mod sweeps;
mod timm_parity;
mod training_small;
mod tui_views;
