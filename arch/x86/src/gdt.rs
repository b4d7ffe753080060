//! The boot CPU's GDT with a task-state segment: VMX needs a host TR selector that is not
//! null (Intel SDM Vol. 3C §27.2.3), and a TSS is where interrupt stacks will come from. Code
//! 0x08 and data 0x10 as in the boot GDT, the TSS at 0x18.

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;

use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;

struct Tables {
    gdt: GlobalDescriptorTable,
    selectors: (SegmentSelector, SegmentSelector, SegmentSelector),
}

struct Cell(UnsafeCell<MaybeUninit<Tables>>);

// SAFETY: written once by the boot CPU (`load`) before anything reads it.
unsafe impl Sync for Cell {}

static TABLES: Cell = Cell(UnsafeCell::new(MaybeUninit::uninit()));
static TSS: TaskStateSegment = TaskStateSegment::new();

/// Builds the GDT, loads it and the TSS on the boot CPU (once).
pub fn load() {
    let mut gdt = GlobalDescriptorTable::new();
    let code = gdt.append(Descriptor::kernel_code_segment());
    let data = gdt.append(Descriptor::kernel_data_segment());
    let tss = gdt.append(Descriptor::tss_segment(&TSS));
    // SAFETY: only the boot CPU runs this, once, before anything reads the cell.
    let tables = unsafe {
        (*TABLES.0.get()).write(Tables {
            gdt,
            selectors: (code, data, tss),
        })
    };
    let tables: &'static Tables = tables;
    tables.gdt.load();
    // SAFETY: the selectors name the descriptors just loaded: a 64-bit code segment, a data
    // segment and an available TSS.
    unsafe {
        CS::set_reg(code);
        SS::set_reg(data);
        DS::set_reg(data);
        ES::set_reg(data);
        load_tss(tss);
    }
}

/// The code, data and TSS selectors (after [`load`]).
pub fn selectors() -> (u64, u64, u64) {
    // SAFETY: written by `load` before VMX asks.
    let tables = unsafe { (*TABLES.0.get()).assume_init_ref() };
    let (code, data, tss) = tables.selectors;
    (u64::from(code.0), u64::from(data.0), u64::from(tss.0))
}

/// The TSS's address.
pub fn tss_base() -> u64 {
    &TSS as *const TaskStateSegment as u64
}

/// Loads the boot CPU's GDT (after [`load`]) and the TSS on an application processor, which
/// VMX needs for the host's TR. The CPUs share the TSS (nothing uses its stacks); each `LTR`
/// marks the descriptor busy, so the busy bit is cleared first. Application processors
/// start one at a time (`smp::start`), so no two run this at once.
pub fn load_ap() {
    // SAFETY: written by `load` on the boot CPU before any application processor starts.
    let tables = unsafe { (*TABLES.0.get()).assume_init_ref() };
    let (code, data, tss) = tables.selectors;
    tables.gdt.load();
    let base = x86_64::instructions::tables::sgdt().base.as_u64();
    // The descriptor's type is in bits 43:40: 0b1011 busy, 0b1001 available.
    let type_byte = (base + u64::from(tss.index()) * 8 + 5) as *mut u8;
    // SAFETY: the TSS descriptor's type byte in the GDT just loaded (hypervisor memory);
    // clearing the busy bit makes LTR accept it. The selectors are `load`'s.
    unsafe {
        type_byte.write_volatile(type_byte.read_volatile() & !0b10);
        CS::set_reg(code);
        SS::set_reg(data);
        DS::set_reg(data);
        ES::set_reg(data);
        load_tss(tss);
    }
}
