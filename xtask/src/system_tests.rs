//! System tests: boot the real hypervisor images in QEMU (TCG) and judge them by their serial
//! console. The cases are data ([`CASES`]); a board that no case names gets a boot case and a
//! fault case with its defaults, so that every board is booted.
//!
//! A case passes when its expected lines appear in order; it fails when a forbidden text
//! appears, when QEMU exits first, or when the time runs out. QEMU is always killed at the end,
//! whatever happened. Each console log is kept in `target/system-tests/<case>.log`.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::board::{self, Board};
use crate::image::{self, Image, Kind};
use crate::qemu::{self, Next, Options, Qemu, Stream};
use crate::workspace::Workspace;

/// Console lines shown when a case fails.
const TAIL_LINES: usize = 60;

/// What a console line must look like. In the texts, `{version}`, `{board}` and `{smp}` stand
/// for the board package version, the board name and the number of CPUs.
#[derive(Debug, Clone, Copy)]
enum Pattern {
    /// A line equal to this (leading and trailing white space ignored).
    Line(&'static str),
    /// A line containing all of these.
    Contains(&'static [&'static str]),
}

/// The banner of a hypervisor that brought all CPUs to EL2.
const BANNER: Pattern = Pattern::Line("cellvisor {version} on {board}: {smp}/{smp} CPUs at EL2");

/// A normal boot: the banner, then the hypervisor idles.
const BOOT: &[Pattern] = &[BANNER];

/// A fault-injection image: after the banner it reads the unmapped address 0xdead0000, and the
/// report of that data abort must end with the CPU parked.
const FAULT: &[Pattern] = &[
    BANNER,
    Pattern::Contains(&["unexpected exception"]),
    Pattern::Contains(&["data abort at EL2", "translation fault"]),
    Pattern::Contains(&["FAR 0x00000000dead0000"]),
    Pattern::Contains(&["parked"]),
];

/// Console texts that fail a normal boot at once instead of at the timeout.
const BOOT_FAILS_ON: &[&str] = &["FATAL"];

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
    image: Kind,
    expect: &'static [Pattern],
    fails_on: &'static [&'static str],
}

impl<'a> Case<'a> {
    const fn boot(board: &'a str, gic: Option<u32>, smp: u32, cpu: Option<&'static str>) -> Self {
        Self {
            board,
            gic,
            smp: Some(smp),
            cpu,
            image: Kind::Normal,
            expect: BOOT,
            fails_on: BOOT_FAILS_ON,
        }
    }

    const fn fault(board: &'a str, gic: Option<u32>, smp: u32) -> Self {
        Self {
            board,
            gic,
            smp: Some(smp),
            cpu: None,
            image: Kind::FaultInjection,
            expect: FAULT,
            fails_on: &[],
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
];

/// A case bound to its board, with the patterns filled in.
#[derive(Debug)]
struct Resolved<'a> {
    name: String,
    board: &'a Board,
    image: Kind,
    options: Options,
    expect: Vec<Expected>,
    fails_on: &'static [&'static str],
}

#[derive(Debug)]
struct Expected {
    exact: bool,
    texts: Vec<String>,
}

impl Expected {
    fn matches(&self, line: &str) -> bool {
        if self.exact {
            line.trim() == self.texts[0]
        } else {
            self.texts.iter().all(|text| line.contains(text.as_str()))
        }
    }
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.exact {
            write!(f, "the line {:?}", self.texts[0])
        } else {
            write!(f, "a line containing {:?}", self.texts.join("\" and \""))
        }
    }
}

/// The cases to run: [`CASES`], then default cases for the boards that [`CASES`] leaves out.
fn cases(boards: &[Board]) -> Result<Vec<Resolved<'_>>> {
    let mut cases: Vec<Case<'_>> = CASES.to_vec();
    for board in boards {
        if !CASES.iter().any(|case| case.board == board.name) {
            cases.push(Case::boot(&board.name, None, board.smp, None));
            cases.push(Case::fault(&board.name, None, board.smp));
        }
    }
    cases.iter().map(|case| resolve(boards, case)).collect()
}

