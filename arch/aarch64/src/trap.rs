//! What a trap from a cell means, decoded from the syndrome without touching the CPU: data
//! aborts on emulated registers, trapped system register accesses, the state a synchronous
//! external abort injected into EL1 starts with. The per-CPU trap counters are
//! `cellvisor-core`'s ([`cellvisor_core::TrapReason`]).
//!
//! Register layouts: Arm ARM (DDI 0487) D23 "ESR_EL2" (ISS encodings for data aborts, EC 0x24,
//! and for trapped MSR/MRS, EC 0x18), "HPFAR_EL2", D1.3 "Exception entry" and
//! D1.3.1 "Exception vectors", C5.2.18 "SPSR_EL1".

use crate::esr::Esr;
use core::fmt;

/// Exception classes the trap handler dispatches on (ESR_EL2.EC).
pub mod class {
    /// Trapped MSR, MRS or system instruction (AArch64).
    pub const SYSREG: u8 = 0x18;
    /// HVC from AArch64.
    pub const HVC64: u8 = 0x16;
    /// SMC from AArch64 (trapped by `HCR_EL2.TSC`).
    pub const SMC64: u8 = 0x17;
    /// Instruction abort from a lower EL.
    pub const INSTRUCTION_ABORT_LOWER: u8 = 0x20;
    /// Data abort from a lower EL.
    pub const DATA_ABORT_LOWER: u8 = 0x24;
}

/// Size of a load or store.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AccessWidth {
    /// 1 byte.
    Byte,
    /// 2 bytes.
    Half,
    /// 4 bytes.
    Word,
    /// 8 bytes.
    Double,
}

impl AccessWidth {
    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            Self::Byte => 1,
            Self::Half => 2,
            Self::Word => 4,
            Self::Double => 8,
        }
    }

    const fn from_sas(sas: u64) -> Self {
        match sas & 0b11 {
            0 => Self::Byte,
            1 => Self::Half,
            2 => Self::Word,
            _ => Self::Double,
        }
    }
}

/// A data abort the syndrome describes completely (ISV = 1): a single load or store to one
/// general-purpose register, which the hypervisor can emulate and then skip.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct MmioTrap {
    /// The intermediate physical address accessed.
    pub ipa: u64,
    /// Access size.
    pub width: AccessWidth,
    /// A store (WnR).
    pub write: bool,
    /// The register transferred (SRT); 31 is the zero register.
    pub register: u8,
    /// A load that sign-extends (SSE).
    pub sign_extend: bool,
    /// The register is 64 bits wide (SF); otherwise 32 bits, upper half cleared on loads.
    pub sixty_four: bool,
}

/// Why a data abort cannot be emulated.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum NotEmulable {
    /// Not a data abort.
    NotDataAbort,
    /// ISV = 0: a load/store pair, a register write-back, SIMD or an atomic; the syndrome
    /// does not say which registers are involved.
    NoSyndrome,
    /// The fault is on a stage-1 translation table walk (S1PTW), not on the access.
    TableWalk,
}

impl fmt::Display for NotEmulable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotDataAbort => "not a data abort",
            Self::NoSyndrome => {
                "the instruction is not emulable (no valid syndrome: load/store pair, write-back, SIMD or atomic)"
            }
            Self::TableWalk => "the fault is on a stage-1 table walk",
        })
    }
}

/// The faulting intermediate physical address of a stage-2 abort: HPFAR_EL2.FIPA (bits
/// \[43:4\], address bits \[51:12\]) plus the page offset from FAR_EL2.
pub const fn fault_ipa(hpfar: u64, far: u64) -> u64 {
    ((hpfar >> 4) & 0xff_ffff_ffff) << 12 | (far & 0xfff)
}

impl MmioTrap {
    /// Decodes a data abort from a lower EL.
    pub fn decode(esr: Esr, hpfar: u64, far: u64) -> Result<Self, NotEmulable> {
        if !esr.is_data_abort() {
            return Err(NotEmulable::NotDataAbort);
        }
        let iss = u64::from(esr.iss());
        if iss & (1 << 7) != 0 {
            return Err(NotEmulable::TableWalk);
        }
        if iss & (1 << 24) == 0 {
            return Err(NotEmulable::NoSyndrome);
        }
        Ok(Self {
            ipa: fault_ipa(hpfar, far),
            width: AccessWidth::from_sas(iss >> 22),
            write: iss & (1 << 6) != 0,
            register: (iss >> 16 & 0x1f) as u8,
            sign_extend: iss & (1 << 21) != 0,
            sixty_four: iss & (1 << 15) != 0,
        })
    }

