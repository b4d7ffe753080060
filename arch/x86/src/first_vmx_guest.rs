//! The first VMX world switch: the same two-instruction real-mode guest as the SVM one
//! (CPUID, HLT), behind EPT tables built by `cellvisor-paging`, on the boot CPU.

use core::fmt::Write;

use cellvisor_paging::Ept;

use crate::first_guest::{guest_tables, CODE_AT};
use crate::page::Page;
use crate::serial::Serial;
use crate::vmx;

static VMCS: Page = Page::new();
/// Basic exit reasons (Vol. 3D Appendix C).
const EXIT_CPUID: u64 = 10;
const EXIT_HLT: u64 = 12;

/// Runs the guest and reports each exit.
pub fn run(console: &mut Serial) {
    if let Err(e) = run_guest(console) {
        let _ = writeln!(console, "cellvisor: VMX: {e}");
    }
}

fn run_guest(console: &mut Serial) -> Result<(), vmx::VmxError> {
    crate::vmcs::enable(0)?;
    // SAFETY: CPUID said VMX with EPT, so IA32_VMX_EPT_VPID_CAP exists; reading it has no
    // effect.
    let cap = unsafe { x86_64::registers::model_specific::Msr::new(0x48c).read() };
    let format = Ept::from_capabilities(cap);
    let Ok(root) = guest_tables(format) else {
        return Err(vmx::VmxError::Unsupported("build EPT tables"));
    };
    vmx::load(&VMCS)?;
    vmx::setup_real_mode(CODE_AT, format.eptp(root).bits())?;
    let mut launched = false;
    for _ in 0..4 {
        let reason = vmx::run(launched)?;
        launched = true;
        let rip = vmx::read(vmx::field::GUEST_RIP);
        match reason {
            EXIT_CPUID => {
                let _ = writeln!(console, "cellvisor: VMX guest exit: CPUID at RIP {rip:#x}");
                let length = vmx::read(vmx::field::EXIT_INSTRUCTION_LENGTH);
                vmx::write(vmx::field::GUEST_RIP, rip + length);
            }
            EXIT_HLT => {
                let _ = writeln!(console, "cellvisor: VMX guest exit: HLT at RIP {rip:#x}");
                let _ = writeln!(console, "cellvisor: VMX world switch works (CPUID, HLT)");
                return Ok(());
            }
            other => {
                let qualification = vmx::read(vmx::field::EXIT_QUALIFICATION);
                let _ = writeln!(
                    console,
                    "cellvisor: VMX guest exit reason {other} at RIP {rip:#x}, qualification \
                     {qualification:#x}: exit information"
                );
                return Ok(());
            }
        }
    }
    Ok(())
}
