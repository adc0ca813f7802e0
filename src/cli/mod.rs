//! The command line, split as ripgrep splits it: `args` (clap types), `commands` (the work),
//! `progress` (bars and lines while runs train). `main` parses and dispatches.

pub mod args;
pub mod commands;
pub mod export;
pub mod progress;
pub mod submit;

use crate::registry::Place;
use anyhow::{Result, bail};
use args::{Cli, Command, SweepAction};
use clap::Parser;
use commands::*;
use submit::{cmd_submit, cmd_sweep_resume_on_slurm};

pub fn main() -> Result<i32> {
    let cli = Cli::parse();
    if let Some(level) = cli.autotune {
        crate::device::set_autotune(level);
    }
    let db = Place {
        location: cli.db.clone(),
        artifacts: cli.artifacts.clone(),
        scratch: cli
            .scratch
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("mvlab-scratch")),
    };
    let done = |r: Result<()>| r.map(|_| 0);
    match cli.command {
        None => done(crate::tui::run(&db)),
        Some(Command::Run {
            config,
            sets,
            seeds,
            gate,
            gate_alpha,
        }) => cmd_run(
            &db,
            &config,
            &sets,
            seeds.map(usize::from),
            gate.as_deref().map(|g| (g, gate_alpha)),
        ),
        Some(Command::Compare {
            a,
            b,
            data,
            alpha,
            json,
            html,
        }) => cmd_compare(&db, &a, &b, data.as_deref(), alpha, json, html.as_deref()),
        Some(Command::Samples { run, top, json }) => {
            done(cmd_samples(&db, run, top as usize, json))
        }
        Some(Command::Rerun {
            run,
            verify: _,
            steps,
            tolerance,
            json,
        }) => cmd_rerun(&db, run, steps.map(|s| s as usize), tolerance, json),
        Some(Command::Resume { run }) => cmd_resume(&db, run),
        Some(Command::Delete { run }) => done(cmd_delete(&db, run)),
        Some(Command::Runs { json }) => done(cmd_runs(&db, json)),
        Some(Command::Show { run, json }) => done(cmd_show(&db, run, json)),
        Some(Command::Eval { target, data, json }) => {
            done(cmd_eval(&db, &target, data.as_deref(), json))
        }
        Some(Command::Predict {
            checkpoint,
            images,
            top_k,
            json,
        }) => cmd_predict(&db, &checkpoint, &images, top_k.into(), json),
        Some(Command::Export {
            target,
            format,
            quantize,
            calibrate,
            data,
            out,
            json,
        }) => export::cmd_export(
            &db,
            &export::ExportArgs {
                target: &target,
                format,
                quantize,
                calibrate: calibrate as usize,
                data: data.as_deref(),
                out: &out,
                json,
            },
        ),
        Some(Command::Summary {
            config,
            sets,
            classes,
        }) => done(cmd_summary(&config, &sets, classes)),
        Some(Command::Data { command }) => done(cmd_data(command)),
        Some(Command::Bench(args)) => match (&args.registry, &args.onnx, &args.tflite) {
            (Some(workers), _, _) => done(crate::bench::registry::run(&db, workers, args.json)),
            (None, Some(file), _) => done(cmd_bench_onnx(file, args.reps as usize, args.json)),
            (None, None, Some(file)) => done(cmd_bench_tflite(file, args.reps as usize, args.json)),
            (None, None, None) => done(crate::bench::run(&args.options())),
        },
        Some(Command::Sweep {
            action: Some(SweepAction::Report { sweep, out, json }),
            ..
        }) => cmd_sweep_report(&db, sweep, out, json),
        Some(Command::Sweep {
            action: None,
            config,
            sets,
            workers,
            resume,
            slurm,
        }) => match (config, resume) {
            (_, Some(sweep)) if slurm.slurm.is_some() => {
                cmd_sweep_resume_on_slurm(&db, sweep, &slurm)
            }
            (_, Some(sweep)) => cmd_sweep_resume(&db, sweep, workers),
            (Some(config), None) => cmd_sweep(&db, &config, &sets, workers, &slurm),
            (None, None) => {
                bail!("give an experiment file with a [sweep] section (or --resume SWEEP)")
            }
        },
        Some(Command::Queue { json }) => done(cmd_queue(&db, json)),
        Some(Command::Submit { slurm, sweep }) => done(cmd_submit(&db, &slurm, sweep)),
        Some(Command::Worker(args)) => work(&db.open()?, &args.options()),
    }
}
