//! The first world switch: a real-mode guest of two instructions (CPUID, HLT) behind nested
//! page tables built by `cellvisor-paging`, run on the boot CPU. It shows the pieces work
//! together until the core's traits take over. [`guest_tables`] serves the VMX guest too.

use core::fmt::Write;
use core::sync::atomic::AtomicBool;

use cellvisor_paging::{
    Attributes, Error, Format, FramePool, GuestPhysAddr, LargePages, LinearMemory, MapMode,
    Mapping, NotLive, Npt, PageTable, PhysAddr, TableMemory,
};

use crate::page::Page;
use crate::serial::Serial;
use crate::svm::{self, ExitCode, GuestRegisters, Vmcb};

static HOST_SAVE: Page = Page::new();
/// The host's VMLOAD/VMSAVE state while the guest runs.
static HOST_STATE: Page = Page::new();
static VMCB: Page = Page::new();
/// Frames for the guest's second-stage tables (nested or extended).
static TABLE_FRAMES: [Page; 8] = [const { Page::new() }; 8];
/// The guest's memory: guest-physical 0x0000 to 0x2000.
static GUEST: [Page; 2] = [const { Page::new() }; 2];
/// CPUID; HLT.
const CODE: [u8; 3] = [0x0f, 0xa2, 0xf4];
/// Where the code is, guest-physical.
pub(crate) const CODE_AT: u64 = 0x1000;

/// Puts the guest's code in its memory and builds `format` tables (NPT or EPT) mapping
/// guest-physical 0x0000 to 0x2000 onto it; returns their root. Once per boot: the SVM or
/// the VMX guest runs, never both.
pub(crate) fn guest_tables<F: Format<Input = GuestPhysAddr>>(format: F) -> Result<PhysAddr, Error> {
    let mut memory = TableMemory {
        frames: FramePool::<8>::new(PhysAddr::new(TABLE_FRAMES.as_ptr() as u64)),
        // SAFETY: the hypervisor runs with the first 4 GiB mapped one to one (boot.rs), and
        // the pool's frames are TABLE_FRAMES, which nothing else uses.
        memory: unsafe { LinearMemory::new(0) },
    };
    let mut table = PageTable::new(format, &mut memory)?;
    table.map(
        &mut memory,
        &mut NotLive,
        Mapping {
            input: GuestPhysAddr::new(0),
            output: PhysAddr::new(GUEST.as_ptr() as u64),
            size: 0x2000,
            attributes: Attributes::RAM_RWX,
        },
        MapMode::New,
    )?;
    let code = GUEST[1].address() as *mut u8;
    // SAFETY: the guest's page, which no guest runs on yet; 3 bytes of 4096.
    unsafe { core::ptr::copy_nonoverlapping(CODE.as_ptr(), code, CODE.len()) };
    Ok(table.root())
}

/// Runs the guest and reports each exit.
pub fn run(console: &mut Serial) {
    if let Err(e) = svm::enable(&HOST_SAVE) {
        let _ = writeln!(console, "cellvisor: {e}");
        return;
    }
    let root = match guest_tables(Npt::new(LargePages::ALL)) {
        Ok(root) => root,
        Err(e) => {
            let _ = writeln!(console, "cellvisor: nested page tables: {e}");
            return;
        }
    };
    let mut vmcb = Vmcb::new(&VMCB);
    vmcb.reset_real_mode(CODE_AT, root.as_u64(), 1);
    let mut regs = GuestRegisters::default();
    // Nothing kicks this guest.
    let never = AtomicBool::new(false);
    for _ in 0..4 {
        let Some(exit) = vmcb.enter(&mut regs, &HOST_STATE, &never) else {
            return;
        };
        let rip = vmcb.u64_at(svm::offset::RIP);
        let _ = writeln!(console, "cellvisor: SVM guest exit: {exit} at RIP {rip:#x}");
        match exit {
            ExitCode::CPUID => vmcb.set_u64(svm::offset::RIP, rip + 2),
            ExitCode::HLT => {
                let _ = writeln!(console, "cellvisor: SVM world switch works (CPUID, HLT)");
                return;
            }
            _ => {
                let info1 = vmcb.u64_at(svm::offset::EXITINFO1);
                let info2 = vmcb.u64_at(svm::offset::EXITINFO2);
                let _ = writeln!(console, "cellvisor: exit information {info1:#x} {info2:#x}");
                return;
            }
        }
    }
}
