//! `cargo xtask cycles`: no module of a workspace crate uses another in a circle.
//!
//! Each source file is a module (`a.rs` and `a/mod.rs` are `a`, `lib.rs` and `main.rs` the
//! crate root). An edge `a -> b` is a path from `a` that names `b` or an item in it:
//! `crate::b::..`, `super::b::..`, `self::..` (`use` lines, `use` groups in braces and paths
//! in expressions alike). Edges between a module and its own ancestors or descendants are not
//! counted: a child sees its parent's scope by construction, and a parent declares and
//! re-exports its children. Everything else must form no cycle; each strongly connected
//! component of two or more modules is reported with one reference per edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

/// One reference: the file and line it is on.
type Site = (PathBuf, usize);

/// Checks every workspace member's library and binary sources; fails with the cycles.
pub fn check(root: &Path) -> Result<()> {
    let output = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(root)
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let mut crates = BTreeMap::new();
    for package in metadata["packages"].as_array().into_iter().flatten() {
        for target in package["targets"].as_array().into_iter().flatten() {
            let kinds: Vec<&str> = target["kind"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|k| k.as_str())
                .collect();
            if !kinds
                .iter()
                .any(|k| ["lib", "bin", "proc-macro"].contains(k))
            {
                continue;
            }
            let Some(src) = target["src_path"].as_str() else {
                continue;
            };
            let name = format!(
                "{}{}",
                package["name"].as_str().unwrap_or("?"),
                if kinds.contains(&"lib") {
                    String::new()
                } else {
                    format!(" (bin {})", target["name"].as_str().unwrap_or("?"))
                }
            );
            crates.insert(name, PathBuf::from(src));
        }
    }
    let mut cycles = Vec::new();
    let mut modules = 0;
    for (name, root_file) in &crates {
        let graph = Graph::of_crate(name, root_file)?;
        modules += graph.modules.len();
        cycles.extend(graph.cycles());
    }
    if cycles.is_empty() {
        println!(
            "==> no module cycles in {} crates ({modules} modules)",
            crates.len()
        );
        return Ok(());
    }
    for cycle in &cycles {
        eprintln!("{cycle}");
    }
    bail!("{} module cycle(s)", cycles.len())
}

/// The modules of one crate and the edges between them.
struct Graph {
    crate_name: String,
    /// Module path -> its file.
    modules: BTreeMap<Vec<String>, PathBuf>,
    /// (from, to) -> the first reference.
    edges: BTreeMap<(Vec<String>, Vec<String>), Site>,
}

impl Graph {
    fn of_crate(name: &str, root_file: &Path) -> Result<Self> {
        let mut modules = BTreeMap::new();
        modules.insert(Vec::new(), root_file.to_path_buf());
        collect(root_file, true, &mut modules)?;
        let mut graph = Graph {
            crate_name: name.to_string(),
            modules,
            edges: BTreeMap::new(),
        };
        let files: Vec<(Vec<String>, PathBuf)> = graph
            .modules
            .iter()
            .map(|(m, f)| (m.clone(), f.clone()))
            .collect();
        for (module, file) in files {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            for (line, path) in paths(&text) {
                if let Some(target) = graph.resolve(&module, &path) {
                    let related = target.starts_with(&module) || module.starts_with(&target);
                    if !related {
                        graph
                            .edges
                            .entry((module.clone(), target))
                            .or_insert((file.clone(), line));
                    }
                }
            }
        }
        Ok(graph)
    }

    /// The module a path from `module` names (the longest prefix that is a module).
    fn resolve(&self, module: &[String], path: &[String]) -> Option<Vec<String>> {
        let mut at: Vec<String> = match path.first()?.as_str() {
            "crate" => Vec::new(),
            "self" => module.to_vec(),
            "super" => module.to_vec(),
            _ => return None,
        };
        let mut rest = path;
        while let Some(first) = rest.first() {
            match first.as_str() {
                "super" => {
                    at.pop()?;
                }
                "crate" | "self" => {}
                _ => break,
            }
            rest = &rest[1..];
        }
        for segment in rest {
            let mut next = at.clone();
            next.push(segment.clone());
            if self.modules.contains_key(&next) {
                at = next;
            } else {
                break;
            }
        }
        Some(at)
    }

