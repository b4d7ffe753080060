//! # cellvisor-abi
//!
//! The interface shared by the cellvisor hypervisor, the `cellvisor` management tool and the
//! programs in cells (see the README): the management control page and data window
//! ([`mgmt`]), the commands ([`Command`]) and their error codes ([`Error`]), the records the
//! hypervisor writes ([`CellRecord`], [`HypervisorInfo`], [`CpuStats`]) and the per-cell
//! communication region ([`comm`]).
//!
//! All multi-byte fields are little endian; records are `zerocopy` types with fixed layouts.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![no_std]
#![deny(missing_docs)]

use core::fmt;
use zerocopy::little_endian::{I64, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub mod comm;

/// The management control page: registers at these offsets, 32 or 64 bits wide as noted.
///
/// Protocol: write `ARG0`..`ARG3`, then write the command number to `COMMAND`; the write
/// traps, the hypervisor runs the command on the spot and, when the write instruction
/// completes, `STATUS` holds the result (>= 0) or a negated [`Error`] code, and on failure the
/// data window holds a NUL-terminated UTF-8 message. Only the root cell has the page; any
/// other cell touching its address is outside its configuration.
pub mod mgmt {
    /// `MAGIC` reads "CVMG".
    pub const MAGIC_VALUE: u32 = u32::from_le_bytes(*b"CVMG");
    /// The interface version this crate describes.
    pub const VERSION_VALUE: u32 = 2;
    /// The control page size.
    pub const PAGE_SIZE: u64 = 0x1000;

    /// 32-bit, read only: [`MAGIC_VALUE`].
    pub const MAGIC: usize = 0x00;
    /// 32-bit, read only: [`VERSION_VALUE`].
    pub const VERSION: usize = 0x04;
    /// 64-bit, read only: the size of the data window in bytes.
    pub const DATA_SIZE: usize = 0x08;
    /// 64-bit, read/write: first argument.
    pub const ARG0: usize = 0x10;
    /// 64-bit, read/write: second argument.
    pub const ARG1: usize = 0x18;
    /// 64-bit, read/write: third argument.
    pub const ARG2: usize = 0x20;
    /// 64-bit, read/write: fourth argument.
    pub const ARG3: usize = 0x28;
    /// 32-bit, write only: the [`Command`](crate::Command) to run.
    pub const COMMAND: usize = 0x30;
    /// 64-bit, read only: the result of the last command (negative: `-Error`).
    pub const STATUS: usize = 0x38;

    /// The `/chosen` property of the root cell's device tree that locates the interface:
    /// four big-endian 64-bit values, control page base and size, data window base and size.
    pub const CHOSEN_PROPERTY: &str = "cellvisor,management";
}

/// A management command (the value written to [`mgmt::COMMAND`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u32)]
pub enum Command {
    /// Writes a [`HypervisorInfo`] to the data window; returns its size.
    Info = 1,
    /// Creates a cell from the binary cell configuration of `ARG0` bytes at the start of the
    /// data window; returns the new cell's id. Its CPUs must be offline in the root cell.
    CellCreate = 2,
    /// Copies `ARG2` bytes from the data window (at offset `ARG3`) into cell `ARG0`'s memory at
    /// guest-physical address `ARG1`, which must lie in a `loadable` region. Only before
    /// start.
    CellLoad = 3,
    /// Starts cell `ARG0` (loaded cells only) as flags `ARG1` say ([`start`]; 0: every CPU
    /// at the cell's reset address, the first argument register 0).
    CellStart = 4,
    /// Asks cell `ARG0` to shut down: posts the request in its communication region and
    /// returns 0 once the cell is stopped (approved, or no answer within `ARG1`
    /// milliseconds of the first request, at most [`MAX_SHUTDOWN_TIMEOUT_MS`]), 1 while the
    /// vote is pending; a refusal is [`Error::ShutdownRefused`].
    CellShutdown = 5,
    /// Destroys cell `ARG0` (stopped or not): every CPU, memory region, interrupt and device
    /// goes back to the root cell.
    CellDestroy = 6,
    /// Writes one [`CellRecord`] per cell (root first) to the data window; returns the count.
    CellList = 7,
    /// Writes one [`CpuStats`] per CPU of cell `ARG0` to the data window; returns the count.
    CellStats = 8,
    /// Copies hypervisor console output from position `ARG0` into the data window; returns
    /// the number of bytes copied; the new position is `ARG0` + that (`ARG1` receives the
    /// oldest position still in the ring when `ARG0` fell behind). A position beyond the
    /// output so far is [`Error::InvalidArgument`].
    ConsoleRead = 9,
}

/// The flags of [`Command::CellStart`] (`ARG1`).
pub mod start {
    /// Only the cell's first CPU starts; the cell powers its others on itself (PSCI
    /// CPU_ON on Arm; on x86 every cell starts so, with INIT and start-up IPIs).
    pub const BOOT_CPU_ONLY: u64 = 1 << 0;
    /// The started CPUs enter at `ARG2` (in the cell's RAM) instead of the reset address,
    /// with `ARG3` in their first argument register (x0 on Arm): a Linux kernel and its
    /// device tree.
    pub const AT: u64 = 1 << 1;
    /// The cell runs a stock operating system that sets up the whole interrupt controller
    /// (Linux writes every interrupt's enable, priority and target at boot): its writes to
    /// interrupts that are not its own are dropped, as for the root cell, instead of
    /// stopping it.
    pub const STOCK_OS: u64 = 1 << 2;
    /// What was loaded does not survive a restart in place (a Linux kernel rewrites its
    /// data and frees its initramfs): the cell's reset (PSCI SYSTEM_RESET) stops it in
    /// state [`CellState::Reset`](crate::CellState::Reset) instead of restarting it where
    /// it started; its loader boots it again. Without the flag a reset restarts the cell,
    /// memory kept.
    pub const NO_RESTART_IN_PLACE: u64 = 1 << 3;
    /// Every flag.
    pub const ALL: u64 = BOOT_CPU_ONLY | AT | STOCK_OS | NO_RESTART_IN_PLACE;
}

/// The longest shutdown timeout [`Command::CellShutdown`] takes, in milliseconds (a day);
/// longer is [`Error::InvalidArgument`].
pub const MAX_SHUTDOWN_TIMEOUT_MS: u64 = 24 * 3600 * 1000;

impl Command {
    /// Every command.
    pub const ALL: [Command; 9] = [
        Self::Info,
        Self::CellCreate,
        Self::CellLoad,
        Self::CellStart,
        Self::CellShutdown,
        Self::CellDestroy,
        Self::CellList,
        Self::CellStats,
        Self::ConsoleRead,
    ];

    /// The command for a register value.
    pub fn from_raw(raw: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|c| *c as u32 == raw)
    }

    /// Its name, as the CLI spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::CellCreate => "cell create",
            Self::CellLoad => "cell load",
            Self::CellStart => "cell start",
            Self::CellShutdown => "cell shutdown",
            Self::CellDestroy => "cell destroy",
            Self::CellList => "cell list",
            Self::CellStats => "cell stats",
            Self::ConsoleRead => "console",
        }
    }
}

