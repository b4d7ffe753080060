//! The cell's communication region ([`cellvisor_abi::comm`]): the platform description the
//! hypervisor leaves there, the cell's state, and the shutdown vote.
//!
//! The region is read and written with single 32-bit accesses, as the ABI asks.

use core::cell::UnsafeCell;
use core::mem::offset_of;
use core::sync::atomic::{AtomicUsize, Ordering};

use cellvisor_abi::comm::{
    offset, CommRegion, Platform, MSG_NONE, MSG_SHUTDOWN_REQUEST, REPLY_APPROVED, REPLY_DENIED,
    REPLY_NONE, REVISION, SIGNATURE,
};
use cellvisor_abi::CellState;
use zerocopy::FromBytes;

use crate::mmio::{Mmio, MmioRegion};

/// Where cells find their communication region: the guest-physical address that the
/// reference cell configurations (`platforms/*/config/demo.toml`) give the `comm-region`
/// memory region.
pub const COMM_REGION_ADDRESS: usize = 0x8000_0000;

/// A message from the hypervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message {
    /// The hypervisor asks whether the cell agrees to be shut down; answer with
    /// [`Mailbox::reply`].
    ShutdownRequest,
}

/// The cell's answer to a [`Message::ShutdownRequest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The cell agrees; the hypervisor may stop it at any moment from now on.
    Approved,
    /// The cell refuses.
    Denied,
}

/// A communication region.
#[derive(Clone, Copy, Debug)]
pub struct Comm<M: Mmio = MmioRegion> {
    region: M,
}

impl<M: Mmio> Comm<M> {
    /// The region in `region`.
    pub const fn new(region: M) -> Self {
        Self { region }
    }

    /// Whether the hypervisor has set the region up: signature and revision as this runtime
    /// knows them.
    pub fn is_valid(&self) -> bool {
        let signature = [self.region.read32(0), self.region.read32(4)];
        let expected = [
            u32::from_le_bytes([SIGNATURE[0], SIGNATURE[1], SIGNATURE[2], SIGNATURE[3]]),
            u32::from_le_bytes([SIGNATURE[4], SIGNATURE[5], SIGNATURE[6], SIGNATURE[7]]),
        ];
        signature == expected && self.region.read32(offset_of!(CommRegion, revision)) == REVISION
    }

    /// The platform description, if the region is valid.
    pub fn platform(&self) -> Option<Platform> {
        if !self.is_valid() {
            return None;
        }
        let mut bytes = [0u8; size_of::<Platform>()];
        for (index, chunk) in bytes.chunks_exact_mut(4).enumerate() {
            let word = self.region.read32(offset::PLATFORM + 4 * index);
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        Platform::read_from_bytes(&bytes).ok()
    }

    /// The cell's state as the hypervisor sees it (`None`: a value this runtime does not
    /// know).
    pub fn cell_state(&self) -> Option<CellState> {
        CellState::from_raw(self.region.read32(offset::CELL_STATE))
    }

    /// Holds (`true`) or releases the cell lock: while it is held the hypervisor refuses every
    /// reconfiguration of the cell without asking.
    pub fn set_lock(&self, locked: bool) {
        self.region.write32(offset::LOCK, locked.into());
    }
}

/// The shutdown vote: polls `msg_to_cell` and answers in `reply_from_cell`.
///
/// A request is new while `reply_from_cell` is [`REPLY_NONE`], or when `msg_to_cell` went back
/// to [`MSG_NONE`] since the last answer; so the hypervisor asks again by resetting the reply
/// to [`REPLY_NONE`] (and writing the message again).
#[derive(Debug)]
pub struct Mailbox<M: Mmio = MmioRegion> {
    comm: Comm<M>,
    answered: bool,
}

impl Mailbox<MmioRegion> {
    /// The mailbox of this cell's communication region (a dummy one without messages in bare
    /// builds).
    pub fn new() -> Self {
        Self::with(region())
    }

    /// Approves the shutdown request the cell polled: prints `<name>: shutdown approved`,
    /// flushes the console (the hypervisor stops the cell as soon as it has the reply), replies
    /// and parks the CPU.
    pub fn approve_and_park(&mut self, name: &str) -> ! {
        crate::println!("{name}: shutdown approved");
        crate::console::flush();
        self.reply(Reply::Approved);
        crate::park()
    }
}

impl Default for Mailbox<MmioRegion> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: Mmio> Mailbox<M> {
    /// The mailbox of `comm`.
    pub const fn with(comm: Comm<M>) -> Self {
        Self {
            comm,
            answered: false,
        }
    }

    /// The communication region.
    pub fn comm(&self) -> &Comm<M> {
        &self.comm
    }

    /// The hypervisor's unanswered message, if there is one. Unknown messages are ignored.
    pub fn poll(&mut self) -> Option<Message> {
        let message = self.comm.region.read32(offset::MSG_TO_CELL);
        if message == MSG_NONE {
            self.answered = false;
            return None;
        }
        let reply = self.comm.region.read32(offset::REPLY_FROM_CELL);
        if reply == REPLY_NONE {
            self.answered = false;
        }
        if self.answered {
            return None;
        }
        (message == MSG_SHUTDOWN_REQUEST).then_some(Message::ShutdownRequest)
    }

