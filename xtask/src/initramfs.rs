//! The root cell's initramfs: Debian's static busybox, `/bin/guest-clock` (the
//! `cellvisor-guest-clock` example), the kernel modules of the architecture in
//! [`MODULE_DIR`] (on amd64 [`MSR_MODULE`], see `linux.rs`) and a `/init` shell script, as a
//! gzip-compressed newc (SVR4 "new ASCII") cpio archive, the format the kernel unpacks.
//!
//! `/init` mounts `/proc`, `/sys` and `/dev` (devtmpfs) and prints [`MARKER`] on the console
//! (on the kernel log if there is no console, e.g. with only an early console). Then it runs
//! the [`Action`]s listed on the kernel command line as `cellvisor.actions=a,b,c`, in order,
//! each reporting in lines starting with [`PREFIX`]; then it powers the machine off if the
//! command line has `cellvisor.poweroff`, and otherwise runs a shell on the console; leaving
//! the shell powers off too.
//!
//! The archive is reproducible: every entry belongs to root, has modification time 0 and gets
//! its inode number from its position.

use std::fmt;
use std::io::Write as _;
use std::str::FromStr;

use anyhow::{bail, Context as _, Result};
use flate2::write::GzEncoder;
use flate2::Compression;

use crate::scripts::{self, Script, APPLETS};
use crate::tool::{NamedFile, RootCellFiles};

/// What every line `/init` prints starts with.
pub const PREFIX: &str = "cellvisor-initramfs: ";

/// What `/init` prints once it runs, for the system tests to look for.
pub const MARKER: &str = "cellvisor-initramfs: /init reached";

/// Kernel command-line word that makes `/init` power off after printing [`MARKER`] and running
/// the actions.
pub const POWEROFF: &str = "cellvisor.poweroff";

/// Kernel command-line parameter listing the [`Action`]s `/init` runs, comma-separated.
pub const ACTIONS: &str = "cellvisor.actions";

/// What `/init` prints after the lines of the `dmesg` action.
pub const DMESG_DONE: &str = "cellvisor-initramfs: dmesg check done";

/// What precedes each kernel-log line the `dmesg` action reports.
pub const DMESG_LINE: &str = "cellvisor-initramfs: dmesg: ";

/// The texts that make the `dmesg` action report a kernel-log line (case-sensitive).
pub const DMESG_WORDS: [&str; 4] = ["WARNING", "BUG", "Oops", "unhandled"];

/// The path of the guest-clock program in the initramfs.
pub const GUEST_CLOCK: &str = "bin/guest-clock";

/// The path of the `cellvisor` tool in a board's initramfs.
pub const TOOL: &str = "bin/cellvisor";

/// Where a board's cell configurations are (`<name>.toml` and the compiled `<name>.bin`).
pub const CONFIG_DIR: &str = "etc/cellvisor";

/// Where the inmate images are.
pub const INMATE_DIR: &str = "lib/cellvisor/inmates";
/// Where a board's initramfs has the Linux of its Linux cell (`config/linux.toml`): the
/// kernel (`Image`) and the cell's initramfs (`initramfs.cpio.gz`, the base one: busybox and
/// `/init`), for `cellvisor cell linux`.
pub const LINUX_CELL_DIR: &str = "lib/cellvisor/linux";

/// Where the kernel modules are (the base initramfs of amd64 only).
pub const MODULE_DIR: &str = "lib/modules";

/// The module of the MSR driver in [`MODULE_DIR`], which the `msr-read` and `msr-write`
/// actions load unless [`MSR_DEVICE`] is there.
pub const MSR_MODULE: &str = "msr.ko";

/// The MSR driver's device of CPU 0: reading or writing 8 bytes at file offset N is RDMSR or
/// WRMSR of MSR N on that CPU, an error (EIO) if it raises #GP (Linux's
/// arch/x86/kernel/msr.c).
const MSR_DEVICE: &str = "/dev/cpu/0/msr";

/// Busybox applets that only `/init` runs (the scripts' [`APPLETS`] are linked too): `insmod`
/// for [`MSR_MODULE`], `od` for the value `msr-read` reads.
pub const INIT_APPLETS: &[&str] = &["insmod", "od"];

/// What the last line of a script's output carries inside `/init` (its exit status).
const SCRIPT_STATUS: &str = "@cellvisor-script-status=";

/// One thing `/init` does after printing [`MARKER`], and the lines it prints for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Runs `/etc/cellvisor/scripts/NAME.sh` (board initramfs only, see `scripts.rs`): each
    /// line it prints (stdout and stderr) as `script NAME: <line>`, then
    /// `script NAME done status=<exit code>`, or `script NAME failed: <why>`.
    Script(Script),
    /// `cpus online=<list> count=<n>` and `memtotal=<kB> kB`.
    Info,
    /// Offlines then onlines a CPU through sysfs: `hotplug cpuN off count=<n>`,
    /// `hotplug cpuN on count=<n>`, or `hotplug cpuN failed: <why>`.
    Hotplug(u32),
    /// Reads 32 bits at a physical address with `devmem` (outside the root cell this must end
    /// in a bus error): `devmem <address> status=<exit code>`.
    Devmem(u64),
    /// Reads an MSR on CPU 0 through the MSR driver (x86; [`MSR_MODULE`] is loaded unless the
    /// driver is there): `msr-read <address> value=0x<16 hex digits> status=0`, or each line
    /// `dd` printed as `msr-read <address>: <line>` and `msr-read <address> status=<exit code>`
    /// (an MSR the CPU, or the hypervisor, answers with #GP), or
    /// `msr-read <address> failed: <why>`. The address is printed as `0x<hex>`.
    MsrRead(u32),
    /// Writes 0 to an MSR on CPU 0 the same way: each line `dd` printed as
    /// `msr-write <address>: <line>`, then `msr-write <address> status=<exit code>`, or
    /// `msr-write <address> failed: <why>`.
    MsrWrite(u32),
    /// Reports every kernel-log line holding one of [`DMESG_WORDS`] as `dmesg: <line>`, then
    /// [`DMESG_DONE`].
    Dmesg,
    /// Runs `/bin/guest-clock`: `guest time <s> s (<ticks> ticks at <Hz> Hz)`.
    Clock,
    /// Runs `sleep N` (the root cell idles for N seconds): `slept N s`, or
    /// `sleep N failed (status <exit code>)`.
    Sleep(u32),
    /// `poweroff -f`.
    Poweroff,
    /// `reboot -f`.
    Reboot,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Info => f.write_str("info"),
            Self::Hotplug(cpu) => write!(f, "hotplug:{cpu}"),
            Self::Devmem(address) => write!(f, "devmem:{address:#x}"),
            Self::MsrRead(address) => write!(f, "msr-read:{address:#x}"),
            Self::MsrWrite(address) => write!(f, "msr-write:{address:#x}"),
            Self::Dmesg => f.write_str("dmesg"),
            Self::Clock => f.write_str("clock"),
            Self::Sleep(seconds) => write!(f, "sleep:{seconds}"),
            Self::Poweroff => f.write_str("poweroff"),
            Self::Reboot => f.write_str("reboot"),
            Self::Script(script) => write!(f, "script:{script}"),
        }
    }
}

