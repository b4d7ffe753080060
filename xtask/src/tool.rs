//! The root cell's side of a board: the `cellvisor` management tool (`examples/cli`, a static
//! Linux binary for the root cell's architecture), the board's cell configurations and the
//! inmate images, as `cargo xtask build` installs them into `target/images/<board>/` and the
//! board's initramfs carries them (`/bin/cellvisor`, `/etc/cellvisor/`,
//! `/lib/cellvisor/inmates/`).
//!
//! The tool is built for the musl target of the architecture ([`AARCH64`]:
//! `aarch64-unknown-linux-musl`, linked by `rust-lld` as `.cargo/config.toml` says; [`X86_64`]:
//! `x86_64-unknown-linux-musl`, linked by the target's default, the host's `cc`): musl's C
//! runtime and libc come with the Rust target, so the result is static. The inmates are
//! AArch64 programs: boards of other architectures get none (see `inmates.rs`).

use std::fs;
use std::path::Path;

use anyhow::{bail, Context as _, Result};
use cellvisor_config::host;
use cellvisor_config::ConfigKind;
use object::elf;
use object::read::elf::{FileHeader as _, ProgramHeader as _};
use object::Endianness;

use crate::board::Board;
use crate::cargo::Cargo;
use crate::workspace::Workspace;

/// The package of the tool.
pub const PACKAGE: &str = "cellvisor-cli";
/// Its binary.
pub const BIN: &str = "cellvisor";
/// The Linux target the root cell's programs are built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// The Rust target, a musl one (static executables).
    pub triple: &'static str,
    /// ELF `e_machine` of its executables.
    pub machine: elf::Machine,
    /// The architecture as messages name it.
    pub name: &'static str,
}

/// The target of arm64 root cells.
pub const AARCH64: Target = Target {
    triple: "aarch64-unknown-linux-musl",
    machine: elf::EM_AARCH64,
    name: "AArch64",
};

/// The target of x86-64 root cells.
pub const X86_64: Target = Target {
    triple: "x86_64-unknown-linux-musl",
    machine: elf::EM_X86_64,
    name: "x86-64",
};

/// Builds the tool for `target` and returns the static executable.
pub fn build(workspace: &Workspace, target: Target) -> Result<Vec<u8>> {
    crate::require_target(target.triple)?;
    Cargo::new([
        "build",
        "--release",
        "-p",
        PACKAGE,
        "--target",
        target.triple,
    ])
    .run()?;
    let built = workspace
        .target_dir
        .join(target.triple)
        .join("release")
        .join(BIN);
    let data = fs::read(&built).with_context(|| format!("cannot read {}", built.display()))?;
    check_static(&data, target)
        .with_context(|| workspace.relative(&built).display().to_string())?;
    Ok(data)
}

/// Fails unless `data` is a 64-bit ELF executable for `target` without a program interpreter
/// (static: it runs in an initramfs without a dynamic loader).
pub fn check_static(data: &[u8], target: Target) -> Result<()> {
    let header = elf::FileHeader64::<Endianness>::parse(data).context("not a 64-bit ELF file")?;
    let endian = header.endian().context("bad ELF byte order")?;
    if header.e_machine(endian) != target.machine {
        bail!(
            "not an {} executable (ELF machine {})",
            target.name,
            header.e_machine(endian)
        );
    }
    if !matches!(header.e_type(endian), elf::ET_EXEC | elf::ET_DYN) {
        bail!("not an executable (ELF type {})", header.e_type(endian));
    }
    let headers = header
        .program_headers(endian, data)
        .context("bad ELF program headers")?;
    if headers.iter().any(|ph| ph.p_type(endian) == elf::PT_INTERP) {
        bail!(
            "dynamically linked (it names a program interpreter): the musl target must link \
             statically"
        );
    }
    Ok(())
}

/// A file for the root cell: its name and content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedFile {
    /// The file name (no directory).
    pub name: String,
    /// The content.
    pub data: Vec<u8>,
}

/// What the root cell of a board gets besides the base initramfs.
#[derive(Debug, Clone)]
pub struct RootCellFiles {
    /// The `cellvisor` executable.
    pub tool: Vec<u8>,
    /// The board's cell configurations: each TOML file and its compiled `.bin`.
    pub configs: Vec<NamedFile>,
    /// Inmate images (`*.bin`).
    pub inmates: Vec<NamedFile>,
}

