//! The x86 image on Intel VMX with EPT, in Bochs (Debian's `bochs` 2.7: QEMU's TCG emulates
//! AMD SVM but no VMX). GRUB boots it from an ISO made with `grub-mkrescue`, by Multiboot like
//! QEMU's `-kernel`, with the same modules (Debian's amd64 kernel, the board's initramfs, the
//! system configuration), so the very image of the `qemu-x86` board runs on the same files:
//! 4 CPUs, 2 GiB of RAM (the memory map of `config/system.toml`).
//!
//! The root cell boots to `/init`, takes CPU 3 offline and back, tries to read the
//! hypervisor's memory and runs the cells of the QEMU test (`x86-cells.sh`: the demo cell on
//! CPU 3 with `timer-demo`, three wild inmates, `smp-demo` on CPUs 2 and 3, `uart-demo`, 20
//! cycles; the PCI cell is skipped: Bochs has no `edu`). The inmates report on COM2. The
//! kernel runs with `loglevel=5`, so that its notices do not cut the script's lines; its
//! warnings and errors still show, and none may appear (bare, Debian's kernel logs none on
//! this machine).
//!
//! Debian builds Bochs with its debugger, which stops before the first instruction: a
//! command file (`-rc`) continues. Its `term` display library needs a terminal: `script`
//! gives it a pseudo-terminal. COM1 and COM2 go to files, which are polled for the expected
//! lines.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::board::Board;
use crate::image::{self, Kind};
use crate::workspace::Workspace;

/// The system test's name.
pub const NAME: &str = "bochs-x86-vmx-root-cell";
/// How long Bochs may take to print every expected line (about 160 s here).
const TIMEOUT: Duration = Duration::from_secs(900);
/// What the root cell's `/init` does. No power-off at the end: Bochs' 16550 sends the root
/// cell's user-space output (interrupt-driven, unlike the kernel's) slowly, and a power-off
/// loses what is still queued (bare as well); the test stops Bochs once every line is there.
const ACTIONS: &str = "info,hotplug:3,devmem:0x1000000,msr-read:0xc0000080,script:x86-cells";
/// The tools it needs, with the Debian package of each.
pub const TOOLS: [(&str, &str); 4] = [
    ("bochs", "bochs"),
    ("grub-mkrescue", "grub-pc-bin"),
    ("xorriso", "xorriso"),
    ("script", "bsdutils"),
];
/// Bochs' BIOS and VGA BIOS (Debian's `bochsbios` and `vgabios`).
const BIOS: &str = "/usr/share/bochs/BIOS-bochs-latest";
const VGA_BIOS: &str = "/usr/share/vgabios/vgabios.bin";

