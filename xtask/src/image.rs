//! Hypervisor images: `cargo build` of a board package, then the ELF and the flat binary under
//! `target/images/<board>/` (fault-injection builds: `target/images/<board>/fault-injection/`).
//!
//! The flat binary (`cellvisor.bin`) holds the file content of the ELF's `PT_LOAD` segments,
//! each at its physical address minus the lowest one; zero-initialised memory (`.bss`, stacks)
//! is not in it. For arm64 it must start with a Linux `Image` header, which is what boot loaders
//! expect, and the ELF entry point must be its first byte.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use object::elf;
use object::read::elf::{FileHeader as _, ProgramHeader as _, SectionHeader as _};
use object::Endianness;

use crate::board::Board;
use crate::cargo::Cargo;
use crate::workspace::Workspace;

/// Offset of the magic number in the arm64 Linux `Image` header.
const ARM64_MAGIC_OFFSET: usize = 56;
/// "ARM\x64", little endian.
const ARM64_MAGIC: u32 = 0x644d_5241;
/// Refuse flat images larger than this: segments that far apart are a linker-script mistake.
const MAX_FLAT_SIZE: u64 = 256 << 20;

/// Which image of a board.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The hypervisor as shipped.
    Normal,
    /// Built with the `fault-injection` feature: it faults on purpose after booting.
    FaultInjection,
}

/// The files of a built image.
#[derive(Debug, Clone)]
pub struct Image {
    /// The ELF, for QEMU's `-kernel` (loaded at its link address).
    pub elf: PathBuf,
    /// The flat binary, for boot loaders.
    pub bin: PathBuf,
    /// The sizes of the ELF's main sections.
    pub sizes: Sizes,
}

/// Builds the image of `board` and writes its ELF and flat binary.
pub fn build(workspace: &Workspace, board: &Board, kind: Kind) -> Result<Image> {
    crate::require_target(&board.target)?;
    let mut cargo = Cargo::new([
        "build",
        "--release",
        "-p",
        &board.package,
        "--target",
        &board.target,
    ]);
    if kind == Kind::FaultInjection {
        cargo = cargo.args(["--features", "fault-injection"]);
    }
    cargo.run()?;

    // Normal and fault-injection builds share this path: read it right after building.
    let built = workspace
        .target_dir
        .join(&board.target)
        .join("release")
        .join(&board.bin);
    let data = fs::read(&built).with_context(|| format!("cannot read {}", built.display()))?;
    let flat = flatten(&data).with_context(|| format!("{}", built.display()))?;

    let mut dir = workspace.target_dir.join("images").join(&board.name);
    if kind == Kind::FaultInjection {
        dir.push("fault-injection");
    }
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let image = Image {
        elf: dir.join("cellvisor.elf"),
        bin: dir.join("cellvisor.bin"),
        sizes: flat.sizes,
    };
    fs::write(&image.elf, &data)
        .with_context(|| format!("cannot write {}", image.elf.display()))?;
    fs::write(&image.bin, &flat.bytes)
        .with_context(|| format!("cannot write {}", image.bin.display()))?;
    if kind == Kind::Normal {
        compile_configs(workspace, board, &dir)?;
    }
    println!(
        "{}: {} {} bytes ({})",
        board.name,
        workspace.relative(&image.bin).display(),
        flat.bytes.len(),
        flat.sizes
    );
    Ok(image)
}

/// A flat image and the sizes of the ELF's main sections.
#[derive(Debug)]
pub struct Flat {
    /// The image bytes.
    pub bytes: Vec<u8>,
    /// Section sizes.
    pub sizes: Sizes,
}

/// Sizes of the sections of an image, in bytes (0 for a missing section).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    pub text: u64,
    pub rodata: u64,
    pub data: u64,
    pub bss: u64,
    pub stacks: u64,
}

impl fmt::Display for Sizes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "text {}, rodata {}, data {}, bss {} + stacks {}",
            self.text, self.rodata, self.data, self.bss, self.stacks
        )
    }
}

type Header = elf::FileHeader64<Endianness>;