/// The cell configurations of `board` (`platforms/<board>/config/` without the system
/// configurations), each as TOML and compiled, cross-checked against every system
/// configuration there.
pub fn cell_configs(board: &Board) -> Result<Vec<NamedFile>> {
    let dir = board.dir.join("config");
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let compiled = host::compile_directory(&dir)
        .map_err(|problems| anyhow::anyhow!("{}: configuration errors:\n{problems}", board.name))?;
    let mut files = Vec::new();
    for file in compiled.iter().filter(|f| f.kind == ConfigKind::Cell) {
        let stem = file
            .source
            .file_stem()
            .and_then(|s| s.to_str())
            .with_context(|| format!("{}: not a UTF-8 file name", file.source.display()))?;
        let text = fs::read(&file.source)
            .with_context(|| format!("cannot read {}", file.source.display()))?;
        files.push(NamedFile {
            name: format!("{stem}.toml"),
            data: text,
        });
        files.push(NamedFile {
            name: format!("{stem}.bin"),
            data: file.bytes.clone(),
        });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// Builds the inmates of `board` (see `inmates.rs`) and reads their images from
/// `target/images/<board>/inmates/`.
pub fn inmates(workspace: &Workspace, board: &Board) -> Result<Vec<NamedFile>> {
    let images = crate::inmates::build(workspace, board)?;
    images.iter().map(|path| named_file(path)).collect()
}

/// A file as a [`NamedFile`] under its own name.
fn named_file(path: &Path) -> Result<NamedFile> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{}: not a UTF-8 file name", path.display()))?;
    Ok(NamedFile {
        name: name.to_owned(),
        data: fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
    })
}

/// Builds everything the root cell of `board`, of architecture `target`, gets and installs
/// the tool as `target/images/<board>/cellvisor`. A board without cell configurations gets
/// none; one whose hypervisor is not AArch64 gets no inmates.
pub fn prepare(workspace: &Workspace, board: &Board, target: Target) -> Result<RootCellFiles> {
    let tool = build(workspace, target)?;
    let dir = workspace.target_dir.join("images").join(&board.name);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let installed = dir.join(BIN);
    write_executable(&installed, &tool)?;
    println!(
        "{}: {} {} bytes (static {} Linux executable)",
        board.name,
        workspace.relative(&installed).display(),
        tool.len(),
        target.name
    );
    let runs_inmates = crate::inmates::runs_on(board);
    let inmates = if runs_inmates {
        inmates(workspace, board)?
    } else {
        println!(
            "{}: no inmates for the board's target {}: the initramfs gets none",
            board.name, board.target
        );
        Vec::new()
    };
    let files = RootCellFiles {
        tool,
        configs: cell_configs(board)?,
        inmates,
    };
    if runs_inmates && files.inmates.is_empty() {
        println!(
            "{}: no inmate images in {}: the initramfs gets none",
            board.name,
            workspace.relative(&dir.join("inmates")).display()
        );
    }
    Ok(files)
}

/// Writes an executable file (mode 755 on Unix).
fn write_executable(path: &Path, data: &[u8]) -> Result<()> {
    fs::write(path, data).with_context(|| format!("cannot write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot make {} executable", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header and program headers of the given types.
    fn elf(machine: elf::Machine, kind: elf::FileType, segments: &[elf::ProgramType]) -> Vec<u8> {
        let mut out = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        out.extend_from_slice(&kind.0.to_le_bytes());
        out.extend_from_slice(&machine.0.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes()); // e_version
        out.extend_from_slice(&0x40_0000u64.to_le_bytes()); // e_entry
        out.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
        out.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
        out.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        for half in [64u16, 56, segments.len() as u16, 64, 0, 0] {
            out.extend_from_slice(&half.to_le_bytes());
        }
        for &kind in segments {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&kind.0.to_le_bytes());
            out.extend_from_slice(&ph);
        }
        out
    }

    #[test]
    fn accepts_static_executables_of_the_target_only() {
        let load = elf::PT_LOAD;
        let check = |machine, kind, segments: &[elf::ProgramType]| {
            check_static(&elf(machine, kind, segments), AARCH64)
        };
        check(elf::EM_AARCH64, elf::ET_EXEC, &[load, load]).unwrap();
        // static-pie: ET_DYN without an interpreter.
        check(elf::EM_AARCH64, elf::ET_DYN, &[load, elf::PT_DYNAMIC]).unwrap();
        let error = check(elf::EM_AARCH64, elf::ET_DYN, &[elf::PT_INTERP])
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("dynamically linked"), "{error}");
        let error = check(elf::EM_X86_64, elf::ET_EXEC, &[load])
            .unwrap_err()
            .to_string();
        assert!(error.contains("not an AArch64 executable"), "{error}");
        let error = check(elf::EM_AARCH64, elf::ET_REL, &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("not an executable"), "{error}");
        assert!(check_static(b"#!/bin/sh\n", AARCH64).is_err());

        check_static(&elf(elf::EM_X86_64, elf::ET_EXEC, &[load]), X86_64).unwrap();
        let error = check_static(&elf(elf::EM_AARCH64, elf::ET_EXEC, &[load]), X86_64)
            .unwrap_err()
            .to_string();
        assert!(error.contains("not an x86-64 executable"), "{error}");
    }

    #[test]
    fn takes_the_cell_configurations_of_a_board() {
        let board = Board {
            name: "qemu-arm64".to_owned(),
            package: "cellvisor-board-qemu-arm64".to_owned(),
            version: "0.1.0".to_owned(),
            bin: "cellvisor-qemu-arm64".to_owned(),
            target: "aarch64-unknown-none".to_owned(),
            qemu: "qemu-system-aarch64".to_owned(),
            machine: "virt".to_owned(),
            gic_versions: vec![2, 3],
            cpu: None,
            smp: 4,
            memory: "1G".to_owned(),
            devices: Vec::new(),
            dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("../platforms/qemu-arm64"),
            linux: None,
            multiboot: None,
        };
        let files = cell_configs(&board).unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert!(
            names.contains(&"demo.toml") && names.contains(&"demo.bin"),
            "{names:?}"
        );
        assert!(names.iter().all(|n| !n.starts_with("system")), "{names:?}");
        let bin = &files.iter().find(|f| f.name == "demo.bin").unwrap().data;
        assert_eq!(&bin[..4], b"CVCF");

        let path = std::env::temp_dir().join(format!("xtask-inmate-{}.bin", std::process::id()));
        fs::write(&path, b"image").unwrap();
        let file = named_file(&path).unwrap();
        assert_eq!(file.name, path.file_name().unwrap().to_str().unwrap());
        assert_eq!(file.data, b"image");
        fs::remove_file(&path).unwrap();
        assert!(named_file(Path::new("/nonexistent/x.bin")).is_err());
    }
}