    /// Strongly connected components of two or more modules, described.
    fn cycles(&self) -> Vec<String> {
        let nodes: Vec<&Vec<String>> = self.modules.keys().collect();
        let index: BTreeMap<&Vec<String>, usize> =
            nodes.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let mut next: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
        for (from, to) in self.edges.keys() {
            if let (Some(&a), Some(&b)) = (index.get(from), index.get(to)) {
                next[a].push(b);
            }
        }
        let mut out = Vec::new();
        for component in tarjan(&next) {
            if component.len() < 2 {
                continue;
            }
            let set: BTreeSet<usize> = component.iter().copied().collect();
            let name = |i: usize| {
                if nodes[i].is_empty() {
                    "crate".to_string()
                } else {
                    nodes[i].join("::")
                }
            };
            let mut text = format!(
                "module cycle in {}: {}",
                self.crate_name,
                set.iter().map(|&i| name(i)).collect::<Vec<_>>().join(", ")
            );
            for ((from, to), (file, line)) in &self.edges {
                if set.contains(&index[from]) && set.contains(&index[to]) {
                    text.push_str(&format!(
                        "\n  {} -> {}  ({}:{line})",
                        name(index[from]),
                        name(index[to]),
                        file.display()
                    ));
                }
            }
            out.push(text);
        }
        out
    }
}

/// Finds the files of the modules `file` declares, and theirs. A crate root or a `mod.rs`
/// keeps its children beside it; `a.rs` keeps them in `a/`.
fn collect(file: &Path, is_root: bool, modules: &mut BTreeMap<Vec<String>, PathBuf>) -> Result<()> {
    let text = std::fs::read_to_string(file)?;
    let parent = file.parent().context("a module file without a directory")?;
    let module_dir = if is_root || file.file_name().is_some_and(|n| n == "mod.rs") {
        parent.to_path_buf()
    } else {
        file.with_extension("")
    };
    let here: Vec<String> = modules
        .iter()
        .find(|(_, f)| f.as_path() == file)
        .map(|(m, _)| m.clone())
        .unwrap_or_default();
    for child in declared_modules(&text) {
        let candidates = [
            module_dir.join(format!("{child}.rs")),
            module_dir.join(&child).join("mod.rs"),
        ];
        if let Some(found) = candidates.into_iter().find(|c| c.is_file()) {
            let mut path = here.clone();
            path.push(child);
            modules.insert(path, found.clone());
            collect(&found, false, modules)?;
        }
    }
    Ok(())
}

/// Names of `mod x;` declarations (out-of-line modules) in a file.
fn declared_modules(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in text.lines().map(str::trim) {
        let line = line.strip_prefix("pub(crate) ").unwrap_or(line);
        let line = line.strip_prefix("pub(super) ").unwrap_or(line);
        let line = line.strip_prefix("pub ").unwrap_or(line);
        if let Some(rest) = line.strip_prefix("mod ") {
            if let Some(name) = rest.strip_suffix(';') {
                names.push(name.trim().to_string());
            }
        }
    }
    names
}

/// Every `crate::`, `super::` and `self::` path in the text, with its line, braces expanded.
fn paths(text: &str) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let bytes = code.as_bytes();
        let mut at = 0;
        while at < code.len() {
            let rest = &code[at..];
            let found = ["crate::", "super::", "self::"]
                .iter()
                .filter_map(|k| rest.find(k).map(|i| (i, *k)))
                .min();
            let Some((offset, _)) = found else { break };
            let start = at + offset;
            let preceded = start > 0 && {
                let c = bytes[start - 1];
                c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c == b':'
            };
            if preceded {
                at = start + 1;
                continue;
            }
            let (paths, end) = parse_path(code, start, text, number);
            for path in paths {
                out.push((number + 1, path));
            }
            at = end.max(start + 1);
        }
    }
    out
}

/// Parses a path starting at byte `start` of `line`; a `{` group may continue on the
/// following lines of `text` (from line `number`). Returns the expanded paths and where the
/// path ends on `line`.
fn parse_path(line: &str, start: usize, text: &str, number: usize) -> (Vec<Vec<String>>, usize) {
    // Gather enough text for a multi-line use group.
    let mut source = line[start..].to_string();
    if source.contains('{') && !balanced(&source) {
        for more in text.lines().skip(number + 1).take(200) {
            source.push(' ');
            source.push_str(more.split("//").next().unwrap_or(""));
            if balanced(&source) {
                break;
            }
        }
    }
    let chars: Vec<char> = source.chars().collect();
    let mut pos = 0;
    let paths = parse_tree(&chars, &mut pos, Vec::new());
    (paths, start + pos.min(line.len() - start))
}

fn balanced(text: &str) -> bool {
    text.matches('{').count() <= text.matches('}').count()
}

