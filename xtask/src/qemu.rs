//! QEMU command lines for a board, and running QEMU: interactively on the terminal
//! (`cargo xtask run`), or with its console read line by line (the system tests).

use std::env;
use std::fmt;
use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::board::Board;

/// How to boot a board: what overrides its defaults.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// GIC version; the board's highest by default.
    pub gic: Option<u32>,
    /// Number of CPUs.
    pub smp: Option<u32>,
    /// CPU model; only for boards with a `cpu` key.
    pub cpu: Option<String>,
    /// RAM size (`-m`).
    pub memory: Option<String>,
    /// Deterministic execution ([`DETERMINISTIC`]).
    pub icount: bool,
}

/// The QEMU arguments of deterministic execution: one instruction per nanosecond of guest
/// time, idle guest time that does not wait for the host clock (`-icount shift=0,sleep=off`),
/// and guest random numbers from a fixed seed (`-seed 0`; otherwise the `rng-seed` and
/// `kaslr-seed` QEMU puts into the device tree differ from boot to boot, and so does the
/// kernel's work).
pub const DETERMINISTIC: [&str; 4] = ["-icount", "shift=0,sleep=off", "-seed", "0"];

/// A QEMU invocation.
#[derive(Debug, Clone)]
pub struct Qemu {
    program: String,
    args: Vec<String>,
    /// Where the second serial port (UART1) writes, if the machine gets one.
    second_serial: Option<String>,
}

impl Qemu {
    /// QEMU booting `kernel` (an ELF, loaded at its link address, or a Linux arm64 `Image`,
    /// which QEMU starts with the device tree's address in x0) on `board`, without any console
    /// or display option yet.
    pub fn new(board: &Board, options: &Options, kernel: &Path) -> Result<Self> {
        let mut args = vec!["-M".to_owned(), board.machine(options.gic)?];
        match (&options.cpu, &board.cpu) {
            (Some(_), None) => bail!(
                "board {} has a fixed CPU model: --cpu cannot be given",
                board.name
            ),
            (Some(cpu), Some(_)) | (None, Some(cpu)) => {
                args.extend(["-cpu".to_owned(), cpu.clone()])
            }
            (None, None) => {}
        }
        let smp = options.smp.unwrap_or(board.smp);
        if smp == 0 {
            bail!("--smp must be at least 1");
        }
        let memory = options.memory.as_deref().unwrap_or(&board.memory);
        args.extend([
            "-smp".to_owned(),
            smp.to_string(),
            "-m".to_owned(),
            memory.to_owned(),
            // No host audio: nothing uses it, and its back-ends only print errors (zcu102).
            "-audio".to_owned(),
            "none".to_owned(),
            "-kernel".to_owned(),
            kernel.display().to_string(),
        ]);
        for device in &board.devices {
            args.extend(["-device".to_owned(), device.clone()]);
        }
        if options.icount {
            args.extend(DETERMINISTIC.map(str::to_owned));
        }
        Ok(Self {
            program: board.qemu.clone(),
            args,
            second_serial: None,
        })
    }

