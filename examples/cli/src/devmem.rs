//! The real [`Device`]: the control page and the data window mapped through `/dev/mem`, at
//! the addresses the hypervisor put into the root cell's device tree.
//!
//! `/chosen/cellvisor,management` holds four big-endian 64-bit numbers: control page base and
//! size, data window base and size. Linux maps physical memory outside its RAM through
//! `/dev/mem` opened with `O_SYNC` as Device memory: every access here is a single aligned
//! 32-bit or 64-bit volatile load or store.

use std::fmt;
use std::io;
use std::path::Path;

use anyhow::{bail, Context as _, Result};

use crate::device::Device;
use crate::reason;

/// Where Linux shows the device tree's property.
pub const PROPERTY: &str = "/proc/device-tree/chosen/cellvisor,management";

/// Where Linux shows its command line: on x86 (no device tree) the hypervisor appends
/// `cellvisor.management=CONTROL,SIZE,DATA,SIZE` (hexadecimal with `0x`, or decimal).
pub const CMDLINE: &str = "/proc/cmdline";

/// The command-line word's name.
const CMDLINE_WORD: &str = "cellvisor.management=";

/// The memory device.
pub const DEV_MEM: &str = "/dev/mem";

/// The smallest control page that holds every register of `cellvisor_abi::mgmt`.
const CONTROL_MIN: u64 = cellvisor_abi::mgmt::STATUS as u64 + 8;

/// The physical areas of the management interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Areas {
    /// Control page base and size.
    pub control: (u64, u64),
    /// Data window base and size.
    pub data: (u64, u64),
}

impl fmt::Display for Areas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "control page {:#x} ({:#x} bytes), data window {:#x} ({:#x} bytes)",
            self.control.0, self.control.1, self.data.0, self.data.1
        )
    }
}

/// Decodes the property: four big-endian u64.
pub fn parse_property(bytes: &[u8]) -> Result<Areas> {
    if bytes.len() != 32 {
        bail!(
            "{PROPERTY} has {} bytes, expected 32 (control base and size, data base and size, \
             big-endian 64-bit each)",
            bytes.len()
        );
    }
    let cell = |i: usize| {
        u64::from_be_bytes(
            bytes[i * 8..i * 8 + 8]
                .try_into()
                .expect("8 bytes of a 32-byte property"),
        )
    };
    let areas = Areas {
        control: (cell(0), cell(1)),
        data: (cell(2), cell(3)),
    };
    if areas.control.1 < CONTROL_MIN || !areas.control.0.is_multiple_of(8) {
        bail!("{PROPERTY}: unusable control page ({areas})");
    }
    if areas.data.1 < 8 || !areas.data.0.is_multiple_of(8) {
        bail!("{PROPERTY}: unusable data window ({areas})");
    }
    Ok(areas)
}

/// The areas of a `cellvisor.management=` word of kernel command line `line`, if it has one.
pub fn parse_cmdline(line: &str) -> Option<Result<Areas>> {
    let value = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix(CMDLINE_WORD))?;
    let number = |text: &str| match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    };
    let numbers: Vec<Option<u64>> = value.split(',').map(number).collect();
    let [Some(control), Some(control_size), Some(data), Some(data_size)] = numbers[..] else {
        return Some(Err(anyhow::anyhow!(
            "{CMDLINE}: `{CMDLINE_WORD}{value}` is not four numbers (control base and size, data \
             base and size)"
        )));
    };
    let bytes: Vec<u8> = [control, control_size, data, data_size]
        .iter()
        .flat_map(|n| n.to_be_bytes())
        .collect();
    Some(parse_property(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "{}",
            e.to_string()
                .replace(PROPERTY, &format!("{CMDLINE} ({CMDLINE_WORD})"))
        )
    }))
}

