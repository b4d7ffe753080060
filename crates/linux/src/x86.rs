//! The x86 boot protocol (Linux's `Documentation/arch/x86/boot.rst`): a bzImage's setup
//! header ([`BzImage`]), where its protected-mode kernel may go ([`BzImage::place`]), and the
//! zero page ([`BootParams`]) a loader hands to the 32-bit or 64-bit entry point.
//!
//! A loader that enters at the 32-bit entry point copies [`BzImage::kernel`] to the address
//! [`BzImage::place`] gives, writes a [`BootParams`] and a command line into memory the kernel
//! may read, and jumps to the kernel's first byte in flat 32-bit protected mode with paging
//! off, interrupts disabled, `CS` = [`BOOT_CS`], the data segments [`BOOT_DS`], `ESI` = the
//! zero page and `EBP`, `EDI`, `EBX` zero.

use core::fmt;

use crate::memory_map::{Kind, MemoryMap};

/// The code segment selector the 32-bit entry expects (4 GiB flat, execute/read).
pub const BOOT_CS: u16 = 0x10;
/// The data segment selector the 32-bit entry expects (4 GiB flat, read/write).
pub const BOOT_DS: u16 = 0x18;
/// The lowest protocol version taken: 2.12 (Linux 3.8), the first with `xloadflags`.
pub const MIN_VERSION: u16 = 0x020c;
/// The size of the zero page.
pub const ZERO_PAGE_SIZE: usize = 4096;

/// Offsets in the image and in the zero page (the setup header is at the same offsets in
/// both).
mod at {
    pub const SETUP_SECTS: usize = 0x1f1;
    pub const SYSSIZE: usize = 0x1f4;
    pub const BOOT_FLAG: usize = 0x1fe;
    pub const JUMP: usize = 0x200;
    pub const HEADER: usize = 0x202;
    pub const VERSION: usize = 0x206;
    pub const TYPE_OF_LOADER: usize = 0x210;
    pub const LOADFLAGS: usize = 0x211;
    pub const CODE32_START: usize = 0x214;
    pub const RAMDISK_IMAGE: usize = 0x218;
    pub const RAMDISK_SIZE: usize = 0x21c;
    pub const CMD_LINE_PTR: usize = 0x228;
    pub const INITRD_ADDR_MAX: usize = 0x22c;
    pub const KERNEL_ALIGNMENT: usize = 0x230;
    pub const RELOCATABLE_KERNEL: usize = 0x234;
    pub const XLOADFLAGS: usize = 0x236;
    pub const CMDLINE_SIZE: usize = 0x238;
    pub const PREF_ADDRESS: usize = 0x258;
    pub const INIT_SIZE: usize = 0x260;
    /// The end of the fields up to `init_size`: what an image of protocol 2.12 or later has.
    pub const FIELDS_END: usize = 0x264;
    // Zero page only.
    pub const ACPI_RSDP_ADDR: usize = 0x070;
    pub const EXT_RAMDISK_IMAGE: usize = 0x0c0;
    pub const EXT_RAMDISK_SIZE: usize = 0x0c4;
    pub const EXT_CMD_LINE_PTR: usize = 0x0c8;
    pub const E820_ENTRIES: usize = 0x1e8;
    pub const SENTINEL: usize = 0x1ef;
    pub const E820_TABLE: usize = 0x2d0;
}

/// `loadflags` bit 0: the protected-mode kernel is loaded high (a bzImage).
const LOADED_HIGH: u8 = 1 << 0;
/// `xloadflags` bit 0: the kernel has a 64-bit entry point.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// `xloadflags` bit 1: kernel, zero page, command line and initrd may be above 4 GiB.
pub const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 1 << 1;
/// `type_of_loader` 0xff: a loader without an assigned ID.
const UNDEFINED_LOADER: u8 = 0xff;
/// An e820 entry in the zero page: address (u64), size (u64), type (u32).
const E820_ENTRY_SIZE: usize = 20;

