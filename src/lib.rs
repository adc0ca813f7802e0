//! mvlab: train, track and compare MobileViT image classifiers.

pub mod artifacts;
pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod compare;
pub mod config;
pub mod data;
pub mod device;
pub mod dynamics;
pub mod eval;
pub mod export;
pub mod fmt;
pub mod infer;
pub mod jobs;
pub mod model;
pub mod provenance;
pub mod registry;
pub mod samples;
pub mod slurm;
pub mod stats;
pub mod status;
pub mod sweep;
pub mod train;
pub mod tui;
pub mod verify;
