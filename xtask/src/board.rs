//! Boards: the packages whose `Cargo.toml` has a `[package.metadata.cellvisor]` table with a
//! `board` key. That table says how to build and boot the board's hypervisor image:
//!
//! ```toml
//! [package.metadata.cellvisor]
//! board = "qemu-arm64"            # name given to --board
//! target = "aarch64-unknown-none" # Rust target of the image
//! qemu = "qemu-system-aarch64"    # QEMU binary
//! machine = "virt,virtualization=on,gic-version={gic}"  # -M; {gic} becomes the GIC version
//! gic-versions = [2, 3]           # GIC versions the board supports; the highest is the default
//! cpu = "cortex-a57"              # -cpu by default; without it, -cpu is never passed
//! smp = 4                         # -smp by default
//! memory = "1G"                   # -m by default
//! ```

use anyhow::{bail, Context as _, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A board and how to build and boot it.
#[derive(Debug, Clone)]
pub struct Board {
    /// The board name (`--board`).
    pub name: String,
    /// The package that builds the image.
    pub package: String,
    /// Version of that package.
    pub version: String,
    /// Name of its binary target, the hypervisor ELF.
    pub bin: String,
    /// Rust target triple of the image.
    pub target: String,
    /// QEMU system emulator binary.
    pub qemu: String,
    /// `-M` value, possibly with a `{gic}` placeholder.
    pub machine: String,
    /// Supported GIC versions, sorted.
    pub gic_versions: Vec<u32>,
    /// Default `-cpu`; `None` for machines with a fixed CPU model.
    pub cpu: Option<String>,
    /// Default `-smp`.
    pub smp: u32,
    /// Default `-m`.
    pub memory: String,
    /// The board crate's directory (its `config/` holds the reference configurations).
    pub dir: PathBuf,
}

impl Board {
    /// The board described by a `cargo metadata` package, `None` if the package is no board.
    pub fn from_package(package: &Value) -> Option<Result<Self>> {
        let table = &package["metadata"]["cellvisor"];
        table.get("board")?;
        let name = package["name"].as_str().unwrap_or("?");
        Some(
            Self::parse(package, table)
                .with_context(|| format!("package {name}: bad [package.metadata.cellvisor] table")),
        )
    }

    fn parse(package: &Value, table: &Value) -> Result<Self> {
        let string = |key: &str| -> Result<String> {
            table[key]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("`{key}` must be a string"))
        };
        let bins: Vec<&str> = package["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| {
                t["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "bin"))
            })
            .filter_map(|t| t["name"].as_str())
            .collect();
        let [bin] = bins[..] else {
            bail!("a board package needs exactly one binary target, found {bins:?}");
        };
        let mut gic_versions = table["gic-versions"]
            .as_array()
            .context("`gic-versions` must be an array")?
            .iter()
            .map(|v| {
                v.as_u64()
                    .and_then(|v| u32::try_from(v).ok())
                    .context("`gic-versions` must hold numbers")
            })
            .collect::<Result<Vec<u32>>>()?;
        gic_versions.sort_unstable();
        gic_versions.dedup();
        if gic_versions.is_empty() {
            bail!("`gic-versions` is empty");
        }
        let smp = table["smp"]
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .filter(|&v| v > 0)
            .context("`smp` must be a positive number")?;
        let cpu = match table.get("cpu") {
            None => None,
            Some(_) => Some(string("cpu")?),
        };
        Ok(Self {
            name: string("board")?,
            package: package["name"]
                .as_str()
                .context("no package name")?
                .to_owned(),
            version: package["version"]
                .as_str()
                .context("no version")?
                .to_owned(),
            bin: bin.to_owned(),
            target: string("target")?,
            qemu: string("qemu")?,
            machine: string("machine")?,
            gic_versions,
            cpu,
            smp,
            memory: string("memory")?,
            dir: package["manifest_path"]
                .as_str()
                .and_then(|m| Path::new(m).parent())
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        })
    }

    /// The default GIC version: the highest one supported.
    pub fn default_gic(&self) -> u32 {
        *self.gic_versions.last().expect("checked when parsed")
    }

    /// The `-M` value for GIC version `gic`, which must be supported.
    pub fn machine(&self, gic: u32) -> Result<String> {
        if !self.gic_versions.contains(&gic) {
            bail!(
                "board {} has no GICv{gic}: --gic must be one of {}",
                self.name,
                list(&self.gic_versions)
            );
        }
        Ok(self.machine.replace("{gic}", &gic.to_string()))
    }
}

/// Finds a board by name; the error lists the known ones.
pub fn find<'a>(boards: &'a [Board], name: &str) -> Result<&'a Board> {
    if let Some(board) = boards.iter().find(|b| b.name == name) {
        return Ok(board);
    }
    let known: Vec<&str> = boards.iter().map(|b| b.name.as_str()).collect();
    if known.is_empty() {
        bail!("unknown board `{name}`: the workspace has no board package (none with [package.metadata.cellvisor] board = ...)");
    }
    bail!("unknown board `{name}`; known boards: {}", known.join(", "))
}

fn list(values: &[u32]) -> String {
    values
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(table: Value) -> Value {
        serde_json::json!({
            "name": "cellvisor-board-test",
            "version": "1.2.3",
            "targets": [
                {"kind": ["bin"], "name": "cellvisor-test"},
                {"kind": ["custom-build"], "name": "build-script-build"},
            ],
            "metadata": {"cellvisor": table},
        })
    }

    fn qemu_arm64() -> Value {
        serde_json::json!({
            "board": "test",
            "target": "aarch64-unknown-none",
            "qemu": "qemu-system-aarch64",
            "machine": "virt,virtualization=on,gic-version={gic}",
            "gic-versions": [3, 2],
            "cpu": "cortex-a57",
            "smp": 4,
            "memory": "1G",
        })
    }

    #[test]
    fn parses_a_board() {
        let board = Board::from_package(&package(qemu_arm64()))
            .unwrap()
            .unwrap();
        assert_eq!(board.name, "test");
        assert_eq!(board.package, "cellvisor-board-test");
        assert_eq!(board.version, "1.2.3");
        assert_eq!(board.bin, "cellvisor-test");
        assert_eq!(board.gic_versions, [2, 3]);
        assert_eq!(board.default_gic(), 3);
        assert_eq!(board.cpu.as_deref(), Some("cortex-a57"));
        assert_eq!(
            board.machine(2).unwrap(),
            "virt,virtualization=on,gic-version=2"
        );
        let error = board.machine(4).unwrap_err().to_string();
        assert!(error.contains("--gic must be one of 2, 3"), "{error}");
    }

    #[test]
    fn cpu_is_optional() {
        let mut table = qemu_arm64();
        table.as_object_mut().unwrap().remove("cpu");
        let board = Board::from_package(&package(table)).unwrap().unwrap();
        assert_eq!(board.cpu, None);
    }

    #[test]
    fn ignores_other_packages_and_rejects_bad_tables() {
        assert!(Board::from_package(&serde_json::json!({"name": "x", "metadata": null})).is_none());
        let mut table = qemu_arm64();
        table["gic-versions"] = serde_json::json!([]);
        assert!(Board::from_package(&package(table)).unwrap().is_err());
    }

    #[test]
    fn unknown_board_lists_the_known_ones() {
        let board = Board::from_package(&package(qemu_arm64()))
            .unwrap()
            .unwrap();
        let error = find(&[board], "nope").unwrap_err().to_string();
        assert_eq!(error, "unknown board `nope`; known boards: test");
    }
}
