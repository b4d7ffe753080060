//! The arm64 `Image`: its header ([`Image`]) and where a loader puts the kernel, its device
//! tree and its initramfs in a RAM range ([`Image::place`]).
//!
//! Facts from Linux's `Documentation/arch/arm64/booting.rst`:
//!
//! - the 64-byte header: `code0`, `code1`, `text_offset` (bytes 8..16), `image_size`
//!   (16..24), `flags` (24..32), three reserved words, the magic `ARM\x64` (56..60) and the
//!   PE header's offset; little endian;
//! - the kernel goes `text_offset` bytes above a 2 MiB aligned base in RAM, and
//!   `image_size` bytes from there are its own (its `.bss` and early page tables included);
//!   an `image_size` of 0 means a kernel older than 3.17, with `text_offset` 0x80000;
//! - flags bit 0: big-endian kernel; bit 3: the base may be anywhere in RAM (else as near
//!   the start of RAM as possible);
//! - the device tree: 8-byte aligned, at most 2 MiB; the initramfs anywhere in RAM the
//!   kernel does not use;
//! - entry at the kernel's first byte, MMU off, `x0` = the device tree's physical address,
//!   `x1` to `x3` = 0.

use core::fmt;

/// Bytes of the header.
pub const HEADER_SIZE: usize = 64;
/// The header's magic, `ARM\x64` read as a little-endian word.
pub const MAGIC: u32 = 0x644d_5241;
/// The kernel's base alignment.
pub const BASE_ALIGN: u64 = 2 << 20;
/// The largest device tree the kernel maps.
pub const MAX_DTB: u64 = 2 << 20;
/// `text_offset` of a kernel without `image_size` (before 3.17).
const OLD_TEXT_OFFSET: u64 = 0x8_0000;
/// Where the initramfs and the tree start: page boundaries.
const PAGE: u64 = 0x1000;

/// Why an image or a placement was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ImageError {
    /// Fewer bytes than the header.
    TooShort {
        /// Bytes given.
        len: usize,
    },
    /// No `ARM\x64` at byte 56.
    NoMagic {
        /// The word found there.
        found: u32,
    },
    /// A big-endian kernel (flags bit 0).
    BigEndian,
    /// The device tree is larger than 2 MiB.
    TreeTooLarge {
        /// Its size.
        size: u64,
    },
    /// Kernel, tree and initramfs do not fit into the RAM range.
    NoRoom {
        /// What did not fit.
        what: &'static str,
        /// Bytes it needs.
        needs: u64,
    },
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::TooShort { len } => write!(
                f,
                "{len} bytes: shorter than the {HEADER_SIZE}-byte arm64 Image header"
            ),
            Self::NoMagic { found } => write!(
                f,
                "not an arm64 Image: {found:#010x} at byte 56 instead of the magic {MAGIC:#010x} (\"ARM\\x64\")"
            ),
            Self::BigEndian => f.write_str("a big-endian kernel (Image flags bit 0)"),
            Self::TreeTooLarge { size } => write!(
                f,
                "the device tree has {size} bytes, more than the {MAX_DTB} the kernel maps"
            ),
            Self::NoRoom { what, needs } => {
                write!(f, "no room for the {what} ({needs} bytes) in the cell's RAM")
            }
        }
    }
}

impl core::error::Error for ImageError {}

/// The header of an arm64 `Image`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Image {
    /// Where the kernel goes above its 2 MiB aligned base.
    pub text_offset: u64,
    /// Bytes of memory the kernel takes from its start (at least the file's size).
    pub image_size: u64,
    /// The header's flags.
    pub flags: u64,
}

/// Where [`Image::place`] put everything (physical or guest-physical addresses, as the RAM
/// range was given).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Placement {
    /// The kernel's first byte: the entry point.
    pub kernel: u64,
    /// The device tree: `x0` at entry.
    pub tree: u64,
    /// The initramfs, if any: start and size.
    pub initrd: Option<(u64, u64)>,
}

impl Image {
    /// Reads the header at the start of `image` (the whole file, or at least its first
    /// [`HEADER_SIZE`] bytes).
    pub fn parse(image: &[u8]) -> Result<Self, ImageError> {
        let header = image
            .get(..HEADER_SIZE)
            .ok_or(ImageError::TooShort { len: image.len() })?;
        let u64_at = |at: usize| {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(&header[at..at + 8]);
            u64::from_le_bytes(bytes)
        };
        let mut magic = [0; 4];
        magic.copy_from_slice(&header[56..60]);
        let found = u32::from_le_bytes(magic);
        if found != MAGIC {
            return Err(ImageError::NoMagic { found });
        }
        let flags = u64_at(24);
        if flags & 1 != 0 {
            return Err(ImageError::BigEndian);
        }
        let (text_offset, image_size) = match u64_at(16) {
            0 => (OLD_TEXT_OFFSET, image.len() as u64),
            size => (u64_at(8), size.max(image.len() as u64)),
        };
        Ok(Self {
            text_offset,
            image_size,
            flags,
        })
    }

