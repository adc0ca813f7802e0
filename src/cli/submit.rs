//! `--slurm N`: a job array of `mvlab worker`s against this registry, its script printed
//! (`--dry-run`) or submitted, and stored with the sweep it works.

use super::args::SlurmArgs;
use crate::config::SlurmSection;
use crate::registry::{Location, Place, Registry};
use crate::slurm;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// The registry, artifacts and scratch folder as every node must see them: absolute paths
/// (the jobs start in this folder, but a node's view of a relative path is easy to get wrong).
fn registry_env(db: &Place, cwd: &Path) -> Vec<(&'static str, String, bool)> {
    let abs = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            cwd.join(p)
        }
    };
    let mut env = vec![match &db.location {
        Location::Sqlite(p) => ("MVLAB_DB", abs(p).display().to_string(), true),
        Location::Postgres(url) => {
            let has_password = url
                .split_once("://")
                .and_then(|(_, rest)| rest.split_once('@'))
                .is_some_and(|(who, _)| who.contains(':'));
            ("MVLAB_DB", url.clone(), !has_password)
        }
    }];
    if let Some(a) = &db.artifacts {
        let value = if a.contains("://") {
            a.clone()
        } else {
            abs(Path::new(a)).display().to_string()
        };
        env.push(("MVLAB_ARTIFACTS", value, true));
    }
    // The scratch folder matters only beside an object store.
    if db.artifacts.iter().any(|a| a.contains("://")) {
        env.push((
            "MVLAB_SCRATCH",
            abs(&db.scratch).display().to_string(),
            true,
        ));
    }
    env
}

fn request(
    db: &Place,
    name: String,
    tasks: u16,
    options: SlurmSection,
    worker_args: Vec<String>,
) -> Result<slurm::Request> {
    let cwd = std::env::current_dir().context("the current folder")?;
    Ok(slurm::Request {
        name,
        tasks,
        options,
        worker_args,
        env: registry_env(db, &cwd),
        binary: std::env::current_exe().context("this program's path")?,
        chdir: cwd,
    })
}

/// What a cluster needs of the registry, said before submitting.
fn note_registry(db: &Place) {
    if let Location::Sqlite(p) = &db.location {
        eprintln!(
            "note: the registry is the SQLite file {}: every node must see it on a shared filesystem with working locks; a PostgreSQL registry (--db postgres://...) is the safer choice on a cluster",
            p.display()
        );
    }
}

/// Prints the script and, where sbatch is at hand, Slurm's verdict on it (an error when Slurm
/// refuses it); submits nothing.
fn dry_run(req: &slurm::Request) -> Result<()> {
    print!("{}", req.script());
    if !slurm::available() {
        eprintln!("dry run: nothing queued or submitted (no sbatch here to check the script)");
        return Ok(());
    }
    let verdict = slurm::test_only(req).context("dry run: nothing queued or submitted")?;
    eprintln!("dry run: nothing queued or submitted; sbatch --test-only: {verdict}");
    Ok(())
}

/// The worker arguments of a sweep's array task.
fn sweep_worker(sweep: &str) -> Vec<String> {
    ["worker", "--sweep", sweep, "--drain"]
        .map(String::from)
        .to_vec()
}

/// `mvlab sweep FILE --slurm N`, after the sweep is queued (or, dry, before: its id is then
/// written SWEEP).
pub fn sweep_on_slurm(
    db: &Place,
    reg: Option<(&Registry, i64)>,
    args: &SlurmArgs,
    file: Option<&SlurmSection>,
) -> Result<()> {
    let tasks = args.slurm.context("--slurm N")?;
    let options = args.section(file)?;
    let id = reg
        .map(|(_, s)| s.to_string())
        .unwrap_or_else(|| "SWEEP".into());
    let req = request(
        db,
        format!("mvlab-sweep-{id}"),
        tasks,
        options,
        sweep_worker(&id),
    )?;
    let Some((reg, sweep)) = reg else {
        return dry_run(&req);
    };
    note_registry(db);
    let job = slurm::submit(&req)?;
    reg.record_sweep_job(sweep, &req.script(), &job)?;
    println!(
        "sweep {sweep}: Slurm job {job}, an array of {tasks} worker(s); their output in {}; watch with `mvlab queue` or `squeue -j {job}`",
        req.output_dir().display()
    );
    Ok(())
}

/// `mvlab sweep --resume N --slurm K`: the sweep's workers submitted again.
pub fn cmd_sweep_resume_on_slurm(db: &Place, sweep: i64, args: &SlurmArgs) -> Result<i32> {
    let reg = db.open()?;
    let row = reg.sweep(sweep)?;
    let file = crate::sweep::SweepSpec::from_row(&row)?.config.slurm;
    if args.dry_run {
        let req = request(
            db,
            format!("mvlab-sweep-{sweep}"),
            args.slurm.unwrap_or(1),
            args.section(file.as_ref())?,
            sweep_worker(&sweep.to_string()),
        )?;
        dry_run(&req)?;
        return Ok(0);
    }
    sweep_on_slurm(db, Some((&reg, sweep)), args, file.as_ref())?;
    Ok(0)
}

/// `mvlab submit --slurm N`: workers for the queue as it is (or one sweep's part of it). The
/// script is kept beside the jobs' output, as `<job>.sbatch`.
pub fn cmd_submit(db: &Place, args: &SlurmArgs, sweep: Option<i64>) -> Result<()> {
    let tasks = args
        .slurm
        .context("mvlab submit needs --slurm N (the number of workers)")?;
    let mut worker: Vec<String> = ["worker", "--drain"].map(String::from).to_vec();
    if let Some(s) = sweep {
        worker.extend(["--sweep".into(), s.to_string()]);
    }
    let name = sweep.map_or("mvlab-queue".into(), |s| format!("mvlab-sweep-{s}"));
    let req = request(db, name, tasks, args.section(None)?, worker)?;
    if args.dry_run {
        return dry_run(&req);
    }
    let reg = db.open()?;
    let queued = reg
        .runs()?
        .iter()
        .filter(|r| r.status == crate::status::RunStatus::Queued)
        .filter(|r| sweep.is_none() || r.sweep_id == sweep)
        .count();
    note_registry(db);
    let job = slurm::submit(&req)?;
    let kept: PathBuf = req.output_dir().join(format!("{job}.sbatch"));
    std::fs::write(&kept, req.script()).with_context(|| {
        format!(
            "job {job} is submitted, but its script could not be kept as {}",
            kept.display()
        )
    })?;
    if let Some(s) = sweep {
        reg.record_sweep_job(s, &req.script(), &job)?;
    }
    println!(
        "Slurm job {job}: an array of {tasks} worker(s) for {queued} queued run(s); script {}, output beside it; watch with `mvlab queue` or `squeue -j {job}`",
        kept.display()
    );
    Ok(())
}