/// The areas from the device tree's property at `property`, or else from the kernel command
/// line at `cmdline` (normally [`PROPERTY`] and [`CMDLINE`]).
pub fn locate(property: &Path, cmdline: &Path) -> Result<Areas> {
    match std::fs::read(property) {
        Ok(bytes) => return parse_property(&bytes),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => bail!("cannot read {}: {}", property.display(), reason(&error)),
    }
    let line = match std::fs::read_to_string(cmdline) {
        Ok(line) => line,
        Err(error) if error.kind() == io::ErrorKind::NotFound => String::new(),
        Err(error) => bail!("cannot read {}: {}", cmdline.display(), reason(&error)),
    };
    parse_cmdline(&line).unwrap_or_else(|| {
        bail!(
            "no cellvisor management interface in the device tree nor on the kernel command \
             line (is this the root cell of a cellvisor system?)"
        )
    })
}

#[cfg(target_os = "linux")]
pub use linux::DevMem;

#[cfg(target_os = "linux")]
mod linux {
    use std::os::fd::OwnedFd;
    use std::ptr::NonNull;

    use rustix::fs::{FlockOperation, Mode, OFlags};
    use rustix::mm::{MapFlags, ProtFlags};

    use super::*;

    /// One area mapped from `/dev/mem`.
    #[derive(Debug)]
    struct Mapping {
        /// The start of the mapping (page aligned).
        map: NonNull<u8>,
        /// Its length.
        map_len: usize,
        /// The area inside it.
        area: NonNull<u8>,
        /// The area's size.
        len: usize,
    }

    impl Mapping {
        /// Maps `[base, base + size)` of physical memory, shared, readable and writable.
        fn new(fd: &OwnedFd, what: &str, base: u64, size: u64) -> Result<Self> {
            let page = rustix::param::page_size() as u64;
            let start = base & !(page - 1);
            let end = base
                .checked_add(size)
                .and_then(|end| end.checked_next_multiple_of(page))
                .with_context(|| format!("the {what} at {base:#x} ends beyond 2^64"))?;
            let map_len = usize::try_from(end - start)
                .with_context(|| format!("the {what} is too large to map"))?;
            let len = usize::try_from(size).expect("smaller than map_len");
            // SAFETY: a new shared mapping chosen by the kernel (null hint, no MAP_FIXED)
            // replaces nothing; the file offset is page aligned. What the mapping holds is
            // only ever reached through volatile accesses below, never through references.
            let map = unsafe {
                rustix::mm::mmap(
                    std::ptr::null_mut(),
                    map_len,
                    ProtFlags::READ | ProtFlags::WRITE,
                    MapFlags::SHARED,
                    fd,
                    start,
                )
            }
            .map_err(io::Error::from)
            .map_err(|error| {
                let hint = if error.kind() == io::ErrorKind::PermissionDenied {
                    " (the kernel refuses /dev/mem access there: the area must lie outside \
                     Linux's RAM and be claimed by no driver)"
                } else {
                    ""
                };
                anyhow::anyhow!(
                    "cannot map the {what} at {base:#x} through {DEV_MEM}: {}{hint}",
                    reason(&error)
                )
            })?;
            let map = NonNull::new(map.cast::<u8>()).context("mmap returned null")?;
            // SAFETY: `base - start` is less than a page and the mapping is at least that
            // long plus `size`.
            let area = unsafe { map.add((base - start) as usize) };
            Ok(Self {
                map,
                map_len,
                area,
                len,
            })
        }

        /// The address of `offset` for an aligned access of `width` bytes; panics otherwise
        /// (offsets come from the tool, not from input).
        fn at(&self, offset: usize, width: usize) -> NonNull<u8> {
            assert!(
                offset.is_multiple_of(width) && offset + width <= self.len,
                "access of {width} bytes at {offset:#x} of a {:#x}-byte area",
                self.len
            );
            // SAFETY: checked just above: inside the area.
            unsafe { self.area.add(offset) }
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: the mapping was made by `Mapping::new` with this start and length and
            // nothing refers into it any more.
            unsafe {
                rustix::mm::munmap(self.map.as_ptr().cast(), self.map_len).ok();
            }
        }
    }

    /// The management interface mapped through `/dev/mem`.
    #[derive(Debug)]
    pub struct DevMem {
        control: Mapping,
        window: Mapping,
        /// Kept open for the lock that keeps other `cellvisor` processes out.
        _fd: OwnedFd,
    }

