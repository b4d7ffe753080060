//! `cargo xtask soak`: many cell lives in one boot. The root cell runs the `soak` script
//! (`xtask/src/scripts/soak.sh`) with `SOAK_CYCLES=N` on the kernel command line: N cycles
//! of create, load, start, stop and destroy, the inmates in turn (`timer-demo` shuts down
//! when asked, `stubborn-demo` refuses and is destroyed running, `wild-demo` and
//! `gic-wild-demo` break their partition and are stopped by the hypervisor). At the end the
//! hypervisor's free memory, the cell list, the root cell's online CPUs and its interrupt
//! lines (the cell must be created again) must be as at the start.
//!
//! Here the console is read as it comes: the script's progress lines (every
//! `SOAK_PROGRESS` cycles, 50 by default) and every failed cycle are shown, the whole console
//! goes to `target/soak/<board>-gicv<N>.log` (the cell's UART to `....uart1.log`), and a
//! summary line ends the run. Any failed cycle or difference, a `FATAL` from the hypervisor, a
//! kernel panic, a console silent for 30 s or QEMU not exiting cleanly fails the task.

use std::fs::{self, File};
use std::io::{BufWriter, Write as _};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::board;
use crate::boot::{self, Boot, LinuxFiles};
use crate::image::{self, Kind};
use crate::initramfs::{Action, DMESG_LINE};
use crate::linux;
use crate::qemu::{self, Next, Options, Stream};
use crate::run::append_with_actions;
use crate::run::LINUX_SILENCE;
use crate::scripts::Script;
use crate::workspace::Workspace;

/// `cargo xtask soak`.
#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// Create/load/start/stop/destroy cycles, the four inmates in turn.
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub cycles: u32,
    /// Board name (one that boots Linux).
    #[arg(long, default_value = "qemu-arm64")]
    pub board: String,
    /// GIC version (default: the board's default).
    #[arg(long, value_name = "VERSION")]
    pub gic: Option<u32>,
    /// Seconds the whole run may take (default: 180 plus 30 per cycle).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
}

/// What the script's own lines carry (after `/init`'s `script soak: ` prefix).
const MARK: &str = "cellvisor-demo: soak ";
/// What ends a successful soak.
const PASSED: &str = "cellvisor-demo: soak passed";
/// What `/init` prints when the script ends.
const DONE: &str = "cellvisor-initramfs: script soak done status=";
/// Console texts that end the run at once.
const FATAL: &[&str] = &["FATAL", "Kernel panic"];

