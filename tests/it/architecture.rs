//! The module graph stays a graph without cycles: read from the sources' `crate::` and `super::`
//! paths, at the crate's top level and inside `tui` and `cli`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// module -> modules it names through one of `prefixes` (`crate::` at the top; `super::` and
/// `crate::<folder>::` inside a folder module), for the modules directly under `dir` (files and
/// folders).
fn graph(dir: &Path, prefixes: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = Vec::new();
    collect(dir, &mut files);
    for file in files {
        let rel = file.strip_prefix(dir).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" || module == "mod" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let uses = g.entry(module.clone()).or_default();
        for prefix in prefixes {
            for (i, _) in text.match_indices(prefix) {
                let name: String = text[i + prefix.len()..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    uses.insert(name);
                }
            }
        }
    }
    let modules: BTreeSet<String> = g.keys().cloned().collect();
    for uses in g.values_mut() {
        uses.retain(|u| modules.contains(u));
    }
    g
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// A cycle through the graph, if there is one.
fn cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut c = path[i..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|n| visit(n, g, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_imports_upward() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let top = graph(&src, &["crate::"]);
    assert!(
        top.contains_key("train") && top["jobs"].contains("sweep"),
        "{top:?}"
    );
    assert_eq!(cycle(&top), None, "{top:#?}");
    for leaf in ["fmt", "status"] {
        assert!(top[leaf].is_empty(), "{leaf} is a leaf: {:?}", top[leaf]);
    }
    for low in ["registry", "config", "model", "data"] {
        for high in ["cli", "tui", "jobs", "train", "eval", "sweep"] {
            assert!(!top[low].contains(high), "{low} names {high}");
        }
    }
    for low in ["artifacts", "registry"] {
        assert!(!top[low].contains("checkpoint"), "{low} names checkpoint");
    }
    let inner = |name: &str| {
        let crate_path = format!("crate::{name}::");
        graph(&src.join(name), &["super::", &crate_path])
    };
    for name in ["tui", "cli"] {
        let g = inner(name);
        assert_eq!(cycle(&g), None, "{name}: {g:#?}");
    }
    let tui = inner("tui");
    assert!(
        tui["views"].contains("state") && !tui["views"].contains("app"),
        "views read the shared state, not the app: {tui:?}"
    );
    for upper in ["effects", "ui"] {
        assert!(!tui["app"].contains(upper), "app names {upper}: {tui:?}");
        assert!(!tui["views"].contains(upper), "views name {upper}: {tui:?}");
    }
    assert!(!tui["ui"].contains("effects"), "{tui:?}");
    assert!(
        !tui["effects"].contains("views") && !tui["effects"].contains("ui"),
        "effects do work, not drawing: {tui:?}"
    );
}
