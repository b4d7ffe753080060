//! The trapped configuration space: [`PciConfig`].
//!
//! Offsets in the configuration header are from the PCI Local Bus Specification 3.0 §6.1
//! (type 0, endpoints) and the PCI-to-PCI Bridge Architecture Specification 1.2 §3.2 (type 1);
//! the MSI capability from §6.8.1.

use core::fmt;

use cellvisor_cell::CellId;
use cellvisor_config::Bdf;

use crate::address::{ecam_decode, ConfigAddress, CONFIG_ADDRESS, CONFIG_DATA};
use crate::devices::{Assigned, DeviceError, Devices, BARS};

/// CPUs with a CONFIG_ADDRESS latch: the core's limit.
pub const MAX_CPUS: usize = 64;

const VENDOR_ID: u16 = 0x00;
const COMMAND: u16 = 0x04;
const STATUS: u16 = 0x06;
const HEADER_TYPE: u16 = 0x0e;
const BAR0: u16 = 0x10;
const ROM_ENDPOINT: u16 = 0x30;
const CAPABILITIES: u16 = 0x34;
/// The expansion ROM BAR's address bits.
const ROM_ADDRESS: u32 = 0xffff_f800;
const HEADER_END: u16 = 0x40;
/// Command register: I/O space, memory space, bus master.
const DECODE_AND_MASTER: u32 = 0b111;
/// Status register bit 4: a capability list exists.
const STATUS_CAPABILITIES: u32 = 1 << 4;
/// Capability ID of MSI.
const CAP_MSI: u32 = 0x05;

/// The physical configuration space, one access at a time under the caller's lock.
pub trait ConfigSpace {
    /// Reads `size` bytes (1, 2 or 4, aligned) at register `reg` of `bdf`; all ones for a
    /// function that does not exist.
    fn read(&mut self, bdf: Bdf, reg: u16, size: u8) -> u32;
    /// Writes `size` bytes (1, 2 or 4, aligned) at register `reg` of `bdf`.
    fn write(&mut self, bdf: Bdf, reg: u16, size: u8, value: u32);
}

/// Where a cell's device may send its MSIs: the architecture's rule (x86: a destination APIC
/// ID of the cell's CPUs and no SMI, INIT or ExtINT delivery; Arm: the cell's doorbell).
pub trait MsiPolicy {
    /// Whether a function of `cell` may signal `data` to `address`.
    fn allowed(&self, cell: CellId, address: u64, data: u32) -> bool;
}

/// Allows every MSI: for tests, and for machines whose interrupt remapping checks them.
#[derive(Clone, Copy, Debug, Default)]
pub struct AnyMsi;

impl MsiPolicy for AnyMsi {
    fn allowed(&self, _: CellId, _: u64, _: u32) -> bool {
        true
    }
}

/// Who accesses the configuration space.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Accessor {
    /// The cell.
    pub cell: CellId,
    /// The CPU (index): its CONFIG_ADDRESS latch.
    pub cpu: u32,
}

/// Why an access was refused (the root cell) or stops the cell (any other).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Reason {
    /// A write to a function of another cell.
    Foreign(Bdf),
    /// A size other than 1, 2 or 4 bytes, or not aligned to it, or a port other than
    /// CONFIG_ADDRESS (32 bits) and CONFIG_DATA.
    BadAccess {
        /// Register or port.
        at: u16,
        /// Bytes.
        size: u8,
    },
    /// A BAR (0 to 5, or 6 for the expansion ROM) moved: a cell's BARs stay where they are.
    BarMove(Bdf, u8),
    /// A write to a bridge's header outside its command register: a bridge's windows and bus
    /// numbers are the machine's.
    BridgeHeader(Bdf, u16),
    /// An enabled MSI that the architecture's [`MsiPolicy`] refuses.
    Msi {
        /// The function.
        bdf: Bdf,
        /// Message address.
        address: u64,
        /// Message data.
        data: u32,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Foreign(bdf) => write!(f, "PCI {bdf} belongs to another cell"),
            Self::BadAccess { at, size } => {
                write!(
                    f,
                    "{size}-byte access at {at:#x}: not a configuration access"
                )
            }
            Self::BarMove(bdf, 6) => write!(f, "PCI {bdf}: the expansion ROM BAR cannot move"),
            Self::BarMove(bdf, bar) => write!(f, "PCI {bdf}: BAR {bar} cannot move"),
            Self::BridgeHeader(bdf, reg) => {
                write!(
                    f,
                    "PCI {bdf}: bridge header register {reg:#x} is not the cell's"
                )
            }
            Self::Msi { bdf, address, data } => write!(
                f,
                "PCI {bdf}: MSI to {address:#x} with data {data:#x} leaves the cell"
            ),
        }
    }
}

