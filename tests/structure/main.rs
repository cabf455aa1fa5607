//! The import structure of `src/`, checked (ARCHITECTURE.md, "A layout that shows this design"):
//! imports point downward — `domain` ← adapters ← `actors` ← `control_plane` ← `worker`, all
//! ← `app` — so no two files and no two top-level modules import each other, the worker wing
//! never reaches the database or the actors (a worker never opens the database), and the
//! domain imports nothing else of the crate. Reads the sources; runs nothing of loopd.

mod graph;

use graph::{strongly_connected, Graph};
use std::path::Path;

fn src() -> Graph {
    Graph::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

/// The module paths `files` name (in `use` lines, code or doc links) whose first segment
/// `bad` refuses, as `file -> path` lines.
fn naming(g: &Graph, files: &str, bad: impl Fn(&str) -> bool) -> Vec<String> {
    g.paths
        .iter()
        .filter(|(f, _)| f.starts_with(files))
        .flat_map(|(f, paths)| {
            paths
                .iter()
                .filter(|p| bad(p[0].as_str()))
                .map(move |p| format!("{f} -> crate::{}", p.join("::")))
        })
        .collect()
}

#[test]
fn the_worker_wing_imports_neither_the_database_nor_the_actors() {
    let g = src();
    assert!(
        g.modules.keys().any(|f| f.starts_with("worker/")),
        "src/worker/ holds the runner"
    );
    let bad = naming(&g, "worker/", |m| m == "db" || m == "actors");
    assert!(
        bad.is_empty(),
        "the worker wing reaches:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_domain_imports_nothing_else_of_the_crate() {
    let g = src();
    let bad = naming(&g, "domain/", |m| m != "domain");
    assert!(bad.is_empty(), "the domain imports:\n{}", bad.join("\n"));
}

#[test]
fn no_files_of_src_import_each_other_in_a_circle() {
    let circles = src().circles();
    assert!(circles.is_empty(), "import circles: {circles:?}");
}

#[test]
fn no_two_top_level_modules_import_each_other() {
    let circles = strongly_connected(&src().top_level());
    assert!(circles.is_empty(), "modules in a circle: {circles:?}");
}

/// Writes `files` (path, text) under a fresh directory.
fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (path, text) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().expect("a parent")).expect("dirs");
        std::fs::write(p, text).expect("write");
    }
    dir
}

#[test]
fn the_checker_follows_groups_super_chains_doc_links_and_re_exports_but_not_tests() {
    let dir = tree(&[
        ("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n"),
        ("a/mod.rs", "pub mod w;\npub mod x;\npub mod y;\npub use x::X;\n"),
        ("a/x.rs", "use super::{y::Y, z};\npub struct X;\n"),
        ("a/y.rs", "/// Made from an [`X`](crate::a::x::X).\npub struct Y;\n"),
        ("a/w.rs", "use crate::c::d::e::f;\n"),
        (
            "b.rs",
            "use crate::{a::x, c::d as dd};\n#[cfg(test)]\nmod tests {\n    use crate::c::d::e;\n}\n",
        ),
        ("c/d/e.rs", "fn f() -> super::super::super::b::B { crate::a::X }\n"),
        ("c/d/tests.rs", "use crate::b;\n"),
    ]);
    let g = Graph::read(dir.path());
    let to = |f: &str| g.edges[f].iter().cloned().collect::<Vec<_>>();
    assert_eq!(
        to("a/x.rs"),
        ["a/mod.rs", "a/y.rs"],
        "a group: `y::Y` is in a/y.rs, `z` (no file of its own) in a/mod.rs"
    );
    assert_eq!(to("a/y.rs"), ["a/x.rs"], "a doc link");
    assert_eq!(
        to("c/d/e.rs"),
        ["a/x.rs", "b.rs"],
        "a super chain, and a name a/mod.rs hands on from a/x.rs"
    );
    assert_eq!(
        to("b.rs"),
        ["a/x.rs"],
        "`c::d` has no file; the test module is left out"
    );
    assert!(
        !g.edges.contains_key("c/d/tests.rs"),
        "test files are left out"
    );
    assert_eq!(g.circles(), [["a/x.rs", "a/y.rs"]]);
    let top = strongly_connected(&g.top_level());
    assert_eq!(
        top,
        [["a", "b", "c"]],
        "a/w.rs → c, c → b, b → a: modules in a circle whose files are not"
    );
}
