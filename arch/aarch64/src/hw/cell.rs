//! The root cell: built from the system configuration at boot (stage 2, GIC partition,
//! device tree), then entered on the boot CPU; its other vCPUs start through PSCI CPU_ON.

use super::HV;
use crate::board::MAX_CPUS;
use crate::psci::{status, Call, Route};
use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{
    Readable, Writeable, CNTHCTL_EL2, CNTVOFF_EL2, CPTR_EL2, HCR_EL2, HFGRTR_EL2, HFGWTR_EL2,
    MIDR_EL1, MPIDR_EL1, VMPIDR_EL2, VTCR_EL2, VTTBR_EL2,
};
use cellvisor_cell::CellId;
use cellvisor_config::SystemConfigView;
use cellvisor_core::{PowerOnError, TrapReason};
use cellvisor_paging::{PaSize, PhysAddr, Stage2};
use core::sync::atomic::{AtomicBool, Ordering};
use spin::Once;
use tock_registers::fields::{Field, FieldValue};

/// What the hypervisor remembers of the root cell.
pub struct RootCell {
    mpidrs: heapless::Vec<u64, MAX_CPUS>,
    vtcr: u64,
    /// Stage-2 table frames in use.
    pub table_frames: usize,
    /// Bits of IPA.
    pub ipa_bits: u32,
}

static ROOT: Once<RootCell> = Once::new();
/// The firmware implements SMCCC 1.1 (PSCI_FEATURES(SMCCC_VERSION) succeeded).
static FIRMWARE_SMCCC: AtomicBool = AtomicBool::new(false);

/// The root cell's name, for reports.
pub fn name() -> heapless::String<32> {
    HV.cell(CellId(0)).name()
}

/// Whether the firmware takes SMCCC calls beyond PSCI.
pub fn firmware_smccc() -> bool {
    FIRMWARE_SMCCC.load(Ordering::Relaxed)
}

/// The hypervisor CPU index of the CPU with affinity `mpidr`, if it belongs to cell `cell`.
pub fn cpu_of(cell: CellId, mpidr: u64) -> Option<usize> {
    let root = ROOT.get()?;
    let mpidr = mpidr & crate::board::MPIDR_AFFINITY_MASK;
    let cpus = HV.cell(cell).cpus();
    root.mpidrs
        .iter()
        .position(|&m| m == mpidr)
        .filter(|&cpu| cpu < 64 && cpus & 1 << cpu != 0)
}

/// Why the root cell cannot be built.
#[derive(Debug)]
pub enum BuildError {
    /// Stage-2 registers.
    Stage2(cellvisor_paging::ConfigError),
    /// The root cell's tables.
    Machine(cellvisor_core::MachineError),
    /// Something else, described.
    Other(&'static str),
}

impl core::fmt::Display for BuildError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Stage2(e) => write!(f, "stage-2 registers: {e:?}"),
            Self::Machine(e) => write!(f, "{e}"),
            Self::Other(s) => f.write_str(s),
        }
    }
}

/// Builds the root cell's stage 2 from the configuration, with table frames from
/// `[frames, frames + count * 4 KiB)` (hypervisor memory mapped at EL2).
pub fn build(
    config: &SystemConfigView<'_>,
    mpidrs: &[u64],
    frames: PhysAddr,
    frame_count: usize,
    gicv: Option<(u64, u64, u64)>,
    data_window: Option<(u64, u64)>,
) -> Result<&'static RootCell, BuildError> {
    GICV.call_once(|| gicv);
    let root = config.root_cell();
    let mut max_end = 1u64 << 32;
    for region in root.memory_regions() {
        max_end = max_end.max(region.virt_start + region.size);
    }
    let parange = (aarch64_cpu::registers::ID_AA64MMFR0_EL1.get() & 0xf) as u8;
    let pa_size = PaSize::from_parange(parange).unwrap_or(PaSize::Bits40);
    let needed = 64 - (max_end - 1).leading_zeros();
    let ipa_bits = needed.clamp(32, pa_size.bits().min(48));
    if needed > ipa_bits {
        return Err(BuildError::Other(
            "a root-cell region lies above the CPU's physical address size",
        ));
    }
    let format = Stage2::new(ipa_bits).map_err(BuildError::Stage2)?;
    let mut cpus = 0u64;
    for cpu in root.cpus().iter() {
        if (cpu as usize) < mpidrs.len().min(64) {
            cpus |= 1 << cpu;
        }
    }
    let tables = HV
        .install_root(config, format, frames, frame_count, cpus, data_window)
        .map_err(BuildError::Machine)?;
    let vtcr = format
        .vtcr(pa_size, false)
        .map_err(BuildError::Stage2)?
        .bits();
    let mut list = heapless::Vec::new();
    for &mpidr in mpidrs.iter().take(MAX_CPUS) {
        let _ = list.push(mpidr);
    }
    FIRMWARE_SMCCC.store(
        smccc::psci::psci_features::<smccc::Smc>(crate::psci::function::SMCCC_VERSION).is_ok(),
        Ordering::Relaxed,
    );
    Ok(ROOT.call_once(|| RootCell {
        mpidrs: list,
        vtcr,
        table_frames: tables.frames,
        ipa_bits,
    }))
}

