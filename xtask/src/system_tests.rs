//! System tests: boot the real images in QEMU (TCG) and judge them by their serial console.
//! The cases are data ([`CASES`]); a board that no case names gets a boot case and a fault
//! case with its defaults, and if it boots Linux a bare and a root-cell case too, so that
//! every board is booted.
//!
//! Three kinds of boots:
//! - the hypervisor alone: its banner, or the report of its deliberate fault (fault-injection
//!   images); the case passes as soon as the expected lines have appeared in order;
//! - Linux bare, without the hypervisor (the baseline): `/init` runs `info,dmesg,poweroff` and
//!   QEMU must exit by itself with status 0; the kernel-log problems it reports are kept;
//! - Linux as the root cell of the hypervisor: `/init` runs
//!   `info,script:version,hotplug:<last CPU>,devmem:<hypervisor start>,dmesg,poweroff` (the
//!   `version` script runs the `cellvisor` tool of the board's initramfs), and the case passes
//!   when every expected line has appeared (in any order: hypervisor and kernel share the
//!   console), QEMU exits by itself with status 0, MemTotal fits the root cell's RAM and the
//!   kernel logged no problem that the bare boot did not.
//!
//! With `--cells` (off by default), root-cell cases that manage cells with the `cellvisor`
//! tool follow ([`CELL_CASES`]): `/init` runs one of the scripts of `scripts.rs` (a cell's
//! life with the timer demo, whose output is looked for on the machine's second UART; 20
//! create/destroy cycles that must not leak hypervisor memory; a wild cell that is stopped
//! and reported; wrong input; a short soak; the root cell as an adversary), judged by the scripts' `cellvisor-demo: ...` lines and the
//! tool's messages. They need the hypervisor's management interface.
//!
//! A case fails at once when a forbidden text appears, when QEMU exits first, when the time
//! runs out, or (Linux boots) when the console stays silent too long. QEMU is always killed
//! at the end, whatever happened. Each console log is kept in
//! `target/system-tests/<case>.log`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::board::{self, Board};
use crate::boot::{self, Boot, LinuxFiles, SystemFacts};
use crate::image::{self, Image, Kind};
use crate::initramfs::{self, DMESG_DONE, DMESG_LINE, MARKER};
use crate::linux::{self, Arch};
use crate::qemu::{self, Next, Options, Qemu, Stream};
use crate::run::LINUX_SILENCE;
use crate::workspace::Workspace;

/// Console lines shown when a case fails.
const TAIL_LINES: usize = 60;

/// How long a case may take by default: the hypervisor alone, and a Linux boot.
const HYPERVISOR_TIMEOUT: Duration = Duration::from_secs(60);
const LINUX_TIMEOUT: Duration = Duration::from_secs(120);

/// What the kernel may keep of the root cell's RAM for itself, beyond the `struct page` array
/// (64 bytes per 4 KiB page, 1/64 of the RAM): the kernel image, page tables, the device
/// tree, per-CPU areas. A stock Debian kernel keeps about 46 MiB of 1 GiB and 66 MiB of
/// 2 GiB in QEMU.
const KERNEL_RESERVE: u64 = 64 << 20;

/// What a console line must look like. In the texts, `{version}`, `{board}`, `{smp}` and
/// `{last}` stand for the board package version, the board name, the number of CPUs and the
/// number of the last CPU; `{root}` and `{hypervisor}` for the root cell's name and the start
/// of the hypervisor's memory (`0x...`) in the system configuration.
#[derive(Debug, Clone, Copy)]
enum Pattern {
    /// A line equal to this (leading and trailing white space ignored).
    Line(&'static str),
    /// A line containing all of these.
    Contains(&'static [&'static str]),
    /// A line starting with this (leading white space ignored).
    StartsWith(&'static str),
    /// A line containing all of these and the start of the hypervisor's memory as a hex
    /// number (`0x`, any number of leading zeros).
    ContainsHypervisorAddress(&'static [&'static str]),
}

/// The banner of a hypervisor that brought all CPUs to EL2.
const BANNER: Pattern = Pattern::Line("cellvisor {version} on {board}: {smp}/{smp} CPUs at EL2");

/// A normal boot: the banner, then the hypervisor idles.
const BOOT: &[Pattern] = &[BANNER];

/// The x86 boot so far (issue 15): the boot CPU in long mode from QEMU's Multiboot loader, AMD
/// SVM with nested paging found, a first world switch (a real-mode guest's CPUID and HLT exits,
/// behind nested page tables from `cellvisor-paging`), then every other CPU of the ACPI MADT
/// started by INIT and SIPI, in long mode with SVM on.
const X86_SVM: &[Pattern] = &[
    Pattern::Contains(&["cellvisor {version} on {board} (x86-64), Multiboot ok"]),
    Pattern::Line("cellvisor: CPU AuthenticAMD: AMD SVM with nested paging"),
    Pattern::Line("cellvisor: SVM guest exit: CPUID at RIP 0x1000"),
    Pattern::Line("cellvisor: SVM guest exit: HLT at RIP 0x1002"),
    Pattern::Line("cellvisor: SVM world switch works (CPUID, HLT)"),
    Pattern::Contains(&["cellvisor: CPU {last}: APIC ID ", ", SVM on"]),
    Pattern::Line("cellvisor {version} on {board}: {smp}/{smp} CPUs in long mode"),
];

/// An x86 fault-injection image: after the banner the boot CPU reads the unmapped address
/// 0x1dead0000; the page fault must be reported with its address and the CPU parked.
const X86_FAULT: &[Pattern] = &[
    Pattern::Contains(&["cellvisor {version} on {board} (x86-64), Multiboot ok"]),
    Pattern::Line("cellvisor {version} on {board}: {smp}/{smp} CPUs in long mode"),
    Pattern::Contains(&[
        "cellvisor: hypervisor bug: page fault (vector 14",
        "CR2 0x00000001dead0000",
    ]),
    Pattern::Contains(&["rax 0x", "rdx 0x"]),
    Pattern::Line("cellvisor: CPU parked"),
];

/// Debian's amd64 kernel bare.
const X86_BARE: &[Pattern] = &[
    Pattern::Contains(&[MARKER]),
    Pattern::Contains(&["cellvisor-initramfs: cpus online=", " count={smp}"]),
    Pattern::Contains(&["cellvisor-initramfs: memtotal="]),
    Pattern::Contains(&[DMESG_DONE]),
];

/// What `/init` of the x86 root cell runs: the hypervisor's first byte (the board's link
/// address, 16 MiB) is read through `/dev/mem`; through the stock kernel's MSR driver
/// (`msr.ko`), EFER is read and `VM_HSAVE_PA` (SVM's host save area) written; the
/// `cellvisor` tool creates, lists and destroys the demo cell, and 20 cycles more.
const X86_ROOT_CELL_ACTIONS: &str = "info,clock,hotplug:{last},devmem:0x1000000,\
     msr-read:0xc0000080,msr-write:0xc0010117,script:manage,script:x86-cells,dmesg,poweroff";

/// Debian's amd64 kernel as the root cell on every CPU: loaded by the hypervisor from the
/// Multiboot modules, its e820 map without the hypervisor's memory; the other CPUs started
/// by its INIT and start-up IPIs; `/init` runs, a CPU goes offline and comes back, an access
/// to the hypervisor's memory is reported and kills only the process, the root cell's EFER
/// hides SVME and SVM's MSRs are a #GP for it (the MSR driver's EIO), the machine powers off.
const X86_ROOT_CELL: &[Pattern] = &[
    Pattern::Line("cellvisor {version} on {board}: {smp}/{smp} CPUs in long mode"),
    Pattern::Contains(&[
        "cellvisor: root cell \"linux\": Linux at 0x",
        " on {smp} CPUs, ",
        "hypervisor 0x1000000-0x17fffff reserved, management page 0x",
    ]),
    Pattern::Contains(&["BIOS-e820: [mem 0x0000000001000000-", "] reserved"]),
    Pattern::Contains(&["smp: Brought up 1 node, {smp} CPUs"]),
    Pattern::Contains(&[MARKER]),
    Pattern::Contains(&["cellvisor-initramfs: cpus online=", " count={smp}"]),
    Pattern::Contains(&["cellvisor-initramfs: memtotal="]),
    Pattern::Contains(&["cellvisor-initramfs: guest time "]),
    Pattern::Contains(&["cellvisor-initramfs: hotplug cpu{last} off count={last}"]),
    Pattern::Contains(&["cellvisor-initramfs: hotplug cpu{last} on count={smp}"]),
    Pattern::Contains(&[
        "cellvisor: cell \"root\" (CPU ",
        "): read at 0x1000000 ",
        "is outside its memory: #GP injected",
    ]),
    Pattern::Contains(&["cellvisor-initramfs: devmem 0x1000000 status=139"]),
    // EFER as Linux sets it (SCE, LME, LMA, NXE) without SVME (bit 12), which the hypervisor
    // keeps set and hides (APM 15.4).
    Pattern::Contains(&[
        "cellvisor-initramfs: msr-read 0xc0000080 value=0x0000000000000d01 status=0",
    ]),
    // A write of VM_HSAVE_PA (0xc0010117) is a #GP (APM 15.30.4): WRMSR fails, dd exits 1.
    Pattern::Contains(&["cellvisor-initramfs: msr-write 0xc0010117 status=1"]),
    // The management interface from root userspace: the hypervisor's facts, the demo cell
    // (CPU 3, RAM from the loadable region, COM2's ports and IRQ 3) created and destroyed, 20
    // cycles more without a lost frame.
    Pattern::Contains(&["cellvisor-initramfs: script manage: cellvisor-demo: info status=0"]),
    // The core's trap counters, fed by the x86 exits: the idle root cell's local APIC (its
    // timer's EOIs) and its management accesses.
    Pattern::Contains(&[
        "cellvisor-initramfs: script manage: cell \"linux\": traps by CPU and reason",
    ]),
    Pattern::Contains(&["cellvisor-initramfs: script manage: cellvisor-demo: stats status=0"]),
    Pattern::Contains(&["cellvisor-initramfs: script manage: cellvisor-demo: create status=0"]),
    Pattern::Contains(&["cellvisor-initramfs: script manage: cellvisor-demo: state=created"]),
    // COM2's ports went with the cell: the root cell's read through /dev/port is refused.
    Pattern::Contains(&[
        "cellvisor: cell \"root\" (CPU ",
        "): read of I/O port 0x2f8: not the root cell's: reads all ones",
    ]),
    Pattern::Contains(&["cellvisor-initramfs: script manage: cellvisor-demo: destroy status=0"]),
    Pattern::Contains(&[
        "cellvisor-initramfs: script manage: cellvisor-demo: manage cycles=20 failed=0 ",
    ]),
    Pattern::Contains(&["cellvisor-initramfs: script manage: cellvisor-demo: manage memory kept"]),
    Pattern::Contains(&["cellvisor-initramfs: script manage done status=0"]),
    // Cells on x86: the x86 timer-demo runs in the demo cell (64-bit, its local APIC timer)
    // and approves its shutdown; wild-demo's access outside its memory stops its cell; 20
    // create/load/start/destroy cycles of uart-demo.
    Pattern::Contains(&["cellvisor-initramfs: script x86-cells: cellvisor-demo: start status=0"]),
    Pattern::Contains(&[
        "cellvisor-initramfs: script x86-cells: cellvisor-demo: running state=running",
    ]),
    Pattern::Contains(&[
        "cellvisor-initramfs: script x86-cells: cellvisor-demo: shutdown status=0",
    ]),
    Pattern::Contains(&["cellvisor-initramfs: script x86-cells: cellvisor-demo: destroy status=0"]),
    Pattern::Contains(&[
        "cellvisor-initramfs: script x86-cells: cellvisor-demo: wild console report: cellvisor: \
         cell \"demo\" (CPU 3): read at 0x40000000 (RIP ",
        ") is outside its memory: cell stopped",
    ]),
    Pattern::Contains(&[
        "cellvisor-initramfs: script x86-cells: cellvisor-demo: wild state=failed",
    ]),
    Pattern::Contains(&[
        "cellvisor-initramfs: script x86-cells: cellvisor-demo: wild-destroy status=0",
    ]),
    // The report, from the hypervisor's console ring (its UART line may interleave with the
    // root cell's output).
    Pattern::Contains(&[
        "cellvisor-initramfs: script x86-cells: cellvisor-demo: ipi console report: cellvisor: \
         cell \"demo\" (CPU 3): local APIC write 0x40 at offset 0x300: interrupt command: CPU \
         0 belongs to another cell: cell stopped",
    ]),
    Pattern::Contains(&["cellvisor-initramfs: script x86-cells: cellvisor-demo: ipi state=failed"]),
    Pattern::Contains(&[
        "cellvisor-initramfs: script x86-cells: cellvisor-demo: ioapic console report: \
         cellvisor: cell \"demo\" (CPU 3): IOAPIC access: ",
    ]),
    Pattern::Contains(&[
        "cellvisor-initramfs: script x86-cells: cellvisor-demo: ioapic state=failed",
    ]),
    // QEMU's edu device (00:05.0) in a cell: the root cell reads it, then no function there
    // while the cell has it, then it again; the cell that moves its BAR is stopped.
    Pattern::Contains(&[
        "cellvisor-initramfs: script x86-cells: cellvisor-demo: pci root reads 11e81234 before",
    ]),
    Pattern::Contains(&[
        "cellvisor-initramfs: script x86-cells: cellvisor-demo: pci-create status=0",
    ]),
    Pattern::Contains(&[
        "cellvisor-initramfs: script x86-cells: cellvisor-demo: pci root reads ffffffff while \
         the cell has it",
    ]),
    Pattern::Contains(&["cellvisor-initramfs: script x86-cells: cellvisor-demo: pci state=failed"]),
    Pattern::Contains(&[
        "cellvisor-initramfs: script x86-cells: cellvisor-demo: pci console report: cellvisor: \
         cell \"pci-demo\" (CPU 3): PCI configuration write of 0xfeb00000: PCI 00:05.0: BAR 0 \
         cannot move at RIP ",
        ": cell stopped",
    ]),
    Pattern::Contains(&[
        "cellvisor-initramfs: script x86-cells: cellvisor-demo: pci-destroy status=0",
    ]),
    Pattern::Contains(&[
        "cellvisor-initramfs: script x86-cells: cellvisor-demo: pci root reads 11e81234 after",
    ]),
    // A cell of two CPUs: its first starts, interrupts and stops the second itself.
    Pattern::Contains(&[
        "cellvisor-initramfs: script x86-cells: cellvisor-demo: smp-start status=0",
    ]),
    Pattern::Contains(&[
        "cellvisor-initramfs: script x86-cells: cellvisor-demo: smp state=running",
    ]),
    Pattern::Contains(&[
        "cellvisor-initramfs: script x86-cells: cellvisor-demo: smp-shutdown status=0",
    ]),
    Pattern::Contains(&[
        "cellvisor-initramfs: script x86-cells: cellvisor-demo: smp-destroy status=0",
    ]),
    Pattern::Contains(&[
        "cellvisor-initramfs: script x86-cells: cellvisor-demo: uart-shutdown status=0",
    ]),
    Pattern::Contains(&[
        "cellvisor-initramfs: script x86-cells: cellvisor-demo: x86 cycles=20 failed=0 ",
    ]),
    Pattern::Contains(&["cellvisor-initramfs: script x86-cells done status=0"]),
    Pattern::Contains(&[DMESG_DONE]),
    // The power-off is seen (the PM1a control port traps), with the exits: the local APIC's
    // page and EFER trap.
    Pattern::Contains(&[
        "cellvisor: root cell: ACPI sleep (PM1a control ",
        ": exits on {smp} CPUs: hlt ",
    ]),
];

