//! What the workspace holds (from `cargo metadata`): its library crates, their fuzz crates and
//! its boards.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::board::Board;
use crate::cargo::Cargo;

/// Top-level directories whose crates are reusable `no_std` libraries.
const LIBRARY_DIRS: [&str; 2] = ["crates", "arch"];

/// The workspace as seen by the tasks.
#[derive(Debug)]
pub struct Workspace {
    /// The workspace root directory.
    pub root: PathBuf,
    /// Cargo's target directory.
    pub target_dir: PathBuf,
    /// Library crates under one of [`LIBRARY_DIRS`], sorted by name.
    pub libraries: Vec<Library>,
    /// Board packages, sorted by board name.
    pub boards: Vec<Board>,
}

/// A workspace library crate under one of [`LIBRARY_DIRS`].
#[derive(Debug)]
pub struct Library {
    /// The package name, as given to `cargo -p`.
    pub name: String,
    /// Whether `publish` allows some registry.
    pub publishable: bool,
    /// Names of its `[[bench]]` targets.
    pub benches: Vec<String>,
    /// Features that its bench targets require (`required-features`).
    pub bench_features: Vec<String>,
}

impl Workspace {
    /// Reads the workspace members with `cargo metadata`.
    pub fn load() -> Result<Self> {
        let json = Cargo::new(["metadata", "--format-version", "1", "--no-deps"]).read()?;
        let metadata: Value =
            serde_json::from_str(&json).context("cannot parse the output of `cargo metadata`")?;
        let root = PathBuf::from(
            metadata["workspace_root"]
                .as_str()
                .context("`cargo metadata` gave no workspace_root")?,
        );
        let target_dir = PathBuf::from(
            metadata["target_directory"]
                .as_str()
                .context("`cargo metadata` gave no target_directory")?,
        );
        let packages = metadata["packages"]
            .as_array()
            .context("`cargo metadata` gave no packages")?;

        let mut libraries = Vec::new();
        for package in packages {
            if let Some(library) = library(&root, package) {
                libraries.push(library);
            }
        }
        libraries.sort_by(|a, b| a.name.cmp(&b.name));

        let mut boards = packages
            .iter()
            .filter_map(Board::from_package)
            .collect::<Result<Vec<_>>>()?;
        boards.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(pair) = boards.windows(2).find(|pair| pair[0].name == pair[1].name) {
            bail!(
                "board {} is defined by two packages: {} and {}",
                pair[0].name,
                pair[0].package,
                pair[1].package
            );
        }
        Ok(Self {
            root,
            target_dir,
            libraries,
            boards,
        })
    }

    /// `path` relative to the workspace root if it is under it, for messages and commands run
    /// from the root.
    pub fn relative<'a>(&self, path: &'a Path) -> &'a Path {
        path.strip_prefix(&self.root).unwrap_or(path)
    }

    /// Fuzz crates (`crates/*/fuzz`, `arch/*/fuzz`), relative to the root, sorted.
    pub fn fuzz_dirs(&self) -> Result<Vec<PathBuf>> {
        let mut dirs = Vec::new();
        for top in LIBRARY_DIRS {
            let top = Path::new(top);
            if !self.root.join(top).is_dir() {
                continue;
            }
            let entries = fs::read_dir(self.root.join(top))
                .with_context(|| format!("cannot list {}", top.display()))?;
            for entry in entries {
                let fuzz = top.join(entry?.file_name()).join("fuzz");
                if self.root.join(&fuzz).join("Cargo.toml").is_file() {
                    dirs.push(fuzz);
                }
            }
        }
        dirs.sort();
        Ok(dirs)
    }
}

/// The library crate described by one `cargo metadata` package, if it is one of ours.
fn library(root: &Path, package: &Value) -> Option<Library> {
    let manifest = Path::new(package["manifest_path"].as_str()?);
    let top = manifest.strip_prefix(root).ok()?.components().next()?;
    if !LIBRARY_DIRS.iter().any(|dir| top.as_os_str() == *dir) {
        return None;
    }
    let targets = package["targets"].as_array()?;
    let has_kind = |target: &Value, kind: &str| {
        target["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == kind))
    };
    if !targets
        .iter()
        .any(|t| has_kind(t, "lib") || has_kind(t, "rlib"))
    {
        return None;
    }

    let mut bench_features: Vec<String> = targets
        .iter()
        .filter(|t| has_kind(t, "bench"))
        .filter_map(|t| t["required-features"].as_array())
        .flatten()
        .filter_map(|f| f.as_str().map(str::to_owned))
        .collect();
    bench_features.sort();
    bench_features.dedup();

    Some(Library {
        name: package["name"].as_str()?.to_owned(),
        // `null` means any registry; a list names the allowed ones (empty: `publish = false`).
        publishable: package["publish"]
            .as_array()
            .is_none_or(|registries| !registries.is_empty()),
        benches: targets
            .iter()
            .filter(|t| has_kind(t, "bench"))
            .filter_map(|t| t["name"].as_str().map(str::to_owned))
            .collect(),
        bench_features,
    })
}
