//! What QEMU boots on a board: the hypervisor alone, Linux alone ("bare", the baseline), or
//! the hypervisor with Linux as its root cell, and the files each needs.
//!
//! The root-cell boot protocol: QEMU starts the hypervisor as a Linux arm64 `Image`
//! (`-kernel cellvisor.bin`), so it loads the initramfs (`-initrd`) and writes the kernel
//! command line (`-append`) and the initramfs location into `/chosen` of the device tree whose
//! address it passes in x0. Two generic loader devices put the system configuration at the
//! board's `config-address` and the root cell's kernel `Image` at its `kernel-address`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use cellvisor_config::{MemoryFlags, SystemConfig};

use crate::board::Board;
use crate::linux::{self, Arch};
use crate::qemu::{Options, Qemu};

/// The device-tree blob magic number, big endian (Devicetree Specification 5.2).
const FDT_MAGIC: [u8; 4] = [0xd0, 0x0d, 0xfe, 0xed];

/// What Linux gets besides the hypervisor.
#[derive(Debug, Clone)]
pub struct LinuxFiles {
    /// The kernel image (`Image` on arm64).
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// The device tree passed instead of QEMU's own, if any.
    pub dtb: Option<PathBuf>,
    /// The kernel command line.
    pub append: String,
}

/// What QEMU boots.
#[derive(Debug, Clone)]
pub enum Boot {
    /// The hypervisor alone (bring-up): it prints its banner and idles.
    Hypervisor {
        /// The hypervisor image.
        image: PathBuf,
        /// A device tree for QEMU to pass, if any.
        dtb: Option<PathBuf>,
    },
    /// Linux straight on QEMU, without the hypervisor.
    Bare(LinuxFiles),
    /// The hypervisor with Linux as its root cell.
    RootCell {
        /// The hypervisor image (`cellvisor.bin`).
        image: PathBuf,
        /// The compiled system configuration.
        config: PathBuf,
        /// The root cell's Linux.
        linux: LinuxFiles,
    },
    /// The hypervisor with Linux as its root cell, both from QEMU's Multiboot loader: the
    /// kernel and initramfs are its modules, the kernel command line its own (x86, see
    /// [`crate::board::MultibootLinux`]).
    MultibootRootCell {
        /// The hypervisor image (`cellvisor.bin`, with a Multiboot header).
        image: PathBuf,
        /// The compiled system configuration (the third module).
        config: PathBuf,
        /// The root cell's Linux (no device tree).
        linux: LinuxFiles,
    },
}

impl Boot {
    /// The QEMU command line (paths are shown as given: make them relative to the workspace
    /// root, QEMU's working directory, for readable commands).
    pub fn qemu(&self, board: &Board, options: &Options) -> Result<Qemu> {
        Ok(match self {
            Self::Hypervisor { image, dtb } => {
                let qemu = Qemu::new(board, options, image)?;
                match dtb {
                    Some(dtb) => qemu.dtb(dtb),
                    None => qemu,
                }
            }
            Self::Bare(linux) => Qemu::new(board, options, &linux.kernel)?.linux(
                &linux.initrd,
                &linux.append,
                linux.dtb.as_deref(),
            ),
            Self::RootCell {
                image,
                config,
                linux,
            } => {
                let addresses = board.linux()?;
                Qemu::new(board, options, image)?
                    .linux(&linux.initrd, &linux.append, linux.dtb.as_deref())
                    .load(config, addresses.config_address)
                    .load(&linux.kernel, addresses.kernel_address)
            }
            Self::MultibootRootCell {
                image,
                config,
                linux,
            } => Qemu::new(board, options, image)?
                .multiboot(&[&linux.kernel, &linux.initrd, config], &linux.append),
        })
    }
}

/// Fails unless `path` is an existing file; `flag` names the option it came from.
pub fn require_file(flag: &str, path: &Path) -> Result<()> {
    match fs::metadata(path) {
        Ok(metadata) if metadata.is_file() => Ok(()),
        Ok(_) => bail!("{flag}: {} is not a file", path.display()),
        Err(error) => bail!("{flag}: cannot read {}: {error}", path.display()),
    }
}

/// Fails unless `path` is a kernel image of `arch` (an arm64 `Image`, an amd64 `bzImage`).
pub fn check_kernel(flag: &str, path: &Path, arch: Arch) -> Result<()> {
    use std::io::Read as _;
    require_file(flag, path)?;
    let mut header = Vec::new();
    fs::File::open(path)
        .and_then(|file| {
            file.take(linux::IMAGE_HEADER_LEN as u64)
                .read_to_end(&mut header)
        })
        .with_context(|| format!("{flag}: cannot read {}", path.display()))?;
    arch.check_image(&header).with_context(|| {
        format!(
            "{flag}: {} is no {} Linux {}",
            path.display(),
            arch.debian(),
            arch.image_name()
        )
    })
}