/// Converts a 64-bit ELF executable into a flat image and checks the result.
pub fn flatten(data: &[u8]) -> Result<Flat> {
    let header = Header::parse(data).context("not a 64-bit ELF file")?;
    let endian = header.endian().context("bad ELF byte order")?;
    let mut segments: Vec<_> = header
        .program_headers(endian, data)
        .context("bad ELF program headers")?
        .iter()
        .filter(|ph| ph.p_type(endian) == elf::PT_LOAD && ph.p_filesz(endian) > 0)
        .collect();
    segments.sort_by_key(|ph| ph.p_paddr(endian));
    let Some(base) = segments.first().map(|ph| ph.p_paddr(endian)) else {
        bail!("the ELF has no loadable segment with file content");
    };

    let mut bytes = Vec::new();
    for ph in &segments {
        let offset = ph.p_paddr(endian) - base;
        let content = ph.data(endian, data).map_err(|_| {
            anyhow::anyhow!("segment at {:#x} lies outside the file", base + offset)
        })?;
        let end = offset + content.len() as u64;
        if end > MAX_FLAT_SIZE {
            bail!("segment at {:#x} ends {end:#x} bytes after the image start {base:#x}: too far apart for a flat image", base + offset);
        }
        let (offset, end) = (offset as usize, end as usize);
        if offset < bytes.len() {
            bail!(
                "segment at {:#x} overlaps the one before it",
                base + offset as u64
            );
        }
        bytes.resize(end, 0);
        bytes[offset..end].copy_from_slice(content);
    }

    let sections = header
        .sections(endian, data)
        .context("bad ELF section headers")?;
    if header.e_machine(endian) == elf::EM_AARCH64 {
        check_arm64_image(&bytes)?;
        // Boot loaders jump to the first byte of the image; QEMU jumps to the ELF entry.
        let entry = header.e_entry(endian);
        let entry_paddr = segments.iter().find_map(|ph| {
            let start = ph.p_vaddr(endian);
            (start..start + ph.p_memsz(endian))
                .contains(&entry)
                .then(|| ph.p_paddr(endian) + (entry - start))
        });
        if entry_paddr != Some(base) {
            bail!("the ELF entry point {entry:#x} is not the start of the image ({base:#x})");
        }
        if let Some((_, text)) = sections.section_by_name(endian, b".text") {
            let code = text
                .data(endian, data)
                .map_err(|_| anyhow::anyhow!(".text lies outside the file"))?;
            let start = text.sh_addr(endian);
            let allowed = symbol_range(data, FP_SIMD_SCRUB);
            let found: Vec<u64> = fp_simd_instructions(code)
                .into_iter()
                .map(|offset| start + offset)
                .filter(|address| !allowed.as_ref().is_some_and(|r| r.contains(address)))
                .collect();
            if let Some(&first) = found.first() {
                bail!(
                    "{} FP/SIMD instruction(s) in .text, the first at {first:#x}: the hypervisor \
                     must not touch the FP/SIMD registers, which hold the cell's state during a \
                     trap (build it for a soft-float target; only `{FP_SIMD_SCRUB}`, which zeroes \
                     them between two vCPUs, may)",
                    found.len(),
                );
            }
        }
    }

    if header.e_machine(endian) == elf::EM_X86_64 {
        check_multiboot_image(&bytes, base)?;
    }

    let section = |name: &str| {
        sections
            .section_by_name(endian, name.as_bytes())
            .map_or(0, |(_, section)| section.sh_size(endian))
    };
    let sizes = Sizes {
        text: section(".text"),
        rodata: section(".rodata"),
        data: section(".data"),
        bss: section(".bss"),
        stacks: section(".stacks"),
    };
    Ok(Flat { bytes, sizes })
}

/// The one function of the image allowed to use FP/SIMD registers: it zeroes them before a
/// CPU enters a new vCPU (`arch/aarch64/src/hw/scrub.rs`).
const FP_SIMD_SCRUB: &str = "cellvisor_scrub_fp_simd";

/// The address range of the ELF symbol `name` (by its `st_size`), if the file has it.
fn symbol_range(data: &[u8], name: &str) -> Option<std::ops::Range<u64>> {
    use object::{Object as _, ObjectSymbol as _};
    let file = object::File::parse(data).ok()?;
    let symbol = file.symbols().find(|s| s.name() == Ok(name))?;
    Some(symbol.address()..symbol.address() + symbol.size())
}

/// Offsets of the A64 instructions in `code` that use the FP/SIMD registers (Arm ARM C4.1,
/// the top-level encoding by op0 = bits 28:25): loads and stores with V (bit 26) set, x110,
/// and the scalar FP and Advanced SIMD data processing group, x111.
fn fp_simd_instructions(code: &[u8]) -> Vec<u64> {
    code.chunks_exact(4)
        .enumerate()
        .filter(|(_, word)| {
            let word = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
            matches!(word >> 25 & 0b111, 0b110 | 0b111)
        })
        .map(|(i, _)| i as u64 * 4)
        .collect()
}