    /// The value a store writes, from the register file (`x[31]` reads as zero).
    pub fn store_value(&self, x: &[u64; 31]) -> u64 {
        let raw = x.get(usize::from(self.register)).copied().unwrap_or(0);
        match self.width {
            AccessWidth::Double => raw,
            width => raw & ((1 << (8 * width.bytes())) - 1),
        }
    }

    /// The register value a load of `value` leaves: sign or zero extension as the
    /// instruction asked, 32-bit registers with their upper half cleared.
    pub fn load_result(&self, value: u64) -> u64 {
        let bits = 8 * self.width.bytes() as u32;
        let value = if bits == 64 {
            value
        } else {
            value & ((1 << bits) - 1)
        };
        let extended = if self.sign_extend && bits < 64 {
            let shift = 64 - bits;
            (((value << shift) as i64) >> shift) as u64
        } else {
            value
        };
        if self.sixty_four {
            extended
        } else {
            extended & 0xffff_ffff
        }
    }

    /// Completes a load into the register file (a load into the zero register is dropped).
    pub fn complete_load(&self, x: &mut [u64; 31], value: u64) {
        if let Some(register) = x.get_mut(usize::from(self.register)) {
            *register = self.load_result(value);
        }
    }
}

/// A trapped MSR/MRS (EC 0x18): which system register, which direction, which GPR.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SysregTrap {
    /// The register encoding (op0, op1, CRn, CRm, op2).
    pub register: SysregId,
    /// MRS (a read into `gpr`) rather than MSR.
    pub read: bool,
    /// The general-purpose register (31: the zero register).
    pub gpr: u8,
}

/// A system register encoding.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SysregId {
    /// op0.
    pub op0: u8,
    /// op1.
    pub op1: u8,
    /// CRn.
    pub crn: u8,
    /// CRm.
    pub crm: u8,
    /// op2.
    pub op2: u8,
}

impl SysregId {
    /// `ICC_SGI1R_EL1`: generate a Group 1 SGI (IHI 0069).
    pub const ICC_SGI1R_EL1: Self = Self::new(3, 0, 12, 11, 5);
    /// `ICC_ASGI1R_EL1`: generate an SGI for the other Security state.
    pub const ICC_ASGI1R_EL1: Self = Self::new(3, 0, 12, 11, 6);
    /// `ICC_SGI0R_EL1`: generate a Group 0 SGI.
    pub const ICC_SGI0R_EL1: Self = Self::new(3, 0, 12, 11, 7);

    /// The encoding (op0, op1, CRn, CRm, op2).
    pub const fn new(op0: u8, op1: u8, crn: u8, crm: u8, op2: u8) -> Self {
        Self {
            op0,
            op1,
            crn,
            crm,
            op2,
        }
    }
}

impl fmt::Display for SysregId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "S{}_{}_C{}_C{}_{}",
            self.op0, self.op1, self.crn, self.crm, self.op2
        )
    }
}

impl SysregTrap {
    /// Decodes the ISS of EC 0x18: Op0 `[21:20]`, Op2 `[19:17]`, Op1 `[16:14]`, CRn
    /// `[13:10]`, Rt `[9:5]`, CRm `[4:1]`, Direction `[0]` (1: read).
    pub const fn decode(esr: Esr) -> Self {
        let iss = esr.iss();
        Self {
            register: SysregId::new(
                (iss >> 20 & 0b11) as u8,
                (iss >> 14 & 0b111) as u8,
                (iss >> 10 & 0xf) as u8,
                (iss >> 1 & 0xf) as u8,
                (iss >> 17 & 0b111) as u8,
            ),
            read: iss & 1 != 0,
            gpr: (iss >> 5 & 0x1f) as u8,
        }
    }
}

