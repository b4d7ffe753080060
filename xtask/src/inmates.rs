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
//!
//! The inmates are static position-independent executables (ELF type `ET_DYN`, linked at 0):
//! the same flat image runs in a cell at guest-physical 0 and bare on QEMU `virt` at
//! 0x4000_0000 (see `bare.rs`). Their `.rela.dyn`, which the runtime's `_start` applies for
//! the address it runs at, is part of the image; [`flatten`] checks that it is, and that it
//! holds only what `_start` can apply.

use std::fs;
use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use object::elf;
use object::read::elf::{FileHeader as _, ProgramHeader as _, SectionHeader as _};
use object::Endianness;

use crate::board::Board;
use crate::cargo::Cargo;
use crate::workspace::Workspace;

/// The package of the demo inmates.
pub const PACKAGE: &str = "cellvisor-inmates";
/// Its binaries, one inmate each.
pub const INMATES: [&str; 8] = [
    "timer-demo",
    "uart-demo",
    "stubborn-demo",
    "wild-demo",
    "gic-wild-demo",
    "ticker-demo",
    "hostile-demo",
    "raw-demo",
];
/// The inmates' Rust target.
const TARGET: &str = "aarch64-unknown-none";
/// Where a cell's RAM starts and the hypervisor enters the image: guest-physical 0.
const LOAD_ADDRESS: u64 = 0;
/// The RAM of the reference demo cells (`platforms/*/config/demo.toml`): an image, with its
/// `.bss` and stacks, must fit.
const MAX_IMAGE_SIZE: u64 = 16 << 20;

/// The package of the x86 inmates (`examples/inmates/x86`): 64-bit programs entered in
/// 32-bit protected mode, linked at 0 without relocations.
pub const PACKAGE_X86: &str = "cellvisor-inmates-x86";
/// Its binaries.
pub const INMATES_X86: [&str; 8] = [
    "timer-demo",
    "uart-demo",
    "stubborn-demo",
    "wild-demo",
    "ipi-wild-demo",
    "ioapic-wild-demo",
    "pci-demo",
    "smp-demo",
];
/// The x86 inmates' Rust target.
const TARGET_X86: &str = "x86_64-unknown-none";

/// Whether the inmates run on `board`: they are built for [`TARGET`] whatever the board's
/// image (its hypervisor may be soft-float); any bare-metal AArch64 board runs them, and
/// the x86 ones any x86-64 board.
pub fn runs_on(board: &Board) -> bool {
    board.target.starts_with(TARGET) || board.target == TARGET_X86
}