/// Why an image is not a bzImage this loader can start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageError {
    /// The file ends before the setup header does.
    TooShort {
        /// Its length.
        len: usize,
    },
    /// No 0xAA55 at byte 0x1fe.
    NoBootFlag,
    /// No "HdrS" at byte 0x202.
    NoHeader,
    /// The protocol is older than [`MIN_VERSION`].
    OldProtocol {
        /// The image's version (major in the high byte).
        version: u16,
    },
    /// `loadflags` says the kernel is loaded low (a zImage).
    NotBzImage,
    /// The setup code (`setup_sects`) runs past the end of the file, or no kernel follows it.
    SetupPastEnd {
        /// Where the protected-mode kernel would start.
        kernel_offset: usize,
        /// The file's length.
        len: usize,
    },
    /// `kernel_alignment` of a relocatable kernel is not a power of two.
    BadAlignment {
        /// The field.
        alignment: u32,
    },
    /// `init_size` is smaller than the protected-mode kernel.
    InitSizeTooSmall {
        /// The field.
        init_size: u32,
        /// The kernel's length.
        kernel: usize,
    },
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort { len } => write!(
                f,
                "{len} bytes is too short for an x86 Linux image (its setup header ends at byte {:#x})",
                at::FIELDS_END
            ),
            Self::NoBootFlag => f.write_str("no boot flag 0xaa55 at byte 0x1fe: not an x86 Linux image"),
            Self::NoHeader => f.write_str("no \"HdrS\" at byte 0x202: not an x86 Linux image of boot protocol 2.0 or later"),
            Self::OldProtocol { version } => write!(
                f,
                "boot protocol {}.{:02} is older than 2.12 (Linux 3.8)",
                version >> 8,
                version & 0xff
            ),
            Self::NotBzImage => f.write_str("a zImage (loadflags bit 0 clear): only bzImages are taken"),
            Self::SetupPastEnd { kernel_offset, len } => write!(
                f,
                "the setup code ends at byte {kernel_offset:#x}, but the file has {len} bytes: no kernel follows it"
            ),
            Self::BadAlignment { alignment } => write!(
                f,
                "kernel_alignment {alignment:#x} is not a power of two"
            ),
            Self::InitSizeTooSmall { init_size, kernel } => write!(
                f,
                "init_size {init_size:#x} is smaller than the {kernel:#x}-byte protected-mode kernel"
            ),
        }
    }
}

impl core::error::Error for ImageError {}

/// A checked bzImage: its setup header's fields and its protected-mode kernel.
#[derive(Clone, Copy)]
pub struct BzImage<'a> {
    image: &'a [u8],
    kernel_offset: usize,
    header_end: usize,
}

impl fmt::Debug for BzImage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BzImage")
            .field("version", &format_args!("{:#06x}", self.version()))
            .field("kernel_offset", &format_args!("{:#x}", self.kernel_offset))
            .field("kernel_len", &format_args!("{:#x}", self.kernel().len()))
            .field("init_size", &format_args!("{:#x}", self.init_size()))
            .field("pref_address", &format_args!("{:#x}", self.pref_address()))
            .field("alignment", &format_args!("{:#x}", self.alignment()))
            .field("relocatable", &self.relocatable())
            .field("xloadflags", &format_args!("{:#x}", self.xloadflags()))
            .finish()
    }
}

fn u16_at(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes([bytes[offset], bytes[offset + 1]])
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    let mut value = [0; 4];
    value.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(value)
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    let mut value = [0; 8];
    value.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(value)
}

