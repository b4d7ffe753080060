//! The interrupt command register: what one write of it asks the local APIC to send.
//!
//! Layouts from the Intel SDM Vol. 3A §11.6.1 (xAPIC: two 32-bit registers at offsets 0x300
//! and 0x310, destination in bits 31:24 of the high one) and §11.12.9 (x2APIC: one 64-bit MSR
//! 0x830, destination in bits 63:32), and the AMD APM Vol. 2 §16.5.

use core::fmt;

/// Delivery mode, ICR bits 10:8 (also the delivery mode field of LVT and IOAPIC entries).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DeliveryMode {
    /// 000: the vector, to every target.
    Fixed,
    /// 001: the vector, to the lowest-priority target.
    LowestPriority,
    /// 010: a system-management interrupt.
    Smi,
    /// 011: reserved (remote read on the 82489DX).
    RemoteRead,
    /// 100: a non-maskable interrupt.
    Nmi,
    /// 101: INIT (or INIT level de-assert).
    Init,
    /// 110: start-up IPI (SIPI).
    Startup,
    /// 111: external interrupt (the 8259 PIC's vector); reserved in the ICR.
    ExtInt,
}

impl DeliveryMode {
    /// The mode of a 3-bit field.
    pub const fn from_bits(bits: u32) -> Self {
        match bits & 0b111 {
            0b000 => Self::Fixed,
            0b001 => Self::LowestPriority,
            0b010 => Self::Smi,
            0b011 => Self::RemoteRead,
            0b100 => Self::Nmi,
            0b101 => Self::Init,
            0b110 => Self::Startup,
            _ => Self::ExtInt,
        }
    }

    /// The 3-bit field.
    pub const fn bits(self) -> u32 {
        match self {
            Self::Fixed => 0b000,
            Self::LowestPriority => 0b001,
            Self::Smi => 0b010,
            Self::RemoteRead => 0b011,
            Self::Nmi => 0b100,
            Self::Init => 0b101,
            Self::Startup => 0b110,
            Self::ExtInt => 0b111,
        }
    }
}

impl fmt::Display for DeliveryMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Fixed => "fixed",
            Self::LowestPriority => "lowest priority",
            Self::Smi => "SMI",
            Self::RemoteRead => "remote read",
            Self::Nmi => "NMI",
            Self::Init => "INIT",
            Self::Startup => "start-up",
            Self::ExtInt => "ExtINT",
        })
    }
}

/// Destination shorthand, ICR bits 19:18.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Shorthand {
    /// 00: the destination field names the targets.
    None,
    /// 01: the sending CPU only.
    ToSelf,
    /// 10: every CPU, the sender included.
    AllIncludingSelf,
    /// 11: every CPU but the sender.
    AllExcludingSelf,
}

/// Which register layout an ICR value came from: it decides the destination's width and what
/// a logical destination means.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ApicMode {
    /// xAPIC: memory-mapped registers, 8-bit destinations, logical IDs set by software
    /// (LDR and DFR).
    XApic,
    /// x2APIC: MSRs, 32-bit destinations, logical IDs derived from the APIC ID.
    X2Apic,
}

/// One value written to the interrupt command register, decoded.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Icr {
    low: u32,
    destination: u32,
    mode: ApicMode,
}

impl Icr {
    /// Bit 11: logical destination mode.
    const DESTINATION_LOGICAL: u32 = 1 << 11;
    /// Bit 14: level (1 assert, 0 de-assert; only INIT uses de-assert).
    const LEVEL_ASSERT: u32 = 1 << 14;
    /// Bit 15: trigger mode (1 level).
    const TRIGGER_LEVEL: u32 = 1 << 15;

    /// An xAPIC command: `low` written to offset 0x300 with `high` in offset 0x310.
    pub const fn xapic(low: u32, high: u32) -> Self {
        Self {
            low,
            destination: high >> 24,
            mode: ApicMode::XApic,
        }
    }

    /// An x2APIC command: the 64-bit value written to MSR 0x830.
    pub const fn x2apic(value: u64) -> Self {
        Self {
            low: value as u32,
            destination: (value >> 32) as u32,
            mode: ApicMode::X2Apic,
        }
    }

    /// An xAPIC or x2APIC command as its mode says: `high` is the xAPIC high register, or the
    /// x2APIC value's upper half.
    pub const fn new(mode: ApicMode, low: u32, high: u32) -> Self {
        match mode {
            ApicMode::XApic => Self::xapic(low, high),
            ApicMode::X2Apic => Self::x2apic((high as u64) << 32 | low as u64),
        }
    }

    /// The vector, bits 7:0.
    pub const fn vector(&self) -> u8 {
        self.low as u8
    }

    /// The delivery mode, bits 10:8.
    pub const fn delivery(&self) -> DeliveryMode {
        DeliveryMode::from_bits(self.low >> 8)
    }

    /// Whether the destination is logical (bit 11).
    pub const fn is_logical(&self) -> bool {
        self.low & Self::DESTINATION_LOGICAL != 0
    }

    /// Whether this is an INIT level de-assert: delivery mode INIT, level 0, level-triggered.
    /// Only the 82489DX needed it; current CPUs ignore it.
    pub const fn is_init_deassert(&self) -> bool {
        matches!(self.delivery(), DeliveryMode::Init)
            && self.low & Self::LEVEL_ASSERT == 0
            && self.low & Self::TRIGGER_LEVEL != 0
    }

    /// The destination shorthand, bits 19:18.
    pub const fn shorthand(&self) -> Shorthand {
        match (self.low >> 18) & 0b11 {
            0b00 => Shorthand::None,
            0b01 => Shorthand::ToSelf,
            0b10 => Shorthand::AllIncludingSelf,
            _ => Shorthand::AllExcludingSelf,
        }
    }

    /// The destination field: 8 bits in xAPIC mode, 32 in x2APIC mode.
    pub const fn destination(&self) -> u32 {
        self.destination
    }

    /// Whether the destination field addresses every CPU: all ones in its width.
    pub const fn is_broadcast(&self) -> bool {
        match self.mode {
            ApicMode::XApic => self.destination == 0xff,
            ApicMode::X2Apic => self.destination == u32::MAX,
        }
    }

    /// The register layout it came from.
    pub const fn mode(&self) -> ApicMode {
        self.mode
    }

    /// The low 32 bits as written.
    pub const fn low(&self) -> u32 {
        self.low
    }
}

impl fmt::Debug for Icr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Icr")
            .field("vector", &self.vector())
            .field("delivery", &self.delivery())
            .field("logical", &self.is_logical())
            .field("shorthand", &self.shorthand())
            .field("destination", &format_args!("{:#x}", self.destination))
            .field("mode", &self.mode)
            .finish()
    }
}

impl fmt::Display for Icr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} IPI", self.delivery())?;
        if matches!(
            self.delivery(),
            DeliveryMode::Fixed | DeliveryMode::LowestPriority | DeliveryMode::Startup
        ) {
            write!(f, " vector {:#x}", self.vector())?;
        }
        match self.shorthand() {
            Shorthand::None => write!(
                f,
                " to {} destination {:#x}",
                if self.is_logical() {
                    "logical"
                } else {
                    "physical"
                },
                self.destination
            ),
            Shorthand::ToSelf => f.write_str(" to itself"),
            Shorthand::AllIncludingSelf => f.write_str(" to all CPUs"),
            Shorthand::AllExcludingSelf => f.write_str(" to all other CPUs"),
        }
    }
}