/// What must appear on COM1, in this order (`{version}` and `{board}` filled in; `*` stands
/// for anything within the line): the boot, VMX with EPT found, the first VMX world switch (a
/// real-mode guest behind EPT tables from `cellvisor-paging`), every CPU, the root cell's
/// kernel at `/init` on 4 CPUs, CPU 3 off and on again, a user-space read of the hypervisor's
/// memory refused (`devmem` dies of the #GP) and EFER as Linux set it; then `x86-cells.sh`,
/// as on QEMU: the demo cell with `timer-demo` (create, load, start, running, shutdown,
/// destroy), the three wild inmates stopped and reported (memory, an IPI to a root CPU, a
/// root IOAPIC pin), `uart-demo`, and 20 create/load/start/destroy cycles without a lost
/// frame.
const EXPECTED: [&str; 36] = [
    "cellvisor {version} on {board} (x86-64), Multiboot ok",
    "cellvisor: CPU GenuineIntel: Intel VMX with EPT",
    "cellvisor: VMX world switch works (CPUID, HLT)",
    "cellvisor {version} on {board}: 4/4 CPUs in long mode",
    "cellvisor: root cell \"linux\": Linux at ",
    "cellvisor-initramfs: /init reached",
    "cellvisor-initramfs: cpus online=0-3 count=4",
    "cellvisor-initramfs: hotplug cpu3 off count=3",
    "cellvisor-initramfs: hotplug cpu3 on count=4",
    "cellvisor-initramfs: devmem 0x1000000 status=139",
    // SCE, LME, LMA, NXE: VMX keeps EFER in the VMCS, nothing of its own in it.
    "cellvisor-initramfs: msr-read 0xc0000080 value=0x0000000000000d01 status=0",
    "cellvisor-demo: create status=0",
    "cellvisor-demo: load status=0",
    "cellvisor-demo: start status=0",
    "cellvisor-demo: running state=running",
    "cellvisor-demo: stats status=0",
    "cellvisor-demo: shutdown status=0",
    "cellvisor-demo: destroy status=0",
    "cellvisor-demo: cpus online=0-3 after",
    "cellvisor-demo: wild state=failed",
    "cellvisor-demo: wild console report: cellvisor: cell \"demo\" (CPU 3): read at 0x40000000 (RIP *) is outside its memory: cell stopped",
    "cellvisor-demo: wild-destroy status=0",
    "cellvisor-demo: ipi state=failed",
    "cellvisor-demo: ipi console report: cellvisor: cell \"demo\" (CPU 3): local APIC write 0x40 at offset 0x300: interrupt command: CPU 0 belongs to another cell: cell stopped",
    "cellvisor-demo: ipi-destroy status=0",
    "cellvisor-demo: ioapic state=failed",
    "cellvisor-demo: ioapic console report: cellvisor: cell \"demo\" (CPU 3): IOAPIC access: ",
    "cellvisor-demo: ioapic-destroy status=0",
    // Bochs has no `edu`: the PCI cell is skipped. The cell of two CPUs runs on VMX too.
    "cellvisor-demo: pci: no function 00:05.0, no PCI cell",
    "cellvisor-demo: smp-start status=0",
    "cellvisor-demo: smp state=running",
    "cellvisor-demo: smp-shutdown status=0",
    "cellvisor-demo: smp-destroy status=0",
    "cellvisor-demo: uart-shutdown status=0",
    "cellvisor-demo: x86 cycles=20 failed=0 ",
    "cellvisor-initramfs: script x86-cells done status=0",
];

/// The hypervisor's report of the read of its memory. The hypervisor prints its reports (of
/// the root cell and of the cells it stops) at once, possibly inside a line the root cell's
/// slow user-space output has not finished: [`EXPECTED`] is looked for with them taken out,
/// this among them.
const EXPECTED_REPORT: &str = "cellvisor: cell \"root\" (CPU *): read at 0x1000000 (RIP *, user, fault code *) is outside its memory: #GP injected";

/// What starts a report of the hypervisor's (unless the root cell's script quotes it, after
/// `report: `).
const REPORT_START: &str = "cellvisor: cell \"";

/// What the demo cells print on COM2: `timer-demo`'s start and ticks, `smp-demo`'s second
/// CPU started, interrupted and restarted by its first, `uart-demo`'s interrupt.
const EXPECTED_COM2: [&str; 7] = [
    "timer-demo: started on 8250 at 0x2f8",
    "timer-demo: ticks=100 ",
    "smp-demo: AP up after INIT and start-up IPI, vector 0x1",
    "smp-demo: NMI to the AP received",
    "smp-demo: AP stopped by INIT and up again: 2 starts",
    "smp-demo: shutdown approved",
    "uart-demo: COM2 interrupt through IOAPIC pin 3 received",
];

/// Lines of a kernel problem, none of which may appear on COM1.
const PROBLEMS: [&str; 6] = [
    "WARNING:",
    "BUG:",
    "Oops",
    "Call Trace",
    "ACPI Error",
    "PCI: Fatal",
];

/// Fails unless every tool is installed, naming the package to install.
pub fn require_tools() -> Result<()> {
    for (tool, package) in TOOLS {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            bail!("{tool} is not installed (Debian package {package}); .ci/run installs it");
        }
    }
    for file in [BIOS, VGA_BIOS] {
        if !Path::new(file).is_file() {
            bail!("{file} is missing (Debian packages bochsbios and vgabios)");
        }
    }
    Ok(())
}

