//! The communication region: one page shared by the hypervisor and a cell, at the
//! guest-physical address of the cell configuration's `comm-region` memory region.
//!
//! Both sides access the fields with single aligned 32-bit or 64-bit volatile loads and
//! stores (the cell may run with its MMU off, where every access is to Device memory).
//!
//! Shutdown vote: the hypervisor writes [`MSG_SHUTDOWN_REQUEST`] to `msg_to_cell`; the cell
//! answers in `reply_from_cell` with [`REPLY_APPROVED`] (then it may stop any time) or
//! [`REPLY_DENIED`]. A cell that never answers is shut down when the tool's timeout expires
//! (a passive cell). A cell holding `lock` = 1 refuses every reconfiguration without being
//! asked (Jailhouse's "cell lock"): the request is denied at once.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// "CVCOMM" and a NUL pair.
pub const SIGNATURE: [u8; 8] = *b"CVCOMM\0\0";
/// The layout revision this crate describes.
pub const REVISION: u32 = 1;

/// No message.
pub const MSG_NONE: u32 = 0;
/// The hypervisor asks the cell to agree to its shutdown.
pub const MSG_SHUTDOWN_REQUEST: u32 = 1;

/// No reply yet.
pub const REPLY_NONE: u32 = 0;
/// The cell agrees.
pub const REPLY_APPROVED: u32 = 1;
/// The cell refuses.
pub const REPLY_DENIED: u32 = 2;

/// GIC version values of [`Platform::gic_version`].
pub const GIC_V2: u32 = 2;
/// GICv3.
pub const GIC_V3: u32 = 3;

/// UART kinds of [`Platform::uart_kind`].
pub const UART_NONE: u32 = 0;
/// Arm PL011.
pub const UART_PL011: u32 = 1;
/// Cadence (Xilinx Zynq UltraScale+).
pub const UART_CADENCE: u32 = 2;

/// What a cell needs to know about the machine it runs on, written by the hypervisor before
/// the cell starts.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Platform {
    /// [`GIC_V2`] or [`GIC_V3`].
    pub gic_version: U32,
    /// The cell's console UART kind ([`UART_PL011`], [`UART_CADENCE`] or [`UART_NONE`]).
    pub uart_kind: U32,
    /// GIC distributor (guest-physical).
    pub gicd: U64,
    /// GICv3: the redistributor of the cell's first CPU. GICv2: the CPU interface.
    pub gicr_or_gicc: U64,
    /// The console UART (guest-physical), 0 if none.
    pub uart: U64,
    /// CNTFRQ_EL0 in Hz.
    pub timer_frequency: U64,
    /// The cell's number of CPUs.
    pub cpus: U32,
    /// Reserved, zero.
    pub reserved: U32,
}

/// The start of the communication region page.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct CommRegion {
    /// [`SIGNATURE`].
    pub signature: [u8; 8],
    /// [`REVISION`].
    pub revision: U32,
    /// The cell's [`CellState`](crate::CellState) as the hypervisor sees it.
    pub cell_state: U32,
    /// Message from the hypervisor ([`MSG_NONE`], [`MSG_SHUTDOWN_REQUEST`]).
    pub msg_to_cell: U32,
    /// The cell's reply ([`REPLY_NONE`], [`REPLY_APPROVED`], [`REPLY_DENIED`]).
    pub reply_from_cell: U32,
    /// 1 while the cell refuses any reconfiguration (shutdown, destroy) without a vote.
    pub lock: U32,
    /// Reserved, zero.
    pub reserved: U32,
    /// The machine.
    pub platform: Platform,
}

/// Byte offsets of the fields, for volatile access from code without references.
pub mod offset {
    use super::CommRegion;
    use core::mem::offset_of;

    /// `cell_state`.
    pub const CELL_STATE: usize = offset_of!(CommRegion, cell_state);
    /// `msg_to_cell`.
    pub const MSG_TO_CELL: usize = offset_of!(CommRegion, msg_to_cell);
    /// `reply_from_cell`.
    pub const REPLY_FROM_CELL: usize = offset_of!(CommRegion, reply_from_cell);
    /// `lock`.
    pub const LOCK: usize = offset_of!(CommRegion, lock);
    /// `platform`.
    pub const PLATFORM: usize = offset_of!(CommRegion, platform);
}

impl CommRegion {
    /// A fresh region for a cell about to start.
    pub fn new(platform: Platform) -> Self {
        Self {
            signature: SIGNATURE,
            revision: REVISION.into(),
            cell_state: 0.into(),
            msg_to_cell: MSG_NONE.into(),
            reply_from_cell: REPLY_NONE.into(),
            lock: 0.into(),
            reserved: 0.into(),
            platform,
        }
    }

    /// Whether the signature and revision are the ones this crate describes.
    pub fn is_valid(&self) -> bool {
        self.signature == SIGNATURE && self.revision.get() == REVISION
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    #[test]
    fn layout_is_fixed_and_aligned() {
        assert_eq!(core::mem::size_of::<Platform>(), 48);
        assert_eq!(core::mem::size_of::<CommRegion>(), 80);
        assert_eq!(offset::CELL_STATE, 12);
        assert_eq!(offset::MSG_TO_CELL, 16);
        assert_eq!(offset::REPLY_FROM_CELL, 20);
        assert_eq!(offset::LOCK, 24);
        assert_eq!(offset::PLATFORM, 32);
        for field in [
            offset::CELL_STATE,
            offset::MSG_TO_CELL,
            offset::REPLY_FROM_CELL,
            offset::LOCK,
        ] {
            assert_eq!(field % 4, 0);
        }
        let region = CommRegion::new(Platform {
            gic_version: GIC_V3.into(),
            ..Platform::default()
        });
        assert!(region.is_valid());
        assert_eq!(&region.as_bytes()[..8], b"CVCOMM\0\0");
        assert_eq!(region.platform.gic_version.get(), 3);
    }
}
