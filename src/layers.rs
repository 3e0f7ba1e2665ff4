//! Keeps the module map in `lib.rs` true: reads every source file, collects the `crate::…`
//! modules it names, and checks the layering.
//!
//! - Nothing below `http` names `http`: only `app` (which serves it) and `cli` may.
//! - `http` reaches data only through the domain: it never names `store`.
//! - `store` names only what it stands on (`config`, `tls`): no domain type, no HTTP.
//! - `state` names only the parts it holds, never a layer that reads it.
//! - The graph of top-level modules has no cycle, counting the domain layer (`domain`,
//!   `sessions`, `attempts`) as one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The modules that make up the domain layer, counted as one in the cycle check.
const DOMAIN_LAYER: &[&str] = &["domain", "sessions", "attempts"];

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The top-level module a file belongs to: `http/users.rs` → `http`, `app.rs` → `app`.
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next().unwrap().as_os_str();
    let first = first.to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// The top-level modules `text` names through `crate::`, in paths and in `use crate::{…}`
/// groups; comment lines are skipped.
fn named_modules(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut names = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = code[at + "crate::".len()..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level items of the group: split at commas outside nested braces.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        names.insert(ident(item.trim()));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            names.insert(ident(item.trim()));
        } else {
            names.insert(ident(rest));
        }
    }
    names.retain(|n| !n.is_empty() && n != "self");
    names
}

/// `module → modules it names`, over every file of `src/`.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in sources(&src) {
        if file.ends_with("layers.rs") {
            continue;
        }
        let module = module_of(&src, &file);
        let text = std::fs::read_to_string(&file).unwrap();
        let named = named_modules(&text);
        graph
            .entry(module.clone())
            .or_default()
            .extend(named.into_iter().filter(|n| *n != module));
    }
    graph
}

fn names(graph: &BTreeMap<String, BTreeSet<String>>, module: &str) -> BTreeSet<String> {
    graph.get(module).cloned().unwrap_or_default()
}

/// A cycle of `graph`, if it has one.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut found = path[at..].to_vec();
            found.push(node.to_owned());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn groups_and_paths_are_read() {
    let text = "use crate::{domain, feed::{self, Change}, store};\n\
                // crate::http is only mentioned here\n\
                let x = crate::tokens::verify(crate::config::X);";
    let found: Vec<String> = named_modules(text).into_iter().collect();
    assert_eq!(found, ["config", "domain", "feed", "store", "tokens"]);
}

#[test]
fn cycles_are_found() {
    let mut g = BTreeMap::new();
    g.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    g.insert("b".to_owned(), BTreeSet::from(["c".to_owned()]));
    assert_eq!(cycle(&g), None);
    g.insert("c".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert!(cycle(&g).is_some());
}

#[test]
fn nothing_below_http_names_http() {
    let graph = graph();
    let offenders: Vec<&String> = graph
        .iter()
        .filter(|(m, named)| named.contains("http") && !["app", "cli"].contains(&m.as_str()))
        .map(|(m, _)| m)
        .collect();
    assert!(offenders.is_empty(), "{offenders:?} name crate::http");
}

#[test]
fn http_reaches_data_only_through_the_domain() {
    let named = names(&graph(), "http");
    for below in ["store", "app"] {
        assert!(!named.contains(below), "http names crate::{below}");
    }
}

#[test]
fn the_store_knows_only_what_it_stands_on() {
    let named = names(&graph(), "store");
    let allowed = BTreeSet::from(["config".to_owned(), "tls".to_owned()]);
    assert!(named.is_subset(&allowed), "store names {named:?}");
}

#[test]
fn the_state_names_no_layer_that_reads_it() {
    let named = names(&graph(), "state");
    for above in [
        "app",
        "cli",
        "http",
        "domain",
        "sessions",
        "attempts",
        "feed",
        "retention",
    ] {
        assert!(!named.contains(above), "state names crate::{above}");
    }
}

#[test]
fn the_module_graph_has_no_cycle() {
    let layer = |m: &str| {
        if DOMAIN_LAYER.contains(&m) {
            "domain".to_owned()
        } else {
            m.to_owned()
        }
    };
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, named) in self::graph() {
        let node = layer(&module);
        let edges = graph.entry(node.clone()).or_default();
        edges.extend(named.iter().map(|n| layer(n)).filter(|n| *n != node));
    }
    assert_eq!(cycle(&graph), None, "the module graph: {graph:#?}");
}
