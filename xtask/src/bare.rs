//! Running an inmate bare: the flat image that a cell runs at guest-physical 0 (`inmates.rs`),
//! byte for byte, on QEMU `virt` without a hypervisor, for comparisons of the two (benchmarks).
//!
//! The machine is `virt` without `virtualization=on`, so its CPUs start at EL1 with the MMU
//! off, as a cell's do, and deterministic (`-icount shift=0,sleep=off -seed 0`, one CPU). The
//! image is position-independent, so it runs at the start of `virt`'s RAM, 0x4000_0000, as it
//! runs at 0 in a cell. QEMU gets it as `-kernel`, wrapped in a one-segment ELF file (the image
//! at 0x4000_0000, entered at its first byte): a generic loader device cannot put it there,
//! because without `-kernel` QEMU puts its device tree at the start of RAM and refuses the
//! overlap, while with an ELF `-kernel` that starts there it puts no device tree at all.
//!
//! At the inmates' communication-region address (0x8000_0000, inside `-m 3G`) a loader device
//! puts the page the hypervisor writes for a cell about to start (`CommRegion::new` in state
//! running, as `cellvisor-core`'s park loop does), describing bare `virt`: its GIC (the
//! distributor, and the CPU interface or the first CPU's redistributor), PL011 UART0 as the
//! console and one CPU. So the inmate takes the same path as in a cell. The one field that
//! differs is the timer frequency: the hypervisor writes the CNTFRQ_EL0 it reads, which QEMU
//! sets per CPU model (62.5 MHz for `cortex-a57`, 1 GHz for `max` in QEMU 10); bare, the
//! field is 0 and the inmate runtime reads CNTFRQ_EL0 itself, as it does for a 0 from the
//! hypervisor.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use cellvisor_abi::comm::{CommRegion, Platform, GIC_V2, GIC_V3, UART_NONE, UART_PL011};
use cellvisor_abi::CellState;
use object::elf;
use object::{LittleEndian as LE, U16, U32, U64};
use zerocopy::IntoBytes as _;

use crate::board::{self, Board};
use crate::qemu::{self, Next, Options, Qemu, Stream};
use crate::workspace::Workspace;

/// The board whose QEMU and CPU model a bare run uses, on a machine of its own ([`MACHINE`]).
const BOARD: &str = "qemu-arm64";
/// `virt` without EL2 (no `virtualization=on`): the CPUs start at EL1.
const MACHINE: &str = "virt,gic-version={gic}";
/// RAM of the bare machine, from 0x4000_0000: up to 0x1_0000_0000, so it covers the
/// communication region.
const MEMORY: &str = "3G";

/// Where the image is loaded and entered: the start of `virt`'s RAM.
pub const LOAD_ADDRESS: u64 = 0x4000_0000;
/// Where the inmates look for their communication region (`cellvisor_inmate::comm::
/// COMM_REGION_ADDRESS`, the `comm-region` of `platforms/*/config/demo.toml`).
pub const COMM_REGION_ADDRESS: u64 = 0x8000_0000;
/// The communication region is one page.
pub const COMM_REGION_SIZE: usize = 4096;

/// QEMU `virt`'s memory map (`hw/arm/virt.c`, `base_memmap`): GIC distributor, GICv2 CPU
/// interface, GICv3 redistributors (CPU 0's first), PL011 UART0.
const GICD: u64 = 0x0800_0000;
const GICC: u64 = 0x0801_0000;
const GICR: u64 = 0x080a_0000;
const UART0: u64 = 0x0900_0000;

/// The communication region the hypervisor would give a one-CPU cell on bare QEMU `virt` with
/// a GICv`gic_version` (2 or 3), its console on UART0: one page, as the inmate reads it at
/// [`COMM_REGION_ADDRESS`]. The timer frequency is 0 (the inmate reads CNTFRQ_EL0).
pub fn comm_region(gic_version: u8) -> Result<Vec<u8>> {
    let (gic, gicr_or_gicc) = match gic_version {
        2 => (GIC_V2, GICC),
        3 => (GIC_V3, GICR),
        other => bail!("GICv{other}: QEMU virt has GICv2 and GICv3"),
    };
    let mut region = CommRegion::new(Platform {
        gic_version: gic.into(),
        uart_kind: UART_PL011.into(),
        gicd: GICD.into(),
        gicr_or_gicc: gicr_or_gicc.into(),
        uart: UART0.into(),
        timer_frequency: 0.into(),
        cpus: 1.into(),
        reserved: 0.into(),
    });
    region.cell_state = (CellState::Running as u32).into();
    let mut page = region.as_bytes().to_vec();
    page.resize(COMM_REGION_SIZE, 0);
    Ok(page)
}

