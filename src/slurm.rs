//! Slurm: the sbatch script of a job array of `mvlab worker`s, its submission, what this
//! process is when Slurm started it (job, array task, node, attempt), and the bounded calls to
//! `squeue`, `scancel` and `scontrol` that the queue, the workbench and a stopping worker make.
//! Every call has a deadline: with a dead munge daemon Slurm's commands hang.

use crate::config::SlurmSection;
use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Seconds before the time limit at which Slurm sends USR1 (unless the file says otherwise).
pub const DEFAULT_WARNING_S: u32 = 90;

/// A job array to submit: `tasks` workers of `worker_args`, with the registry in `env`.
pub struct Request {
    pub name: String,
    pub tasks: u16,
    pub options: SlurmSection,
    /// `mvlab worker ...` arguments after the binary.
    pub worker_args: Vec<String>,
    /// MVLAB_DB and friends: (name, value, written into the script). Every value is also in
    /// sbatch's environment, which the jobs inherit; one with a secret (a PostgreSQL URL with
    /// a password) stays out of the script, which the registry stores.
    pub env: Vec<(&'static str, String, bool)>,
    pub binary: PathBuf,
    pub chdir: PathBuf,
}

impl Request {
    /// The output folder (made by [`submit`]: Slurm does not create it).
    pub fn output_dir(&self) -> PathBuf {
        let dir = self
            .options
            .output
            .clone()
            .unwrap_or_else(|| PathBuf::from("slurm"));
        if dir.is_absolute() {
            dir
        } else {
            self.chdir.join(dir)
        }
    }