/// Why a command failed (the negated value is in [`mgmt::STATUS`]; a message naming the
/// item is in the data window).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u32)]
pub enum Error {
    /// Unknown command number.
    UnknownCommand = 1,
    /// An argument is out of range (length beyond the data window, ...).
    InvalidArgument = 2,
    /// No cell with this id.
    NoSuchCell = 3,
    /// A cell with this name exists already.
    CellExists = 4,
    /// The configuration does not parse or does not fit the system.
    BadConfig = 5,
    /// A CPU of the new cell is not offline in the root cell.
    CpuBusy = 6,
    /// A resource the cell asks for is not the root cell's to give.
    NotOwned = 7,
    /// The image does not fit the loadable memory at that address.
    ImageTooLarge = 8,
    /// The cell is not in a state that allows the command (start before load, load after
    /// start, ...).
    WrongState = 9,
    /// The cell voted against its shutdown.
    ShutdownRefused = 10,
    /// The hypervisor has no memory (table frames, cell slots) left.
    OutOfMemory = 11,
    /// The operation is not allowed on this cell (e.g. destroying the root cell).
    Denied = 12,
}

impl Error {
    /// Every error.
    pub const ALL: [Error; 12] = [
        Self::UnknownCommand,
        Self::InvalidArgument,
        Self::NoSuchCell,
        Self::CellExists,
        Self::BadConfig,
        Self::CpuBusy,
        Self::NotOwned,
        Self::ImageTooLarge,
        Self::WrongState,
        Self::ShutdownRefused,
        Self::OutOfMemory,
        Self::Denied,
    ];