/// Fails unless `path` is a flattened device tree.
pub fn check_dtb(flag: &str, path: &Path) -> Result<()> {
    require_file(flag, path)?;
    let data = fs::read(path).with_context(|| format!("{flag}: cannot read {}", path.display()))?;
    if data.get(..4) != Some(&FDT_MAGIC[..]) {
        bail!(
            "{flag}: {} is no device tree blob (it does not start with the magic 0xd00dfeed)",
            path.display()
        );
    }
    Ok(())
}

/// The device tree a board's Linux boots with by default in QEMU (`linux-dtb`, from the
/// kernel's device trees in `dtbs`, with the board's `linux-dtb-fixed-clock` applied and
/// written next to `dtbs` into `dtbs-qemu/`); `None` if QEMU generates one.
pub fn board_dtb(board: &Board, dtbs: &Path) -> Result<Option<PathBuf>> {
    let linux = board.linux()?;
    let Some(relative) = linux.dtb.as_deref() else {
        return Ok(None);
    };
    let dtb = dtbs.join(relative);
    if !dtb.is_file() {
        bail!(
            "board {}: linux-dtb {relative:?} is not in {} (fix `linux-dtb` in its \
             [package.metadata.cellvisor] table, or pass --dtb)",
            board.name,
            dtbs.display()
        );
    }
    let Some(clock) = &linux.fixed_clock else {
        return Ok(Some(dtb));
    };
    let stock = fs::read(&dtb).with_context(|| format!("cannot read {}", dtb.display()))?;
    let patched = crate::qemu_dtb::with_fixed_clock(&stock, clock).with_context(|| {
        format!(
            "board {}: linux-dtb-fixed-clock on {}",
            board.name,
            dtb.display()
        )
    })?;
    let out = dtbs.with_file_name("dtbs-qemu").join(relative);
    if fs::read(&out).ok().as_deref() != Some(patched.as_slice()) {
        if let Some(dir) = out.parent() {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        fs::write(&out, patched).with_context(|| format!("cannot write {}", out.display()))?;
    }
    Ok(Some(out))
}

/// The compiled default system configuration of `board` for GIC version `gic`, as
/// `cargo xtask build` wrote it into `images` (the board's `target/images/<board>/`).
pub fn board_config(board: &Board, gic: u32, images: &Path) -> Result<PathBuf> {
    let (source, binary) = board.system_config(gic, images)?;
    if !source.is_file() {
        bail!(
            "board {}: system-config {} (for GICv{gic}) does not exist (fix `system-config` in \
             its [package.metadata.cellvisor] table, or pass --config)",
            board.name,
            source.display()
        );
    }
    if !binary.is_file() {
        bail!(
            "board {}: {} was not compiled into {} (`cargo xtask build --board {}` does)",
            board.name,
            source.display(),
            binary.display(),
            board.name
        );
    }
    Ok(binary)
}

/// A system configuration: its binary and what the tests need to know about it.
#[derive(Debug, Clone)]
pub struct SystemFacts {
    /// Start of the hypervisor's memory (`[hypervisor] start`).
    pub hypervisor_start: u64,
    /// The root cell's name.
    pub root_cell: String,
    /// Bytes of RAM the root cell's kernel gets: its memory regions that are neither `io` nor
    /// `loadable` (RAM kept for cells, left out of the kernel's device tree).
    pub root_ram: u64,
}

impl SystemFacts {
    /// The facts of a parsed configuration.
    pub fn new(config: &SystemConfig) -> Self {
        Self {
            hypervisor_start: config.hypervisor_memory.start,
            root_cell: config.root_cell.name.clone(),
            root_ram: config
                .root_cell
                .memory_regions
                .iter()
                .filter(|region| {
                    !region
                        .flags
                        .intersects(MemoryFlags::IO | MemoryFlags::LOADABLE)
                })
                .map(|region| region.size)
                .sum(),
        }
    }
}

/// Reads a system configuration: a `.bin` is validated, a `.toml` compiled (every problem
/// reported). Returns the binary and the parsed configuration; `flag` names the option the
/// file came from.
pub fn read_config(flag: &str, path: &Path) -> Result<(Vec<u8>, SystemConfig)> {
    require_file(flag, path)?;
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match extension {
        "toml" => {
            let text = fs::read_to_string(path)
                .with_context(|| format!("{flag}: cannot read {}", path.display()))?;
            if !cellvisor_config::text::is_system_toml(&text) {
                bail!(
                    "{flag}: {} is a cell configuration (it has no [root-cell] table), not a \
                     system configuration",
                    path.display()
                );
            }
            let name = path.display().to_string();
            let source = cellvisor_config::host::Source {
                name: &name,
                text: &text,
            };
            let (config, bytes) =
                cellvisor_config::host::compile_system(&source).map_err(|problems| {
                    let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
                    anyhow::anyhow!(
                        "{flag}: {} is no valid system configuration: {}",
                        path.display(),
                        problems.join("; ")
                    )
                })?;
            Ok((bytes, config))
        }
        "bin" => {
            let bytes = fs::read(path)
                .with_context(|| format!("{flag}: cannot read {}", path.display()))?;
            let config = SystemConfig::from_bytes(&bytes).map_err(|error| {
                anyhow::anyhow!(
                    "{flag}: {} is no valid compiled system configuration: {error}",
                    path.display()
                )
            })?;
            Ok((bytes, config))
        }
        _ => bail!(
            "{flag}: {} must be a system configuration, a .toml file or a compiled .bin",
            path.display()
        ),
    }
}

/// Fails unless a configuration of `size` bytes fits between the board's configuration and
/// kernel addresses.
pub fn check_config_size(flag: &str, path: &Path, size: usize, board: &Board) -> Result<()> {
    let linux = board.linux()?;
    if size as u64 > linux.config_room() {
        bail!(
            "{flag}: {} is {size} bytes, but only {} fit between config-address {:#x} and \
             kernel-address {:#x} of board {}",
            path.display(),
            linux.config_room(),
            linux.config_address,
            linux.kernel_address,
            board.name
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temporary(name: &str, data: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-boot-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        fs::write(&path, data).unwrap();
        path
    }

    const SYSTEM: &str = r#"
architecture = "aarch64"

[hypervisor]
start = 0x4020_0000
size = 0x80_0000

[interrupt-controller]
type = "gicv3"
distributor = 0x800_0000
redistributors = 0x80a_0000

[root-cell]
name = "linux"
cpus = "0-3"

[[root-cell.memory]]
phys = 0x4000_0000
size = 0x20_0000
flags = ["read", "write", "execute", "dma"]

[[root-cell.memory]]
phys = 0x40a0_0000
size = 0x3f60_0000
flags = ["read", "write", "execute", "dma"]

[[root-cell.memory]]
phys = 0x8000_0000
size = 0x100_0000
flags = ["read", "write", "execute", "dma", "loadable"]

[[root-cell.memory]]
phys = 0x900_0000
size = 0x1000
flags = ["read", "write", "io"]
"#;

    #[test]
    fn reads_toml_and_binary_configurations() {
        let toml = temporary("system.toml", SYSTEM.as_bytes());
        let (bytes, config) = read_config("--config", &toml).unwrap();
        let facts = SystemFacts::new(&config);
        assert_eq!(facts.hypervisor_start, 0x4020_0000);
        assert_eq!(facts.root_cell, "linux");
        // The loadable region is the cells', not the kernel's.
        assert_eq!(facts.root_ram, 0x20_0000 + 0x3f60_0000);

        let bin = temporary("system.bin", &bytes);
        let (again, _) = read_config("--config", &bin).unwrap();
        assert_eq!(again, bytes);
    }

    #[test]
    fn names_the_flag_and_the_reason() {
        let error = read_config("--config", Path::new("/nonexistent/system.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("--config: cannot read /nonexistent/system.toml"),
            "{error}"
        );
        let cell = temporary(
            "cell.toml",
            b"architecture = \"aarch64\"\nname = \"demo\"\n",
        );
        let error = read_config("--config", &cell).unwrap_err().to_string();
        assert!(error.contains("is a cell configuration"), "{error}");
        let bad = temporary("bad.toml", b"architecture = \"aarch64\"\n[root-cell]\n");
        let error = read_config("--config", &bad).unwrap_err().to_string();
        assert!(error.starts_with("--config: "), "{error}");
        assert!(error.contains("no valid system configuration"), "{error}");
        let garbage = temporary("garbage.bin", b"garbage");
        let error = read_config("--config", &garbage).unwrap_err().to_string();
        assert!(
            error.contains("no valid compiled system configuration"),
            "{error}"
        );
        let other = temporary("system.json", b"{}");
        let error = read_config("--config", &other).unwrap_err().to_string();
        assert!(error.contains("a .toml file or a compiled .bin"), "{error}");

        let error = check_dtb("--dtb", &garbage).unwrap_err().to_string();
        assert!(
            error.contains("--dtb: ") && error.contains("0xd00dfeed"),
            "{error}"
        );
        let dtb = temporary("a.dtb", &[0xd0, 0x0d, 0xfe, 0xed, 0, 0]);
        check_dtb("--dtb", &dtb).unwrap();

        let error = check_kernel("--kernel", &garbage, Arch::Arm64)
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("--kernel: "), "{error}");
        assert!(error.contains("no arm64 Linux Image"), "{error}");
        let mut image = vec![0; 64];
        image[56..60].copy_from_slice(b"ARM\x64");
        let image = temporary("Image", &image);
        check_kernel("--kernel", &image, Arch::Arm64).unwrap();
        let error = check_kernel("--kernel", &image, Arch::Amd64)
            .unwrap_err()
            .to_string();
        assert!(error.contains("no amd64 Linux bzImage"), "{error}");
        let mut bzimage = vec![0; 0x1000];
        bzimage[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
        bzimage[0x202..0x206].copy_from_slice(b"HdrS");
        bzimage[0x206..0x208].copy_from_slice(&0x020f_u16.to_le_bytes());
        bzimage[0x236] = 1;
        let bzimage = temporary("bzImage", &bzimage);
        check_kernel("--kernel", &bzimage, Arch::Amd64).unwrap();
        let dir = image.parent().unwrap();
        let error = require_file("--initrd", dir).unwrap_err().to_string();
        assert!(error.ends_with("is not a file"), "{error}");
    }
}
