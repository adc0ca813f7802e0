//! Property tests over hostile input: random experiment files with random `--set` overrides,
//! random `[sweep]` sections, and random bytes as a registry, a checkpoint, an optimizer state
//! and a `state.json`. Whatever comes in: no panic, an error or a success, and nothing recorded
//! when refused. 10,000 cases per target by default; `MVLAB_PROPTEST_CASES` asks for more (or
//! fewer).

use mvlab::checkpoint::TrainState;
use mvlab::config::TrainSection;
use mvlab::model::ModelConfig;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::path::Path;

fn cases() -> u32 {
    std::env::var("MVLAB_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

/// Keys of every section, a few misspelled, and some that do not exist.
const KEYS: &[&str] = &[
    "model.flavour",
    "model.variant",
    "model.dropout",
    "model.pretrained",
    "data.root",
    "data.image_size",
    "data.resize_bigger",
    "data.val_fraction",
    "data.workers",
    "data.prefetch",
    "data.cache_mb",
    "data.augment",
    "data.max_per_class",
    "train.epochs",
    "train.batch_size",
    "train.optimizer",
    "train.lr",
    "train.adam_eps",
    "train.weight_decay",
    "train.schedule",
    "train.warmup_epochs",
    "train.min_lr",
    "train.step_epochs",
    "train.gamma",
    "train.grad_clip_norm",
    "train.bn_recalibrate",
    "train.ema_decay",
    "train.label_smoothing",
    "train.seed",
    "train.device",
    "train.patience",
    "checkpoint.monitor",
    "checkpoint.mode",
    "train.lr.x",
    "train..lr",
    "trian.lr",
    "name",
    "description",
];

/// Values as TOML text: numbers of every kind (huge, negative, NaN, infinite), strings, booleans,
/// arrays, tables, and junk.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        (0i64..5000).prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| format!("{v:?}")),
        (-1.0f64..2.0).prop_map(|v| format!("{v:?}")),
        Just("nan".to_string()),
        Just("inf".to_string()),
        Just("-inf".to_string()),
        any::<bool>().prop_map(|v| v.to_string()),
        "[a-z_:0-9]{0,12}".prop_map(|v| format!("\"{v}\"")),
        prop::sample::select(vec![
            "\"keras\"",
            "\"paper\"",
            "\"xxs\"",
            "\"s\"",
            "\"adamw\"",
            "\"cosine\"",
            "\"cpu\"",
            "\"cuda:x\"",
            "\"val_loss\"",
            "\"min\"",
            "[]",
            "[1, 2]",
            "{}",
            "{ a = 1 }",
        ])
        .prop_map(String::from),
        "[^\n]{0,8}",
    ]
}

/// An experiment file: a name, a data root, then random keys in their sections, sometimes a
/// broken line.
fn experiment() -> impl Strategy<Value = String> {
    (
        prop::collection::vec((prop::sample::select(KEYS.to_vec()), value()), 0..8),
        prop::option::of("[^\n]{0,20}"),
    )
        .prop_map(|(entries, junk)| {
            let mut text = String::from("name = \"p\"\n[data]\nroot = \"d\"\n");
            for (key, v) in entries {
                match key.split_once('.') {
                    Some((section, rest)) => text += &format!("[{section}]\n{rest} = {v}\n"),
                    None => text += &format!("{key} = {v}\n"),
                }
            }
            if let Some(j) = junk {
                text += &j;
                text += "\n";
            }
            text
        })
}

fn overrides() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        (prop::sample::select(KEYS.to_vec()), value(), any::<bool>()).prop_map(|(k, v, eq)| {
            if eq {
                format!("{k}={v}")
            } else {
                format!("{k}{v}")
            }
        }),
        0..4,
    )
}

#[test]
fn random_experiment_files_and_overrides_parse_or_are_refused() {
    runner(cases())
        .run(&(experiment(), overrides()), |(text, sets)| {
            if let Err(e) = mvlab::config::parse(&text, &sets) {
                // Every refusal says something: a line, a field or the --set at fault.
                let msg = format!("{e:#}");
                prop_assert!(!msg.is_empty());
            }
            Ok(())
        })
        .unwrap();
}

/// A `[sweep]` section of random parameters, distributions and bounds.
fn sweep() -> impl Strategy<Value = String> {
    let space = prop_oneof![
        prop::collection::vec(value(), 0..5).prop_map(|v| format!("[{}]", v.join(", "))),
        (
            prop::sample::select(vec![
                "uniform",
                "log_uniform",
                "int_uniform",
                "choice",
                "normal",
            ]),
            value(),
            value(),
        )
            .prop_map(|(d, a, b)| format!(
                "{{ distribution = \"{d}\", min = {a}, max = {b}, values = [{a}] }}"
            )),
    ];
    (
        prop::sample::select(vec!["grid", "random", "bayes"]),
        0usize..50,
        prop::sample::select(vec!["none", "median", "halving"]),
        0usize..6,
        prop::collection::vec((prop::sample::select(KEYS.to_vec()), space), 0..4),
    )
        .prop_map(|(method, samples, prune, eta, params)| {
            let mut text = format!(
                "name = \"s\"\n[data]\nroot = \"d\"\n[sweep]\nmethod = \"{method}\"\nsamples = {samples}\nprune = \"{prune}\"\neta = {eta}\n[sweep.parameters]\n"
            );
            for (k, s) in params {
                text += &format!("\"{k}\" = {s}\n");
            }
            text
        })
}

