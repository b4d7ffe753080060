//! A fake machine running the core: the QEMU `virt` system configuration, CPU 0 as the
//! root cell's management CPU (the test's thread), CPUs 1 to 3 as threads that start parked
//! and offline, and a management client that speaks the `cellvisor-abi` protocol through the
//! control page and the data window.

#![allow(dead_code)]

use cellvisor_abi::{mgmt, CellRecord, Command, Error, HypervisorInfo};
use cellvisor_config::text::{cell_from_toml, system_from_toml};
use cellvisor_config::SystemConfigView;
use cellvisor_core::fake::{run_cpu, FakeArch, INTERFACE};
use cellvisor_core::{Hypervisor, RootTables};
use cellvisor_paging::PhysAddr;
use zerocopy::FromBytes;

/// The QEMU `virt` system the board crate uses.
pub const QEMU_SYSTEM: &str =
    include_str!("../../../../platforms/qemu-arm64/config/system-gicv3.toml");
/// The QEMU demo cell: CPU 3, SPI 40, 16 MiB at 0x7f00_0000, a communication region.
pub const DEMO: &str = include_str!("../../../../platforms/qemu-arm64/config/demo.toml");
/// Two CPUs (1 and 2), a line of its own, 1 MiB of the root cell's RAM, a communication
/// region.
pub const PAIR: &str = include_str!("../data/pair.toml");
/// The ticker cell: CPU 2, 16 MiB at 0x7e00_0000, a communication region.
pub const TICKER: &str = include_str!("../../../../platforms/qemu-arm64/config/ticker.toml");

pub use cellvisor_core::fake::{CPUS, FRAMES};
/// The management control page.
pub const CONTROL: u64 = INTERFACE.control;
/// The management data window.
pub const DATA: u64 = INTERFACE.data;
/// Its size.
pub const DATA_SIZE: u64 = INTERFACE.data_size;

/// A cell configuration's binary form.
pub fn cell_bytes(toml: &str) -> Vec<u8> {
    cell_from_toml(toml).unwrap().encode().unwrap()
}

/// A booted fake machine.
pub struct Machine<'a> {
    /// The hypervisor.
    pub hv: &'a Hypervisor<FakeArch>,
    /// The root cell's tables after boot.
    pub root: RootTables,
}

/// The system configuration, for the life of the test process.
pub fn system() -> &'static SystemConfigView<'static> {
    use std::sync::OnceLock;
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    static VIEW: OnceLock<SystemConfigView<'static>> = OnceLock::new();
    let bytes = BYTES.get_or_init(|| system_from_toml(QEMU_SYSTEM).unwrap().encode().unwrap());
    VIEW.get_or_init(|| SystemConfigView::parse(bytes).unwrap())
}

