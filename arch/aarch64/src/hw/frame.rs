//! The registers a trap from a cell saves on the CPU's exception stack.

/// The registers saved by the vector entry, in the order they are pushed.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct TrapFrame {
    /// x0 to x30.
    pub x: [u64; 31],
    /// The interrupted stack pointer (SP_EL0 for the hypervisor's own code).
    pub sp: u64,
    /// ELR_EL2: where the exception was taken.
    pub elr: u64,
    /// SPSR_EL2: the interrupted PSTATE.
    pub spsr: u64,
}