/// What fails the x86 root cell at once.
const X86_ROOT_CELL_FAILS_ON: &[&str] = &[
    "Kernel panic",
    "cellvisor: root cell stopped",
    "cellvisor: hypervisor bug",
];

/// A fault-injection image: after the banner it reads the unmapped address 0xdead0000, and the
/// report of that data abort must end with the CPU parked.
const FAULT: &[Pattern] = &[
    BANNER,
    Pattern::Contains(&["unexpected exception"]),
    Pattern::Contains(&["data abort at EL2", "translation fault"]),
    Pattern::Contains(&["FAR 0x00000000dead0000"]),
    Pattern::Contains(&["parked"]),
];

/// What `/init` of a bare boot runs.
const BARE_ACTIONS: &str = "info,dmesg,poweroff";

/// A bare boot: `/init` ran its actions (the kernel-log check is the root-cell case's).
const BARE: &[Pattern] = &[
    Pattern::Contains(&[MARKER]),
    Pattern::Contains(&["cellvisor-initramfs: cpus online=", " count={smp}"]),
    Pattern::Contains(&["cellvisor-initramfs: memtotal="]),
    Pattern::Contains(&[DMESG_DONE]),
];

/// What `/init` of a root cell runs: hand the last CPU back and forth, read the hypervisor's
/// memory (which must fail), check the kernel log, power off.
const ROOT_CELL_ACTIONS: &str =
    "info,script:version,hotplug:{last},devmem:{hypervisor},dmesg,poweroff";

/// Linux as the root cell.
const ROOT_CELL: &[Pattern] = &[
    BANNER,
    Pattern::Contains(&[MARKER]),
    Pattern::Contains(&["cellvisor-initramfs: cpus online=", " count={smp}"]),
    Pattern::Contains(&["cellvisor-initramfs: memtotal="]),
    // The static `cellvisor` tool runs on the stock kernel.
    Pattern::Contains(&["cellvisor-initramfs: script version: cellvisor-demo: version status=0"]),
    Pattern::Contains(&["cellvisor-initramfs: hotplug cpu{last} off count={last}"]),
    Pattern::Contains(&["cellvisor-initramfs: hotplug cpu{last} on count={smp}"]),
    // The hypervisor reports the root cell's access to its memory...
    Pattern::ContainsHypervisorAddress(&[
        "cellvisor: cell \"{root}\"",
        "outside its configuration",
    ]),
    // ... and the kernel survives it (devmem dies of a bus error).
    Pattern::Contains(&["cellvisor-initramfs: devmem {hypervisor} status="]),
    Pattern::Contains(&[DMESG_DONE]),
    Pattern::StartsWith("cellvisor: trap counters"),
];

/// What `/init` runs in the cases that time the boot: nothing but power off.
const INIT_TIME_ACTIONS: &str = "poweroff";

/// A root cell that reaches `/init` and powers off (its host time to `/init` is checked).
const INIT_TIME: &[Pattern] = &[BANNER, Pattern::Contains(&[MARKER])];

/// The most host time a root cell may take from QEMU's start to `/init` under QEMU's default
/// multi-threaded TCG. It takes about 5 s on a 2-core machine; CPUs of the hypervisor that
/// spun at EL2 instead of sleeping made it 50 s and more (a broadcast TLB invalidation waits
/// for every vCPU thread).
const INIT_TIME_LIMIT: Duration = Duration::from_secs(30);

/// What `/init` runs in the reboot case.
const REBOOT_ACTIONS: &str = "reboot";

/// A root cell that reboots the machine: the hypervisor must come up again.
const REBOOT: &[Pattern] = &[BANNER, Pattern::Contains(&[MARKER]), BANNER];

/// What `/init` runs in the cell cases: a script, the kernel-log check, power-off.
const CELLS_DEMO_ACTIONS: &str = "script:demo,dmesg,poweroff";
const CELLS_CYCLES_ACTIONS: &str = "script:cycles,dmesg,poweroff";
const CELLS_WILD_ACTIONS: &str = "script:wild,dmesg,poweroff";
const CELLS_BAD_INPUT_ACTIONS: &str = "script:bad-input,dmesg,poweroff";
const CELLS_HOSTILE_ACTIONS: &str = "script:hostile,dmesg,poweroff";
const CELLS_SOAK_ACTIONS: &str = "script:soak,dmesg,poweroff";
const CELLS_HOSTILE_ROOT_ACTIONS: &str = "script:hostile-root,dmesg,poweroff";
const CELLS_LINUX_ACTIONS: &str = "script:linux-cell,dmesg,poweroff";

/// Linux in a cell (`linux-cell.sh`): `cellvisor cell linux` boots it, it powers its cell
/// off by itself while the root cell's job runs, and five more boots leak nothing.
const CELLS_LINUX: &[Pattern] = &[
    BANNER,
    Pattern::Contains(&["cellvisor-demo: linux-raw status=0"]),
    Pattern::Contains(&["reset itself: cell restarted"]),
    Pattern::Contains(&["cellvisor-demo: linux raw state=shut down"]),
    Pattern::Contains(&["cellvisor-demo: linux-raw-destroy status=0"]),
    Pattern::Contains(&["cellvisor-demo: linux-boot status=0"]),
    Pattern::Contains(&["cellvisor-demo: linux state=shut down"]),
    Pattern::Contains(&["cellvisor-demo: linux-destroy status=0"]),
    Pattern::Contains(&["cellvisor-demo: linux root job ran"]),
    Pattern::Contains(&["cellvisor-demo: linux-idle status=0"]),
    Pattern::Contains(&["cell \"guest\" shut down"]),
    Pattern::Contains(&["cellvisor-demo: linux cycles=5 failed=0 "]),
    Pattern::Contains(&["cellvisor-demo: linux-watch status=0"]),
    Pattern::Contains(&["what it runs cannot restart in place: cell stopped (state reset)"]),
    Pattern::Contains(&["cell \"guest\" reset itself: booted again (boot 3)"]),
    Pattern::Contains(&["cellvisor-demo: linux memory kept"]),
    Pattern::Contains(&["cellvisor-initramfs: script linux-cell done status=0"]),
    Pattern::Contains(&[DMESG_DONE]),
    Pattern::StartsWith("cellvisor: trap counters"),
];

/// What Linux in the cell prints on its UART: its /init, its two CPUs, its RAM, its second
/// CPU off and on (PSCI CPU_OFF and CPU_ON in the cell).
const LINUX_CELL_CHECKS: &[Check] = &[
    Check::DmesgLikeBare,
    Check::SecondUart("cellvisor-initramfs: /init reached"),
    Check::SecondUart("cellvisor-initramfs: cpus online=0-1 count=2"),
    Check::SecondUart("cellvisor-initramfs: memtotal="),
    Check::SecondUart("cellvisor-initramfs: hotplug cpu1 off count=1"),
    Check::SecondUart("cellvisor-initramfs: hotplug cpu1 on count=2"),
    // raw-demo (`cell linux --raw`): its device tree in x0, PSCI and the GIC, its reset.
    Check::SecondUart("raw-demo: boot 1: device tree in x0 at 0x"),
    Check::SecondUart("raw-demo: PSCI version 1.1"),
    Check::SecondUart(
        "raw-demo: CPU_ON: CPU 0x3 ran with x0 = 0xc0ffee00, then CPU_OFF; AFFINITY_INFO off",
    ),
    Check::SecondUart("not in the tree: Err(InvalidParameters) (refused)"),
    Check::SecondUart("raw-demo: 20 virtual timer interrupts through the GICv"),
    Check::SecondUart("raw-demo: boot 1 done: SYSTEM_RESET"),
    Check::SecondUart("raw-demo: boot 2: device tree in x0 at 0x"),
    Check::SecondUart("raw-demo: boot 2 done: SYSTEM_OFF"),
];

/// A cell's life (`demo.sh`): every step succeeds, the CPUs come back.
const CELLS_DEMO: &[Pattern] = &[
    BANNER,
    Pattern::Contains(&[MARKER]),
    Pattern::Contains(&["cellvisor-demo: create status=0"]),
    Pattern::Contains(&["cell \"demo\" created (id "]),
    Pattern::Contains(&["cellvisor-demo: load status=0"]),
    Pattern::Contains(&["cellvisor-demo: start status=0"]),
    Pattern::Contains(&["cellvisor-demo: list status=0"]),
    Pattern::Contains(&["cellvisor-demo: stats status=0"]),
    Pattern::Contains(&["cellvisor-demo: shutdown status=0"]),
    Pattern::Contains(&["cellvisor-demo: destroy status=0"]),
    Pattern::Contains(&["cellvisor-demo: cpus online=0-{last} after"]),
    Pattern::Contains(&["cellvisor-initramfs: script demo done status=0"]),
    Pattern::Contains(&[DMESG_DONE]),
    Pattern::StartsWith("cellvisor: trap counters"),
];

/// What the timer demo prints on its UART (the machine's second one).
const TIMER_DEMO_LINE: &str = "timer-demo: ticks=";

/// 20 create/load/start/destroy cycles (`cycles.sh`).
const CELLS_CYCLES: &[Pattern] = &[
    BANNER,
    Pattern::Contains(&["cellvisor-demo: cycles=20 failed=0 "]),
    Pattern::Contains(&["cellvisor-demo: cycles memory kept"]),
    Pattern::Contains(&["cellvisor-initramfs: script cycles done status=0"]),
    Pattern::Contains(&[DMESG_DONE]),
    Pattern::StartsWith("cellvisor: trap counters"),
];

/// A wild cell (`wild.sh`): stopped and reported, the root cell goes on, the cell can be
/// destroyed and created again.
const CELLS_WILD: &[Pattern] = &[
    BANNER,
    Pattern::Contains(&["cellvisor-demo: start status=0"]),
    // The hypervisor's report is checked in its console ring (below): on the shared UART
    // its line can interleave with the root cell's output.
    Pattern::Contains(&["cellvisor-demo: state=failed"]),
    Pattern::Contains(&[
        "cellvisor-demo: console report: ",
        "outside its configuration",
    ]),
    Pattern::Contains(&["cellvisor-demo: root responsive"]),
    Pattern::Contains(&["cellvisor-demo: destroy status=0"]),
    Pattern::Contains(&["cellvisor-demo: recreate status=0"]),
    Pattern::Contains(&["cellvisor-demo: destroy-again status=0"]),
    Pattern::Contains(&["cellvisor-demo: gic-start status=0"]),
    Pattern::Contains(&["cellvisor-demo: gic state=failed"]),
    Pattern::Contains(&[
        "cellvisor-demo: gic console report: ",
        "ForeignIrq",
        "cell stopped (failed)",
    ]),
    Pattern::Contains(&["cellvisor-demo: gic-destroy status=0"]),
    Pattern::Contains(&["cellvisor-initramfs: script wild done status=0"]),
    Pattern::Contains(&[DMESG_DONE]),
    Pattern::StartsWith("cellvisor: trap counters"),
];

/// Wrong input (`bad-input.sh`): each case a clear error line and exit status 1.
const CELLS_BAD_INPUT: &[Pattern] = &[
    BANNER,
    Pattern::Contains(&["cellvisor: cell create: ", "is no valid cell configuration"]),
    Pattern::Contains(&["cellvisor-demo: malformed status=1"]),
    Pattern::Contains(&["cellvisor: cell \"no-such-cell\": start: no such cell"]),
    Pattern::Contains(&["cellvisor-demo: unknown-cell status=1"]),
    Pattern::Contains(&["cellvisor-demo: create status=0"]),
    Pattern::Contains(&[
        "cellvisor: cell \"foreign\": create: CPU 63 is not a CPU of the root cell",
    ]),
    Pattern::Contains(&["cellvisor-demo: cpu-not-owned status=1"]),
    Pattern::Contains(&[
        "cellvisor: cell \"twin\": create: CPU ",
        "belongs to cell \"demo\"",
    ]),
    Pattern::Contains(&["cellvisor-demo: cpu-taken status=1"]),
    Pattern::Contains(&["cellvisor: cell \"demo\": start: wrong cell state"]),
    Pattern::Contains(&["cellvisor-demo: start-before-load status=1"]),
    Pattern::Contains(&["cellvisor: cell \"demo\": load: image larger than its loadable region"]),
    Pattern::Contains(&["cellvisor-demo: image-too-large status=1"]),
    Pattern::Contains(&["cellvisor-demo: image-too-large-hypervisor status=1"]),
    Pattern::Contains(&["cellvisor-demo: destroy status=0"]),
    Pattern::Contains(&["cellvisor: cell \"demo\": destroy: no such cell"]),
    Pattern::Contains(&["cellvisor-demo: destroy-twice status=1"]),
    Pattern::Contains(&["cellvisor: cell \"{root}\": destroy: the root cell cannot be destroyed"]),
    Pattern::Contains(&["cellvisor-demo: destroy-root status=1"]),
    Pattern::Contains(&["cellvisor-demo: state unchanged"]),
    Pattern::Contains(&["cellvisor-demo: vote-start status=0"]),
    Pattern::Contains(&["cellvisor: cell \"demo\": shutdown: the cell refused to shut down"]),
    Pattern::Contains(&["cellvisor-demo: vote-refused status=1"]),
    Pattern::Contains(&["cellvisor-demo: vote-approved status=0"]),
    Pattern::Contains(&["cellvisor-demo: vote-destroy status=0"]),
    Pattern::Contains(&["cellvisor-initramfs: script bad-input done status=0"]),
    Pattern::Contains(&[DMESG_DONE]),
    Pattern::StartsWith("cellvisor: trap counters"),
];

/// [`CELLS_BAD_INPUT`] on x86 (the x86 stubborn-demo for the vote), without the Arm banner
/// and the Arm power-off's trap counters.
const X86_CELLS_BAD_INPUT: &[Pattern] = CELLS_BAD_INPUT
    .split_at(CELLS_BAD_INPUT.len() - 1)
    .0
    .split_at(1)
    .1;

