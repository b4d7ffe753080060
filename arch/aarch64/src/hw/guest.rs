//! Running a cell's vCPU: EL2 register set-up, the world switch and the trap handler.
//!
//! Each physical CPU runs at most one vCPU, so EL1 state stays in the EL1 registers; only the
//! general-purpose registers, ELR_EL2 and SPSR_EL2 are saved on the CPU's exception stack at
//! each trap (the [`TrapFrame`]) and restored by `eret`. Traps are dispatched by exception
//! class, like Jailhouse's trap tables.

use super::frame::TrapFrame;
use super::HV;
use super::{cell, cells, cpu_index, gic, park, print, report};
use crate::esr::Esr;
use crate::psci::{self, status, Call, Psci};
use crate::trap::{
    class, external_abort, AbortKind, MmioTrap, NotInjectable, SysregId, SysregTrap,
};
use aarch64_cpu::registers::{
    Readable, Writeable, ELR_EL1, ESR_EL1, ESR_EL2, FAR_EL1, FAR_EL2, HPFAR_EL2, ID_AA64MMFR1_EL1,
    SCTLR_EL1, SPSR_EL1, VBAR_EL1,
};
use cellvisor_core::{PowerState, Restart, TrapReason, Verdict};
use cellvisor_gic::Outcome;

