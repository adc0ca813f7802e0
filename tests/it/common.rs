//! Shared helpers for the integration tests: a tiny real dataset and configs that point at it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Held by tests that seed the CPU backend's generator and draw from it: the generator is one
/// per process, and the tests of this binary run in parallel.
pub fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

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

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run mvlab");
    assert!(
        out.status.success(),
        "mvlab failed: {}\n{}",
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

/// `mvlab --db DB run CONFIG` in the background, output discarded.
pub fn spawn_run(db: &Path, config: &Path) -> std::process::Child {
    run_of(db, config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
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
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
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
        assert!(
            std::env::var_os("CI").is_none(),
            "PostgreSQL server binaries are missing (Debian: apt-get install postgresql)"
        );
        eprintln!("skipping: no PostgreSQL server installed (Debian: apt-get install postgresql)");
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
        let out = c.output().unwrap();
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
        let _ = as_postgres(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
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

fn missing(what: &str, install: &str) -> Option<S3> {
    assert!(
        std::env::var_os("CI").is_none(),
        "{what} is missing ({install})"
    );
    eprintln!("skipping: no {what} ({install})");
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

impl Postgres {
    /// Stops the server (connections dropped), keeps it down for `down`, starts it again.
    pub fn outage(&self, down: std::time::Duration) {
        let ctl = |args: &[&str]| {
            let mut c = as_postgres(&self.bin, "pg_ctl");
            c.arg("-D")
                .arg(self.dir.join("data"))
                .args(["-w", "-l"])
                .arg(self.dir.join("log"));
            let out = c.args(args).output().unwrap();
            assert!(
                out.status.success(),
                "pg_ctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ctl(&["-m", "fast", "stop"]);
        std::thread::sleep(down);
        ctl(&["-o", &self.options, "start"]);
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
