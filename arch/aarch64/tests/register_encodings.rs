//! The register values the EL2 code (`src/hw`, built for the board only) writes through
//! `aarch64-cpu`'s fields, recomputed here on the host: each must equal the raw value the
//! code wrote before it used the fields, whatever the CPU features. A field that moved in an
//! `aarch64-cpu` update, or a wrong field name, shows up here.
//!
//! The expressions restate those of `src/hw`; the bits `aarch64-cpu` does not name are
//! defined as there.

use aarch64_cpu::registers::{
    CNTHCTL_EL2, CPTR_EL2, HCR_EL2, HFGRTR_EL2, HFGWTR_EL2, ICC_SRE_EL2, ICH_HCR_EL2, ICH_VTR_EL2,
    SCTLR_EL1,
};
use tock_registers::fields::{Field, FieldValue};

/// The four combinations of two features.
const BOTH: [(bool, bool); 4] = [(false, false), (false, true), (true, false), (true, true)];

/// `hw::cell::prepare_cpu_for` and `feature_enables`: HCR_EL2.
#[test]
fn hcr_el2() {
    for (pauth, mte2) in BOTH {
        let features = HCR_EL2::APK.val(u64::from(pauth))
            + HCR_EL2::API.val(u64::from(pauth))
            + HCR_EL2::ATA.val(u64::from(mte2));
        let value = HCR_EL2::VM::Enable
            + HCR_EL2::SWIO::SET
            + HCR_EL2::FMO::EnableVirtualFIQ
            + HCR_EL2::IMO::EnableVirtualIRQ
            + HCR_EL2::TSC::EnableTrapEl1SmcToEl2
            + HCR_EL2::RW::EL1IsAarch64
            + features;
        // Before: VM | SWIO | FMO | IMO | TSC | RW, and APK | API, ATA as bits 40, 41, 56.
        let mut old = 1 << 0 | 1 << 1 | 1 << 3 | 1 << 4 | 1 << 19 | 1 << 31;
        if pauth {
            old |= 1 << 40 | 1 << 41;
        }
        if mte2 {
            old |= 1 << 56;
        }
        assert_eq!(value.value, old, "pauth {pauth}, mte2 {mte2}");
    }
    let base = HCR_EL2::VM::Enable
        + HCR_EL2::SWIO::SET
        + HCR_EL2::FMO::EnableVirtualFIQ
        + HCR_EL2::IMO::EnableVirtualIRQ
        + HCR_EL2::TSC::EnableTrapEl1SmcToEl2
        + HCR_EL2::RW::EL1IsAarch64;
    assert_eq!(base.value, 0x8008_001b);
}

/// `hw::cell::prepare_cpu_for`: CNTHCTL_EL2.
#[test]
fn cnthctl_el2() {
    let value = CNTHCTL_EL2::EL1PCTEN::SET + CNTHCTL_EL2::EL1PCEN::SET;
    assert_eq!(value.value, 0b11);
}

/// `hw::cell::configure_extensions`: CPTR_EL2.
#[test]
fn cptr_el2() {
    const RES1: u64 = 1 << 13 | 1 << 9 | 0xff;
    const RES1_BITS: FieldValue<u64, CPTR_EL2::Register> = FieldValue::<u64, _>::new(RES1, 0, RES1);
    const TZ: Field<u64, CPTR_EL2::Register> = Field::<u64, _>::new(1, 8);
    const TFP: Field<u64, CPTR_EL2::Register> = Field::<u64, _>::new(1, 10);
    const TSM: Field<u64, CPTR_EL2::Register> = Field::<u64, _>::new(1, 12);
    for (sme, sve) in BOTH {
        let value = RES1_BITS
            + TSM.val(u64::from(!sme))
            + TZ.val(u64::from(!sve))
            + TFP.val(0)
            + CPTR_EL2::TAM::CLEAR;
        let old = 0x22ff | u64::from(!sme) << 12 | u64::from(!sve) << 8;
        assert_eq!(value.value, old, "sme {sme}, sve {sve}");
    }
}