/// `image` as an ELF executable for QEMU's `-kernel`: one segment at [`LOAD_ADDRESS`] with
/// exactly the image's bytes, entered at its first byte.
pub fn kernel_elf(image: &[u8]) -> Vec<u8> {
    const HEADERS: u64 =
        (size_of::<elf::FileHeader64<LE>>() + size_of::<elf::ProgramHeader64<LE>>()) as u64;
    const PAGE: u64 = 0x1000;
    let file = elf::FileHeader64::<LE> {
        e_ident: elf::Ident {
            magic: elf::ELFMAG,
            class: elf::ELFCLASS64,
            data: elf::ELFDATA2LSB,
            version: elf::EV_CURRENT,
            os_abi: elf::ELFOSABI_NONE,
            abi_version: 0,
            padding: [0; 7],
        },
        e_type: U16::new(LE, elf::ET_EXEC),
        e_machine: U16::new(LE, elf::EM_AARCH64),
        e_version: U32::new(LE, u32::from(elf::EV_CURRENT.0)),
        e_entry: U64::new(LE, LOAD_ADDRESS),
        e_phoff: U64::new(LE, size_of::<elf::FileHeader64<LE>>() as u64),
        e_shoff: U64::new(LE, 0),
        e_flags: U32::new(LE, elf::FileFlags(0)),
        e_ehsize: U16::new(LE, size_of::<elf::FileHeader64<LE>>() as u16),
        e_phentsize: U16::new(LE, size_of::<elf::ProgramHeader64<LE>>() as u16),
        e_phnum: U16::new(LE, 1),
        e_shentsize: U16::new(LE, size_of::<elf::SectionHeader64<LE>>() as u16),
        e_shnum: U16::new(LE, 0),
        e_shstrndx: U16::new(LE, elf::SHN_UNDEF),
    };
    // The image at a page offset, as at a page address.
    let offset = HEADERS.next_multiple_of(PAGE);
    let segment = elf::ProgramHeader64::<LE> {
        p_type: U32::new(LE, elf::PT_LOAD),
        p_flags: U32::new(
            LE,
            elf::ProgramFlags(elf::PF_R.0 | elf::PF_W.0 | elf::PF_X.0),
        ),
        p_offset: U64::new(LE, offset),
        p_vaddr: U64::new(LE, LOAD_ADDRESS),
        p_paddr: U64::new(LE, LOAD_ADDRESS),
        p_filesz: U64::new(LE, image.len() as u64),
        p_memsz: U64::new(LE, image.len() as u64),
        p_align: U64::new(LE, PAGE),
    };
    let mut out = Vec::with_capacity(offset as usize + image.len());
    out.extend_from_slice(object::pod::bytes_of(&file));
    out.extend_from_slice(object::pod::bytes_of(&segment));
    out.resize(offset as usize, 0);
    out.extend_from_slice(image);
    out
}

/// The machine of a bare run: the board's QEMU and default CPU model, on `virt` without EL2.
fn machine(workspace: &Workspace) -> Result<Board> {
    let mut board = board::find(&workspace.boards, BOARD)?.clone();
    board.machine = MACHINE.to_owned();
    Ok(board)
}