/// Hostile cells (`hostile.sh`): every attack of hostile-demo stopped or refused while
/// ticker-demo ticks in a second cell; no memory lost, every CPU back. The counts differ by
/// GIC version: some attacks exist for one version only (`skipped`).
const CELLS_HOSTILE_V3: &[Pattern] = &[
    BANNER,
    Pattern::Contains(&["cellvisor-demo: ticker-start status=0"]),
    Pattern::Contains(&["cellvisor-demo: hostile ticker ticks="]),
    Pattern::Contains(&["cellvisor-demo: ticker-destroy status=0"]),
    Pattern::Contains(&["cellvisor-demo: hostile memory kept"]),
    Pattern::Contains(&["cellvisor-demo: hostile cpus online=0-{last} after"]),
    Pattern::Contains(&["cellvisor-demo: hostile cases=47 ran=45 skipped=2 failed=0"]),
    Pattern::Contains(&["cellvisor-initramfs: script hostile done status=0"]),
    Pattern::Contains(&[DMESG_DONE]),
    Pattern::StartsWith("cellvisor: trap counters"),
];
const CELLS_HOSTILE_V2: &[Pattern] = &[
    BANNER,
    Pattern::Contains(&["cellvisor-demo: ticker-start status=0"]),
    Pattern::Contains(&["cellvisor-demo: hostile ticker ticks="]),
    Pattern::Contains(&["cellvisor-demo: ticker-destroy status=0"]),
    Pattern::Contains(&["cellvisor-demo: hostile memory kept"]),
    Pattern::Contains(&["cellvisor-demo: hostile cpus online=0-{last} after"]),
    Pattern::Contains(&["cellvisor-demo: hostile cases=47 ran=39 skipped=8 failed=0"]),
    Pattern::Contains(&["cellvisor-initramfs: script hostile done status=0"]),
    Pattern::Contains(&[DMESG_DONE]),
    Pattern::StartsWith("cellvisor: trap counters"),
];
/// What the hostile cell prints on its UART (the machine's second one) for each case.
const HOSTILE_DEMO_LINE: &str = "hostile-demo: case 44 psci-cpu-off";
/// The hostile suite runs about 45 cells one after the other.
const CELLS_HOSTILE_TIMEOUT: Duration = Duration::from_secs(480);
/// A short soak (`soak.sh`, its default 12 cycles: each of the four inmates three times):
/// every cycle as it must be, and memory, cells, CPUs and interrupt lines as before.
const CELLS_SOAK: &[Pattern] = &[
    BANNER,
    Pattern::Contains(&["cellvisor-demo: soak begin cycles=12 "]),
    Pattern::Contains(&["cellvisor-demo: soak cycle 12 gic-wild-demo ok"]),
    Pattern::Contains(&["cellvisor-demo: soak recreate status=0 destroy status=0"]),
    Pattern::Contains(&["cellvisor-demo: soak memory kept"]),
    Pattern::Contains(&["cellvisor-demo: soak cpus kept"]),
    Pattern::Contains(&["cellvisor-demo: soak cells kept"]),
    Pattern::Contains(&["cellvisor-demo: soak interrupts kept"]),
    Pattern::Contains(&["cellvisor-demo: soak summary cycles=12 failed=0 "]),
    Pattern::Contains(&["cellvisor-demo: soak passed"]),
    Pattern::Contains(&["cellvisor-initramfs: script soak done status=0"]),
    Pattern::Contains(&[DMESG_DONE]),
    Pattern::StartsWith("cellvisor: trap counters"),
];

/// The root cell as an adversary (`hostile-root.sh`): concurrent tools, out-of-range
/// management commands, a 32-bit process reading outside the root cell on every CPU; each a
/// clear error (or SIGBUS), nothing changed, the CPUs go on.
const CELLS_HOSTILE_ROOT: &[Pattern] = &[
    BANNER,
    // One tool at a time: one create and one destroy win, the others get clear errors.
    Pattern::Contains(&["cellvisor-demo: concurrent-same created=1 exists=3 lists=11"]),
    Pattern::Contains(&["cellvisor-demo: concurrent-destroy destroyed=1 gone=2"]),
    Pattern::Contains(&["cellvisor-demo: concurrent-same state unchanged"]),
    Pattern::Contains(&["cellvisor-demo: concurrent-different created=1 refused=2 "]),
    Pattern::Contains(&["cellvisor-demo: concurrent-different state unchanged"]),
    // Every field of every command out of range.
    Pattern::Contains(&["cellvisor: raw command 0: unknown command"]),
    Pattern::Contains(&["cellvisor-demo: command-zero status=1"]),
    Pattern::Contains(&["cellvisor: raw command 10: unknown command"]),
    Pattern::Contains(&["cellvisor-demo: command-next status=1"]),
    Pattern::Contains(&["cellvisor: raw command 4294967295: unknown command"]),
    Pattern::Contains(&["cellvisor-demo: command-max status=1"]),
    Pattern::Contains(&["cellvisor-demo: info-junk status=0"]),
    Pattern::Contains(&["cellvisor-demo: list-junk status=0"]),
    Pattern::Contains(&["cellvisor: raw command 2: invalid argument: "]),
    Pattern::Contains(&["cellvisor-demo: create-empty status=1"]),
    Pattern::Contains(&["cellvisor-demo: create-4g status=1"]),
    Pattern::Contains(&["cellvisor-demo: create-max status=1"]),
    Pattern::Contains(&["cellvisor: raw command 2: bad configuration"]),
    Pattern::Contains(&["cellvisor-demo: create-junk status=1"]),
    Pattern::Contains(&["cellvisor: raw command 3: no such cell"]),
    Pattern::Contains(&["cellvisor-demo: load-no-cell status=1"]),
    Pattern::Contains(&["cellvisor: raw command 4: no such cell"]),
    Pattern::Contains(&["cellvisor-demo: start-no-cell status=1"]),
    Pattern::Contains(&["cellvisor: raw command 5: no such cell"]),
    Pattern::Contains(&["cellvisor-demo: shutdown-no-cell status=1"]),
    Pattern::Contains(&["cellvisor: raw command 6: no such cell"]),
    Pattern::Contains(&["cellvisor-demo: destroy-no-cell status=1"]),
    Pattern::Contains(&["cellvisor-demo: destroy-id-wraps status=1"]),
    Pattern::Contains(&["cellvisor: raw command 8: no such cell"]),
    Pattern::Contains(&["cellvisor-demo: stats-no-cell status=1"]),
    Pattern::Contains(&["cellvisor-demo: hostile-create status=0"]),
    Pattern::Contains(&["cellvisor-demo: load-address-max status=1"]),
    Pattern::Contains(&["cellvisor-demo: load-address-outside status=1"]),
    Pattern::Contains(&["cellvisor-demo: load-length-max status=1"]),
    Pattern::Contains(&["cellvisor-demo: load-length-4g status=1"]),
    Pattern::Contains(&["cellvisor-demo: load-offset-max status=1"]),
    Pattern::Contains(&["cellvisor-demo: load-offset-4g status=1"]),
    Pattern::Contains(&["cellvisor-demo: load-root status=1"]),
    Pattern::Contains(&["cellvisor-demo: after-loads state=created"]),
    Pattern::Contains(&["cellvisor-demo: silent-start status=0"]),
    // A timeout too large to count in timer ticks must not wrap to a short one.
    Pattern::Contains(&["cellvisor: raw command 5: invalid argument"]),
    Pattern::Contains(&["cellvisor-demo: shutdown-timeout-huge status=1"]),
    Pattern::Contains(&["cellvisor-demo: shutdown-timeout-huge-again status=1"]),
    Pattern::Contains(&["cellvisor-demo: after-huge-timeout state=running"]),
    Pattern::Contains(&["cellvisor-demo: hostile-destroy status=0"]),
    Pattern::Contains(&["cellvisor: raw command 9: invalid argument"]),
    Pattern::Contains(&["cellvisor-demo: console-beyond status=1"]),
    Pattern::Contains(&["cellvisor-demo: raw-commands state unchanged"]),
    // A 32-bit process outside the root cell: SIGBUS on every CPU, the CPUs go on.
    Pattern::Contains(&["devmem32: 0x7f000000 = 0x"]),
    Pattern::Contains(&["cellvisor-demo: devmem32-inside status=0"]),
    Pattern::Contains(&["cellvisor-demo: devmem64-outside status=135"]),
    Pattern::Contains(&["cellvisor-demo: devmem32-outside cpu=0 status=135"]),
    Pattern::Contains(&["cellvisor-demo: devmem32-outside cpu=1 status=135"]),
    Pattern::Contains(&["cellvisor-demo: devmem32-outside cpu=2 status=135"]),
    Pattern::Contains(&["cellvisor-demo: devmem32-outside cpu={last} status=135"]),
    Pattern::Contains(&["cellvisor-demo: cpus online=0-{last} after devmem32"]),
    Pattern::Contains(&["cellvisor-demo: root responsive"]),
    Pattern::Contains(&["cellvisor-demo: devmem32 state unchanged"]),
    // The hypervisor's notes about the root cell's faults stay within its budget: those over
    // it are counted and reported on the UART, and few reach the console ring.
    Pattern::Contains(&[
        "cellvisor: cell \"{root}\": ",
        " more notes were suppressed",
    ]),
    Pattern::Contains(&["cellvisor-demo: note-flood bounded"]),
    Pattern::Contains(&["cellvisor-demo: root responsive after the flood"]),
    Pattern::Contains(&["cellvisor-initramfs: script hostile-root done status=0"]),
    Pattern::Contains(&[DMESG_DONE]),
    Pattern::StartsWith("cellvisor: trap counters"),
];

/// What `/init` runs in the `run-demo` cases: what `cargo xtask run --demo` runs, then the
/// shell.
const RUN_DEMO_ACTIONS: &str = "script:demo-start";

/// The line after which `cargo xtask run --demo` hands the shell over.
const DEMO_RUNS: &str = "cellvisor-demo: the demo cell runs";

/// What the `run-demo` cases type at the shell: the demo cell must be listed as running (the
/// result line is made by the shell, so the echo of the typed line does not match it), then
/// leaving the shell powers off.
const RUN_DEMO_TYPED: Typed = Typed {
    after: DEMO_RUNS,
    text: "cellvisor cell list | grep -q 'demo *running'; echo demo-$(echo listed) status=$?\r\
           exit\r",
};

/// `cargo xtask run --demo`: the shell comes with the demo cell running, and takes commands.
const RUN_DEMO: &[Pattern] = &[
    BANNER,
    Pattern::Contains(&[MARKER]),
    Pattern::Contains(&["cellvisor-demo: start status=0"]),
    Pattern::Contains(&[DEMO_RUNS]),
    Pattern::Contains(&["demo-listed status=0"]),
    Pattern::StartsWith("cellvisor: trap counters"),
];

/// How long a cell case may take by default.
const CELLS_TIMEOUT: Duration = Duration::from_secs(240);

/// Console texts that fail a normal boot at once instead of at the timeout.
const BOOT_FAILS_ON: &[&str] = &["FATAL"];
/// ... a bare Linux boot.
const BARE_FAILS_ON: &[&str] = &["Kernel panic"];
/// ... a root-cell boot.
const ROOT_CELL_FAILS_ON: &[&str] = &["FATAL", "Kernel panic"];
/// ... a cell case.
const CELLS_FAILS_ON: &[&str] = &[
    "FATAL",
    "Kernel panic",
    "cellvisor-demo: cycles memory leaked",
    "cellvisor-demo: hostile memory leaked",
    "cellvisor-demo: soak failed",
];

/// What a case boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Boots {
    /// The hypervisor image alone.
    Hypervisor(Kind),
    /// Linux without the hypervisor.
    Bare,
    /// The hypervisor with Linux as its root cell.
    RootCell,
}

/// When a case ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
    /// Once the expected lines have appeared; QEMU is killed then.
    Expected,
    /// When QEMU exits by itself, which it must do with status 0 after the expected lines.
    Exit,
}

/// In which order the expected lines must appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// One after the other (a line may satisfy several consecutive ones).
    InOrder,
    /// In any order.
    AnyOrder,
}

/// What is checked on the console log of a case that passed the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// The root cell's MemTotal is at most its RAM in the system configuration, and at least
    /// that less what the kernel keeps for itself.
    MemTotal,
    /// The kernel logged no problem that the bare boot of the same machine did not.
    DmesgLikeBare,
    /// The machine gets a second serial port (UART1, kept in
    /// `target/system-tests/<case>.uart1.log`), which must print a line containing this.
    SecondUart(&'static str),
    /// `/init` was reached within this much host time from QEMU's start.
    InitWithin(Duration),
    /// The case's [`Typed::after`] line came within this much host time from QEMU's start.
    TypedWithin(Duration),
}

/// Text typed on the console once a line containing `after` appeared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Typed {
    after: &'static str,
    text: &'static str,
}

/// One system test.
#[derive(Debug, Clone, Copy)]
struct Case<'a> {
    board: &'a str,
    /// GIC version; `None`: the board's default.
    gic: Option<u32>,
    /// CPU count; `None`: the board's default.
    smp: Option<u32>,
    /// CPU model; `None`: the board's default (boards with a fixed model have none).
    cpu: Option<&'static str>,
    boots: Boots,
    /// The `/init` actions of a Linux boot, added to the board's kernel command line.
    actions: Option<&'static str>,
    expect: &'static [Pattern],
    order: Order,
    until: Until,
    checks: &'static [Check],
    fails_on: &'static [&'static str],
    /// The word in the case name; `None`: from what it boots ([`Case::kind`]).
    label: Option<&'static str>,
    /// How long it may take unless `--system-timeout` says; `None`: the default of its kind.
    timeout: Option<Duration>,
    /// What is typed on the console, and when.
    typed: Option<Typed>,
}

impl<'a> Case<'a> {
    const fn boot(board: &'a str, gic: Option<u32>, smp: u32, cpu: Option<&'static str>) -> Self {
        Self {
            board,
            gic,
            smp: Some(smp),
            cpu,
            boots: Boots::Hypervisor(Kind::Normal),
            actions: None,
            expect: BOOT,
            order: Order::InOrder,
            until: Until::Expected,
            checks: &[],
            fails_on: BOOT_FAILS_ON,
            label: None,
            timeout: None,
            typed: None,
        }
    }

    /// The x86 boot so far: long mode, SVM found, one world switch ([`X86_SVM`]).
    const fn x86_svm(board: &'a str, smp: u32, cpu: &'static str) -> Self {
        Self {
            expect: X86_SVM,
            fails_on: &["hypervisor bug", "invalid guest state", "exit information"],
            label: Some("svm"),
            ..Self::boot(board, None, smp, Some(cpu))
        }
    }

    /// The x86 fault-injection image ([`X86_FAULT`]).
    const fn x86_fault(board: &'a str, smp: u32, cpu: &'static str) -> Self {
        Self {
            boots: Boots::Hypervisor(Kind::FaultInjection),
            expect: X86_FAULT,
            fails_on: &[],
            label: Some("fault"),
            ..Self::boot(board, None, smp, Some(cpu))
        }
    }

    /// Debian's amd64 kernel without the hypervisor: the baseline of
    /// [`Case::x86_root_cell`].
    const fn x86_bare(board: &'a str, smp: u32, cpu: &'static str) -> Self {
        Self {
            expect: X86_BARE,
            ..Self::bare(board, None, smp, Some(cpu))
        }
    }

