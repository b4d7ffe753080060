//! Inmates: the demo programs for cells (package `cellvisor-inmates` in
//! `examples/inmates/demos`), built for `aarch64-unknown-none` in release mode and written to
//! `target/images/<board>/inmates/<name>.bin` (the flat image `cellvisor cell load` puts at
//! guest-physical 0) next to `<name>.elf` (for symbols when a fault report names an address).
//!
//! The images are the same for every AArch64 board: an inmate learns its GIC, UART and timer
//! from the communication region at run time.
//!
//! The flat image is what `llvm-objcopy -O binary <elf> <bin>` produces: the file content of
//! the `PT_LOAD` segments, each at its physical address minus 0; `.bss` and the stacks are not
//! in it (the inmate zeroes them).

use std::fs;
use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use object::elf;
use object::read::elf::{FileHeader as _, ProgramHeader as _};
use object::Endianness;

use crate::board::Board;
use crate::cargo::Cargo;
use crate::workspace::Workspace;

/// The package of the demo inmates.
pub const PACKAGE: &str = "cellvisor-inmates";
/// Its binaries, one inmate each.
pub const INMATES: [&str; 5] = [
    "timer-demo",
    "uart-demo",
    "stubborn-demo",
    "wild-demo",
    "gic-wild-demo",
];
/// The inmates' Rust target.
const TARGET: &str = "aarch64-unknown-none";
/// Where a cell's RAM starts and the hypervisor enters the image: guest-physical 0.
const LOAD_ADDRESS: u64 = 0;
/// The RAM of the reference demo cells (`platforms/*/config/demo.toml`): an image, with its
/// `.bss` and stacks, must fit.
const MAX_IMAGE_SIZE: u64 = 16 << 20;

/// Builds the inmates for `board` and writes their flat images; returns their paths, in the
/// order of [`INMATES`].
pub fn build(workspace: &Workspace, board: &Board) -> Result<Vec<PathBuf>> {
    if board.target != TARGET {
        bail!(
            "board {}: the inmates are AArch64 programs ({TARGET}), the board's target is {}",
            board.name,
            board.target
        );
    }
    crate::require_target(TARGET)?;
    Cargo::new(["build", "--release", "-p", PACKAGE, "--target", TARGET]).run()?;

    let built = workspace.target_dir.join(TARGET).join("release");
    let dir = workspace
        .target_dir
        .join("images")
        .join(&board.name)
        .join("inmates");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    for name in INMATES {
        let source = built.join(name);
        let data =
            fs::read(&source).with_context(|| format!("cannot read {}", source.display()))?;
        let flat = flatten(&data).with_context(|| format!("{}", source.display()))?;
        let elf = dir.join(format!("{name}.elf"));
        let bin = dir.join(format!("{name}.bin"));
        fs::write(&elf, &data).with_context(|| format!("cannot write {}", elf.display()))?;
        fs::write(&bin, &flat).with_context(|| format!("cannot write {}", bin.display()))?;
        println!(
            "{}: {} {} bytes",
            board.name,
            workspace.relative(&bin).display(),
            flat.len()
        );
        written.push(bin);
    }
    Ok(written)
}

type Header = elf::FileHeader64<Endianness>;

