//! From a running hypervisor to a running root cell: the system configuration the boot
//! loader placed, the extra EL2 mappings it asks for, the GIC (before the secondary CPUs
//! start, so that they can sleep), the root cell's stage 2 and device tree, and the entry
//! into its kernel.

use super::HV;
use super::{cache, cell, cells, gic, guest, idle, layout, park, print, report};
use crate::board::{Board, MPIDR_AFFINITY_MASK};
use cellvisor_config::{GicVersion, InterruptController, MemoryFlags, SystemConfigView};
use cellvisor_devicetree::{self as devicetree, RootResources};
use cellvisor_paging::{Attributes, PhysAddr, PAGE_SIZE};
use core::cell::UnsafeCell;

/// Largest system configuration the hypervisor takes.
const CONFIG_CAPACITY: usize = 64 << 10;

#[repr(C, align(4096))]
struct ConfigBuffer(UnsafeCell<[u8; CONFIG_CAPACITY]>);
// SAFETY: written once by the boot CPU before any other CPU runs, read-only afterwards.
unsafe impl Sync for ConfigBuffer {}
static CONFIG: ConfigBuffer = ConfigBuffer(UnsafeCell::new([0; CONFIG_CAPACITY]));

/// Copies the system configuration from `slot` into the image, with the MMU off (aligned
/// 64-bit loads only: with the MMU off every access is to Device memory). `None` if no
/// configuration is there (the magic is missing) or it is too big (reported).
pub fn copy_config(slot: PhysAddr) -> Option<&'static [u8]> {
    let base = slot.as_u64();
    if !base.is_multiple_of(8) {
        return None;
    }
    // SAFETY: the board guarantees RAM at its configuration slot; aligned 64-bit loads.
    let (first, second) = unsafe {
        (
            (base as *const u64).read_volatile(),
            ((base + 8) as *const u64).read_volatile(),
        )
    };
    if &first.to_le_bytes()[..4] != b"CVCF" {
        return None;
    }
    let size = (second & 0xffff_ffff) as usize;
    if !(16..=CONFIG_CAPACITY).contains(&size) {
        report(format_args!(
            "cellvisor: ERROR: the system configuration at {base:#x} claims {size} bytes; at most {CONFIG_CAPACITY} are taken\n"
        ));
        return None;
    }
    let buffer = CONFIG.0.get() as *mut u64;
    for word in 0..size.div_ceil(8) {
        // SAFETY: the source lies in the board's configuration slot (RAM); the destination is
        // the image's own buffer, which nothing else uses yet.
        unsafe {
            let value = ((base + 8 * word as u64) as *const u64).read_volatile();
            buffer.add(word).write_volatile(value);
        }
    }
    // The copy went to memory; drop stale cache lines so cached reads see it.
    cache::invalidate(buffer as usize, size.next_multiple_of(64));
    // SAFETY: the buffer is initialised up to `size` and never written again.
    Some(unsafe { core::slice::from_raw_parts(buffer as *const u8, size) })
}

/// The parsed configuration and what the boot prepared from it.
pub struct Prepared {
    config: SystemConfigView<'static>,
    frames: (PhysAddr, usize),
    gic: gic::Layout,
    gicv: Option<(u64, u64, u64)>,
    management: cellvisor_core::Interface,
}

/// Normal non-cacheable, read-write: the management data window.
const NON_CACHEABLE_RW: Attributes = Attributes::new(
    cellvisor_paging::Access::RW,
    cellvisor_paging::MemoryType::Normal(cellvisor_paging::Cacheability::NonCacheable),
);

/// Size of the management data window (configurations and images pass through it).
const DATA_WINDOW: u64 = 1 << 20;