/// Whether hypervisor CPU `cpu` belongs to the root cell.
pub fn owns_cpu(cpu: usize) -> bool {
    HV.root_owns(cpu)
}

/// GICv2: (GICC address, GICV address, size) that cells see as their CPU interface.
pub fn gicv() -> Option<(u64, u64, u64)> {
    GICV.get().copied().flatten()
}

static GICV: Once<Option<(u64, u64, u64)>> = Once::new();

/// Loads the EL2 registers that run the root cell's vCPU on this CPU.
pub fn prepare_cpu() {
    prepare_cpu_for(CellId(0), PhysAddr::new(HV.cell(CellId(0)).tables()));
}

/// Loads the EL2 registers that run a vCPU of cell `cell`, whose stage-2 tables start at
/// `tables`, on this CPU. The cell's VMID is its slot number plus one.
pub fn prepare_cpu_for(cell: CellId, tables: PhysAddr) {
    let Some(root) = ROOT.get() else { return };
    // VTTBR_EL2 (Arm ARM D23): BADDR, VMID in [55:48].
    let vttbr = tables.as_u64() | (u64::from(cell.0) + 1) << 48;
    VTCR_EL2.set(root.vtcr);
    VTTBR_EL2.set(vttbr);
    // HCR_EL2 (Arm ARM D23): VM (stage 2), SWIO, FMO and IMO (interrupts to EL2, virtual
    // interrupts and ICV registers for EL1), TSC (SMC traps), RW (EL1 is AArch64); every other
    // bit 0.
    HCR_EL2.write(
        HCR_EL2::VM::Enable
            + HCR_EL2::SWIO::SET
            + HCR_EL2::FMO::EnableVirtualFIQ
            + HCR_EL2::IMO::EnableVirtualIRQ
            + HCR_EL2::TSC::EnableTrapEl1SmcToEl2
            + HCR_EL2::RW::EL1IsAarch64
            + feature_enables(),
    );
    // EL1 may read the physical counter and use the physical timer (HCR_EL2.E2H = 0 layout);
    // virtual counter offset 0 so that all CPUs and cells agree on time.
    CNTHCTL_EL2.write(CNTHCTL_EL2::EL1PCTEN::SET + CNTHCTL_EL2::EL1PCEN::SET);
    CNTVOFF_EL2.set(0);
    super::sysreg::set_vpidr(MIDR_EL1.get());
    VMPIDR_EL2.set(MPIDR_EL1.get());
    configure_extensions();
    // MDCR_EL2: the PMU's last counter for the hypervisor's instruction count, the others to
    // the cell; no debug traps.
    super::pmu::prepare_cpu(super::cpu_index());
    barrier::isb(barrier::SY);
    // SAFETY: invalidating this CPU's stage-1/2 TLB entries of the current VMID only drops
    // cached translations of the (new) cell.
    unsafe { core::arch::asm!("tlbi vmalls12e1", "dsb nsh", "isb", options(nostack)) };
}

/// HCR_EL2 bits that stop trapping features EL1 owns outright on this CPU: APK and API
/// (pointer authentication keys and instructions, FEAT_PAuth) and ATA (allocation tags,
/// FEAT_MTE2). Arm ARM D23 "HCR_EL2".
/// ID_AA64ISAR1_EL1 fields that say the CPU has pointer authentication: APA, API, GPA, GPI.
pub const PAUTH_ISAR1: u64 = 0xff00_0ff0;
/// ID_AA64ISAR2_EL1 fields that say so: GPA3, APA3.
pub const PAUTH_ISAR2: u64 = 0xff00;

fn feature_enables() -> FieldValue<u64, HCR_EL2::Register> {
    use aarch64_cpu::registers::{ID_AA64ISAR1_EL1, ID_AA64PFR1_EL1};
    let isar1 = ID_AA64ISAR1_EL1.get();
    let isar2 = super::sysreg::id_aa64isar2();
    // APA [7:4], API [11:8], GPA [27:24], GPI [31:28]; ISAR2 GPA3 [11:8], APA3 [15:12]. (The
    // mask was 0xff00_00ff0 before, which took FRINTTS [35:32] for pointer authentication.)
    let pauth = u64::from(isar1 & PAUTH_ISAR1 != 0 || isar2 & PAUTH_ISAR2 != 0);
    let mte2 = u64::from(ID_AA64PFR1_EL1.read(ID_AA64PFR1_EL1::MTE) >= 2);
    HCR_EL2::APK.val(pauth) + HCR_EL2::API.val(pauth) + HCR_EL2::ATA.val(mte2)
}