/// Runs the flat inmate image `inmate_bin` (as `cargo xtask build` writes it,
/// `target/images/<board>/inmates/<name>.bin`) bare on QEMU `virt` at EL1 with a
/// GICv`gic_version` (2 or 3) and CPU model `cpu` (by default the `qemu-arm64` board's,
/// `cortex-a57`), one CPU and deterministic time, until a line of its console (UART0)
/// contains `until`; then stops QEMU and returns the console output up to that line, one
/// `\n`-terminated line each. The inputs QEMU gets and the console log are kept in
/// `target/bare/` (`<name>-gicv<N>.{elf,log}`, `comm-gicv<N>.bin`).
///
/// Fails, naming the inmate and what it waited for, when the time runs out or QEMU exits
/// first.
pub fn run_bare(
    workspace: &Workspace,
    gic_version: u8,
    cpu: Option<&str>,
    inmate_bin: &Path,
    timeout: Duration,
    until: &str,
) -> Result<String> {
    let name = inmate_bin
        .file_stem()
        .map_or_else(|| "inmate".to_owned(), |s| s.to_string_lossy().into_owned());
    let image =
        fs::read(inmate_bin).with_context(|| format!("cannot read {}", inmate_bin.display()))?;
    let region = comm_region(gic_version)?;
    let board = machine(workspace)?;
    qemu::require(&board.qemu)?;

    let dir = workspace.target_dir.join("bare");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let kernel = dir.join(format!("{name}-gicv{gic_version}.elf"));
    let comm = dir.join(format!("comm-gicv{gic_version}.bin"));
    let log = dir.join(format!("{name}-gicv{gic_version}.log"));
    write(&kernel, &kernel_elf(&image))?;
    write(&comm, &region)?;

    let options = Options {
        gic: Some(u32::from(gic_version)),
        smp: Some(1),
        cpu: cpu.map(str::to_owned),
        memory: Some(MEMORY.to_owned()),
        icount: true,
    };
    let qemu = Qemu::new(&board, &options, &kernel)?.load(&comm, COMM_REGION_ADDRESS);
    let what = format!(
        "inmate {name} (bare, GICv{gic_version}, {})",
        cpu.or(board.cpu.as_deref()).unwrap_or("default CPU")
    );
    println!("==> {what}: {qemu}");
    let watched = watch(&qemu, timeout, until, None)?;
    let mut logged = watched.console.join("\n");
    for message in &watched.messages {
        logged.push_str(&format!("\nqemu: {message}"));
    }
    write(&log, logged.as_bytes())?;
    watched.outcome.map_err(|problem| {
        let mut error = format!(
            "{what}: {problem}; its last console line: {:?} (log: {})",
            watched.console.last().map_or("none", String::as_str),
            workspace.relative(&log).display()
        );
        if !watched.messages.is_empty() {
            error.push_str(&format!("; QEMU said: {}", watched.messages.join(" / ")));
        }
        anyhow::anyhow!(error)
    })
}

/// What [`watch`] saw of a QEMU run.
struct Watched {
    /// The output up to the line with the text waited for, or why it did not come.
    outcome: std::result::Result<String, String>,
    /// The console's lines (stdout).
    console: Vec<String>,
    /// What QEMU said on stderr.
    messages: Vec<String>,
}

/// Runs `qemu` until a line containing `until` appears, for `timeout` at most, on its
/// console or, with `serial`, in the file its second serial port writes (polled every
/// 100 ms); then stops it. The outcome holds the lines up to and with that one.
fn watch(qemu: &Qemu, timeout: Duration, until: &str, serial: Option<&Path>) -> Result<Watched> {
    let found = |text: &str| {
        let at = text.lines().position(|line| line.contains(until))?;
        Some(
            text.lines()
                .take(at + 1)
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
        )
    };
    let in_serial = || serial.and_then(|file| found(&fs::read_to_string(file).unwrap_or_default()));
    let mut console = qemu.spawn_console()?;
    let deadline = Instant::now() + timeout;
    let (mut lines, mut messages) = (Vec::new(), Vec::new());
    let where_ = if serial.is_some() { " on COM2" } else { "" };
    let outcome = loop {
        if let Some(output) = in_serial() {
            break Ok(output);
        }
        let poll = match serial {
            Some(_) => (Instant::now() + Duration::from_millis(100)).min(deadline),
            None => deadline,
        };
        match console.next_line(poll) {
            Next::Line(Stream::Console, line) => {
                let done = serial.is_none() && line.contains(until);
                lines.push(line);
                if done {
                    break Ok(lines.iter().map(|l| format!("{l}\n")).collect());
                }
            }
            Next::Line(Stream::Stderr, line) => messages.push(line),
            Next::Timeout if Instant::now() < deadline => {}
            Next::Timeout => {
                break Err(format!(
                    "no line containing {until:?}{where_} within {} s",
                    timeout.as_secs()
                ))
            }
            Next::Closed => {
                let status = console.wait_exit(Duration::from_secs(1));
                if let Some(output) = in_serial() {
                    break Ok(output);
                }
                break Err(format!(
                    "QEMU exited ({}) before a line containing {until:?}{where_}",
                    status.map_or_else(|| "status unknown".to_owned(), |s| s.to_string())
                ));
            }
        }
    };
    console.kill();
    Ok(Watched {
        outcome,
        console: lines,
        messages,
    })
}

