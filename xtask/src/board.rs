//! Boards: the packages whose `Cargo.toml` has a `[package.metadata.cellvisor]` table with a
//! `board` key. That table says how to build and boot the board's hypervisor image:
//!
//! ```toml
//! [package.metadata.cellvisor]
//! board = "qemu-arm64"            # name given to --board
//! target = "aarch64-unknown-none-softfloat" # Rust target of the image
//! qemu = "qemu-system-aarch64"    # QEMU binary
//! machine = "virt,virtualization=on,gic-version={gic}"  # -M; {gic} becomes the GIC version
//! gic-versions = [2, 3]           # GIC versions the board supports; the highest is the default
//!                                 # (none on boards without a GIC, e.g. x86)
//! cpu = "cortex-a57"              # -cpu by default; without it, -cpu is never passed
//! smp = 4                         # -smp by default
//! memory = "1G"                   # -m by default
//! # Linux as the root cell (all four keys, or none: the board then boots without Linux).
//! config-address = 0x409c_0000    # where QEMU loads the system configuration (a loader device)
//! kernel-address = 0x40a0_0000    # where QEMU loads the root cell's kernel Image
//! system-config = "config/system-gicv{gic}.toml"  # default --config, from the crate directory
//! linux-append = "console=ttyAMA0" # default kernel command line (--append)
//! linux-dtb = "xilinx/zynqmp-zcu102-rev1.0.dtb"   # optional: -dtb, from target/linux/arm64/dtbs
//! # optional, with linux-dtb: devices whose clocks come from firmware QEMU does not model get
//! # a fixed clock instead in the tree QEMU passes (see qemu_dtb.rs)
//! linux-dtb-fixed-clock = { frequency = 100_000_000, nodes = ["/axi/serial@ff000000"] }
//! # Or, on x86, instead of the four keys: Linux and the system configuration
//! # (config/system.toml) from the Multiboot modules (see `MultibootLinux`), with this
//! # default kernel command line.
//! multiboot-linux-append = "console=ttyS0"
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
    /// Supported GIC versions, sorted; empty for a board without a GIC (x86).
    pub gic_versions: Vec<u32>,
    /// Default `-cpu`; `None` for machines with a fixed CPU model.
    pub cpu: Option<String>,
    /// Default `-smp`.
    pub smp: u32,
    /// Default `-m`.
    pub memory: String,
    /// Devices QEMU adds to the machine (`qemu-devices`, each a `-device` value), for the
    /// reference cells that take them.
    pub devices: Vec<String>,
    /// The board crate's directory (its `config/` holds the reference configurations).
    pub dir: PathBuf,
    /// How Linux boots as the root cell; `None` for boards that do not boot Linux yet.
    pub linux: Option<LinuxBoot>,
    /// How an x86 board boots Linux as the root cell for now (`multiboot-linux-append`);
    /// `None` for the others.
    pub multiboot: Option<MultibootLinux>,
}

/// How an x86 board boots Linux as its root cell: QEMU's Multiboot loader starts the
/// hypervisor (`-kernel`) with the root cell's bzImage, its initramfs and the compiled system
/// configuration (`config/system.toml` of the board crate, or `--config`) as its modules
/// (`-initrd "bzImage,initramfs,system.bin"`) and the kernel command line as the
/// hypervisor's own (`-append`); the hypervisor loads the kernel through the Linux boot
/// protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultibootLinux {
    /// The default kernel command line (`multiboot-linux-append`).
    pub append: String,
}

impl MultibootLinux {
    /// The key of a `[package.metadata.cellvisor]` table; `None` if it is absent.
    fn parse(table: &Value) -> Result<Option<Self>> {
        let Some(value) = table.get("multiboot-linux-append") else {
            return Ok(None);
        };
        if let Some(key) = LINUX_KEYS.iter().find(|key| table.get(**key).is_some()) {
            bail!(
                "`multiboot-linux-append` and `{key}` exclude each other: a board boots Linux \
                 either from the Multiboot modules or with the Arm keys"
            );
        }
        let append = value
            .as_str()
            .filter(|s| !s.trim().is_empty())
            .context("`multiboot-linux-append` must be a non-empty string")?;
        Ok(Some(Self {
            append: append.to_owned(),
        }))
    }
}

