//! The management protocol of `cellvisor_abi::mgmt` over a [`Device`]: check the interface,
//! write the arguments, write the command, read the status, and on failure the hypervisor's
//! message from the data window.

use std::fmt;

use cellvisor_abi::{mgmt, CellRecord, Command, CpuStats, Error, HypervisorInfo};
use zerocopy::FromBytes;

use crate::device::{self, Device};

/// The longest hypervisor message read from the window.
const MESSAGE_MAX: usize = 1024;

/// A command the hypervisor refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The error code (`Err`: a status this tool does not know).
    pub error: Result<Error, i64>,
    /// The hypervisor's message, naming the item and the reason (may be empty).
    pub message: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.error {
            Ok(error) => write!(f, "{error}")?,
            Err(status) => write!(f, "hypervisor error {status}")?,
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for Refusal {}

/// Why the interface cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// The control page does not read "CVMG".
    BadMagic(u32),
    /// Another interface version.
    BadVersion(u32),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic(found) => write!(
                f,
                "the cellvisor management page reads magic {found:#010x}, not \"CVMG\" \
                 ({:#010x}): not a cellvisor management interface",
                mgmt::MAGIC_VALUE
            ),
            Self::BadVersion(found) => write!(
                f,
                "the hypervisor speaks management interface version {found}, this tool version \
                 {} (use the cellvisor tool of the same release as the hypervisor)",
                mgmt::VERSION_VALUE
            ),
        }
    }
}

impl std::error::Error for OpenError {}

/// The management interface of a running hypervisor.
#[derive(Debug)]
pub struct Client<D> {
    device: D,
    /// Usable bytes of the data window: the smaller of the mapping and `DATA_SIZE`.
    window: usize,
}

impl<D: Device> Client<D> {
    /// Checks the magic and the version and learns the size of the data window.
    pub fn new(mut device: D) -> Result<Self, OpenError> {
        let magic = device.read32(mgmt::MAGIC);
        if magic != mgmt::MAGIC_VALUE {
            return Err(OpenError::BadMagic(magic));
        }
        let version = device.read32(mgmt::VERSION);
        if version != mgmt::VERSION_VALUE {
            return Err(OpenError::BadVersion(version));
        }
        let advertised = usize::try_from(device.read64(mgmt::DATA_SIZE)).unwrap_or(usize::MAX);
        let window = advertised.min(device.window_len()) & !7;
        Ok(Self { device, window })
    }

    /// The usable size of the data window.
    pub fn window(&self) -> usize {
        self.window
    }

    /// The device, for tests.
    #[cfg(test)]
    pub fn device(&mut self) -> &mut D {
        &mut self.device
    }

    /// Runs one command: the arguments, then the command number, then the status.
    pub fn call(&mut self, command: Command, args: [u64; 4]) -> Result<u64, Refusal> {
        self.call_raw(command as u32, args)
    }

    /// [`Client::call`] with any command register value, known or not (`cellvisor raw`).
    pub fn call_raw(&mut self, command: u32, args: [u64; 4]) -> Result<u64, Refusal> {
        for (register, value) in [mgmt::ARG0, mgmt::ARG1, mgmt::ARG2, mgmt::ARG3]
            .into_iter()
            .zip(args)
        {
            self.device.write64(register, value);
        }
        self.device.write32(mgmt::COMMAND, command);
        let status = self.device.read64(mgmt::STATUS) as i64;
        match Error::from_status(status) {
            None => Ok(status as u64),
            Some(error) => Err(Refusal {
                error,
                message: device::read_window_text(&mut self.device, MESSAGE_MAX.min(self.window)),
            }),
        }
    }

    /// Copies `data` into the window (it must fit: see [`Client::window`]).
    pub fn put(&mut self, data: &[u8]) {
        device::write_window(&mut self.device, &data[..data.len().min(self.window)]);
    }

    /// Reads `len` bytes from the window (at most the window).
    pub fn get(&mut self, len: usize) -> Vec<u8> {
        device::read_window(&mut self.device, len.min(self.window))
    }