impl FromStr for Action {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Self> {
        let (name, argument) = match text.split_once(':') {
            Some((name, argument)) => (name, Some(argument)),
            None => (text, None),
        };
        let action = match (name, argument) {
            ("info", None) => Self::Info,
            ("dmesg", None) => Self::Dmesg,
            ("clock", None) => Self::Clock,
            ("poweroff", None) => Self::Poweroff,
            ("reboot", None) => Self::Reboot,
            ("hotplug", Some(cpu)) => Self::Hotplug(
                cpu.parse()
                    .with_context(|| format!("`{text}`: {cpu:?} is no CPU number"))?,
            ),
            ("sleep", Some(seconds)) => Self::Sleep(
                seconds
                    .parse()
                    .with_context(|| format!("`{text}`: {seconds:?} is no number of seconds"))?,
            ),
            ("script", Some(name)) => Self::Script(
                name.parse()
                    .with_context(|| format!("`{text}`: {name:?} is no script"))?,
            ),
            ("devmem", Some(address)) => Self::Devmem(
                parse_address(address)
                    .with_context(|| format!("`{text}`: {address:?} is no address"))?,
            ),
            ("msr-read", Some(address)) => Self::MsrRead(parse_msr(text, address)?),
            ("msr-write", Some(address)) => Self::MsrWrite(parse_msr(text, address)?),
            ("info" | "dmesg" | "clock" | "poweroff" | "reboot", Some(_)) => {
                bail!("`{text}`: action {name} takes no argument")
            }
            ("hotplug" | "devmem" | "sleep" | "script" | "msr-read" | "msr-write", None) => {
                bail!("`{text}`: action {name} needs an argument, e.g. `hotplug:3`, `devmem:0x40200000`, `sleep:10`, `script:demo`, `msr-read:0xc0000080`")
            }
            _ => bail!(
                "unknown action `{text}`; actions: info, hotplug:CPU, devmem:ADDRESS, msr-read:ADDRESS, msr-write:ADDRESS, dmesg, clock, sleep:SECONDS, poweroff, reboot, script:NAME"
            ),
        };
        Ok(action)
    }
}

/// A decimal or `0x` hexadecimal address.
fn parse_address(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// The MSR address of the action `text`, `address` (MSR numbers are 32 bits: the MSR
/// driver takes the low 32 bits of the file offset).
fn parse_msr(text: &str, address: &str) -> Result<u32> {
    let Some(wide) = parse_address(address) else {
        bail!("`{text}`: {address:?} is no MSR address");
    };
    u32::try_from(wide)
        .ok()
        .with_context(|| format!("`{text}`: {address:?} is no MSR address (MSRs are 32-bit)"))
}

/// The kernel command-line word that makes `/init` run `actions`: `cellvisor.actions=a,b,c`.
pub fn actions_word(actions: &[Action]) -> String {
    let list: Vec<String> = actions.iter().map(Action::to_string).collect();
    format!("{ACTIONS}={}", list.join(","))
}

/// The actions of a `cellvisor.actions=...` word (`None` for another word).
pub fn parse_actions_word(word: &str) -> Option<Result<Vec<Action>>> {
    let list = word.strip_prefix(ACTIONS)?.strip_prefix('=')?;
    Some(
        list.split(',')
            .filter(|a| !a.is_empty())
            .map(str::parse)
            .collect(),
    )
}

/// Empty directories at the root: mount points and scratch space.
const DIRECTORIES: [&str; 4] = ["dev", "proc", "sys", "tmp"];

/// What an archive entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory, with its permission bits.
    Directory { mode: u32 },
    /// A regular file.
    File { mode: u32, data: Vec<u8> },
    /// A symbolic link to `target`.
    Symlink { target: String },
    /// A character device node.
    CharDevice { mode: u32, major: u32, minor: u32 },
}

impl Node {
    /// The `st_mode` value: file type and permission bits.
    pub fn mode(&self) -> u32 {
        match self {
            Self::Directory { mode } => 0o040_000 | mode,
            Self::File { mode, .. } => 0o100_000 | mode,
            Self::Symlink { .. } => 0o120_777,
            Self::CharDevice { mode, .. } => 0o020_000 | mode,
        }
    }

    /// The entry's data: the file content or the link target.
    pub fn data(&self) -> &[u8] {
        match self {
            Self::File { data, .. } => data,
            Self::Symlink { target } => target.as_bytes(),
            Self::Directory { .. } | Self::CharDevice { .. } => &[],
        }
    }
}

/// One archive entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path from the root, without a leading `/`; parents come first in an archive.
    pub path: String,
    /// What it is.
    pub node: Node,
}

impl Entry {
    /// An entry at `path`.
    pub fn new(path: impl Into<String>, node: Node) -> Self {
        Self {
            path: path.into(),
            node,
        }
    }
}

