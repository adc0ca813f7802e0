//! Evidence on real small trainings through the binary: seed groups summarised as mean ± std,
//! paired comparisons (a checkpoint with itself, a run with an early stage of the same recipe),
//! the gate's exit status, provenance and its warning. The statistics themselves (McNemar against
//! hand-computed binomial values, bootstrap coverage) are unit tests in `src/stats.rs`.

use crate::common::Timed;
use crate::common::*;
use serde_json::Value;
use std::path::Path;

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// 3 classes x 60 synthetic images, 45 of them val; 3-epoch runs of a few seconds.
fn setup(dir: &Path) -> std::path::PathBuf {
    let root = tiny_dataset(dir, 3, 60, 40);
    tiny_config(dir, &root, 3, "")
}

#[test]
fn a_seed_group_is_summarised_as_mean_and_std() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(dir.path());
    let db = dir.path().join("r.db");
    let out = run_ok(
        mvlab()
            .arg("--db")
            .arg(&db)
            .arg("run")
            .arg(&cfg)
            .args(["--seeds", "3"]),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("group g1"));
    let runs = json(&run_ok(
        mvlab().arg("--db").arg(&db).args(["runs", "--json"]),
    ));
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 3);
    let best: Vec<f64> = runs
        .iter()
        .map(|r| r["best_metric"].as_f64().unwrap())
        .collect();
    let mean = best.iter().sum::<f64>() / 3.0;
    let std = (best.iter().map(|b| (b - mean).powi(2)).sum::<f64>() / 2.0).sqrt();
    for r in runs {
        let g = &r["group"];
        assert_eq!(g["id"], 1, "{r}");
        assert_eq!(g["completed"], 3);
        assert!(
            (g["best_mean"].as_f64().unwrap() - mean).abs() < 1e-9,
            "{g}"
        );
        assert!((g["best_std"].as_f64().unwrap() - std).abs() < 1e-9, "{g}");
        assert!(g["final_mean"].as_f64().is_some());
    }
    // Seeds 1, 2, 3, all on the base seed's split.
    let mut seeds: Vec<String> = runs
        .iter()
        .map(|r| {
            let o: Vec<String> = serde_json::from_str(r["overrides"].as_str().unwrap()).unwrap();
            assert!(o.contains(&"data.split_seed=1".to_string()), "{o:?}");
            o[0].clone()
        })
        .collect();
    seeds.sort();
    assert_eq!(seeds, ["train.seed=1", "train.seed=2", "train.seed=3"]);
    // A group against itself: no difference, said as a two-sample test.
    let same = json(&run_ok(
        mvlab()
            .arg("--db")
            .arg(&db)
            .args(["compare", "g1", "g1", "--json"]),
    ));
    assert_eq!(same["test"]["kind"], "groups");
    assert_eq!(same["verdict"], "no_evidence");
    // A hyperparameter sweep is not a seed group; a group needs two seeds.
    let one = mvlab()
        .arg("--db")
        .arg(&db)
        .arg("run")
        .arg(&cfg)
        .args(["--seeds", "1"])
        .timed_output();
    assert!(!one.status.success());
}

#[test]
fn paired_comparisons_and_the_gate() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(dir.path());
    let db = dir.path().join("r.db");
    let m = || {
        let mut c = mvlab();
        c.arg("--db").arg(&db);
        c
    };
    // Run 1: the recipe; run 2: the same recipe stopped after its first epoch.
    run_ok(m().arg("run").arg(&cfg).args(["--set", "train.epochs=4"]));
    run_ok(m().arg("run").arg(&cfg).args(["--set", "train.epochs=1"]));
    let acc = |id: &str| {
        json(&run_ok(m().args(["eval", id, "--json"])))["accuracy"]
            .as_f64()
            .unwrap()
    };
    assert!(
        acc("1") - acc("2") > 0.15,
        "the early stage must be clearly worse"
    );

    let itself = json(&run_ok(m().args(["compare", "1", "1", "--json"])));
    let t = &itself["test"];
    assert_eq!(t["kind"], "paired");
    assert_eq!(t["p_value"].as_f64().unwrap(), 1.0);
    assert_eq!(t["flips"].as_array().unwrap().len(), 0);
    assert_eq!(itself["verdict"], "no_evidence");
    assert!(itself["summary"].as_str().unwrap().contains("no evidence"));

    let html = dir.path().join("flips.html");
    let early = json(&run_ok(
        m().args(["compare", "2", "1", "--json", "--html"])
            .arg(&html),
    ));
    let t = &early["test"];
    assert!(t["p_value"].as_f64().unwrap() < 0.05, "{early}");
    assert_eq!(early["verdict"], "b_better");
    assert!(
        early["summary"]
            .as_str()
            .unwrap()
            .starts_with("B is better: +")
    );
    let flips = t["flips"].as_array().unwrap();
    assert!(!flips.is_empty());
    assert_eq!(
        flips.len() as u64,
        t["only_a_right"].as_u64().unwrap() + t["only_b_right"].as_u64().unwrap()
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert_eq!(page.matches("data:image/png;base64,").count(), flips.len());

    // The gate: a one-epoch run against the better run 1 is refused with 3; the same recipe
    // as run 1 against run 1 passes.
    let refused = m()
        .arg("run")
        .arg(&cfg)
        .args(["--set", "train.epochs=1", "--gate", "1"])
        .timed_output();
    let text = String::from_utf8_lossy(&refused.stdout);
    assert_eq!(refused.status.code(), Some(3), "{text}");
    assert!(text.contains("B is worse"), "{text}");
    let passed = m()
        .arg("run")
        .arg(&cfg)
        .args(["--set", "train.epochs=4", "--gate", "1"])
        .timed_output();
    assert_eq!(
        passed.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&passed.stdout)
    );
    // A baseline that does not exist is refused before training.
    let missing = m()
        .arg("run")
        .arg(&cfg)
        .args(["--gate", "99"])
        .timed_output();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--gate: no run 99"));
    assert_eq!(
        json(&run_ok(m().args(["runs", "--json"])))
            .as_array()
            .unwrap()
            .len(),
        4
    );
}

