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

/// A real S3-compatible server of the tests' own (moto, from PyPI's `moto[server]`) on
/// 127.0.0.1 and a free port, stopped on drop. Under CI a missing server is a failure.
pub struct S3 {
    pub endpoint: String,
    child: std::process::Child,
}

pub fn s3() -> Option<S3> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(child) = child else {
        assert!(
            std::env::var_os("CI").is_none(),
            "moto_server is missing (pip install 'moto[server]')"
        );
        eprintln!("skipping: no moto_server (pip install 'moto[server]')");
        return None;
    };
    let server = S3 {
        endpoint: format!("http://127.0.0.1:{port}"),
        child,
    };
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed().as_secs() < 30, "moto_server did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Some(server)
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
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1");
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