    /// The sbatch script. The batch shell `exec`s the worker, so the warning signal (`B:USR1`)
    /// and a `scancel`'s SIGTERM reach it directly.
    pub fn script(&self) -> String {
        let o = &self.options;
        let mut lines = vec![
            "#!/bin/bash".to_string(),
            format!("#SBATCH --job-name={}", self.name),
            format!("#SBATCH --array=0-{}", self.tasks.saturating_sub(1)),
            "#SBATCH --ntasks=1".into(),
            format!("#SBATCH --chdir={}", self.chdir.display()),
            format!(
                "#SBATCH --output={}/%x-%A_%a.out",
                self.output_dir().display()
            ),
            "#SBATCH --open-mode=append".into(),
            "#SBATCH --requeue".into(),
            format!(
                "#SBATCH --signal=B:USR1@{}",
                o.warning_s.unwrap_or(DEFAULT_WARNING_S)
            ),
        ];
        let mut opt = |flag: &str, v: Option<String>| {
            if let Some(v) = v {
                lines.push(format!("#SBATCH --{flag}={v}"));
            }
        };
        opt("partition", o.partition.clone());
        opt("time", o.time.clone());
        opt("cpus-per-task", o.cpus_per_task.map(|c| c.to_string()));
        opt("mem", o.mem.clone());
        opt("gres", o.gpus.map(|g| format!("gpu:{g}")));
        opt("account", o.account.clone());
        lines.extend(o.sbatch.iter().map(|a| format!("#SBATCH {a}")));
        lines.push(String::new());
        lines.push(
            "# Each array task is one worker. On the time-limit warning (USR1) or a SIGTERM".into(),
        );
        lines.push(
            "# (scancel, preemption) it stops after its step, keeps the last epoch's checkpoint,"
                .into(),
        );
        lines.push(
            "# puts its run back in the queue, and on the warning requeues its own task.".into(),
        );
        for (key, value, in_script) in &self.env {
            if *in_script {
                lines.push(format!("export {key}={}", shell_quote(value)));
            } else {
                lines.push(format!(
                    "# {key} comes from the submitting environment (it holds a password)"
                ));
            }
        }
        let args: Vec<String> = self.worker_args.iter().map(|a| shell_quote(a)).collect();
        lines.push(format!(
            "exec {} {}",
            shell_quote(&self.binary.display().to_string()),
            args.join(" ")
        ));
        lines.join("\n") + "\n"
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Submits the script (on sbatch's stdin) and returns the job id. The registry's URL travels
/// in sbatch's environment too, for the lines the script leaves out.
pub fn submit(req: &Request) -> Result<String> {
    let dir = req.output_dir();
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the jobs' output folder {}", dir.display()))?;
    let mut cmd = Command::new("sbatch");
    cmd.arg("--parsable");
    for (key, value, _) in &req.env {
        cmd.env(key, value);
    }
    let out =
        bounded(cmd, Some(req.script().as_bytes()), Duration::from_secs(60)).context("sbatch")?;
    if !out.0 {
        bail!("sbatch refused the job: {}", out.2.trim());
    }
    // `--parsable` prints `jobid` or `jobid;cluster`.
    let id = out.1.trim().split(';').next().unwrap_or("").to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        bail!("sbatch printed no job id: {:?}", out.1.trim());
    }
    Ok(id)
}

/// Runs a Slurm command with a deadline; returns (success, stdout, stderr).
fn bounded(
    mut cmd: Command,
    stdin: Option<&[u8]>,
    limit: Duration,
) -> Result<(bool, String, String)> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {program}: is Slurm installed on this machine?"))?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(data)?;
    }
    let start = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            let out = child.wait_with_output()?;
            return Ok((
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{program} gave no answer in {} s (is munge running? Slurm's commands hang without it)",
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `sbatch --test-only` of the script: Slurm's own check of what it asks for (it submits nothing).
pub fn test_only(req: &Request) -> Result<String> {
    let mut cmd = Command::new("sbatch");
    cmd.arg("--test-only");
    let (ok, out, err) = bounded(cmd, Some(req.script().as_bytes()), Duration::from_secs(30))?;
    if !ok {
        bail!("sbatch --test-only refused the script: {}", err.trim());
    }
    Ok(format!("{out}{err}").trim().to_string())
}

/// What Slurm made of this process, read from the environment it starts jobs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// `JOB_TASK` for an array task (what `scancel` and `squeue -j` take), else the job id.
    pub job: String,
    pub node: String,
    /// How many times the job was requeued before this attempt.
    pub restarts: u32,
}

impl Task {
    pub fn current() -> Option<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let job_id = var("SLURM_JOB_ID")?;
        let job = match (var("SLURM_ARRAY_JOB_ID"), var("SLURM_ARRAY_TASK_ID")) {
            (Some(array), Some(task)) => format!("{array}_{task}"),
            _ => job_id,
        };
        Some(Self {
            job,
            node: var("SLURMD_NODENAME").unwrap_or_else(crate::registry::this_host),
            restarts: var("SLURM_RESTART_COUNT")
                .and_then(|c| c.parse().ok())
                .unwrap_or(0),
        })
    }

    /// Puts this job back in Slurm's queue (it is sent SIGTERM and starts again later).
    pub fn requeue(&self) -> Result<()> {
        let mut cmd = Command::new("scontrol");
        cmd.args(["requeue", &self.job]);
        let (ok, _, err) = bounded(cmd, None, Duration::from_secs(30))?;
        if !ok {
            bail!("scontrol requeue {} failed: {}", self.job, err.trim());
        }
        Ok(())
    }
}

/// Slurm's state of jobs (`JOB_TASK` or job ids), from `squeue`: PENDING, RUNNING, REQUEUED,
/// ... Jobs that left the queue are absent. An error when Slurm is not here or does not answer.
pub fn states(jobs: &[String]) -> Result<HashMap<String, String>> {
    if jobs.is_empty() {
        return Ok(HashMap::new());
    }
    let mut cmd = Command::new("squeue");
    // %i is the task's own id (`123_4`, or `123_[0-3]` for tasks not started yet); %T the state.
    cmd.args(["-h", "-r", "-o", "%i %T", "-j"]).arg(
        jobs.iter()
            .map(|j| j.split('_').next().unwrap_or(j))
            .collect::<Vec<_>>()
            .join(","),
    );
    let (ok, out, err) = bounded(cmd, None, Duration::from_secs(3))?;
    // squeue exits 1 when every job asked for has left the queue.
    if !ok && !err.contains("Invalid job id") {
        bail!("squeue: {}", err.trim());
    }
    Ok(out
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(id, state)| (id.to_string(), state.trim().to_lowercase()))
        .collect())
}

/// Cancels a job or array task (SIGTERM first, as Slurm does).
pub fn cancel(job: &str) -> Result<()> {
    let mut cmd = Command::new("scancel");
    cmd.arg(job);
    let (ok, _, err) = bounded(cmd, None, Duration::from_secs(10))?;
    if !ok {
        bail!("scancel {job} failed: {}", err.trim());
    }
    Ok(())
}

/// Whether Slurm's client is on this machine (`sbatch` on the PATH).
pub fn available() -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|p| Path::new(&p).join("sbatch").is_file())
    })
}