/// Converts an inmate ELF into its flat image, checking that it is an AArch64 executable
/// linked at guest-physical 0, entered at its first byte, that fits the demo cells' RAM.
pub fn flatten(data: &[u8]) -> Result<Vec<u8>> {
    let header = Header::parse(data).context("not a 64-bit ELF file")?;
    let endian = header.endian().context("bad ELF byte order")?;
    if header.e_machine(endian) != elf::EM_AARCH64 {
        bail!("not an AArch64 ELF file");
    }
    let loadable: Vec<_> = header
        .program_headers(endian, data)
        .context("bad ELF program headers")?
        .iter()
        .filter(|ph| ph.p_type(endian) == elf::PT_LOAD)
        .collect();
    let end = loadable
        .iter()
        .map(|ph| ph.p_paddr(endian).saturating_add(ph.p_memsz(endian)))
        .max()
        .unwrap_or(0);
    let mut segments: Vec<_> = loadable
        .into_iter()
        .filter(|ph| ph.p_filesz(endian) > 0)
        .collect();
    segments.sort_by_key(|ph| ph.p_paddr(endian));
    let Some(base) = segments.first().map(|ph| ph.p_paddr(endian)) else {
        bail!("the ELF has no loadable segment with file content");
    };
    if base != LOAD_ADDRESS {
        bail!(
            "the image starts at {base:#x}, not at guest-physical {LOAD_ADDRESS:#x}: built with \
             a bare-testing feature (bare-virt)?"
        );
    }
    if end - base > MAX_IMAGE_SIZE {
        bail!(
            "the image needs {:#x} bytes of RAM with its .bss and stacks, more than the demo \
             cells' {MAX_IMAGE_SIZE:#x}",
            end - base
        );
    }
    let entry = header.e_entry(endian);
    if entry != base {
        bail!("the ELF entry point {entry:#x} is not the start of the image ({base:#x})");
    }

    let mut bytes = Vec::new();
    for ph in &segments {
        let address = ph.p_paddr(endian);
        let offset = (address - base) as usize;
        let content = ph
            .data(endian, data)
            .map_err(|_| anyhow::anyhow!("segment at {address:#x} lies outside the file"))?;
        if offset < bytes.len() {
            bail!("segment at {address:#x} overlaps the one before it");
        }
        bytes.resize(offset, 0);
        bytes.extend_from_slice(content);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// One segment of a test ELF: physical (and virtual) address, file content, extra zeroed
    /// memory.
    struct Segment<'a> {
        address: u64,
        content: &'a [u8],
        bss: u64,
    }

    /// A minimal little-endian ELF64 executable without sections.
    fn elf(machine: elf::Machine, entry: u64, segments: &[Segment<'_>]) -> Vec<u8> {
        let phoff = 64u64;
        let mut offset = phoff + 56 * segments.len() as u64;
        let mut out = Vec::new();
        out.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&elf::ET_EXEC.0.to_le_bytes());
        out.extend_from_slice(&machine.0.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes()); // e_version
        out.extend_from_slice(&entry.to_le_bytes());
        out.extend_from_slice(&phoff.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
        out.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        out.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
        out.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
        out.extend_from_slice(&(segments.len() as u16).to_le_bytes());
        out.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
        out.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
        out.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
        for segment in segments {
            let filesz = segment.content.len() as u64;
            out.extend_from_slice(&elf::PT_LOAD.0.to_le_bytes());
            out.extend_from_slice(&(elf::PF_R.0 | elf::PF_X.0).to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            out.extend_from_slice(&segment.address.to_le_bytes()); // p_vaddr
            out.extend_from_slice(&segment.address.to_le_bytes()); // p_paddr
            out.extend_from_slice(&filesz.to_le_bytes());
            out.extend_from_slice(&(filesz + segment.bss).to_le_bytes()); // p_memsz
            out.extend_from_slice(&8u64.to_le_bytes()); // p_align
            offset += filesz;
        }
        for segment in segments {
            out.extend_from_slice(segment.content);
        }
        out
    }

    #[test]
    fn flattens_segments_at_their_offsets() {
        let data = elf(
            elf::EM_AARCH64,
            0,
            &[
                Segment {
                    address: 0,
                    content: &[1, 2, 3, 4],
                    bss: 0,
                },
                Segment {
                    address: 8,
                    content: &[5, 6],
                    bss: 0x1000,
                },
            ],
        );
        assert_eq!(flatten(&data).unwrap(), [1, 2, 3, 4, 0, 0, 0, 0, 5, 6]);
    }

    #[test]
    fn rejects_images_that_a_cell_cannot_run() {
        let error = |data: Vec<u8>| format!("{:#}", flatten(&data).unwrap_err());
        let one = |address, entry, bss| {
            elf(
                elf::EM_AARCH64,
                entry,
                &[Segment {
                    address,
                    content: &[0; 4],
                    bss,
                }],
            )
        };
        assert!(error(one(0x4000_0000, 0x4000_0000, 0)).contains("bare-virt"));
        assert!(error(one(0, 4, 0)).contains("entry point 0x4"));
        assert!(error(one(0, 0, 16 << 20)).contains("more than the demo cells'"));
        assert!(error(elf(elf::EM_X86_64, 0, &[])).contains("not an AArch64"));
        assert!(error(elf(elf::EM_AARCH64, 0, &[])).contains("no loadable segment"));
    }

    #[test]
    fn the_inmate_list_matches_the_package() {
        let manifest =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/inmates/demos/Cargo.toml");
        let text = fs::read_to_string(&manifest).unwrap();
        let mut bins: Vec<&str> = text
            .lines()
            .skip_while(|line| !line.starts_with("[[bin]]"))
            .filter_map(|line| line.strip_prefix("name = \""))
            .filter_map(|rest| rest.strip_suffix('"'))
            .collect();
        bins.sort_unstable();
        let mut expected = INMATES.to_vec();
        expected.sort_unstable();
        assert_eq!(bins, expected);
        assert!(text.contains(&format!("name = \"{PACKAGE}\"")));
    }
}
