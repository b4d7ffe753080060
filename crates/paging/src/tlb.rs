//! TLB maintenance hook.
//!
//! The engine knows which translations it changed; only the caller knows how to invalidate
//! them (Arm `TLBI IPAS2E1IS`, `INVEPT`, `INVLPGA`, an ASID/VMID-wide flush, or nothing at all
//! while a table is not live yet). The engine calls the hook with exactly the input ranges whose
//! cached translations became stale, and always *between* the "break" (the old descriptor is
//! made invalid) and the "make" (the new one is written), as break-before-make requires
//! (Arm ARM D8.16.1 "Using break-before-make when updating translation table entries";
//! Intel SDM Vol. 3A 4.10.4 "Invalidation of TLBs and Paging-Structure Caches").

use crate::addr::Address;

/// What became stale in an invalidated range.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Stale {
    /// One leaf descriptor (a page or a block) covering the range was removed or changed.
    /// On Arm a last-level invalidation (`TLBI ...VALE2`, `IPAS2LE1`) is enough.
    Leaf,
    /// A table descriptor covering the range was removed or replaced, so every leaf below it
    /// and the cached table walk itself are stale (Arm: non-last-level invalidation of the whole
    /// range; x86: the paging-structure caches too).
    Table,
}

/// Invalidates cached translations when the engine changes a live table.
pub trait TlbInvalidate<A: Address> {
    /// The translations of `[start, start + size)` are stale and must be invalidated before
    /// this call returns, including the barriers the architecture needs (Arm: `DSB` before and
    /// after the `TLBI`).
    fn invalidate(&mut self, start: A, size: u64, stale: Stale);
}

/// For tables that no CPU or device uses yet: nothing to invalidate.
#[derive(Clone, Copy, Debug, Default)]
pub struct NotLive;

impl<A: Address> TlbInvalidate<A> for NotLive {
    fn invalidate(&mut self, _start: A, _size: u64, _stale: Stale) {}
}