#[test]
fn provenance_is_recorded_shown_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(dir.path());
    let db = dir.path().join("r.db");
    let m = || {
        let mut c = mvlab();
        c.arg("--db").arg(&db);
        c
    };
    run_ok(m().arg("run").arg(&cfg).args(["--set", "train.epochs=1"]));
    run_ok(m().arg("run").arg(&cfg).args([
        "--set",
        "train.epochs=1",
        "--set",
        "data.split_seed=9",
    ]));
    let shown = json(&run_ok(m().args(["show", "1", "--json"])));
    let p = &shown["provenance"];
    assert_eq!(p["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(p["seed"], 1);
    assert_eq!(p["dataset"]["files"], 180);
    assert!(p["split_sha256"].as_str().unwrap().len() == 64);
    let text = String::from_utf8_lossy(&run_ok(m().args(["show", "1"])).stdout).to_string();
    assert!(text.contains("dataset 180 files"), "{text}");
    // Another split: the comparison says so.
    let c = json(&run_ok(m().args(["compare", "1", "2", "--json"])));
    let warnings = c["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("splits differ")),
        "{c}"
    );
    let same = json(&run_ok(m().args(["compare", "1", "1", "--json"])));
    assert!(same["warnings"].as_array().unwrap().is_empty());
}

#[test]
fn samples_list_dynamics_and_rerun_verify_names_a_changed_image() {
    let dir = tempfile::tempdir().unwrap();
    let root = tiny_dataset(dir.path(), 3, 60, 40);
    let cfg = tiny_config(dir.path(), &root, 3, "");
    let db = dir.path().join("r.db");
    let m = || {
        let mut c = mvlab();
        c.arg("--db").arg(&db);
        c
    };
    run_ok(m().arg("run").arg(&cfg));
    // Per-image dynamics: 135 training images, 13 bytes each per epoch, 3 epochs.
    let dynamics = dir.path().join("r.runs/1/dynamics.bin");
    assert_eq!(
        std::fs::metadata(&dynamics).unwrap().len(),
        10 + 3 * (4 + 135 * 13)
    );
    let s = json(&run_ok(m().args(["samples", "1", "--top", "5", "--json"])));
    assert_eq!(s["images"], 135);
    assert_eq!(s["epochs"], 3);
    let suspects = s["suspects"].as_array().unwrap();
    assert_eq!(suspects.len(), 5);
    // Lowest confidence first, each with its file, its label and the label the model prefers.
    let conf: Vec<f64> = suspects
        .iter()
        .map(|x| x["confidence"].as_f64().unwrap())
        .collect();
    assert!(conf.windows(2).all(|w| w[0] <= w[1]), "{conf:?}");
    for x in suspects {
        assert!(Path::new(x["path"].as_str().unwrap()).is_file(), "{x}");
        for key in ["label", "preferred"] {
            let class = x[key].as_str().unwrap();
            assert!(["disc", "square", "triangle"].contains(&class), "{x}");
        }
    }
    let text = String::from_utf8_lossy(&run_ok(m().args(["samples", "1"])).stdout).to_string();
    assert!(
        text.contains("Likeliest mislabelled") && text.contains("model prefers"),
        "{text}"
    );

    // The first steps retrain to the same losses.
    let ok = run_ok(m().args(["rerun", "1", "--verify", "--steps", "4", "--json"]));
    let v = json(&ok);
    assert_eq!(v["passed"], true, "{v}");
    assert_eq!(v["steps"].as_array().unwrap().len(), 4);
    assert!(v["changed"].as_array().unwrap().is_empty(), "{v}");
    // By default the whole first epoch, bit for bit on the CPU.
    let v = json(&run_ok(m().args(["rerun", "1", "--verify", "--json"])));
    let epoch1 = mvlab::registry::Registry::open(&db)
        .unwrap()
        .metrics(1)
        .unwrap()
        .iter()
        .filter(|r| r.metric == mvlab::status::Metric::StepLoss && r.epoch == 1)
        .count();
    assert_eq!(
        (v["passed"].clone(), v["steps"].as_array().unwrap().len()),
        (true.into(), epoch1),
        "{v}"
    );
    assert!(epoch1 > 4);

    // The images of one class change: the losses differ and the files are named.
    let mut victims: Vec<_> = std::fs::read_dir(root.join("disc"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    victims.sort();
    for victim in &victims {
        let mut img = image::open(victim).unwrap().to_rgb8();
        for p in img.pixels_mut() {
            p.0 = [255 - p.0[0], 255 - p.0[1], 255 - p.0[2]];
        }
        img.save(victim).unwrap();
    }
    let out = m()
        .args(["rerun", "1", "--verify", "--steps", "20"])
        .timed_output();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("NOT reproduced: the losses differ"), "{text}");
    let name = victims[0].display().to_string();
    assert!(
        text.contains("the datasets differ")
            && text.contains(&format!("changed: {name}"))
            && text.contains("more changed"),
        "{text}"
    );
    let victim = &victims[0];
    // Samples refuse nothing here (the lists are the same), but a removed image changes the
    // lists, and the dynamics no longer match them.
    std::fs::remove_file(victim).unwrap();
    let out = m().args(["samples", "1"]).timed_output();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("lists changed"), "{err}");
}