/// Parses the configuration, maps what the root cell's set-up needs at EL2 and sets up the
/// GIC's distributor and this (the boot) CPU's interface, before any other CPU runs. Any
/// error is reported and parks the CPU: a broken configuration must not half-start a system.
pub fn prepare(board: &Board, bytes: &'static [u8], mpidrs: &[u64]) -> Option<Prepared> {
    let slot = board.boot.config.as_u64();
    let config = match SystemConfigView::parse(bytes) {
        Ok(config) => config,
        Err(error) => fatal(format_args!("system configuration at {slot:#x}: {error}")),
    };
    let hypervisor = config.hypervisor_memory();
    let image = layout();
    let (start, end) = (hypervisor.start, hypervisor.start + hypervisor.size);
    if image.start.as_u64() < start || image.end().as_u64() > end {
        fatal(format_args!(
            "system configuration: hypervisor memory [{start:#x}, {end:#x}) does not hold the image [{:#x}, {:#x})",
            image.start.as_u64(),
            image.end().as_u64()
        ));
    }
    // After the image: table frames, then the management control page and data window,
    // then the configuration slot (if it is inside hypervisor memory).
    let frames_start = image.end().as_u64().next_multiple_of(PAGE_SIZE);
    let top = if (frames_start..end).contains(&slot) {
        slot
    } else {
        end
    };
    let data = top.saturating_sub(DATA_WINDOW) & !(PAGE_SIZE - 1);
    let control = data.saturating_sub(PAGE_SIZE);
    if control <= frames_start {
        fatal(format_args!(
            "system configuration: hypervisor memory [{start:#x}, {end:#x}) has no room after the image for tables and the management window"
        ));
    }
    let frames_end = control;
    let frame_count = ((frames_end - frames_start) / PAGE_SIZE) as usize;
    let gic_config = match config.interrupt_controller() {
        InterruptController::Gic(gic) => gic,
        InterruptController::Apic { .. } => fatal(format_args!(
            "system configuration: an x86 APIC on an Arm board"
        )),
    };
    let frame = |f: Option<cellvisor_config::Frame>| f.map(|f| (f.base, f.size));
    let distributor = (gic_config.distributor.base, gic_config.distributor.size);
    let layout = match gic_config.version {
        GicVersion::V3 => gic::Layout {
            distributor,
            redistributors: frame(gic_config.redistributors),
            cpu_interface: None,
            hypervisor_interface: None,
            maintenance: gic_config.maintenance_irq,
            timer: board.hypervisor_timer_irq,
        },
        GicVersion::V2 => gic::Layout {
            distributor,
            redistributors: None,
            cpu_interface: frame(gic_config.cpu_interface),
            hypervisor_interface: gic_config.hypervisor_interface.map(|f| f.base),
            maintenance: gic_config.maintenance_irq,
            timer: board.hypervisor_timer_irq,
        },
    };
    let gicv = match (
        gic_config.version,
        gic_config.cpu_interface,
        gic_config.virtual_cpu_interface,
    ) {
        (GicVersion::V2, Some(gicc), Some(gicv)) => {
            Some((gicc.base, gicv.base, gicc.size.min(gicv.size)))
        }
        (GicVersion::V2, _, _) => fatal(format_args!(
            "system configuration: a GICv2 needs its CPU and virtual CPU interfaces"
        )),
        _ => None,
    };
    if gic_config.version == GicVersion::V3 && layout.redistributors.is_none() {
        fatal(format_args!(
            "system configuration: a GICv3 needs its redistributors"
        ));
    }

    let mut maps = heapless::Vec::<(PhysAddr, u64, Attributes), 80>::new();
    let mut add = |base: u64, size: u64, attributes| {
        if maps.push((PhysAddr::new(base), size, attributes)).is_err() {
            fatal(format_args!("too many regions to map at EL2"));
        }
    };
    add(frames_start, data - frames_start, Attributes::RAM_RW);
    // The data window is shared with root-cell userspace, which maps it through /dev/mem as
    // Device memory: the hypervisor uses it uncached too, so neither side needs cache
    // maintenance to see the other's writes.
    add(data, top - data, NON_CACHEABLE_RW);
    for region in config.root_cell().memory_regions() {
        if !region.flags.contains(MemoryFlags::IO) {
            add(region.phys_start, region.size, Attributes::RAM_RW);
        }
    }
    for (base, size) in [
        Some(distributor),
        layout.redistributors,
        frame(gic_config.cpu_interface),
        frame(gic_config.hypervisor_interface),
    ]
    .into_iter()
    .flatten()
    {
        add(base, size, Attributes::DEVICE_RW);
    }
    match super::mmu::extend(&maps) {
        Ok(pages) => print(format_args!(
            "cellvisor: EL2 map in {pages} of {} table pages\n",
            super::mmu::POOL_FRAMES
        )),
        Err(error) => fatal(format_args!(
            "cannot map the root cell's memory at EL2: {error}"
        )),
    }
    let mut irqs = config
        .root_cell()
        .irq_ranges()
        .flat_map(|range| range.first..range.first.saturating_add(range.count));
    if let Err(error) = gic::init(layout, mpidrs, &mut irqs) {
        fatal(format_args!("GIC: {error}"));
    }
    gic::init_cpu(0);
    Some(Prepared {
        config,
        frames: (PhysAddr::new(frames_start), frame_count),
        gic: layout,
        gicv,
        management: cellvisor_core::Interface {
            control,
            data,
            data_size: top - data,
            memory_total: hypervisor.size,
            image: frames_start - image.start.as_u64(),
            cpus: 0,
        },
    })
}