/// Builds the board's image and Linux files, boots them in Bochs from a GRUB ISO and waits
/// for [`EXPECTED`] on COM1 and [`EXPECTED_COM2`] on COM2, with no [`PROBLEMS`].
pub fn boot_test(workspace: &Workspace, board: &Board) -> Result<()> {
    require_tools()?;
    let image = image::build(workspace, board, Kind::Normal)?;
    let (files, _) = crate::linux::prepare_board(workspace, board, false)?;
    let config = image
        .bin
        .parent()
        .context("the image has no directory")?
        .join("system.bin");
    let dir = workspace.target_dir.join("system-tests").join("bochs");
    let _ = fs::remove_dir_all(&dir);
    let grub = dir.join("iso").join("boot").join("grub");
    fs::create_dir_all(&grub).with_context(|| format!("cannot create {}", grub.display()))?;
    for (from, to) in [
        (&image.bin, "cellvisor.bin"),
        (&files.image, "bzImage"),
        (&files.initramfs, "initramfs.cpio.gz"),
        (&config, "system.bin"),
    ] {
        fs::copy(from, dir.join("iso/boot").join(to))
            .with_context(|| format!("cannot copy {}", from.display()))?;
    }
    let append = board
        .multiboot
        .as_ref()
        .map(|m| m.append.clone())
        .unwrap_or_default();
    fs::write(
        grub.join("grub.cfg"),
        format!(
            "set timeout=0\nmenuentry cellvisor {{\n    \
             multiboot /boot/cellvisor.bin {append} loglevel=5 cellvisor.actions={ACTIONS}\n    \
             module /boot/bzImage\n    module /boot/initramfs.cpio.gz\n    \
             module /boot/system.bin\n    boot\n}}\n"
        ),
    )?;
    let status = Command::new("grub-mkrescue")
        .args(["-o", "cellvisor.iso", "iso"])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("cannot run grub-mkrescue")?;
    if !status.success() {
        bail!("grub-mkrescue failed ({status})");
    }
    fs::write(
        dir.join("bochsrc"),
        format!(
            "megs: 2048\n\
             cpu: model=corei7_haswell_4770, count=4, ips=50000000\n\
             romimage: file={BIOS}\n\
             vgaromimage: file={VGA_BIOS}\n\
             ata0-master: type=cdrom, path=cellvisor.iso, status=inserted\n\
             boot: cdrom\n\
             com1: enabled=1, mode=file, dev=com1.log\n\
             com2: enabled=1, mode=file, dev=com2.log\n\
             display_library: term\n\
             log: bochs.log\n\
             panic: action=fatal\n"
        ),
    )?;
    fs::write(dir.join("continue.rc"), "c\n")?;
    println!(
        "    bochs -q -f bochsrc -rc continue.rc (in {})",
        workspace.relative(&dir).display()
    );
    let mut command = Command::new("script");
    command
        .args(["-qfec", "bochs -q -f bochsrc -rc continue.rc", "/dev/null"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command.spawn().context("cannot start script (bsdutils)")?;
    let expected: Vec<String> = EXPECTED
        .iter()
        .map(|line| {
            line.replace("{version}", &board.version)
                .replace("{board}", &board.name)
        })
        .collect();
    let start = Instant::now();
    let mut exited = None;
    let outcome = loop {
        let console = fs::read(dir.join("com1.log")).unwrap_or_default();
        let console = String::from_utf8_lossy(&console);
        let com2 = fs::read(dir.join("com2.log")).unwrap_or_default();
        let com2 = String::from_utf8_lossy(&com2);
        let (reports, rest) = split_reports(&console);
        let missing = first_missing(&rest, &expected)
            .or_else(|| first_missing(&reports, &[EXPECTED_REPORT]))
            .map(|want| (want, "COM1", "com1.log"))
            .or_else(|| {
                first_missing(&com2, &EXPECTED_COM2).map(|want| (want, "COM2", "com2.log"))
            });
        if let Some(problem) = console
            .lines()
            .find(|line| PROBLEMS.iter().any(|p| line.contains(p)))
        {
            break Err(anyhow::anyhow!(
                "the root cell's kernel logged a problem: {problem:?} (COM1 in {})",
                workspace.relative(&dir.join("com1.log")).display()
            ));
        }
        match missing {
            None => break Ok(start.elapsed()),
            Some((want, port, file)) if start.elapsed() > TIMEOUT => {
                break Err(anyhow::anyhow!(
                    "timed out after {} s waiting for a line containing {want:?} ({port} in {})",
                    TIMEOUT.as_secs(),
                    workspace.relative(&dir.join(file)).display()
                ))
            }
            Some(_) => {}
        }
        // Bochs exits when the root cell powers off: the files are read once more after that.
        if let Some(status) = exited {
            break Err(anyhow::anyhow!(
                "Bochs exited ({status}) before every line (its log: {})",
                workspace.relative(&dir.join("bochs.log")).display()
            ));
        }
        if let Ok(Some(status)) = child.try_wait() {
            exited = Some(status);
            continue;
        }
        sleep(Duration::from_millis(100));
    };
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) has no memory-safety preconditions; the group is script's and
        // Bochs', created at spawn time, and script is not reaped yet.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    let _ = child.kill();
    let _ = child.wait();
    let elapsed = outcome?;
    println!(
        "    every line after {:.1} s of Bochs (COM1 and COM2 in {})",
        elapsed.as_secs_f64(),
        workspace.relative(&dir).display()
    );
    Ok(())
}

/// The first of `expected` that does not appear in `text` in order, each on a line after the
/// previous one's (a `*` in one stands for anything within the line).
fn first_missing<'a, S: AsRef<str>>(text: &str, expected: &'a [S]) -> Option<&'a str> {
    let mut lines = text.lines();
    expected
        .iter()
        .map(AsRef::as_ref)
        .find(|want| !lines.any(|line| matches(line, want)))
}