    /// Debian's amd64 kernel as the root cell ([`X86_ROOT_CELL`]).
    const fn x86_root_cell(board: &'a str, smp: u32, cpu: &'static str) -> Self {
        Self {
            boots: Boots::RootCell,
            actions: Some(X86_ROOT_CELL_ACTIONS),
            expect: X86_ROOT_CELL,
            order: Order::AnyOrder,
            until: Until::Exit,
            // The x86 timer-demo on COM2: 64-bit mode, its TSC-deadline timer, the latency
            // summary after 1000 interrupts.
            checks: &[
                Check::DmesgLikeBare,
                Check::MemTotal,
                Check::SecondUart("timer-demo: samples=1000 latency ns min="),
                Check::SecondUart("uart-demo: COM2 interrupt through IOAPIC pin 3 received"),
                // pci-demo: only its function answers; BAR 0, the device and its MSI work.
                Check::SecondUart("pci-demo: bus 0: 00:05.0 1234:11e8, 1 function(s)"),
                Check::SecondUart("pci-demo: ECAM: 00:05.0 1234:11e8, 00:00.0 ffff:ffff"),
                Check::SecondUart("pci-demo: BAR 0 at 0xfea00000, 1024 KiB"),
                Check::SecondUart("pci-demo: edu 0x010000ed: liveness ok, 10! = 3628800"),
                Check::SecondUart("pci-demo: MSI vector 0x42 received"),
                // smp-demo: INIT, start-up and NMI IPIs between the cell's own CPUs.
                Check::SecondUart("smp-demo: AP up after INIT and start-up IPI, vector 0x1"),
                Check::SecondUart("smp-demo: NMI to the AP received"),
                Check::SecondUart("smp-demo: AP stopped by INIT and up again: 2 starts"),
                Check::SecondUart("smp-demo: shutdown approved"),
            ],
            fails_on: X86_ROOT_CELL_FAILS_ON,
            ..Self::boot(board, None, smp, Some(cpu))
        }
    }

    const fn fault(board: &'a str, gic: Option<u32>, smp: u32) -> Self {
        Self {
            boots: Boots::Hypervisor(Kind::FaultInjection),
            cpu: None,
            expect: FAULT,
            fails_on: &[],
            ..Self::boot(board, gic, smp, None)
        }
    }

    const fn bare(board: &'a str, gic: Option<u32>, smp: u32, cpu: Option<&'static str>) -> Self {
        Self {
            boots: Boots::Bare,
            actions: Some(BARE_ACTIONS),
            expect: BARE,
            order: Order::AnyOrder,
            until: Until::Exit,
            fails_on: BARE_FAILS_ON,
            ..Self::boot(board, gic, smp, cpu)
        }
    }

    const fn root_cell(
        board: &'a str,
        gic: Option<u32>,
        smp: u32,
        cpu: Option<&'static str>,
    ) -> Self {
        Self {
            boots: Boots::RootCell,
            actions: Some(ROOT_CELL_ACTIONS),
            expect: ROOT_CELL,
            order: Order::AnyOrder,
            until: Until::Exit,
            checks: &[Check::MemTotal, Check::DmesgLikeBare],
            fails_on: ROOT_CELL_FAILS_ON,
            ..Self::boot(board, gic, smp, cpu)
        }
    }

    const fn reboot(board: &'a str, gic: Option<u32>, smp: u32, cpu: Option<&'static str>) -> Self {
        Self {
            boots: Boots::RootCell,
            actions: Some(REBOOT_ACTIONS),
            expect: REBOOT,
            fails_on: ROOT_CELL_FAILS_ON,
            ..Self::boot(board, gic, smp, cpu)
        }
    }

    /// A root cell timed from QEMU's start to `/init` on the host clock, under QEMU's default
    /// multi-threaded TCG (as every case runs); `label` tells the runs of a machine apart.
    const fn init_time(board: &'a str, gic: Option<u32>, label: &'static str) -> Self {
        Self {
            actions: Some(INIT_TIME_ACTIONS),
            expect: INIT_TIME,
            checks: &[Check::InitWithin(INIT_TIME_LIMIT)],
            label: Some(label),
            ..Self::root_cell(board, gic, 4, None)
        }
    }

    /// `cargo xtask run --demo` as a user runs it: the demo cell starts and the shell comes
    /// within the time limit of the init-time cases, and takes commands.
    const fn run_demo(board: &'a str, gic: Option<u32>) -> Self {
        Self {
            actions: Some(RUN_DEMO_ACTIONS),
            expect: RUN_DEMO,
            checks: &[
                Check::SecondUart(TIMER_DEMO_LINE),
                Check::TypedWithin(INIT_TIME_LIMIT),
            ],
            fails_on: CELLS_FAILS_ON,
            label: Some("run-demo"),
            timeout: Some(CELLS_TIMEOUT),
            typed: Some(RUN_DEMO_TYPED),
            ..Self::root_cell(board, gic, 4, None)
        }
    }

    /// A root-cell case that manages cells with the `cellvisor` tool (`--cells`).
    const fn cells(
        board: &'a str,
        gic: Option<u32>,
        cpu: Option<&'static str>,
        label: &'static str,
        actions: &'static str,
        expect: &'static [Pattern],
        checks: &'static [Check],
    ) -> Self {
        Self {
            actions: Some(actions),
            expect,
            checks,
            fails_on: CELLS_FAILS_ON,
            label: Some(label),
            timeout: Some(CELLS_TIMEOUT),
            ..Self::root_cell(board, gic, 4, cpu)
        }
    }

    /// The word in the case name for what it boots.
    fn kind(&self) -> &'static str {
        if let Some(label) = self.label {
            return label;
        }
        match (self.boots, self.actions) {
            (Boots::Hypervisor(Kind::Normal), _) => "boot",
            (Boots::Hypervisor(Kind::FaultInjection), _) => "fault",
            (Boots::Bare, _) => "bare",
            (Boots::RootCell, Some(REBOOT_ACTIONS)) => "reboot",
            (Boots::RootCell, _) => "linux",
        }
    }
}

const CASES: &[Case<'static>] = &[
    Case::boot("qemu-arm64", Some(2), 4, Some("cortex-a57")),
    Case::boot("qemu-arm64", Some(3), 4, Some("cortex-a57")),
    Case::boot("qemu-arm64", Some(3), 8, Some("max")),
    Case::boot("zcu102", None, 4, None),
    Case::fault("qemu-arm64", Some(3), 4),
    Case::fault("zcu102", None, 4),
    // Each root-cell case after the bare case of the same machine, its baseline.
    Case::bare("qemu-arm64", Some(3), 4, Some("cortex-a57")),
    Case::root_cell("qemu-arm64", Some(3), 4, Some("cortex-a57")),
    Case::bare("qemu-arm64", Some(2), 4, Some("cortex-a57")),
    Case::root_cell("qemu-arm64", Some(2), 4, Some("cortex-a57")),
    Case::bare("zcu102", None, 4, None),
    Case::root_cell("zcu102", None, 4, None),
    Case::reboot("qemu-arm64", Some(3), 4, Some("cortex-a57")),
    // Three boots in a row of each machine, each within INIT_TIME_LIMIT to /init.
    Case::init_time("qemu-arm64", Some(3), "init-time-1"),
    Case::init_time("qemu-arm64", Some(3), "init-time-2"),
    Case::init_time("qemu-arm64", Some(3), "init-time-3"),
    Case::init_time("qemu-arm64", Some(2), "init-time-1"),
    Case::init_time("qemu-arm64", Some(2), "init-time-2"),
    Case::init_time("qemu-arm64", Some(2), "init-time-3"),
    Case::init_time("zcu102", None, "init-time-1"),
    Case::init_time("zcu102", None, "init-time-2"),
    Case::init_time("zcu102", None, "init-time-3"),
    // x86, so far: the boot CPU in long mode and one SVM world switch (issue 15).
    Case::x86_svm("qemu-x86", 4, "EPYC"),
    Case::x86_fault("qemu-x86", 4, "EPYC"),
    // Debian's amd64 kernel bare, then as the root cell.
    Case::x86_bare("qemu-x86", 4, "EPYC"),
    Case::x86_root_cell("qemu-x86", 4, "EPYC"),
];

/// The cases of `--cells`: the root cell manages cells with the `cellvisor` tool. Each after
/// the bare case of the same machine in [`CASES`], its kernel-log baseline.
const CELL_CASES: &[Case<'static>] = &[
    Case::cells(
        "qemu-arm64",
        Some(3),
        Some("cortex-a57"),
        "cells-demo",
        CELLS_DEMO_ACTIONS,
        CELLS_DEMO,
        &[Check::DmesgLikeBare, Check::SecondUart(TIMER_DEMO_LINE)],
    ),
    Case::cells(
        "qemu-arm64",
        Some(2),
        Some("cortex-a57"),
        "cells-demo",
        CELLS_DEMO_ACTIONS,
        CELLS_DEMO,
        &[Check::DmesgLikeBare, Check::SecondUart(TIMER_DEMO_LINE)],
    ),
    Case::cells(
        "zcu102",
        None,
        None,
        "cells-demo",
        CELLS_DEMO_ACTIONS,
        CELLS_DEMO,
        &[Check::DmesgLikeBare, Check::SecondUart(TIMER_DEMO_LINE)],
    ),
    Case::cells(
        "qemu-arm64",
        Some(3),
        Some("cortex-a57"),
        "cells-cycles",
        CELLS_CYCLES_ACTIONS,
        CELLS_CYCLES,
        &[
            Check::DmesgLikeBare,
            Check::SecondUart("timer-demo: started"),
        ],
    ),
    Case::cells(
        "qemu-arm64",
        Some(3),
        Some("cortex-a57"),
        "cells-wild",
        CELLS_WILD_ACTIONS,
        CELLS_WILD,
        &[
            Check::DmesgLikeBare,
            Check::SecondUart("wild-demo: writing outside my memory"),
        ],
    ),
    Case::cells(
        "zcu102",
        None,
        None,
        "cells-wild",
        CELLS_WILD_ACTIONS,
        CELLS_WILD,
        &[
            Check::DmesgLikeBare,
            Check::SecondUart("wild-demo: writing outside my memory"),
        ],
    ),
    Case::cells(
        "qemu-arm64",
        Some(3),
        Some("cortex-a57"),
        "cells-bad-input",
        CELLS_BAD_INPUT_ACTIONS,
        CELLS_BAD_INPUT,
        &[
            Check::DmesgLikeBare,
            Check::SecondUart("stubborn-demo: shutdown denied"),
        ],
    ),
    Case::cells(
        "zcu102",
        None,
        None,
        "cells-cycles",
        CELLS_CYCLES_ACTIONS,
        CELLS_CYCLES,
        &[
            Check::DmesgLikeBare,
            Check::SecondUart("timer-demo: started"),
        ],
    ),
    Case::cells(
        "zcu102",
        None,
        None,
        "cells-bad-input",
        CELLS_BAD_INPUT_ACTIONS,
        CELLS_BAD_INPUT,
        &[
            Check::DmesgLikeBare,
            Check::SecondUart("stubborn-demo: shutdown denied"),
        ],
    ),
    Case::cells(
        "qemu-arm64",
        Some(3),
        Some("cortex-a57"),
        "cells-linux",
        CELLS_LINUX_ACTIONS,
        CELLS_LINUX,
        LINUX_CELL_CHECKS,
    ),
    Case::cells(
        "qemu-arm64",
        Some(2),
        Some("cortex-a57"),
        "cells-linux",
        CELLS_LINUX_ACTIONS,
        CELLS_LINUX,
        LINUX_CELL_CHECKS,
    ),
    Case::cells(
        "zcu102",
        None,
        None,
        "cells-linux",
        CELLS_LINUX_ACTIONS,
        CELLS_LINUX,
        LINUX_CELL_CHECKS,
    ),
    Case {
        timeout: Some(CELLS_HOSTILE_TIMEOUT),
        ..Case::cells(
            "qemu-arm64",
            Some(3),
            Some("cortex-a57"),
            "cells-hostile",
            CELLS_HOSTILE_ACTIONS,
            CELLS_HOSTILE_V3,
            &[Check::DmesgLikeBare, Check::SecondUart(HOSTILE_DEMO_LINE)],
        )
    },
    Case {
        timeout: Some(CELLS_HOSTILE_TIMEOUT),
        ..Case::cells(
            "qemu-arm64",
            Some(2),
            Some("cortex-a57"),
            "cells-hostile",
            CELLS_HOSTILE_ACTIONS,
            CELLS_HOSTILE_V2,
            &[Check::DmesgLikeBare, Check::SecondUart(HOSTILE_DEMO_LINE)],
        )
    },
    Case::cells(
        "qemu-arm64",
        Some(3),
        Some("cortex-a57"),
        "cells-soak",
        CELLS_SOAK_ACTIONS,
        CELLS_SOAK,
        &[
            Check::DmesgLikeBare,
            Check::SecondUart("stubborn-demo: shutdown denied"),
        ],
    ),
    Case::cells(
        "qemu-arm64",
        Some(3),
        Some("cortex-a57"),
        "cells-hostile-root",
        CELLS_HOSTILE_ROOT_ACTIONS,
        CELLS_HOSTILE_ROOT,
        &[Check::DmesgLikeBare],
    ),
    // `cargo xtask run --demo`, with commands typed at its shell.
    Case::run_demo("qemu-arm64", Some(3)),
    Case::run_demo("qemu-arm64", Some(2)),
    Case::run_demo("zcu102", None),
    // The Arm boards' wrong input on x86, with its own stubborn-demo for the vote.
    Case::cells(
        "qemu-x86",
        None,
        Some("EPYC"),
        "cells-bad-input",
        CELLS_BAD_INPUT_ACTIONS,
        X86_CELLS_BAD_INPUT,
        &[Check::DmesgLikeBare],
    ),
];

/// A case bound to its board, with the patterns filled in (but for the system
/// configuration's facts, see [`Resolved::expected`]).
#[derive(Debug)]
struct Resolved<'a> {
    name: String,
    board: &'a Board,
    boots: Boots,
    options: Options,
    /// The kernel command line of a Linux boot, `{hypervisor}` still to be filled.
    append: Option<String>,
    expect: Vec<Expected>,
    order: Order,
    until: Until,
    checks: &'static [Check],
    fails_on: &'static [&'static str],
    /// The name of the bare case of the same machine (the same for a bare case).
    baseline: String,
    /// The case's own default timeout.
    timeout: Option<Duration>,
    /// What is typed on the console, and when.
    typed: Option<Typed>,
}