    /// `count` records of type `T` from the window (fewer if the window holds fewer).
    fn records<T: FromBytes>(&mut self, count: u64) -> Vec<T> {
        let size = size_of::<T>();
        let count = usize::try_from(count)
            .unwrap_or(usize::MAX)
            .min(self.window / size);
        let bytes = self.get(count * size);
        bytes
            .chunks_exact(size)
            .filter_map(|chunk| T::read_from_bytes(chunk).ok())
            .collect()
    }

    /// [`Command::Info`].
    pub fn info(&mut self) -> Result<HypervisorInfo, Refusal> {
        let size = self.call(Command::Info, [0; 4])?;
        let size = usize::try_from(size)
            .unwrap_or(usize::MAX)
            .min(size_of::<HypervisorInfo>());
        // An older hypervisor may write a shorter record: the rest reads as zero.
        let mut bytes = self.get(size);
        bytes.resize(size_of::<HypervisorInfo>(), 0);
        Ok(HypervisorInfo::read_from_bytes(&bytes).expect("sized above"))
    }

    /// [`Command::CellCreate`] with the binary configuration `config`; returns the new id.
    pub fn cell_create(&mut self, config: &[u8]) -> Result<u32, Refusal> {
        self.put(config);
        let id = self.call(Command::CellCreate, [config.len() as u64, 0, 0, 0])?;
        Ok(id as u32)
    }

    /// [`Command::CellLoad`] of `data` (which must fit the window) at `address`.
    pub fn cell_load(&mut self, id: u32, address: u64, data: &[u8]) -> Result<(), Refusal> {
        self.put(data);
        self.call(
            Command::CellLoad,
            [u64::from(id), address, data.len() as u64, 0],
        )
        .map(drop)
    }

    /// [`Command::CellStart`].
    pub fn cell_start(&mut self, id: u32) -> Result<(), Refusal> {
        self.call(Command::CellStart, [u64::from(id), 0, 0, 0])
            .map(drop)
    }

    /// [`Command::CellStart`] with [`cellvisor_abi::start`] flags, an entry point and the
    /// first argument register.
    pub fn cell_start_with(
        &mut self,
        id: u32,
        flags: u64,
        entry: u64,
        arg: u64,
    ) -> Result<(), Refusal> {
        self.call(Command::CellStart, [u64::from(id), flags, entry, arg])
            .map(drop)
    }

    /// One [`Command::CellShutdown`] request: `true` once the cell is stopped, `false` while
    /// its vote is pending.
    pub fn cell_shutdown(&mut self, id: u32, timeout_ms: u64) -> Result<bool, Refusal> {
        self.call(Command::CellShutdown, [u64::from(id), timeout_ms, 0, 0])
            .map(|status| status == 0)
    }

    /// [`Command::CellDestroy`].
    pub fn cell_destroy(&mut self, id: u32) -> Result<(), Refusal> {
        self.call(Command::CellDestroy, [u64::from(id), 0, 0, 0])
            .map(drop)
    }

    /// [`Command::CellList`].
    pub fn cell_list(&mut self) -> Result<Vec<CellRecord>, Refusal> {
        let count = self.call(Command::CellList, [0; 4])?;
        Ok(self.records(count))
    }

    /// [`Command::CellStats`].
    pub fn cell_stats(&mut self, id: u32) -> Result<Vec<CpuStats>, Refusal> {
        let count = self.call(Command::CellStats, [u64::from(id), 0, 0, 0])?;
        Ok(self.records(count))
    }

    /// [`Command::ConsoleRead`] from `position`: the bytes and the position of the first
    /// of them (later than `position` when the ring had overwritten what was asked for).
    pub fn console_read(&mut self, position: u64) -> Result<(u64, Vec<u8>), Refusal> {
        // ARG1 = ARG0 unless the hypervisor says it fell behind.
        let count = self.call(Command::ConsoleRead, [position, position, 0, 0])?;
        let oldest = self.device.read64(mgmt::ARG1);
        let bytes = self.get(usize::try_from(count).unwrap_or(usize::MAX));
        Ok((oldest.max(position), bytes))
    }
}