/// Checks that the flat x86 image `image`, loaded at `base`, has a Multiboot header that a
/// loader takes it by (Multiboot Specification 0.6.96 §3.1): the magic in the first 8 KiB,
/// 4-byte aligned, a checksum that makes the first three words sum to zero, the address
/// fields (flag 16) with `load_addr` = `base` and the header where `header_addr` says.
fn check_multiboot_image(image: &[u8], base: u64) -> Result<()> {
    const MAGIC: u32 = 0x1bad_b002;
    const ADDRESS_FIELDS: u32 = 1 << 16;
    let word = |at: usize| {
        image
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let Some(at) = (0..image.len().min(8192))
        .step_by(4)
        .find(|&at| word(at) == Some(MAGIC))
    else {
        bail!("the x86 image has no Multiboot header (magic {MAGIC:#x}) in its first 8 KiB");
    };
    let field = |n: usize| word(at + 4 * n).unwrap_or(0);
    if field(0).wrapping_add(field(1)).wrapping_add(field(2)) != 0 {
        bail!("the Multiboot header at offset {at:#x} has a wrong checksum");
    }
    if field(1) & ADDRESS_FIELDS == 0 {
        bail!("the Multiboot header at offset {at:#x} has no address fields (flag 16): a loader would want a 32-bit ELF");
    }
    let (header_addr, load_addr) = (u64::from(field(3)), u64::from(field(4)));
    if load_addr != base || header_addr != base + at as u64 {
        bail!(
            "the Multiboot header says load_addr {load_addr:#x} and header_addr {header_addr:#x},              but the image starts at {base:#x} with the header at offset {at:#x}"
        );
    }
    Ok(())
}

/// Checks that `image` starts with an arm64 Linux `Image` header.
fn check_arm64_image(image: &[u8]) -> Result<()> {
    let magic = image
        .get(ARM64_MAGIC_OFFSET..ARM64_MAGIC_OFFSET + 4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
    if magic != Some(ARM64_MAGIC) {
        let found = magic.map_or_else(
            || format!("an image of only {} bytes", image.len()),
            |m| format!("{m:#010x}"),
        );
        bail!(
            "the image does not start with an arm64 Linux Image header: expected the magic \
             \"ARM\\x64\" ({ARM64_MAGIC:#010x}) at offset {ARM64_MAGIC_OFFSET}, found {found}"
        );
    }
    Ok(())
}

/// Compiles the board's reference configurations (`platforms/<board>/config/*.toml`) into
/// `<dir>/<name>.bin`, cross-checking every cell against every system configuration.
fn compile_configs(workspace: &Workspace, board: &Board, dir: &Path) -> Result<()> {
    let sources = board.dir.join("config");
    if !sources.is_dir() {
        return Ok(());
    }
    let written = cellvisor_config::host::compile_directory_to(&sources, dir)
        .map_err(|problems| anyhow::anyhow!("{}: configuration errors:\n{problems}", board.name))?;
    for path in written {
        let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        println!(
            "{}: {} {size} bytes",
            board.name,
            workspace.relative(&path).display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_fp_and_simd_instructions() {
        let words: [u32; 6] = [
            0xd503_201f, // nop
            0xad09_03e0, // stp q0, q0, [sp, #288]
            0xf940_0000, // ldr x0, [x0]
            0x6f00_e400, // movi v0.2d, #0
            0x1e27_0000, // fmov s0, w0
            0xd538_4240, // mrs x0, CurrentEL
        ];
        let code: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(fp_simd_instructions(&code), [4, 12, 16]);
    }

    /// One segment of a test ELF: physical address, file content, extra zeroed memory.
    struct Segment<'a> {
        paddr: u64,
        content: &'a [u8],
        bss: u64,
    }

    /// A minimal little-endian ELF64 executable for `machine` with `segments` (virtual
    /// address = physical address) and sections named after them: ".text", ".rodata",
    /// ".data", then a NOBITS ".bss" and ".stacks" of the given sizes.
    fn elf(
        machine: elf::Machine,
        entry: u64,
        segments: &[Segment<'_>],
        bss: u64,
        stacks: u64,
    ) -> Vec<u8> {
        let phnum = segments.len() as u64;
        let phoff = 64;
        let mut content_offset = phoff + 56 * phnum;
        let mut out = vec![0u8; content_offset as usize];
        let mut ph = Vec::new();
        for segment in segments {
            ph.extend_from_slice(&elf::PT_LOAD.0.to_le_bytes());
            ph.extend_from_slice(&(elf::PF_R.0 | elf::PF_X.0).to_le_bytes());
            ph.extend_from_slice(&content_offset.to_le_bytes()); // p_offset
            ph.extend_from_slice(&segment.paddr.to_le_bytes()); // p_vaddr
            ph.extend_from_slice(&segment.paddr.to_le_bytes()); // p_paddr
            let filesz = segment.content.len() as u64;
            ph.extend_from_slice(&filesz.to_le_bytes());
            ph.extend_from_slice(&(filesz + segment.bss).to_le_bytes()); // p_memsz
            ph.extend_from_slice(&8u64.to_le_bytes()); // p_align
            out.extend_from_slice(segment.content);
            content_offset += filesz;
        }
        out[phoff as usize..phoff as usize + ph.len()].copy_from_slice(&ph);

        // Section names, then the section headers: null, one PROGBITS per segment, .bss,
        // .stacks, .shstrtab.
        let names = [".text", ".rodata", ".data", ".bss", ".stacks", ".shstrtab"];
        let strtab_offset = out.len() as u64;
        let mut name_offsets = Vec::new();
        out.push(0);
        for name in names {
            name_offsets.push((out.len() as u64 - strtab_offset) as u32);
            out.extend_from_slice(name.as_bytes());
            out.push(0);
        }
        let strtab_size = out.len() as u64 - strtab_offset;
        while !out.len().is_multiple_of(8) {
            out.push(0);
        }
        let shoff = out.len() as u64;
        let mut section = |name: u32, kind: elf::SectionType, addr: u64, offset: u64, size: u64| {
            out.extend_from_slice(&name.to_le_bytes());
            out.extend_from_slice(&kind.0.to_le_bytes());
            out.extend_from_slice(&0u64.to_le_bytes()); // sh_flags
            out.extend_from_slice(&addr.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            out.extend_from_slice(&size.to_le_bytes());
            out.extend_from_slice(&[0; 24]); // sh_link, sh_info, sh_addralign, sh_entsize
        };
        section(0, elf::SHT_NULL, 0, 0, 0);
        let mut offset = 64 + 56 * phnum;
        for (i, segment) in segments.iter().enumerate().take(3) {
            let size = segment.content.len() as u64;
            section(
                name_offsets[i],
                elf::SHT_PROGBITS,
                segment.paddr,
                offset,
                size,
            );
            offset += size;
        }
        section(name_offsets[3], elf::SHT_NOBITS, 0, 0, bss);
        section(name_offsets[4], elf::SHT_NOBITS, 0, 0, stacks);
        section(
            name_offsets[5],
            elf::SHT_STRTAB,
            0,
            strtab_offset,
            strtab_size,
        );
        let shnum = 3.min(segments.len()) as u16 + 4;

        let mut header = Vec::new();
        header.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        header.extend_from_slice(&elf::ET_EXEC.0.to_le_bytes());
        header.extend_from_slice(&machine.0.to_le_bytes());
        header.extend_from_slice(&1u32.to_le_bytes()); // e_version
        header.extend_from_slice(&entry.to_le_bytes());
        header.extend_from_slice(&phoff.to_le_bytes());
        header.extend_from_slice(&shoff.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        for half in [64, 56, phnum as u16, 64, shnum, shnum - 1] {
            // e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx
            header.extend_from_slice(&u16::to_le_bytes(half));
        }
        out[..64].copy_from_slice(&header);
        out
    }

    /// 64 bytes starting like an arm64 Image header, then `tail`.
    fn arm64_text(tail: &[u8]) -> Vec<u8> {
        let mut text = vec![0x11; 64];
        text[56..60].copy_from_slice(b"ARM\x64");
        text.extend_from_slice(tail);
        text
    }

    #[test]
    fn places_segments_at_their_physical_offsets() {
        let text = arm64_text(&[1, 2, 3]);
        let rodata = [4u8; 5];
        let data = [6u8; 2];
        let file = elf(
            elf::EM_AARCH64,
            0x4020_0000,
            &[
                // .text has zero-filled memory after it, which is not in the file.
                Segment {
                    paddr: 0x4020_0000,
                    content: &text,
                    bss: 0x10,
                },
                Segment {
                    paddr: 0x4020_2000,
                    content: &rodata,
                    bss: 0,
                },
                Segment {
                    paddr: 0x4020_3000,
                    content: &data,
                    bss: 0x5000,
                },
            ],
            0x5000,
            0x8000,
        );
        let flat = flatten(&file).unwrap();
        assert_eq!(flat.bytes.len(), 0x3002);
        assert_eq!(flat.bytes[..text.len()], text[..]);
        assert!(flat.bytes[text.len()..0x2000].iter().all(|&b| b == 0));
        assert_eq!(flat.bytes[0x2000..0x2005], rodata);
        assert_eq!(flat.bytes[0x3000..], data);
        assert_eq!(
            flat.sizes,
            Sizes {
                text: 67,
                rodata: 5,
                data: 2,
                bss: 0x5000,
                stacks: 0x8000
            }
        );
        assert_eq!(
            flat.sizes.to_string(),
            "text 67, rodata 5, data 2, bss 20480 + stacks 32768"
        );
    }

    #[test]
    fn sorts_segments_by_physical_address() {
        let text = arm64_text(&[]);
        let file = elf(
            elf::EM_AARCH64,
            0x1000,
            &[
                Segment {
                    paddr: 0x1100,
                    content: &[7],
                    bss: 0,
                },
                Segment {
                    paddr: 0x1000,
                    content: &text,
                    bss: 0,
                },
            ],
            0,
            0,
        );
        let flat = flatten(&file).unwrap();
        assert_eq!(flat.bytes.len(), 0x101);
        assert_eq!(flat.bytes[..64], text[..]);
        assert_eq!(flat.bytes[0x100], 7);
    }

    #[test]
    fn rejects_an_arm64_image_without_header() {
        let text = [0u8; 128];
        let file = elf(
            elf::EM_AARCH64,
            0x1000,
            &[Segment {
                paddr: 0x1000,
                content: &text,
                bss: 0,
            }],
            0,
            0,
        );
        let error = flatten(&file).unwrap_err().to_string();
        assert!(error.contains("arm64 Linux Image header"), "{error}");
        assert!(error.contains("found 0x00000000"), "{error}");
    }

    #[test]
    fn rejects_an_entry_point_that_is_not_the_image_start() {
        let text = arm64_text(&[]);
        let file = elf(
            elf::EM_AARCH64,
            0x1004,
            &[Segment {
                paddr: 0x1000,
                content: &text,
                bss: 0,
            }],
            0,
            0,
        );
        let error = flatten(&file).unwrap_err().to_string();
        assert!(error.contains("entry point 0x1004"), "{error}");
    }

    #[test]
    fn x86_images_need_a_multiboot_header_with_address_fields() {
        let image = |words: &[u32]| -> Vec<u8> {
            let mut bytes: Vec<u8> = vec![0x90; 8];
            bytes.extend(words.iter().flat_map(|w| w.to_le_bytes()));
            bytes
        };
        let flatten_x86 = |content: &[u8]| {
            let file = elf(
                elf::EM_X86_64,
                0x1008 + 8 * 4,
                &[Segment {
                    paddr: 0x1000,
                    content,
                    bss: 0,
                }],
                0,
                0,
            );
            flatten(&file)
        };
        let (magic, flags) = (0x1bad_b002u32, 1u32 << 16 | 1 << 1);
        let checksum = 0u32.wrapping_sub(magic).wrapping_sub(flags);
        // Header at offset 8: header_addr 0x1008, load_addr 0x1000.
        let good = image(&[
            magic, flags, checksum, 0x1008, 0x1000, 0x1028, 0x1028, 0x1028,
        ]);
        assert_eq!(flatten_x86(&good).unwrap().bytes, good);
        let error = flatten_x86(&[0u8; 16]).unwrap_err().to_string();
        assert!(error.contains("no Multiboot header"), "{error}");
        let bad_sum = image(&[magic, flags, checksum + 1, 0x1008, 0x1000, 0, 0, 0]);
        assert!(flatten_x86(&bad_sum)
            .unwrap_err()
            .to_string()
            .contains("checksum"));
        let elf_only = image(&[magic, 2, 0u32.wrapping_sub(magic + 2), 0, 0, 0, 0, 0]);
        assert!(flatten_x86(&elf_only)
            .unwrap_err()
            .to_string()
            .contains("flag 16"));
        let moved = image(&[magic, flags, checksum, 0x2008, 0x2000, 0, 0, 0]);
        let error = flatten_x86(&moved).unwrap_err().to_string();
        assert!(error.contains("load_addr 0x2000"), "{error}");
    }

    #[test]
    fn rejects_overlapping_segments_and_non_elf_files() {
        let text = arm64_text(&[]);
        let file = elf(
            elf::EM_AARCH64,
            0x1000,
            &[
                Segment {
                    paddr: 0x1000,
                    content: &text,
                    bss: 0,
                },
                Segment {
                    paddr: 0x1020,
                    content: &[1],
                    bss: 0,
                },
            ],
            0,
            0,
        );
        assert!(flatten(&file).unwrap_err().to_string().contains("overlaps"));
        assert!(flatten(b"not an ELF file at all, really not").is_err());
    }
}
