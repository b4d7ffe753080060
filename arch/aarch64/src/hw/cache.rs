//! Data cache maintenance by virtual address, for data shared with CPUs whose MMU (and so
//! whose caches) are still off (Arm ARM D7.5 "Cache maintenance instructions").

/// Smallest data cache line size of the system, from CTR_EL0.DminLine (bits \[19:16\], log2
/// of the number of 4-byte words). aarch64-cpu has no CTR_EL0 wrapper.
fn line_size() -> usize {
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effects and is permitted at EL2.
    unsafe {
        core::arch::asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack, preserves_flags))
    };
    4 << ((ctr >> 16) & 0xf)
}

/// Cleans and invalidates `[start, start + len)` to the point of coherency, so that
/// observers with caches off see the data and later cached reads see memory.
pub fn clean_invalidate(start: usize, len: usize) {
    let line = line_size();
    let mut at = start & !(line - 1);
    while at < start + len {
        // SAFETY: `dc civac` only moves data between the cache and memory at this
        // address; it changes no value a program can observe.
        unsafe { core::arch::asm!("dc civac, {}", in(reg) at, options(nostack, preserves_flags)) };
        at += line;
    }
    // SAFETY: a barrier, no memory or register effects beyond ordering.
    unsafe { core::arch::asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// Invalidates `[start, start + len)` without cleaning: stale lines are dropped. Only for
/// memory written with the MMU off, whose cache lines hold nothing newer.
pub fn invalidate(start: usize, len: usize) {
    let line = line_size();
    let mut at = start & !(line - 1);
    while at < start + len {
        // SAFETY: the caller's memory was written with caches off, so no dirty line holds
        // newer data that this would discard.
        unsafe { core::arch::asm!("dc ivac, {}", in(reg) at, options(nostack, preserves_flags)) };
        at += line;
    }
    // SAFETY: a barrier only.
    unsafe { core::arch::asm!("dsb sy", options(nostack, preserves_flags)) };
}