impl<'a> BzImage<'a> {
    /// Checks `image` (a whole bzImage file, e.g. Debian's `vmlinuz`).
    pub fn parse(image: &'a [u8]) -> Result<Self, ImageError> {
        if image.len() < at::FIELDS_END {
            return Err(ImageError::TooShort { len: image.len() });
        }
        if u16_at(image, at::BOOT_FLAG) != 0xaa55 {
            return Err(ImageError::NoBootFlag);
        }
        if &image[at::HEADER..at::HEADER + 4] != b"HdrS" {
            return Err(ImageError::NoHeader);
        }
        let version = u16_at(image, at::VERSION);
        if version < MIN_VERSION {
            return Err(ImageError::OldProtocol { version });
        }
        if image[at::LOADFLAGS] & LOADED_HIGH == 0 {
            return Err(ImageError::NotBzImage);
        }
        // The header runs to the target of the two-byte jump at 0x200 (the protocol's way of
        // saying how long it is), at least to the fields read here, at most to the zero
        // page's e820 table.
        let header_end = (at::HEADER + usize::from(image[at::JUMP + 1]))
            .clamp(at::FIELDS_END, at::E820_TABLE)
            .min(image.len());
        let setup_sects = match image[at::SETUP_SECTS] {
            0 => 4,
            n => usize::from(n),
        };
        let kernel_offset = (setup_sects + 1) * 512;
        if kernel_offset >= image.len() {
            return Err(ImageError::SetupPastEnd {
                kernel_offset,
                len: image.len(),
            });
        }
        let parsed = Self {
            image,
            kernel_offset,
            header_end,
        };
        if parsed.relocatable() && !parsed.alignment().is_power_of_two() {
            return Err(ImageError::BadAlignment {
                alignment: u32_at(image, at::KERNEL_ALIGNMENT),
            });
        }
        if parsed.init_size() < parsed.kernel().len() as u64 {
            return Err(ImageError::InitSizeTooSmall {
                init_size: u32_at(image, at::INIT_SIZE),
                kernel: parsed.kernel().len(),
            });
        }
        Ok(parsed)
    }

    /// The protocol version (major in the high byte: 0x020f is 2.15).
    pub fn version(&self) -> u16 {
        u16_at(self.image, at::VERSION)
    }

    /// The protected-mode kernel: what goes to the load address.
    pub fn kernel(&self) -> &'a [u8] {
        &self.image[self.kernel_offset..]
    }

    /// Where the protected-mode kernel starts in the file.
    pub fn kernel_offset(&self) -> usize {
        self.kernel_offset
    }

    /// `syssize`: the protected-mode kernel's size as the header gives it, in bytes.
    pub fn syssize(&self) -> u64 {
        u64::from(u32_at(self.image, at::SYSSIZE)) * 16
    }

    /// `init_size`: how much memory from the load address the kernel needs before it has
    /// decompressed and set itself up.
    pub fn init_size(&self) -> u64 {
        u64::from(u32_at(self.image, at::INIT_SIZE))
    }

    /// `pref_address`: where the kernel prefers to be loaded (for a relocatable kernel, the
    /// lowest address it decompresses to).
    pub fn pref_address(&self) -> u64 {
        u64_at(self.image, at::PREF_ADDRESS)
    }

    /// Whether the kernel may be loaded at any [`alignment`](Self::alignment)-aligned address.
    pub fn relocatable(&self) -> bool {
        self.image[at::RELOCATABLE_KERNEL] != 0
    }

    /// The load address's alignment for a relocatable kernel.
    pub fn alignment(&self) -> u64 {
        u64::from(u32_at(self.image, at::KERNEL_ALIGNMENT))
    }

    /// `xloadflags` ([`XLF_KERNEL_64`], [`XLF_CAN_BE_LOADED_ABOVE_4G`], ...).
    pub fn xloadflags(&self) -> u16 {
        u16_at(self.image, at::XLOADFLAGS)
    }

    /// The longest command line the kernel takes, without its terminating zero.
    pub fn cmdline_size(&self) -> u32 {
        u32_at(self.image, at::CMDLINE_SIZE)
    }

    /// The highest address the initrd's last byte may have.
    pub fn initrd_addr_max(&self) -> u64 {
        if self.xloadflags() & XLF_CAN_BE_LOADED_ABOVE_4G != 0 {
            u64::MAX
        } else {
            u64::from(u32_at(self.image, at::INITRD_ADDR_MAX))
        }
    }

    /// Where the protected-mode kernel may go: the lowest address at or above its preferred
    /// one (aligned, if it is relocatable) from which [`init_size`](Self::init_size) bytes are
    /// [`Kind::Ram`] in `map` and meet none of `avoid` (`(start, size)` pairs: the zero page,
    /// the command line, the initrd, the image being copied from). A kernel that is not
    /// relocatable goes to its preferred address or nowhere.
    pub fn place(&self, map: &MemoryMap, avoid: &[(u64, u64)]) -> Result<u64, PlaceError> {
        let size = self.init_size();
        let fits = |at: u64| {
            map.is_all(at, size, Kind::Ram)
                && avoid.iter().all(|&(start, len)| {
                    len == 0 || start.saturating_add(len) <= at || at.saturating_add(size) <= start
                })
        };
        let preferred = self.pref_address();
        if !self.relocatable() {
            return if fits(preferred) {
                Ok(preferred)
            } else {
                Err(PlaceError { size })
            };
        }
        let align = self.alignment();
        for range in map.ranges().iter().filter(|r| r.kind == Kind::Ram) {
            let mut at = align_up(range.start.max(preferred), align);
            while let Some(end) = at.checked_add(size) {
                if end > range.end() {
                    break;
                }
                if fits(at) {
                    return Ok(at);
                }
                // Past the first obstacle that overlaps.
                let past = avoid
                    .iter()
                    .filter(|&&(start, len)| {
                        len != 0 && start < end && start.saturating_add(len) > at
                    })
                    .map(|&(start, len)| start.saturating_add(len))
                    .max()
                    .unwrap_or(end);
                at = align_up(past, align);
            }
        }
        Err(PlaceError { size })
    }

    /// The setup header as the file has it, to be copied into the zero page at 0x1f1.
    fn header(&self) -> &'a [u8] {
        &self.image[at::SETUP_SECTS..self.header_end]
    }
}