    /// Places the kernel, a device tree of `tree_size` bytes and an initramfs of
    /// `initrd_size` bytes (0: none) in the RAM range `[ram, ram + ram_size)`: the kernel at
    /// the first 2 MiB boundary of the range plus `text_offset`, the tree at the range's
    /// top (page aligned), the initramfs right below it (page aligned), neither touching
    /// the kernel's `image_size` bytes.
    pub fn place(
        &self,
        (ram, ram_size): (u64, u64),
        tree_size: u64,
        initrd_size: u64,
    ) -> Result<Placement, ImageError> {
        if tree_size > MAX_DTB {
            return Err(ImageError::TreeTooLarge { size: tree_size });
        }
        let end = ram.saturating_add(ram_size);
        let no_room = |what, needs| ImageError::NoRoom { what, needs };
        let kernel = ram
            .checked_next_multiple_of(BASE_ALIGN)
            .and_then(|base| base.checked_add(self.text_offset))
            .filter(|kernel| kernel.saturating_add(self.image_size) <= end)
            .ok_or(no_room("kernel", self.image_size))?;
        let kernel_end = kernel + self.image_size;
        let tree = end
            .checked_sub(tree_size)
            .map(|at| at / PAGE * PAGE)
            .filter(|&at| at >= kernel_end)
            .ok_or(no_room("device tree", tree_size))?;
        let initrd = match initrd_size {
            0 => None,
            size => Some(
                tree.checked_sub(size)
                    .map(|at| (at / PAGE * PAGE, size))
                    .filter(|&(at, _)| at >= kernel_end)
                    .ok_or(no_room("initramfs", size))?,
            ),
        };
        Ok(Placement {
            kernel,
            tree,
            initrd,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header as Debian's arm64 kernels have it: text_offset 0, 40 MiB image size, flags
    /// 0xa (4 KiB pages, anywhere in RAM).
    fn header(text_offset: u64, image_size: u64, flags: u64) -> [u8; HEADER_SIZE] {
        let mut h = [0u8; HEADER_SIZE];
        h[0..4].copy_from_slice(&0x9100_0000u32.to_le_bytes());
        h[8..16].copy_from_slice(&text_offset.to_le_bytes());
        h[16..24].copy_from_slice(&image_size.to_le_bytes());
        h[24..32].copy_from_slice(&flags.to_le_bytes());
        h[56..60].copy_from_slice(&MAGIC.to_le_bytes());
        h
    }

    #[test]
    fn reads_the_header() {
        let image = Image::parse(&header(0, 40 << 20, 0xa)).unwrap();
        assert_eq!(
            image,
            Image {
                text_offset: 0,
                image_size: 40 << 20,
                flags: 0xa
            }
        );
        // Before 3.17: no image size, text offset 0x80000, the file's size.
        let old = Image::parse(&header(0x1234, 0, 0)).unwrap();
        assert_eq!((old.text_offset, old.image_size), (0x8_0000, 64));
    }

    #[test]
    fn refuses_what_is_no_arm64_image() {
        assert_eq!(
            Image::parse(&[0; 10]),
            Err(ImageError::TooShort { len: 10 })
        );
        let mut bad = header(0, 1 << 20, 0);
        bad[56] = b'X';
        let error = Image::parse(&bad).unwrap_err();
        assert_eq!(error, ImageError::NoMagic { found: 0x644d_5258 });
        assert!(error.to_string().contains("not an arm64 Image"), "{error}");
        assert_eq!(
            Image::parse(&header(0, 1 << 20, 1)),
            Err(ImageError::BigEndian)
        );
    }

    #[test]
    fn places_kernel_tree_and_initrd() {
        let image = Image::parse(&header(0x8_0000, 30 << 20, 0xa)).unwrap();
        // 128 MiB of RAM at 0x7000_0000 + 1 MiB (not 2 MiB aligned).
        let ram = (0x7010_0000, 127 << 20);
        let placed = image.place(ram, 0x2345, 10 << 20).unwrap();
        assert_eq!(placed.kernel, 0x7020_0000 + 0x8_0000);
        assert_eq!(placed.tree, 0x7800_0000 - 0x3000);
        assert_eq!(
            placed.initrd,
            Some((0x7800_0000 - 0x3000 - (10 << 20), 10 << 20))
        );
        assert_eq!(placed.tree % 8, 0);
        // Without an initramfs.
        assert_eq!(image.place(ram, 0x100, 0).unwrap().initrd, None);
    }

    #[test]
    fn refuses_what_does_not_fit() {
        let image = Image::parse(&header(0, 30 << 20, 0xa)).unwrap();
        let error = image.place((0x4000_0000, 16 << 20), 0x1000, 0).unwrap_err();
        assert_eq!(
            error,
            ImageError::NoRoom {
                what: "kernel",
                needs: 30 << 20
            }
        );
        assert_eq!(
            error.to_string(),
            "no room for the kernel (31457280 bytes) in the cell's RAM"
        );
        assert_eq!(
            image.place((0x4000_0000, 32 << 20), 3 << 20, 0),
            Err(ImageError::TreeTooLarge { size: 3 << 20 })
        );
        assert_eq!(
            image.place((0x4000_0000, (30 << 20) + 0x8_0000), 1 << 20, 0),
            Err(ImageError::NoRoom {
                what: "device tree",
                needs: 1 << 20
            })
        );
        assert_eq!(
            image.place((0x4000_0000, 64 << 20), 0x1000, 40 << 20),
            Err(ImageError::NoRoom {
                what: "initramfs",
                needs: 40 << 20
            })
        );
        // A range at the top of the address space does not wrap.
        assert!(image
            .place((u64::MAX - 0x1000, 64 << 20), 0x1000, 0)
            .is_err());
    }
}