/// Lets EL1 use the CPU's FP/SIMD, SVE and SME as on bare metal, and switches off the
/// fine-grained traps whose reset value traps (the "n" bits), for the features the CPU has
/// (Arm ARM D23: CPTR_EL2 with HCR_EL2.E2H = 0, ZCR_EL2, SMCR_EL2, HFGRTR_EL2, HFGWTR_EL2).
fn configure_extensions() {
    use aarch64_cpu::registers::{ID_AA64MMFR0_EL1, ID_AA64PFR0_EL1, ID_AA64PFR1_EL1};
    let field = |value: u64, shift: u32| (value >> shift) & 0xf != 0;
    let sve = field(ID_AA64PFR0_EL1.get(), 32);
    let pfr1 = ID_AA64PFR1_EL1.get();
    let sme = field(pfr1, 24);
    let gcs = field(pfr1, 44);
    let fgt = field(ID_AA64MMFR0_EL1.get(), 56);
    let mmfr3 = super::sysreg::id_aa64mmfr3();
    let (s1pie, s1poe) = (field(mmfr3, 8), field(mmfr3, 16));
    // CPTR_EL2 (HCR_EL2.E2H = 0 layout): RES1 bits 13, 9 and [7:0]; TSM (12) and TZ (8) are
    // RES1 without SME/SVE and clear (no trap) with them; TFP (10) clear: no FP/SIMD trap;
    // TTA, TAM and TCPAC clear too. aarch64-cpu 11 names only TAM: the others are defined here.
    const RES1: u64 = 1 << 13 | 1 << 9 | 0xff;
    const RES1_BITS: FieldValue<u64, CPTR_EL2::Register> = FieldValue::<u64, _>::new(RES1, 0, RES1);
    const TZ: Field<u64, CPTR_EL2::Register> = Field::<u64, _>::new(1, 8);
    const TFP: Field<u64, CPTR_EL2::Register> = Field::<u64, _>::new(1, 10);
    const TSM: Field<u64, CPTR_EL2::Register> = Field::<u64, _>::new(1, 12);
    CPTR_EL2.write(
        RES1_BITS
            + TSM.val(u64::from(!sme))
            + TZ.val(u64::from(!sve))
            + TFP.val(0)
            + CPTR_EL2::TAM::CLEAR,
    );
    barrier::isb(barrier::SY);
    if sve {
        // ZCR_EL2.LEN = all ones: EL1 may use the longest vector the CPU implements.
        super::sysreg::set_zcr_el2(0x1ff);
    }
    if sme {
        super::sysreg::set_smcr_el2(0x1ff);
    }
    if fgt {
        // Each "n" bit set (no trap) if the CPU has the feature; every other bit 0.
        let (sme, s1pie, s1poe, gcs) = (
            u64::from(sme),
            u64::from(s1pie),
            u64::from(s1poe),
            u64::from(gcs),
        );
        HFGRTR_EL2.write(
            HFGRTR_EL2::nTPIDR2_EL0.val(sme)
                + HFGRTR_EL2::nSMPRI_EL1.val(sme)
                + HFGRTR_EL2::nPIR_EL1.val(s1pie)
                + HFGRTR_EL2::nPIRE0_EL1.val(s1pie)
                + HFGRTR_EL2::nPOR_EL1.val(s1poe)
                + HFGRTR_EL2::nPOR_EL0.val(s1poe)
                + HFGRTR_EL2::nGCS_EL1.val(gcs)
                + HFGRTR_EL2::nGCS_EL0.val(gcs),
        );
        HFGWTR_EL2.write(
            HFGWTR_EL2::nTPIDR2_EL0.val(sme)
                + HFGWTR_EL2::nSMPRI_EL1.val(sme)
                + HFGWTR_EL2::nPIR_EL1.val(s1pie)
                + HFGWTR_EL2::nPIRE0_EL1.val(s1pie)
                + HFGWTR_EL2::nPOR_EL1.val(s1poe)
                + HFGWTR_EL2::nPOR_EL0.val(s1poe)
                + HFGWTR_EL2::nGCS_EL1.val(gcs)
                + HFGWTR_EL2::nGCS_EL0.val(gcs),
        );
    }
}