/// The `/init` script.
pub fn init_script() -> String {
    let dmesg_words: String = DMESG_WORDS.iter().map(|w| format!(" -e {w}")).collect();
    let scripts_dir = format!("/{}", scripts::DIR);
    let msr_module = format!("/{MODULE_DIR}/{MSR_MODULE}");
    format!(
        r#"#!/bin/sh
# /init of the cellvisor initramfs, written by `cargo xtask linux`.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

# The kernel opened /dev/console as stdin/stdout/stderr. Without a console driver (only an
# early console, e.g. zcu102 in QEMU) there is none: then every line goes to the kernel log,
# which the early console prints, one open of /dev/kmsg per line (each open has its own rate
# limit). The standard descriptors are filled so that nothing else lands on them.
if [ -e /proc/self/fd/1 ]; then
    console=yes
else
    console=no
    exec </dev/null >/dev/null 2>&1
fi
say() {{
    if [ $console = yes ]; then
        printf '%s\n' "$*"
    else
        printf '%s\n' "$*" >/dev/kmsg
    fi
}}

say "{MARKER}"

# online_count: the number of CPUs in /sys/devices/system/cpu/online ("0-1,3" is 3).
online_count() {{
    count=0
    old_ifs=$IFS
    IFS=,
    for range in $(cat /sys/devices/system/cpu/online); do
        case "$range" in
            *-*) count=$((count + ${{range#*-}} - ${{range%-*}} + 1)) ;;
            ?*) count=$((count + 1)) ;;
        esac
    done
    IFS=$old_ifs
    echo $count
}}

action_info() {{
    say "{PREFIX}cpus online=$(cat /sys/devices/system/cpu/online) count=$(online_count)"
    say "{PREFIX}memtotal=$(sed -n 's/^MemTotal: *\([0-9]*\) kB$/\1/p' /proc/meminfo) kB"
}}

# action_hotplug CPU: offline, then online again, through sysfs (PSCI CPU_OFF and CPU_ON).
action_hotplug() {{
    cpu=$1
    online=/sys/devices/system/cpu/cpu$cpu/online
    case "$cpu" in
        '' | *[!0-9]*)
            say "{PREFIX}hotplug cpu$cpu failed: not a CPU number"
            return ;;
    esac
    if [ ! -e $online ]; then
        say "{PREFIX}hotplug cpu$cpu failed: no $online"
        return
    fi
    if ! error=$({{ echo 0 >$online; }} 2>&1); then
        say "{PREFIX}hotplug cpu$cpu failed: offline: $error"
        return
    fi
    say "{PREFIX}hotplug cpu$cpu off count=$(online_count)"
    if ! error=$({{ echo 1 >$online; }} 2>&1); then
        say "{PREFIX}hotplug cpu$cpu failed: online: $error"
        return
    fi
    say "{PREFIX}hotplug cpu$cpu on count=$(online_count)"
}}

# action_devmem ADDRESS: a 32-bit read; outside the root cell it dies of a bus error (135).
action_devmem() {{
    output=$(devmem $1 32 2>&1)
    status=$?
    printf '%s\n' "$output" | while IFS= read -r line; do
        [ -n "$line" ] && say "{PREFIX}devmem $1: $line"
    done
    say "{PREFIX}devmem $1 status=$status"
}}

# msr_address TEXT: the MSR number TEXT (decimal or 0x hexadecimal, at most 32 bits) as
# 0x<hex>; fails for anything else.
msr_address() {{
    case "$1" in
        0[xX]*) digits=${{1#0[xX]}} base=16 ;;
        *) digits=$1 base=10 ;;
    esac
    case "$base:$digits" in
        *: | 16:*[!0-9a-fA-F]* | 10:*[!0-9]*) return 1 ;;
    esac
    digits=${{digits#"${{digits%%[!0]*}}"}}
    if [ $base = 16 ]; then
        [ ${{#digits}} -le 8 ] || return 1
        printf '0x%x\n' $((0x${{digits:-0}}))
    else
        [ ${{#digits}} -le 10 ] && [ $((${{digits:-0}})) -le 4294967295 ] || return 1
        printf '0x%x\n' $((${{digits:-0}}))
    fi
}}

# msr_ready ACTION ADDRESS: {MSR_DEVICE} is there, after loading the MSR driver
# ({msr_module}, the stock kernel's module) if it was not; otherwise says why ACTION failed.
msr_ready() {{
    [ -e {MSR_DEVICE} ] && return 0
    if [ ! -f {msr_module} ]; then
        say "{PREFIX}$1 $2 failed: no {MSR_DEVICE} and no {msr_module}"
        return 1
    fi
    if ! error=$(insmod {msr_module} 2>&1); then
        say "{PREFIX}$1 $2 failed: insmod {msr_module}: $error"
        return 1
    fi
    if [ ! -e {MSR_DEVICE} ]; then
        say "{PREFIX}$1 $2 failed: no {MSR_DEVICE} after insmod {msr_module}"
        return 1
    fi
}}

# msr_lines ACTION ADDRESS OUTPUT: each line of OUTPUT (what dd printed) as `ACTION ADDRESS: line`.
msr_lines() {{
    printf '%s\n' "$3" | while IFS= read -r line; do
        [ -n "$line" ] && say "{PREFIX}$1 $2: $line"
    done
}}

# action_msr_read ADDRESS: RDMSR on CPU 0, the 8 bytes at that offset of {MSR_DEVICE}, printed
# as one little-endian 64-bit number; an MSR that raises #GP is an I/O error of dd.
action_msr_read() {{
    if ! address=$(msr_address "$1"); then
        say "{PREFIX}msr-read $1 failed: not an MSR address"
        return
    fi
    msr_ready msr-read $address || return
    rm -f /tmp/msr
    output=$(dd if={MSR_DEVICE} of=/tmp/msr bs=8 count=1 skip=$((address)) iflag=skip_bytes \
        status=none 2>&1)
    status=$?
    msr_lines msr-read $address "$output"
    if [ $status != 0 ]; then
        say "{PREFIX}msr-read $address status=$status"
        return
    fi
    value=$(od -A n -t x8 /tmp/msr)
    value=${{value##* }}
    case "$value" in
        ????????????????) say "{PREFIX}msr-read $address value=0x$value status=0" ;;
        *) say "{PREFIX}msr-read $address failed: dd read no 8 bytes" ;;
    esac
}}

# action_msr_write ADDRESS: WRMSR of 0 on CPU 0, 8 zero bytes at that offset of {MSR_DEVICE}.
action_msr_write() {{
    if ! address=$(msr_address "$1"); then
        say "{PREFIX}msr-write $1 failed: not an MSR address"
        return
    fi
    msr_ready msr-write $address || return
    output=$(head -c 8 /dev/zero | dd of={MSR_DEVICE} bs=8 count=1 seek=$((address)) \
        oflag=seek_bytes conv=notrunc iflag=fullblock status=none 2>&1)
    status=$?
    msr_lines msr-write $address "$output"
    say "{PREFIX}msr-write $address status=$status"
}}

# action_dmesg: the kernel-log lines that report a problem (this script's own lines aside).
action_dmesg() {{
    dmesg | grep -F{dmesg_words} | grep -v -F "{PREFIX}" |
        while IFS= read -r line; do
            say "{DMESG_LINE}$line"
        done
    say "{DMESG_DONE}"
}}

action_clock() {{
    output=$(/{GUEST_CLOCK})
    status=$?
    if [ $status = 0 ]; then
        say "$output"
    else
        say "{PREFIX}guest-clock failed (status $status): $output"
    fi
}}

# action_sleep SECONDS: the root cell idles (guest time).
action_sleep() {{
    sleep "$1"
    status=$?
    if [ $status = 0 ]; then
        say "{PREFIX}slept $1 s"
    else
        say "{PREFIX}sleep $1 failed (status $status)"
    fi
}}

# action_script NAME: runs {scripts_dir}/NAME.sh; each line it prints (stdout and stderr)
# becomes `script NAME: <line>`, the end `script NAME done status=<exit code>`.
action_script() {{
    case "$1" in
        '' | *[!a-z0-9-]*)
            say "{PREFIX}script $1 failed: not a script name"
            return ;;
    esac
    script={scripts_dir}/$1.sh
    if [ ! -f $script ]; then
        say "{PREFIX}script $1 failed: no $script"
        return
    fi
    {{ sh $script </dev/null 2>&1; echo "{SCRIPT_STATUS}$?"; }} | while IFS= read -r line; do
        case "$line" in
            {SCRIPT_STATUS}*) say "{PREFIX}script $1 done status=${{line#{SCRIPT_STATUS}}}" ;;
            *) say "{PREFIX}script $1: $line" ;;
        esac
    done
}}

actions=
poweroff=no
for word in $(cat /proc/cmdline); do
    case "$word" in
        {POWEROFF}) poweroff=yes ;;
        {ACTIONS}=*) actions=${{word#{ACTIONS}=}} ;;
    esac
done

set -f
old_ifs=$IFS
IFS=,
set -- $actions
IFS=$old_ifs
set +f
for action in "$@"; do
    case "$action" in
        info) action_info ;;
        hotplug:*) action_hotplug "${{action#hotplug:}}" ;;
        devmem:*) action_devmem "${{action#devmem:}}" ;;
        msr-read:*) action_msr_read "${{action#msr-read:}}" ;;
        msr-write:*) action_msr_write "${{action#msr-write:}}" ;;
        dmesg) action_dmesg ;;
        clock) action_clock ;;
        sleep:*) action_sleep "${{action#sleep:}}" ;;
        script:*) action_script "${{action#script:}}" ;;
        poweroff) poweroff -f ;;
        reboot) reboot -f ;;
        *) say "{PREFIX}unknown action $action" ;;
    esac