    /// The error for a code (the absolute value of a negative status).
    pub fn from_code(code: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|e| *e as u32 == code)
    }

    /// The error a status value carries, if it is negative.
    pub fn from_status(status: i64) -> Option<Result<Self, i64>> {
        (status < 0).then(|| {
            u32::try_from(status.unsigned_abs())
                .ok()
                .and_then(Self::from_code)
                .ok_or(status)
        })
    }

    /// The status value that reports this error.
    pub const fn status(self) -> i64 {
        -(self as i64)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::UnknownCommand => "unknown command",
            Self::InvalidArgument => "invalid argument",
            Self::NoSuchCell => "no such cell",
            Self::CellExists => "a cell with this name exists",
            Self::BadConfig => "bad configuration",
            Self::CpuBusy => "CPU not offline in the root cell",
            Self::NotOwned => "resource not owned by the root cell",
            Self::ImageTooLarge => "image larger than its loadable region",
            Self::WrongState => "wrong cell state",
            Self::ShutdownRefused => "the cell refused to shut down",
            Self::OutOfMemory => "hypervisor out of memory",
            Self::Denied => "operation denied",
        })
    }
}

/// A cell's state.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u32)]
pub enum CellState {
    /// Resources taken, nothing loaded yet.
    Created = 1,
    /// At least one image loaded.
    Loaded = 2,
    /// Running.
    Running = 3,
    /// Stopped by a shutdown.
    ShutDown = 4,
    /// Stopped after breaking its partition.
    Failed = 5,
    /// Stopped by its own reset (PSCI SYSTEM_RESET), which cannot restart it in place
    /// ([`start::NO_RESTART_IN_PLACE`]): its loader boots it again (`cellvisor cell linux
    /// --watch` does).
    Reset = 6,
}

impl CellState {
    /// Every state.
    pub const ALL: [CellState; 6] = [
        Self::Created,
        Self::Loaded,
        Self::Running,
        Self::ShutDown,
        Self::Failed,
        Self::Reset,
    ];

    /// The state for a raw value.
    pub fn from_raw(raw: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|s| *s as u32 == raw)
    }

    /// The name the CLI prints.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Loaded => "loaded",
            Self::Running => "running",
            Self::ShutDown => "shut down",
            Self::Failed => "failed",
            Self::Reset => "reset",
        }
    }
}

/// Maximum cell name length (as in the configuration format).
pub const NAME_LEN: usize = 32;

/// A cell's id, the one vocabulary of every cellvisor crate (`cellvisor-cell`'s registry,
/// `cellvisor-gic`'s interrupt ownership, `cellvisor-core`, the management interface's
/// records): the cell's slot in the registry. The root cell is 0; a new cell gets the lowest
/// free id, so ids of destroyed cells are used again.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct CellId(pub u32);

impl CellId {
    /// The root cell.
    pub const ROOT: CellId = CellId(0);

    /// Wraps a cell number.
    pub const fn new(id: u32) -> Self {
        Self(id)
    }

    /// The cell number.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// Whether this is the root cell.
    pub const fn is_root(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for CellId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One cell, as [`Command::CellList`] reports it.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct CellRecord {
    /// Cell id (0: the root cell).
    pub id: U32,
    /// [`CellState`] value.
    pub state: U32,
    /// The cell's CPUs (bit n: hypervisor CPU n).
    pub cpus: U64,
    /// Bytes of RAM the cell owns.
    pub memory: U64,
    /// Name, NUL padded.
    pub name: [u8; NAME_LEN],
}

impl CellRecord {
    /// The name as text (up to the first NUL; invalid UTF-8 shows as `?`).
    pub fn name(&self) -> &str {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
        core::str::from_utf8(&self.name[..end]).unwrap_or("?")
    }

    /// Copies `name` into a NUL-padded field (truncated to [`NAME_LEN`] bytes).
    pub fn name_field(name: &str) -> [u8; NAME_LEN] {
        let mut field = [0; NAME_LEN];
        let bytes = name.as_bytes();
        let len = bytes.len().min(NAME_LEN);
        field[..len].copy_from_slice(&bytes[..len]);
        field
    }
}

/// What [`Command::Info`] reports.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct HypervisorInfo {
    /// Bytes of hypervisor memory (from the system configuration).
    pub memory_total: U64,
    /// Bytes in use: image, tables, per-cell state.
    pub memory_used: U64,
    /// Bytes of the table-frame pool still free.
    pub memory_free: U64,
    /// Cells, the root cell included.
    pub cells: U32,
    /// CPUs the hypervisor runs on.
    pub cpus: U32,
    /// Management interface version.
    pub version: U32,
    /// Stage-2 translation-table pages of the root cell's tree.
    pub root_table_pages: U32,
}

/// Per-CPU counters of a cell, as [`Command::CellStats`] reports them.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct CpuStats {
    /// Hypervisor CPU index.
    pub cpu: U32,
    /// Number of valid entries in `counts`.
    pub reasons: U32,
    /// Traps by reason, in the order of [`TRAP_REASONS`].
    pub counts: [U64; 12],
    /// Hypervisor (EL2) instructions executed for the measured traps, by reason: from the
    /// end of the previous trap's handler to the end of this one's, so each trap is charged
    /// one full entry, handling and exit path. Zero where the CPU cannot count them (see
    /// `measured`).
    pub instructions: [U64; 12],
    /// Traps whose instructions were counted, by reason. A trap is not measured when the CPU
    /// has no instruction counter for EL2, when the cell reset or stopped the counter, or
    /// when the count is implausibly large (another CPU ran in between on an emulator).
    pub measured: [U64; 12],
    /// Fewest instructions of one measured trap, by reason (`u32::MAX` when none).
    pub min_instructions: [U32; 12],
    /// Most instructions of one measured trap, by reason.
    pub max_instructions: [U32; 12],
}