/// The keys of a board's Linux boot, in `[package.metadata.cellvisor]`.
const LINUX_KEYS: [&str; 4] = [
    "config-address",
    "kernel-address",
    "system-config",
    "linux-append",
];

/// How a board boots Linux as the root cell: QEMU starts the hypervisor as a Linux `Image`
/// (`-kernel`, with `-initrd`, `-append` and the device tree the usual way) and loads the
/// system configuration and the root cell's kernel with generic loader devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinuxBoot {
    /// Physical address of the system configuration (`config-address`).
    pub config_address: u64,
    /// Physical address of the root cell's kernel `Image` (`kernel-address`).
    pub kernel_address: u64,
    /// The default system configuration, relative to the board crate, with `{gic}` standing
    /// for the GIC version (`system-config`).
    pub system_config: String,
    /// The default kernel command line (`linux-append`).
    pub append: String,
    /// The device tree QEMU passes, relative to the kernel's `dtbs/` (`linux-dtb`); `None`:
    /// the one QEMU generates.
    pub dtb: Option<String>,
    /// Nodes of that tree that get a fixed clock in QEMU (`linux-dtb-fixed-clock`).
    pub fixed_clock: Option<FixedClock>,
}

/// `linux-dtb-fixed-clock`: the devices of `linux-dtb` whose clocks (and power domains and
/// pin control) come from firmware that QEMU does not model, and the clock they get instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedClock {
    /// The fixed clock's rate in Hz.
    pub frequency: u32,
    /// Full paths of the nodes.
    pub nodes: Vec<String>,
}

impl FixedClock {
    fn parse(value: &Value) -> Result<Self> {
        const WHAT: &str = "`linux-dtb-fixed-clock` must be a table { frequency = HZ, nodes = \
                            [\"/path\", ...] }";
        let frequency = value
            .get("frequency")
            .and_then(Value::as_u64)
            .and_then(|hz| u32::try_from(hz).ok())
            .filter(|&hz| hz > 0)
            .context(WHAT)?;
        let nodes: Vec<String> = value
            .get("nodes")
            .and_then(Value::as_array)
            .context(WHAT)?
            .iter()
            .map(|node| {
                node.as_str()
                    .filter(|path| path.starts_with('/'))
                    .map(str::to_owned)
                    .with_context(|| format!("{WHAT}: {node} is no node path"))
            })
            .collect::<Result<_>>()?;
        if nodes.is_empty() {
            bail!("{WHAT}: no nodes");
        }
        Ok(Self { frequency, nodes })
    }
}

impl LinuxBoot {
    /// The Linux keys of a `[package.metadata.cellvisor]` table; `None` if it has none.
    fn parse(table: &Value) -> Result<Option<Self>> {
        let present: Vec<&str> = LINUX_KEYS
            .iter()
            .copied()
            .filter(|key| table.get(key).is_some())
            .collect();
        if present.is_empty() {
            if table.get("linux-dtb").is_some() {
                bail!(
                    "`linux-dtb` needs the other Linux keys: {}",
                    LINUX_KEYS.join(", ")
                );
            }
            if table.get("linux-dtb-fixed-clock").is_some() {
                bail!("`linux-dtb-fixed-clock` needs `linux-dtb`");
            }
            return Ok(None);
        }
        if present.len() < LINUX_KEYS.len() {
            let missing: Vec<&str> = LINUX_KEYS
                .iter()
                .copied()
                .filter(|key| !present.contains(key))
                .collect();
            bail!(
                "{} given but not {}: a board that boots Linux needs all of {}",
                present.join(", "),
                missing.join(", "),
                LINUX_KEYS.join(", ")
            );
        }
        let address = |key: &str| {
            table[key]
                .as_u64()
                .with_context(|| format!("`{key}` must be an address (a non-negative integer)"))
        };
        let string = |key: &str| -> Result<String> {
            table[key]
                .as_str()
                .filter(|s| !s.trim().is_empty())
                .map(str::to_owned)
                .with_context(|| format!("`{key}` must be a non-empty string"))
        };
        let linux = Self {
            config_address: address("config-address")?,
            kernel_address: address("kernel-address")?,
            system_config: string("system-config")?,
            append: table["linux-append"]
                .as_str()
                .map(str::to_owned)
                .context("`linux-append` must be a string")?,
            dtb: match table.get("linux-dtb") {
                None => None,
                Some(_) => Some(string("linux-dtb")?),
            },
            fixed_clock: match table.get("linux-dtb-fixed-clock") {
                None => None,
                Some(value) => Some(FixedClock::parse(value)?),
            },
        };
        if linux.fixed_clock.is_some() && linux.dtb.is_none() {
            bail!("`linux-dtb-fixed-clock` needs `linux-dtb`");
        }
        if linux.config_address >= linux.kernel_address {
            bail!(
                "`config-address` ({:#x}) must be below `kernel-address` ({:#x}): the \
                 configuration may take the space up to the kernel",
                linux.config_address,
                linux.kernel_address
            );
        }
        Ok(Some(linux))
    }