impl Resolved<'_> {
    /// Fills in what comes from the system configuration.
    fn expected(&self, facts: Option<&SystemFacts>) -> Vec<Expected> {
        let Some(facts) = facts else {
            return self.expect.clone();
        };
        self.expect
            .iter()
            .map(|expected| Expected {
                texts: expected
                    .texts
                    .iter()
                    .map(|text| fill_facts(text, facts))
                    .collect(),
                address: expected.address.map(|_| Some(facts.hypervisor_start)),
                ..expected.clone()
            })
            .collect()
    }

    /// How long the case may take, and how long its console may stay silent.
    fn limits(&self, timeout: Option<Duration>) -> (Duration, Option<Duration>) {
        match self.boots {
            Boots::Hypervisor(_) => (timeout.unwrap_or(HYPERVISOR_TIMEOUT), None),
            Boots::Bare | Boots::RootCell => {
                let timeout = timeout.or(self.timeout).unwrap_or(LINUX_TIMEOUT);
                (timeout, Some(LINUX_SILENCE.min(timeout)))
            }
        }
    }
}

fn fill_facts(text: &str, facts: &SystemFacts) -> String {
    text.replace("{root}", &facts.root_cell)
        .replace("{hypervisor}", &format!("{:#x}", facts.hypervisor_start))
}

/// How an expected line is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Match {
    Exact,
    Contains,
    StartsWith,
}

#[derive(Debug, Clone)]
struct Expected {
    how: Match,
    texts: Vec<String>,
    /// A number the line must hold in hex: `Some(None)` until the system configuration is known.
    address: Option<Option<u64>>,
}

impl Expected {
    fn matches(&self, line: &str) -> bool {
        let text = match self.how {
            Match::Exact => line.trim() == self.texts[0],
            Match::StartsWith => line.trim_start().starts_with(self.texts[0].as_str()),
            Match::Contains => self.texts.iter().all(|text| line.contains(text.as_str())),
        };
        text && match self.address {
            None => true,
            Some(None) => false,
            Some(Some(address)) => hex_numbers(line).any(|n| n == address),
        }
    }
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.how {
            Match::Exact => write!(f, "the line {:?}", self.texts[0])?,
            Match::StartsWith => write!(f, "a line starting with {:?}", self.texts[0])?,
            Match::Contains => {
                f.write_str("a line containing ")?;
                for (index, text) in self.texts.iter().enumerate() {
                    if index > 0 {
                        f.write_str(" and ")?;
                    }
                    write!(f, "{text:?}")?;
                }
            }
        }
        match self.address {
            None => Ok(()),
            Some(None) => f.write_str(" and the hypervisor's start address"),
            Some(Some(address)) => write!(f, " and the address {address:#x}"),
        }
    }
}

/// The `0x` hex numbers in `line`.
fn hex_numbers(line: &str) -> impl Iterator<Item = u64> + '_ {
    line.match_indices("0x").filter_map(|(at, _)| {
        let digits = &line[at + 2..];
        let end = digits
            .find(|c: char| !c.is_ascii_hexdigit())
            .unwrap_or(digits.len());
        u64::from_str_radix(&digits[..end], 16).ok()
    })
}

/// The cases to run: [`CASES`], then default cases for the boards that [`CASES`] leaves out,
/// then with `cells` the [`CELL_CASES`] of the boards there are.
fn cases(boards: &[Board], cells: bool) -> Result<Vec<Resolved<'_>>> {
    let mut cases: Vec<Case<'_>> = CASES.to_vec();
    for board in boards {
        if !CASES.iter().any(|case| case.board == board.name) {
            cases.push(Case::boot(&board.name, None, board.smp, None));
            cases.push(Case::fault(&board.name, None, board.smp));
            // The root-cell case hands the last CPU back and forth: it needs two.
            if board.linux.is_some() && board.smp >= 2 {
                cases.push(Case::bare(&board.name, None, board.smp, None));
                cases.push(Case::root_cell(&board.name, None, board.smp, None));
            }
        }
    }
    if cells {
        cases.extend(
            CELL_CASES
                .iter()
                .filter(|case| boards.iter().any(|b| b.name == case.board)),
        );
    }
    cases.iter().map(|case| resolve(boards, case)).collect()
}

fn resolve<'a>(boards: &'a [Board], case: &Case<'_>) -> Result<Resolved<'a>> {
    let board = board::find(boards, case.board).context("system test case")?;
    let gic = board.gic(case.gic).context("system test case")?;
    let smp = case.smp.unwrap_or(board.smp);
    let cpu = case.cpu.map(str::to_owned).or_else(|| board.cpu.clone());
    let fill = |text: &str| {
        text.replace("{version}", &board.version)
            .replace("{board}", &board.name)
            .replace("{smp}", &smp.to_string())
            .replace("{last}", &smp.saturating_sub(1).to_string())
    };
    let expect = case
        .expect
        .iter()
        .map(|pattern| match pattern {
            Pattern::Line(line) => Expected {
                how: Match::Exact,
                texts: vec![fill(line)],
                address: None,
            },
            Pattern::StartsWith(start) => Expected {
                how: Match::StartsWith,
                texts: vec![fill(start)],
                address: None,
            },
            Pattern::Contains(texts) => Expected {
                how: Match::Contains,
                texts: texts.iter().map(|t| fill(t)).collect(),
                address: None,
            },
            Pattern::ContainsHypervisorAddress(texts) => Expected {
                how: Match::Contains,
                texts: texts.iter().map(|t| fill(t)).collect(),
                address: Some(None),
            },
        })
        .collect();
    let append = match case.actions {
        None => None,
        Some(actions) => {
            // Without a command line the board boots no Linux: `linux()` says so.
            let base = match board.linux_append() {
                Some(base) => base,
                None => {
                    &board
                        .linux()
                        .with_context(|| {
                            format!("system test case {} on {}", case.kind(), board.name)
                        })?
                        .append
                }
            };
            let word = format!("{}={}", initramfs::ACTIONS, fill(actions));
            Some(if base.trim().is_empty() {
                word
            } else {
                format!("{} {word}", base.trim_end())
            })
        }
    };
    let mut machine = match gic {
        Some(gic) => format!("gicv{gic}-smp{smp}"),
        None => format!("smp{smp}"),
    };
    if let Some(cpu) = &cpu {
        write!(machine, "-{cpu}").expect("writing to a String");
    }
    Ok(Resolved {
        name: format!("{}-{}-{machine}", board.name, case.kind()),
        baseline: format!("{}-bare-{machine}", board.name),
        board,
        boots: case.boots,
        options: Options {
            gic,
            smp: Some(smp),
            cpu: case.cpu.map(str::to_owned),
            memory: None,
            icount: false,
        },
        append,
        expect,
        order: case.order,
        until: case.until,
        checks: case.checks,
        fails_on: case.fails_on,
        timeout: case.timeout,
        typed: case.typed,
    })
}

/// Fails unless the Rust targets and QEMU binaries of every case are installed: the board's,
/// and for a Linux boot the one of its root cell's `cellvisor` tool.
pub fn check_tools(workspace: &Workspace) -> Result<()> {
    for case in cases(&workspace.boards, true)? {
        crate::require_target(&case.board.target)?;
        if matches!(case.boots, Boots::Bare | Boots::RootCell) {
            if let Some(arch) = Arch::of_target(&case.board.target) {
                crate::require_target(arch.tool_target().triple)?;
            }
        }
        qemu::require(&case.board.qemu)?;
    }
    Ok(())
}

/// What the cases share: the images, the Linux files and the baselines of the bare boots.
struct Shared {
    images: Vec<(String, Kind, Image)>,
    /// The Linux files of each board, its initramfs with the `cellvisor` tool.
    linux: HashMap<String, linux::Files>,
    /// The normalised kernel-log problems of each bare case that passed, by case name.
    baselines: HashMap<String, Vec<String>>,
}

/// How many system tests passed and failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    /// Cases that passed.
    pub passed: usize,
    /// Cases that failed.
    pub failed: usize,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} passed, {} failed", self.passed, self.failed)
    }
}

/// The bench's end-to-end case (it boots its own machines; with `cells`, on qemu-arm64).
const BENCH_SMOKE: &str = "bench-smoke";

/// The cases whose name contains `only` (all without it), each with the bare case its
/// kernel-log check compares with, which runs first. Fails if none matches.
fn select<'a>(cases: Vec<Resolved<'a>>, only: Option<&str>) -> Result<Vec<Resolved<'a>>> {
    let Some(only) = only else {
        return Ok(cases);
    };
    let wanted = |case: &Resolved<'_>| case.name.contains(only);
    let baselines: Vec<String> = cases
        .iter()
        .filter(|case| wanted(case) && case.checks.contains(&Check::DmesgLikeBare))
        .map(|case| case.baseline.clone())
        .collect();
    let selected: Vec<Resolved<'a>> = cases
        .into_iter()
        .filter(|case| wanted(case) || baselines.contains(&case.name))
        .collect();
    if selected.is_empty() && !BENCH_SMOKE.contains(only) && !crate::bochs::NAME.contains(only) {
        bail!("no system test name contains {only:?}");
    }
    Ok(selected)
}

/// Builds the images and runs the cases (with `cells`, the [`CELL_CASES`] too; with `only`,
/// those whose name contains it), one after the other, all of them even after a failure.
/// `timeout` bounds every case; by default hypervisor-only cases get 60 s, Linux boots
/// 120 s, cell cases 240 s. Returns how many passed and failed.
pub fn run(
    workspace: &Workspace,
    timeout: Option<Duration>,
    cells: bool,
    only: Option<&str>,
) -> Result<Summary> {
    let cases = select(cases(&workspace.boards, cells)?, only)?;
    check_tools(workspace)?;
    let bench_smoke = cells
        && workspace.boards.iter().any(|b| b.name == "qemu-arm64")
        && only.is_none_or(|only| BENCH_SMOKE.contains(only));
    // The x86 image on Intel VMX with EPT, in Bochs (QEMU has none).
    let bochs = workspace
        .boards
        .iter()
        .find(|b| b.name == "qemu-x86")
        .filter(|_| only.is_none_or(|only| crate::bochs::NAME.contains(only)));
    if bochs.is_some() {
        crate::bochs::require_tools()?;
    }
    let total = cases.len() + usize::from(bench_smoke) + usize::from(bochs.is_some());
    let mut number = cases.len();

    // Each image once, built and copied before the next build overwrites cargo's output.
    let mut shared = Shared {
        images: Vec::new(),
        linux: HashMap::new(),
        baselines: HashMap::new(),
    };
    for case in &cases {
        let kind = match case.boots {
            Boots::Hypervisor(kind) => kind,
            Boots::RootCell => Kind::Normal,
            Boots::Bare => continue,
        };
        if !shared
            .images
            .iter()
            .any(|(b, k, _)| *b == case.board.name && *k == kind)
        {
            let image = image::build(workspace, case.board, kind)?;
            shared.images.push((case.board.name.clone(), kind, image));
        }
    }
    for case in &cases {
        if case.boots != Boots::Bare && case.boots != Boots::RootCell {
            continue;
        }
        if Arch::of_target(&case.board.target).is_none() {
            bail!(
                "board {}: no Linux guest for its target {}",
                case.board.name,
                case.board.target
            );
        }
        if !shared.linux.contains_key(&case.board.name) {
            let (files, _) = linux::prepare_board(workspace, case.board, false)?;
            shared.linux.insert(case.board.name.clone(), files);
        }
    }

    let logs = workspace.target_dir.join("system-tests");
    fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let mut summary = Summary::default();
    let mut failures = Vec::new();
    for (number, case) in cases.iter().enumerate() {
        println!("==> system test {}/{total}: {}", number + 1, case.name);
        let start = Instant::now();
        let mut log = Vec::new();
        let outcome = run_one(workspace, case, &shared, timeout, &logs, &mut log);
        let seconds = start.elapsed().as_secs_f64();
        let log_path = logs.join(format!("{}.log", case.name));
        fs::write(&log_path, log.join("\n") + "\n")
            .with_context(|| format!("cannot write {}", log_path.display()))?;
        match outcome {
            Ok(timing) => {
                summary.passed += 1;
                println!("PASS {} in {seconds:.1} s{timing}", case.name);
                if case.boots == Boots::Bare {
                    shared
                        .baselines
                        .insert(case.name.clone(), dmesg_problems(&log));
                }
            }
            Err(error) => {
                summary.failed += 1;
                failures.push(case.name.clone());
                println!("FAIL {} in {seconds:.1} s: {error:#}", case.name);
                let tail = &log[log.len().saturating_sub(TAIL_LINES)..];
                println!(
                    "---- last {} console lines (all in {}) ----",
                    tail.len(),
                    workspace.relative(&log_path).display()
                );
                for line in tail {
                    println!("{line}");
                }
                println!("----");
            }
        }
    }
    // The tests that boot their own machines, after the cases.
    let mut extra = |name: &str, hint: &str, test: &mut dyn FnMut() -> Result<()>| {
        number += 1;
        println!("==> system test {number}/{total}: {name}");
        let start = Instant::now();
        let outcome = test();
        let seconds = start.elapsed().as_secs_f64();
        match outcome {
            Ok(()) => {
                summary.passed += 1;
                println!("PASS {name} in {seconds:.1} s");
            }
            Err(error) => {
                summary.failed += 1;
                failures.push(name.to_owned());
                println!("FAIL {name} in {seconds:.1} s: {error:#}{hint}");
            }
        }
    };
    if let Some(board) = bochs {
        extra(crate::bochs::NAME, "", &mut || {
            crate::bochs::boot_test(workspace, board)
        });
    }
    if bench_smoke {
        // The bench machinery end to end.
        extra(
            BENCH_SMOKE,
            " (consoles in target/system-tests/bench/)",
            &mut || crate::bench::smoke(workspace),
        );
    }
    if !failures.is_empty() {
        println!("failed system tests: {}", failures.join(" "));
    }
    Ok(summary)
}

/// Host times from QEMU's start to what a case waits for, if it came.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Timing {
    /// `/init` ([`MARKER`]) of a Linux boot.
    init: Option<Duration>,
    /// The line after which the case typed ([`Typed::after`]).
    typed: Option<Duration>,
}

impl std::fmt::Display for Timing {
    /// ` (/init after 4.1 s, typed after 6.3 s)`, or nothing.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = [("/init", self.init), ("typed", self.typed)]
            .into_iter()
            .filter_map(|(what, time)| {
                time.map(|time| format!("{what} after {:.1} s", time.as_secs_f64()))
            })
            .collect();
        if parts.is_empty() {
            Ok(())
        } else {
            write!(f, " ({})", parts.join(", "))
        }
    }
}

/// Fails unless `time` (of `what`, `None` if it never came) is within `limit`.
fn check_within(what: &str, time: Option<Duration>, limit: Duration) -> Result<()> {
    match time {
        Some(time) if time <= limit => Ok(()),
        Some(time) => bail!(
            "{what} after {:.1} s of host time, more than {} s",
            time.as_secs_f64(),
            limit.as_secs()
        ),
        None => bail!("{what} never came"),
    }
}