/// PSCI CPU_ON from the cell: `target` MPIDR, `entry` IPA, `context` for x0.
pub fn cpu_on(cell: CellId, target: u64, entry: u64, context: u64, function: u32) -> i64 {
    let Some(cpu) = cpu_of(cell, target) else {
        return status::INVALID_PARAMETERS;
    };
    // SMC32 CPU_ON passes 32-bit arguments.
    let entry = if function & crate::psci::function::SMC64 == 0 {
        entry & 0xffff_ffff
    } else {
        entry
    };
    match HV.power_on(cell, cpu, entry, context, 4) {
        Ok(()) => status::SUCCESS,
        Err(PowerOnError::Denied) => status::DENIED,
        Err(PowerOnError::InvalidAddress) => status::INVALID_ADDRESS,
        Err(PowerOnError::Busy(error)) => crate::psci::cpu_on_status(error),
    }
}

/// PSCI SYSTEM_OFF / SYSTEM_RESET of the root cell: the whole machine. Prints the trap
/// counters first.
pub fn system_power(cpu: usize, reset: bool) -> i64 {
    super::print(format_args!(
        "cellvisor: cell \"{}\" (CPU {cpu}) asked for system {}\n",
        name(),
        if reset { "reset" } else { "off" }
    ));
    print_counters();
    let result = if reset {
        smccc::psci::system_reset::<smccc::Smc>()
    } else {
        smccc::psci::system_off::<smccc::Smc>()
    };
    log::error!("firmware SYSTEM_OFF/RESET returned: {result:?}");
    status::DENIED
}

/// SMCCC calls other than PSCI from the cell on `cpu`: `Some(x0..x3)` to return, `None` for
/// NOT_SUPPORTED. The policy per caller is [`crate::psci::smccc_route`]'s; the root cell's
/// counter dumps come at most once per [`COUNTERS_INTERVAL_MS`] (DENIED in between) and within
/// its console budget ([`cellvisor_core::budget`]).
pub fn smccc_policy(cpu: usize, call: Call, frame: &super::frame::TrapFrame) -> Option<[u64; 4]> {
    let root = HV.owner(cpu).0 == 0;
    let forward = |id: u32, args: [u64; 17]| {
        let result = smccc::smc64(id, args);
        Some([result[0], result[1], result[2], result[3]])
    };
    let id = frame.x[0] as u32;
    match crate::psci::smccc_route(call, root, firmware_smccc(), frame.x[1]) {
        Route::Forward => {
            let mut args = [0u64; 17];
            args.copy_from_slice(&frame.x[1..18]);
            forward(id, args)
        }
        Route::ForwardOnly(x1) => {
            let mut args = [0u64; 17];
            args[0] = x1;
            forward(id, args)
        }
        Route::Counters => {
            if !HV.counters_due(COUNTERS_INTERVAL_MS) {
                return Some([status::DENIED as u64, 0, 0, 0]);
            }
            let lines = 2 + ROOT.get().map_or(0, |root| root.mpidrs.len());
            HV.note_with(cpu, CellId(0), lines * 160, print_counters);
            Some([0, 0, 0, 0])
        }
        Route::Return(value) => (value != status::NOT_SUPPORTED).then_some([value as u64, 0, 0, 0]),
    }
}

/// The shortest time between two counter dumps the root cell asks for, milliseconds.
pub const COUNTERS_INTERVAL_MS: u64 = 1000;

/// Prints the trap counters of every CPU of the root cell.
pub fn print_counters() {
    let millis = HV.millis();
    super::print(format_args!(
        "cellvisor: trap counters of cell \"{}\" at {}.{:03} s:\n",
        name(),
        millis / 1000,
        millis % 1000
    ));
    let mut header = heapless::String::<160>::new();
    let _ = core::fmt::Write::write_str(&mut header, "  cpu        total");
    for reason in TrapReason::ALL {
        let _ = core::fmt::Write::write_fmt(&mut header, format_args!(" {:>11}", reason.name()));
    }
    super::print(format_args!("{header}\n"));
    let Some(root) = ROOT.get() else { return };
    for cpu in 0..root.mpidrs.len() {
        let counters = &HV.cpu(cpu).counters;
        if !owns_cpu(cpu) {
            continue;
        }
        let mut line = heapless::String::<160>::new();
        let _ = core::fmt::Write::write_fmt(
            &mut line,
            format_args!("  {cpu:<3} {:>12}", counters.total()),
        );
        for reason in TrapReason::ALL {
            let _ = core::fmt::Write::write_fmt(
                &mut line,
                format_args!(" {:>11}", counters.get(reason)),
            );
        }
        super::print(format_args!("{line}\n"));
    }
}
