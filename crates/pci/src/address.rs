//! What a configuration access addresses: [`ConfigAddress`] (configuration mechanism #1,
//! PCI Local Bus Specification 3.0 §3.2.2.3.2) and [`ecam_decode`] (PCI Express Base
//! Specification §7.2.2).

use cellvisor_config::Bdf;

/// The CONFIG_ADDRESS port (32 bits).
pub const CONFIG_ADDRESS: u16 = 0xcf8;
/// The CONFIG_DATA ports (0xcfc to 0xcff: byte offsets into the addressed dword).
pub const CONFIG_DATA: u16 = 0xcfc;

/// A value latched in CONFIG_ADDRESS.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ConfigAddress(pub u32);

impl ConfigAddress {
    /// Bit 31: configuration cycles enabled (otherwise CONFIG_DATA does nothing).
    pub const fn enabled(self) -> bool {
        self.0 & 1 << 31 != 0
    }

    /// The function addressed.
    pub const fn bdf(self) -> Bdf {
        Bdf(((self.0 >> 8) & 0xffff) as u16)
    }

    /// The register: bits 7:2 (the dword), plus AMD's extended bits 27:24 (registers 0x100 to
    /// 0xfff, when the northbridge enables them; cellvisor passes them through to its own
    /// check, so that an extended access is decided like an ECAM one).
    pub const fn register(self) -> u16 {
        ((self.0 & 0xfc) | ((self.0 >> 16) & 0xf00)) as u16
    }
}

/// The function and register of ECAM offset `offset` (from the window's bus 0): 1 MiB per
/// bus, 32 KiB per device, 4 KiB per function.
pub const fn ecam_decode(offset: u64) -> (Bdf, u16) {
    (Bdf((offset >> 12) as u16), (offset & 0xfff) as u16)
}