/// `hw::cell::configure_extensions`: HFGRTR_EL2 and HFGWTR_EL2, which got the same value.
#[test]
fn hfgrtr_hfgwtr_el2() {
    for features in 0..16u64 {
        let [sme, s1pie, s1poe, gcs] = [0, 1, 2, 3].map(|bit| features >> bit & 1);
        let read = HFGRTR_EL2::nTPIDR2_EL0.val(sme)
            + HFGRTR_EL2::nSMPRI_EL1.val(sme)
            + HFGRTR_EL2::nPIR_EL1.val(s1pie)
            + HFGRTR_EL2::nPIRE0_EL1.val(s1pie)
            + HFGRTR_EL2::nPOR_EL1.val(s1poe)
            + HFGRTR_EL2::nPOR_EL0.val(s1poe)
            + HFGRTR_EL2::nGCS_EL1.val(gcs)
            + HFGRTR_EL2::nGCS_EL0.val(gcs);
        let write = HFGWTR_EL2::nTPIDR2_EL0.val(sme)
            + HFGWTR_EL2::nSMPRI_EL1.val(sme)
            + HFGWTR_EL2::nPIR_EL1.val(s1pie)
            + HFGWTR_EL2::nPIRE0_EL1.val(s1pie)
            + HFGWTR_EL2::nPOR_EL1.val(s1poe)
            + HFGWTR_EL2::nPOR_EL0.val(s1poe)
            + HFGWTR_EL2::nGCS_EL1.val(gcs)
            + HFGWTR_EL2::nGCS_EL0.val(gcs);
        let mut old = 0u64;
        if sme != 0 {
            old |= 1 << 55 | 1 << 54;
        }
        if s1pie != 0 {
            old |= 1 << 58 | 1 << 57;
        }
        if s1poe != 0 {
            old |= 1 << 60 | 1 << 59;
        }
        if gcs != 0 {
            old |= 1 << 53 | 1 << 52;
        }
        assert_eq!(read.value, old, "features {features:#b}");
        assert_eq!(write.value, old, "features {features:#b}");
    }
}

/// `hw::cells::enter_frame`: SCTLR_EL1.
#[test]
fn sctlr_el1() {
    const RES1: u64 = 1 << 29 | 1 << 28 | 1 << 23 | 1 << 22 | 1 << 20 | 1 << 11;
    const RES1_BITS: FieldValue<u64, SCTLR_EL1::Register> =
        FieldValue::<u64, _>::new(RES1, 0, RES1);
    let value = RES1_BITS
        + SCTLR_EL1::M::Disable
        + SCTLR_EL1::A::Disable
        + SCTLR_EL1::C::NonCacheable
        + SCTLR_EL1::I::NonCacheable;
    assert_eq!(value.value, 0x30d0_0800);
}

/// `hw::gic::init_cpu`: ICC_SRE_EL2 (SRE and Enable set in the value read) and ICH_HCR_EL2.
#[test]
fn gic_cpu_interface() {
    let sre = ICC_SRE_EL2::SRE::SET + ICC_SRE_EL2::ENABLE::SET;
    for read in [0, 0b0110, 0b1001, 0xf, 0xffff_fff0] {
        assert_eq!(
            sre.modify(read),
            read | 0b1001,
            "ICC_SRE_EL2 read {read:#x}"
        );
    }
    assert_eq!(ICH_HCR_EL2::En::SET.value, 1);
}

/// `hw::gic`: the list register count (ICH_VTR_EL2.ListRegs, bits \[4:0\], plus one).
#[test]
fn ich_vtr_list_regs() {
    for vtr in [0, 3, 0x1f, 0x9000_0003, u64::MAX] {
        assert_eq!(
            ICH_VTR_EL2::ListRegs.read(vtr),
            vtr & 0x1f,
            "ICH_VTR_EL2 {vtr:#x}"
        );
    }
}

/// `hw::gic::IchListRegisters::set_underflow_interrupt`: ICH_HCR_EL2.UIE (bit 1) set or
/// cleared in the value read, the rest kept.
#[test]
fn ich_hcr_underflow() {
    for hcr in [0, 1, 0b10, 0b11, 0xf800_c0ff, u64::MAX] {
        assert_eq!(ICH_HCR_EL2::UIE::SET.modify(hcr), hcr | 1 << 1, "{hcr:#x}");
        assert_eq!(
            ICH_HCR_EL2::UIE::CLEAR.modify(hcr),
            hcr & !(1 << 1),
            "{hcr:#x}"
        );
    }
}