fn resolve<'a>(boards: &'a [Board], case: &Case<'_>) -> Result<Resolved<'a>> {
    let board = board::find(boards, case.board).context("system test case")?;
    let gic = case.gic.unwrap_or_else(|| board.default_gic());
    let smp = case.smp.unwrap_or(board.smp);
    let cpu = case.cpu.map(str::to_owned).or_else(|| board.cpu.clone());
    let fill = |text: &str| {
        text.replace("{version}", &board.version)
            .replace("{board}", &board.name)
            .replace("{smp}", &smp.to_string())
    };
    let expect = case
        .expect
        .iter()
        .map(|pattern| match pattern {
            Pattern::Line(line) => Expected {
                exact: true,
                texts: vec![fill(line)],
            },
            Pattern::Contains(texts) => Expected {
                exact: false,
                texts: texts.iter().map(|t| fill(t)).collect(),
            },
        })
        .collect();
    let kind = match case.image {
        Kind::Normal => "boot",
        Kind::FaultInjection => "fault",
    };
    let mut name = format!("{}-{kind}-gicv{gic}-smp{smp}", board.name);
    if let Some(cpu) = &cpu {
        write!(name, "-{cpu}").expect("writing to a String");
    }
    Ok(Resolved {
        name,
        board,
        image: case.image,
        options: Options {
            gic: Some(gic),
            smp: Some(smp),
            cpu: case.cpu.map(str::to_owned),
            memory: None,
        },
        expect,
        fails_on: case.fails_on,
    })
}

/// Fails unless the Rust targets and QEMU binaries of every case are installed.
pub fn check_tools(workspace: &Workspace) -> Result<()> {
    for case in cases(&workspace.boards)? {
        crate::require_target(&case.board.target)?;
        qemu::require(&case.board.qemu)?;
    }
    Ok(())
}

