//! The x86 image on Intel VMX with EPT, in Bochs (Debian's `bochs` 2.7: QEMU's TCG emulates
//! AMD SVM but no VMX). GRUB boots it from an ISO made with `grub-mkrescue`, by Multiboot like
//! QEMU's `-kernel`, so the very image of the `qemu-x86` board runs.
//!
//! Debian builds Bochs with its debugger, which stops before the first instruction: a
//! command file (`-rc`) continues. Its `term` display library needs a terminal: `script`
//! gives it a pseudo-terminal. COM1 goes to a file, which is polled for the expected lines.

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
pub const NAME: &str = "bochs-x86-vmx-boot";
/// How long Bochs may take to print every expected line (about 3 s here).
const TIMEOUT: Duration = Duration::from_secs(120);
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

/// What must appear on COM1, in this order (`{version}` and `{board}` filled in): the boot,
/// VMX with EPT found, the first VMX world switch (a real-mode guest behind EPT tables from
/// `cellvisor-paging`, its CPUID and HLT exits), and the CPU count.
const EXPECTED: [&str; 6] = [
    "cellvisor {version} on {board} (x86-64), Multiboot ok",
    "cellvisor: CPU GenuineIntel: Intel VMX with EPT",
    "cellvisor: VMX guest exit: CPUID at RIP 0x1000",
    "cellvisor: VMX guest exit: HLT at RIP 0x1002",
    "cellvisor: VMX world switch works (CPUID, HLT)",
    "cellvisor {version} on {board}: 1/1 CPUs in long mode",
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

/// Builds the board's image, boots it in Bochs from a GRUB ISO and waits for [`EXPECTED`].
pub fn boot_test(workspace: &Workspace, board: &Board) -> Result<()> {
    require_tools()?;
    let image = image::build(workspace, board, Kind::Normal)?;
    let dir = workspace.target_dir.join("system-tests").join("bochs");
    let _ = fs::remove_dir_all(&dir);
    let grub = dir.join("iso").join("boot").join("grub");
    fs::create_dir_all(&grub).with_context(|| format!("cannot create {}", grub.display()))?;
    fs::copy(&image.bin, dir.join("iso/boot/cellvisor.bin"))
        .with_context(|| format!("cannot copy {}", image.bin.display()))?;
    fs::write(
        grub.join("grub.cfg"),
        "set timeout=0\nmenuentry cellvisor {\n    multiboot /boot/cellvisor.bin\n    boot\n}\n",
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
            "megs: 512\n\
             cpu: model=corei7_haswell_4770, count=1, ips=50000000\n\
             romimage: file={BIOS}\n\
             vgaromimage: file={VGA_BIOS}\n\
             ata0-master: type=cdrom, path=cellvisor.iso, status=inserted\n\
             boot: cdrom\n\
             com1: enabled=1, mode=file, dev=com1.log\n\
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
    let outcome = loop {
        let console = fs::read(dir.join("com1.log")).unwrap_or_default();
        let console = String::from_utf8_lossy(&console);
        let mut lines = console.lines();
        let missing = expected
            .iter()
            .find(|want| !lines.any(|line| line.contains(want.as_str())));
        match missing {
            None => break Ok(()),
            Some(want) if start.elapsed() > TIMEOUT => {
                break Err(anyhow::anyhow!(
                    "timed out after {} s waiting for a line containing {want:?} (COM1 in {})",
                    TIMEOUT.as_secs(),
                    workspace.relative(&dir.join("com1.log")).display()
                ))
            }
            Some(_) => {}
        }
        if let Ok(Some(status)) = child.try_wait() {
            break Err(anyhow::anyhow!(
                "Bochs exited ({status}) before every line (its log: {})",
                workspace.relative(&dir.join("bochs.log")).display()
            ));
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
    outcome
}