    /// A shell script standing in for QEMU, for tests; it ignores QEMU's arguments.
    #[cfg(test)]
    pub fn shell(script: &str) -> Self {
        Self {
            program: "sh".to_owned(),
            args: vec!["-c".to_owned(), script.to_owned(), "sh".to_owned()],
            second_serial: None,
        }
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Adds what Linux gets from QEMU besides `-kernel`: the initramfs (`-initrd`), the kernel
    /// command line (`-append`, into the device tree's `/chosen`) and, if given, the device
    /// tree to pass instead of QEMU's own (`-dtb`).
    pub fn linux(self, initrd: &Path, append: &str, dtb: Option<&Path>) -> Self {
        let mut qemu = self.args([
            "-initrd".to_owned(),
            initrd.display().to_string(),
            "-append".to_owned(),
            append.to_owned(),
        ]);
        if let Some(dtb) = dtb {
            qemu = qemu.dtb(dtb);
        }
        qemu
    }

    /// Passes `dtb` as the device tree (`-dtb`).
    pub fn dtb(self, dtb: &Path) -> Self {
        self.args(["-dtb".to_owned(), dtb.display().to_string()])
    }

    /// Adds the Multiboot modules (`-initrd "a,b"`, QEMU's list; a comma in a path is
    /// doubled) and the command line the Multiboot loader passes (`-append`).
    pub fn multiboot(self, modules: &[&Path], append: &str) -> Self {
        let modules: Vec<String> = modules
            .iter()
            .map(|m| m.display().to_string().replace(',', ",,"))
            .collect();
        self.args([
            "-initrd".to_owned(),
            modules.join(","),
            "-append".to_owned(),
            append.to_owned(),
        ])
    }

    /// Loads `file` as it is at physical address `address`, with a generic loader device.
    pub fn load(self, file: &Path, address: u64) -> Self {
        // In QEMU's option syntax a comma is written twice.
        let file = file.display().to_string().replace(',', ",,");
        self.args([
            "-device".to_owned(),
            format!("loader,file={file},addr={address:#x},force-raw=on"),
        ])
    }

    /// Gives the machine a second serial port (QEMU `virt`: a second PL011 at 0x0904_0000;
    /// ZynqMP: UART1) whose output goes to `file`. The console stays the first one.
    pub fn second_serial(mut self, file: &Path) -> Self {
        self.second_serial = Some(file.display().to_string());
        self
    }

    /// The `-serial` options: the console on `console`, then the second port if any.
    fn serials(&self, console: &str) -> Vec<String> {
        let mut args = vec!["-serial".to_owned(), console.to_owned()];
        if let Some(file) = &self.second_serial {
            args.extend(["-serial".to_owned(), format!("file:{file}")]);
        }
        args
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.args);
        command
    }

    /// Runs QEMU on this terminal (`-nographic`: the serial console on stdio, Ctrl-A X quits).
    /// With a timeout, stops it after that long and fails.
    pub fn run_interactive(&self, timeout: Option<Duration>) -> Result<()> {
        let mut qemu = self.clone().args(["-nographic"]);
        if self.second_serial.is_some() {
            // With an explicit -serial, -nographic no longer puts the console on stdio.
            qemu = qemu.args(self.serials("mon:stdio"));
        }
        println!("==> {qemu}");
        let mut child = qemu
            .command()
            .spawn()
            .with_context(|| format!("cannot start {}", self.program))?;
        let status = match timeout {
            None => child.wait().context("cannot wait for QEMU")?,
            Some(timeout) => match wait_timeout(&mut child, timeout)? {
                Some(status) => status,
                None => {
                    // SIGTERM first: QEMU then restores the terminal it put in raw mode.
                    terminate(&child);
                    if wait_timeout(&mut child, Duration::from_secs(3))?.is_none() {
                        child.kill().ok();
                        child.wait().ok();
                    }
                    bail!("timed out after {} s", timeout.as_secs());
                }
            },
        };
        if !status.success() {
            bail!("{} exited with {status}", self.program);
        }
        Ok(())
    }

    /// Starts QEMU with the serial console on a pipe (no monitor, no display, stdin closed),
    /// in its own process group so that it and its children can be killed together.
    pub fn spawn_console(&self) -> Result<Console> {
        self.spawn(false)
    }

    /// [`Qemu::spawn_console`] with the console's input on a pipe too, for
    /// [`Console::type_text`].
    pub fn spawn_console_with_input(&self) -> Result<Console> {
        self.spawn(true)
    }

