//! The file-level import graph of a source tree, read the simple way: every `crate::…`,
//! `super::…` and `self::…` path in a file (in `use` lines, in code and in doc links; `{…}`
//! groups expanded) and every `use` of a child module the file declares (a `mod.rs` handing
//! its children's names on), resolved to the longest module prefix that is a file. A file's own test module
//! (`#[cfg(test)] mod tests { … }` to the end of the file) and files named `tests.rs` are left
//! out: tests may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The files of a tree and who imports whom (paths relative to the tree, `/`-separated).
pub struct Graph {
    /// file → the module path it defines (`a/b.rs` and `a/b/mod.rs` → `[a, b]`).
    pub modules: BTreeMap<String, Vec<String>>,
    /// file → the files it imports.
    pub edges: BTreeMap<String, BTreeSet<String>>,
    /// file → the absolute module paths it names (`crate::…` and resolved `super::…`).
    pub paths: BTreeMap<String, Vec<Vec<String>>>,
}

/// The module path of `rel`: `lib.rs`/`main.rs` → `[]`, `a/mod.rs` → `[a]`, `a/b.rs` → `[a, b]`.
fn module_of(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(String::from)
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "tests") {
                rust_files(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs")
            && p.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(p);
        }
    }
}

/// `text` without its test module (from `#[cfg(test)]` followed by `mod tests {` to the end).
fn without_tests(text: &str) -> &str {
    let mut from = 0;
    while let Some(i) = text[from..].find("#[cfg(test)]") {
        let at = from + i;
        let rest = text[at + "#[cfg(test)]".len()..].trim_start();
        if rest.starts_with("mod tests {") || rest.starts_with("mod tests{") {
            return &text[..at];
        }
        from = at + 1;
    }
    text
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Parses a path tree at `s` (after `crate::` or `super::`): segments separated by `::`, a
/// `{a, b::c}` group expanded. Returns the paths (relative to the prefix).
fn tree(s: &str) -> Vec<Vec<String>> {
    fn parse(s: &[char], i: &mut usize) -> Vec<Vec<String>> {
        let mut prefix = Vec::new();
        loop {
            while *i < s.len() && s[*i].is_whitespace() {
                *i += 1;
            }
            if *i < s.len() && s[*i] == '{' {
                *i += 1;
                let mut out = Vec::new();
                loop {
                    for mut p in parse(s, i) {
                        let mut full = prefix.clone();
                        full.append(&mut p);
                        out.push(full);
                    }
                    while *i < s.len() && s[*i].is_whitespace() {
                        *i += 1;
                    }
                    match s.get(*i) {
                        Some(',') => *i += 1,
                        Some('}') => {
                            *i += 1;
                            break;
                        }
                        _ => break,
                    }
                    while *i < s.len() && s[*i].is_whitespace() {
                        *i += 1;
                    }
                    if s.get(*i) == Some(&'}') {
                        *i += 1;
                        break;
                    }
                }
                return out;
            }
            let start = *i;
            while *i < s.len() && is_ident(s[*i]) {
                *i += 1;
            }
            if *i == start {
                return vec![prefix];
            }
            prefix.push(s[start..*i].iter().collect());
            if s.get(*i) == Some(&':') && s.get(*i + 1) == Some(&':') {
                *i += 2;
            } else {
                return vec![prefix];
            }
        }
    }
    let chars: Vec<char> = s.chars().take(2000).collect();
    let mut i = 0;
    parse(&chars, &mut i)
}

/// The child modules a file declares (`mod x;`, `pub mod x;`, `pub(crate) mod x;`).
fn children(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = match l.strip_prefix("pub") {
                Some(r) if r.starts_with('(') => r.split_once(')')?.1.trim_start(),
                Some(r) => r.trim_start(),
                None => l,
            };
            let name = l.strip_prefix("mod ")?.trim().strip_suffix(';')?;
            name.chars().all(is_ident).then(|| name.to_string())
        })
        .collect()
}

/// The names a file hands on from its child modules (`pub use child::{A, b::C};`), each with
/// the module it comes from (absolute, from module `me`). Globs are not followed.
fn reexports(text: &str, me: &[String]) -> BTreeMap<String, Vec<String>> {
    let kids = children(text);
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let l = line.trim_start();
        let Some(rest) = l.strip_prefix("pub use ").or_else(|| {
            l.strip_prefix("pub(crate) use ")
                .or_else(|| l.strip_prefix("pub(super) use "))
        }) else {
            continue;
        };
        if !kids.iter().any(|k| {
            rest.strip_prefix(k.as_str())
                .is_some_and(|r| r.starts_with("::"))
        }) {
            continue;
        }
        for p in tree(rest) {
            if let Some((item, from)) = p.split_last() {
                let mut module = me.to_vec();
                module.extend(from.iter().cloned());
                out.insert(item.clone(), module);
            }
        }
    }
    out
}

