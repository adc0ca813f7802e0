//! Shared helpers for the integration tests: a tiny real dataset and configs that point at it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Before any cubecl device is used in this process: on a CPU every candidate kernel is an LLVM
/// compile, so autotune tries the fewest (unless CUBECL_AUTOTUNE_LEVEL says otherwise).
pub fn cube_setup() {
    if std::env::var_os("CUBECL_AUTOTUNE_LEVEL").is_none() {
        mvlab::device::set_autotune(mvlab::device::Autotune::Minimal);
    }
}

pub fn mvlab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mvlab"))
}

/// How long any one command of the tests may take before it is killed and its test fails: a
/// tiny training run is seconds to a few minutes on 2 loaded cores, a short command seconds.
/// Generous, so that only a hang reaches it.
pub const DEADLINE: Duration = Duration::from_secs(20 * 60);

/// A child process of a test, started in a process group of its own. Dropped before it was
/// waited for (the test failed, or gave up on it), the whole group is killed (SIGKILL) and the
/// child reaped, so a failing test cannot leave `mvlab` training beside the next tests. Its
/// piped stdout and stderr are read as it runs (no pipe fills up), and every wait has a
/// deadline. Derefs to the [`std::process::Child`] for `id`, `try_wait`, `kill`.
pub struct Proc {
    child: std::process::Child,
    what: String,
    reaped: bool,
    out: Option<Captured>,
    err: Option<Captured>,
}

struct Captured {
    buf: Arc<Mutex<Vec<u8>>>,
    thread: std::thread::JoinHandle<()>,
}

fn capture(mut from: impl Read + Send + 'static) -> Captured {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let to = buf.clone();
    let thread = std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(n) = from.read(&mut chunk) {
            if n == 0 {
                break;
            }
            to.lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(&chunk[..n]);
        }
    });
    Captured { buf, thread }
}