/// What became of an access.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// A read: complete it with this value.
    Read(u32),
    /// A write, done (or dropped, as the hardware drops it: no cycle enabled).
    Written,
    /// The root cell's write was refused; worth a report. Nothing changed.
    Refused(Reason),
}

/// A non-root cell's access that breaks the partition: stop the cell. Nothing changed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PciViolation {
    /// The value written, or `None` for a read.
    pub write: Option<u32>,
    /// Why.
    pub why: Reason,
}

impl fmt::Display for PciViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.write {
            Some(value) => write!(f, "PCI configuration write of {value:#x}: {}", self.why),
            None => write!(f, "PCI configuration read: {}", self.why),
        }
    }
}

impl core::error::Error for PciViolation {}

/// All ones in `size` bytes: what an absent function reads as.
const fn ones(size: u8) -> u32 {
    if size >= 4 {
        u32::MAX
    } else {
        (1 << (8 * size as u32)) - 1
    }
}

/// The configuration space shared by the cells: who owns what, each CPU's CONFIG_ADDRESS.
#[derive(Clone, Debug)]
pub struct PciConfig {
    devices: Devices,
    latch: [ConfigAddress; MAX_CPUS],
}

impl Default for PciConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl PciConfig {
    /// Every function the root cell's.
    pub const fn new() -> Self {
        Self {
            devices: Devices::new(),
            latch: [ConfigAddress(0); MAX_CPUS],
        }
    }

    /// Who owns what.
    pub fn devices(&self) -> &Devices {
        &self.devices
    }

    /// Gives `functions` from the root cell to `cell`, all or none. Each one stops decoding
    /// and mastering (the root cell's use of it ends here), and its BARs are sized while
    /// decoding is off, for the cell's own sizing later. A bridge (header type 1) is given
    /// with a read-only header.
    pub fn assign(
        &mut self,
        hw: &mut impl ConfigSpace,
        cell: CellId,
        functions: &[Bdf],
    ) -> Result<(), DeviceError> {
        if cell == CellId::ROOT {
            return Err(DeviceError::ToRoot);
        }
        for (i, &bdf) in functions.iter().enumerate() {
            if let Some(owner) = self.devices.find(bdf).map(|a| a.cell) {
                return Err(DeviceError::Taken { bdf, owner });
            }
            if hw.read(bdf, VENDOR_ID, 2) & 0xffff == 0xffff {
                return Err(DeviceError::Absent(bdf));
            }
            if functions[..i].contains(&bdf) {
                return Err(DeviceError::Taken { bdf, owner: cell });
            }
        }
        if self.devices.assigned.len() + functions.len() > crate::MAX_ASSIGNED {
            return Err(DeviceError::Full);
        }
        for &bdf in functions {
            let command = hw.read(bdf, COMMAND, 2);
            hw.write(bdf, COMMAND, 2, command & !DECODE_AND_MASTER);
            let bridge = hw.read(bdf, HEADER_TYPE, 1) & 0x7f == 1;
            let mut bar_masks = [0; BARS];
            if !bridge {
                for (n, mask) in bar_masks.iter_mut().enumerate() {
                    let reg = bar_register(n as u8);
                    let original = hw.read(bdf, reg, 4);
                    hw.write(bdf, reg, 4, u32::MAX);
                    *mask = hw.read(bdf, reg, 4);
                    hw.write(bdf, reg, 4, original);
                }
            }
            let _ = self.devices.assigned.push(Assigned {
                bdf,
                cell,
                bridge,
                bar_masks,
                sizing: 0,
            });
        }
        Ok(())
    }

    /// Gives every function of `cell` back to the root cell, not decoding nor mastering (the
    /// root cell's kernel enables it again when it takes the device). Returns how many.
    pub fn release(&mut self, hw: &mut impl ConfigSpace, cell: CellId) -> usize {
        self.release_where(hw, |a| a.cell == cell)
    }

    /// Gives function `bdf` back to the root cell, as [`release`](Self::release) does, if it
    /// is `cell`'s; returns whether it was.
    pub fn release_function(&mut self, hw: &mut impl ConfigSpace, cell: CellId, bdf: Bdf) -> bool {
        self.release_where(hw, |a| a.cell == cell && a.bdf == bdf) == 1
    }

    fn release_where(
        &mut self,
        hw: &mut impl ConfigSpace,
        released: impl Fn(&Assigned) -> bool,
    ) -> usize {
        let before = self.devices.assigned.len();
        for a in self.devices.assigned.iter().filter(|a| released(a)) {
            let command = hw.read(a.bdf, COMMAND, 2);
            hw.write(a.bdf, COMMAND, 2, command & !DECODE_AND_MASTER);
        }
        self.devices.assigned.retain(|a| !released(a));
        before - self.devices.assigned.len()
    }

