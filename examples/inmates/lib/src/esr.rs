//! Decoding of the exception syndrome (ESR_EL1) for fault reports (Arm ARM D17.2.40,
//! "ESR_EL1, Exception Syndrome Register (EL1)").

use core::fmt;

/// A syndrome value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Esr(pub u64);

impl Esr {
    /// The exception class, ESR_EL1.EC (bits 31:26).
    pub fn class(self) -> u8 {
        ((self.0 >> 26) & 0x3f) as u8
    }

    /// The instruction-specific syndrome, ESR_EL1.ISS (bits 24:0).
    pub fn iss(self) -> u32 {
        (self.0 & 0x1ff_ffff) as u32
    }

    /// What the class means.
    pub fn class_name(self) -> &'static str {
        match self.class() {
            0x00 => "unknown reason",
            0x01 => "trapped WFI/WFE",
            0x07 => "FP/SIMD access trapped",
            0x0e => "illegal execution state",
            0x15 => "SVC",
            0x16 => "HVC",
            0x17 => "SMC",
            0x18 => "trapped system register access",
            0x20 => "instruction abort from a lower EL",
            0x21 => "instruction abort",
            0x22 => "PC alignment fault",
            0x24 => "data abort from a lower EL",
            0x25 => "data abort",
            0x26 => "SP alignment fault",
            0x2f => "SError",
            0x3c => "BRK instruction",
            _ => "other exception class",
        }
    }

    /// Whether the class is an instruction or data abort, where the fault status code and FAR
    /// mean something.
    pub fn is_abort(self) -> bool {
        matches!(self.class(), 0x20 | 0x21 | 0x24 | 0x25)
    }

    /// For aborts: the fault status code (ISS bits 5:0) in words.
    pub fn fault_status(self) -> Option<&'static str> {
        if !self.is_abort() {
            return None;
        }
        Some(match self.iss() & 0x3f {
            0x00..=0x03 => "address size fault",
            0x04..=0x07 => "translation fault",
            0x09..=0x0b => "access flag fault",
            0x0d..=0x0f => "permission fault",
            0x10 => "synchronous external abort",
            0x11 => "synchronous tag check fault",
            0x14..=0x17 => "synchronous external abort on a table walk",
            0x18 => "synchronous parity or ECC error",
            0x21 => "alignment fault",
            0x30 => "TLB conflict abort",
            _ => "other fault",
        })
    }

    /// For data aborts: whether the access was a write (ISS.WnR, bit 6).
    pub fn is_write(self) -> Option<bool> {
        matches!(self.class(), 0x24 | 0x25).then_some(self.iss() & (1 << 6) != 0)
    }
}

impl fmt::Display for Esr {
    /// `data abort, synchronous external abort, write`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.class_name())?;
        if let Some(status) = self.fault_status() {
            write!(f, ", {status}")?;
        }
        match self.is_write() {
            Some(true) => f.write_str(", write"),
            Some(false) => f.write_str(", read"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;

    #[test]
    fn describes_aborts() {
        // A store to an address with nothing behind it, from EL1.
        let esr = Esr(0x9600_0050);
        assert_eq!(esr.class(), 0x25);
        assert_eq!(
            format!("{esr}"),
            "data abort, synchronous external abort, write"
        );
        assert_eq!(
            format!("{}", Esr(0x9600_0010)),
            "data abort, synchronous external abort, read"
        );
        assert_eq!(
            format!("{}", Esr(0x8600_0006)),
            "instruction abort, translation fault"
        );
        assert_eq!(format!("{}", Esr(0x5600_0000)), "SVC");
        assert_eq!(Esr(0x5600_0000).fault_status(), None);
    }
}
