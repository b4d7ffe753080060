//! Page-aligned memory of the hypervisor's image that hardware or guests own: [`Page`].

use core::cell::UnsafeCell;
use core::fmt;

/// A 4 KiB page the hardware owns while virtualization runs: a VMCB, a VMCS, a VMXON region,
/// a host save area; or a guest's memory or table frame.
#[repr(C, align(4096))]
pub struct Page(pub(crate) UnsafeCell<[u8; 4096]>);

// SAFETY: each page is used by one CPU at a time (the caller's per-CPU discipline).
unsafe impl Sync for Page {}

impl Page {
    /// A zeroed page.
    pub const fn new() -> Self {
        Self(UnsafeCell::new([0; 4096]))
    }

    /// Its physical address (the hypervisor runs identity-mapped).
    pub fn address(&self) -> u64 {
        self.0.get() as u64
    }
}

impl Default for Page {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Page {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Page({:#x})", self.address())
    }
}