/// `cargo xtask soak`.
pub fn run(workspace: &Workspace, args: &SoakArgs) -> Result<()> {
    let board = board::find(&workspace.boards, &args.board)?;
    let linux_boot = board.linux()?;
    qemu::require(&board.qemu)?;
    let gic = board.require_gic(args.gic)?;
    let name = format!("{}-gicv{gic}", board.name);

    let image = image::build(workspace, board, Kind::Normal)?;
    let (files, _) = linux::prepare_board(workspace, board, false)?;
    let images = workspace.target_dir.join("images").join(&board.name);
    let config = boot::board_config(board, gic, &images)?;
    let dir = workspace.target_dir.join("soak");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let shown = |path: &Path| workspace.relative(path).to_owned();
    let uart = dir.join(format!("{name}.uart1.log"));
    // QEMU appends to the file: start empty.
    let _ = fs::remove_file(&uart);
    let actions = [
        Action::Script(Script::Soak),
        Action::Dmesg,
        Action::Poweroff,
    ];
    let base = format!("{} SOAK_CYCLES={}", linux_boot.append.trim(), args.cycles);
    let qemu = Boot::RootCell {
        image: shown(&image.bin),
        config: shown(&config),
        linux: LinuxFiles {
            kernel: shown(&files.image),
            initrd: shown(&files.initramfs),
            dtb: boot::board_dtb(board, &files.dtbs)?.map(|d| shown(&d)),
            append: append_with_actions(&base, &actions),
        },
    }
    .qemu(
        board,
        &Options {
            gic: Some(gic),
            ..Options::default()
        },
    )?
    .second_serial(&shown(&uart));

    let log_path = dir.join(format!("{name}.log"));
    println!("==> soak: {} cycles on {name}", args.cycles);
    println!("    {qemu}");
    println!("    console: {}", workspace.relative(&log_path).display());
    std::io::stdout().flush().ok();
    let timeout = Duration::from_secs(args.timeout.unwrap_or(180 + 30 * u64::from(args.cycles)));
    let mut log = BufWriter::new(
        File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?,
    );

    let start = Instant::now();
    let deadline = start + timeout;
    let mut console = qemu.spawn_console()?;
    let mut last_output = start;
    let mut outcome = Outcome::default();
    let ended = loop {
        match console.next_line(deadline.min(last_output + LINUX_SILENCE)) {
            Next::Line(Stream::Stderr, line) => {
                writeln!(log, "[qemu] {line}")?;
                println!("    [qemu] {line}");
            }
            Next::Line(Stream::Console, line) => {
                last_output = Instant::now();
                writeln!(log, "{line}")?;
                log.flush()?;
                if let Some(text) = FATAL.iter().find(|text| line.contains(*text)) {
                    println!("    {line}");
                    break Err(anyhow::anyhow!("{text:?} on the console"));
                }
                if let Some(shown) = outcome.take(&line, last_output - start) {
                    println!("    {shown}");
                    std::io::stdout().flush().ok();
                }
            }
            Next::Timeout if Instant::now() >= deadline => {
                break Err(anyhow::anyhow!("timed out after {} s", timeout.as_secs()))
            }
            Next::Timeout => {
                break Err(anyhow::anyhow!(
                    "no console output for {} s (hung?)",
                    LINUX_SILENCE.as_secs()
                ))
            }
            Next::Closed => break Ok(()),
        }
    };
    let status = console.kill();
    log.flush()?;
    let host = start.elapsed();

    let cycles_time = match (outcome.began, outcome.ended) {
        (Some(began), Some(ended)) => Some(ended - began),
        _ => None,
    };
    let per_cycle = cycles_time
        .map(|t| format!("{:.2} s", t.as_secs_f64() / f64::from(args.cycles)))
        .unwrap_or_else(|| "?".to_owned());
    let summary = outcome.summary.as_deref();
    let field = |key: &str| {
        summary
            .and_then(|s| field(s, key))
            .unwrap_or("?")
            .to_owned()
    };
    println!(
        "soak: {} cycles on {name}, {} failed, memory_free before={} after={}, cpus before={} \
         after={}, {per_cycle} per cycle (host; guest {} ms), {:.0} s in all",
        args.cycles,
        field("failed"),
        field("before"),
        field("after"),
        field_nth(summary, "before", 1).unwrap_or("?"),
        field_nth(summary, "after", 1).unwrap_or("?"),
        field("ms/cycle"),
        host.as_secs_f64()
    );
    if outcome.dmesg > 0 {
        println!(
            "    the kernel logged {} problem lines (see the console log)",
            outcome.dmesg
        );
    }
    ended.with_context(|| workspace.relative(&log_path).display().to_string())?;
    if !outcome.passed {
        bail!(
            "the soak did not pass{} (console in {})",
            outcome
                .failure
                .as_deref()
                .map(|f| format!(": {f}"))
                .unwrap_or_default(),
            workspace.relative(&log_path).display()
        );
    }
    if outcome.done != Some(0) {
        bail!("the soak script ended with status {:?}", outcome.done);
    }
    match status {
        Some(status) if status.success() => Ok(()),
        status => bail!(
            "QEMU exited with {}",
            status.map_or_else(|| "an unknown status".to_owned(), |s| s.to_string())
        ),
    }
}

/// What the console said about the soak so far.
#[derive(Debug, Default)]
struct Outcome {
    /// Host time of the `soak begin` line.
    began: Option<Duration>,
    /// Host time of the `soak summary` line.
    ended: Option<Duration>,
    /// The summary line, from `soak summary` on.
    summary: Option<String>,
    /// The `soak passed` line came.
    passed: bool,
    /// The `soak failed: ...` reasons.
    failure: Option<String>,
    /// The script's exit status.
    done: Option<i32>,
    /// Kernel-log problem lines the `dmesg` action reported.
    dmesg: usize,
}