/// A use tree: `a::b::{c, d::e}`; returns every full path.
fn parse_tree(chars: &[char], pos: &mut usize, prefix: Vec<String>) -> Vec<Vec<String>> {
    let mut path = prefix;
    loop {
        skip_space(chars, pos);
        if chars.get(*pos) == Some(&'{') {
            *pos += 1;
            let mut all = Vec::new();
            loop {
                skip_space(chars, pos);
                match chars.get(*pos) {
                    Some('}') => {
                        *pos += 1;
                        break;
                    }
                    Some(',') => *pos += 1,
                    None => break,
                    _ => {
                        let before = *pos;
                        all.extend(parse_tree(chars, pos, path.clone()));
                        if *pos == before {
                            *pos += 1;
                        }
                    }
                }
            }
            return all;
        }
        let ident: String = chars[*pos..]
            .iter()
            .take_while(|c| c.is_alphanumeric() || **c == '_')
            .collect();
        if ident.is_empty() {
            return vec![path];
        }
        *pos += ident.chars().count();
        path.push(ident);
        if chars.get(*pos) == Some(&':') && chars.get(*pos + 1) == Some(&':') {
            *pos += 2;
        } else {
            // `as x`, `;`, `(`, `,` ...: the path ends here.
            return vec![path];
        }
    }
}

fn skip_space(chars: &[char], pos: &mut usize) {
    while chars.get(*pos).is_some_and(|c| c.is_whitespace()) {
        *pos += 1;
    }
}

/// Tarjan's strongly connected components.
fn tarjan(next: &[Vec<usize>]) -> Vec<Vec<usize>> {
    struct State<'a> {
        next: &'a [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        counter: usize,
        out: Vec<Vec<usize>>,
    }
    fn visit(s: &mut State<'_>, v: usize) {
        s.index[v] = Some(s.counter);
        s.low[v] = s.counter;
        s.counter += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for i in 0..s.next[v].len() {
            let w = s.next[v][i];
            match s.index[w] {
                None => {
                    visit(s, w);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(index) if s.on_stack[w] => s.low[v] = s.low[v].min(index),
                Some(_) => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            s.out.push(component);
        }
    }
    let n = next.len();
    let mut s = State {
        next,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        counter: 0,
        out: Vec::new(),
    };
    for v in 0..n {
        if s.index[v].is_none() {
            visit(&mut s, v);
        }
    }
    s.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_use_groups_and_finds_expression_paths() {
        let text = "use super::{cell, cells::{self, Machine}, gic};\nfn f() { crate::hw::wait::kick(1); self_test(); }\nuse crate::a as b;";
        let found: Vec<String> = paths(text)
            .into_iter()
            .map(|(l, p)| format!("{l}:{}", p.join("::")))
            .collect();
        assert_eq!(
            found,
            [
                "1:super::cell",
                "1:super::cells::self",
                "1:super::cells::Machine",
                "1:super::gic",
                "2:crate::hw::wait::kick",
                "3:crate::a",
            ]
        );
    }

    #[test]
    fn finds_a_cycle_between_siblings_but_not_with_a_parent() {
        let dir = std::env::temp_dir().join(format!("cycles-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("hw")).unwrap();
        std::fs::write(dir.join("lib.rs"), "mod hw;\nmod x;\npub use hw::a::f;\n").unwrap();
        std::fs::write(dir.join("x.rs"), "pub fn g() {}\n").unwrap();
        std::fs::write(
            dir.join("hw/mod.rs"),
            "mod a;\nmod b;\npub fn top() { a::f() }\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("hw/a.rs"),
            "use super::b::g;\npub fn f() { super::top(); crate::x::g() }\n",
        )
        .unwrap();
        std::fs::write(dir.join("hw/b.rs"), "pub fn g() { super::a::f() }\n").unwrap();
        let graph = Graph::of_crate("t", &dir.join("lib.rs")).unwrap();
        let cycles = graph.cycles();
        assert_eq!(cycles.len(), 1, "{cycles:?}");
        assert!(cycles[0].contains("hw::a, hw::b"), "{}", cycles[0]);
        assert!(!cycles[0].contains("x"), "{}", cycles[0]);
        std::fs::write(dir.join("hw/b.rs"), "pub fn g() { super::top() }\n").unwrap();
        let graph = Graph::of_crate("t", &dir.join("lib.rs")).unwrap();
        assert!(graph.cycles().is_empty(), "children may use their parent");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