fn fatal(args: core::fmt::Arguments<'_>) -> ! {
    report(format_args!("cellvisor: FATAL: {args}\n"));
    park()
}

/// arm64 `Image` header fields (Linux `Documentation/arch/arm64/booting.rst`).
struct KernelImage {
    text_offset: u64,
    image_size: u64,
}

fn kernel_image(address: u64) -> Option<KernelImage> {
    // SAFETY: the kernel slot lies in root-cell RAM, which prepare() mapped at EL2; the
    // header is 64 bytes, 8-byte aligned reads.
    let word = |offset: u64| unsafe { ((address + offset) as *const u64).read_volatile() };
    let magic = (word(56) & 0xffff_ffff) as u32;
    (magic == 0x644d_5241).then(|| KernelImage {
        text_offset: word(8),
        image_size: word(16),
    })
}

/// Builds the root cell and enters its kernel on this (the boot) CPU.
pub fn root_cell(
    board: &Board,
    prepared: Prepared,
    mpidrs: &[u64],
    dtb: Option<(u64, usize)>,
) -> ! {
    let config = &prepared.config;
    let root = config.root_cell();
    let kernel = board.boot.kernel.as_u64();
    let in_root_ram = |start: u64, size: u64| {
        root.memory_regions().any(|r| {
            !r.flags.contains(MemoryFlags::IO)
                && r.virt_start == r.phys_start
                && start >= r.phys_start
                && start + size <= r.phys_start + r.size
        })
    };
    if !in_root_ram(kernel, 64) {
        fatal(format_args!(
            "the kernel slot {kernel:#x} is not in the root cell's RAM"
        ));
    }
    let Some(image) = kernel_image(kernel) else {
        fatal(format_args!(
            "no arm64 Linux Image at {kernel:#x} (magic \"ARM\\x64\" missing at offset 56)"
        ));
    };
    if image.text_offset % 0x20_0000 != kernel % 0x20_0000 {
        fatal(format_args!(
            "the kernel at {kernel:#x} wants text_offset {:#x} from a 2 MiB boundary",
            image.text_offset
        ));
    }
    let Some((stock, stock_size)) = dtb else {
        fatal(format_args!(
            "no device tree was passed in x0 to derive the root cell's"
        ));
    };

    let window = (prepared.management.data, prepared.management.data_size);
    let root_cell = match cell::build(
        config,
        mpidrs,
        prepared.frames.0,
        prepared.frames.1,
        prepared.gicv,
        Some(window),
    ) {
        Ok(root_cell) => root_cell,
        Err(error) => fatal(format_args!("root cell \"{}\": {error}", root.name())),
    };

    // The device tree: the stock one with what the root cell does not own removed.
    let mut ram = heapless::Vec::<(PhysAddr, u64), 64>::new();
    let mut devices = heapless::Vec::<(PhysAddr, u64), 64>::new();
    for region in root.memory_regions() {
        // Loadable root-cell RAM is what cells borrow: the root cell's kernel does not get it
        // as RAM (it would lose it under its feet at the next cell create).
        if region.flags.contains(MemoryFlags::LOADABLE) && !region.flags.contains(MemoryFlags::IO) {
            continue;
        }
        let list = if region.flags.contains(MemoryFlags::IO) {
            &mut devices
        } else {
            &mut ram
        };
        let _ = list.push((PhysAddr::new(region.virt_start), region.size));
    }
    let mut emulated = heapless::Vec::<(PhysAddr, u64), 4>::new();
    let (base, size) = prepared.gic.distributor;
    let _ = emulated.push((PhysAddr::new(base), size));
    if let Some((base, size)) = prepared.gic.redistributors {
        let _ = emulated.push((PhysAddr::new(base), size));
    }
    if let Some((gicc, _, size)) = prepared.gicv {
        let _ = emulated.push((PhysAddr::new(gicc), size));
    }
    let mut cpus = heapless::Vec::<u64, 64>::new();
    for (cpu, &mpidr) in mpidrs.iter().enumerate() {
        if cell::owns_cpu(cpu) {
            let _ = cpus.push(mpidr);
        }
    }
    let out_base = (kernel + image.image_size.max(0x20_0000)).next_multiple_of(0x20_0000);
    let out_size = (stock_size + (64 << 10)).next_multiple_of(PAGE_SIZE as usize);
    if !in_root_ram(out_base, out_size as u64) {
        fatal(format_args!(
            "no room for the root cell's device tree at {out_base:#x} (after the kernel)"
        ));
    }
    // SAFETY: the stock tree lies in RAM the boot loader filled (mapped at EL2 with the
    // root cell's RAM); the output lies in root-cell RAM after the kernel image, which
    // nothing uses before the kernel runs, and does not overlap the stock tree (checked).
    let (stock_tree, out) = unsafe {
        if out_base < stock + stock_size as u64 && stock < out_base + out_size as u64 {
            fatal(format_args!(
                "the device tree at {stock:#x} overlaps where the derived one goes"
            ));
        }
        (
            core::slice::from_raw_parts(stock as *const u8, stock_size),
            core::slice::from_raw_parts_mut(out_base as *mut u8, out_size),
        )
    };
    let resources = RootResources {
        ram: &ram,
        devices: &devices,
        emulated: &emulated,
        cpus: &cpus,
        cpu_id_mask: MPIDR_AFFINITY_MASK,
        management: Some([
            prepared.management.control,
            mgmt_page_size(),
            prepared.management.data,
            prepared.management.data_size,
        ]),
    };
    let derived = match devicetree::derive(stock_tree, out, &resources) {
        Ok(derived) => derived,
        Err(error) => fatal(format_args!("root cell device tree: {error}")),
    };
    cache::clean_invalidate(out_base as usize, derived.size);

    // The registry of cells, with everything in the root cell.
    let interface = cellvisor_core::Interface {
        cpus: super::online_cpus() as u32,
        ..prepared.management
    };
    if let Err(error) = HV.init_management(interface, config) {
        fatal(format_args!("root cell \"{}\": {error}", root.name()));
    }

    cell::prepare_cpu();
    HV.cpu(0).power.set_on();

    let ram_mib: u64 = ram.iter().map(|&(_, size)| size).sum::<u64>() >> 20;
    print(format_args!(
        "cellvisor: root cell \"{}\": {} CPUs, {ram_mib} MiB RAM, {} device regions, stage 2 {}-bit IPA in {} table pages, GICv{}\n",
        root.name(),
        cpus.len(),
        devices.len(),
        root_cell.ipa_bits,
        root_cell.table_frames,
        if gic::is_v3() { 3 } else { 2 },
    ));
    print(format_args!(
        "cellvisor: device tree {stock:#x} -> {out_base:#x} ({} bytes, {} memory ranges, {} nodes disabled, {} CPUs removed); kernel at {kernel:#x}\n",
        derived.size, derived.memory_ranges, derived.disabled_nodes, derived.removed_cpus
    ));
    guest::enter(kernel, out_base)
}

/// A secondary CPU after bring-up: with a GIC (a system configuration was loaded), it sets
/// up its interface and sleeps in the park loop until a cell gives it a vCPU (the root
/// cell's PSCI CPU_ON, or a cell that takes it); without, it idles for good.
pub fn secondary(cpu: usize) -> ! {
    if !gic::is_initialised() {
        idle()
    }
    gic::init_cpu(cpu);
    let mut frame = super::frame::TrapFrame {
        x: [0; 31],
        sp: 0,
        elr: 0,
        spsr: 0,
    };
    cells::park(cpu, &mut frame);
    guest::enter(frame.elr, frame.x[0])
}

fn mgmt_page_size() -> u64 {
    cellvisor_abi::mgmt::PAGE_SIZE
}