/// Rounds up to a power of two (saturating at the top, where nothing fits anyway).
fn align_up(value: u64, align: u64) -> u64 {
    let mask = align.max(1) - 1;
    value.checked_add(mask).map_or(!mask, |v| v & !mask)
}

/// No room for the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlaceError {
    /// The bytes it needs (`init_size`).
    pub size: u64,
}

impl fmt::Display for PlaceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no RAM for the kernel: it needs {:#x} bytes at or above its preferred address, aligned, clear of the zero page, command line and initrd",
            self.size
        )
    }
}

impl core::error::Error for PlaceError {}

/// Why a zero page cannot describe something.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamsError {
    /// The command line is longer than the kernel's `cmdline_size`.
    CmdlineTooLong {
        /// Its length without the terminating zero.
        len: usize,
        /// The kernel's limit.
        max: u32,
    },
    /// An address the kernel would read above 4 GiB, and it cannot take that.
    Above4G {
        /// What it is.
        what: &'static str,
        /// The address.
        address: u64,
    },
    /// The initrd ends above the kernel's `initrd_addr_max`.
    InitrdTooHigh {
        /// Its last byte.
        last: u64,
        /// The kernel's limit.
        max: u64,
    },
}

impl fmt::Display for ParamsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CmdlineTooLong { len, max } => write!(
                f,
                "the command line has {len} bytes, the kernel takes at most {max}"
            ),
            Self::Above4G { what, address } => write!(
                f,
                "the {what} at {address:#x} is above 4 GiB, and the kernel cannot take that (xloadflags)"
            ),
            Self::InitrdTooHigh { last, max } => write!(
                f,
                "the initrd ends at {last:#x}, above the kernel's initrd_addr_max {max:#x}"
            ),
        }
    }
}

impl core::error::Error for ParamsError {}