    impl DevMem {
        /// Opens `/dev/mem`, takes its lock (one command sequence at a time, as the control
        /// page's registers are shared), and maps the two areas.
        pub fn open(areas: &Areas) -> Result<Self> {
            Self::open_file(Path::new(DEV_MEM), areas)
        }

        /// [`DevMem::open`] with another file standing for `/dev/mem` (tests).
        pub(crate) fn open_file(path: &Path, areas: &Areas) -> Result<Self> {
            let fd = rustix::fs::open(
                path,
                OFlags::RDWR | OFlags::SYNC | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(io::Error::from)
            .map_err(|error| {
                let hint = if error.kind() == io::ErrorKind::PermissionDenied {
                    " (run as root)"
                } else {
                    ""
                };
                anyhow::anyhow!("cannot open {}: {}{hint}", path.display(), reason(&error))
            })?;
            rustix::fs::flock(&fd, FlockOperation::LockExclusive)
                .map_err(io::Error::from)
                .map_err(|error| {
                    anyhow::anyhow!("cannot lock {}: {}", path.display(), reason(&error))
                })?;
            let control = Mapping::new(
                &fd,
                "management control page",
                areas.control.0,
                areas.control.1,
            )?;
            let window = Mapping::new(
                &fd,
                "management data window",
                areas.data.0,
                areas.data.1 & !7,
            )?;
            Ok(Self {
                control,
                window,
                _fd: fd,
            })
        }
    }

    impl Device for DevMem {
        fn read32(&mut self, offset: usize) -> u32 {
            let at = self.control.at(offset, 4).cast::<u32>();
            // SAFETY: an aligned address inside the mapped control page (`at`).
            unsafe { at.read_volatile() }
        }

        fn read64(&mut self, offset: usize) -> u64 {
            let at = self.control.at(offset, 8).cast::<u64>();
            // SAFETY: an aligned address inside the mapped control page (`at`).
            unsafe { at.read_volatile() }
        }

        fn write32(&mut self, offset: usize, value: u32) {
            let at = self.control.at(offset, 4).cast::<u32>();
            // SAFETY: an aligned address inside the mapped control page (`at`).
            unsafe { at.write_volatile(value) }
        }

        fn write64(&mut self, offset: usize, value: u64) {
            let at = self.control.at(offset, 8).cast::<u64>();
            // SAFETY: an aligned address inside the mapped control page (`at`).
            unsafe { at.write_volatile(value) }
        }

        fn window_len(&self) -> usize {
            self.window.len
        }

        fn window_read64(&mut self, offset: usize) -> u64 {
            let at = self.window.at(offset, 8).cast::<u64>();
            // SAFETY: an aligned address inside the mapped data window (`at`).
            unsafe { at.read_volatile() }
        }