/// Boots a fake machine with `frames` table frames and runs `test` on CPU 0 while CPUs 1 to 3
/// run as threads; stops them afterwards.
pub fn with_machine<T>(frames: usize, test: impl FnOnce(&Machine<'_>) -> T) -> T {
    let hv = Box::new(Hypervisor::new(FakeArch::new()));
    boot(&hv, frames).map_or_else(
        |e| panic!("boot: {e}"),
        |root| {
            std::thread::scope(|scope| {
                for cpu in 1..CPUS {
                    let hv = &*hv;
                    scope.spawn(move || run_cpu(hv, cpu));
                }
                FakeArch::set_cpu(0);
                // The secondaries park offline before management runs.
                while !(1..CPUS).all(|cpu| hv.is_parked(cpu)) {
                    std::thread::yield_now();
                }
                let machine = Machine { hv: &hv, root };
                let result =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(&machine)));
                hv.arch().quit();
                result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
        },
    )
}

/// Builds the root cell and the management interface, as an architecture does at boot.
pub fn boot(
    hv: &Hypervisor<FakeArch>,
    frames: usize,
) -> Result<RootTables, cellvisor_core::MachineError> {
    cellvisor_core::fake::boot(hv, system(), PhysAddr::new(FRAMES), frames, CPUS, INTERFACE)
}

impl Machine<'_> {
    fn write(&self, offset: usize, value: u64) {
        self.hv.mgmt_access(0, CONTROL + offset as u64, true, value);
    }

    fn read(&self, offset: usize) -> u64 {
        self.hv
            .mgmt_access(0, CONTROL + offset as u64, false, 0)
            .unwrap()
    }

    /// Runs a command; `Ok(status)` or the error and the message in the data window.
    pub fn command(&self, command: Command, args: [u64; 4]) -> Result<i64, (Error, String)> {
        for (i, arg) in args.into_iter().enumerate() {
            self.write(mgmt::ARG0 + 8 * i, arg);
        }
        self.write(mgmt::COMMAND, command as u64);
        let status = self.read(mgmt::STATUS) as i64;
        match Error::from_status(status) {
            None => Ok(status),
            Some(error) => {
                let mut message = vec![0u8; 256];
                self.hv.arch().phys().read(DATA, &mut message);
                let end = message.iter().position(|&b| b == 0).unwrap_or(256);
                Err((
                    error.expect("a known error code"),
                    String::from_utf8_lossy(&message[..end]).into_owned(),
                ))
            }
        }
    }

    /// Puts bytes into the data window, as root userspace does.
    pub fn put(&self, offset: u64, bytes: &[u8]) {
        self.hv.arch().phys().write(DATA + offset, bytes);
    }

    /// Creates a cell from a TOML configuration.
    pub fn create(&self, toml: &str) -> Result<i64, (Error, String)> {
        let bytes = cell_bytes(toml);
        self.put(0, &bytes);
        self.command(Command::CellCreate, [bytes.len() as u64, 0, 0, 0])
    }

    /// Loads `image` at guest address `address` of cell `id`.
    pub fn load(&self, id: i64, address: u64, image: &[u8]) -> Result<i64, (Error, String)> {
        self.put(0x1000, image);
        self.command(
            Command::CellLoad,
            [id as u64, address, image.len() as u64, 0x1000],
        )
    }

    /// The hypervisor's information.
    pub fn info(&self) -> HypervisorInfo {
        let len = self.command(Command::Info, [0; 4]).unwrap() as usize;
        let mut bytes = vec![0u8; len];
        self.hv.arch().phys().read(DATA, &mut bytes);
        HypervisorInfo::read_from_bytes(&bytes).unwrap()
    }

    /// The cells, as `cellvisor cell list` shows them.
    pub fn list(&self) -> Vec<CellRecord> {
        let count = self.command(Command::CellList, [0; 4]).unwrap() as usize;
        let size = core::mem::size_of::<CellRecord>();
        let mut bytes = vec![0u8; count * size];
        self.hv.arch().phys().read(DATA, &mut bytes);
        bytes
            .chunks(size)
            .map(|c| CellRecord::read_from_bytes(c).unwrap())
            .collect()
    }

    /// Waits (up to 2 s) until `cpu` is parked.
    pub fn wait_parked(&self, cpu: usize) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_secs(2) {
            if self.hv.is_parked(cpu) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        false
    }

    /// Waits (up to 2 s) until `cpu` runs a vCPU.
    pub fn wait_running(&self, cpu: usize) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_secs(2) {
            if !self.hv.is_parked(cpu) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        false
    }

    /// What must be as at boot once every cell is gone: free frames, CPU owners, the root
    /// cell's table pages, the root cell's memory in the books.
    pub fn snapshot(&self) -> Snapshot {
        let info = self.info();
        Snapshot {
            memory_free: info.memory_free.get(),
            cells: info.cells.get(),
            root_table_pages: info.root_table_pages.get(),
            owners: (0..CPUS).map(|cpu| self.hv.owner(cpu).0).collect(),
            root_cpus: self.hv.cell(cellvisor_cell::CellId(0)).cpus(),
            root_memory: self.list()[0].memory.get(),
        }
    }
}

/// See [`Machine::snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub memory_free: u64,
    pub cells: u32,
    pub root_table_pages: u32,
    pub owners: Vec<u32>,
    pub root_cpus: u64,
    pub root_memory: u64,
}