    fn spawn(&self, input: bool) -> Result<Console> {
        let mut command = self
            .clone()
            .args(self.serials("stdio"))
            .args(["-monitor", "none", "-display", "none"])
            .command();
        command
            .stdin(if input { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", self.program))?;
        let (sender, lines) = mpsc::channel();
        forward_lines(
            child.stdout.take().expect("piped"),
            Stream::Console,
            sender.clone(),
        );
        forward_lines(child.stderr.take().expect("piped"), Stream::Stderr, sender);
        Ok(Console {
            input: child.stdin.take(),
            child,
            lines,
            status: None,
        })
    }
}

impl fmt::Display for Qemu {
    /// The command as it could be typed in a shell.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.program)?;
        for arg in &self.args {
            if arg.is_empty()
                || arg.contains(|c: char| c.is_whitespace() || "'\"\\$`;&|<>*?()".contains(c))
            {
                write!(f, " '{}'", arg.replace('\'', r"'\''"))?;
            } else {
                write!(f, " {arg}")?;
            }
        }
        Ok(())
    }
}

/// Fails unless `program` (a QEMU binary) is on `PATH`, telling how to install it.
pub fn require(program: &str) -> Result<()> {
    let found = env::var_os("PATH")
        .is_some_and(|path| env::split_paths(&path).any(|dir| dir.join(program).is_file()));
    if found {
        return Ok(());
    }
    bail!(
        "{program} is not installed: run `apt-get install -t bookworm-backports {}` (QEMU 10 from \
         bookworm-backports; see .ci/run)",
        debian_package(program)
    )
}

/// The Debian package holding a `qemu-system-*` binary.
fn debian_package(program: &str) -> String {
    match program.strip_prefix("qemu-system-") {
        Some("aarch64" | "arm") => "qemu-system-arm".to_owned(),
        Some("x86_64" | "i386") => "qemu-system-x86".to_owned(),
        Some("riscv64" | "riscv32") => "qemu-system-misc".to_owned(),
        Some(arch) => format!("qemu-system-{arch}"),
        None => program.to_owned(),
    }
}

/// Waits for `child` at most `timeout`; `None` if it is still running.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("cannot wait for QEMU")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Asks `child` to terminate (SIGTERM); elsewhere than Unix, kills it.
fn terminate(child: &Child) {
    #[cfg(unix)]
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) has no memory-safety preconditions; `child` is not reaped yet, so
        // `pid` is still ours.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    #[cfg(not(unix))]
    let _ = child;
}

/// Where a line of QEMU output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The guest's serial console (QEMU's stdout).
    Console,
    /// QEMU's own messages.
    Stderr,
}

/// What [`Console::next_line`] got.
#[derive(Debug)]
pub enum Next {
    /// A line, without its line terminator.
    Line(Stream, String),
    /// The deadline passed.
    Timeout,
    /// QEMU closed its output: it exited.
    Closed,
}

/// A running QEMU whose output is read line by line. Dropping it kills QEMU.
#[derive(Debug)]
pub struct Console {
    child: Child,
    /// The console's input, if it was spawned with one.
    input: Option<ChildStdin>,
    lines: Receiver<(Stream, String)>,
    status: Option<ExitStatus>,
}

impl Console {
    /// Types `text` on the guest's console (a serial line: end lines with `\r`).
    pub fn type_text(&mut self, text: &str) -> Result<()> {
        let input = self
            .input
            .as_mut()
            .context("QEMU was started without console input")?;
        input
            .write_all(text.as_bytes())
            .and_then(|()| input.flush())
            .context("cannot type on the console")
    }

