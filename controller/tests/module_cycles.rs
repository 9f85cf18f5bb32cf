//! No import cycle between the modules of fleet-controller, fleet-proto and fleet-agent. A
//! cycle means two modules cannot be understood, tested or moved apart (the controller's
//! `rollout ⇄ converge ⇄ apps` was one; `desired` and the leaf `rollout::record` broke it),
//! and this test keeps new ones from creeping in.
//!
//! The graph is read from the source: each file is a module (`src/a/b.rs` is `a::b`), and
//! every `crate::…` path in its production code (`use`, grouped `use crate::{a, b::c}`, or
//! inline) is an edge to the longest module the path starts with. Comments and
//! `#[cfg(test)]` items are skipped. Relative paths (`super::`, a child by name) stay within
//! one folder and are not read; between folders the code uses `crate::` paths. Binaries
//! (`src/bin/`, `main.rs`) are crates of their own and not read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The one module allowed in cycles: the controller's state hub (`Shared`, in
/// `controller/src/shared.rs`) holds every part's state and is handed to all of them, so it
/// both names them and is named by them. It is taken out of the graph before the search.
const HUBS: &[&str] = &["shared"];

/// Cycles known and being broken elsewhere, allowed exactly as listed (a cycle with one more
/// member fails). None left: the agent's `units ⇄ logrotate` went through
/// `agent/src/host_paths.rs`.
const ALLOWED: &[(&str, &[&str])] = &[];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The production code of a file: `//` comments (doc comments too) removed, and every
/// item under `#[cfg(test)]` left out (tests may borrow each other's helpers; that shapes
/// no module).
fn production_code(text: &str) -> String {
    let mut out = Vec::new();
    let mut lines = text
        .lines()
        .map(|l| l.split_once("//").map_or(l, |(code, _)| code));
    while let Some(line) = lines.next() {
        if line.trim() != "#[cfg(test)]" {
            out.push(line);
            continue;
        }
        // Skip the item: up to its `;`, or to where its braces close.
        let mut depth = 0i32;
        for line in lines.by_ref() {
            depth += line.matches('{').count() as i32 - line.matches('}').count() as i32;
            let t = line.trim();
            if depth <= 0 && (t.ends_with(';') || t.ends_with('}')) {
                break;
            }
        }
    }
    out.join("\n")
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Reads a use tree at the start of `s` (`a::b`, `a::{b, c::{d, self}}`, `a::*`) and
/// appends every path it names, each after `prefix`.
fn use_tree(s: &str, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix.to_vec();
    let mut i = 0;
    loop {
        let rest = &s[i..];
        if rest.starts_with('{') {
            i += 1;
            loop {
                i += s[i..].len() - s[i..].trim_start().len();
                if s[i..].starts_with('}') {
                    return i + 1;
                }
                i += use_tree(&s[i..], &path, out);
                i += s[i..].len() - s[i..].trim_start().len();
                match s[i..].chars().next() {
                    Some(',') => i += 1,
                    Some('}') => return i + 1,
                    _ => return i,
                }
            }
        }
        let len = rest.find(|c| !is_ident_char(c)).unwrap_or(rest.len());
        if len == 0 {
            // `*` or the end of the path: it names what came before.
            if rest.starts_with('*') {
                i += 1;
            }
            break;
        }
        let ident = &rest[..len];
        i += len;
        if ident != "self" {
            path.push(ident.to_owned());
        }
        if s[i..].starts_with("::") {
            i += 2;
        } else {
            break;
        }
    }
    if !path.is_empty() {
        out.push(path);
    }
    i
}

/// Every path `code` names through `crate::`, as its segments after `crate`.
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = code[from..].find("crate::") {
        let start = from + i;
        from = start + "crate::".len();
        let before = code[..start].chars().next_back();
        if before.is_some_and(|c| is_ident_char(c) || c == '$') {
            continue;
        }
        from += use_tree(&code[from..], &[], &mut out);
    }
    out
}

/// A file's module path: `src/a/b.rs` and `src/a/b/mod.rs` are `a::b`; `None` for the
/// crate roots and binaries, and for files that are not modules (`include!`d code).
fn module_of(rel: &Path) -> Option<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    let root = matches!(parts.as_slice(), [one] if one == "lib" || one == "main");
    let ok = !parts.is_empty()
        && parts[0] != "bin"
        && !root
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(is_ident_char));
    ok.then(|| parts.join("::"))
}

/// Module → the other modules its file names through `crate::` paths. A path names the
/// longest module it starts with (`crate::rollout::record::Phase` names `rollout::record`),
/// so a leaf module inside a folder (like `rollout::record`) is a node of its own.
fn module_graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut code = BTreeMap::new();
    for file in files {
        let module = module_of(file.strip_prefix(src).unwrap());
        // `x/tests.rs` is a `#[cfg(test)] mod tests;` of `x`.
        if let Some(module) = module.filter(|m| m != "tests" && !m.ends_with("::tests")) {
            code.insert(
                module,
                production_code(&std::fs::read_to_string(&file).unwrap()),
            );
        }
    }
    let mut graph: Graph = code.keys().map(|m| (m.clone(), BTreeSet::new())).collect();
    for (module, text) in &code {
        for path in crate_paths(text) {
            let target = (1..=path.len())
                .rev()
                .map(|n| path[..n].join("::"))
                .find(|m| code.contains_key(m));
            if let Some(target) = target.filter(|t| t != module) {
                graph.get_mut(module).unwrap().insert(target);
            }
        }
    }
    graph
}