        fn window_write64(&mut self, offset: usize, value: u64) {
            let at = self.window.at(offset, 8).cast::<u64>();
            // SAFETY: an aligned address inside the mapped data window (`at`).
            unsafe { at.write_volatile(value) }
        }
    }
}

/// Opens the management interface of the running hypervisor.
pub fn open() -> Result<Box<dyn Device>> {
    let areas = locate(Path::new(PROPERTY), Path::new(CMDLINE))?;
    #[cfg(target_os = "linux")]
    {
        Ok(Box::new(DevMem::open(&areas)?))
    }
    #[cfg(not(target_os = "linux"))]
    {
        bail!("the management interface ({areas}) is reached through /dev/mem on Linux only")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn property(cells: [u64; 4]) -> Vec<u8> {
        cells.iter().flat_map(|c| c.to_be_bytes()).collect()
    }

    #[test]
    fn parses_the_property() {
        let areas =
            parse_property(&property([0x4010_0000, 0x1000, 0x4011_0000, 0x1_0000])).unwrap();
        assert_eq!(areas.control, (0x4010_0000, 0x1000));
        assert_eq!(areas.data, (0x4011_0000, 0x1_0000));
        assert_eq!(
            areas.to_string(),
            "control page 0x40100000 (0x1000 bytes), data window 0x40110000 (0x10000 bytes)"
        );
        let error = parse_property(&[0; 16]).unwrap_err().to_string();
        assert!(error.contains("has 16 bytes, expected 32"), "{error}");
        let error = parse_property(&property([0x1000, 0x10, 0x2000, 0x1000]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("unusable control page"), "{error}");
        let error = parse_property(&property([0x1000, 0x1000, 0x2004, 0x1000]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("unusable data window"), "{error}");
    }

    /// The mapping arithmetic and the accesses, on a file standing for `/dev/mem`: areas
    /// that do not start on a page boundary, in separate pages.
    #[test]
    #[cfg(target_os = "linux")]
    fn maps_the_areas_of_a_file() {
        let path =
            std::env::temp_dir().join(format!("cellvisor-cli-devmem-{}", std::process::id()));
        let mut content = vec![0u8; 0x3000];
        content[0x1000..0x1004].copy_from_slice(b"CVMG");
        content[0x2010..0x2018].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        std::fs::write(&path, &content).unwrap();
        let areas = Areas {
            control: (0x1000, 0x1000),
            data: (0x2008, 0x100),
        };
        let mut device = DevMem::open_file(&path, &areas).unwrap();
        assert_eq!(device.read32(0), cellvisor_abi::mgmt::MAGIC_VALUE);
        assert_eq!(device.window_len(), 0x100);
        assert_eq!(device.window_read64(8), 0x1122_3344_5566_7788);
        device.write64(cellvisor_abi::mgmt::ARG1, 0xabcd);
        device.window_write64(0xf8, u64::from_le_bytes(*b"lastword"));
        drop(device);
        let content = std::fs::read(&path).unwrap();
        assert_eq!(&content[0x1018..0x1020], &0xabcdu64.to_le_bytes());
        assert_eq!(&content[0x2100..0x2108], b"lastword");
        std::fs::remove_file(&path).unwrap();

        let error = DevMem::open_file(Path::new("/nonexistent/mem"), &areas).unwrap_err();
        assert_eq!(
            error.to_string(),
            "cannot open /nonexistent/mem: No such file or directory"
        );
    }

    #[test]
    fn the_command_line_word_stands_in_for_the_property() {
        let areas = parse_cmdline(
            "console=ttyS0 cellvisor.management=0x1001000,0x1000,0x1002000,1048576 quiet",
        )
        .unwrap()
        .unwrap();
        assert_eq!(areas.control, (0x100_1000, 0x1000));
        assert_eq!(areas.data, (0x100_2000, 0x10_0000));
        assert!(parse_cmdline("console=ttyS0 quiet").is_none());
        let error = parse_cmdline("cellvisor.management=0x1000,0x1000,zz,0x1000")
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(error.contains("is not four numbers"), "{error}");
        let error = parse_cmdline("cellvisor.management=0x1000,0x10,0x2000,0x1000")
            .unwrap()
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "/proc/cmdline (cellvisor.management=): unusable control page (control page 0x1000 \
             (0x10 bytes), data window 0x2000 (0x1000 bytes))"
        );
        let missing = Path::new("/nonexistent/cellvisor,management");
        let cmdline =
            std::env::temp_dir().join(format!("cellvisor-cmdline-{}", std::process::id()));
        std::fs::write(
            &cmdline,
            "ro cellvisor.management=0x1000,0x1000,0x2000,0x1000\n",
        )
        .unwrap();
        assert_eq!(locate(missing, &cmdline).unwrap().data, (0x2000, 0x1000));
        std::fs::write(&cmdline, "ro quiet\n").unwrap();
        let error = locate(missing, &cmdline).unwrap_err().to_string();
        assert!(
            error.starts_with("no cellvisor management interface in the device tree nor"),
            "{error}"
        );
        std::fs::remove_file(&cmdline).unwrap();
    }

    #[test]
    fn a_missing_property_says_what_it_means() {
        let error = locate(
            Path::new("/nonexistent/cellvisor,management"),
            Path::new("/nonexistent/cmdline"),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            error,
            "no cellvisor management interface in the device tree nor on the kernel command \
             line (is this the root cell of a cellvisor system?)"
        );
    }
}