    /// An access to an I/O port of configuration mechanism #1 (x86): CONFIG_ADDRESS, 32 bits
    /// (each CPU has its own), or CONFIG_DATA, 1, 2 or 4 bytes into the latched dword.
    /// Port 0xcf9 (reset control) is not here: the architecture decides a reset.
    pub fn port(
        &mut self,
        hw: &mut impl ConfigSpace,
        msi: &impl MsiPolicy,
        by: Accessor,
        port: u16,
        size: u8,
        write: Option<u32>,
    ) -> Result<Outcome, PciViolation> {
        let latch = by.cpu as usize % MAX_CPUS;
        match port {
            CONFIG_ADDRESS if size == 4 => Ok(match write {
                Some(value) => {
                    self.latch[latch] = ConfigAddress(value);
                    Outcome::Written
                }
                None => Outcome::Read(self.latch[latch].0),
            }),
            CONFIG_DATA..=0xcff => {
                let address = self.latch[latch];
                let offset = port - CONFIG_DATA;
                if !address.enabled()
                    && matches!(size, 1 | 2 | 4)
                    && offset.is_multiple_of(u16::from(size))
                {
                    // No configuration cycle: the hardware reads ones and drops writes.
                    return Ok(match write {
                        Some(_) => Outcome::Written,
                        None => Outcome::Read(ones(size)),
                    });
                }
                let reg = address.register() + offset;
                self.config(hw, msi, by, address.bdf(), reg, size, write)
            }
            _ => self.refuse(by, write, Reason::BadAccess { at: port, size }),
        }
    }

    /// An access at `offset` in an ECAM window (bus 0 at offset 0).
    pub fn ecam(
        &mut self,
        hw: &mut impl ConfigSpace,
        msi: &impl MsiPolicy,
        by: Accessor,
        offset: u64,
        size: u8,
        write: Option<u32>,
    ) -> Result<Outcome, PciViolation> {
        let (bdf, reg) = ecam_decode(offset);
        self.config(hw, msi, by, bdf, reg, size, write)
    }

    /// An access to register `reg` of `bdf`.
    #[allow(clippy::too_many_arguments)]
    pub fn config(
        &mut self,
        hw: &mut impl ConfigSpace,
        msi: &impl MsiPolicy,
        by: Accessor,
        bdf: Bdf,
        reg: u16,
        size: u8,
        write: Option<u32>,
    ) -> Result<Outcome, PciViolation> {
        if !matches!(size, 1 | 2 | 4) || !reg.is_multiple_of(u16::from(size)) || reg >= 0x1000 {
            return self.refuse(by, write, Reason::BadAccess { at: reg, size });
        }
        if self.devices.owner(bdf) != by.cell {
            return match write {
                // Absent, as far as the cell can tell: a bus scan sees vendor ID 0xffff.
                None => Ok(Outcome::Read(ones(size))),
                Some(_) => self.refuse(by, write, Reason::Foreign(bdf)),
            };
        }
        let value = write.map(|v| v & ones(size));
        // The root cell has the machine: its functions are its own to program.
        let Some(assigned) = self
            .devices
            .find_mut(bdf)
            .filter(|_| by.cell != CellId::ROOT)
        else {
            return Ok(match value {
                Some(v) => {
                    hw.write(bdf, reg, size, v);
                    Outcome::Written
                }
                None => Outcome::Read(hw.read(bdf, reg, size)),
            });
        };
        if assigned.bridge {
            return match value {
                None => Ok(Outcome::Read(hw.read(bdf, reg, size))),
                Some(v) if (COMMAND..STATUS + 2).contains(&reg) || reg >= HEADER_END => {
                    hw.write(bdf, reg, size, v);
                    Ok(Outcome::Written)
                }
                Some(_) => self.refuse(by, write, Reason::BridgeHeader(bdf, reg)),
            };
        }
        if let Some(bar) = bar_of(reg) {
            return bar_access(hw, assigned, bar, reg, size, value)
                .or_else(|why| self.refuse(by, write, why));
        }
        let Some(v) = value else {
            return Ok(Outcome::Read(hw.read(bdf, reg, size)));
        };
        if let Some(why) = msi_check(hw, msi, by.cell, bdf, reg, size, v) {
            return self.refuse(by, write, why);
        }
        hw.write(bdf, reg, size, v);
        Ok(Outcome::Written)
    }