/// Strongly connected components with more than one member (Tarjan), each sorted.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct Search<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<Vec<String>>,
    }
    impl<'g> Search<'g> {
        fn visit(&mut self, v: &'g str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                loop {
                    let w = self.stack.pop().unwrap();
                    self.on_stack.remove(w);
                    component.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut s = Search {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            s.visit(v);
        }
    }
    s.found.sort();
    s.found
}

/// The graph without the hubs, neither as nodes nor as edge targets.
fn without_hubs(mut graph: Graph) -> Graph {
    graph.retain(|m, _| !HUBS.contains(&m.as_str()));
    for deps in graph.values_mut() {
        deps.retain(|d| !HUBS.contains(&d.as_str()));
    }
    graph
}

/// Which edges make up a component, for the failure message.
fn describe(graph: &Graph, component: &[String]) -> String {
    let mut edges = Vec::new();
    for m in component {
        for d in &graph[m] {
            if component.contains(d) {
                edges.push(format!("{m} → {d}"));
            }
        }
    }
    edges.join(", ")
}

fn check(krate: &str, dir: &str) {
    let src = workspace().join(dir).join("src");
    let graph = without_hubs(module_graph(&src));
    assert!(
        graph.len() > 5,
        "{krate}: found only {} modules under {}: is the path right?",
        graph.len(),
        src.display()
    );
    let bad: Vec<String> = cycles(&graph)
        .into_iter()
        .filter(|c| {
            !ALLOWED
                .iter()
                .any(|(k, members)| *k == krate && members.iter().eq(c.iter()))
        })
        .map(|c| format!("{{{}}}: {}", c.join(", "), describe(&graph, &c)))
        .collect();
    assert!(
        bad.is_empty(),
        "{krate} has module import cycles (move what both sides need into a module below \
         them, as controller/src/desired.rs does for rollout, converge and apps):\n  {}",
        bad.join("\n  ")
    );
}

#[test]
fn controller_modules_import_no_cycle() {
    check("fleet-controller", "controller");
}

#[test]
fn proto_modules_import_no_cycle() {
    check("fleet-proto", "proto");
}

#[test]
fn agent_modules_import_no_cycle() {
    check("fleet-agent", "agent");
}

fn graph_of(edges: &[(&str, &str)]) -> Graph {
    let mut g = Graph::new();
    for (a, b) in edges {
        g.entry(a.to_string()).or_default().insert(b.to_string());
        g.entry(b.to_string()).or_default();
    }
    g
}

#[test]
fn cycle_finder_finds_planted_cycles_and_nothing_else() {
    // a → b → c → a is one cycle, d ⇄ e another; f only imports, g only is imported.
    let g = graph_of(&[
        ("a", "b"),
        ("b", "c"),
        ("c", "a"),
        ("c", "d"),
        ("d", "e"),
        ("e", "d"),
        ("f", "a"),
        ("e", "g"),
    ]);
    assert_eq!(
        cycles(&g),
        [vec!["a", "b", "c"], vec!["d", "e"]]
            .map(|c| c.into_iter().map(String::from).collect::<Vec<_>>())
    );
    assert!(cycles(&graph_of(&[("a", "b"), ("b", "c"), ("a", "c")])).is_empty());
    // Through the hub it is no cycle; around it, it still is.
    let hubbed = graph_of(&[("a", "shared"), ("shared", "a"), ("a", "b"), ("b", "a")]);
    assert_eq!(cycles(&without_hubs(hubbed)), [vec!["a", "b"]]);
    assert!(cycles(&without_hubs(graph_of(&[("a", "shared"), ("shared", "a")]))).is_empty());
}

#[test]
fn crate_paths_are_read_from_uses_groups_and_inline_paths_but_not_comments_or_tests() {
    let code = production_code(
        "use crate::store::Store;\n\
         use crate::{apps, rollout::{record::Record, plan}, desired::Gate};\n\
         let x = crate::webhook::notify(&s);\n\
         // crate::converge is only mentioned here\n\
         /// and [`crate::metrics`] in a doc comment\n\
         macro_rules! m { () => { $crate::inner } }\n\
         let y = fleet_crate::not_ours;\n\
         #[cfg(test)]\n\
         mod tests {\n\
             use crate::plan::tests::names;\n\
             fn f() { if true { crate::plan::x() } }\n\
         }\n\
         #[cfg(test)]\n\
         use crate::testing::helper;\n\
         use crate::after::Tests;\n",
    );
    let paths: Vec<String> = crate_paths(&code).iter().map(|p| p.join("::")).collect();
    assert_eq!(
        paths,
        [
            "store::Store",
            "apps",
            "rollout::record::Record",
            "rollout::plan",
            "desired::Gate",
            "webhook::notify",
            "after::Tests",
        ]
    );
}

#[test]
fn a_planted_cycle_in_source_files_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    let write = |path: &str, text: &str| {
        let path = src.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("lib.rs", "mod a; mod b; mod c;\n");
    write("a.rs", "use crate::b::inner::f;\npub fn g() {}\n");
    write("b/mod.rs", "mod inner;\nmod leaf;\npub struct B;\n");
    write("b/inner.rs", "pub fn f() { crate::a::g() }\n");
    write("b/leaf.rs", "use crate::a;\n");
    write("c.rs", "use crate::{a, b::{self, leaf}};\n");
    write("bin/tool.rs", "use crate::c;\n");
    let g = module_graph(src);
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(g["c"], set(&["a", "b", "b::leaf"]));
    assert_eq!(g["b"], set(&[]));
    assert!(!g.contains_key("bin::tool"));
    assert_eq!(cycles(&g), [vec!["a".to_string(), "b::inner".to_string()]]);
}
