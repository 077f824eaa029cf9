//! The load balancer's agent as a library: the binary (`main.rs`, `cli/`) is its CLI and
//! start-up, and the integration tests drive the same modules.
//!
//! Modules import each other without a cycle (`module_graph_has_no_cycle` checks it):
//! `config` <- `health`, `overrides` <- `protocol` <- `state` (with `dataplane`, `maglev`) <-
//! `agent` (writer, monitor; with `metrics`) <- `api`; `client` needs only `protocol`.

pub mod agent;
pub mod api;
pub mod client;
pub mod config;
pub mod dataplane;
pub mod forwarding;
pub mod health;
pub mod json_file;
pub mod maglev;
pub mod metrics;
pub mod neighbor;
pub mod node;
pub mod overrides;
pub mod pinning;
pub mod protocol;
pub mod proxy;
pub mod scaling;
pub mod state;

#[cfg(test)]
mod module_graph {
    //! The agent's top-level modules import each other without a cycle: read from the sources
    //! (every `crate::NAME` a module's files name), so a new import that closes a loop fails.

    use std::{
        collections::{BTreeMap, BTreeSet},
        path::Path,
    };

    /// Top-level module -> the top-level modules its files name through `crate::`.
    fn imports() -> BTreeMap<String, BTreeSet<String>> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let modules: Vec<String> = include_str!("lib.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("pub mod "))
            .map(|l| l.trim_end_matches(';').to_owned())
            .collect();
        let mut graph = BTreeMap::new();
        for module in &modules {
            let mut text = String::new();
            let file = src.join(format!("{module}.rs"));
            let dir = src.join(module);
            let mut files = vec![file];
            if dir.is_dir() {
                files.extend(
                    std::fs::read_dir(&dir)
                        .unwrap()
                        .map(|e| e.unwrap().path())
                        .filter(|p| p.extension().is_some_and(|e| e == "rs")),
                );
            }
            for f in files.iter().filter(|f| f.exists()) {
                text.push_str(&std::fs::read_to_string(f).unwrap());
            }
            // `crate::a::x` names `a`; so does `use crate::{a, b::{c, d}}` (every identifier
            // in the braces is taken as a name: too many at worst, which only makes the check
            // stricter).
            let mut words = BTreeSet::new();
            for (at, m) in text.match_indices("crate::") {
                let rest = &text[at + m.len()..];
                let end = if rest.starts_with('{') {
                    rest.find("};").unwrap_or(rest.len())
                } else {
                    rest.find(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .unwrap_or(rest.len())
                };
                words.extend(
                    rest[..end]
                        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .map(str::to_owned),
                );
            }
            let named: BTreeSet<String> = modules
                .iter()
                .filter(|m| *m != module && words.contains(*m))
                .cloned()
                .collect();
            graph.insert(module.clone(), named);
        }
        graph
    }

    #[test]
    fn module_graph_has_no_cycle() {
        let graph = imports();
        assert!(
            graph["agent"].contains("state"),
            "the reader misses imports: {graph:?}"
        );
        // Depth-first search; a module met again on the current path closes a cycle.
        fn visit<'a>(
            graph: &'a BTreeMap<String, BTreeSet<String>>,
            module: &'a str,
            path: &mut Vec<&'a str>,
            done: &mut BTreeSet<&'a str>,
        ) {
            if done.contains(module) {
                return;
            }
            if let Some(at) = path.iter().position(|m| *m == module) {
                panic!("import cycle: {} -> {module}", path[at..].join(" -> "));
            }
            path.push(module);
            for next in &graph[module] {
                visit(graph, next, path, done);
            }
            path.pop();
            done.insert(module);
        }
        let mut done = BTreeSet::new();
        for module in graph.keys() {
            visit(&graph, module, &mut Vec::new(), &mut done);
        }
    }
}
