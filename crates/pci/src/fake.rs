//! An in-memory configuration space for host tests: [`FakeConfigSpace`].

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

use cellvisor_config::Bdf;

use crate::emulation::ConfigSpace;

/// One function's 4 KiB and what its BARs decode.
#[derive(Clone, Debug)]
struct Function {
    bytes: Vec<u8>,
    /// Each BAR's writable bits (0: not implemented), index 6 the expansion ROM.
    bar_masks: [u32; 7],
    /// Where capabilities start: their ID and next pointer are read-only.
    capabilities: Vec<u16>,
}

impl Function {
    /// Whether the byte at `reg` is read-only: IDs, revision and class, header type, the
    /// capability pointer, capability headers.
    fn read_only(&self, reg: u16) -> bool {
        reg < 0x04
            || (0x08..0x0c).contains(&reg)
            || reg == 0x0e
            || reg == 0x34
            || self.capabilities.iter().any(|&c| (c..c + 2).contains(&reg))
    }
}

/// Functions with their configuration space in memory: absent ones read as all ones; BARs
/// keep their type bits and decode only their size's address bits, as hardware does.
#[derive(Clone, Debug, Default)]
pub struct FakeConfigSpace {
    functions: BTreeMap<u16, Function>,
}

impl FakeConfigSpace {
    /// No functions.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an endpoint with `vendor`, `device` and memory BARs of the given writable masks
    /// (`0xfff0_0000`: 1 MiB, 32-bit, non-prefetchable).
    pub fn add_function(&mut self, bdf: Bdf, vendor: u16, device: u16, bars: &[u32]) {
        let mut bytes = vec![0u8; 4096];
        bytes[0..2].copy_from_slice(&vendor.to_le_bytes());
        bytes[2..4].copy_from_slice(&device.to_le_bytes());
        let mut bar_masks = [0; 7];
        for (mask, bar) in bar_masks.iter_mut().zip(bars) {
            *mask = *bar;
        }
        self.functions.insert(
            bdf.0,
            Function {
                bytes,
                bar_masks,
                capabilities: Vec::new(),
            },
        );
    }

    /// Adds a PCI-to-PCI bridge (header type 1).
    pub fn add_bridge(&mut self, bdf: Bdf, vendor: u16, device: u16) {
        self.add_function(bdf, vendor, device, &[]);
        self.set(bdf, 0x0e, 1, 1);
    }

    /// Adds an MSI capability (64-bit addresses) at `at` (0x40 or above) and links it first
    /// into the capability list.
    pub fn add_msi(&mut self, bdf: Bdf, at: u16) {
        let next = self.get(bdf, 0x34, 1);
        self.set(bdf, at, 4, (1 << 7) << 16 | next << 8 | 0x05);
        self.set(bdf, 0x34, 1, u32::from(at));
        let status = self.get(bdf, 0x06, 2);
        self.set(bdf, 0x06, 2, status | 1 << 4);
        if let Some(f) = self.functions.get_mut(&bdf.0) {
            f.capabilities.push(at);
        }
    }

    /// The bytes at `reg`, little endian, bypassing the BAR semantics.
    pub fn get(&self, bdf: Bdf, reg: u16, size: u8) -> u32 {
        let absent = if size >= 4 {
            u32::MAX
        } else {
            (1 << (8 * u32::from(size))) - 1
        };
        self.functions.get(&bdf.0).map_or(absent, |f| {
            let mut value = 0;
            for i in (0..usize::from(size)).rev() {
                value = value << 8 | u32::from(f.bytes[usize::from(reg) + i]);
            }
            value
        })
    }

    /// Sets the bytes at `reg`, bypassing the BAR semantics.
    pub fn set(&mut self, bdf: Bdf, reg: u16, size: u8, value: u32) {
        if let Some(f) = self.functions.get_mut(&bdf.0) {
            for i in 0..usize::from(size) {
                f.bytes[usize::from(reg) + i] = (value >> (8 * i)) as u8;
            }
        }
    }
}

impl ConfigSpace for FakeConfigSpace {
    fn read(&mut self, bdf: Bdf, reg: u16, size: u8) -> u32 {
        self.get(bdf, reg, size)
    }

    fn write(&mut self, bdf: Bdf, reg: u16, size: u8, value: u32) {
        let Some(f) = self.functions.get(&bdf.0) else {
            return;
        };
        let bar = match reg {
            0x10..=0x27 => Some(usize::from((reg - 0x10) / 4)),
            0x30..=0x33 => Some(6),
            _ => None,
        };
        match bar {
            Some(n) if size == 4 => {
                let mask = f.bar_masks[n];
                let fixed = if n == 6 { 0 } else { mask & 0xf };
                let enable = if n == 6 { value & 1 } else { 0 };
                self.set(bdf, reg, 4, (value & mask & !0xf) | fixed | enable);
            }
            Some(_) => {}
            None => {
                let writable: Vec<bool> = (0..u16::from(size))
                    .map(|i| !f.read_only(reg + i))
                    .collect();
                for (i, ok) in writable.into_iter().enumerate() {
                    if ok {
                        self.set(bdf, reg + i as u16, 1, value >> (8 * i));
                    }
                }
            }
        }
    }
}