    /// Answers the pending message.
    pub fn reply(&mut self, reply: Reply) {
        let value = match reply {
            Reply::Approved => REPLY_APPROVED,
            Reply::Denied => REPLY_DENIED,
        };
        self.comm.region.write32(offset::REPLY_FROM_CELL, value);
        self.answered = true;
    }
}

/// The stand-in region of bare builds: never valid, never a message.
#[repr(C, align(8))]
struct DummyRegion(UnsafeCell<[u8; size_of::<CommRegion>()]>);

// SAFETY: the runtime only accesses the dummy region through `MmioRegion`, with single aligned
// loads and stores, never through references; it runs on one CPU.
unsafe impl Sync for DummyRegion {}

static DUMMY_REGION: DummyRegion = DummyRegion(UnsafeCell::new([0; size_of::<CommRegion>()]));

/// The address of this cell's communication region, set by the runtime at start.
static REGION: AtomicUsize = AtomicUsize::new(0);

/// This cell's communication region; in bare builds (and before the runtime has set it up) a
/// dummy region in the inmate's memory that never holds a message.
pub fn region() -> Comm<MmioRegion> {
    let address = match REGION.load(Ordering::Acquire) {
        0 => DUMMY_REGION.0.get() as usize,
        address => address,
    };
    // SAFETY: either the cell's communication region, mapped for this cell and accessed with
    // single loads and stores only, or the dummy region, which nothing else references.
    Comm::new(unsafe { MmioRegion::new(address) })
}

/// Uses the region at `address` from now on.
///
/// # Safety
///
/// `address` must be the cell's communication region, mapped readable and writable.
// Only the target runtime (`rt`) uses it.
#[cfg_attr(not(inmate_hw), allow(dead_code))]
pub(crate) unsafe fn set_region(address: usize) {
    REGION.store(address, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmio::{Access, FakeMmio};
    use cellvisor_abi::comm::{GIC_V3, UART_PL011};
    use std::vec;
    use zerocopy::IntoBytes;

    fn region_with(content: &CommRegion) -> FakeMmio {
        let fake = FakeMmio::new();
        for (index, chunk) in content.as_bytes().chunks_exact(4).enumerate() {
            fake.set(4 * index, u32::from_le_bytes(chunk.try_into().unwrap()));
        }
        fake
    }

    fn platform() -> Platform {
        Platform {
            gic_version: GIC_V3.into(),
            uart_kind: UART_PL011.into(),
            gicd: 0x0800_0000.into(),
            gicr_or_gicc: 0x0810_0000.into(),
            uart: 0x0904_0000.into(),
            timer_frequency: 62_500_000.into(),
            cpus: 1.into(),
            reserved: 0.into(),
        }
    }

    #[test]
    fn reads_the_platform_of_a_valid_region() {
        let comm = Comm::new(region_with(&CommRegion::new(platform())));
        assert!(comm.is_valid());
        let read = comm.platform().unwrap();
        assert_eq!(read.as_bytes(), platform().as_bytes());
        assert_eq!(comm.cell_state(), None);
        comm.region
            .set(offset::CELL_STATE, CellState::Running as u32);
        assert_eq!(comm.cell_state(), Some(CellState::Running));
        comm.set_lock(true);
        assert_eq!(comm.region.get(offset::LOCK), 1);
    }

    #[test]
    fn rejects_a_region_without_signature_or_with_another_revision() {
        assert!(Comm::new(FakeMmio::new()).platform().is_none());
        let mut region = CommRegion::new(platform());
        region.revision = (REVISION + 1).into();
        assert!(!Comm::new(region_with(&region)).is_valid());
    }

    #[test]
    fn answers_each_request_once() {
        let mut mailbox = Mailbox::with(Comm::new(region_with(&CommRegion::new(platform()))));
        let regs = |m: &Mailbox<FakeMmio>| {
            (
                m.comm.region.get(offset::MSG_TO_CELL),
                m.comm.region.get(offset::REPLY_FROM_CELL),
            )
        };
        assert_eq!(mailbox.poll(), None);

        // First request, denied.
        mailbox
            .comm
            .region
            .set(offset::MSG_TO_CELL, MSG_SHUTDOWN_REQUEST);
        assert_eq!(mailbox.poll(), Some(Message::ShutdownRequest));
        mailbox.reply(Reply::Denied);
        assert_eq!(regs(&mailbox), (1, 2));
        assert_eq!(mailbox.poll(), None);

        // The hypervisor asks again by resetting the reply.
        mailbox.comm.region.set(offset::REPLY_FROM_CELL, REPLY_NONE);
        assert_eq!(mailbox.poll(), Some(Message::ShutdownRequest));
        mailbox.reply(Reply::Approved);
        assert_eq!(regs(&mailbox), (1, 1));
        assert_eq!(mailbox.poll(), None);
    }

    #[test]
    fn a_cleared_message_makes_the_next_one_new() {
        let mut mailbox = Mailbox::with(Comm::new(FakeMmio::new()));
        mailbox
            .comm
            .region
            .set(offset::MSG_TO_CELL, MSG_SHUTDOWN_REQUEST);
        assert_eq!(mailbox.poll(), Some(Message::ShutdownRequest));
        mailbox.reply(Reply::Denied);
        mailbox.comm.region.set(offset::MSG_TO_CELL, MSG_NONE);
        assert_eq!(mailbox.poll(), None);
        // Asked again without resetting the reply.
        mailbox
            .comm
            .region
            .set(offset::MSG_TO_CELL, MSG_SHUTDOWN_REQUEST);
        assert_eq!(mailbox.poll(), Some(Message::ShutdownRequest));
        assert_eq!(
            mailbox.comm.region.writes(),
            vec![Access::Write32(offset::REPLY_FROM_CELL, REPLY_DENIED)]
        );
    }

    #[test]
    fn ignores_unknown_messages() {
        let mut mailbox = Mailbox::with(Comm::new(FakeMmio::new()));
        mailbox.comm.region.set(offset::MSG_TO_CELL, 77);
        assert_eq!(mailbox.poll(), None);
    }
}