    /// Room for the system configuration: the bytes from its address to the kernel's.
    pub fn config_room(&self) -> u64 {
        self.kernel_address - self.config_address
    }
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
        let no_gic = Vec::new();
        let mut gic_versions = match table.get("gic-versions") {
            None => &no_gic,
            Some(versions) => versions
                .as_array()
                .filter(|v| !v.is_empty())
                .context("`gic-versions` must be a non-empty array (or absent: no GIC)")?,
        }
        .iter()
        .map(|v| {
            v.as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .context("`gic-versions` must hold numbers")
        })
        .collect::<Result<Vec<u32>>>()?;
        gic_versions.sort_unstable();
        gic_versions.dedup();
        let machine = string("machine")?;
        if gic_versions.is_empty() && machine.contains("{gic}") {
            bail!("`machine` has a {{gic}} placeholder but the board has no `gic-versions`");
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
        let devices = match table.get("qemu-devices") {
            None => Vec::new(),
            Some(devices) => devices
                .as_array()
                .context("`qemu-devices` must be an array of strings")?
                .iter()
                .map(|d| {
                    d.as_str()
                        .filter(|d| !d.trim().is_empty())
                        .map(str::to_owned)
                        .context("`qemu-devices` must hold non-empty strings")
                })
                .collect::<Result<Vec<String>>>()?,
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
            machine,
            gic_versions,
            cpu,
            smp,
            memory: string("memory")?,
            devices,
            dir: package["manifest_path"]
                .as_str()
                .and_then(|m| Path::new(m).parent())
                .map(Path::to_path_buf)
                .unwrap_or_default(),
            linux: LinuxBoot::parse(table)?,
            multiboot: MultibootLinux::parse(table)?,
        })
    }

    /// The root cell's default kernel command line: `linux-append`, or
    /// `multiboot-linux-append` on an x86 board; `None` for a board that boots no Linux.
    pub fn linux_append(&self) -> Option<&str> {
        self.linux
            .as_ref()
            .map(|linux| linux.append.as_str())
            .or(self
                .multiboot
                .as_ref()
                .map(|multiboot| multiboot.append.as_str()))
    }

    /// How the board boots Linux; an error saying what to do for boards that do not.
    pub fn linux(&self) -> Result<&LinuxBoot> {
        self.linux.as_ref().with_context(|| {
            format!(
                "board {} does not boot Linux: its [package.metadata.cellvisor] table has none \
                 of {} (--no-linux boots the hypervisor alone)",
                self.name,
                LINUX_KEYS.join(", ")
            )
        })
    }

    /// The board's default system configuration for GIC version `gic` (a TOML file in the
    /// board crate), and where `cargo xtask build` writes its binary under `images` (the
    /// board's directory in `target/images/`).
    pub fn system_config(&self, gic: u32, images: &Path) -> Result<(PathBuf, PathBuf)> {
        let linux = self.linux()?;
        self.machine(Some(gic))?;
        let relative = linux.system_config.replace("{gic}", &gic.to_string());
        let source = self.dir.join(&relative);
        let Some(stem) = Path::new(&relative).file_stem() else {
            bail!(
                "board {}: `system-config` {relative:?} names no file",
                self.name
            );
        };
        let mut binary = stem.to_owned();
        binary.push(".bin");
        Ok((source, images.join(binary)))
    }

    /// The default GIC version: the highest one supported; `None` without a GIC.
    pub fn default_gic(&self) -> Option<u32> {
        self.gic_versions.last().copied()
    }

    /// The GIC version a command uses: `requested` (`--gic`), which the board must support,
    /// or its default; `None` on a board without a GIC, which refuses `--gic`.
    pub fn gic(&self, requested: Option<u32>) -> Result<Option<u32>> {
        match (requested, self.default_gic()) {
            (None, default) => Ok(default),
            (Some(gic), None) => bail!(
                "board {} has no GIC: --gic {gic} cannot be given",
                self.name
            ),
            (Some(gic), Some(_)) if self.gic_versions.contains(&gic) => Ok(Some(gic)),
            (Some(gic), Some(_)) => bail!(
                "board {} has no GICv{gic}: --gic must be one of {}",
                self.name,
                list(&self.gic_versions)
            ),
        }
    }

    /// The GIC version of a command that needs one (Linux as the root cell builds its
    /// configuration for it).
    pub fn require_gic(&self, requested: Option<u32>) -> Result<u32> {
        self.gic(requested)?
            .with_context(|| format!("board {} has no GIC", self.name))
    }

    /// The `-M` value for GIC version `gic` (see [`Board::gic`]).
    pub fn machine(&self, gic: Option<u32>) -> Result<String> {
        Ok(match self.gic(gic)? {
            Some(gic) => self.machine.replace("{gic}", &gic.to_string()),
            None => self.machine.clone(),
        })
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

/// The board called `name` (which must boot Linux), or without a name every board that boots
/// Linux; an error if there is none.
pub fn linux_boards<'a>(boards: &'a [Board], name: Option<&str>) -> Result<Vec<&'a Board>> {
    let found: Vec<&Board> = match name {
        Some(name) => {
            let board = find(boards, name)?;
            board.linux()?;
            vec![board]
        }
        None => boards.iter().filter(|b| b.linux.is_some()).collect(),
    };
    if found.is_empty() {
        bail!("no board boots Linux (none has the Linux keys in [package.metadata.cellvisor])");
    }
    Ok(found)
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
        assert_eq!(board.default_gic(), Some(3));
        assert_eq!(board.cpu.as_deref(), Some("cortex-a57"));
        assert_eq!(
            board.machine(Some(2)).unwrap(),
            "virt,virtualization=on,gic-version=2"
        );
        assert_eq!(
            board.machine(None).unwrap(),
            "virt,virtualization=on,gic-version=3"
        );
        let error = board.machine(Some(4)).unwrap_err().to_string();
        assert!(error.contains("--gic must be one of 2, 3"), "{error}");
    }

    #[test]
    fn a_board_without_a_gic() {
        let mut table = qemu_arm64();
        let object = table.as_object_mut().unwrap();
        object.remove("gic-versions");
        object.insert("machine".into(), "q35".into());
        let board = Board::from_package(&package(table)).unwrap().unwrap();
        assert_eq!(
            (board.default_gic(), board.machine(None).unwrap()),
            (None, "q35".to_owned())
        );
        let error = board.machine(Some(3)).unwrap_err().to_string();
        assert!(
            error.contains("has no GIC: --gic 3 cannot be given"),
            "{error}"
        );
        assert!(board.require_gic(None).is_err());
        // A {gic} placeholder needs GIC versions.
        let mut table = qemu_arm64();
        table.as_object_mut().unwrap().remove("gic-versions");
        let error = format!(
            "{:#}",
            Board::from_package(&package(table)).unwrap().unwrap_err()
        );
        assert!(error.contains("{gic} placeholder"), "{error}");
    }

    #[test]
    fn qemu_devices() {
        let board = Board::from_package(&package(qemu_arm64()))
            .unwrap()
            .unwrap();
        assert!(board.devices.is_empty());
        let mut table = qemu_arm64();
        table["qemu-devices"] = serde_json::json!(["edu,addr=0x5"]);
        let board = Board::from_package(&package(table)).unwrap().unwrap();
        assert_eq!(board.devices, ["edu,addr=0x5"]);
        for bad in [
            serde_json::json!("edu"),
            serde_json::json!([""]),
            serde_json::json!([5]),
        ] {
            let mut table = qemu_arm64();
            table["qemu-devices"] = bad;
            let error = format!(
                "{:#}",
                Board::from_package(&package(table)).unwrap().unwrap_err()
            );
            assert!(error.contains("`qemu-devices` must"), "{error}");
        }
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

    fn with_linux(mut table: Value) -> Value {
        table["config-address"] = 0x409c_0000u64.into();
        table["kernel-address"] = 0x40a0_0000u64.into();
        table["system-config"] = "config/system-gicv{gic}.toml".into();
        table["linux-append"] = "console=ttyAMA0 earlycon=pl011,0x9000000".into();
        table
    }

    #[test]
    fn parses_the_linux_keys() {
        let board = Board::from_package(&package(qemu_arm64()))
            .unwrap()
            .unwrap();
        assert_eq!(board.linux, None);
        let error = board.linux().unwrap_err().to_string();
        assert!(error.contains("board test does not boot Linux"), "{error}");
        assert!(error.contains("--no-linux"), "{error}");

        let mut table = with_linux(qemu_arm64());
        table["linux-dtb"] = "xilinx/zynqmp-zcu102-rev1.0.dtb".into();
        table["linux-dtb-fixed-clock"] = serde_json::json!({
            "frequency": 100_000_000,
            "nodes": ["/axi/serial@ff000000", "/axi/serial@ff010000"],
        });
        let mut package = package(table);
        package["manifest_path"] = "/w/platforms/test/Cargo.toml".into();
        let board = Board::from_package(&package).unwrap().unwrap();
        let linux = board.linux().unwrap();
        assert_eq!(
            *linux,
            LinuxBoot {
                config_address: 0x409c_0000,
                kernel_address: 0x40a0_0000,
                system_config: "config/system-gicv{gic}.toml".into(),
                append: "console=ttyAMA0 earlycon=pl011,0x9000000".into(),
                dtb: Some("xilinx/zynqmp-zcu102-rev1.0.dtb".into()),
                fixed_clock: Some(FixedClock {
                    frequency: 100_000_000,
                    nodes: vec!["/axi/serial@ff000000".into(), "/axi/serial@ff010000".into()],
                }),
            }
        );
        assert_eq!(linux.config_room(), 0x4_0000);
        let (source, binary) = board
            .system_config(2, Path::new("/w/target/images/test"))
            .unwrap();
        assert_eq!(
            source,
            Path::new("/w/platforms/test/config/system-gicv2.toml")
        );
        assert_eq!(binary, Path::new("/w/target/images/test/system-gicv2.bin"));
        let error = board.system_config(4, Path::new("")).unwrap_err();
        assert!(error.to_string().contains("--gic must be one of 2, 3"));
    }

    #[test]
    fn rejects_incomplete_or_bad_linux_keys() {
        let error = |table: Value| {
            let error = Board::from_package(&package(table)).unwrap().unwrap_err();
            format!("{error:#}")
        };
        let mut table = with_linux(qemu_arm64());
        table.as_object_mut().unwrap().remove("linux-append");
        let message = error(table);
        assert!(
            message.contains(
                "config-address, kernel-address, system-config given but not linux-append"
            ),
            "{message}"
        );
        let mut table = qemu_arm64();
        table["linux-dtb"] = "a.dtb".into();
        assert!(error(table).contains("`linux-dtb` needs the other Linux keys"));
        let mut table = with_linux(qemu_arm64());
        table["linux-dtb-fixed-clock"] = serde_json::json!({ "frequency": 1, "nodes": ["/a"] });
        assert!(error(table).contains("`linux-dtb-fixed-clock` needs `linux-dtb`"));
        for bad in [
            serde_json::json!({ "nodes": ["/a"] }),
            serde_json::json!({ "frequency": 0, "nodes": ["/a"] }),
            serde_json::json!({ "frequency": 1, "nodes": [] }),
            serde_json::json!({ "frequency": 1, "nodes": ["a"] }),
            serde_json::json!("/a"),
        ] {
            let mut table = with_linux(qemu_arm64());
            table["linux-dtb"] = "a.dtb".into();
            table["linux-dtb-fixed-clock"] = bad.clone();
            let message = error(table);
            assert!(
                message.contains("`linux-dtb-fixed-clock` must be a table"),
                "{bad}: {message}"
            );
        }
        let mut table = with_linux(qemu_arm64());
        table["kernel-address"] = "0x40a00000".into();
        assert!(error(table).contains("`kernel-address` must be an address"));
        let mut table = with_linux(qemu_arm64());
        table["config-address"] = 0x40a0_0000u64.into();
        let message = error(table);
        assert!(
            message.contains("`config-address` (0x40a00000) must be below `kernel-address`"),
            "{message}"
        );
        let mut table = with_linux(qemu_arm64());
        table["system-config"] = "".into();
        assert!(error(table).contains("`system-config` must be a non-empty string"));
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
