//! Sweeps and queues on a real Slurm: a single-node cluster (Debian's slurmctld, slurmd and
//! munge) started in a temp folder on 127.0.0.1 by each test, stopped after. The workers are
//! the real binary, started by Slurm from the sbatch script `mvlab` submits; they are stopped
//! by a real `scancel` and by Slurm's own time limit.

use super::common::*;
use crate::common::Proc;
use crate::common::Timed;
use mvlab::registry::{Location, Registry, RunRow};
use mvlab::status::RunStatus;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A cluster of one node with 2 CPUs: munged, slurmctld and slurmd in the foreground as
/// children of the test, on free ports; every wait on Slurm has a deadline (with munge gone,
/// Slurm's commands hang).
struct Cluster {
    dir: tempfile::TempDir,
    /// Each killed, with what it started, and reaped when dropped ([`Proc`]).
    daemons: Vec<Proc>,
    _serial: std::sync::MutexGuard<'static, ()>,
}

/// Where a Slurm or munge program is (the daemons are in sbin, which a PATH may lack).
fn installed(tool: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
}

impl Cluster {
    /// None (a skip, said) where Slurm is not installed; under CI that is a failure.
    fn start() -> Option<Self> {
        if !["slurmctld", "slurmd", "munged", "sbatch"]
            .iter()
            .all(|t| installed(t).is_some())
        {
            assert!(
                std::env::var_os("CI").is_none(),
                "Slurm is missing (Debian: apt-get install slurmctld slurmd slurm-client munge)"
            );
            eprintln!(
                "skipping: no Slurm (Debian: apt-get install slurmctld slurmd slurm-client munge)"
            );
            return None;
        }
        // One cluster at a time: each has the machine's 2 cores as its node's.
        static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["munge", "state", "spool", "run", "log"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.join("munge"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let key = d.join("munge/key");
        std::fs::write(
            &key,
            (0..1024).map(|_| rand::random::<u8>()).collect::<Vec<_>>(),
        )
        .unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
        let socket = d.join("munge/munge.socket.2");
        let log = |name: &str| std::fs::File::create(d.join("log").join(name)).unwrap();
        let mut daemons = vec![
            Command::new(installed("munged").unwrap())
                .arg("-F")
                .arg(format!("--key-file={}", key.display()))
                .arg(format!("--socket={}", socket.display()))
                .arg(format!("--pid-file={}", d.join("run/munged.pid").display()))
                .arg(format!("--log-file={}", d.join("log/munged.log").display()))
                .arg(format!("--seed-file={}", d.join("munge/seed").display()))
                .stdout(log("munged.out"))
                .stderr(log("munged.err"))
                .spawn_guarded(),
        ];
        let munge_ok = || {
            let encoded = crate::common::output_within(
                Command::new("munge").arg("-S").arg(&socket).arg("-n"),
                Duration::from_secs(30),
            );
            let mut decode = Command::new("unmunge")
                .arg("-S")
                .arg(&socket)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn_guarded();
            use std::io::Write;
            decode.stdin.take()?.write_all(&encoded.stdout).ok()?;
            decode
                .output_within(Duration::from_secs(30))
                .status
                .success()
                .then_some(())
        };
        wait_until(Duration::from_secs(10), "munge answers", || {
            munge_ok().is_some()
        });
        let host = String::from_utf8(Command::new("hostname").arg("-s").timed_output().stdout)
            .unwrap()
            .trim()
            .to_string();
        let (ctl_port, d_port) = (free_port(), free_port());
        let conf = d.join("slurm.conf");
        let p = |s: &str| d.join(s).display().to_string();
        std::fs::write(
            &conf,
            format!(
                "ClusterName=mvlabtest\nSlurmctldHost={host}(127.0.0.1)\nSlurmUser=root\nSlurmdUser=root\n\
                 AuthType=auth/munge\nCredType=cred/munge\nAuthInfo=socket={},cred_expire=10\n\
                 SlurmctldPort={ctl_port}\nSlurmdPort={d_port}\nStateSaveLocation={}\nSlurmdSpoolDir={}\n\
                 SlurmctldPidFile={}\nSlurmdPidFile={}\nSlurmctldLogFile={}\nSlurmdLogFile={}\n\
                 ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nJobAcctGatherType=jobacct_gather/none\n\
                 AccountingStorageType=accounting_storage/none\nSelectType=select/cons_tres\n\
                 SelectTypeParameters=CR_Core_Memory\nDefMemPerCPU=1024\nReturnToService=2\nMpiDefault=none\n\
                 MailProg=/bin/true\nKillWait=5\nSchedulerParameters=sched_interval=5,bf_interval=5\n\
                 NodeName={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory=4096 State=UNKNOWN\n\
                 PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP\n",
                socket.display(),
                p("state"),
                p("spool"),
                p("run/slurmctld.pid"),
                p("run/slurmd.pid"),
                p("log/slurmctld.log"),
                p("log/slurmd.log"),
            ),
        )
        .unwrap();
        daemons.push(
            Command::new(installed("slurmctld").unwrap())
                .args(["-D", "-f"])
                .arg(&conf)
                .stdout(log("slurmctld.out"))
                .stderr(log("slurmctld.err"))
                .spawn_guarded(),
        );
        daemons.push(
            Command::new(installed("slurmd").unwrap())
                .args(["-D", "-N", &host, "-f"])
                .arg(&conf)
                .stdout(log("slurmd.out"))
                .stderr(log("slurmd.err"))
                .spawn_guarded(),
        );
        let cluster = Self {
            dir,
            daemons,
            _serial: serial,
        };
        wait_until(Duration::from_secs(30), "the node is idle", || {
            cluster
                .bounded(cluster.cmd("sinfo").args(["-h", "-N", "-o", "%T"]))
                .is_some_and(|(ok, out)| ok && out.trim() == "idle")
        });
        Some(cluster)
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("slurm.conf")
    }

    /// A command that talks to this cluster (mvlab, or Slurm's own).
    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", self.conf());
        c
    }

    fn mvlab(&self) -> Command {
        let mut c = mvlab();
        c.env("SLURM_CONF", self.conf());
        c
    }

    /// Runs a command with a 10 s deadline: (success, stdout), None when it hung.
    fn bounded(&self, cmd: &mut Command) -> Option<(bool, String)> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let start = Instant::now();
        while child.try_wait().ok()?.is_none() {
            if start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().ok()?;
        Some((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    }

    /// The jobs Slurm still has (any state), as `JOB_TASK STATE` lines.
    fn squeue(&self) -> String {
        self.bounded(self.cmd("squeue").args(["-h", "-r", "-o", "%i %T"]))
            .map(|(_, out)| out)
            .unwrap_or_default()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("log").join(name)).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Jobs first (their workers are the daemons' grandchildren), then the daemons.
        let _ = self.bounded(self.cmd("scancel").args(["--user", "root"]));
        let start = Instant::now();
        while !self.squeue().trim().is_empty() && start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(200));
        }
        for d in self.daemons.iter_mut().rev() {
            let _ = Command::new("kill").arg(d.id().to_string()).timed_status();
            let start = Instant::now();
            while d.try_wait().ok().flatten().is_none() && start.elapsed() < Duration::from_secs(5)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Dropped, each is killed (with what it started) and reaped.
    }
}

fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "waited {limit:?} for: {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The shipped quickstart sweep shrunk to seconds, its jobs' output in `out`.
fn shrunk(out: &Path, samples: usize, epochs: usize, image: u32, extra: &[&str]) -> Vec<String> {
    let mut sets: Vec<String> = [
        format!("sweep.samples={samples}"),
        format!("train.epochs={epochs}"),
        format!("data.image_size={image}"),
        format!("data.resize_bigger={}", image + image / 8),
        "sweep.prune=none".into(),
        "train.device=cpu".into(),
        format!("slurm.output=\"{}\"", out.display()),
    ]
    .into();
    sets.extend(extra.iter().map(|s| s.to_string()));
    sets.into_iter()
        .flat_map(|s| ["--set".to_string(), s])
        .collect()
}

fn sweep_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/quickstart-sweep.toml")
}

fn open(db: &str) -> Registry {
    let loc: Location = db.parse().unwrap();
    Registry::open(&loc).unwrap()
}

fn runs_of(db: &str) -> Vec<RunRow> {
    open(db).runs().unwrap()
}

fn all_completed(db: &str, n: usize) -> bool {
    let runs = runs_of(db);
    runs.len() == n && runs.iter().all(|r| r.status == RunStatus::Completed)
}

fn messages(reg: &Registry, run: i64) -> Vec<String> {
    reg.logs(run, 10_000)
        .unwrap()
        .into_iter()
        .map(|l| l.message)
        .collect()
}

/// Waits for `n` runs to complete, with the cluster's state in the failure message.
fn wait_completed(cluster: &Cluster, db: &str, n: usize, limit: Duration) {
    let start = Instant::now();
    while !all_completed(db, n) {
        if start.elapsed() > limit {
            let runs: Vec<String> = runs_of(db)
                .iter()
                .map(|r| {
                    format!(
                        "run {} {} {}/{} {:?}",
                        r.id, r.status, r.epochs_done, r.epochs_total, r.error
                    )
                })
                .collect();
            panic!(
                "runs not completed after {limit:?}: {runs:?}\nsqueue: {}\nslurmctld: {}",
                cluster.squeue(),
                cluster
                    .log("slurmctld.log")
                    .lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn dry_run_prints_a_script_that_sbatch_accepts_and_submits_nothing() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("dry.db");
    let script = |partition: &str, accepted: bool| {
        let out = cluster
            .mvlab()
            .arg("--db")
            .arg(&db)
            .arg("sweep")
            .arg(sweep_file())
            .args([
                "--slurm",
                "2",
                "--dry-run",
                "--time=5",
                "--cpus-per-task=1",
                "--mem=512M",
            ])
            .arg(format!("--partition={partition}"))
            .arg("--sbatch-arg=--comment=mvlab-test")
            .args(shrunk(tmp.path(), 4, 2, 32, &[]))
            .timed_output();
        assert_eq!(
            out.status.success(),
            accepted,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (text, said) = script("debug", true);
    for line in [
        "#SBATCH --array=0-1",
        "#SBATCH --time=5",
        "#SBATCH --partition=debug",
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --mem=512M",
        "#SBATCH --comment=mvlab-test",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@90",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
    }
    assert!(text.contains("worker --sweep SWEEP --drain"), "{text}");
    assert!(said.contains("sbatch --test-only: sbatch: Job"), "{said}");
    // Slurm's own check of the printed script, by hand as a user would.
    let check = |text: &str| {
        let mut child = cluster
            .cmd("sbatch")
            .arg("--test-only")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn_guarded();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.output();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, verdict) = check(&text);
    assert!(ok && verdict.contains("to start at"), "{verdict}");
    // A partition the cluster lacks: refused by Slurm, and the dry run says so.
    let (bad, said) = script("nosuchpartition", false);
    assert!(!check(&bad).0);
    assert!(said.contains("refused"), "{said}");
    // Workers for what is queued already, checked the same way.
    let submit = cluster
        .mvlab()
        .arg("--db")
        .arg(&db)
        .args(["submit", "--slurm", "3", "--dry-run", "--time=10"])
        .timed_output();
    let text = String::from_utf8(submit.stdout).unwrap();
    assert!(
        submit.status.success(),
        "{}",
        String::from_utf8_lossy(&submit.stderr)
    );
    assert!(
        text.contains("#SBATCH --array=0-2") && text.contains("worker --drain"),
        "{text}"
    );
    assert!(check(&text).0);
    // Nothing was queued or submitted.
    assert!(!db.exists() || runs_of(db.to_str().unwrap()).is_empty());
    assert!(cluster.squeue().trim().is_empty(), "{}", cluster.squeue());
}

#[test]
fn a_sweep_is_drained_by_an_array_of_two_workers_each_trial_once() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let pg = postgres();
    let tmp = tempfile::tempdir().unwrap();
    let db = match &pg {
        Some(pg) => pg.url.clone(),
        None => tmp.path().join("array.db").display().to_string(),
    };
    let out = cluster
        .mvlab()
        .args(["--db", &db, "--artifacts"])
        .arg(tmp.path().join("artifacts"))
        .arg("sweep")
        .arg(sweep_file())
        .args(["--slurm", "2"])
        .args(shrunk(tmp.path(), 4, 2, 32, &[]))
        .timed_output();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job = said
        .split("Slurm job ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .expect("the job id is said")
        .to_string();
    // While it works, the queue names each running trial's array task.
    wait_until(
        Duration::from_secs(120),
        "a trial running under Slurm",
        || {
            let q = cluster.mvlab().args(["--db", &db, "queue"]).timed_output();
            String::from_utf8_lossy(&q.stdout).contains(&format!("{job}_"))
        },
    );
    wait_completed(&cluster, &db, 4, Duration::from_secs(300));
    // The workers leave once the sweep is done: the array leaves Slurm's queue.
    wait_until(Duration::from_secs(60), "the array to finish", || {
        cluster.squeue().trim().is_empty()
    });
    let reg = open(&db);
    let runs = reg.runs().unwrap();
    for r in &runs {
        assert_eq!(r.attempt, 1, "run {} was taken once", r.id);
        let task = r
            .slurm_job
            .clone()
            .expect("each trial records its Slurm task");
        assert!(task.starts_with(&format!("{job}_")), "{task}");
        assert_epochs_once(&reg, r.id, 2);
    }
    let sweep = reg.sweep(runs[0].sweep_id.unwrap()).unwrap();
    assert_eq!(sweep.slurm_job.as_deref(), Some(job.as_str()));
    assert!(sweep.sbatch.unwrap().contains("--drain"));
    let report = run_ok(
        cluster
            .mvlab()
            .args([
                "--db",
                &db,
                "sweep",
                "report",
                &sweep.id.to_string(),
                "--json",
                "--out",
            ])
            .arg(tmp.path().join("r.svg")),
    );
    let v: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    for row in v["ranking"].as_array().unwrap() {
        assert!(
            row["slurm_job"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{job}_"))
        );
    }
}

/// Starts a one-trial sweep of `epochs` on an array of `tasks` workers; returns the registry
/// (SQLite in `tmp`).
fn one_trial(cluster: &Cluster, tmp: &Path, tasks: &str, epochs: usize, extra: &[&str]) -> String {
    let db = tmp.join("one.db").display().to_string();
    run_ok(
        cluster
            .mvlab()
            .args(["--db", &db, "sweep"])
            .arg(sweep_file())
            .args(["--slurm", tasks])
            .args(shrunk(tmp, 1, epochs, 64, &[]))
            .args(extra),
    );
    db
}

/// The Slurm task holding run 1 once it has `epochs` finished.
fn task_after_epochs(db: &str, epochs: i64) -> String {
    let mut holder = None;
    wait_until(Duration::from_secs(180), "epochs under Slurm", || {
        holder = runs_of(db)
            .first()
            .filter(|r| r.status == RunStatus::Running && r.epochs_done >= epochs)
            .and_then(|r| r.slurm_job.clone());
        holder.is_some()
    });
    holder.unwrap()
}

#[test]
fn a_worker_cancelled_mid_run_sends_its_run_back_and_another_finishes_it() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let db = one_trial(&cluster, tmp.path(), "2", 8, &[]);
    let holder = task_after_epochs(&db, 2);
    let (ok, _) = cluster
        .bounded(cluster.cmd("scancel").arg(&holder))
        .unwrap();
    assert!(ok);
    wait_completed(&cluster, &db, 1, Duration::from_secs(240));
    let reg = open(&db);
    let run = &reg.runs().unwrap()[0];
    let log = messages(&reg, run.id);
    assert!(
        log.iter()
            .any(|m| m.starts_with("interrupted (SIGTERM from Slurm")),
        "{log:#?}"
    );
    assert!(
        log.iter().any(|m| m.starts_with("resumed after epoch")),
        "{log:#?}"
    );
    assert_eq!(run.attempt, 2);
    assert_ne!(
        run.slurm_job.as_deref(),
        Some(holder.as_str()),
        "the other task finished it"
    );
    assert_epochs_once(&reg, run.id, 8);
}

#[test]
fn the_time_limit_warning_checkpoints_requeues_the_task_and_the_run_resumes() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // One worker with a minute; Slurm warns it 30 s before the limit (limits are checked about
    // every 30 s, so the warning comes between 0 and 30 s in). 40 epochs take well over a
    // minute on any machine, so the warning always falls inside the run.
    let db = one_trial(
        &cluster,
        tmp.path(),
        "1",
        40,
        &["--time=1", "--set", "slurm.warning_s=30"],
    );
    wait_completed(&cluster, &db, 1, Duration::from_secs(600));
    let reg = open(&db);
    let run = &reg.runs().unwrap()[0];
    let log = messages(&reg, run.id);
    let warned = log
        .iter()
        .filter(|m| m.starts_with("interrupted (Slurm's time-limit warning, USR1) after"))
        .count();
    assert!(warned >= 1, "{log:#?}");
    // An attempt after the first resumed from a checkpoint written before its predecessor was
    // stopped, and said Slurm had requeued it.
    // (A warning within an attempt's first epoch finds no new checkpoint: that attempt's
    // successor starts where it did.)
    let resumed: Vec<&String> = log
        .iter()
        .filter(|m| m.starts_with("resumed after epoch"))
        .collect();
    assert!(
        !resumed.is_empty()
            && !resumed
                .iter()
                .any(|m| m.starts_with("resumed after epoch 0")),
        "{log:#?}"
    );
    assert!(
        log.iter().any(|m| m.contains("requeued 1 time(s)")),
        "{log:#?}"
    );
    assert_eq!(run.attempt as usize, warned + 1);
    assert_epochs_once(&reg, run.id, 40);
}

#[test]
fn the_workbench_shows_a_runs_slurm_task_and_cancelling_the_run_cancels_the_task() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let db = one_trial(&cluster, tmp.path(), "1", 40, &[]);
    let holder = task_after_epochs(&db, 1);
    // The workbench's part runs in a process of its own, with this cluster in its environment
    // (as the workbench has the user's), since this one's is shared by every test's thread.
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "slurm::workbench_part_of_the_cancel_test",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SLURM_CONF", cluster.conf())
        .env("MVLAB_TEST_DB", &db)
        .env("MVLAB_TEST_TASK", &holder)
        .timed_output();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("1 passed"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(Duration::from_secs(60), "the run marked cancelled", || {
        runs_of(&db)[0].status == RunStatus::Cancelled
    });
    wait_until(Duration::from_secs(30), "the task gone from Slurm", || {
        cluster.squeue().trim().is_empty()
    });
    let reg = open(&db);
    let run = &reg.runs().unwrap()[0];
    assert!(run.epochs_done < 40);
    assert!(
        !messages(&reg, run.id)
            .iter()
            .any(|m| m.starts_with("interrupted")),
        "a cancel is not an interruption"
    );
}

/// The workbench over a registry whose run 1 a Slurm task works: the task and its state are in
/// the Runs view, and `c` cancels the run through its worker and the task.
#[test]
#[ignore = "run by the_workbench_shows_a_runs_slurm_task_..., with its cluster"]
fn workbench_part_of_the_cancel_test() {
    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    use mvlab::tui::app::{App, Command as UiCommand};
    use mvlab::tui::background::{self, Msg};
    let db = std::env::var("MVLAB_TEST_DB").expect("MVLAB_TEST_DB");
    let holder = std::env::var("MVLAB_TEST_TASK").expect("MVLAB_TEST_TASK");
    let reg = open(&db);
    let (tx, rx) = std::sync::mpsc::channel();
    let mut effects = mvlab::tui::effects::Effects::new(reg.clone(), tx);
    let mut app = App::new(std::env::temp_dir());
    let mut snapshot = background::snapshot(
        &reg,
        &Default::default(),
        &mut background::SeedCache::default(),
    )
    .unwrap();
    snapshot.slurm = mvlab::slurm::states(&[holder.clone()]).unwrap();
    app.handle_msg(Msg::Snapshot(Box::new(snapshot)));
    let press = |app: &mut App, c: char| {
        app.handle_key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE))
    };
    press(&mut app, '2');
    let mut terminal = ratatui::Terminal::new(ratatui::backend::TestBackend::new(120, 24)).unwrap();
    terminal.draw(|f| mvlab::tui::ui::draw(f, &app)).unwrap();
    let screen: String = terminal
        .backend()
        .buffer()
        .content()
        .iter()
        .map(|c| c.symbol())
        .collect();
    assert!(screen.contains(&format!("{holder} running")), "{screen}");
    // Not this session's run: cancelled through its worker and its Slurm task.
    let command = press(&mut app, 'c');
    assert_eq!(command, Some(UiCommand::Cancel(1)), "{}", app.status);
    effects.perform(command.unwrap());
    let said = loop {
        match rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the cancel reports back")
        {
            Msg::Status(text) => break text,
            _ => continue,
        }
    };
    assert!(
        said.contains(&format!("Slurm task {holder} cancelled")),
        "{said}"
    );
}