/// The names of the trap reasons in [`CpuStats::counts`], in order.
pub const TRAP_REASONS: [&str; 11] = [
    "irq",
    "maintenance",
    "gicd",
    "gicr",
    "sgi",
    "sysreg",
    "psci",
    "smccc",
    "mgmt",
    "outside",
    "other",
];

/// The same trap reasons as x86 counts them (`cellvisor-x86`): `irq` are NMIs (kicks and
/// the root cell's NMIs), `gicd` the IOAPIC page, `gicr` the local APIC page, `sgi` its
/// interrupt command register, `sysreg` CPUID and MSRs, `smccc` the virtualization
/// instructions a guest may not run. An empty name is a reason x86 never counts (Arm's GIC
/// maintenance interrupt and PSCI); reports leave it out.
pub const TRAP_REASONS_X86: [&str; 11] = [
    "nmi",
    "",
    "ioapic",
    "lapic",
    "icr",
    "cpuid-msr",
    "",
    "virt",
    "mgmt",
    "outside",
    "other",
];

/// A signed status as the register holds it.
pub type Status = I64;

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::{FromBytes, IntoBytes};

    #[test]
    fn commands_and_errors_round_trip() {
        for command in Command::ALL {
            assert_eq!(Command::from_raw(command as u32), Some(command));
        }
        assert_eq!(Command::from_raw(0), None);
        assert_eq!(Command::from_raw(99), None);
        for error in Error::ALL {
            assert_eq!(Error::from_status(error.status()), Some(Ok(error)));
        }
        assert_eq!(Error::from_status(0), None);
        assert_eq!(Error::from_status(5), None);
        assert_eq!(Error::from_status(-99), Some(Err(-99)));
        assert_eq!(Error::from_status(i64::MIN), Some(Err(i64::MIN)));
        for state in CellState::ALL {
            assert_eq!(CellState::from_raw(state as u32), Some(state));
        }
    }

    #[test]
    fn records_have_fixed_layouts() {
        assert_eq!(core::mem::size_of::<CellRecord>(), 56);
        assert_eq!(core::mem::size_of::<HypervisorInfo>(), 40);
        assert_eq!(core::mem::size_of::<CpuStats>(), 392);
        let record = CellRecord {
            id: 2.into(),
            state: (CellState::Running as u32).into(),
            cpus: 0b1000.into(),
            memory: (16u64 << 20).into(),
            name: CellRecord::name_field("demo"),
        };
        let bytes = record.as_bytes();
        assert_eq!(&bytes[..4], &[2, 0, 0, 0]);
        let back = CellRecord::read_from_bytes(bytes).unwrap();
        assert_eq!(back.name(), "demo");
        assert_eq!(back.cpus.get(), 8);
        let long = CellRecord::name_field("a-name-that-is-much-longer-than-32-bytes");
        assert_eq!(long.len(), NAME_LEN);
        assert_eq!(mgmt::MAGIC_VALUE.to_le_bytes(), *b"CVMG");
    }
}

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
