//! `pci-demo` for x86 cells: drives a PCI function given to its cell, QEMU's `edu` device
//! (`-device edu`, vendor 1234, device 11e8), through configuration mechanism #1 (ports
//! 0xCF8/0xCFC, which trap: the hypervisor decides each access):
//!
//! - scans bus 0 and lists what it sees: only the cell's functions answer, the root cell's
//!   read as absent; the same through q35's ECAM window (0xb000_0000, which traps too);
//! - sizes BAR 0 (emulated from the hypervisor's measurement) and enables memory decoding;
//! - uses the device through BAR 0, mapped into the cell by its configuration: the liveness
//!   register, a factorial;
//! - points the function's MSI at its own CPU and takes the interrupt the device raises;
//! - finally tries to move BAR 0, which the hypervisor refuses: it stops the cell and reports
//!   why.
//!
//! ```text
//! pci-demo: hello from a cell, local APIC ID 2
//! pci-demo: bus 0: 00:05.0 1234:11e8, 1 function(s)
//! pci-demo: ECAM: 00:05.0 1234:11e8, 00:00.0 ffff:ffff
//! pci-demo: BAR 0 at 0xfea00000, 1024 KiB
//! pci-demo: edu 0x010000ed: liveness ok, 10! = 3628800
//! pci-demo: MSI vector 0x42 received
//! pci-demo: moving BAR 0
//! ```

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(target_os = "none")]
#[path = "../rt.rs"]
#[allow(dead_code)]
mod rt;

#[cfg(target_os = "none")]
mod pci {
    use core::arch::asm;

    /// A bus, device, function.
    #[derive(Clone, Copy)]
    pub struct Function(pub u8, pub u8, pub u8);

    impl Function {
        fn address(self, reg: u8) -> u32 {
            1 << 31
                | u32::from(self.0) << 16
                | u32::from(self.1) << 11
                | u32::from(self.2) << 8
                | u32::from(reg & 0xfc)
        }

        /// Configuration dword `reg`.
        pub fn read(self, reg: u8) -> u32 {
            let value: u32;
            // SAFETY: the configuration ports trap; the hypervisor decides the access. No
            // memory effect.
            unsafe {
                asm!("out dx, eax", in("dx") 0xcf8u16, in("eax") self.address(reg),
                     options(nomem, nostack));
                asm!("in eax, dx", in("dx") 0xcfcu16, out("eax") value, options(nomem, nostack));
            }
            value
        }

        /// Writes configuration dword `reg`.
        pub fn write(self, reg: u8, value: u32) {
            // SAFETY: as for `read`.
            unsafe {
                asm!("out dx, eax", in("dx") 0xcf8u16, in("eax") self.address(reg),
                     options(nomem, nostack));
                asm!("out dx, eax", in("dx") 0xcfcu16, in("eax") value, options(nomem, nostack));
            }
        }

        /// Configuration dword `reg` through q35's ECAM window (a plain `MOV`: the access
        /// traps, and the hypervisor decodes the `MOV` forms).
        pub fn read_ecam(self, reg: u16) -> u32 {
            const ECAM: u64 = 0xb000_0000;
            let at = ECAM
                + (u64::from(self.0) << 20
                    | u64::from(self.1) << 15
                    | u64::from(self.2) << 12
                    | u64::from(reg & 0xffc));
            let value: u32;
            // SAFETY: the ECAM window, mapped one to one by `_start`; the access traps.
            unsafe {
                asm!("mov {value:e}, dword ptr [{at}]", at = in(reg) at, value = out(reg) value,
                     options(nostack, readonly))
            };
            value
        }

        /// The offset of capability `id`, if the function has it.
        pub fn capability(self, id: u8) -> Option<u8> {
            if self.read(0x04) >> 16 & 1 << 4 == 0 {
                return None;
            }
            let mut at = (self.read(0x34) & 0xfc) as u8;
            for _ in 0..48 {
                if at == 0 {
                    return None;
                }
                let header = self.read(at);
                if header as u8 == id {
                    return Some(at);
                }
                at = (header >> 8) as u8 & 0xfc;
            }
            None
        }
    }
}

#[cfg(target_os = "none")]
mod edu {
    /// Registers of QEMU's `edu` (QEMU docs/specs/edu.rst).
    pub const IDENTIFICATION: u64 = 0x00;
    pub const LIVENESS: u64 = 0x04;
    pub const FACTORIAL: u64 = 0x08;
    pub const STATUS: u64 = 0x20;
    pub const INTERRUPT_STATUS: u64 = 0x24;
    pub const INTERRUPT_RAISE: u64 = 0x60;
    pub const INTERRUPT_ACK: u64 = 0x64;

    /// A register of the device whose BAR 0 is at `base`.
    pub fn read(base: u64, reg: u64) -> u32 {
        // SAFETY: BAR 0 of the cell's function, mapped one to one by `_start` and by the
        // cell's configuration; an aligned 32-bit register.
        unsafe { ((base + reg) as *const u32).read_volatile() }
    }

