//! What the Multiboot loader hands over (Multiboot Specification 0.6.96 §3.3), read with the
//! `multiboot` crate: the firmware's memory map, the command line and the modules, which are
//! the root cell's kernel (the first) and initramfs (the second, if any).

use core::fmt;

use cellvisor_linux::memory_map::{Kind, MapError, MemoryMap};
use multiboot::information::{MemoryManagement, MemoryType, Multiboot, PAddr};

/// The loader's data is below 4 GiB, which the boot map has one to one.
struct OneToOne;

impl MemoryManagement for OneToOne {
    unsafe fn paddr_to_slice(&self, addr: PAddr, length: usize) -> Option<&'static [u8]> {
        let end = addr.checked_add(length as u64)?;
        if addr == 0 || end > 1 << 32 {
            return None;
        }
        // SAFETY: the first 4 GiB are mapped one to one (boot.rs) and the loader's data is
        // not written while the hypervisor reads it (nothing runs yet but the boot CPU).
        Some(unsafe { core::slice::from_raw_parts(addr as *const u8, length) })
    }

    unsafe fn allocate(&mut self, _length: usize) -> Option<(PAddr, &mut [u8])> {
        None
    }

    unsafe fn deallocate(&mut self, _addr: PAddr) {}
}

/// A module: `[start, end)` physical.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Module {
    /// Its first byte.
    pub start: u64,
    /// The byte after it.
    pub end: u64,
}

impl Module {
    /// Its length.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// Its bytes.
    pub fn bytes(&self) -> &'static [u8] {
        // SAFETY: `read` took only modules below 4 GiB (mapped one to one) with end >=
        // start; the loader's memory is not written until the root cell runs, and the root
        // cell's kernel is copied out before.
        unsafe { core::slice::from_raw_parts(self.start as *const u8, self.len() as usize) }
    }
}

/// What the loader said.
#[derive(Debug)]
pub struct Handoff {
    /// The firmware's memory map.
    pub map: MemoryMap,
    /// The command line after the image's own name: the root cell's kernel command line.
    pub cmdline: &'static str,
    /// The first module: the root cell's kernel.
    pub kernel: Option<Module>,
    /// The second module: its initramfs.
    pub initrd: Option<Module>,
    /// The third module: the system configuration (`cellvisor-config compile`).
    pub config: Option<Module>,
    /// Modules beyond those (ignored).
    pub extra_modules: usize,
}

/// Why the loader's information is unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoaderError {
    /// The information structure is not readable (null or above 4 GiB).
    NoInformation(u32),
    /// The loader gave no memory map (flag 6).
    NoMemoryMap,
    /// The memory map does not fit.
    Map(MapError),
    /// A module above 4 GiB or ending before it starts.
    BadModule {
        /// Which one, from 0.
        index: usize,
        /// Its start.
        start: u64,
        /// Its end.
        end: u64,
    },
}

impl fmt::Display for LoaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoInformation(at) => {
                write!(f, "no readable Multiboot information at {at:#x}")
            }
            Self::NoMemoryMap => f.write_str("the loader gave no memory map (Multiboot flag 6)"),
            Self::Map(e) => write!(f, "the loader's memory map: {e}"),
            Self::BadModule { index, start, end } => write!(
                f,
                "Multiboot module {index} ({start:#x}-{end:#x}) is empty, inverted or above 4 GiB"
            ),
        }
    }
}

/// Reads the information at `info`.
pub fn read(info: u32) -> Result<Handoff, LoaderError> {
    let mut memory = OneToOne;
    // SAFETY: the loader put the structure at `info` (EBX at entry); OneToOne refuses what
    // is not mapped.
    let multiboot = unsafe { Multiboot::from_ptr(PAddr::from(info), &mut memory) }
        .ok_or(LoaderError::NoInformation(info))?;
    let mut map = MemoryMap::new();
    for region in multiboot.memory_regions().ok_or(LoaderError::NoMemoryMap)? {
        let kind = match region.memory_type() {
            MemoryType::Available => Kind::Ram,
            MemoryType::Reserved => Kind::Reserved,
            MemoryType::ACPI => Kind::AcpiReclaimable,
            MemoryType::NVS => Kind::AcpiNvs,
            MemoryType::Defect => Kind::Unusable,
        };
        map.set(region.base_address(), region.length(), kind)
            .map_err(LoaderError::Map)?;
    }
    let cmdline = multiboot
        .command_line()
        .map(crate::cmdline::kernel_command_line)
        .unwrap_or("");
    let mut handoff = Handoff {
        map,
        cmdline,
        kernel: None,
        initrd: None,
        config: None,
        extra_modules: 0,
    };
    for (index, module) in multiboot.modules().into_iter().flatten().enumerate() {
        let (start, end) = (module.start, module.end);
        if end <= start || end > 1 << 32 {
            return Err(LoaderError::BadModule { index, start, end });
        }
        let module = Module { start, end };
        match index {
            0 => handoff.kernel = Some(module),
            1 => handoff.initrd = Some(module),
            2 => handoff.config = Some(module),
            _ => handoff.extra_modules += 1,
        }
    }
    Ok(handoff)
}