/// Builds the images and runs every case, one after the other. Fails if any case failed.
pub fn run(workspace: &Workspace, timeout: Duration) -> Result<()> {
    let cases = cases(&workspace.boards)?;
    check_tools(workspace)?;

    // Each image once, built and copied before the next build overwrites cargo's output.
    let mut images: Vec<(&str, Kind, Image)> = Vec::new();
    for case in &cases {
        if !images
            .iter()
            .any(|(b, k, _)| *b == case.board.name && *k == case.image)
        {
            let image = image::build(workspace, case.board, case.image)?;
            images.push((&case.board.name, case.image, image));
        }
    }

    let logs = workspace.target_dir.join("system-tests");
    fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let (mut passed, mut failed) = (0, 0);
    for (number, case) in cases.iter().enumerate() {
        let (_, _, image) = images
            .iter()
            .find(|(b, k, _)| *b == case.board.name && *k == case.image)
            .expect("built above");
        let qemu = Qemu::new(case.board, &case.options, workspace.relative(&image.elf))?;
        println!(
            "==> system test {}/{}: {}",
            number + 1,
            cases.len(),
            case.name
        );
        println!("    {qemu}");
        std::io::stdout().flush().ok();

        let start = Instant::now();
        let mut log = Vec::new();
        let outcome = run_case(&qemu, case, timeout, &mut log);
        let seconds = start.elapsed().as_secs_f64();
        let log_path = logs.join(format!("{}.log", case.name));
        fs::write(&log_path, log.join("\n") + "\n")
            .with_context(|| format!("cannot write {}", log_path.display()))?;
        match outcome {
            Ok(()) => {
                passed += 1;
                println!("PASS {} in {seconds:.1} s", case.name);
            }
            Err(error) => {
                failed += 1;
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
    println!("system tests: {passed} passed, {failed} failed");
    if failed > 0 {
        bail!("{failed} system test(s) failed");
    }
    Ok(())
}

/// Boots one case and reads its console until the expected lines have appeared in order.
/// Every line read is appended to `log` (QEMU's own messages prefixed with `[qemu] `).
fn run_case(
    qemu: &Qemu,
    case: &Resolved<'_>,
    timeout: Duration,
    log: &mut Vec<String>,
) -> Result<()> {
    let mut console = qemu.spawn_console()?;
    let deadline = Instant::now() + timeout;
    let mut expect = case.expect.iter().peekable();
    let outcome = loop {
        let Some(next) = expect.peek() else {
            break Ok(());
        };
        match console.next_line(deadline) {
            Next::Line(Stream::Stderr, line) => log.push(format!("[qemu] {line}")),
            Next::Line(Stream::Console, line) => {
                if let Some(text) = case.fails_on.iter().find(|text| line.contains(*text)) {
                    log.push(line);
                    break Err(anyhow::anyhow!("{text:?} on the console, before {next}"));
                }
                // One line may satisfy several consecutive expectations.
                while expect.next_if(|e| e.matches(&line)).is_some() {}
                log.push(line);
            }
            Next::Timeout => {
                break Err(anyhow::anyhow!(
                    "timed out after {} s waiting for {next}",
                    timeout.as_secs()
                ))
            }
            Next::Closed => {
                let status = console
                    .kill()
                    .map_or_else(|| "an unknown status".to_owned(), |s| s.to_string());
                break Err(anyhow::anyhow!("QEMU exited ({status}) before {next}"));
            }
        }
    };
    console.kill();
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board(name: &str, cpu: Option<&str>, gic_versions: Vec<u32>) -> Board {
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
            dir: std::path::PathBuf::new(),
        }
    }

    fn boards() -> Vec<Board> {
        vec![
            board("qemu-arm64", Some("cortex-a57"), vec![2, 3]),
            board("zcu102", None, vec![2]),
            board("new", None, vec![3]),
        ]
    }

    #[test]
    fn resolves_the_table_and_covers_every_board() {
        let boards = boards();
        let cases = cases(&boards).unwrap();
        let names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "qemu-arm64-boot-gicv2-smp4-cortex-a57",
                "qemu-arm64-boot-gicv3-smp4-cortex-a57",
                "qemu-arm64-boot-gicv3-smp8-max",
                "zcu102-boot-gicv2-smp4",
                "qemu-arm64-fault-gicv3-smp4-cortex-a57",
                "zcu102-fault-gicv2-smp4",
                "new-boot-gicv3-smp2",
                "new-fault-gicv3-smp2",
            ]
        );
        assert_eq!(
            cases[2].expect[0].to_string(),
            "the line \"cellvisor 0.1.0 on qemu-arm64: 8/8 CPUs at EL2\""
        );
    }

    #[test]
    fn matches_lines() {
        let boards = boards();
        let cases = cases(&boards).unwrap();
        let fault = &cases[5].expect;
        assert!(fault[0].matches("cellvisor 0.1.0 on zcu102: 4/4 CPUs at EL2\r"));
        assert!(!fault[0].matches("cellvisor 0.1.0 on zcu102: 3/4 CPUs at EL2"));
        assert!(
            fault[2].matches("  EC 0x25: data abort at EL2, DFSC 0x07: translation fault, level 3")
        );
        assert!(!fault[2].matches("data abort at EL2, permission fault"));
        assert!(fault[3].matches("  ELR 0x0000000040201234  FAR 0x00000000dead0000  SPSR 0x3c9"));
    }

    /// Runs `script` as if it were QEMU for case `index` of [`boards`].
    fn run_script(index: usize, script: &str, timeout: Duration) -> (Result<()>, Vec<String>) {
        let boards = boards();
        let cases = cases(&boards).unwrap();
        let mut log = Vec::new();
        let outcome = run_case(&Qemu::shell(script), &cases[index], timeout, &mut log);
        (outcome, log)
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