/// `SPSR_EL2.M[3:0]` values of the contexts a cell runs in.
const MODE_EL0T: u64 = 0b0000;
const MODE_EL1T: u64 = 0b0100;
const MODE_EL1H: u64 = 0b0101;
/// `SPSR.{D,A,I,F}`, bits \[9:6\].
const DAIF: u64 = 0b1111 << 6;
/// `SPSR.PAN`, bit 22.
const PAN: u64 = 1 << 22;
/// `SPSR.M[4]`: the context was AArch32.
const MODE_AARCH32: u64 = 1 << 4;
/// `SPSR.M[4:0]` of AArch32 User mode (EL0), the only AArch32 context a cell has: EL1 is
/// AArch64 (`HCR_EL2.RW` = 1), so 32-bit code runs at EL0 only.
const MODE_AARCH32_USER: u64 = 0b1_0000;

/// The PSTATE a cell's vCPU starts with at a PSCI CPU_ON or boot entry point: EL1 with
/// SP_EL1, all of D, A, I and F masked (Linux `booting.rst`, PSCI 1.1 §6.4.3.3).
pub const SPSR_EL1H_MASKED: u64 = DAIF | MODE_EL1H;

/// Which abort to inject.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AbortKind {
    /// A data abort; `write` is WnR.
    Data {
        /// The access was a store.
        write: bool,
    },
    /// An instruction (prefetch) abort.
    Instruction,
}

/// Everything the hypervisor writes to make a cell's EL1 take a synchronous external abort
/// as if the hardware had raised it (Arm ARM D1.3 "Exception entry" to AArch64 EL1).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct InjectedAbort {
    /// ESR_EL1.
    pub esr: u64,
    /// FAR_EL1 (the faulting virtual address).
    pub far: u64,
    /// ELR_EL1: where the abort was taken (the faulting instruction).
    pub elr: u64,
    /// SPSR_EL1: the interrupted PSTATE.
    pub spsr: u64,
    /// The new ELR_EL2: the EL1 vector to run.
    pub vector: u64,
    /// The new SPSR_EL2: EL1h with D, A, I, F masked (and PAN if the kernel asked for it).
    pub pstate: u64,
}

/// Why an abort cannot be injected.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum NotInjectable {
    /// An AArch32 mode other than User: impossible while EL1 is AArch64 (`HCR_EL2.RW` = 1,
    /// which the hypervisor always sets), so a sign of a hypervisor bug.
    Aarch32,
    /// A mode a cell cannot be in (EL2 or EL3, or reserved).
    BadMode(u64),
}