    fn refuse(
        &self,
        by: Accessor,
        write: Option<u32>,
        why: Reason,
    ) -> Result<Outcome, PciViolation> {
        if by.cell == CellId::ROOT {
            Ok(match write {
                Some(_) => Outcome::Refused(why),
                None => Outcome::Read(u32::MAX),
            })
        } else {
            Err(PciViolation { write, why })
        }
    }
}

/// The register of BAR `n` (6: the expansion ROM).
const fn bar_register(n: u8) -> u16 {
    if n == 6 {
        ROM_ENDPOINT
    } else {
        BAR0 + 4 * n as u16
    }
}

/// The BAR register `reg` falls in.
const fn bar_of(reg: u16) -> Option<u8> {
    if reg >= BAR0 && reg < BAR0 + 24 {
        Some(((reg - BAR0) / 4) as u8)
    } else if reg >= ROM_ENDPOINT && reg < ROM_ENDPOINT + 4 {
        Some(6)
    } else {
        None
    }
}

/// A cell's access to one of its BARs: sizing is emulated from the masks measured at
/// assignment, writing the value back is fine, moving it is not. The expansion ROM's enable
/// bit (bit 0) is the cell's.
fn bar_access(
    hw: &mut impl ConfigSpace,
    assigned: &mut Assigned,
    bar: u8,
    reg: u16,
    size: u8,
    value: Option<u32>,
) -> Result<Outcome, Reason> {
    let dword = bar_register(bar);
    let shift = 8 * u32::from(reg - dword);
    let bit = 1u8 << bar;
    let Some(value) = value else {
        let whole = if assigned.sizing & bit != 0 {
            assigned.bar_masks[usize::from(bar)]
        } else {
            hw.read(assigned.bdf, dword, 4)
        };
        return Ok(Outcome::Read((whole >> shift) & ones(size)));
    };
    if size != 4 {
        return Err(Reason::BarMove(assigned.bdf, bar));
    }
    let current = hw.read(assigned.bdf, dword, 4);
    // Sizing: all ones (Linux writes the ROM's address bits only, keeping bits 10:0).
    if value == u32::MAX || (bar == 6 && value & ROM_ADDRESS == ROM_ADDRESS) {
        assigned.sizing |= bit;
        return Ok(Outcome::Written);
    }
    let keep = if bar == 6 { !1 } else { u32::MAX };
    if value & keep != current & keep {
        return Err(Reason::BarMove(assigned.bdf, bar));
    }
    assigned.sizing &= !bit;
    if bar == 6 && value != current {
        hw.write(assigned.bdf, dword, 4, value);
    }
    Ok(Outcome::Written)
}

/// The MSI capability's register offset of `bdf`, walking the capability list (at most 48
/// entries: a looping list ends there).
fn msi_capability(hw: &mut impl ConfigSpace, bdf: Bdf) -> Option<u16> {
    if hw.read(bdf, STATUS, 2) & STATUS_CAPABILITIES == 0 {
        return None;
    }
    let mut at = (hw.read(bdf, CAPABILITIES, 1) & 0xfc) as u16;
    for _ in 0..48 {
        if at < HEADER_END {
            return None;
        }
        let header = hw.read(bdf, at, 2);
        if header & 0xff == CAP_MSI {
            return Some(at);
        }
        at = ((header >> 8) & 0xfc) as u16;
    }
    None
}

/// Checks a write into `bdf`'s MSI capability: if MSI is enabled after it, the message must
/// satisfy `msi`. `None`: nothing to object to.
fn msi_check(
    hw: &mut impl ConfigSpace,
    msi: &impl MsiPolicy,
    cell: CellId,
    bdf: Bdf,
    reg: u16,
    size: u8,
    value: u32,
) -> Option<Reason> {
    let cap = msi_capability(hw, bdf)?;
    if reg + u16::from(size) <= cap || reg >= cap + 0x18 {
        return None;
    }
    // The capability's dwords after the write.
    let mut dwords = [0u32; 6];
    for (i, d) in dwords.iter_mut().enumerate() {
        *d = hw.read(bdf, cap + 4 * i as u16, 4);
    }
    let offset = usize::from(reg - cap);
    let shift = 8 * (offset % 4) as u32;
    let mask = ones(size) << shift;
    let slot = &mut dwords[offset / 4];
    *slot = (*slot & !mask) | (value << shift & mask);
    let control = dwords[0] >> 16;
    if control & 1 == 0 {
        return None;
    }
    let wide = control & 1 << 7 != 0;
    let address = u64::from(dwords[1]) | if wide { u64::from(dwords[2]) << 32 } else { 0 };
    let data = if wide { dwords[3] } else { dwords[2] } & 0xffff;
    (!msi.allowed(cell, address, data)).then_some(Reason::Msi { bdf, address, data })
}