core::arch::global_asm!(
    r#"
    .section .text.vectors, "ax"
    .global cellvisor_guest_return
// sp points to a TrapFrame on the exception stack: restore it and enter the cell.
cellvisor_guest_return:
    ldp     x1, x2, [sp, #(32 * 8)]
    msr     elr_el2, x1
    msr     spsr_el2, x2
    ldp     x30, x1, [sp, #(30 * 8)]
    msr     sp_el0, x1
    ldp     x28, x29, [sp, #(28 * 8)]
    ldp     x26, x27, [sp, #(26 * 8)]
    ldp     x24, x25, [sp, #(24 * 8)]
    ldp     x22, x23, [sp, #(22 * 8)]
    ldp     x20, x21, [sp, #(20 * 8)]
    ldp     x18, x19, [sp, #(18 * 8)]
    ldp     x16, x17, [sp, #(16 * 8)]
    ldp     x14, x15, [sp, #(14 * 8)]
    ldp     x12, x13, [sp, #(12 * 8)]
    ldp     x10, x11, [sp, #(10 * 8)]
    ldp     x8, x9, [sp, #(8 * 8)]
    ldp     x6, x7, [sp, #(6 * 8)]
    ldp     x4, x5, [sp, #(4 * 8)]
    ldp     x2, x3, [sp, #(2 * 8)]
    ldp     x0, x1, [sp, #(0 * 8)]
    add     sp, sp, #(34 * 8)
    eret

    .global cellvisor_enter_guest
// x0 = TrapFrame to enter with, x1 = top of this CPU's exception stack. Never returns.
cellvisor_enter_guest:
    msr     daifset, #0xf
    msr     spsel, #1
    mov     sp, x1
    sub     sp, sp, #(34 * 8)
    mov     x2, sp
    mov     x3, #34
1:  ldr     x4, [x0], #8
    str     x4, [x2], #8
    subs    x3, x3, #1
    b.ne    1b
    b       cellvisor_guest_return
"#
);

unsafe extern "C" {
    fn cellvisor_enter_guest(frame: *const TrapFrame, stack_top: u64) -> !;
}

/// Enters the cell on this CPU at `entry` with x0 = `x0` and PSTATE = EL1h, DAIF masked,
/// on a fresh exception stack. EL1's MMU and caches are off (Linux `booting.rst`, PSCI 1.1
/// §6.4.3.3 "CPU_ON": the entry state of a CPU is the same as after reset).
pub fn enter(entry: u64, x0: u64) -> ! {
    let mut frame = TrapFrame {
        x: [0; 31],
        sp: 0,
        elr: 0,
        spsr: 0,
    };
    cells::enter_frame(&mut frame, entry, x0);
    let top = super::exception_stack_top(cpu_index());
    super::pmu::start(cpu_index());
    // SAFETY: `enter` runs on the CPU's main stack (SP_EL0), never inside a trap, so the
    // frame does not lie on the exception stack the assembly resets to `top` and copies it
    // onto; the cell's stage 2 and EL2 registers were loaded by `cell::prepare_cpu`.
    unsafe { cellvisor_enter_guest(&frame, top) }
}

/// The trap handler: one trap of the vCPU on this CPU (vector `kind`, 8 to 11); returns to
/// the cell.
pub(super) fn trap(kind: u64, frame: &mut TrapFrame) {
    let cpu = cpu_index();
    if kind == 9 {
        // Interrupts are the hot path: kept apart from the large synchronous handler.
        match gic::handle_irq(cpu) {
            gic::Handled::Injected => HV.count(cpu, TrapReason::Irq),
            gic::Handled::Maintenance => HV.count(cpu, TrapReason::Maintenance),
            gic::Handled::Spurious | gic::Handled::Timer => HV.count(cpu, TrapReason::Other),
            gic::Handled::Event => {
                if HV.take_stop(cpu) {
                    cells::park(cpu, frame);
                }
            }
        }
    } else {
        handle(cpu, kind, frame);
    }
    super::pmu::measure(cpu);
}

/// Every trap but an interrupt.
#[inline(never)]
fn handle(cpu: usize, kind: u64, frame: &mut TrapFrame) {
    match kind {
        8 => synchronous(cpu, frame),
        _ => {
            let what = if kind == 10 { "FIQ" } else { "SError" };
            report(format_args!(
                "\ncellvisor: FATAL: CPU {cpu}: {what} from the cell at EL2 (ESR {:#x}, ELR {:#x}, SPSR {:#x})\ncellvisor: CPU {cpu} parked\n",
                ESR_EL2.get(),
                frame.elr,
                frame.spsr
            ));
            park()
        }
    }
}

fn synchronous(cpu: usize, frame: &mut TrapFrame) {
    let esr = Esr(ESR_EL2.get());
    match esr.class() {
        class::DATA_ABORT_LOWER => data_abort(cpu, esr, frame),
        class::INSTRUCTION_ABORT_LOWER => {
            let far = FAR_EL2.get();
            let ipa = crate::trap::fault_ipa(HPFAR_EL2.get(), far);
            HV.count(cpu, TrapReason::OutsideConfig);
            if HV.owner(cpu).0 != 0 {
                print(format_args!(
                    "cellvisor: cell \"{}\" (CPU {cpu}): instruction fetch at {ipa:#x} (PC {:#x}) is outside its configuration: cell stopped (failed)\n",
                    HV.name_of(cpu),
                    frame.elr
                ));
                fail_cell(cpu, frame);
                return;
            }
            note(cpu, format_args!(
                "cellvisor: cell \"{}\" (CPU {cpu}): instruction fetch at {ipa:#x} (PC {:#x}) is outside its configuration: external abort injected\n",
                HV.name_of(cpu),
                frame.elr
            ));
            inject(cpu, frame, AbortKind::Instruction, far);
        }
        class::SMC64 => {
            // SMC is trapped before it executes (HCR_EL2.TSC): ELR points at it.
            frame.elr += 4;
            firmware_call(cpu, esr, frame);
        }
        class::HVC64 => firmware_call(cpu, esr, frame),
        class::SYSREG => sysreg(cpu, esr, frame),
        _ => {
            HV.count(cpu, TrapReason::Other);
            note(cpu, format_args!(
                "cellvisor: cell \"{}\" (CPU {cpu}): unhandled trap: {esr} at PC {:#x}: undefined instruction injected\n",
                HV.name_of(cpu),
                frame.elr
            ));
            inject_undefined(cpu, frame);
        }
    }
}

fn data_abort(cpu: usize, esr: Esr, frame: &mut TrapFrame) {
    let far = FAR_EL2.get();
    let hpfar = HPFAR_EL2.get();
    let ipa = crate::trap::fault_ipa(hpfar, far);
    let write = esr.is_write().unwrap_or(false);
    if HV.owner(cpu).0 == 0 && HV.mgmt_contains(ipa) {
        HV.count(cpu, TrapReason::Management);
        match MmioTrap::decode(esr, hpfar, far) {
            Ok(trap) => {
                let value = trap.store_value(&frame.x);
                if let Some(value) = HV.mgmt_access(cpu, ipa, trap.write, value) {
                    trap.complete_load(&mut frame.x, value);
                }
                frame.elr += esr.instruction_length();
            }
            Err(why) => {
                note(cpu, format_args!(
                    "cellvisor: cell \"{}\" (CPU {cpu}): access to the management page at {ipa:#x}: {why}: external abort injected\n",
                    HV.name_of(cpu)
                ));
                inject(cpu, frame, AbortKind::Data { write }, far);
            }
        }
        return;
    }
    if let Some(block) = gic::block_of(ipa) {
        let reason = match block {
            gic::Block::Distributor(_) => TrapReason::Distributor,
            gic::Block::Redistributors(_) => TrapReason::Redistributor,
        };
        HV.count(cpu, reason);
        match MmioTrap::decode(esr, hpfar, far) {
            Ok(trap) => {
                let value = trap.store_value(&frame.x);
                match gic::emulate(cells::requester(cpu), block, &trap, value) {
                    Ok(Outcome::Read(value)) => trap.complete_load(&mut frame.x, value),
                    Ok(Outcome::Written) => {}
                    Err(violation) => {
                        // The root cell gets an abort; any other cell broke its partition.
                        let outcome = if HV.owner(cpu).0 == 0 {
                            "external abort injected"
                        } else {
                            "cell stopped (failed)"
                        };
                        tell(cpu, format_args!(
                            "cellvisor: cell \"{}\" (CPU {cpu}): {} of {} bytes at {ipa:#x} (GIC {:?} offset {:#x}) refused: {:?}: {outcome}\n",
                            HV.name_of(cpu),
                            if trap.write { "write" } else { "read" },
                            trap.width.bytes(),
                            violation.block,
                            violation.offset(),
                            violation.reason,
                        ));
                        if HV.owner(cpu).0 == 0 {
                            inject(cpu, frame, AbortKind::Data { write }, far);
                        } else {
                            fail_cell(cpu, frame);
                        }
                        return;
                    }
                }
                frame.elr += esr.instruction_length();
            }
            Err(why) => {
                let root = HV.owner(cpu).0 == 0;
                tell(cpu, format_args!(
                    "cellvisor: cell \"{}\" (CPU {cpu}): access to the GIC at {ipa:#x} (PC {:#x}): {why}: {}\n",
                    HV.name_of(cpu),
                    frame.elr,
                    if root { "external abort injected" } else { "cell stopped (failed)" }
                ));
                if root {
                    inject(cpu, frame, AbortKind::Data { write }, far);
                } else {
                    fail_cell(cpu, frame);
                }
            }
        }
        return;
    }
    HV.count(cpu, TrapReason::OutsideConfig);
    let size = MmioTrap::decode(esr, hpfar, far)
        .map(|t| t.width.bytes())
        .unwrap_or(0);
    let what = if write { "write" } else { "read" };
    if HV.owner(cpu).0 != 0 {
        print(format_args!(
            "cellvisor: cell \"{}\" (CPU {cpu}): {what} of {size} bytes at {ipa:#x} (PC {:#x}) is outside its configuration: cell stopped (failed)\n",
            HV.name_of(cpu),
            frame.elr,
        ));
        fail_cell(cpu, frame);
        return;
    }
    note(cpu, format_args!(
        "cellvisor: cell \"{}\" (CPU {cpu}): {what} of {size} bytes at {ipa:#x} (VA {far:#x}, PC {:#x}) is outside its configuration: external abort injected\n",
        HV.name_of(cpu),
        frame.elr,
    ));
    inject(cpu, frame, AbortKind::Data { write }, far);
}

/// Makes the cell take a synchronous external abort at its EL1 vector.
fn inject(cpu: usize, frame: &mut TrapFrame, kind: AbortKind, far: u64) {
    let has_pan = (ID_AA64MMFR1_EL1.get() >> 20) & 0xf != 0;
    // SCTLR_EL1.SPAN (bit 23) = 0: PSTATE.PAN is set on exception entry to EL1.
    let set_pan = has_pan && SCTLR_EL1.get() & 1 << 23 == 0;
    match external_abort(kind, frame.spsr, frame.elr, far, VBAR_EL1.get(), set_pan) {
        Ok(abort) => {
            ESR_EL1.set(abort.esr);
            FAR_EL1.set(abort.far);
            ELR_EL1.set(abort.elr);
            SPSR_EL1.set(abort.spsr);
            frame.elr = abort.vector;
            frame.spsr = abort.pstate;
        }
        Err(NotInjectable::Aarch32) | Err(NotInjectable::BadMode(_)) => {
            report(format_args!(
                "\ncellvisor: FATAL: CPU {cpu}: cannot inject an abort into the cell (SPSR {:#x}, PC {:#x})\ncellvisor: CPU {cpu} parked\n",
                frame.spsr, frame.elr
            ));
            park()
        }
    }
}

/// Makes the cell take an undefined-instruction exception (EC 0, "unknown reason").
fn inject_undefined(cpu: usize, frame: &mut TrapFrame) {
    let far = FAR_EL1.get();
    inject(cpu, frame, AbortKind::Instruction, far);
    // Same vector and state as an abort; only the syndrome differs: EC 0, IL 1.
    ESR_EL1.set(1 << 25);
    FAR_EL1.set(far);
}

fn sysreg(cpu: usize, esr: Esr, frame: &mut TrapFrame) {
    let trap = SysregTrap::decode(esr);
    let value = frame.x.get(usize::from(trap.gpr)).copied().unwrap_or(0);
    match trap.register {
        SysregId::ICC_SGI1R_EL1 if !trap.read => {
            HV.count(cpu, TrapReason::SgiRegister);
            if let Err(violation) = gic::send_sgi1r(cells::requester(cpu), value) {
                let root = HV.owner(cpu).0 == 0;
                tell(cpu, format_args!(
                    "cellvisor: cell \"{}\" (CPU {cpu}): ICC_SGI1R_EL1 write {value:#x} refused: {:?}{}\n",
                    HV.name_of(cpu),
                    violation.reason,
                    if root { "" } else { ": cell stopped (failed)" }
                ));
                if !root {
                    fail_cell(cpu, frame);
                    return;
                }
            }
            frame.elr += 4;
        }
        // Group 0 and other-Security-state SGIs: a cell has neither; ignored.
        SysregId::ICC_SGI0R_EL1 | SysregId::ICC_ASGI1R_EL1 if !trap.read => {
            HV.count(cpu, TrapReason::SgiRegister);
            frame.elr += 4;
        }
        register => {
            HV.count(cpu, TrapReason::OtherSysreg);
            note(cpu, format_args!(
                "cellvisor: cell \"{}\" (CPU {cpu}): unhandled system register {} {register} at PC {:#x}: undefined instruction injected\n",
                HV.name_of(cpu),
                if trap.read { "read of" } else { "write to" },
                frame.elr
            ));
            inject_undefined(cpu, frame);
        }
    }
}

/// An SMC or HVC of the cell: PSCI emulated, the rest by [`cell::smccc_policy`]. SMCCC
/// calls use the immediate 0 (DEN 0028 §2.9); any other immediate is not a call the
/// hypervisor knows: NOT_SUPPORTED, whatever x0 holds.
fn firmware_call(cpu: usize, esr: Esr, frame: &mut TrapFrame) {
    if esr.iss() & 0xffff != 0 {
        HV.count(cpu, TrapReason::Smccc);
        frame.x[0] = status::NOT_SUPPORTED as u64;
        return;
    }
    let id = frame.x[0] as u32;
    let call = Call::classify(id);
    let result: i64 = match call {
        Call::Psci(function) => {
            HV.count(cpu, TrapReason::Psci);
            match function {
                Psci::Version => psci::VERSION_1_1 as i64,
                Psci::Features => psci::features(frame.x[1] as u32, cell::firmware_smccc()),
                Psci::MigrateInfoType => psci::MIGRATE_NOT_REQUIRED as i64,
                Psci::CpuOn => cell::cpu_on(HV.owner(cpu), frame.x[1], frame.x[2], frame.x[3], id),
                Psci::AffinityInfo => {
                    match (cell::cpu_of(HV.owner(cpu), frame.x[1]), frame.x[2]) {
                        (Some(target), 0) => match HV.cpu(target).power.state() {
                            // Off once the CPU waits in the park loop, not before: a CPU the
                            // root cell saw off can be given to a cell at once.
                            PowerState::Off if HV.is_parked(target) => 1,
                            PowerState::On | PowerState::Off => 0,
                            PowerState::OnPending => 2,
                        },
                        _ => status::INVALID_PARAMETERS,
                    }
                }
                Psci::CpuOff => cpu_off(cpu, frame),
                Psci::SystemOff if HV.owner(cpu).0 != 0 => {
                    // A cell's power-off ends the cell, not the machine.
                    print(format_args!(
                        "cellvisor: cell \"{}\" (CPU {cpu}) powered itself off: cell shut down\n",
                        HV.name_of(cpu)
                    ));
                    HV.stop_cell_from_inside(cpu, cellvisor_abi::CellState::ShutDown);
                    cells::park(cpu, frame);
                    return;
                }
                Psci::SystemReset if HV.owner(cpu).0 != 0 => {
                    // A cell's reset restarts the cell, not the machine.
                    cell_reset(cpu);
                    cells::park(cpu, frame);
                    return;
                }
                Psci::SystemOff | Psci::SystemReset => {
                    cell::system_power(cpu, function == Psci::SystemReset)
                }
                Psci::Unsupported => status::NOT_SUPPORTED,
            }
        }
        _ => {
            HV.count(cpu, TrapReason::Smccc);
            match cell::smccc_policy(cpu, call, frame) {
                Some(result) => {
                    frame.x[..4].copy_from_slice(&result);
                    return;
                }
                None => status::NOT_SUPPORTED,
            }
        }
    };
    frame.x[0] = result as u64;
}

/// SYSTEM_RESET of a cell other than the root cell: its CPUs stop and it starts again where
/// its start entered it, memory kept ([`cellvisor_core::Hypervisor::restart_cell_from_inside`]).
/// The caller parks the CPU next.
fn cell_reset(cpu: usize) {
    let name = HV.name_of(cpu);
    match HV.restart_cell_from_inside(cpu) {
        // Within the cell's output budget: a cell may reset in a loop.
        Restart::Restarted => note(cpu, format_args!(
            "cellvisor: cell \"{name}\" (CPU {cpu}) reset itself: cell restarted\n"
        )),
        Restart::Stopped => print(format_args!(
            "cellvisor: cell \"{name}\" (CPU {cpu}) reset itself while being stopped: it stays stopped\n"
        )),
        Restart::Stuck(other) => print(format_args!(
            "cellvisor: cell \"{name}\" (CPU {cpu}) reset itself, but its CPU {other} did not stop: cell failed\n"
        )),
        Restart::ForLoader => print(format_args!(
            "cellvisor: cell \"{name}\" (CPU {cpu}) reset itself; what it runs cannot restart in place: cell stopped (state reset) for its loader to boot it again\n"
        )),
        Restart::NotACell => {}
    }
}

/// CPU_OFF: the vCPU stops; the physical CPU waits in the park loop for its cell to give it
/// a vCPU again (the root cell's CPU_ON, or another cell's start) and enters it from there.
fn cpu_off(cpu: usize, frame: &mut TrapFrame) -> i64 {
    HV.cpu(cpu).power.power_off();
    log::debug!("CPU {cpu}: vCPU off");
    cells::park(cpu, frame);
    // x0 of the frame is the new vCPU's first argument; keep it.
    frame.x[0] as i64
}

/// Prints a note about the cell on `cpu`, which goes on, within the cell's output budget
/// ([`cellvisor_core::budget`]).
fn note(cpu: usize, args: core::fmt::Arguments<'_>) {
    HV.note(cpu, HV.owner(cpu), args);
}

/// A report about the cell on `cpu`: a note ([`note`]) for the root cell, which goes on
/// (it gets an abort), printed in full for another cell, which is stopped.
fn tell(cpu: usize, args: core::fmt::Arguments<'_>) {
    if HV.owner(cpu).0 == 0 {
        note(cpu, args);
    } else {
        print(args);
    }
}

/// The cell on `cpu` broke its partition: its state becomes failed, its other CPUs stop,
/// this one parks. The root cell and other cells go on.
fn fail_cell(cpu: usize, frame: &mut TrapFrame) {
    // The core's policy: another cell than the root cell is stopped.
    if HV.violation(cpu) == Verdict::StopCell {
        cells::park(cpu, frame);
    }
}