    /// Writes a register.
    pub fn write(base: u64, reg: u64, value: u32) {
        // SAFETY: as for `read`.
        unsafe { ((base + reg) as *mut u32).write_volatile(value) }
    }
}

#[cfg(target_os = "none")]
#[no_mangle]
extern "C" fn inmate_main() -> ! {
    use core::fmt::Write as _;

    use pci::Function;

    const VECTOR: u32 = 0x42;
    let mut console = rt::Console::init();
    let apic_id = rt::apic_read(0x20) >> 24;
    let _ = writeln!(
        console,
        "pci-demo: hello from a cell, local APIC ID {apic_id}"
    );

    // Bus 0, function 0 of each device (and the others of multi-function devices).
    let mut found = 0;
    let mut edu = None;
    let _ = write!(console, "pci-demo: bus 0:");
    for device in 0..32 {
        for function in 0..8 {
            let f = Function(0, device, function);
            let id = f.read(0x00);
            if id & 0xffff == 0xffff {
                if function == 0 {
                    break;
                }
                continue;
            }
            found += 1;
            let _ = write!(
                console,
                " 00:{device:02x}.{function} {:04x}:{:04x},",
                id & 0xffff,
                id >> 16
            );
            if id == 0x11e8_1234 {
                edu = Some(f);
            }
            if function == 0 && f.read(0x0c) >> 16 & 0x80 == 0 {
                break;
            }
        }
    }
    let _ = writeln!(console, " {found} function(s)");
    let Some(edu) = edu else {
        let _ = writeln!(console, "pci-demo: no edu device");
        rt::park()
    };
    let (own, root) = (edu.read_ecam(0), Function(0, 0, 0).read_ecam(0));
    let _ = writeln!(
        console,
        "pci-demo: ECAM: 00:{:02x}.{} {:04x}:{:04x}, 00:00.0 {:04x}:{:04x}",
        edu.1,
        edu.2,
        own & 0xffff,
        own >> 16,
        root & 0xffff,
        root >> 16
    );

    // BAR 0: its address, and its size as the cell's sizing write finds it.
    let bar = edu.read(0x10);
    edu.write(0x10, u32::MAX);
    let mask = edu.read(0x10) & !0xf;
    edu.write(0x10, bar);
    let base = u64::from(bar & !0xf);
    let size = (!mask).wrapping_add(1);
    let _ = writeln!(console, "pci-demo: BAR 0 at {base:#x}, {} KiB", size / 1024);
    // Memory decoding and bus mastering on.
    edu.write(0x04, edu.read(0x04) & 0xffff | 0b110);

    let ident = edu::read(base, edu::IDENTIFICATION);
    edu::write(base, edu::LIVENESS, 0x1234_5678);
    let live = edu::read(base, edu::LIVENESS) == !0x1234_5678;
    edu::write(base, edu::FACTORIAL, 10);
    let mut spins = 0;
    while edu::read(base, edu::STATUS) & 1 != 0 && spins < 10_000_000 {
        spins += 1;
    }
    let factorial = edu::read(base, edu::FACTORIAL);
    let _ = writeln!(
        console,
        "pci-demo: edu {ident:#010x}: liveness {}, 10! = {factorial}",
        if live { "ok" } else { "wrong" }
    );

    // MSI to this CPU (physical destination, fixed delivery): address, data, then enable.
    match edu.capability(0x05) {
        Some(msi) => {
            let control = edu.read(msi) >> 16;
            let wide = control & 1 << 7 != 0;
            edu.write(msi + 4, 0xfee0_0000 | apic_id << 12);
            if wide {
                edu.write(msi + 8, 0);
                edu.write(msi + 12, VECTOR);
            } else {
                edu.write(msi + 8, VECTOR);
            }
            edu.write(msi, (edu.read(msi) & 0xffff) | (control | 1) << 16);
            rt::load_idt();
            rt::apic_write(0xf0, 0x1ff);
            edu::write(base, edu::INTERRUPT_RAISE, 1);
            let mut waits = 0;
            while rt::irq_count() == 0 && waits < 1_000_000 {
                rt::enable_interrupts_briefly();
                waits += 1;
            }
            let status = edu::read(base, edu::INTERRUPT_STATUS);
            edu::write(base, edu::INTERRUPT_ACK, status);
            if rt::irq_count() > 0 {
                let _ = writeln!(console, "pci-demo: MSI vector {VECTOR:#x} received");
            } else {
                let _ = writeln!(console, "pci-demo: no MSI (status {status:#x})");
            }
        }
        None => {
            let _ = writeln!(console, "pci-demo: no MSI capability");
        }
    }

    // BAR 0 elsewhere: the hypervisor stops the cell.
    let _ = writeln!(console, "pci-demo: moving BAR 0");
    edu.write(0x10, bar.wrapping_add(size));
    let _ = writeln!(
        console,
        "pci-demo: BAR 0 moved and the cell was not stopped"
    );
    rt::park()
}

#[cfg(not(target_os = "none"))]
fn main() {}