/// Sets up, boots and judges one case; returns the host times of what it waited for.
fn run_one(
    workspace: &Workspace,
    case: &Resolved<'_>,
    shared: &Shared,
    timeout: Option<Duration>,
    logs: &Path,
    log: &mut Vec<String>,
) -> Result<Timing> {
    let board = case.board;
    let shown = |path: &Path| workspace.relative(path).to_owned();
    let image = |kind: Kind| {
        shared
            .images
            .iter()
            .find(|(b, k, _)| *b == board.name && *k == kind)
            .map(|(_, _, image)| shown(&image.bin))
            .expect("built before the cases")
    };
    let mut facts = None;
    let boot = match case.boots {
        Boots::Hypervisor(kind) => Boot::Hypervisor {
            image: image(kind),
            dtb: None,
        },
        Boots::Bare | Boots::RootCell if board.multiboot.is_some() => {
            let files = shared
                .linux
                .get(&board.name)
                .expect("prepared before the cases");
            let mut linux = LinuxFiles {
                kernel: shown(&files.image),
                initrd: shown(&files.initramfs),
                dtb: None,
                append: case.append.clone().expect("Linux cases have actions"),
            };
            if case.boots == Boots::RootCell {
                let images = workspace.target_dir.join("images").join(&board.name);
                let config = images.join("system.bin");
                let (_, parsed) = boot::read_config("system-config", &config)?;
                let system = SystemFacts::new(&parsed);
                linux.append = fill_facts(&linux.append, &system);
                facts = Some(system);
                Boot::MultibootRootCell {
                    image: image(Kind::Normal),
                    config: shown(&config),
                    linux,
                }
            } else {
                Boot::Bare(linux)
            }
        }
        Boots::Bare | Boots::RootCell => {
            let files = shared
                .linux
                .get(&board.name)
                .expect("prepared before the cases");
            let gic = board.require_gic(case.options.gic)?;
            let images = workspace.target_dir.join("images").join(&board.name);
            let mut append = case.append.clone().expect("Linux cases have actions");
            let config = if case.boots == Boots::RootCell {
                let config = boot::board_config(board, gic, &images)?;
                let (_, parsed) = boot::read_config("system-config", &config)?;
                let system = SystemFacts::new(&parsed);
                append = fill_facts(&append, &system);
                facts = Some(system);
                Some(config)
            } else {
                None
            };
            let linux = LinuxFiles {
                kernel: shown(&files.image),
                initrd: shown(&files.initramfs),
                dtb: boot::board_dtb(board, &files.dtbs)?.map(|d| shown(&d)),
                append,
            };
            match config {
                None => Boot::Bare(linux),
                Some(config) => Boot::RootCell {
                    image: image(Kind::Normal),
                    config: shown(&config),
                    linux,
                },
            }
        }
    };
    let mut qemu = boot.qemu(board, &case.options)?;
    let second_uart = logs.join(format!("{}.uart1.log", case.name));
    if case
        .checks
        .iter()
        .any(|check| matches!(check, Check::SecondUart(_)))
    {
        if second_uart.exists() {
            fs::remove_file(&second_uart)
                .with_context(|| format!("cannot remove {}", second_uart.display()))?;
        }
        qemu = qemu.second_serial(&shown(&second_uart));
    }
    println!("    {qemu}");
    std::io::stdout().flush().ok();

    let (timeout, silence) = case.limits(timeout);
    let expect = case.expected(facts.as_ref());
    let timing = run_case(&qemu, case, &expect, timeout, silence, log)?;
    for check in case.checks {
        match check {
            Check::MemTotal => {
                check_memtotal(log, facts.as_ref().expect("root-cell cases have facts"))?
            }
            Check::DmesgLikeBare => {
                let Some(baseline) = shared.baselines.get(&case.baseline) else {
                    bail!(
                        "no baseline for the kernel-log check: the bare case {} did not pass",
                        case.baseline
                    );
                };
                check_dmesg(log, baseline)?;
            }
            Check::SecondUart(text) => {
                let output = fs::read(&second_uart).unwrap_or_default();
                check_second_uart(&String::from_utf8_lossy(&output), text).with_context(|| {
                    format!(
                        "second UART ({})",
                        workspace.relative(&second_uart).display()
                    )
                })?;
            }
            Check::InitWithin(limit) => check_within("/init", timing.init, *limit)?,
            Check::TypedWithin(limit) => {
                let what = case.typed.map_or("the line to type after", |t| t.after);
                check_within(&format!("{what:?}"), timing.typed, *limit)?;
            }
        }
    }
    Ok(timing)
}

/// Fails unless the second UART's output has a line containing `text`.
fn check_second_uart(output: &str, text: &str) -> Result<()> {
    if output.lines().any(|line| line.contains(text)) {
        return Ok(());
    }
    let last = output.lines().rev().find(|l| !l.trim().is_empty());
    bail!(
        "no line containing {text:?} ({})",
        match last {
            Some(line) => format!("its last line: {:?}", line.trim()),
            None => "it printed nothing".to_owned(),
        }
    )
}

/// Boots one case and reads its console until the expected lines have appeared (and, for
/// [`Until::Exit`], until QEMU exits). Every line read is appended to `log` (QEMU's own
/// messages prefixed with `[qemu] `). Types the case's [`Typed`] text once its line came.
/// Returns the host times from QEMU's start to the first line with [`MARKER`] (`/init` of a
/// Linux boot) and to the typing.
fn run_case(
    qemu: &Qemu,
    case: &Resolved<'_>,
    expect: &[Expected],
    timeout: Duration,
    silence: Option<Duration>,
    log: &mut Vec<String>,
) -> Result<Timing> {
    let start = Instant::now();
    let mut console = match case.typed {
        Some(_) => qemu.spawn_console_with_input()?,
        None => qemu.spawn_console()?,
    };
    let deadline = start + timeout;
    let mut timing = Timing::default();
    let mut seen = vec![false; expect.len()];
    let mut last_output = Instant::now();
    // What is still awaited, for messages.
    let waiting = |seen: &[bool]| -> String {
        let missing: Vec<String> = expect
            .iter()
            .zip(seen)
            .filter(|(_, seen)| !**seen)
            .map(|(e, _)| e.to_string())
            .collect();
        match (case.order, missing.len()) {
            (_, 0) => "QEMU to exit by itself".to_owned(),
            (Order::InOrder, _) | (_, 1) => missing[0].clone(),
            (Order::AnyOrder, n) => format!("{n} lines: {}", missing.join("; ")),
        }
    };
    let outcome = loop {
        let all_seen = seen.iter().all(|s| *s);
        if all_seen && case.until == Until::Expected {
            break Ok(());
        }
        let wait_until = silence.map_or(deadline, |s| deadline.min(last_output + s));
        match console.next_line(wait_until) {
            Next::Line(Stream::Stderr, line) => log.push(format!("[qemu] {line}")),
            Next::Line(Stream::Console, line) => {
                last_output = Instant::now();
                if timing.init.is_none() && line.contains(MARKER) {
                    timing.init = Some(last_output - start);
                }
                if let Some(typed) = case.typed {
                    if timing.typed.is_none() && line.contains(typed.after) {
                        timing.typed = Some(last_output - start);
                        if let Err(error) = console.type_text(typed.text) {
                            log.push(line);
                            break Err(error);
                        }
                    }
                }
                if let Some(text) = case.fails_on.iter().find(|text| line.contains(*text)) {
                    log.push(line);
                    break Err(anyhow::anyhow!(
                        "{text:?} on the console, before {}",
                        waiting(&seen)
                    ));
                }
                match case.order {
                    // One line may satisfy several consecutive expectations.
                    Order::InOrder => {
                        for (e, s) in expect.iter().zip(seen.iter_mut()).skip_while(|(_, s)| **s) {
                            if !e.matches(&line) {
                                break;
                            }
                            *s = true;
                        }
                    }
                    Order::AnyOrder => {
                        for (e, s) in expect.iter().zip(seen.iter_mut()) {
                            *s = *s || e.matches(&line);
                        }
                    }
                }
                log.push(line);
            }
            Next::Timeout if Instant::now() >= deadline => {
                break Err(anyhow::anyhow!(
                    "timed out after {} s waiting for {}",
                    timeout.as_secs(),
                    waiting(&seen)
                ))
            }
            Next::Timeout => {
                break Err(anyhow::anyhow!(
                    "no console output for {} s (hung?), waiting for {}",
                    silence.unwrap_or_default().as_secs(),
                    waiting(&seen)
                ))
            }
            Next::Closed => {
                let status = console.wait_exit(Duration::from_secs(5));
                let shown =
                    status.map_or_else(|| "an unknown status".to_owned(), |s| s.to_string());
                if !all_seen {
                    break Err(anyhow::anyhow!(
                        "QEMU exited ({shown}) before {}",
                        waiting(&seen)
                    ));
                }
                if status.is_some_and(|s| s.success()) {
                    break Ok(());
                }
                break Err(anyhow::anyhow!(
                    "QEMU exited with {shown}, expected exit status 0"
                ));
            }
        }
    };
    console.kill();
    outcome.map(|()| timing)
}

/// The kernel-log problems the `dmesg` action reported, normalised (see [`normalise_dmesg`]).
fn dmesg_problems(log: &[String]) -> Vec<String> {
    log.iter()
        .filter_map(|line| {
            let at = line.find(DMESG_LINE)?;
            Some(normalise_dmesg(&line[at + DMESG_LINE.len()..]))
        })
        .collect()
}

/// A kernel-log line without what differs from boot to boot: the `[   1.234567]` time stamp
/// and the CPU and PID numbers of warnings (`CPU: 2 PID: 57` becomes `CPU: N PID: N`).
fn normalise_dmesg(line: &str) -> String {
    let line = line.trim();
    let line = match line.strip_prefix('[').and_then(|rest| rest.split_once(']')) {
        Some((time, rest)) if time.trim().parse::<f64>().is_ok() => rest.trim_start(),
        _ => line,
    };
    let mut normal = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = ["CPU: ", "PID: "]
        .iter()
        .filter_map(|key| rest.find(key).map(|at| at + key.len()))
        .min()
    {
        normal.push_str(&rest[..at]);
        rest = &rest[at..];
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits > 0 {
            normal.push('N');
        }
        rest = &rest[digits..];
    }
    normal.push_str(rest);
    normal
}

/// The kernel's report of the bus error of the `devmem` action or of `/bin/devmem32` (a
/// user-space fault, e.g. `devmem[93]: unhandled exception: ...`, or on x86 `traps:
/// devmem[84] general protection fault ...`): expected in a root cell.
fn is_devmem_report(line: &str) -> bool {
    (line.contains("devmem[") || line.contains("devmem32["))
        && (line.contains("unhandled") || line.contains("general protection fault"))
}

/// Fails if the root cell's kernel logged problems that the bare boot did not.
fn check_dmesg(log: &[String], baseline: &[String]) -> Result<()> {
    let new: Vec<String> = dmesg_problems(log)
        .into_iter()
        .filter(|line| !baseline.contains(line) && !is_devmem_report(line))
        .collect();
    if !new.is_empty() {
        bail!(
            "the kernel logged {} problem(s) that the bare boot did not: {}",
            new.len(),
            new.join(" | ")
        );
    }
    Ok(())
}