/// The board whose QEMU, machine and CPU model an x86 bare run uses.
const BOARD_X86: &str = "qemu-x86";
/// RAM of the x86 bare machine: below q35's 0xb000_0000 threshold all of it lies under
/// 4 GiB, from 0, so it covers the communication region at 0x8000_0000 (with 2816 MiB or
/// more, q35 keeps only 2 GiB low and 0x8000_0000 is the PCI hole).
const MEMORY_X86: &str = "2560M";
/// The local APIC's page, as the hypervisor reports it to an x86 cell.
const LOCAL_APIC: u64 = 0xfee0_0000;

/// The communication region the x86 hypervisor writes for a one-CPU cell that is about to
/// start (`cellvisor-x86`'s `platform`: no GIC, the local APIC's page, no console kind for
/// an 8250, the TSC frequency it measured): here with `tsc_hz`.
pub fn comm_region_x86(tsc_hz: u64) -> Vec<u8> {
    let mut region = CommRegion::new(Platform {
        gic_version: 0.into(),
        uart_kind: UART_NONE.into(),
        gicd: 0.into(),
        gicr_or_gicc: LOCAL_APIC.into(),
        uart: 0.into(),
        timer_frequency: tsc_hz.into(),
        cpus: 1.into(),
        reserved: 0.into(),
    });
    region.cell_state = (CellState::Running as u32).into();
    let mut page = region.as_bytes().to_vec();
    page.resize(COMM_REGION_SIZE, 0);
    page
}