impl Outcome {
    /// Takes one console line (seen `at` host time from QEMU's start); returns what to show
    /// of it: the progress lines, failed cycles, the checks at the end.
    fn take(&mut self, line: &str, at: Duration) -> Option<String> {
        if line.contains(DMESG_LINE) {
            self.dmesg += 1;
            return Some(line.trim().to_owned());
        }
        if let Some((_, status)) = line.split_once(DONE) {
            self.done = status.trim().parse().ok();
            return Some(line.trim().to_owned());
        }
        let (_, text) = line.split_once(MARK)?;
        let text = text.trim();
        if text.starts_with("begin ") {
            self.began = Some(at);
        } else if text.starts_with("summary ") {
            self.ended = Some(at);
            self.summary = Some(text.to_owned());
        } else if line.contains(PASSED) {
            self.passed = true;
        } else if let Some(reasons) = text.strip_prefix("failed:") {
            self.failure = Some(reasons.trim().to_owned());
        } else if text.starts_with("cycle ") && text.contains(" ok ") {
            // One line per good cycle: the log has them, the progress lines sum them up.
            return None;
        }
        Some(format!("soak {text}"))
    }
}

/// The value of the first `key=value` word of `line`.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    field_nth(Some(line), key, 0)
}

/// The value of the `n`th (from 0) `key=value` word of `line`.
fn field_nth<'a>(line: Option<&'a str>, key: &str, n: usize) -> Option<&'a str> {
    line?
        .split_whitespace()
        .filter_map(|word| word.strip_prefix(key)?.strip_prefix('='))
        .nth(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUMMARY: &str = "cellvisor-initramfs: script soak: cellvisor-demo: soak summary \
        cycles=12 failed=0 memory_free before=7340032 after=7340032 cpus before=0-3 \
        after=0-3 seconds=40 ms/cycle=3333";

    #[test]
    fn reads_the_summary_fields() {
        let text = SUMMARY.split_once(MARK).unwrap().1;
        assert_eq!(field(text, "failed"), Some("0"));
        assert_eq!(field(text, "before"), Some("7340032"));
        assert_eq!(field_nth(Some(text), "after", 1), Some("0-3"));
        assert_eq!(field(text, "ms/cycle"), Some("3333"));
        assert_eq!(field(text, "nope"), None);
    }

    #[test]
    fn follows_the_script() {
        let mut outcome = Outcome::default();
        let at = |s| Duration::from_secs(s);
        let p = "cellvisor-initramfs: script soak: ";
        assert!(outcome
            .take(&format!("{p}cellvisor-demo: soak begin cycles=12"), at(5))
            .is_some());
        assert_eq!(
            outcome.take(
                &format!("{p}cellvisor-demo: soak cycle 1 timer-demo ok 2310 ms"),
                at(6)
            ),
            None
        );
        assert_eq!(
            outcome
                .take(
                    &format!("{p}cellvisor-demo: soak cycle 2 wild-demo failed: destroy status=1"),
                    at(7)
                )
                .as_deref(),
            Some("soak cycle 2 wild-demo failed: destroy status=1")
        );
        assert!(outcome
            .take("[    1.0] random kernel line", at(8))
            .is_none());
        outcome.take(SUMMARY, at(45));
        outcome.take(&format!("{p}cellvisor-demo: soak failed: memory"), at(45));
        outcome.take("cellvisor-initramfs: script soak done status=1", at(46));
        assert_eq!((outcome.began, outcome.ended), (Some(at(5)), Some(at(45))));
        assert!(!outcome.passed);
        assert_eq!(outcome.failure.as_deref(), Some("memory"));
        assert_eq!(outcome.done, Some(1));
        outcome.take(&format!("{p}cellvisor-demo: soak passed"), at(45));
        assert!(outcome.passed);
    }
}