/// The hypervisor's reports in `text` (each from [`REPORT_START`] to the end of its line,
/// unless quoted after `report: `), and the text without them.
fn split_reports(text: &str) -> (String, String) {
    let (mut reports, mut rest) = (String::new(), String::new());
    let mut remaining = text;
    while let Some(at) = remaining.find(REPORT_START) {
        rest.push_str(&remaining[..at]);
        if remaining[..at].ends_with("report: ") {
            rest.push_str(REPORT_START);
            remaining = &remaining[at + REPORT_START.len()..];
            continue;
        }
        let report = &remaining[at..];
        let end = report.find('\n').map_or(report.len(), |n| n + 1);
        reports.push_str(&report[..end]);
        remaining = &report[end..];
    }
    rest.push_str(remaining);
    (reports, rest)
}

/// Whether `line` holds the parts of `pattern` between its `*`s, in order.
fn matches(line: &str, pattern: &str) -> bool {
    let mut rest = line;
    for part in pattern.split('*') {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_lines_are_found_in_order_only() {
        let text = "a one\nb two\nc three\n";
        assert_eq!(first_missing(text, &["one", "three"]), None);
        assert_eq!(first_missing(text, &["three", "one"]), Some("one"));
        assert_eq!(first_missing(text, &["one", "four"]), Some("four"));
        assert_eq!(first_missing("", &["one"]), Some("one"));
        assert_eq!(first_missing("x a1b2c y\n", &["a*b*c"]), None);
        assert_eq!(first_missing("x c2b1a y\n", &["a*b*c"]), Some("a*b*c"));
    }

    #[test]
    fn reports_come_out_of_the_lines_they_cut() {
        let text = "one\nhotplug cpucellvisor: cell \"root\" (CPU 3): read at 0x1000000: refused\n3 on\ntwo\n";
        let (reports, rest) = split_reports(text);
        assert_eq!(
            reports,
            "cellvisor: cell \"root\" (CPU 3): read at 0x1000000: refused\n"
        );
        assert_eq!(rest, "one\nhotplug cpu3 on\ntwo\n");
        assert_eq!(
            split_reports("plain\n"),
            (String::new(), "plain\n".to_owned())
        );
        // A report the script quotes stays in its line.
        let quoted = "x console report: cellvisor: cell \"demo\" (CPU 3): stopped\n";
        assert_eq!(split_reports(quoted), (String::new(), quoted.to_owned()));
    }
}
