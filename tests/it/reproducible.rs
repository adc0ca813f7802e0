//! The same config, seed, build and machine give the same run: every recorded metric but the
//! timings, and the checkpoint files byte for byte, also with other processes busy beside it.

use crate::common::{run_of, run_ok, tiny_config, tiny_dataset};
use mvlab::registry::Registry;
use mvlab::status::Metric;
use std::process::{Child, Command};

/// CPU-bound processes beside the run, one per core: the threads of the run get preempted
/// and rayon's work stealing splits the work differently.
struct Busy(Vec<Child>);

impl Busy {
    fn start() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Busy(
            (0..cores)
                .map(|_| {
                    Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .unwrap()
                })
                .collect(),
        )
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn recorded(reg: &Registry, id: i64) -> (Vec<(i64, i64, Metric, u64)>, Vec<(String, String)>) {
    let metrics = reg
        .metrics(id)
        .unwrap()
        .into_iter()
        .filter(|m| !matches!(m.metric, Metric::EpochSeconds | Metric::ImagesPerS))
        .map(|m| (m.step, m.epoch, m.metric, m.value.to_bits()))
        .collect();
    let mut checkpoints: Vec<(String, String)> = reg
        .checkpoints(id)
        .unwrap()
        .into_iter()
        .map(|c| (format!("{} epoch {}", c.kind, c.epoch), c.sha256))
        .collect();
    checkpoints.sort();
    (metrics, checkpoints)
}

#[test]
fn the_same_seed_gives_the_same_run_alone_and_beside_a_busy_machine() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 16, 40);
    let cfg = tiny_config(dir.path(), &root, 4, "");
    let db = dir.path().join("r.db");
    run_ok(&mut run_of(&db, &cfg));
    {
        let _busy = Busy::start();
        run_ok(&mut run_of(&db, &cfg));
    }
    // The same file as seed 1 of a seed group.
    run_ok(run_of(&db, &cfg).args(["--seeds", "2"]));
    let reg = Registry::open(&db).unwrap();
    let alone = recorded(&reg, 1);
    assert!(
        alone.0.len() > 4 * 4,
        "metrics of 4 epochs: {}",
        alone.0.len()
    );
    assert!(!alone.1.is_empty());
    for id in [2, 3] {
        let again = recorded(&reg, id);
        let first = alone.0.iter().zip(&again.0).find(|(a, b)| a != b);
        assert_eq!(first, None, "run {id}: the first metric that differs");
        assert_eq!(alone.0.len(), again.0.len(), "run {id}");
        assert_eq!(alone.1, again.1, "run {id}: checkpoint sha256");
    }
}