/// Builds the inmates for `board` and writes their flat images; returns their paths, in the
/// order of [`INMATES`].
pub fn build(workspace: &Workspace, board: &Board) -> Result<Vec<PathBuf>> {
    if !runs_on(board) {
        bail!(
            "board {}: the inmates are AArch64 ({TARGET}) or x86-64 ({TARGET_X86}) programs, the board's target is {}",
            board.name,
            board.target
        );
    }
    let (package, target, names, machine): (_, _, &[&str], _) = if board.target == TARGET_X86 {
        (PACKAGE_X86, TARGET_X86, &INMATES_X86, elf::EM_X86_64)
    } else {
        (PACKAGE, TARGET, &INMATES, elf::EM_AARCH64)
    };
    crate::require_target(target)?;
    Cargo::new(["build", "--release", "-p", package, "--target", target]).run()?;

    let built = workspace.target_dir.join(target).join("release");
    let dir = workspace
        .target_dir
        .join("images")
        .join(&board.name)
        .join("inmates");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    for name in names {
        let source = built.join(name);
        let data =
            fs::read(&source).with_context(|| format!("cannot read {}", source.display()))?;
        let flat = flatten_for(&data, machine).with_context(|| format!("{}", source.display()))?;
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
/// (position-independent or not) linked at guest-physical 0, entered at its first byte, that
/// fits the demo cells' RAM, and whose dynamic relocations (if any) the runtime can apply:
/// R_AARCH64_RELATIVE entries of 64-bit aligned places in the image, listed in the image.
#[cfg(test)]
pub fn flatten(data: &[u8]) -> Result<Vec<u8>> {
    flatten_for(data, elf::EM_AARCH64)
}

/// [`flatten`] for an ELF of `machine` (`EM_AARCH64` or `EM_X86_64`; an x86 inmate is linked
/// without dynamic relocations, and any it had would be refused).
fn flatten_for(data: &[u8], machine: elf::Machine) -> Result<Vec<u8>> {
    flatten_at(data, machine, LOAD_ADDRESS, true)
}

/// Where the x86 `bare-loader` (`examples/inmates/x86/src/bin/bare-loader.rs`) is linked: a
/// Multiboot kernel at 1 MiB.
pub const BARE_LOADER_ADDRESS: u64 = 0x10_0000;

/// Builds the x86 inmates' `bare-loader` and returns its flat image (a Multiboot kernel whose
/// header gives its load address, [`BARE_LOADER_ADDRESS`]).
pub fn bare_loader(workspace: &Workspace) -> Result<Vec<u8>> {
    crate::require_target(TARGET_X86)?;
    Cargo::new([
        "build",
        "--release",
        "-p",
        PACKAGE_X86,
        "--target",
        TARGET_X86,
    ])
    .run()?;
    let source = workspace
        .target_dir
        .join(TARGET_X86)
        .join("release")
        .join("bare-loader");
    let data = fs::read(&source).with_context(|| format!("cannot read {}", source.display()))?;
    // Its Multiboot header comes first and names the entry: no entry at the first byte.
    flatten_at(&data, elf::EM_X86_64, BARE_LOADER_ADDRESS, false)
        .with_context(|| format!("{}", source.display()))
}

/// [`flatten_for`] for an image linked at `load_address`, entered at its first byte if
/// `entry_at_start`.
fn flatten_at(
    data: &[u8],
    machine: elf::Machine,
    load_address: u64,
    entry_at_start: bool,
) -> Result<Vec<u8>> {
    let header = Header::parse(data).context("not a 64-bit ELF file")?;
    let endian = header.endian().context("bad ELF byte order")?;
    if header.e_machine(endian) != machine {
        bail!(
            "not an {} ELF file",
            if machine == elf::EM_X86_64 {
                "x86-64"
            } else {
                "AArch64"
            }
        );
    }
    let kind = header.e_type(endian);
    if kind != elf::ET_EXEC && kind != elf::ET_DYN {
        bail!(
            "not an executable (ELF type {}; an inmate is linked as a static PIE or at a fixed \
             address)",
            kind.0
        );
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
    if base != load_address {
        bail!(
            "the image starts at {base:#x}, not at guest-physical {load_address:#x}: built with \
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
    if entry_at_start && entry != base {
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
    check_relocations(header, endian, data, base, bytes.len() as u64)?;
    Ok(bytes)
}

/// Checks the dynamic relocations of an inmate whose flat image covers `size` bytes from
/// `base`: every relocation section the image has (allocated ones) must be RELA and lie
/// within the image, and each of its entries must be R_AARCH64_RELATIVE (symbol 0) with an
/// aligned 64-bit place within the image: that is all `_start` applies (`rt.rs`), before it
/// zeroes `.bss`.
fn check_relocations(
    header: &Header,
    endian: Endianness,
    data: &[u8],
    base: u64,
    size: u64,
) -> Result<()> {
    let inside = |address: u64, len: u64| {
        address >= base
            && address
                .checked_add(len)
                .is_some_and(|end| end <= base + size)
    };
    let sections = header
        .section_headers(endian, data)
        .context("bad ELF section headers")?;
    for section in sections {
        if section.sh_flags(endian).0 & elf::SHF_ALLOC.0 == 0 {
            continue;
        }
        let kind = section.sh_type(endian);
        let address = section.sh_addr(endian);
        if [
            elf::SHT_REL,
            elf::SHT_RELR,
            elf::SHT_CREL,
            elf::SHT_ANDROID_REL,
            elf::SHT_ANDROID_RELA,
            elf::SHT_ANDROID_RELR,
        ]
        .contains(&kind)
        {
            bail!(
                "the relocation section at {address:#x} has type {:#x}: the inmate runtime \
                 applies only RELA relocations (no -z pack-relative-relocs)",
                kind.0
            );
        }
        let Some((entries, _)) = section
            .rela(endian, data)
            .context("bad ELF relocation section")?
        else {
            continue;
        };
        if !inside(address, section.sh_size(endian)) {
            bail!(
                "the relocation section at {address:#x} is not part of the image \
                 ({base:#x}..{:#x}): the inmate linker script must place .rela.dyn before .bss",
                base + size
            );
        }
        for entry in entries {
            let place = entry.r_offset.get(endian);
            let (kind, symbol) = (entry.r_type(endian, false), entry.r_sym(endian, false));
            if kind != elf::R_AARCH64_RELATIVE || symbol != 0 {
                bail!(
                    "relocation of type {} (symbol {symbol}) at {place:#x}: the inmate runtime \
                     applies only R_AARCH64_RELATIVE ({}) relocations",
                    kind.0,
                    elf::R_AARCH64_RELATIVE.0
                );
            }
            if place % 8 != 0 || !inside(place, 8) {
                bail!(
                    "R_AARCH64_RELATIVE relocation at {place:#x}: the place must be an aligned \
                     64-bit word of the image ({base:#x}..{:#x})",
                    base + size
                );
            }
        }
    }
    Ok(())
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

    /// A minimal little-endian ELF64 executable of type `kind`; with `rela`, a section header
    /// table of a null section and an allocated `SHT_RELA` section over that segment's content.
    fn elf_with(
        kind: elf::FileType,
        machine: elf::Machine,
        entry: u64,
        segments: &[Segment<'_>],
        rela: Option<usize>,
    ) -> Vec<u8> {
        let phoff = 64u64;
        // Segment contents from an 8-aligned offset each, as relocation tables need.
        let mut offset = (phoff + 56 * segments.len() as u64).next_multiple_of(8);
        let mut offsets = Vec::new();
        for segment in segments {
            offsets.push(offset);
            offset = (offset + segment.content.len() as u64).next_multiple_of(8);
        }
        let shoff = if rela.is_some() { offset } else { 0 };
        let mut out = Vec::new();
        out.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&kind.0.to_le_bytes());
        out.extend_from_slice(&machine.0.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes()); // e_version
        out.extend_from_slice(&entry.to_le_bytes());
        out.extend_from_slice(&phoff.to_le_bytes());
        out.extend_from_slice(&shoff.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        out.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
        out.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
        out.extend_from_slice(&(segments.len() as u16).to_le_bytes());
        out.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
        out.extend_from_slice(&(if rela.is_some() { 2u16 } else { 0 }).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
        for (segment, offset) in segments.iter().zip(&offsets) {
            let filesz = segment.content.len() as u64;
            out.extend_from_slice(&elf::PT_LOAD.0.to_le_bytes());
            out.extend_from_slice(&(elf::PF_R.0 | elf::PF_X.0).to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            out.extend_from_slice(&segment.address.to_le_bytes()); // p_vaddr
            out.extend_from_slice(&segment.address.to_le_bytes()); // p_paddr
            out.extend_from_slice(&filesz.to_le_bytes());
            out.extend_from_slice(&(filesz + segment.bss).to_le_bytes()); // p_memsz
            out.extend_from_slice(&8u64.to_le_bytes()); // p_align
        }
        for (segment, offset) in segments.iter().zip(&offsets) {
            out.resize(*offset as usize, 0);
            out.extend_from_slice(segment.content);
        }
        if let Some(index) = rela {
            out.resize(shoff as usize, 0);
            out.extend_from_slice(&[0; 64]);
            let segment = &segments[index];
            out.extend_from_slice(&0u32.to_le_bytes()); // sh_name
            out.extend_from_slice(&elf::SHT_RELA.0.to_le_bytes());
            out.extend_from_slice(&elf::SHF_ALLOC.0.to_le_bytes());
            out.extend_from_slice(&segment.address.to_le_bytes()); // sh_addr
            out.extend_from_slice(&offsets[index].to_le_bytes());
            out.extend_from_slice(&(segment.content.len() as u64).to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes()); // sh_link
            out.extend_from_slice(&0u32.to_le_bytes()); // sh_info
            out.extend_from_slice(&8u64.to_le_bytes()); // sh_addralign
            out.extend_from_slice(&24u64.to_le_bytes()); // sh_entsize
        }
        out
    }

    /// [`elf_with`] for a non-PIE executable without sections.
    fn elf(machine: elf::Machine, entry: u64, segments: &[Segment<'_>]) -> Vec<u8> {
        elf_with(elf::ET_EXEC, machine, entry, segments, None)
    }

    /// `Elf64_Rela` entries.
    fn rela(entries: &[(u64, u64, u64)]) -> Vec<u8> {
        entries
            .iter()
            .flat_map(|&(offset, info, addend)| [offset, info, addend])
            .flat_map(u64::to_le_bytes)
            .collect()
    }

    /// A PIE: 16 bytes of code and data at 0, then its relocation table, then `.bss`.
    fn pie(entries: &[(u64, u64, u64)]) -> Vec<u8> {
        let table = rela(entries);
        elf_with(
            elf::ET_DYN,
            elf::EM_AARCH64,
            0,
            &[
                Segment {
                    address: 0,
                    content: &[0xaa; 16],
                    bss: 0,
                },
                Segment {
                    address: 16,
                    content: &table,
                    bss: 0x100,
                },
            ],
            Some(1),
        )
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
    fn keeps_the_relocations_of_a_pie_in_the_image() {
        let relative = u64::from(elf::R_AARCH64_RELATIVE.0);
        let entries = [(8, relative, 0x10), (16, relative, 0)];
        let flat = flatten(&pie(&entries)).unwrap();
        assert_eq!(flat.len(), 16 + 48);
        assert_eq!(flat[..16], [0xaa; 16]);
        assert_eq!(flat[16..], rela(&entries));
        assert_eq!(flatten(&pie(&[])).unwrap().len(), 16);
    }

    #[test]
    fn rejects_relocations_the_runtime_cannot_apply() {
        let error = |data: Vec<u8>| format!("{:#}", flatten(&data).unwrap_err());
        let relative = u64::from(elf::R_AARCH64_RELATIVE.0);
        let abs64 = u64::from(elf::R_AARCH64_ABS64.0);
        assert!(error(pie(&[(8, abs64 | 1 << 32, 0)])).contains("type 257 (symbol 1) at 0x8"));
        assert!(error(pie(&[(8, relative | 1 << 32, 0)])).contains("only R_AARCH64_RELATIVE"));
        assert!(error(pie(&[(4, relative, 0)])).contains("relocation at 0x4: the place"));
        // In .bss, which `_start` zeroes after relocating.
        assert!(error(pie(&[(64, relative, 0)])).contains("of the image (0x0..0x28)"));

        // A relocation table outside the loaded image.
        let table = rela(&[(8, relative, 0)]);
        let mut outside = elf_with(
            elf::ET_DYN,
            elf::EM_AARCH64,
            0,
            &[
                Segment {
                    address: 0,
                    content: &[0; 16],
                    bss: 0,
                },
                Segment {
                    address: 16,
                    content: &table,
                    bss: 0,
                },
            ],
            Some(1),
        );
        // Move the section to 0x1000 (sh_addr of section 1).
        let shoff = u64::from_le_bytes(outside[40..48].try_into().unwrap()) as usize;
        outside[shoff + 64 + 16..shoff + 64 + 24].copy_from_slice(&0x1000u64.to_le_bytes());
        assert!(error(outside).contains("not part of the image"));
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
        let object = elf_with(elf::ET_REL, elf::EM_AARCH64, 0, &[], None);
        assert!(error(object).contains("not an executable (ELF type 1"));
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