#[test]
fn random_sweep_sections_expand_or_are_refused() {
    runner(cases())
        .run(&sweep(), |text| {
            if let Ok(config) = mvlab::config::parse(&text, &[])
                && let Some(section) = config.sweep
                && let Ok(trials) = mvlab::sweep::expand(&text, &section)
            {
                // What expands is what gets queued: each trial is a valid config.
                for t in trials {
                    prop_assert!(mvlab::config::parse(&text, &t).is_ok());
                }
            }
            Ok(())
        })
        .unwrap();
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2048),
        // The start of a real format, then noise.
        prop::collection::vec(any::<u8>(), 0..512).prop_map(|mut v| {
            let mut head = b"SQLite format 3\0".to_vec();
            head.append(&mut v);
            head
        }),
        prop::collection::vec(any::<u8>(), 0..512).prop_map(|mut v| {
            let mut head = b"{\"epochs_done\": 3, \"global_step\": ".to_vec();
            head.append(&mut v);
            head
        }),
    ]
}

/// Writes `b` to a fresh file in `dir` (each case its own, so SQLite keeps no state across).
fn file(dir: &Path, n: &std::cell::Cell<usize>, b: &[u8]) -> std::path::PathBuf {
    n.set(n.get() + 1);
    let path = dir.join(format!("case-{}", n.get()));
    std::fs::write(&path, b).unwrap();
    path
}

#[test]
fn random_bytes_as_a_registry_state_checkpoint_or_optimizer_are_refused_or_read() {
    let dir = tempfile::tempdir().unwrap();
    let n = std::cell::Cell::new(0);
    let flex = burn::tensor::Device::flex();
    let model = ModelConfig {
        flavour: mvlab::config::Flavour::Paper,
        variant: mvlab::config::Variant::Xxs,
        num_classes: 3,
        image_size: 32,
        dropout: 0.0,
    }
    .init(&flex.clone().autodiff());
    let t = TrainSection::default();
    // A refusal names the file it refuses.
    fn refused_naming<T>(
        r: anyhow::Result<T>,
        path: &Path,
        what: &str,
    ) -> Result<(), TestCaseError> {
        if let Err(e) = r {
            let msg = format!("{e:#}");
            prop_assert!(
                msg.contains(&path.display().to_string()),
                "{} refused without naming the file: {}",
                what,
                msg
            );
        }
        Ok(())
    }
    runner(cases())
        .run(&bytes(), |b| {
            let state = file(dir.path(), &n, &b);
            // Read as a state.json: refused naming the file, or read as the bytes say.
            let read = mvlab::checkpoint::read_json::<TrainState>(&state);
            if let Ok(s) = &read {
                let said: serde_json::Value = serde_json::from_slice(&b).unwrap();
                prop_assert_eq!(Some(s.epochs_done as u64), said["epochs_done"].as_u64());
            }
            refused_naming(read, &state, "a state")?;
            // As weights, as an optimizer state: refused naming the file, or read.
            let loaded = mvlab::checkpoint::load_weights(model.clone(), &state);
            refused_naming(loaded, &state, "weights")?;
            let optim = mvlab::train::optim::Optim::Burn(mvlab::train::optim::optimizer(&t, &flex));
            refused_naming(
                optim.load(&state, &model, &flex).map(|_| ()),
                &state,
                "an optimizer state",
            )?;
            std::fs::remove_file(&state).ok();
            Ok(())
        })
        .unwrap();
    // Registries are slower to open: a share of the cases, each a file of its own.
    runner(cases() / 10)
        .run(&bytes(), |b| {
            let path = file(dir.path(), &n, &b);
            match mvlab::registry::Registry::open(&path) {
                // Read as a registry, it holds no runs it did not have.
                Ok(reg) => {
                    let runs = reg.runs();
                    prop_assert!(runs.is_ok(), "opened, then unreadable: {:?}", runs.err());
                    prop_assert_eq!(runs.unwrap().len(), 0);
                }
                Err(e) => refused_naming::<()>(Err(e), &path, "a registry")?,
            }
            for suffix in ["", "-wal", "-shm"] {
                std::fs::remove_file(format!("{}{suffix}", path.display())).ok();
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn refused_experiments_record_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = crate::common::tiny_dataset(dir.path(), 2, 4, 32);
    let reg = mvlab::registry::Registry::open(&dir.path().join("r.db")).unwrap();
    let exp = dir.path().join("e.toml");
    runner(cases() / 20)
        .run(&(experiment(), overrides()), |(text, sets)| {
            let text = text.replace("root = \"d\"", &format!("root = \"{}\"", root.display()));
            std::fs::write(&exp, &text).unwrap();
            let before = reg.runs().unwrap().len();
            let created = mvlab::config::load(&exp, &sets).and_then(|loaded| {
                mvlab::jobs::create_run(&reg, &loaded, mvlab::status::RunStatus::Queued, None)
            });
            let after = reg.runs().unwrap().len();
            prop_assert_eq!(after, before + usize::from(created.is_ok()));
            Ok(())
        })
        .unwrap();
}
