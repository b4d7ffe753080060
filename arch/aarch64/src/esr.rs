//! Decoding of the Exception Syndrome Register (ESR_EL2), for reports people can read.
//!
//! Arm ARM (DDI 0487) D23 "ESR_EL2": EC in bits \[31:26\], IL in bit 25, ISS in bits \[24:0\];
//! for data and instruction aborts the ISS holds the fault status code (DFSC/IFSC, bits
//! \[5:0\]) and for data aborts WnR (bit 6); "ISS encoding for an exception from a Data Abort".

use core::fmt;

/// A raw ESR_EL2 value.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Esr(pub u64);

impl Esr {
    /// Exception class, bits \[31:26\].
    pub const fn class(self) -> u8 {
        ((self.0 >> 26) & 0x3f) as u8
    }

    /// Instruction specific syndrome, bits \[24:0\].
    pub const fn iss(self) -> u32 {
        (self.0 & 0x1ff_ffff) as u32
    }

    /// The length of the trapped instruction in bytes, from IL (bit 25): 2 for a 16-bit
    /// T32 instruction of a 32-bit process, else 4.
    pub const fn instruction_length(self) -> u64 {
        if self.0 & 1 << 25 != 0 {
            4
        } else {
            2
        }
    }

    /// Whether the class is a data abort (from a lower or the current EL).
    pub const fn is_data_abort(self) -> bool {
        matches!(self.class(), 0x24 | 0x25)
    }

    /// Whether the class is an instruction abort.
    pub const fn is_instruction_abort(self) -> bool {
        matches!(self.class(), 0x20 | 0x21)
    }

    /// Name of the exception class.
    pub const fn class_name(self) -> &'static str {
        match self.class() {
            0x00 => "unknown reason",
            0x01 => "trapped WFI/WFE",
            0x07 => "trapped SIMD/floating-point access",
            0x0e => "illegal execution state",
            0x11 => "SVC from AArch32",
            0x12 => "HVC from AArch32",
            0x13 => "SMC from AArch32",
            0x15 => "SVC from AArch64",
            0x16 => "HVC from AArch64",
            0x17 => "SMC from AArch64",
            0x18 => "trapped MSR/MRS/system instruction",
            0x19 => "trapped SVE access",
            0x20 => "instruction abort from a lower EL",
            0x21 => "instruction abort at EL2",
            0x22 => "PC alignment fault",
            0x24 => "data abort from a lower EL",
            0x25 => "data abort at EL2",
            0x26 => "SP alignment fault",
            0x2c => "trapped floating-point exception",
            0x2f => "SError",
            0x30 | 0x31 => "breakpoint",
            0x32 | 0x33 => "software step",
            0x34 | 0x35 => "watchpoint",
            0x3c => "BRK instruction",
            _ => "reserved or unhandled exception class",
        }
    }

    /// For aborts: the fault status code, bits \[5:0\] of the ISS.
    pub const fn fault_status(self) -> Option<u8> {
        if self.is_data_abort() || self.is_instruction_abort() {
            Some((self.0 & 0x3f) as u8)
        } else {
            None
        }
    }

    /// For data aborts: whether the access was a write (WnR, ISS bit 6).
    pub const fn is_write(self) -> Option<bool> {
        if self.is_data_abort() {
            Some(self.0 & (1 << 6) != 0)
        } else {
            None
        }
    }
}

/// Describes a DFSC/IFSC fault status code (Arm ARM, "ISS encoding for an exception from a
/// Data Abort", DFSC).
pub fn fault_status_name(code: u8) -> (&'static str, Option<u8>) {
    let level = Some(code & 0b11);
    match code {
        0x00..=0x03 => ("address size fault", level),
        0x04..=0x07 => ("translation fault", level),
        0x08..=0x0b => ("access flag fault", level),
        0x0c..=0x0f => ("permission fault", level),
        0x10 => ("synchronous external abort", None),
        0x14..=0x17 => ("synchronous external abort on table walk", level),
        0x21 => ("alignment fault", None),
        0x30 => ("TLB conflict abort", None),
        _ => ("other fault", None),
    }
}

impl fmt::Display for Esr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ESR {:#010x} (EC {:#04x}: {}",
            self.0,
            self.class(),
            self.class_name()
        )?;
        if let Some(code) = self.fault_status() {
            let (name, level) = fault_status_name(code);
            write!(f, ", {name}")?;
            if let Some(level) = level {
                write!(f, " at level {level}")?;
            }
            match self.is_write() {
                Some(true) => write!(f, ", write")?,
                Some(false) => write!(f, ", read")?,
                None => {}
            }
        } else {
            write!(f, ", ISS {:#x}", self.iss())?;
        }
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;

    #[test]
    fn instruction_length_from_il() {
        // A 32-bit load from a 32-bit process (IL 1) and a 16-bit Thumb one (IL 0), both
        // data aborts from a lower EL with a valid syndrome.
        assert_eq!(Esr(0x9300_0046).instruction_length(), 4);
        assert_eq!(Esr(0x9100_0046).instruction_length(), 2);
    }

    #[test]
    fn data_abort_at_el2() {
        // EC 0x25, IL, WnR, DFSC 0b000101 (translation fault, level 1).
        let esr = Esr(0x9600_0045);
        assert_eq!(esr.class(), 0x25);
        assert_eq!(
            esr.to_string(),
            "ESR 0x96000045 (EC 0x25: data abort at EL2, translation fault at level 1, write)"
        );
        let read = Esr(0x9600_0006);
        assert_eq!(
            read.to_string(),
            "ESR 0x96000006 (EC 0x25: data abort at EL2, translation fault at level 2, read)"
        );
    }

    #[test]
    fn other_classes() {
        assert_eq!(
            Esr(0x5a00_0000).to_string(),
            "ESR 0x5a000000 (EC 0x16: HVC from AArch64, ISS 0x0)"
        );
        assert_eq!(
            Esr(0x8600_000f).to_string(),
            "ESR 0x8600000f (EC 0x21: instruction abort at EL2, permission fault at level 3)"
        );
        assert_eq!(Esr(0xf200_0001).class_name(), "BRK instruction");
        assert_eq!(Esr(0).class_name(), "unknown reason");
    }
}