done

if [ $poweroff = yes ]; then
    poweroff -f
fi
# A shell with a controlling terminal (for Ctrl-C), on the console's real device.
setsid cttyhack sh
poweroff -f
"#
    )
}

/// The entries of the initramfs around `busybox`, a static busybox binary, `guest_clock`,
/// the static guest-clock program, and `modules`, kernel modules for [`MODULE_DIR`] (if there
/// are none, there is no `/lib`).
pub fn layout(busybox: Vec<u8>, guest_clock: Vec<u8>, modules: Vec<NamedFile>) -> Vec<Entry> {
    let mut entries = vec![
        Entry::new("bin", Node::Directory { mode: 0o755 }),
        Entry::new(
            "bin/busybox",
            Node::File {
                mode: 0o755,
                data: busybox,
            },
        ),
    ];
    entries.extend(APPLETS.iter().chain(INIT_APPLETS).map(|applet| {
        Entry::new(
            format!("bin/{applet}"),
            Node::Symlink {
                target: "busybox".into(),
            },
        )
    }));
    entries.push(Entry::new(
        GUEST_CLOCK,
        Node::File {
            mode: 0o755,
            data: guest_clock,
        },
    ));
    for dir in DIRECTORIES {
        let mode = if dir == "tmp" { 0o1777 } else { 0o755 };
        entries.push(Entry::new(dir, Node::Directory { mode }));
    }
    // The kernel opens /dev/console for /init before anything is mounted.
    entries.push(Entry::new(
        "dev/console",
        Node::CharDevice {
            mode: 0o600,
            major: 5,
            minor: 1,
        },
    ));
    if !modules.is_empty() {
        entries.extend(
            ["lib", MODULE_DIR].map(|dir| Entry::new(dir, Node::Directory { mode: 0o755 })),
        );
        entries.extend(modules.into_iter().map(|module| {
            Entry::new(
                format!("{MODULE_DIR}/{}", module.name),
                Node::File {
                    mode: 0o644,
                    data: module.data,
                },
            )
        }));
    }
    entries.push(Entry::new(
        "init",
        Node::File {
            mode: 0o755,
            data: init_script().into_bytes(),
        },
    ));
    entries
}

/// Adds `more` to `entries`, leaving out the directories `entries` already has (the amd64
/// base initramfs and [`root_cell_entries`] both have `/lib`).
pub fn extend(entries: &mut Vec<Entry>, more: Vec<Entry>) {
    for entry in more {
        let present = matches!(entry.node, Node::Directory { .. })
            && entries
                .iter()
                .any(|e| e.path == entry.path && e.node == entry.node);
        if !present {
            entries.push(entry);
        }
    }
}

/// The entries a board's initramfs adds to [`layout`]: the tool ([`TOOL`]), the board's cell
/// configurations and the scripts under [`CONFIG_DIR`], and the inmates under [`INMATE_DIR`].
pub fn root_cell_entries(files: &RootCellFiles) -> Vec<Entry> {
    let directory = |path: &str| Entry::new(path, Node::Directory { mode: 0o755 });
    let file = |path: String, mode: u32, data: Vec<u8>| Entry::new(path, Node::File { mode, data });
    let mut entries = vec![
        file(TOOL.to_owned(), 0o755, files.tool.clone()),
        directory("etc"),
        directory(CONFIG_DIR),
    ];
    entries.extend(
        files
            .configs
            .iter()
            .map(|c| file(format!("{CONFIG_DIR}/{}", c.name), 0o644, c.data.clone())),
    );
    entries.push(directory(scripts::DIR));
    entries.extend(Script::ALL.iter().map(|script| {
        file(
            format!("{}/{}.sh", scripts::DIR, script.name()),
            0o755,
            script.text().into_bytes(),
        )
    }));
    entries.extend(["lib", "lib/cellvisor", INMATE_DIR].map(directory));
    entries.extend(
        files
            .inmates
            .iter()
            .map(|i| file(format!("{INMATE_DIR}/{}", i.name), 0o644, i.data.clone())),
    );
    entries
}

/// The uncompressed newc archive of `entries`, with its trailer.
pub fn newc(entries: &[Entry]) -> Result<Vec<u8>> {
    let mut archive = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        if entry.path.is_empty() || entry.path.starts_with('/') || entry.path.contains('\0') {
            bail!("bad initramfs path {:?}", entry.path);
        }
        let data = entry.node.data();
        let size = u32::try_from(data.len())
            .with_context(|| format!("initramfs entry {} is too large", entry.path))?;
        let (major, minor) = match entry.node {
            Node::CharDevice { major, minor, .. } => (major, minor),
            _ => (0, 0),
        };
        let nlink = if matches!(entry.node, Node::Directory { .. }) {
            2
        } else {
            1
        };
        let mut writer = cpio::newc::Builder::new(&entry.path)
            .ino(index as u32 + 1)
            .mode(entry.node.mode())
            .nlink(nlink)
            .rdev_major(major)
            .rdev_minor(minor)
            .write(&mut archive, size);
        writer.write_all(data)?;
        writer.finish()?;
    }
    cpio::newc::trailer(&mut archive)?;
    Ok(archive)
}