/// Every absolute module path `text` names from module `me`: its `crate::`, `super::` and
/// `self::` paths.
fn named_paths(text: &str, me: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut from = 0;
    while from < text.len() {
        let rest = &text[from..];
        let next = [
            rest.find("crate::"),
            rest.find("super::"),
            rest.find("self::"),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(i) = next else { break };
        let at = from + i;
        from = at + 1;
        if text[..at].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let (base, after) = if text[at..].starts_with("crate::") {
            (Vec::new(), at + "crate::".len())
        } else if text[at..].starts_with("self::") {
            (me.to_vec(), at + "self::".len())
        } else {
            // `super` of `a/b.rs` (module `a::b`) is `a`; of `a/mod.rs` (module `a`) the root.
            let mut b = me.to_vec();
            b.pop();
            let mut after = at + "super::".len();
            while text[after..].starts_with("super::") {
                b.pop();
                after += "super::".len();
            }
            (b, after)
        };
        for p in tree(&text[after..]) {
            let mut full = base.clone();
            full.extend(p.into_iter().filter(|s| s != "self"));
            if !full.is_empty() {
                out.push(full);
            }
        }
    }
    out
}

impl Graph {
    /// Reads every `.rs` file under `root`.
    pub fn read(root: &Path) -> Graph {
        let mut files = Vec::new();
        rust_files(root, &mut files);
        let mut modules = BTreeMap::new();
        let mut texts = BTreeMap::new();
        for f in files {
            let rel = f
                .strip_prefix(root)
                .expect("under the root")
                .to_string_lossy()
                .replace('\\', "/");
            let text = std::fs::read_to_string(&f).expect("readable source");
            modules.insert(rel.clone(), module_of(&rel));
            texts.insert(rel, text);
        }
        let by_module: BTreeMap<&Vec<String>, &String> =
            modules.iter().map(|(f, m)| (m, f)).collect();
        let handed_on: BTreeMap<&String, BTreeMap<String, Vec<String>>> = texts
            .iter()
            .map(|(f, t)| (f, reexports(without_tests(t), &modules[f])))
            .collect();
        // The file that defines `path`: the longest prefix that is a file, followed through
        // the names that file hands on from its children.
        let resolve = |path: &[String]| {
            let mut path = path.to_vec();
            for _ in 0..8 {
                let (k, file) = (1..=path.len())
                    .rev()
                    .find_map(|k| by_module.get(&path[..k].to_vec()).map(|f| (k, *f)))?;
                match path.get(k).and_then(|item| handed_on[file].get(item)) {
                    Some(from) => {
                        let mut next = from.clone();
                        next.extend(path[k..].iter().cloned());
                        path = next;
                    }
                    None => return Some(file.clone()),
                }
            }
            None
        };
        let mut edges = BTreeMap::new();
        let mut paths = BTreeMap::new();
        for (file, text) in &texts {
            let me = &modules[file];
            let named = named_paths(without_tests(text), me);
            let to: BTreeSet<String> = named
                .iter()
                .filter_map(|p| resolve(p))
                .filter(|t| t != file)
                .collect();
            edges.insert(file.clone(), to);
            paths.insert(file.clone(), named);
        }
        Graph {
            modules,
            edges,
            paths,
        }
    }

    /// The import circles: sets of two or more files that import each other, each sorted.
    pub fn circles(&self) -> Vec<Vec<String>> {
        strongly_connected(&self.edges)
    }

    /// The same graph between top-level modules (`a/…` and `a.rs` are module `a`).
    pub fn top_level(&self) -> BTreeMap<String, BTreeSet<String>> {
        let top = |f: &str| {
            self.modules[f]
                .first()
                .cloned()
                .unwrap_or_else(|| f.trim_end_matches(".rs").to_string())
        };
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (f, to) in &self.edges {
            let from = top(f);
            let set = out.entry(from.clone()).or_default();
            set.extend(to.iter().map(|t| top(t)).filter(|t| *t != from));
        }
        out
    }
}

/// Tarjan's strongly connected components of more than one node.
pub fn strongly_connected(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on.insert(v);
        let edges = s.edges;
        for w in edges.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out.sort();
    s.out
}