impl Captured {
    fn so_far(&self) -> Vec<u8> {
        self.buf.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Starts `cmd` as a [`Proc`] (what it pipes is captured, what it does not is as set).
pub fn spawn(cmd: &mut Command) -> Proc {
    use std::os::unix::process::CommandExt;
    let what = format!("{cmd:?}");
    let mut child = cmd
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let out = child.stdout.take().map(capture);
    let err = child.stderr.take().map(capture);
    Proc {
        child,
        what,
        reaped: false,
        out,
        err,
    }
}

impl Proc {
    /// SIGKILL to the child's process group (it and whatever it started).
    fn kill_group(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
    }

    /// SIGKILL to it and whatever it started, then reaps it.
    fn kill_all(&mut self) {
        if self.reaped {
            return;
        }
        self.kill_group();
        let _ = self.child.wait();
        self.reaped = true;
    }

    fn so_far(&self) -> (String, String) {
        let text = |c: &Option<Captured>| {
            c.as_ref()
                .map(|c| String::from_utf8_lossy(&c.so_far()).into_owned())
                .unwrap_or_default()
        };
        (text(&self.out), text(&self.err))
    }

    /// Kills it with everything it started, and fails the test saying why.
    fn give_up(&mut self, why: &str) -> ! {
        self.kill_all();
        let (out, err) = self.so_far();
        panic!(
            "{why}; killed: {}\n--- its stdout so far:\n{out}\n--- its stderr so far:\n{err}",
            self.what
        );
    }

    /// Waits until it exits, `limit` at most (then kills it and fails the test): its status and
    /// what it wrote to the pipes it was given.
    pub fn output_within(mut self, limit: Duration) -> Output {
        let start = Instant::now();
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if start.elapsed() > limit => {
                    self.give_up(&format!("still running after {limit:?}"))
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => self.give_up(&format!("cannot wait for it: {e}")),
            }
        };
        self.reaped = true;
        // Its output ends when the last process holding its pipes ends: something it started
        // and left running would hold them.
        let finished = |c: &Option<Captured>| c.as_ref().is_none_or(|c| c.thread.is_finished());
        for i in 0..2 {
            while !finished(if i == 0 { &self.out } else { &self.err }) {
                if start.elapsed() > limit + Duration::from_secs(30) {
                    // Reaped, it is not there to kill, its process group still is.
                    self.kill_group();
                    self.give_up("exited, but processes it started still hold its output");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let (stdout, stderr) = (
            self.out.as_ref().map(Captured::so_far).unwrap_or_default(),
            self.err.as_ref().map(Captured::so_far).unwrap_or_default(),
        );
        Output {
            status,
            stdout,
            stderr,
        }
    }

    /// [`Proc::output_within`] with the tests' [`DEADLINE`].
    pub fn output(self) -> Output {
        self.output_within(DEADLINE)
    }

    /// Waits until it exits, [`DEADLINE`] at most: its exit status.
    pub fn wait(self) -> std::process::ExitStatus {
        self.output().status
    }

    /// Kills it (SIGKILL, it and whatever it started) and reaps it: its output.
    pub fn kill_now(mut self) -> Output {
        self.kill_group();
        self.output_within(Duration::from_secs(60))
    }
}

impl std::ops::Deref for Proc {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.child
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.child
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Runs `cmd` to its end, [`DEADLINE`] at most (then kills it and fails the test with what it
/// wrote so far): its status and output.
pub fn output(cmd: &mut Command) -> Output {
    output_within(cmd, DEADLINE)
}

/// Runs `cmd` to its end, `limit` at most (then kills it and fails the test with what it wrote
/// so far).
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    spawn(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .output_within(limit)
}

/// A [`Command`] run from a test with a deadline: the waits of `std` have none.
pub trait Timed {
    /// `output()`, [`DEADLINE`] at most (then it is killed and the test fails with what it
    /// wrote so far).
    fn timed_output(&mut self) -> Output;
    /// `status()` the same way (its output captured, to show should it hang).
    fn timed_status(&mut self) -> std::process::ExitStatus;
    /// `spawn()` as a [`Proc`]: killed if the test drops it, waited for with a deadline.
    fn spawn_guarded(&mut self) -> Proc;
}

impl Timed for Command {
    fn timed_output(&mut self) -> Output {
        output(self)
    }
    fn timed_status(&mut self) -> std::process::ExitStatus {
        output(self).status
    }
    fn spawn_guarded(&mut self) -> Proc {
        spawn(self)
    }
}

/// Runs `cmd` to its end ([`DEADLINE`] at most) and fails the test unless it succeeds.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "mvlab failed ({:?}): {}\n{}",
        cmd,
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

/// `mvlab --db DB run CONFIG`, to add arguments to.
pub fn run_of(db: &Path, config: &Path) -> Command {
    let mut c = mvlab();
    c.arg("--db").arg(db).arg("run").arg(config);
    c
}

/// `mvlab --db DB run CONFIG` in the background, stdout discarded, stderr kept (it says why, if
/// the test fails); killed if dropped before it was waited for.
pub fn spawn_run(db: &Path, config: &Path) -> Proc {
    spawn(
        run_of(db, config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )
}

/// A PostgreSQL server of the tests' own: a fresh cluster in a temp folder, on 127.0.0.1 and a
/// free port, stopped and removed on drop. Under CI a missing server is a failure; elsewhere
/// the caller skips (None) with a note.
pub struct Postgres {
    pub url: String,
    dir: PathBuf,
    bin: PathBuf,
    /// The server's options (`pg_ctl -o`), to start it again.
    options: String,
}

fn as_postgres(bin: &Path, tool: &str) -> Command {
    let root = String::from_utf8_lossy(
        &output_within(Command::new("id").arg("-u"), Duration::from_secs(30)).stdout,
    )
    .trim()
        == "0";
    if root {
        // The server refuses to run as root.
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
    }
}

pub fn postgres() -> Option<Postgres> {
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|rd| {
            let mut v: Vec<PathBuf> = rd
                .filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect();
            v.sort();
            v.pop()
        })
        .filter(|b| b.join("pg_ctl").exists());
    let Some(bin) = bin else {
        unavailable("PostgreSQL server", "Debian: apt-get install postgresql");
        return None;
    };
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "mvlab-pg-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let _ = Command::new("chown").arg("postgres").arg(&dir).status();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ok = |c: &mut Command, what: &str| {
        let out = output_within(c, Duration::from_secs(180));
        assert!(
            out.status.success(),
            "{what}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let data = dir.join("data");
    let options = format!(
        "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off -c max_connections=200",
        dir.display()
    );
    ok(
        as_postgres(&bin, "initdb").arg("-D").arg(&data).args([
            "-A",
            "trust",
            "--no-sync",
            "-U",
            "mv",
        ]),
        "initdb",
    );
    ok(
        as_postgres(&bin, "pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-w", "-l"])
            .arg(dir.join("log"))
            .arg("-o")
            .arg(&options)
            .arg("start"),
        "pg_ctl start",
    );
    ok(
        as_postgres(&bin, "createdb").args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "mv",
            "mvlab",
        ]),
        "createdb",
    );
    Some(Postgres {
        url: format!("postgres://mv@127.0.0.1:{port}/mvlab"),
        dir,
        bin,
        options,
    })
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // A server a failed test left frozen takes the stop once it runs again.
        if let Some(pids) = self.processes() {
            signal(&pids, "CONT");
        }
        // pg_ctl waits 60 s at most (-t).
        let _ = as_postgres(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-t", "60", "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A real S3-compatible server of the tests' own on 127.0.0.1 and a free port, stopped on drop:
/// moto (PyPI's `moto[server]`, objects in memory) or, where a test restarts the server,
/// s3rver (npm's `s3rver`, objects in a folder, so they outlive a restart). Under CI a missing
/// server is a failure.
pub struct S3 {
    pub endpoint: String,
    port: u16,
    child: std::process::Child,
    /// s3rver's objects folder (and the bucket it creates at start).
    disk: Option<(tempfile::TempDir, String)>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str) {
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed().as_secs() < 30, "{what} did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// What a test needs is not on this machine: under CI (`CI` set) the test fails, saying what
/// is missing and how to get it; elsewhere the caller skips, with a note saying so.
pub fn unavailable(what: &str, install: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{what} is missing ({install})"
    );
    eprintln!("skipping: no {what} ({install})");
}

fn missing(what: &str, install: &str) -> Option<S3> {
    unavailable(what, install);
    None
}

pub fn s3() -> Option<S3> {
    let port = free_port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(child) = child else {
        return missing("moto_server", "pip install 'moto[server]'");
    };
    wait_for_port(port, "moto_server");
    Some(S3 {
        endpoint: format!("http://127.0.0.1:{port}"),
        port,
        child,
        disk: None,
    })
}

/// s3rver with bucket `bucket`, its objects in a folder of its own: it can be stopped and
/// started again with them.
pub fn s3_on_disk(bucket: &str) -> Option<S3> {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let Ok(child) = spawn_s3rver(dir.path(), port, bucket) else {
        return missing("s3rver", "npm install -g s3rver");
    };
    wait_for_port(port, "s3rver");
    Some(S3 {
        endpoint: format!("http://127.0.0.1:{port}"),
        port,
        child,
        disk: Some((dir, bucket.to_string())),
    })
}

fn spawn_s3rver(dir: &Path, port: u16, bucket: &str) -> std::io::Result<std::process::Child> {
    Command::new("s3rver")
        .arg("-d")
        .arg(dir)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "--silent"])
        .args(["--configure-bucket", bucket])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
}

impl S3 {
    /// A plain HTTP request to the server, as the test account (moto does not check the
    /// signature): (status, response).
    pub fn http(&self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        use std::io::{Read, Write};
        let host = self.endpoint.trim_start_matches("http://");
        let mut conn = std::net::TcpStream::connect(host).unwrap();
        write!(
            conn,
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\
             Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, \
             SignedHeaders=host, Signature=0\r\n\r\n",
            body.len()
        )
        .unwrap();
        conn.write_all(body).unwrap();
        let mut out = String::new();
        conn.read_to_string(&mut out).unwrap();
        let status = out
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, out)
    }

    /// The environment a process needs to use this server as its S3.
    pub fn env(&self, cmd: &mut Command) {
        cmd.env("AWS_ENDPOINT", &self.endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            // s3rver's account (it checks signatures; moto takes any).
            .env("AWS_ACCESS_KEY_ID", "S3RVER")
            .env("AWS_SECRET_ACCESS_KEY", "S3RVER")
            .env("AWS_REGION", "us-east-1");
    }
}

impl S3 {
    /// Kills the server (connections refused from then on), keeps it down for `down`, starts it
    /// again on the same port with the objects it had. s3rver only.
    pub fn outage(&mut self, down: std::time::Duration) {
        let (dir, bucket) = self.disk.as_ref().expect("an outage needs s3_on_disk");
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        std::thread::sleep(down);
        self.child = spawn_s3rver(dir.path(), self.port, bucket).unwrap();
        wait_for_port(self.port, "s3rver");
    }

    /// Where s3rver keeps the object at `url` (`s3://bucket/key`): its bytes, as stored.
    pub fn stored_object(&self, url: &str) -> PathBuf {
        let (dir, _) = self.disk.as_ref().expect("s3_on_disk");
        let key = url.strip_prefix("s3://").expect("an s3:// URL");
        dir.path().join(format!("{key}._S3rver_object"))
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kill -SIG` to each of `pids`.
fn signal(pids: &[u32], sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status();
}

impl Postgres {
    fn ctl(&self, args: &[&str]) {
        let mut c = as_postgres(&self.bin, "pg_ctl");
        c.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-w", "-t", "120", "-l"])
            .arg(self.dir.join("log"));
        let out = output_within(c.args(args), Duration::from_secs(180));
        assert!(
            out.status.success(),
            "pg_ctl {args:?}: {}\n--- server log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
        );
    }

    fn start(&self) {
        self.ctl(&["-o", &self.options, "start"]);
    }

    /// Stops the server politely (`pg_ctl -m fast stop`: connections dropped), keeps it down
    /// for `down`, starts it again.
    pub fn outage(&self, down: Duration) {
        self.ctl(&["-m", "fast", "stop"]);
        std::thread::sleep(down);
        self.start();
    }

    /// The server's processes, the postmaster first, then its children (backends, background
    /// workers); None when it is not running.
    fn processes(&self) -> Option<Vec<u32>> {
        let pid_file = std::fs::read_to_string(self.dir.join("data/postmaster.pid")).ok()?;
        let postmaster: u32 = pid_file.lines().next()?.trim().parse().ok()?;
        if !Path::new(&format!("/proc/{postmaster}")).exists() {
            return None;
        }
        let mut all = vec![postmaster];
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            // "pid (name) state ppid ...": the name may hold spaces and parentheses.
            let ppid = std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                });
            if ppid == Some(postmaster) {
                all.push(pid);
            }
        }
        Some(all)
    }

    fn port(&self) -> u16 {
        let after = self.url.rsplit_once(':').expect("a port").1;
        after.split('/').next().unwrap().parse().unwrap()
    }

    /// How many connections to the server hold requests it has not read: clients waiting for
    /// it (from /proc/net/tcp, connections not yet accepted included).
    pub fn waiting_clients(&self) -> usize {
        let port = format!(":{:04X}", self.port());
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        table
            .lines()
            .skip(1)
            .filter(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                // local address, remote address, state (01: established), tx_queue:rx_queue
                f.len() > 4
                    && f[1].ends_with(&port)
                    && f[3] == "01"
                    && f[4]
                        .split_once(':')
                        .is_some_and(|(_, rx)| u64::from_str_radix(rx, 16).unwrap_or(0) > 0)
            })
            .count()
    }

    /// Freezes the server: SIGSTOP to every one of its processes (the postmaster first, so it
    /// starts no new ones). Connections stay open and requests are taken in by the kernel,
    /// unanswered, until [`Postgres::thaw`].
    pub fn freeze(&self) {
        let pids = self.processes().expect("the server is running");
        signal(&pids, "STOP");
    }

    /// SIGCONT to every process of a frozen server.
    pub fn thaw(&self) {
        let pids = self.processes().expect("the server is there");
        signal(&pids, "CONT");
    }

    /// Crashes the server: SIGKILL to every one of its processes at once (what a power cut
    /// does; harsher than `pg_ctl -m immediate stop`, which lets the postmaster tell its
    /// children to quit), then starts it again (crash recovery). Done while it is frozen,
    /// nothing in flight is committed by the crash.
    pub fn crash_and_restart(&self) {
        let pids = self.processes().expect("the server is running");
        signal(&pids, "KILL");
        let start = Instant::now();
        while pids.iter().any(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                !s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
        }) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the server outlived SIGKILL"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The killed postmaster may linger as a zombie where nothing reaps orphans (pid 1 in a
        // container), and a new one would take its lock files' pid for a live server: the data
        // folder's and the socket's lock files are stale, as after a power cut.
        let _ = std::fs::remove_file(self.dir.join("data/postmaster.pid"));
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(".s.PGSQL.") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        self.start();
    }
}

/// Asserts that each of run `run`'s epochs 1 to `epochs` is recorded once (val accuracy, the
/// metric every epoch records), in order.
pub fn assert_epochs_once(reg: &mvlab::registry::Registry, run: i64, epochs: i64) {
    let seen: Vec<i64> = reg
        .epoch_series(run, mvlab::status::Metric::ValAccuracy)
        .unwrap()
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    assert_eq!(
        seen,
        (1..=epochs).collect::<Vec<_>>(),
        "run {run}: each epoch once"
    );
}