    /// The next line QEMU prints, waiting until `deadline` at most.
    pub fn next_line(&self, deadline: Instant) -> Next {
        match self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok((stream, line)) => Next::Line(stream, line),
            Err(RecvTimeoutError::Timeout) => Next::Timeout,
            Err(RecvTimeoutError::Disconnected) => Next::Closed,
        }
    }

    /// Waits at most `timeout` for QEMU to exit by itself, then kills it if it has not, and
    /// returns its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(status)) = wait_timeout(&mut self.child, timeout) {
                self.status = Some(status);
            }
        }
        self.kill()
    }

    /// Kills QEMU and its process group if still running and returns its exit status.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            // Signal before reaping: until then the process group cannot be reused.
            #[cfg(unix)]
            if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
                // SAFETY: kill(2) has no memory-safety preconditions; the group is QEMU's,
                // created at spawn time, and QEMU is not reaped yet.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
            self.child.kill().ok();
            self.status = self.child.wait().ok();
        }
        self.status
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends each line read from `output` to `sender`, on a thread of its own.
fn forward_lines(
    output: impl Read + Send + 'static,
    stream: Stream,
    sender: Sender<(Stream, String)>,
) {
    thread::spawn(move || {
        let mut reader = BufReader::new(output);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    let text = text.trim_end_matches(['\n', '\r']).to_owned();
                    if sender.send((stream, text)).is_err() {
                        return;
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board(cpu: Option<&str>) -> Board {
        Board {
            name: "test".to_owned(),
            package: "cellvisor-board-test".to_owned(),
            version: "0.1.0".to_owned(),
            bin: "cellvisor-test".to_owned(),
            target: "aarch64-unknown-none".to_owned(),
            qemu: "qemu-system-aarch64".to_owned(),
            machine: "virt,gic-version={gic}".to_owned(),
            gic_versions: vec![2, 3],
            cpu: cpu.map(str::to_owned),
            smp: 4,
            memory: "1G".to_owned(),
            devices: Vec::new(),
            dir: std::path::PathBuf::new(),
            linux: None,
            multiboot: None,
        }
    }

    #[test]
    fn defaults_come_from_the_board() {
        let qemu = Qemu::new(
            &board(Some("cortex-a57")),
            &Options::default(),
            Path::new("a.elf"),
        )
        .unwrap();
        assert_eq!(
            qemu.to_string(),
            "qemu-system-aarch64 -M virt,gic-version=3 -cpu cortex-a57 -smp 4 -m 1G -audio none -kernel a.elf"
        );
    }

    #[test]
    fn options_override_the_defaults() {
        let options = Options {
            gic: Some(2),
            smp: Some(8),
            cpu: Some("max".to_owned()),
            memory: Some("2G".to_owned()),
            icount: true,
        };
        let qemu = Qemu::new(&board(Some("cortex-a57")), &options, Path::new("a b.elf"))
            .unwrap()
            .args(["-d", "int"]);
        assert_eq!(
            qemu.to_string(),
            "qemu-system-aarch64 -M virt,gic-version=2 -cpu max -smp 8 -m 2G -audio none -kernel 'a b.elf' -icount shift=0,sleep=off -seed 0 -d int"
        );
    }

    #[test]
    fn boots_linux_with_loader_devices() {
        let qemu = Qemu::new(
            &board(None),
            &Options::default(),
            Path::new("cellvisor.bin"),
        )
        .unwrap()
        .linux(
            Path::new("initramfs.cpio.gz"),
            "console=ttyAMA0 cellvisor.actions=info,poweroff",
            Some(Path::new("a.dtb")),
        )
        .load(Path::new("system,1.bin"), 0x409c_0000)
        .load(Path::new("Image"), 0x40a0_0000);
        assert_eq!(
            qemu.to_string(),
            "qemu-system-aarch64 -M virt,gic-version=3 -smp 4 -m 1G -audio none -kernel cellvisor.bin \
             -initrd initramfs.cpio.gz -append 'console=ttyAMA0 cellvisor.actions=info,poweroff' \
             -dtb a.dtb -device loader,file=system,,1.bin,addr=0x409c0000,force-raw=on \
             -device loader,file=Image,addr=0x40a00000,force-raw=on"
        );
    }

    #[test]
    fn a_second_serial_port_comes_after_the_console() {
        let qemu = Qemu::new(&board(None), &Options::default(), Path::new("a.elf"))
            .unwrap()
            .second_serial(Path::new("target/uart1.log"));
        assert_eq!(
            qemu.serials("stdio"),
            ["-serial", "stdio", "-serial", "file:target/uart1.log"]
        );
        let plain = Qemu::new(&board(None), &Options::default(), Path::new("a.elf")).unwrap();
        assert_eq!(plain.serials("stdio"), ["-serial", "stdio"]);
    }

    #[test]
    fn rejects_what_the_board_does_not_have() {
        let cpu = Options {
            cpu: Some("max".to_owned()),
            ..Options::default()
        };
        let error = Qemu::new(&board(None), &cpu, Path::new("a.elf")).unwrap_err();
        assert!(error.to_string().contains("fixed CPU model"), "{error}");
        let no_cpu = Qemu::new(&board(None), &Options::default(), Path::new("a.elf")).unwrap();
        assert!(!no_cpu.to_string().contains("-cpu"));
        let gic = Options {
            gic: Some(4),
            ..Options::default()
        };
        assert!(Qemu::new(&board(None), &gic, Path::new("a.elf")).is_err());
    }

    #[test]
    fn names_the_debian_package() {
        assert_eq!(debian_package("qemu-system-aarch64"), "qemu-system-arm");
        assert_eq!(debian_package("qemu-system-x86_64"), "qemu-system-x86");
        let error = require("qemu-system-does-not-exist")
            .unwrap_err()
            .to_string();
        assert!(error.contains("apt-get install -t bookworm-backports qemu-system-does-not-exist"));
        assert!(error.contains("see .ci/run"));
    }
}