/// Computes the injection of a synchronous external abort.
///
/// - `spsr`/`elr`/`far`: SPSR_EL2, ELR_EL2, FAR_EL2 of the trap;
/// - `vbar`: VBAR_EL1;
/// - `set_pan`: the CPU has FEAT_PAN and `SCTLR_EL1.SPAN` = 0, so PSTATE.PAN is set on
///   exception entry to EL1.
///
/// The vector offset is 0x000 from EL1t, 0x200 from EL1h, 0x400 from AArch64 EL0 and
/// 0x600 from AArch32 EL0 (User mode, a 32-bit process under a 64-bit kernel) (D1.3.1).
/// ESR_EL1: EC 0x24/0x25 (data abort from a lower/the same EL) or 0x20/0x21 (instruction
/// abort), IL = 1 (no valid instruction syndrome, whatever the instruction's length),
/// fault status 0b010000 "synchronous external abort, not on a translation table walk", WnR
/// for data aborts. From AArch32, SPSR_EL1 is the 32-bit CPSR as SPSR_EL2 holds it and
/// FAR_EL1 the 32-bit address in its low half.
pub fn external_abort(
    kind: AbortKind,
    spsr: u64,
    elr: u64,
    far: u64,
    vbar: u64,
    set_pan: bool,
) -> Result<InjectedAbort, NotInjectable> {
    let (same_el, offset) = match spsr & 0x1f {
        MODE_AARCH32_USER => (false, 0x600),
        _ if spsr & MODE_AARCH32 != 0 => return Err(NotInjectable::Aarch32),
        MODE_EL0T => (false, 0x400),
        MODE_EL1T => (true, 0x000),
        MODE_EL1H => (true, 0x200),
        mode => return Err(NotInjectable::BadMode(mode)),
    };
    let far = if spsr & MODE_AARCH32 != 0 {
        far & 0xffff_ffff
    } else {
        far
    };
    let (class, iss) = match kind {
        AbortKind::Data { write } => (
            if same_el { 0x25 } else { 0x24 },
            0x10 | u64::from(write) << 6,
        ),
        AbortKind::Instruction => (if same_el { 0x21 } else { 0x20 }, 0x10),
    };
    Ok(InjectedAbort {
        esr: class << 26 | 1 << 25 | iss,
        far,
        elr,
        spsr,
        vector: vbar.wrapping_add(offset),
        pstate: SPSR_EL1H_MASKED | if set_pan { PAN } else { spsr & PAN },
    })
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;

    /// ESR of a data abort from a lower EL with the given ISS.
    fn dabt(iss: u64) -> Esr {
        Esr(0x24 << 26 | 1 << 25 | iss)
    }

    #[test]
    fn decodes_a_word_store() {
        // ISV, SAS = word, SRT = x3, SF = 0, WnR, DFSC = translation fault level 3.
        let esr = dabt(1 << 24 | 2 << 22 | 3 << 16 | 1 << 6 | 0x07);
        let trap =
            MmioTrap::decode(esr, 0x0080_0000 << 4 >> 12 << 4, 0xffff_0000_1234_5104).unwrap();
        assert_eq!(trap.ipa, 0x0800_0104);
        assert_eq!(trap.width, AccessWidth::Word);
        assert!(trap.write);
        assert_eq!(trap.register, 3);
        let mut x = [0u64; 31];
        x[3] = 0xdead_beef_1234_5678;
        assert_eq!(trap.store_value(&x), 0x1234_5678);
    }

    #[test]
    fn hpfar_gives_the_page_and_far_the_offset() {
        // IPA 0x12_3456_7abc: FIPA = 0x12_3456_7, HPFAR bits [43:4].
        assert_eq!(fault_ipa(0x1234567 << 4, 0xabc), 0x12_3456_7abc);
        assert_eq!(
            fault_ipa(0x1234567 << 4 | 0xf, 0xffff_ffff_ffff_fabc),
            0x12_3456_7abc
        );
    }

    #[test]
    fn loads_extend_as_asked() {
        let esr = |sas: u64, sse: bool, sf: bool| {
            dabt(1 << 24 | sas << 22 | u64::from(sse) << 21 | 5 << 16 | u64::from(sf) << 15)
        };
        let ldrsb_x = MmioTrap::decode(esr(0, true, true), 0, 0).unwrap();
        assert_eq!(ldrsb_x.load_result(0x80), 0xffff_ffff_ffff_ff80);
        let ldrsb_w = MmioTrap::decode(esr(0, true, false), 0, 0).unwrap();
        assert_eq!(ldrsb_w.load_result(0x80), 0xffff_ff80);
        let ldrh = MmioTrap::decode(esr(1, false, false), 0, 0).unwrap();
        assert_eq!(ldrh.load_result(0xffff_8001), 0x8001);
        let ldr_x = MmioTrap::decode(esr(3, false, true), 0, 0).unwrap();
        assert_eq!(ldr_x.load_result(u64::MAX), u64::MAX);
        let mut x = [7u64; 31];
        ldr_x.complete_load(&mut x, 42);
        assert_eq!(x[5], 42);
        // A load into xzr changes nothing.
        let xzr = MmioTrap::decode(dabt(1 << 24 | 2 << 22 | 31 << 16), 0, 0).unwrap();
        xzr.complete_load(&mut x, 9);
        assert!(x
            .iter()
            .enumerate()
            .all(|(i, &v)| v == if i == 5 { 42 } else { 7 }));
        assert_eq!(xzr.store_value(&x), 0, "xzr stores zero");
    }

    #[test]
    fn refuses_what_it_cannot_emulate() {
        assert_eq!(
            MmioTrap::decode(dabt(2 << 22 | 1 << 6), 0, 0),
            Err(NotEmulable::NoSyndrome)
        );
        assert_eq!(
            MmioTrap::decode(dabt(1 << 24 | 1 << 7), 0, 0),
            Err(NotEmulable::TableWalk)
        );
        assert_eq!(
            MmioTrap::decode(Esr(0x17 << 26), 0, 0),
            Err(NotEmulable::NotDataAbort)
        );
    }

    #[test]
    fn decodes_an_sgi1r_write() {
        // msr ICC_SGI1R_EL1, x2: Op0 3, Op2 5, Op1 0, CRn 12, Rt 2, CRm 11, write.
        let iss = 3 << 20 | 5 << 17 | 12 << 10 | 2 << 5 | 11 << 1;
        let trap = SysregTrap::decode(Esr(0x18 << 26 | 1 << 25 | iss));
        assert_eq!(trap.register, SysregId::ICC_SGI1R_EL1);
        assert!(!trap.read);
        assert_eq!(trap.gpr, 2);
        assert_eq!(trap.register.to_string(), "S3_0_C12_C11_5");
    }

    #[test]
    fn injects_data_aborts_at_the_right_vector() {
        let vbar = 0xffff_8000_1000_0000;
        // From EL0: lower-EL vector, EC 0x24.
        let from_el0 = external_abort(
            AbortKind::Data { write: false },
            0x0,
            0x40_1000,
            0x7000,
            vbar,
            false,
        )
        .unwrap();
        assert_eq!(from_el0.vector, vbar + 0x400);
        assert_eq!(from_el0.esr, 0x24 << 26 | 1 << 25 | 0x10);
        assert_eq!(
            (from_el0.elr, from_el0.far, from_el0.spsr),
            (0x40_1000, 0x7000, 0)
        );
        assert_eq!(from_el0.pstate, 0x3c5);
        // From EL1h, a write: current-EL vector, EC 0x25, WnR.
        let from_el1 = external_abort(
            AbortKind::Data { write: true },
            0x3c5,
            0x10,
            0x20,
            vbar,
            true,
        )
        .unwrap();
        assert_eq!(from_el1.vector, vbar + 0x200);
        assert_eq!(from_el1.esr, 0x25 << 26 | 1 << 25 | 1 << 6 | 0x10);
        assert_eq!(from_el1.pstate, 0x3c5 | 1 << 22);
        // Instruction abort from EL1t.
        let prefetch = external_abort(AbortKind::Instruction, 0x4, 0, 0, vbar, false).unwrap();
        assert_eq!(prefetch.vector, vbar);
        assert_eq!(prefetch.esr >> 26, 0x21);
        // PAN already set survives when SPAN does not force it.
        let pan = external_abort(AbortKind::Instruction, 0x5 | 1 << 22, 0, 0, vbar, false).unwrap();
        assert_eq!(pan.pstate & 1 << 22, 1 << 22);
    }

    #[test]
    fn injects_into_a_32_bit_process() {
        let vbar = 0xffff_8000_1000_0000;
        // AArch32 User mode, Thumb (T, bit 5), flags set: a 32-bit process reading
        // outside the cell (the root cell's `devmem` built for armhf).
        let cpsr = 0x2000_0030;
        let abort = external_abort(
            AbortKind::Data { write: false },
            cpsr,
            0x2_0120,
            0xf7f9_1000,
            vbar,
            false,
        )
        .unwrap();
        assert_eq!(abort.vector, vbar + 0x600, "lower EL using AArch32");
        assert_eq!(abort.esr, 0x24 << 26 | 1 << 25 | 0x10);
        assert_eq!(
            (abort.elr, abort.far, abort.spsr),
            (0x2_0120, 0xf7f9_1000, cpsr)
        );
        assert_eq!(abort.pstate, SPSR_EL1H_MASKED);
        let prefetch =
            external_abort(AbortKind::Instruction, 0x10, 0x8000, 0x8000, vbar, true).unwrap();
        assert_eq!(prefetch.esr >> 26, 0x20);
        assert_eq!(prefetch.pstate, SPSR_EL1H_MASKED | PAN);
    }

    #[test]
    fn refuses_to_inject_into_impossible_modes() {
        let data = AbortKind::Data { write: false };
        // AArch32 Supervisor and Hyp: EL1 and EL2 are AArch64.
        for mode in [0x13, 0x1a] {
            assert_eq!(
                external_abort(data, mode, 0, 0, 0, false),
                Err(NotInjectable::Aarch32)
            );
        }
        assert_eq!(
            external_abort(data, 0x9, 0, 0, 0, false),
            Err(NotInjectable::BadMode(0x9))
        );
    }
}