/// Runs the flat x86 inmate image `inmate_bin` bare on QEMU q35 (the `qemu-x86` board's CPU
/// model, or `cpu`), one CPU, deterministic time: the x86 inmates' `bare-loader`
/// (`examples/inmates/x86/src/bin/bare-loader.rs`) is the Multiboot kernel, and copies the
/// image to physical 0 and a communication region with `tsc_hz` (the frequency the
/// hypervisor reports to a cell; under `-icount` the TSC's rate is QEMU's, not measured
/// bare) to 0x8000_0000, then enters the image as the hypervisor enters a cell. Waits until
/// a line of the inmate's console, COM2, contains `until`; returns COM2's output up to it.
/// The inputs and both serial logs are kept in `target/bare/` (`<name>-x86.com{1,2}.log`).
pub fn run_bare_x86(
    workspace: &Workspace,
    cpu: Option<&str>,
    inmate_bin: &Path,
    tsc_hz: u64,
    timeout: Duration,
    until: &str,
) -> Result<String> {
    let name = inmate_bin
        .file_stem()
        .map_or_else(|| "inmate".to_owned(), |s| s.to_string_lossy().into_owned());
    let board = board::find(&workspace.boards, BOARD_X86)?.clone();
    qemu::require(&board.qemu)?;
    let loader = crate::inmates::bare_loader(workspace)?;

    let dir = workspace.target_dir.join("bare");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let kernel = dir.join("bare-loader-x86.bin");
    let comm = dir.join("comm-x86.bin");
    let com1 = dir.join(format!("{name}-x86.com1.log"));
    let com2 = dir.join(format!("{name}-x86.com2.log"));
    write(&kernel, &loader)?;
    write(&comm, &comm_region_x86(tsc_hz))?;
    write(&com2, b"")?;

    let options = Options {
        gic: None,
        smp: Some(1),
        cpu: cpu.map(str::to_owned),
        memory: Some(MEMORY_X86.to_owned()),
        icount: true,
    };
    let qemu = Qemu::new(&board, &options, &kernel)?
        .multiboot(&[inmate_bin, &comm], "")
        .second_serial(&com2);
    let what = format!(
        "inmate {name} (bare, q35, {})",
        cpu.or(board.cpu.as_deref()).unwrap_or("default CPU")
    );
    println!("==> {what}: {qemu}");
    let watched = watch(&qemu, timeout, until, Some(&com2))?;
    let mut logged = watched.console.join("\n");
    for message in &watched.messages {
        logged.push_str(&format!("\nqemu: {message}"));
    }
    write(&com1, logged.as_bytes())?;
    watched.outcome.map_err(|problem| {
        let text = fs::read_to_string(&com2).unwrap_or_default();
        let mut error = format!(
            "{what}: {problem}; its last COM2 line: {:?}, COM1 said: {:?} (logs: {})",
            text.lines().last().unwrap_or("none"),
            watched.console.join(" / "),
            workspace.relative(&com2).display()
        );
        if !watched.messages.is_empty() {
            error.push_str(&format!("; QEMU said: {}", watched.messages.join(" / ")));
        }
        anyhow::anyhow!(error)
    })
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellvisor_inmate::comm::Comm;
    use cellvisor_inmate::mmio::Mmio;
    use object::read::elf::{FileHeader as _, ProgramHeader as _};
    use zerocopy::FromBytes as _;

    /// A communication region in host memory, read the way the inmate reads it.
    struct Page(Vec<u8>);

    impl Mmio for Page {
        fn read32(&self, offset: usize) -> u32 {
            u32::from_le_bytes(self.0[offset..offset + 4].try_into().unwrap())
        }
        fn write32(&self, _: usize, _: u32) {
            unreachable!("the test only reads")
        }
        fn write64(&self, _: usize, _: u64) {
            unreachable!("the test only reads")
        }
    }

    #[test]
    fn the_region_describes_bare_virt_as_the_hypervisor_would() {
        for (version, gicr_or_gicc) in [(2, GICC), (3, GICR)] {
            let page = comm_region(version).unwrap();
            assert_eq!(page.len(), COMM_REGION_SIZE);

            let (region, rest) = CommRegion::read_from_prefix(&page).unwrap();
            assert!(region.is_valid());
            assert!(rest.iter().all(|&b| b == 0));
            assert_eq!(region.cell_state.get(), CellState::Running as u32);
            assert_eq!(
                (region.msg_to_cell.get(), region.reply_from_cell.get()),
                (0, 0)
            );
            assert_eq!(region.lock.get(), 0);

            // What the inmate runtime makes of it.
            let comm = Comm::new(Page(page));
            assert_eq!(comm.cell_state(), Some(CellState::Running));
            let platform = comm.platform().expect("the inmate accepts the region");
            assert_eq!(platform.gic_version.get(), u32::from(version));
            assert_eq!(platform.gicd.get(), 0x0800_0000);
            assert_eq!(platform.gicr_or_gicc.get(), gicr_or_gicc);
            assert_eq!(platform.uart_kind.get(), UART_PL011);
            assert_eq!(platform.uart.get(), 0x0900_0000);
            assert_eq!(platform.timer_frequency.get(), 0);
            assert_eq!(platform.cpus.get(), 1);
        }
        assert!(comm_region(4).unwrap_err().to_string().contains("GICv4"));
    }

    #[test]
    fn the_region_is_where_the_demo_cells_have_theirs() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../platforms/qemu-arm64/config/demo.toml");
        let config =
            cellvisor_config::text::cell_from_toml(&fs::read_to_string(path).unwrap()).unwrap();
        let regions = &config.cell.memory_regions;
        let comm = regions
            .iter()
            .find(|r| r.flags.contains(cellvisor_config::MemoryFlags::COMM_REGION))
            .unwrap();
        assert_eq!(
            (comm.virt_start, comm.size),
            (COMM_REGION_ADDRESS, COMM_REGION_SIZE as u64)
        );
        // The image is loaded at guest-physical 0 in the cell; bare at the start of RAM.
        assert!(regions.iter().any(
            |r| r.virt_start == 0 && r.flags.contains(cellvisor_config::MemoryFlags::LOADABLE)
        ));
    }

    #[test]
    fn the_kernel_holds_the_image_at_the_start_of_ram() {
        let image: Vec<u8> = (0..=255).cycle().take(5000).collect();
        let data = kernel_elf(&image);
        let header = elf::FileHeader64::<object::Endianness>::parse(&*data).unwrap();
        let endian = header.endian().unwrap();
        assert_eq!(header.e_type(endian), elf::ET_EXEC);
        assert_eq!(header.e_machine(endian), elf::EM_AARCH64);
        assert_eq!(header.e_entry(endian), LOAD_ADDRESS);
        let segments = header.program_headers(endian, &*data).unwrap();
        assert_eq!(segments.len(), 1);
        let segment = &segments[0];
        assert_eq!(segment.p_type(endian), elf::PT_LOAD);
        assert_eq!(segment.p_paddr(endian), LOAD_ADDRESS);
        assert_eq!(segment.p_vaddr(endian), LOAD_ADDRESS);
        assert_eq!(segment.p_memsz(endian), image.len() as u64);
        assert_eq!(segment.data(endian, &*data).unwrap(), image);
        assert_eq!(segment.p_offset(endian) % 0x1000, 0);
    }
}