/// Fails unless the MemTotal `/init` printed fits the root cell's RAM: at most all of it, at
/// least all of it less what the kernel keeps for itself.
fn check_memtotal(log: &[String], facts: &SystemFacts) -> Result<()> {
    const KEY: &str = "cellvisor-initramfs: memtotal=";
    let Some(kib) = log.iter().find_map(|line| {
        let rest = &line[line.find(KEY)? + KEY.len()..];
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        rest[..digits].parse::<u64>().ok()
    }) else {
        bail!("no line containing {KEY:?} and a number");
    };
    let ram = facts.root_ram / 1024;
    let reserve = (KERNEL_RESERVE + facts.root_ram / 64) / 1024;
    let low = ram.saturating_sub(reserve);
    if !(low..=ram).contains(&kib) {
        bail!(
            "MemTotal {kib} kB is not within {low}..={ram} kB: the root cell owns {ram} kB of \
             RAM (its memory regions that are neither `io` nor `loadable`), of which the \
             kernel may keep up to {reserve} kB"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board(name: &str, cpu: Option<&str>, gic_versions: Vec<u32>, linux: bool) -> Board {
        Board {
            name: name.to_owned(),
            package: format!("cellvisor-board-{name}"),
            version: "0.1.0".to_owned(),
            bin: format!("cellvisor-{name}"),
            target: "aarch64-unknown-none".to_owned(),
            qemu: "qemu-system-aarch64".to_owned(),
            machine: "m".to_owned(),
            gic_versions,
            cpu: cpu.map(str::to_owned),
            smp: 2,
            memory: "1G".to_owned(),
            devices: Vec::new(),
            dir: std::path::PathBuf::new(),
            linux: linux.then(|| crate::board::LinuxBoot {
                config_address: 0x409c_0000,
                kernel_address: 0x40a0_0000,
                system_config: "config/system-gicv{gic}.toml".to_owned(),
                append: format!("console={name}"),
                dtb: None,
                fixed_clock: None,
            }),
            multiboot: None,
        }
    }

    fn boards() -> Vec<Board> {
        vec![
            board("qemu-arm64", Some("cortex-a57"), vec![2, 3], true),
            board("zcu102", None, vec![2], true),
            Board {
                target: "x86_64-unknown-none".to_owned(),
                qemu: "qemu-system-x86_64".to_owned(),
                multiboot: Some(crate::board::MultibootLinux {
                    append: "console=ttyS0".to_owned(),
                }),
                ..board("qemu-x86", Some("EPYC"), vec![], false)
            },
            board("new", None, vec![3], false),
            board("newlinux", None, vec![3], true),
        ]
    }

    fn facts() -> SystemFacts {
        SystemFacts {
            hypervisor_start: 0x4020_0000,
            root_cell: "linux".to_owned(),
            root_ram: 0x3f80_0000,
        }
    }

    #[test]
    fn the_cell_cases_are_skipped_with_no_cells() {
        let boards = boards();
        let plain = cases(&boards, false).unwrap();
        let all = cases(&boards, true).unwrap();
        assert!(plain.iter().all(|c| !c.name.contains("-cells-")));
        let cells: Vec<&Resolved<'_>> = all[plain.len()..].iter().collect();
        // The run-demo cases have a test of their own.
        let names: Vec<&str> = cells
            .iter()
            .map(|c| c.name.as_str())
            .filter(|name| !name.contains("-run-demo-"))
            .collect();
        assert_eq!(
            names,
            [
                "qemu-arm64-cells-demo-gicv3-smp4-cortex-a57",
                "qemu-arm64-cells-demo-gicv2-smp4-cortex-a57",
                "zcu102-cells-demo-gicv2-smp4",
                "qemu-arm64-cells-cycles-gicv3-smp4-cortex-a57",
                "qemu-arm64-cells-wild-gicv3-smp4-cortex-a57",
                "zcu102-cells-wild-gicv2-smp4",
                "qemu-arm64-cells-bad-input-gicv3-smp4-cortex-a57",
                "zcu102-cells-cycles-gicv2-smp4",
                "zcu102-cells-bad-input-gicv2-smp4",
                "qemu-arm64-cells-linux-gicv3-smp4-cortex-a57",
                "qemu-arm64-cells-linux-gicv2-smp4-cortex-a57",
                "zcu102-cells-linux-gicv2-smp4",
                "qemu-arm64-cells-hostile-gicv3-smp4-cortex-a57",
                "qemu-arm64-cells-hostile-gicv2-smp4-cortex-a57",
                "qemu-arm64-cells-soak-gicv3-smp4-cortex-a57",
                "qemu-arm64-cells-hostile-root-gicv3-smp4-cortex-a57",
                "qemu-x86-cells-bad-input-smp4-EPYC",
            ]
        );
        for case in &cells {
            // Their baseline ran before them; their actions parse; they get more time.
            assert!(all.iter().any(|c| c.name == case.baseline), "{}", case.name);
            let append = fill_facts(case.append.as_deref().unwrap(), &facts());
            let word = append.split_whitespace().last().unwrap();
            initramfs::parse_actions_word(word).unwrap().unwrap();
            let timeout = if case.name.contains("-cells-hostile-gic") {
                CELLS_HOSTILE_TIMEOUT
            } else {
                CELLS_TIMEOUT
            };
            assert_eq!(case.limits(None).0, timeout);
            assert_eq!(
                case.limits(Some(Duration::from_secs(9))).0,
                Duration::from_secs(9)
            );
        }
        assert_eq!(
            cells[0].append.as_deref(),
            Some("console=qemu-arm64 cellvisor.actions=script:demo,dmesg,poweroff")
        );
        assert!(cells[0]
            .checks
            .contains(&Check::SecondUart("timer-demo: ticks=")));
        let expected: Vec<String> = cells[6]
            .expected(Some(&facts()))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(expected.contains(
            &"a line containing \"cellvisor: cell \\\"linux\\\": destroy: the root cell cannot be destroyed\""
                .to_owned()
        ), "{expected:?}");
        let demo = cells[0].expected(Some(&facts()));
        assert!(demo.iter().any(|e| e
            .matches("cellvisor-initramfs: script demo: cellvisor-demo: cpus online=0-3 after")));
    }

    #[test]
    fn a_cell_case_is_judged_by_the_script_lines() {
        let boards = boards();
        let all = cases(&boards, true).unwrap();
        let case = all
            .iter()
            .find(|c| c.name.contains("-cells-cycles-"))
            .unwrap();
        let expect = case.expected(Some(&facts()));
        let console = "echo 'cellvisor 0.1.0 on qemu-arm64: 4/4 CPUs at EL2'; \
             echo 'cellvisor-initramfs: script cycles: cellvisor-demo: cycles=20 failed=0 memory_free before=5 after=5'; \
             echo 'cellvisor-initramfs: script cycles: cellvisor-demo: cycles memory kept'; \
             echo 'cellvisor-initramfs: script cycles done status=0'; \
             echo 'cellvisor-initramfs: dmesg check done'; \
             echo 'cellvisor: trap counters'";
        let mut log = Vec::new();
        run_case(
            &Qemu::shell(&format!("{console}; exit 0")),
            case,
            &expect,
            Duration::from_secs(20),
            None,
            &mut log,
        )
        .unwrap();
        let leaked = "echo 'cellvisor 0.1.0 on qemu-arm64: 4/4 CPUs at EL2'; \
             echo 'cellvisor-initramfs: script cycles: cellvisor-demo: cycles memory leaked'; sleep 30";
        let error = run_case(
            &Qemu::shell(leaked),
            case,
            &expect,
            Duration::from_secs(20),
            None,
            &mut log,
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("\"cellvisor-demo: cycles memory leaked\" on the console"),
            "{error}"
        );
    }

    #[test]
    fn looks_for_the_demo_on_the_second_uart() {
        check_second_uart("boot\ntimer-demo: ticks=3\n", "timer-demo: ticks=").unwrap();
        let error = check_second_uart("hello\n\n", "timer-demo: ticks=").unwrap_err();
        assert_eq!(
            error.to_string(),
            "no line containing \"timer-demo: ticks=\" (its last line: \"hello\")"
        );
        let error = check_second_uart("", "x").unwrap_err();
        assert!(error.to_string().ends_with("(it printed nothing)"));
    }

    #[test]
    fn resolves_the_table_and_covers_every_board() {
        let boards = boards();
        let cases = cases(&boards, false).unwrap();
        // The init-time cases have a test of their own.
        let names: Vec<&str> = cases
            .iter()
            .map(|c| c.name.as_str())
            .filter(|name| !name.contains("-init-time-"))
            .collect();
        assert_eq!(
            names,
            [
                "qemu-arm64-boot-gicv2-smp4-cortex-a57",
                "qemu-arm64-boot-gicv3-smp4-cortex-a57",
                "qemu-arm64-boot-gicv3-smp8-max",
                "zcu102-boot-gicv2-smp4",
                "qemu-arm64-fault-gicv3-smp4-cortex-a57",
                "zcu102-fault-gicv2-smp4",
                "qemu-arm64-bare-gicv3-smp4-cortex-a57",
                "qemu-arm64-linux-gicv3-smp4-cortex-a57",
                "qemu-arm64-bare-gicv2-smp4-cortex-a57",
                "qemu-arm64-linux-gicv2-smp4-cortex-a57",
                "zcu102-bare-gicv2-smp4",
                "zcu102-linux-gicv2-smp4",
                "qemu-arm64-reboot-gicv3-smp4-cortex-a57",
                "qemu-x86-svm-smp4-EPYC",
                "qemu-x86-fault-smp4-EPYC",
                "qemu-x86-bare-smp4-EPYC",
                "qemu-x86-linux-smp4-EPYC",
                "new-boot-gicv3-smp2",
                "new-fault-gicv3-smp2",
                "newlinux-boot-gicv3-smp2",
                "newlinux-fault-gicv3-smp2",
                "newlinux-bare-gicv3-smp2",
                "newlinux-linux-gicv3-smp2",
            ]
        );
        assert_eq!(
            cases[2].expect[0].to_string(),
            "the line \"cellvisor 0.1.0 on qemu-arm64: 8/8 CPUs at EL2\""
        );
        // Every root-cell case comes after its baseline.
        for (index, case) in cases.iter().enumerate() {
            if case.checks.contains(&Check::DmesgLikeBare) {
                assert!(
                    cases[..index].iter().any(|c| c.name == case.baseline),
                    "{}",
                    case.name
                );
            }
        }
    }

    #[test]
    fn the_linux_cases_get_the_board_command_line_and_valid_actions() {
        let boards = boards();
        let cases = cases(&boards, false).unwrap();
        let bare = &cases[6];
        assert_eq!(
            bare.append.as_deref(),
            Some("console=qemu-arm64 cellvisor.actions=info,dmesg,poweroff")
        );
        let root = &cases[7];
        assert_eq!(root.baseline, bare.name);
        let append = fill_facts(root.append.as_deref().unwrap(), &facts());
        assert_eq!(
            append,
            "console=qemu-arm64 cellvisor.actions=info,script:version,hotplug:3,devmem:0x40200000,dmesg,poweroff"
        );
        let word = append.split_whitespace().last().unwrap();
        let actions = initramfs::parse_actions_word(word).unwrap().unwrap();
        assert_eq!(initramfs::actions_word(&actions), word);
        assert_eq!(
            cases[12].append.as_deref(),
            Some("console=qemu-arm64 cellvisor.actions=reboot")
        );
        for case in &cases {
            if let Some(append) = &case.append {
                let append = fill_facts(append, &facts());
                let word = append.split_whitespace().last().unwrap();
                initramfs::parse_actions_word(word).unwrap().unwrap();
            }
        }
        // The x86 root cell reads EFER and writes VM_HSAVE_PA before the kernel-log check.
        let x86 = cases
            .iter()
            .find(|c| c.name == "qemu-x86-linux-smp4-EPYC")
            .unwrap();
        let append = x86.append.as_deref().unwrap();
        let word = append.split_whitespace().last().unwrap();
        assert_eq!(
            word,
            "cellvisor.actions=info,clock,hotplug:3,devmem:0x1000000,msr-read:0xc0000080,\
             msr-write:0xc0010117,script:manage,script:x86-cells,dmesg,poweroff"
        );
        let actions = initramfs::parse_actions_word(word).unwrap().unwrap();
        assert_eq!(
            actions[4..9],
            [
                initramfs::Action::MsrRead(0xc000_0080),
                initramfs::Action::MsrWrite(0xc001_0117),
                initramfs::Action::Script(crate::scripts::Script::Manage),
                initramfs::Action::Script(crate::scripts::Script::CellsX86),
                initramfs::Action::Dmesg
            ]
        );
    }

    #[test]
    fn lists_the_expected_lines_of_a_root_cell() {
        let boards = boards();
        let cases = cases(&boards, false).unwrap();
        let expected: Vec<String> = cases[11]
            .expected(Some(&SystemFacts {
                hypervisor_start: 0x20_0000,
                ..facts()
            }))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            expected,
            [
                "the line \"cellvisor 0.1.0 on zcu102: 4/4 CPUs at EL2\"",
                "a line containing \"cellvisor-initramfs: /init reached\"",
                "a line containing \"cellvisor-initramfs: cpus online=\" and \" count=4\"",
                "a line containing \"cellvisor-initramfs: memtotal=\"",
                "a line containing \"cellvisor-initramfs: script version: cellvisor-demo: version status=0\"",
                "a line containing \"cellvisor-initramfs: hotplug cpu3 off count=3\"",
                "a line containing \"cellvisor-initramfs: hotplug cpu3 on count=4\"",
                "a line containing \"cellvisor: cell \\\"linux\\\"\" and \"outside its configuration\" and the address 0x200000",
                "a line containing \"cellvisor-initramfs: devmem 0x200000 status=\"",
                "a line containing \"cellvisor-initramfs: dmesg check done\"",
                "a line starting with \"cellvisor: trap counters\"",
            ]
        );
    }

    #[test]
    fn matches_lines() {
        let boards = boards();
        let cases = cases(&boards, false).unwrap();
        let fault = &cases[5].expect;
        assert!(fault[0].matches("cellvisor 0.1.0 on zcu102: 4/4 CPUs at EL2\r"));
        assert!(!fault[0].matches("cellvisor 0.1.0 on zcu102: 3/4 CPUs at EL2"));
        assert!(
            fault[2].matches("  EC 0x25: data abort at EL2, DFSC 0x07: translation fault, level 3")
        );
        assert!(!fault[2].matches("data abort at EL2, permission fault"));
        assert!(fault[3].matches("  ELR 0x0000000040201234  FAR 0x00000000dead0000  SPSR 0x3c9"));

        let root = cases[7].expected(Some(&facts()));
        let abort = &root[7];
        for line in [
            "cellvisor: cell \"linux\" read 0x0000000040200000 outside its configuration",
            "cellvisor: cell \"linux\": CPU 1: read of 4 bytes at 0x40200000, outside its configuration",
        ] {
            assert!(abort.matches(line), "{line}");
        }
        for line in [
            "cellvisor: cell \"linux\" read 0x40200004 outside its configuration",
            "cellvisor: cell \"linux\" read 40200000 outside its configuration",
            "cellvisor: cell \"demo\" read 0x40200000 outside its configuration",
        ] {
            assert!(!abort.matches(line), "{line}");
        }
        // Before the configuration is known, nothing matches.
        assert!(!cases[7].expect[7]
            .matches("cellvisor: cell \"linux\" read 0x40200000 outside its configuration"));
        assert!(root[10].matches("  cellvisor: trap counters: hvc 3, smc 12"));
        assert!(!root[10].matches("[ 1.0] cellvisor: trap counters"));
        assert!(root[4].matches(
            "[    3.1] cellvisor-initramfs: script version: cellvisor-demo: version status=0"
        ));
        // The kernel log's copy of /init's lines (zcu102) counts.
        assert!(root[1].matches("[    2.392772] cellvisor-initramfs: /init reached"));
        assert_eq!(
            hex_numbers("a 0x10, 0xfffffffffffffffff 0x 0xAbc").collect::<Vec<_>>(),
            [0x10, 0xabc]
        );
    }

    #[test]
    fn compares_the_kernel_logs() {
        assert_eq!(
            normalise_dmesg("[    1.234567] WARNING: CPU: 2 PID: 57 at drivers/x.c:10 f+0x1/0x2"),
            "WARNING: CPU: N PID: N at drivers/x.c:10 f+0x1/0x2"
        );
        assert_eq!(normalise_dmesg("[bracket] BUG: x"), "[bracket] BUG: x");
        let log = |lines: &[&str]| -> Vec<String> { lines.iter().map(|l| l.to_string()).collect() };
        let bare = dmesg_problems(&log(&[
            "[    3.1] cellvisor-initramfs: dmesg: [    1.0] WARNING: CPU: 0 PID: 1 at a.c:1",
            "cellvisor-initramfs: dmesg: [    1.1] clk: BUG in something",
            "[    1.1] clk: BUG in something",
            "cellvisor-initramfs: dmesg check done",
        ]));
        assert_eq!(
            bare,
            ["WARNING: CPU: N PID: N at a.c:1", "clk: BUG in something"]
        );
        let same = log(&[
            "cellvisor-initramfs: dmesg: [    1.4] WARNING: CPU: 3 PID: 9 at a.c:1",
            "cellvisor-initramfs: dmesg: [    2.0] devmem[93]: unhandled exception: DABT (lower EL)",
            "cellvisor-initramfs: dmesg check done",
        ]);
        check_dmesg(&same, &bare).unwrap();
        let new = log(&[
            "cellvisor-initramfs: dmesg: [    1.0] Oops: something",
            "cellvisor-initramfs: dmesg: [    1.1] clk: BUG in something",
            "cellvisor-initramfs: dmesg: [    1.2] swapper: unhandled level 2 fault",
        ]);
        let error = check_dmesg(&new, &bare).unwrap_err().to_string();
        assert_eq!(
            error,
            "the kernel logged 2 problem(s) that the bare boot did not: Oops: something | \
             swapper: unhandled level 2 fault"
        );
    }

    #[test]
    fn checks_memtotal_against_the_root_cells_ram() {
        // 1016 MiB of RAM: up to 64 MiB + 15.875 MiB may be the kernel's.
        let facts = facts();
        let line = |kib: u64| vec![format!("cellvisor-initramfs: memtotal={kib} kB")];
        check_memtotal(&line(1_040_384), &facts).unwrap();
        check_memtotal(&line(992_588), &facts).unwrap();
        check_memtotal(&line(958_592), &facts).unwrap();
        let error = check_memtotal(&line(958_591), &facts)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("MemTotal 958591 kB is not within 958592..=1040384 kB"),
            "{error}"
        );
        // All of QEMU's 1 GiB: the hypervisor's memory was not taken away.
        assert!(check_memtotal(&line(1_048_576), &facts).is_err());
        let error = check_memtotal(&["memtotal=".to_owned()], &facts).unwrap_err();
        assert!(
            error.to_string().starts_with("no line containing"),
            "{error}"
        );
    }

    /// Runs `script` as if it were QEMU for case `index` of [`boards`], with `silence` as the
    /// limit of a silent console.
    fn run_script_silence(
        index: usize,
        script: &str,
        timeout: Duration,
        silence: Option<Duration>,
    ) -> (Result<Timing>, Vec<String>) {
        let boards = boards();
        let cases = cases(&boards, false).unwrap();
        let case = &cases[index];
        let mut log = Vec::new();
        let expect = case.expected(Some(&facts()));
        let outcome = run_case(
            &Qemu::shell(script),
            case,
            &expect,
            timeout,
            silence,
            &mut log,
        );
        (outcome, log)
    }

    /// Runs `script` as if it were QEMU for case `index` of [`boards`].
    fn run_script(index: usize, script: &str, timeout: Duration) -> (Result<Timing>, Vec<String>) {
        run_script_silence(index, script, timeout, None)
    }

    /// A root cell's console, lines in an order the kernel and the hypervisor may print them.
    const ROOT_CELL_CONSOLE: &str = "\
        echo 'cellvisor 0.1.0 on qemu-arm64: 4/4 CPUs at EL2'; \
        echo 'cellvisor-initramfs: /init reached'; \
        echo 'cellvisor-initramfs: memtotal=992588 kB'; \
        echo 'cellvisor-initramfs: cpus online=0-3 count=4'; \
        echo 'cellvisor-initramfs: script version: cellvisor 0.1.0'; \
        echo 'cellvisor-initramfs: script version: cellvisor-demo: version status=0'; \
        echo 'cellvisor-initramfs: script version done status=0'; \
        echo 'cellvisor-initramfs: hotplug cpu3 off count=3'; \
        echo 'cellvisor-initramfs: hotplug cpu3 on count=4'; \
        echo 'cellvisor-initramfs: devmem 0x40200000 status=135'; \
        echo 'cellvisor: cell \"linux\" (CPU 2): read at 0x0000000040200000 outside its configuration'; \
        echo 'cellvisor-initramfs: dmesg check done'; \
        echo 'cellvisor: trap counters: ...'";

    #[test]
    fn a_root_cell_passes_when_qemu_exits_with_0_after_every_line() {
        let (outcome, log) = run_script(
            7,
            &format!("{ROOT_CELL_CONSOLE}; exit 0"),
            Duration::from_secs(20),
        );
        outcome.unwrap();
        assert_eq!(log.len(), 13);
        let (outcome, _) = run_script(
            7,
            &format!("{ROOT_CELL_CONSOLE}; exit 1"),
            Duration::from_secs(20),
        );
        assert_eq!(
            outcome.unwrap_err().to_string(),
            "QEMU exited with exit status: 1, expected exit status 0"
        );
        // It waits for QEMU to exit.
        let (outcome, _) = run_script(
            7,
            &format!("{ROOT_CELL_CONSOLE}; sleep 30"),
            Duration::from_secs(1),
        );
        assert_eq!(
            outcome.unwrap_err().to_string(),
            "timed out after 1 s waiting for QEMU to exit by itself"
        );
    }

    #[test]
    fn measures_the_host_time_to_init() {
        let (outcome, _) = run_script(
            7,
            &format!("sleep 1; {ROOT_CELL_CONSOLE}; exit 0"),
            Duration::from_secs(20),
        );
        let timing = outcome.unwrap();
        let init = timing.init.expect("the marker came");
        assert!(init >= Duration::from_secs(1), "{init:?}");
        assert!(init < Duration::from_secs(10), "{init:?}");
        assert_eq!(timing.typed, None);
        assert!(
            timing.to_string().starts_with(" (/init after 1."),
            "{timing}"
        );
        // A hypervisor-only case has no /init.
        let (outcome, _) = run_script(
            0,
            "echo 'cellvisor 0.1.0 on qemu-arm64: 4/4 CPUs at EL2'; sleep 30",
            Duration::from_secs(20),
        );
        assert_eq!(outcome.unwrap(), Timing::default());
        assert_eq!(Timing::default().to_string(), "");
        check_within("/init", Some(Duration::from_secs(30)), INIT_TIME_LIMIT).unwrap();
        let error = check_within(
            "/init",
            Some(Duration::from_millis(30_500)),
            INIT_TIME_LIMIT,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(error, "/init after 30.5 s of host time, more than 30 s");
        let error = check_within("/init", None, INIT_TIME_LIMIT).unwrap_err();
        assert_eq!(error.to_string(), "/init never came");
    }

    /// The bytes of the first line the run-demo cases type, its `\r` included.
    fn first_line() -> usize {
        RUN_DEMO_TYPED.text.find('\r').unwrap() + 1
    }

    #[test]
    fn the_run_demo_cases_type_at_the_shell_once_the_demo_runs() {
        let boards = boards();
        let all = cases(&boards, true).unwrap();
        let demo: Vec<&Resolved<'_>> = all
            .iter()
            .filter(|case| case.name.contains("-run-demo-"))
            .collect();
        let names: Vec<&str> = demo.iter().map(|case| case.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "qemu-arm64-run-demo-gicv3-smp4-cortex-a57",
                "qemu-arm64-run-demo-gicv2-smp4-cortex-a57",
                "zcu102-run-demo-gicv2-smp4",
            ]
        );
        let case = demo[0];
        assert_eq!(
            case.append.as_deref(),
            Some("console=qemu-arm64 cellvisor.actions=script:demo-start")
        );
        // A guest that echoes what it is typed, as a shell's tty does, once the demo runs;
        // the shell's answer and the power-off follow.
        let console = format!(
            "echo 'cellvisor 0.1.0 on qemu-arm64: 4/4 CPUs at EL2'; \
             echo 'cellvisor-initramfs: /init reached'; \
             echo 'cellvisor-initramfs: script demo-start: cellvisor-demo: start status=0'; \
             echo 'cellvisor-initramfs: script demo-start: {DEMO_RUNS} (its UART...)'; \
             typed=$(head -c {line} | tr -d '\\r'); echo \"/ # $typed\"; \
             case \"$typed\" in *'demo-$(echo listed) status=$?'*) \
                 echo 'demo-listed status=0';; esac; \
             echo 'cellvisor: trap counters of cell \"linux\"'; exit 0",
            line = first_line()
        );
        let run = |script: &str| {
            let mut log = Vec::new();
            let expect = case.expected(Some(&facts()));
            let timeout = Duration::from_secs(20);
            run_case(&Qemu::shell(script), case, &expect, timeout, None, &mut log)
        };
        let timing = run(&console).unwrap();
        assert!(
            timing.typed.is_some() && timing.init.is_some(),
            "{timing:?}"
        );
        // The echo of the typed line alone does not pass.
        let echo_only = format!(
            "echo 'cellvisor 0.1.0 on qemu-arm64: 4/4 CPUs at EL2'; \
             echo 'cellvisor-initramfs: /init reached'; \
             echo 'cellvisor-demo: start status=0'; echo 'cellvisor-demo: the demo cell runs'; \
             typed=$(head -c {line} | tr -d '\\r'); echo \"/ # $typed\"; \
             echo 'cellvisor: trap counters'; exit 0",
            line = first_line()
        );
        let error = run(&echo_only).unwrap_err().to_string();
        assert!(
            error.contains("before the line")
                || error.contains("before a line containing \"demo-listed status=0\""),
            "{error}"
        );
    }

    #[test]
    fn init_time_cases_boot_each_machine_three_times_within_the_limit() {
        let boards = boards();
        let all = cases(&boards, false).unwrap();
        let timed: Vec<&Resolved<'_>> = all
            .iter()
            .filter(|case| case.checks.contains(&Check::InitWithin(INIT_TIME_LIMIT)))
            .collect();
        let names: Vec<&str> = timed.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "qemu-arm64-init-time-1-gicv3-smp4-cortex-a57",
                "qemu-arm64-init-time-2-gicv3-smp4-cortex-a57",
                "qemu-arm64-init-time-3-gicv3-smp4-cortex-a57",
                "qemu-arm64-init-time-1-gicv2-smp4-cortex-a57",
                "qemu-arm64-init-time-2-gicv2-smp4-cortex-a57",
                "qemu-arm64-init-time-3-gicv2-smp4-cortex-a57",
                "zcu102-init-time-1-gicv2-smp4",
                "zcu102-init-time-2-gicv2-smp4",
                "zcu102-init-time-3-gicv2-smp4",
            ]
        );
        for case in &timed {
            assert_eq!(case.boots, Boots::RootCell);
            assert!(!case.options.icount, "{}: multi-threaded TCG", case.name);
            assert!(
                case.append
                    .as_deref()
                    .unwrap()
                    .ends_with("cellvisor.actions=poweroff"),
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn only_selects_by_name_with_the_baselines_of_the_kernel_log_check() {
        let boards = boards();
        let names = |only| -> Vec<String> {
            select(cases(&boards, true).unwrap(), Some(only))
                .unwrap()
                .into_iter()
                .map(|case| case.name)
                .collect()
        };
        assert_eq!(
            names("zcu102-linux"),
            ["zcu102-bare-gicv2-smp4", "zcu102-linux-gicv2-smp4"]
        );
        assert_eq!(
            names("cells-wild-gicv3"),
            [
                "qemu-arm64-bare-gicv3-smp4-cortex-a57",
                "qemu-arm64-cells-wild-gicv3-smp4-cortex-a57",
            ]
        );
        assert_eq!(names("init-time").len(), 9);
        // The bench's case is not in the table, but is a name.
        assert!(names("bench-smoke").is_empty());
        let error = select(cases(&boards, true).unwrap(), Some("no-such-case"))
            .unwrap_err()
            .to_string();
        assert_eq!(error, "no system test name contains \"no-such-case\"");
        assert_eq!(
            select(cases(&boards, false).unwrap(), None).unwrap().len(),
            cases(&boards, false).unwrap().len()
        );
    }

    #[test]
    fn a_root_cell_names_every_missing_line() {
        let (outcome, _) = run_script(
            7,
            "echo 'cellvisor 0.1.0 on qemu-arm64: 4/4 CPUs at EL2'; \
             echo 'cellvisor-initramfs: /init reached'; exit 0",
            Duration::from_secs(20),
        );
        let error = outcome.unwrap_err().to_string();
        assert!(
            error.starts_with(
                "QEMU exited (exit status: 0) before 9 lines: a line containing \
                 \"cellvisor-initramfs: cpus online=\" and \" count=4\"; "
            ),
            "{error}"
        );
        assert!(
            error.ends_with("; a line starting with \"cellvisor: trap counters\""),
            "{error}"
        );
        let (outcome, _) = run_script(
            7,
            "echo 'cellvisor 0.1.0 on qemu-arm64: 4/4 CPUs at EL2'; \
             echo '[    0.5] Kernel panic - not syncing: VFS'; sleep 30",
            Duration::from_secs(20),
        );
        let error = outcome.unwrap_err().to_string();
        assert!(
            error.starts_with("\"Kernel panic\" on the console, before 10 lines: "),
            "{error}"
        );
    }

    #[test]
    fn a_silent_linux_boot_fails_before_the_timeout() {
        let start = Instant::now();
        let (outcome, _) = run_script_silence(
            7,
            "echo 'cellvisor 0.1.0 on qemu-arm64: 4/4 CPUs at EL2'; sleep 30",
            Duration::from_secs(20),
            Some(Duration::from_secs(1)),
        );
        let error = outcome.unwrap_err().to_string();
        assert!(
            error.starts_with("no console output for 1 s (hung?), waiting for 10 lines: "),
            "{error}"
        );
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_reboot_needs_the_banner_twice() {
        let banner = "echo 'cellvisor 0.1.0 on qemu-arm64: 4/4 CPUs at EL2'";
        let marker = "echo 'cellvisor-initramfs: /init reached'";
        let (outcome, _) = run_script(
            12,
            &format!("{banner}; {marker}; {banner}; sleep 30"),
            Duration::from_secs(20),
        );
        outcome.unwrap();
        let (outcome, _) = run_script(
            12,
            &format!("{banner}; {marker}; sleep 30"),
            Duration::from_secs(1),
        );
        assert_eq!(
            outcome.unwrap_err().to_string(),
            "timed out after 1 s waiting for the line \"cellvisor 0.1.0 on qemu-arm64: 4/4 CPUs at EL2\""
        );
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn passes_on_the_expected_lines_and_kills_qemu_and_its_children() {
        let start = Instant::now();
        let (outcome, log) = run_script(
            5,
            "sleep 30 & echo child $!; echo 'cellvisor 0.1.0 on zcu102: 4/4 CPUs at EL2'; \
             echo 'FATAL: CPU 0: unexpected exception (sync)'; \
             echo '  data abort at EL2 (translation fault, level 1)'; \
             echo 'FAR 0x00000000dead0000'; echo qemu says hi >&2; echo 'CPU 0 parked'; wait",
            Duration::from_secs(20),
        );
        outcome.unwrap();
        assert!(start.elapsed() < Duration::from_secs(10));
        // QEMU's stderr is logged, marked, if it arrived before the end.
        assert!(log
            .iter()
            .filter(|line| line.contains("qemu says hi"))
            .all(|line| line.starts_with("[qemu] ")));
        let child = log
            .iter()
            .find_map(|line| line.strip_prefix("child "))
            .unwrap();
        // Killed: gone, or a zombie if nothing reaps orphans here.
        let alive = || {
            fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|stat| {
                !stat
                    .rsplit(')')
                    .next()
                    .unwrap()
                    .trim_start()
                    .starts_with('Z')
            })
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive() {
            assert!(Instant::now() < deadline, "the child of QEMU survived");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn fails_on_a_timeout_with_the_lines_out_of_order() {
        let (outcome, log) = run_script(
            4,
            "echo 'cellvisor 0.1.0 on qemu-arm64: 4/4 CPUs at EL2'; echo parked; \
             echo 'unexpected exception'; echo 'data abort at EL2: translation fault'; \
             echo 'FAR 0x00000000dead0000'; sleep 30",
            Duration::from_secs(1),
        );
        let error = outcome.unwrap_err().to_string();
        assert_eq!(
            error,
            "timed out after 1 s waiting for a line containing \"parked\""
        );
        assert_eq!(log.len(), 5);
    }

    #[test]
    fn fails_at_once_on_a_fatal_error_or_an_early_exit() {
        let (outcome, _) = run_script(
            0,
            "echo 'cellvisor: FATAL: CPU 0: unexpected exception'; sleep 30",
            Duration::from_secs(20),
        );
        let error = outcome.unwrap_err().to_string();
        assert!(
            error.starts_with("\"FATAL\" on the console, before the line"),
            "{error}"
        );
        let (outcome, _) = run_script(2, "echo nothing; exit 3", Duration::from_secs(20));
        let error = outcome.unwrap_err().to_string();
        assert!(
            error.starts_with(
                "QEMU exited (exit status: 3) before the line \"cellvisor 0.1.0 on qemu-arm64: 8/8"
            ),
            "{error}"
        );
    }
}