/// The zero page (`struct boot_params`): the setup header of the image with the loader's
/// fields filled in, and the e820 memory map.
#[derive(Clone)]
pub struct BootParams {
    page: [u8; ZERO_PAGE_SIZE],
    above_4g: bool,
    cmdline_size: u32,
    initrd_addr_max: u64,
}

impl fmt::Debug for BootParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootParams")
            .field("e820_entries", &self.page[at::E820_ENTRIES])
            .field("cmd_line_ptr", &format_args!("{:#x}", self.cmdline()))
            .finish_non_exhaustive()
    }
}

impl BootParams {
    /// A zero page for `image`: zeroes, the image's setup header, and this loader's
    /// `type_of_loader`.
    pub fn new(image: &BzImage<'_>) -> Self {
        let mut page = [0; ZERO_PAGE_SIZE];
        let header = image.header();
        page[at::SETUP_SECTS..at::SETUP_SECTS + header.len()].copy_from_slice(header);
        page[at::TYPE_OF_LOADER] = UNDEFINED_LOADER;
        page[at::SENTINEL] = 0;
        Self {
            page,
            above_4g: image.xloadflags() & XLF_CAN_BE_LOADED_ABOVE_4G != 0,
            cmdline_size: image.cmdline_size(),
            initrd_addr_max: image.initrd_addr_max(),
        }
    }