/// `data` compressed with gzip, which every Debian kernel unpacks.
pub fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
    encoder.write_all(data)?;
    Ok(encoder.finish()?)
}

/// Fails unless `busybox` has every applet of [`APPLETS`] and [`INIT_APPLETS`]: its applet
/// names are stored as one NUL-separated list.
pub fn check_applets(busybox: &[u8]) -> Result<()> {
    let names: std::collections::HashSet<&[u8]> = busybox.split(|&b| b == 0).collect();
    let missing: Vec<&str> = APPLETS
        .iter()
        .chain(INIT_APPLETS)
        .copied()
        .filter(|applet| !names.contains(applet.as_bytes()))
        .collect();
    if !missing.is_empty() {
        bail!(
            "the busybox binary has no applet {}: drop them from APPLETS in xtask/src/scripts.rs \
             or INIT_APPLETS in xtask/src/initramfs.rs",
            missing.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use flate2::read::GzDecoder;

    use super::*;

    /// An entry as read back with the `cpio` crate's reader.
    #[derive(Debug)]
    struct ReadBack {
        name: String,
        ino: u32,
        mode: u32,
        uid: u32,
        nlink: u32,
        mtime: u32,
        rdev: (u32, u32),
        data: Vec<u8>,
    }

    fn read_back(mut archive: &[u8]) -> Vec<ReadBack> {
        let mut entries = Vec::new();
        loop {
            let mut reader = cpio::newc::Reader::new(archive).unwrap();
            let entry = reader.entry();
            if entry.is_trailer() {
                assert!(
                    reader.finish().unwrap().is_empty(),
                    "data after the trailer"
                );
                return entries;
            }
            let mut read = ReadBack {
                name: entry.name().to_owned(),
                ino: entry.ino(),
                mode: entry.mode(),
                uid: entry.uid(),
                nlink: entry.nlink(),
                mtime: entry.mtime(),
                rdev: (entry.rdev_major(), entry.rdev_minor()),
                data: Vec::new(),
            };
            reader.read_to_end(&mut read.data).unwrap();
            entries.push(read);
            archive = reader.finish().unwrap();
        }
    }

    fn fake_busybox() -> Vec<u8> {
        let mut binary = b"\x7fELF not really\0".to_vec();
        for applet in APPLETS.iter().chain(INIT_APPLETS) {
            binary.extend_from_slice(applet.as_bytes());
            binary.push(0);
        }
        binary
    }

    #[test]
    fn the_archive_reads_back_as_the_layout() {
        let busybox = fake_busybox();
        let entries = layout(busybox.clone(), b"\x7fELF clock".to_vec(), Vec::new());
        let archive = newc(&entries).unwrap();
        let read = read_back(&archive);
        assert_eq!(read.len(), entries.len());
        for (index, (read, entry)) in read.iter().zip(&entries).enumerate() {
            assert_eq!(read.name, entry.path);
            assert_eq!(read.ino, index as u32 + 1);
            assert_eq!(read.mode, entry.node.mode(), "{}", entry.path);
            assert_eq!((read.uid, read.mtime), (0, 0));
            assert_eq!(read.data, entry.node.data(), "{}", entry.path);
            let directory = read.mode & 0o170_000 == 0o040_000;
            assert_eq!(read.nlink, if directory { 2 } else { 1 });
        }
        let find = |name: &str| read.iter().find(|r| r.name == name).unwrap();

        let console = find("dev/console");
        assert_eq!((console.mode, console.rdev), (0o020_600, (5, 1)));
        assert_eq!(find("bin/busybox").data, busybox);
        assert_eq!(find("bin/busybox").mode, 0o100_755);
        let clock = find("bin/guest-clock");
        assert_eq!(
            (clock.mode, &clock.data[..]),
            (0o100_755, &b"\x7fELF clock"[..])
        );
        let sh = find("bin/sh");
        assert_eq!((sh.mode, &sh.data[..]), (0o120_777, &b"busybox"[..]));
        let insmod = find("bin/insmod");
        assert_eq!(
            (insmod.mode, &insmod.data[..]),
            (0o120_777, &b"busybox"[..])
        );
        // No modules, no /lib.
        assert!(!read.iter().any(|r| r.name.starts_with("lib")));
        assert_eq!(find("tmp").mode, 0o041_777);
        for dir in ["bin", "dev", "proc", "sys"] {
            assert_eq!(find(dir).mode, 0o040_755);
        }
        let init = find("init");
        assert_eq!(init.mode, 0o100_755);
        assert!(init.data.starts_with(b"#!/bin/sh\n"));

        // Every parent comes before its children, as the kernel needs.
        for (index, entry) in entries.iter().enumerate() {
            if let Some((parent, _)) = entry.path.rsplit_once('/') {
                assert!(entries[..index].iter().any(|e| e.path == parent));
            }
        }
    }

    #[test]
    fn headers_are_newc_and_aligned() {
        let entries = vec![
            Entry::new("a", Node::Directory { mode: 0o755 }),
            Entry::new(
                "a/bc",
                Node::File {
                    mode: 0o644,
                    data: b"12345".to_vec(),
                },
            ),
        ];
        let archive = newc(&entries).unwrap();
        // Header of "a": magic, ino 1, mode 040755, uid, gid, nlink 2, mtime, size 0, dev,
        // rdev, name size 2 (with the NUL), check; then the name padded to 4 bytes.
        let fields = [
            "070701", "00000001", "000041ed", "00000000", "00000000", "00000002", "00000000",
            "00000000", "00000000", "00000000", "00000000", "00000000", "00000002", "00000000",
        ];
        assert_eq!(&archive[..110], fields.concat().as_bytes());
        assert_eq!(&archive[110..112], b"a\0");
        // 110 + 2 = 112 is aligned: the next header follows at once.
        assert_eq!(&archive[112..118], b"070701");
        // "a/bc": 110 + 5 = 115 bytes of header and name, padded to 116; 5 bytes of data,
        // padded to 8.
        assert_eq!(&archive[112 + 110..112 + 116], b"a/bc\0\0");
        assert_eq!(&archive[112 + 116..112 + 124], b"12345\0\0\0");
        let trailer = &archive[112 + 124..];
        assert!(trailer.starts_with(b"070701"));
        assert_eq!(&trailer[110..121], b"TRAILER!!!\0");
        assert_eq!(archive.len() % 4, 0);
    }

    #[test]
    fn the_archive_is_reproducible_and_gzip_round_trips() {
        let archive = newc(&layout(fake_busybox(), vec![1, 2], Vec::new())).unwrap();
        assert_eq!(
            archive,
            newc(&layout(fake_busybox(), vec![1, 2], Vec::new())).unwrap()
        );
        let compressed = gzip(&archive).unwrap();
        assert_eq!(&compressed[..2], b"\x1f\x8b");
        let mut decompressed = Vec::new();
        GzDecoder::new(&compressed[..])
            .read_to_end(&mut decompressed)
            .unwrap();
        assert_eq!(decompressed, archive);
    }

    #[test]
    fn init_prints_the_marker_and_honours_poweroff() {
        let script = init_script();
        assert!(script.contains(&format!("say \"{MARKER}\"")));
        assert!(script.contains("mount -t devtmpfs devtmpfs /dev"));
        assert!(script.contains(&format!("        {POWEROFF}) poweroff=yes ;;")));
        assert!(script.contains(&format!(
            "        {ACTIONS}=*) actions=${{word#{ACTIONS}=}} ;;"
        )));
        assert!(script.contains("grep -F -e WARNING -e BUG -e Oops -e unhandled"));
        // Every command it runs is linked.
        for command in [
            "mount", "echo", "cat", "poweroff", "reboot", "setsid", "cttyhack", "sh", "printf",
            "sed", "grep", "dmesg", "devmem", "sleep", "[", "insmod", "dd", "head", "od", "rm",
        ] {
            assert!(
                APPLETS.contains(&command) || INIT_APPLETS.contains(&command),
                "{command}"
            );
        }
    }

    /// The host's POSIX shell, if there is one, for checking the script.
    #[cfg(unix)]
    fn host_shell(script: &str, arguments: &[&str]) -> Option<std::process::Output> {
        let dir = std::env::temp_dir().join(format!("xtask-init-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("script-{}", script.len()));
        std::fs::write(&path, script).unwrap();
        std::process::Command::new("sh")
            .args(arguments)
            .arg(&path)
            .output()
            .ok()
    }

    #[test]
    #[cfg(unix)]
    fn init_is_valid_shell() {
        let Some(output) = host_shell(&init_script(), &["-n"]) else {
            return;
        };
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    #[test]
    #[cfg(unix)]
    fn init_counts_the_online_cpus() {
        let script = init_script();
        let start = script.find("online_count() {").unwrap();
        let end = start + script[start..].find("\n}\n").unwrap() + 3;
        let function = &script[start..end];
        for (online, count) in [("0-3", 4), ("0-1,3", 3), ("0", 1), ("0,2-3,5-7", 6)] {
            let file =
                std::env::temp_dir().join(format!("xtask-online-{}-{count}", std::process::id()));
            std::fs::write(&file, format!("{online}\n")).unwrap();
            let test = function.replace(
                "/sys/devices/system/cpu/online",
                &file.display().to_string(),
            ) + "online_count\n";
            let Some(output) = host_shell(&test, &[]) else {
                return;
            };
            assert_eq!(
                String::from_utf8_lossy(&output.stdout),
                format!("{count}\n"),
                "{online}"
            );
        }
    }

    #[test]
    fn actions_round_trip_and_reject_nonsense() {
        let actions = [
            Action::Info,
            Action::Hotplug(3),
            Action::Devmem(0x4020_0000),
            Action::MsrRead(0xc000_0080),
            Action::MsrWrite(0xc001_0117),
            Action::Dmesg,
            Action::Clock,
            Action::Sleep(10),
            Action::Poweroff,
            Action::Reboot,
            Action::Script(Script::BadInput),
        ];
        let word = actions_word(&actions);
        assert_eq!(
            word,
            "cellvisor.actions=info,hotplug:3,devmem:0x40200000,msr-read:0xc0000080,\
             msr-write:0xc0010117,dmesg,clock,sleep:10,poweroff,reboot,script:bad-input"
        );
        assert_eq!(parse_actions_word(&word).unwrap().unwrap(), actions);
        assert_eq!(
            parse_actions_word("cellvisor.actions=devmem:1024,")
                .unwrap()
                .unwrap(),
            [Action::Devmem(1024)]
        );
        assert!(parse_actions_word("cellvisor.poweroff").is_none());
        assert!(parse_actions_word("console=ttyAMA0").is_none());
        for (bad, message) in [
            ("nap", "unknown action `nap`; actions: info, hotplug:CPU"),
            ("hotplug", "`hotplug`: action hotplug needs an argument"),
            ("script", "`script`: action script needs an argument"),
            ("script:nope", "`script:nope`: \"nope\" is no script"),
            ("sleep", "`sleep`: action sleep needs an argument"),
            ("sleep:", "`sleep:`: \"\" is no number of seconds"),
            ("sleep:1.5", "`sleep:1.5`: \"1.5\" is no number of seconds"),
            ("sleep:-1", "`sleep:-1`: \"-1\" is no number of seconds"),
            ("hotplug:x", "`hotplug:x`: \"x\" is no CPU number"),
            ("devmem:0xzz", "`devmem:0xzz`: \"0xzz\" is no address"),
            ("msr-read", "`msr-read`: action msr-read needs an argument"),
            (
                "msr-write",
                "`msr-write`: action msr-write needs an argument",
            ),
            (
                "msr-read:efer",
                "`msr-read:efer`: \"efer\" is no MSR address",
            ),
            ("msr-write:", "`msr-write:`: \"\" is no MSR address"),
            (
                "msr-read:0x1c0000080",
                "`msr-read:0x1c0000080`: \"0x1c0000080\" is no MSR address (MSRs are 32-bit)",
            ),
            (
                "msr",
                "unknown action `msr`; actions: info, hotplug:CPU, devmem:ADDRESS, \
                 msr-read:ADDRESS, msr-write:ADDRESS,",
            ),
            ("info:1", "`info:1`: action info takes no argument"),
        ] {
            let error = bad.parse::<Action>().unwrap_err().to_string();
            assert!(error.starts_with(message), "{bad}: {error}");
        }
    }

    #[test]
    fn msr_actions_render_and_parse() {
        for (text, action, shown) in [
            (
                "msr-read:0xc0000080",
                Action::MsrRead(0xc000_0080),
                "msr-read:0xc0000080",
            ),
            (
                "msr-read:0XC0000080",
                Action::MsrRead(0xc000_0080),
                "msr-read:0xc0000080",
            ),
            (
                "msr-write:3221291287",
                Action::MsrWrite(0xc001_0117),
                "msr-write:0xc0010117",
            ),
            ("msr-read:0", Action::MsrRead(0), "msr-read:0x0"),
            (
                "msr-write:0xffffffff",
                Action::MsrWrite(u32::MAX),
                "msr-write:0xffffffff",
            ),
        ] {
            assert_eq!(text.parse::<Action>().unwrap(), action, "{text}");
            assert_eq!(action.to_string(), shown);
            assert_eq!(shown.parse::<Action>().unwrap(), action);
        }
    }

    /// The functions of `/init` from `first` (a `name() {` line) up to the end of `last`.
    fn init_functions(first: &str, last: &str) -> String {
        let script = init_script();
        let start = script.find(&format!("{first}() {{")).unwrap();
        let last = script.find(&format!("{last}() {{")).unwrap();
        let end = last + script[last..].find("\n}\n").unwrap() + 3;
        script[start..end].to_owned()
    }

    #[test]
    #[cfg(unix)]
    fn init_checks_msr_addresses() {
        let function = init_functions("msr_address", "msr_address");
        let mut test = function.clone();
        let cases = [
            ("0xc0000080", "0xc0000080"),
            ("0XC0010117", "0xc0010117"),
            ("0x0000000c0000080", "0xc0000080"),
            ("0xffffffff", "0xffffffff"),
            ("16", "0x10"),
            ("0100", "0x64"),
            ("0", "0x0"),
            ("4294967295", "0xffffffff"),
            ("", "bad"),
            ("0x", "bad"),
            ("0x1c0000080", "bad"),
            ("4294967296", "bad"),
            ("99999999999", "bad"),
            ("0xc00g", "bad"),
            ("12a", "bad"),
            ("-1", "bad"),
            ("1 2", "bad"),
        ];
        for (text, _) in cases {
            test.push_str(&format!("msr_address '{text}' || echo bad\n"));
        }
        let Some(output) = host_shell(&test, &[]) else {
            return;
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        let expected: Vec<&str> = cases.iter().map(|(_, shown)| *shown).collect();
        assert_eq!(stdout.lines().collect::<Vec<_>>(), expected, "{stdout}");
    }

    /// Runs the MSR actions of `/init` with the host's `dd`, `od` and `head` on `device`
    /// instead of the MSR driver's device; `calls` follow the functions.
    #[cfg(unix)]
    fn msr_actions(device: &std::path::Path, scratch: &std::path::Path, calls: &str) -> String {
        let functions = init_functions("msr_address", "action_msr_write")
            .replace(MSR_DEVICE, &device.display().to_string())
            .replace("/tmp/msr", &scratch.display().to_string());
        let test = format!("say() {{ printf '%s\\n' \"$*\"; }}\n{functions}{calls}");
        let output = host_shell(&test, &[]).expect("sh");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    #[test]
    #[cfg(unix)]
    fn init_reads_and_writes_msrs() {
        if std::process::Command::new("dd")
            .arg("--version")
            .output()
            .is_err()
        {
            return;
        }
        let dir = std::env::temp_dir().join(format!("xtask-msr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let device = dir.join("device");
        let scratch = dir.join("value");
        // EFER at offset 0x80 (of a small file), as Linux sets it, little-endian.
        let mut msrs = vec![0xaa; 0x100];
        msrs[0x80..0x88].copy_from_slice(&0xd01_u64.to_le_bytes());
        std::fs::write(&device, &msrs).unwrap();
        let stdout = msr_actions(
            &device,
            &scratch,
            "action_msr_read 0x80\naction_msr_write 128\naction_msr_read 0x80\n\
             action_msr_read 0x100\naction_msr_read nonsense\naction_msr_write 0x1c0000080\n",
        );
        assert_eq!(
            stdout,
            "cellvisor-initramfs: msr-read 0x80 value=0x0000000000000d01 status=0\n\
             cellvisor-initramfs: msr-write 0x80 status=0\n\
             cellvisor-initramfs: msr-read 0x80 value=0x0000000000000000 status=0\n\
             cellvisor-initramfs: msr-read 0x100 failed: dd read no 8 bytes\n\
             cellvisor-initramfs: msr-read nonsense failed: not an MSR address\n\
             cellvisor-initramfs: msr-write 0x1c0000080 failed: not an MSR address\n"
        );
        // Only those 8 bytes were written.
        let written = std::fs::read(&device).unwrap();
        assert_eq!(written.len(), 0x100);
        assert_eq!(written[0x80..0x88], [0; 8]);
        assert!(written[..0x80]
            .iter()
            .chain(&written[0x88..])
            .all(|&b| b == 0xaa));

        // dd's errors (as the MSR driver's EIO for an MSR that raises #GP) with its status.
        let stdout = msr_actions(&dir, &scratch, "action_msr_read 0xc0000080\n");
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 2, "{stdout}");
        assert!(
            lines[0].starts_with("cellvisor-initramfs: msr-read 0xc0000080: dd: "),
            "{stdout}"
        );
        assert_eq!(
            lines[1],
            "cellvisor-initramfs: msr-read 0xc0000080 status=1"
        );
        let full = std::path::Path::new("/dev/full");
        if full.exists() {
            let stdout = msr_actions(full, &scratch, "action_msr_write 0xc0010117\n");
            let lines: Vec<&str> = stdout.lines().collect();
            assert_eq!(lines.len(), 2, "{stdout}");
            assert!(
                lines[0].starts_with("cellvisor-initramfs: msr-write 0xc0010117: dd: "),
                "{stdout}"
            );
            assert_eq!(
                lines[1],
                "cellvisor-initramfs: msr-write 0xc0010117 status=1"
            );
        }

        // Without the device and without the module, nothing is run.
        let stdout = msr_actions(&dir.join("none"), &scratch, "action_msr_read 0x10\n");
        assert_eq!(
            stdout,
            format!(
                "cellvisor-initramfs: msr-read 0x10 failed: no {}/none and no \
                 /lib/modules/msr.ko\n",
                dir.display()
            )
        );
        let script = init_script();
        assert!(script.contains("        msr-read:*) action_msr_read \"${action#msr-read:}\" ;;"));
        assert!(
            script.contains("        msr-write:*) action_msr_write \"${action#msr-write:}\" ;;")
        );
        assert!(script.contains("insmod /lib/modules/msr.ko 2>&1"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_amd64_layout_has_the_msr_module() {
        let module = NamedFile {
            name: MSR_MODULE.into(),
            data: b"\x7fELF msr".to_vec(),
        };
        let mut entries = layout(fake_busybox(), vec![1], vec![module]);
        let read = read_back(&newc(&entries).unwrap());
        let find = |name: &str| read.iter().find(|r| r.name == name).unwrap();
        assert_eq!(find("lib").mode, 0o040_755);
        assert_eq!(find("lib/modules").mode, 0o040_755);
        let msr = find("lib/modules/msr.ko");
        assert_eq!((msr.mode, &msr.data[..]), (0o100_644, &b"\x7fELF msr"[..]));

        // A board's files share /lib.
        let files = RootCellFiles {
            tool: vec![],
            configs: vec![],
            inmates: vec![],
        };
        extend(&mut entries, root_cell_entries(&files));
        let lib: Vec<usize> = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.path == "lib")
            .map(|(index, _)| index)
            .collect();
        assert_eq!(lib.len(), 1);
        let cellvisor = entries
            .iter()
            .position(|e| e.path == "lib/cellvisor")
            .unwrap();
        assert!(lib[0] < cellvisor);
        // Only directories merge.
        let before = entries.len();
        extend(
            &mut entries,
            vec![Entry::new(
                "lib/modules/msr.ko",
                Node::File {
                    mode: 0o644,
                    data: vec![],
                },
            )],
        );
        assert_eq!(entries.len(), before + 1);
    }

    #[test]
    fn sleep_renders_and_parses() {
        for (action, text) in [
            (Action::Sleep(10), "sleep:10"),
            (Action::Sleep(0), "sleep:0"),
            (Action::Sleep(u32::MAX), "sleep:4294967295"),
        ] {
            assert_eq!(action.to_string(), text);
            assert_eq!(text.parse::<Action>().unwrap(), action);
        }
        assert_eq!(
            parse_actions_word("cellvisor.actions=clock,sleep:10,poweroff")
                .unwrap()
                .unwrap(),
            [Action::Clock, Action::Sleep(10), Action::Poweroff]
        );
        let error = "sleep:4294967296".parse::<Action>().unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            "`sleep:4294967296`: \"4294967296\" is no number of seconds: \
             number too large to fit in target type"
        );
    }

    #[test]
    #[cfg(unix)]
    fn init_sleeps_and_reports() {
        let script = init_script();
        let start = script.find("action_sleep() {").unwrap();
        let end = start + script[start..].find("\n}\n").unwrap() + 3;
        let test = format!(
            "say() {{ printf '%s\\n' \"$*\"; }}\n{}action_sleep 0\naction_sleep nonsense\n",
            &script[start..end]
        );
        let Some(output) = host_shell(&test, &[]) else {
            return;
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        let mut lines = stdout.lines();
        assert_eq!(lines.next(), Some("cellvisor-initramfs: slept 0 s"));
        let failed = lines.next().unwrap_or_default();
        assert!(
            failed.starts_with("cellvisor-initramfs: sleep nonsense failed (status "),
            "{stdout}"
        );
        assert!(script.contains("        sleep:*) action_sleep \"${action#sleep:}\" ;;"));
    }

    #[test]
    fn rejects_bad_paths_and_missing_applets() {
        let file = Node::Directory { mode: 0o755 };
        assert!(newc(&[Entry::new("/abs", file.clone())]).is_err());
        assert!(newc(&[Entry::new("", file)]).is_err());
        assert!(check_applets(&fake_busybox()).is_ok());
        let error = check_applets(b"\0sh\0mount\0").unwrap_err().to_string();
        assert!(error.contains("cttyhack"), "{error}");
        assert!(error.contains("insmod, od:"), "{error}");
        assert!(!error.contains(" sh,"), "{error}");
    }

    #[test]
    #[cfg(unix)]
    fn init_runs_scripts_and_reports_every_line() {
        let script = init_script();
        let start = script.find("action_script() {").unwrap();
        let end = start + script[start..].find("\n}\n").unwrap() + 3;
        let dir = std::env::temp_dir().join(format!("xtask-scripts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("greet.sh"),
            "echo hello\necho 'to stderr' >&2\necho 'cellvisor-demo: x status=1'\nexit 3\n",
        )
        .unwrap();
        let function =
            script[start..end].replace(&format!("/{}", scripts::DIR), &dir.display().to_string());
        let test = format!(
            "say() {{ printf '%s\\n' \"$*\"; }}\n{function}action_script greet\n\
             action_script missing\naction_script '../x'\n"
        );
        let Some(output) = host_shell(&test, &[]) else {
            return;
        };
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            format!(
                "cellvisor-initramfs: script greet: hello\n\
                 cellvisor-initramfs: script greet: to stderr\n\
                 cellvisor-initramfs: script greet: cellvisor-demo: x status=1\n\
                 cellvisor-initramfs: script greet done status=3\n\
                 cellvisor-initramfs: script missing failed: no {}/missing.sh\n\
                 cellvisor-initramfs: script ../x failed: not a script name\n",
                dir.display()
            )
        );
        assert!(script.contains("        script:*) action_script \"${action#script:}\" ;;"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_board_initramfs_has_the_tool_configurations_scripts_and_inmates() {
        let files = RootCellFiles {
            tool: b"\x7fELF tool".to_vec(),
            configs: vec![
                crate::tool::NamedFile {
                    name: "demo.bin".into(),
                    data: b"CVCF".to_vec(),
                },
                crate::tool::NamedFile {
                    name: "demo.toml".into(),
                    data: b"name = \"demo\"".to_vec(),
                },
            ],
            inmates: vec![crate::tool::NamedFile {
                name: "timer-demo.bin".into(),
                data: vec![1, 2, 3],
            }],
        };
        let mut entries = layout(fake_busybox(), vec![1], Vec::new());
        extend(&mut entries, root_cell_entries(&files));
        let read = read_back(&newc(&entries).unwrap());
        let find = |name: &str| {
            read.iter()
                .find(|r| r.name == name)
                .unwrap_or_else(|| panic!("no {name}"))
        };
        assert_eq!(find("bin/cellvisor").mode, 0o100_755);
        assert_eq!(find("bin/cellvisor").data, b"\x7fELF tool");
        assert_eq!(find("etc/cellvisor/demo.toml").data, b"name = \"demo\"");
        assert_eq!(find("etc/cellvisor/demo.bin").mode, 0o100_644);
        assert_eq!(find("lib/cellvisor/inmates/timer-demo.bin").data, [1, 2, 3]);
        let demo = find("etc/cellvisor/scripts/demo.sh");
        assert_eq!(demo.mode, 0o100_755);
        assert!(demo.data.starts_with(b"#!/bin/sh\n"));
        for script in Script::ALL {
            find(&format!("etc/cellvisor/scripts/{}.sh", script.name()));
        }
        // Parents first, no path twice.
        for (index, entry) in entries.iter().enumerate() {
            if let Some((parent, _)) = entry.path.rsplit_once('/') {
                assert!(
                    entries[..index].iter().any(|e| e.path == parent),
                    "{}",
                    entry.path
                );
            }
            assert!(
                !entries[..index].iter().any(|e| e.path == entry.path),
                "{}",
                entry.path
            );
        }
    }
}
