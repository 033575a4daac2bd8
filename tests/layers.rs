//! The crate's floors (CONTRIBUTING.md): each top-level module of `src/` imports only
//! modules of lower floors (two modules of one floor never import each other), and the
//! files of one folder import each other without a cycle. Read from the `use crate::`,
//! `use super::` and `crate::` paths of every file, so a new import that climbs fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every top-level module of the library, with its floor.
const FLOORS: &[(&str, u8)] = &[
    ("sync", 0),
    ("domain", 1),
    ("metrics", 2),
    ("store", 3),
    ("limiter", 4),
    ("grpc", 5),
    ("http", 5),
    ("config", 5),
    ("server", 6),
    ("app", 7),
];

const MAX_LINES: usize = 400;

#[test]
fn every_import_runs_downhill() {
    let files = sources();
    let floor: BTreeMap<&str, u8> = FLOORS.iter().copied().collect();
    let mut climbs = Vec::new();
    for (module, text) in &files {
        let Some(top) = module.first() else { continue };
        let Some(&own) = floor.get(top.as_str()) else {
            climbs.push(format!("src/{} is not a known floor: add it to FLOORS", module.join("/")));
            continue;
        };
        for target in imports(module, text) {
            let Some(target_top) = target.first() else { continue };
            if target_top == top {
                continue;
            }
            match floor.get(target_top.as_str()) {
                Some(&theirs) if theirs < own => {}
                _ => climbs.push(format!("{} (floor {own}) imports crate::{}", module.join("::"), target.join("::"))),
            }
        }
    }
    assert!(climbs.is_empty(), "imports that climb or cross a floor:\n{}", climbs.join("\n"));
}

#[test]
fn the_files_of_a_folder_import_each_other_without_a_cycle() {
    let files = sources();
    let modules: BTreeSet<Vec<String>> = files.iter().map(|(m, _)| m.clone()).collect();
    // Edges between siblings only: a file and the folder's own mod.rs (its parent) are one unit.
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, text) in &files {
        for target in imports(module, text) {
            let Some(sibling) = sibling_of(module, &target, &modules) else { continue };
            edges.entry(module.clone()).or_default().insert(sibling);
        }
    }
    if let Some(cycle) = find_cycle(&edges) {
        let names: Vec<String> = cycle.iter().map(|m| m.join("::")).collect();
        panic!("an import cycle: {}", names.join(" -> "));
    }
    assert!(edges.values().map(BTreeSet::len).sum::<usize>() > 5, "the parser found too few imports to mean anything");
}

#[test]
fn every_source_file_is_under_400_lines() {
    let mut roots = vec![PathBuf::from("src"), PathBuf::from("tests"), PathBuf::from("tools")];
    roots.push(PathBuf::from("benches"));
    let mut long = Vec::new();
    for root in roots {
        for path in rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join(root)) {
            let lines = std::fs::read_to_string(&path).unwrap().lines().count();
            if lines >= MAX_LINES {
                long.push(format!("{} has {lines} lines", path.display()));
            }
        }
    }
    assert!(long.is_empty(), "files of {MAX_LINES} lines or more:\n{}", long.join("\n"));
}

/// The module path of each library file (`src/store/redis/batch.rs` is
/// `["store", "redis", "batch"]`), with its text.
fn sources() -> Vec<(Vec<String>, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for path in rust_files(&src) {
        let relative = path.strip_prefix(&src).unwrap().with_extension("");
        let mut module: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        if module.last().is_some_and(|last| last == "mod") {
            module.pop();
        }
        if module == ["lib"] || module == ["main"] {
            continue;
        }
        files.push((module, std::fs::read_to_string(&path).unwrap()));
    }
    assert!(files.len() > 20, "found only {} files under src/", files.len());
    files
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|name| name != "target") {
                found.extend(rust_files(&path));
            }
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
    found
}

/// The crate paths a file imports, outside its `#[cfg(test)]` module: `crate::a::b`,
/// `super::x` and `self::x` resolved against the file's own module path.
fn imports(module: &[String], text: &str) -> Vec<Vec<String>> {
    let code = text.split("#[cfg(test)]").next().unwrap_or(text);
    let mut found = Vec::new();
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        for (start, _) in line.match_indices("crate::") {
            let before = line[..start].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
                continue;
            }
            found.push(path_at(&line[start + "crate::".len()..]));
        }
        if let Some(rest) = line.strip_prefix("use super::").or_else(|| line.strip_prefix("pub use super::")) {
            let mut base = module.to_vec();
            base.pop();
            base.extend(path_at(rest));
            found.push(base);
        }
        if let Some(rest) = line.strip_prefix("use self::").or_else(|| line.strip_prefix("pub use self::")) {
            let mut base = module.to_vec();
            base.extend(path_at(rest));
            found.push(base);
        }
    }
    found.retain(|path| !path.is_empty());
    found
}

/// The leading `a::b::c` of a path, up to the first `{`, `;`, space or item in upper case.
fn path_at(rest: &str) -> Vec<String> {
    let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(rest.len());
    rest[..end]
        .split("::")
        .filter(|part| !part.is_empty())
        .take_while(|part| part.chars().next().is_some_and(|c| c.is_lowercase()))
        .map(str::to_owned)
        .collect()
}

/// If `target` names a sibling of `module` (another file of the same folder, or
/// something inside one), that sibling.
fn sibling_of(module: &[String], target: &[String], modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    let parent = &module[..module.len() - 1];
    if target.len() <= parent.len() || target[..parent.len()] != *parent {
        return None;
    }
    let sibling = target[..=parent.len()].to_vec();
    (sibling != module && modules.contains(&sibling)).then_some(sibling)
}

fn find_cycle(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<Vec<String>>> {
    fn visit(
        node: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        path: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.clone());
            return Some(cycle);
        }
        if !done.insert(node.clone()) {
            return None;
        }
        path.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    edges.keys().find_map(|node| visit(node, edges, &mut Vec::new(), &mut done))
}