    fn put_u32(&mut self, offset: usize, value: u32) {
        self.page[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }

    fn put_u64(&mut self, offset: usize, value: u64) {
        self.page[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
    }

    /// Splits an address into the low field and the `ext_` field, if the kernel takes it.
    fn split(&self, what: &'static str, address: u64) -> Result<(u32, u32), ParamsError> {
        if address >> 32 != 0 && !self.above_4g {
            return Err(ParamsError::Above4G { what, address });
        }
        Ok((address as u32, (address >> 32) as u32))
    }

    /// Where the kernel was loaded (`code32_start`).
    pub fn set_load_address(&mut self, address: u32) {
        self.put_u32(at::CODE32_START, address);
    }

    /// The command line of `len` bytes (without its terminating zero) at `address`.
    pub fn set_cmdline(&mut self, address: u64, len: usize) -> Result<(), ParamsError> {
        if len > self.cmdline_size as usize {
            return Err(ParamsError::CmdlineTooLong {
                len,
                max: self.cmdline_size,
            });
        }
        let (low, high) = self.split("command line", address)?;
        self.put_u32(at::CMD_LINE_PTR, low);
        self.put_u32(at::EXT_CMD_LINE_PTR, high);
        Ok(())
    }

    /// The command line's address.
    pub fn cmdline(&self) -> u64 {
        u64::from(u32_at(&self.page, at::CMD_LINE_PTR))
            | u64::from(u32_at(&self.page, at::EXT_CMD_LINE_PTR)) << 32
    }

    /// The initrd: `size` bytes at `address`.
    pub fn set_initrd(&mut self, address: u64, size: u64) -> Result<(), ParamsError> {
        if size == 0 {
            return Ok(());
        }
        let last = address.saturating_add(size - 1);
        if last > self.initrd_addr_max {
            return Err(ParamsError::InitrdTooHigh {
                last,
                max: self.initrd_addr_max,
            });
        }
        let (low, high) = self.split("initrd", address)?;
        let (size_low, size_high) = (size as u32, (size >> 32) as u32);
        self.put_u32(at::RAMDISK_IMAGE, low);
        self.put_u32(at::EXT_RAMDISK_IMAGE, high);
        self.put_u32(at::RAMDISK_SIZE, size_low);
        self.put_u32(at::EXT_RAMDISK_SIZE, size_high);
        Ok(())
    }

    /// Where the ACPI RSDP is, for kernels that should not search for it (protocol 2.14).
    pub fn set_acpi_rsdp(&mut self, address: u64) {
        self.put_u64(at::ACPI_RSDP_ADDR, address);
    }

    /// The e820 table: every range of `map`, in order.
    pub fn set_memory_map(&mut self, map: &MemoryMap) {
        let ranges = map.ranges();
        // MemoryMap holds at most as many ranges as the table.
        self.page[at::E820_ENTRIES] = ranges.len() as u8;
        for (i, range) in ranges.iter().enumerate() {
            let entry = at::E820_TABLE + i * E820_ENTRY_SIZE;
            self.put_u64(entry, range.start);
            self.put_u64(entry + 8, range.size);
            self.put_u32(entry + 16, range.kind.type_number());
        }
    }

    /// The page, to be written where the kernel can read it.
    pub fn as_bytes(&self) -> &[u8; ZERO_PAGE_SIZE] {
        &self.page
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory_map::MAX_RANGES;

    /// A bzImage header as Debian's 6.1 amd64 kernel has it, with a kernel of `kernel` bytes.
    pub(crate) fn image(kernel: usize) -> std::vec::Vec<u8> {
        let setup_sects = 27;
        let mut image = vec![0u8; (setup_sects + 1) * 512 + kernel];
        image[at::SETUP_SECTS] = setup_sects as u8;
        image[at::SYSSIZE..at::SYSSIZE + 4].copy_from_slice(&((kernel as u32) / 16).to_le_bytes());
        image[at::BOOT_FLAG..at::BOOT_FLAG + 2].copy_from_slice(&0xaa55u16.to_le_bytes());
        image[at::JUMP] = 0xeb;
        image[at::JUMP + 1] = 0x6a; // header up to 0x26c
        image[at::HEADER..at::HEADER + 4].copy_from_slice(b"HdrS");
        image[at::VERSION..at::VERSION + 2].copy_from_slice(&0x020fu16.to_le_bytes());
        image[at::LOADFLAGS] = LOADED_HIGH;
        image[at::CODE32_START..at::CODE32_START + 4].copy_from_slice(&0x10_0000u32.to_le_bytes());
        image[at::INITRD_ADDR_MAX..at::INITRD_ADDR_MAX + 4]
            .copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        image[at::KERNEL_ALIGNMENT..at::KERNEL_ALIGNMENT + 4]
            .copy_from_slice(&0x20_0000u32.to_le_bytes());
        image[at::RELOCATABLE_KERNEL] = 1;
        image[at::XLOADFLAGS..at::XLOADFLAGS + 2].copy_from_slice(&0x7fu16.to_le_bytes());
        image[at::CMDLINE_SIZE..at::CMDLINE_SIZE + 4].copy_from_slice(&2047u32.to_le_bytes());
        image[at::PREF_ADDRESS..at::PREF_ADDRESS + 8].copy_from_slice(&0x100_0000u64.to_le_bytes());
        image[at::INIT_SIZE..at::INIT_SIZE + 4].copy_from_slice(&0x300_0000u32.to_le_bytes());
        image[(setup_sects + 1) * 512] = 0xfc; // cld, the first byte of startup_32
        image
    }

    #[test]
    fn a_debian_like_image() {
        let data = image(0x80_0000);
        let bz = BzImage::parse(&data).unwrap();
        assert_eq!(bz.version(), 0x020f);
        assert_eq!(bz.kernel_offset(), 28 * 512);
        assert_eq!(bz.kernel().len(), 0x80_0000);
        assert_eq!(bz.kernel()[0], 0xfc);
        assert_eq!(bz.syssize(), 0x80_0000);
        assert_eq!(bz.init_size(), 0x300_0000);
        assert_eq!(bz.pref_address(), 0x100_0000);
        assert_eq!(bz.alignment(), 0x20_0000);
        assert!(bz.relocatable());
        assert_eq!(bz.cmdline_size(), 2047);
        assert_eq!(bz.initrd_addr_max(), u64::MAX);
        assert_eq!(bz.header().len(), 0x26c - 0x1f1);
    }

    #[test]
    fn each_bad_header_is_named() {
        let good = image(0x1000);
        let broken = |change: &dyn Fn(&mut std::vec::Vec<u8>)| {
            let mut data = good.clone();
            change(&mut data);
            BzImage::parse(&data).map(|_| ()).unwrap_err()
        };
        assert_eq!(
            BzImage::parse(&good[..0x200]).unwrap_err(),
            ImageError::TooShort { len: 0x200 }
        );
        assert_eq!(broken(&|d| d[0x1fe] = 0), ImageError::NoBootFlag);
        assert_eq!(broken(&|d| d[0x205] = b'Z'), ImageError::NoHeader);
        assert_eq!(
            broken(&|d| d[0x206] = 0x0b),
            ImageError::OldProtocol { version: 0x020b }
        );
        assert_eq!(broken(&|d| d[0x211] = 0), ImageError::NotBzImage);
        assert_eq!(
            broken(&|d| d[0x1f1] = 200),
            ImageError::SetupPastEnd {
                kernel_offset: 201 * 512,
                len: good.len()
            }
        );
        assert_eq!(
            broken(&|d| d[0x230] = 3),
            ImageError::BadAlignment {
                alignment: 0x20_0003
            }
        );
        assert_eq!(
            broken(&|d| d[0x260..0x264].copy_from_slice(&0x800u32.to_le_bytes())),
            ImageError::InitSizeTooSmall {
                init_size: 0x800,
                kernel: 0x1000
            }
        );
        assert_eq!(
            ImageError::OldProtocol { version: 0x020b }.to_string(),
            "boot protocol 2.11 is older than 2.12 (Linux 3.8)"
        );
        // setup_sects 0 means 4.
        let mut data = good.clone();
        data[0x1f1] = 0;
        assert_eq!(BzImage::parse(&data).unwrap().kernel_offset(), 5 * 512);
    }

    fn q35_with_hypervisor() -> MemoryMap {
        let mut map = MemoryMap::new();
        map.set(0, 0x9fc00, Kind::Ram).unwrap();
        map.set(0x10_0000, 0x7fe0_0000, Kind::Ram).unwrap();
        // The hypervisor at 16 MiB, 8 MiB.
        map.set(0x100_0000, 0x80_0000, Kind::Reserved).unwrap();
        map
    }

    #[test]
    fn placement_avoids_the_hypervisor_and_the_loaders_data() {
        let data = image(0x80_0000);
        let bz = BzImage::parse(&data).unwrap();
        let map = q35_with_hypervisor();
        // Above the hypervisor, 2 MiB aligned.
        assert_eq!(bz.place(&map, &[]), Ok(0x180_0000));
        // The modules right after it: past them, aligned.
        let modules = [(0x180_0000, 0x90_0000), (0x210_0000, 0x1_0000), (0, 0)];
        assert_eq!(bz.place(&map, &modules), Ok(0x220_0000));
        // Not enough RAM anywhere.
        let mut small = MemoryMap::new();
        small.set(0x100_0000, 0x2ff_f000, Kind::Ram).unwrap();
        assert_eq!(bz.place(&small, &[]), Err(PlaceError { size: 0x300_0000 }));
        // A kernel that is not relocatable goes to its preferred address only.
        let mut fixed = data.clone();
        fixed[0x234] = 0;
        let fixed = BzImage::parse(&fixed).unwrap();
        assert_eq!(fixed.place(&map, &[]), Err(PlaceError { size: 0x300_0000 }));
        let mut free = map.clone();
        free.set(0x100_0000, 0x80_0000, Kind::Ram).unwrap();
        assert_eq!(fixed.place(&free, &[]), Ok(0x100_0000));
        assert_eq!(
            fixed.place(&free, &[(0x3ff_f000, 0x1000)]),
            Err(PlaceError { size: 0x300_0000 })
        );
    }

    fn u32_of(page: &[u8], offset: usize) -> u32 {
        u32_at(page, offset)
    }

    #[test]
    fn the_zero_page() {
        let data = image(0x1000);
        let bz = BzImage::parse(&data).unwrap();
        let mut params = BootParams::new(&bz);
        let map = q35_with_hypervisor();
        params.set_memory_map(&map);
        params.set_load_address(0x180_0000);
        params.set_cmdline(0x7000, 20).unwrap();
        params.set_initrd(0x1_2000_0000, 0x10_0000).unwrap();
        params.set_acpi_rsdp(0xf5a40);
        let page = params.as_bytes();
        // The header is the image's, with the loader's fields.
        assert_eq!(&page[0x202..0x206], b"HdrS");
        assert_eq!(page[0x1f1], 27);
        assert_eq!(page[0x210], 0xff);
        assert_eq!(u32_of(page, 0x214), 0x180_0000);
        assert_eq!(u32_of(page, 0x228), 0x7000);
        assert_eq!(u32_of(page, 0x0c8), 0);
        assert_eq!(params.cmdline(), 0x7000);
        assert_eq!(u32_of(page, 0x218), 0x2000_0000);
        assert_eq!(u32_of(page, 0x0c0), 1);
        assert_eq!(u32_of(page, 0x21c), 0x10_0000);
        assert_eq!(u32_of(page, 0x0c4), 0);
        assert_eq!(u64_at(page, 0x070), 0xf5a40);
        // Only what the header covers is copied: bytes past 0x26c stay zero.
        assert!(page[0x26c..0x2d0].iter().all(|&b| b == 0));
        // The e820 table.
        assert_eq!(page[0x1e8] as usize, map.ranges().len());
        assert_eq!(page[0x1e8], 4);
        for (i, range) in map.ranges().iter().enumerate() {
            let entry = 0x2d0 + i * 20;
            assert_eq!(u64_at(page, entry), range.start);
            assert_eq!(u64_at(page, entry + 8), range.size);
            assert_eq!(u32_of(page, entry + 16), range.kind.type_number());
        }
        assert_eq!(u64_at(page, 0x2d0 + 20), 0x10_0000);
        assert_eq!(u64_at(page, 0x2d0 + 28), 0xf0_0000);
        assert_eq!(u32_of(page, 0x2d0 + 40 + 16), 2);
        // A full map fits the table.
        let mut full = MemoryMap::new();
        for i in 0..MAX_RANGES as u64 {
            full.set(i * 0x2000, 0x1000, Kind::Ram).unwrap();
        }
        params.set_memory_map(&full);
        assert_eq!(params.as_bytes()[0x1e8], 128);
        assert_eq!(u64_at(params.as_bytes(), 0x2d0 + 127 * 20), 127 * 0x2000);
    }

    #[test]
    fn what_the_kernel_cannot_take_is_refused() {
        let mut data = image(0x1000);
        // An older kernel: nothing above 4 GiB, the initrd below 2 GiB.
        data[0x236] = XLF_KERNEL_64 as u8;
        let bz = BzImage::parse(&data).unwrap();
        let mut params = BootParams::new(&bz);
        let before = params.as_bytes().to_vec();
        assert_eq!(
            params.set_cmdline(0x1_0000_0000, 10),
            Err(ParamsError::Above4G {
                what: "command line",
                address: 0x1_0000_0000
            })
        );
        assert_eq!(
            params.set_cmdline(0x7000, 2048),
            Err(ParamsError::CmdlineTooLong {
                len: 2048,
                max: 2047
            })
        );
        assert_eq!(
            params.set_initrd(0x7ff0_0000, 0x10_0001),
            Err(ParamsError::InitrdTooHigh {
                last: 0x8000_0000,
                max: 0x7fff_ffff
            })
        );
        assert_eq!(params.as_bytes().as_slice(), before.as_slice());
        params.set_initrd(0x7ff0_0000, 0x10_0000).unwrap();
        assert_eq!(
            ParamsError::InitrdTooHigh {
                last: 0x8000_0000,
                max: 0x7fff_ffff
            }
            .to_string(),
            "the initrd ends at 0x80000000, above the kernel's initrd_addr_max 0x7fffffff"
        );
    }
}
