//! Shell scripts that drive the `cellvisor` tool from the root cell's shell, for the system
//! tests: `/init` runs `/etc/cellvisor/scripts/NAME.sh` for its `script:NAME` action (see
//! `initramfs.rs`) and reports each output line as `cellvisor-initramfs: script NAME: ...`.
//! The scripts mark what the tests look for with [`MARK`] lines (`cellvisor-demo: create
//! status=0`). They are generic: the cell configuration, cell name and images come from
//! variables (`CELL_CONFIG`, `CELL`, `IMAGE`, `WILD_IMAGE`, with defaults under
//! `/etc/cellvisor` and `/lib/cellvisor/inmates`), which the kernel command line may set.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};

/// Where the scripts are in the initramfs.
pub const DIR: &str = "etc/cellvisor/scripts";

/// What the scripts' own marker lines start with (`mark` in `scripts/common.sh`).
#[cfg(test)]
const MARK: &str = "cellvisor-demo: ";

/// What every script starts with: the variables and the `mark` and `step` functions.
const COMMON: &str = include_str!("scripts/common.sh");

/// A root-cell script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    /// `cellvisor --version`: the tool runs (no management interface needed).
    Version,
    /// One cell's life: create, load the timer demo, start, list, stats, shutdown, destroy.
    Demo,
    /// `cargo xtask run --demo`: create, load and start the timer demo, then the shell.
    DemoStart,
    /// `cargo xtask run --demo-linux`: Linux in the cell of `linux.toml`, then the shell.
    DemoLinux,
    /// 20 create/load/start/destroy cycles; the hypervisor's free memory must not change.
    Cycles,
    /// A cell that breaks its partition is stopped and reported; destroy and create again.
    Wild,
    /// Wrong input, each a clear error and exit status 1.
    BadInput,
    /// `cargo xtask bench`: idle and busy trap counts, PSCI and management calls, the demo
    /// cell's start and counters.
    Bench,
    /// Hostile cells: attacks of a cell on the partition, each stopped or refused, with a
    /// second cell ticking throughout.
    Hostile,
    /// `cargo xtask soak`: `SOAK_CYCLES` create/load/start/stop/destroy cycles of four
    /// inmates in turn; memory, cells, CPUs and interrupt lines must come back as they were.
    Soak,
    /// The root cell as an adversary: concurrent tools, management commands with fields out
    /// of range, a 32-bit process reading outside the root cell on every CPU.
    HostileRoot,
    /// The management interface without an inmate: info, stats, create, list, destroy, and
    /// 20 create/destroy cycles that must not lose memory.
    Manage,
    /// Cells on x86: the Jailhouse demo with the x86 `timer-demo`, `wild-demo` stopped and
    /// reported, 20 create/load/start/destroy cycles of `uart-demo`.
    CellsX86,
    /// Linux in a cell (`cellvisor cell linux`, `config/linux.toml`): it boots to its /init
    /// and powers its cell off while the root cell runs a job; five leak-free cycles.
    LinuxCell,
}

impl Script {
    /// Every script.
    pub const ALL: [Script; 14] = [
        Self::Version,
        Self::Demo,
        Self::DemoStart,
        Self::DemoLinux,
        Self::Cycles,
        Self::Wild,
        Self::BadInput,
        Self::Bench,
        Self::Hostile,
        Self::Soak,
        Self::HostileRoot,
        Self::Manage,
        Self::CellsX86,
        Self::LinuxCell,
    ];

    /// Its name (`script:NAME`, `NAME.sh`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Version => "version",
            Self::Demo => "demo",
            Self::DemoStart => "demo-start",
            Self::DemoLinux => "demo-linux",
            Self::Cycles => "cycles",
            Self::Wild => "wild",
            Self::BadInput => "bad-input",
            Self::Bench => "bench",
            Self::Hostile => "hostile",
            Self::Soak => "soak",
            Self::HostileRoot => "hostile-root",
            Self::Manage => "manage",
            Self::CellsX86 => "x86-cells",
            Self::LinuxCell => "linux-cell",
        }
    }

    fn body(self) -> &'static str {
        match self {
            Self::Version => include_str!("scripts/version.sh"),
            Self::Demo => include_str!("scripts/demo.sh"),
            Self::DemoStart => include_str!("scripts/demo-start.sh"),
            Self::DemoLinux => include_str!("scripts/demo-linux.sh"),
            Self::Cycles => include_str!("scripts/cycles.sh"),
            Self::Wild => include_str!("scripts/wild.sh"),
            Self::BadInput => include_str!("scripts/bad-input.sh"),
            Self::Bench => include_str!("scripts/bench.sh"),
            Self::Hostile => include_str!("scripts/hostile.sh"),
            Self::Soak => include_str!("scripts/soak.sh"),
            Self::HostileRoot => include_str!("scripts/hostile-root.sh"),
            Self::Manage => include_str!("scripts/manage.sh"),
            Self::CellsX86 => include_str!("scripts/x86-cells.sh"),
            Self::LinuxCell => include_str!("scripts/linux-cell.sh"),
        }
    }

    /// The file as it goes into the initramfs.
    pub fn text(self) -> String {
        format!(
            "#!/bin/sh\n# {}.sh, written by `cargo xtask` (xtask/src/scripts/).\n{COMMON}{}",
            self.name(),
            self.body()
        )
    }
}

impl fmt::Display for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Script {
    type Err = anyhow::Error;

    fn from_str(name: &str) -> Result<Self> {
        match Self::ALL.into_iter().find(|s| s.name() == name) {
            Some(script) => Ok(script),
            None => {
                let names: Vec<&str> = Self::ALL.iter().map(|s| s.name()).collect();
                bail!("no script {name:?}; scripts: {}", names.join(", "))
            }
        }
    }
}

/// The busybox applets linked into `/bin`: what `/init` and a person at the shell need.
pub const APPLETS: &[&str] = &[
    "[", "ash", "cat", "chmod", "cmp", "cp", "cttyhack", "date", "dd", "devmem", "df", "diff",
    "dmesg", "echo", "env", "false", "find", "free", "grep", "halt", "head", "hexdump", "kill",
    "less", "ln", "ls", "mkdir", "mknod", "more", "mount", "mv", "nproc", "poweroff", "printf",
    "ps", "reboot", "rm", "sed", "seq", "setsid", "sh", "sleep", "stty", "sync", "tail", "taskset",
    "test", "top", "true", "umount", "uname", "uptime", "vi", "wc", "xargs",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for script in Script::ALL {
            assert_eq!(script.name().parse::<Script>().unwrap(), script);
        }
        let error = "nope".parse::<Script>().unwrap_err().to_string();
        assert!(error.contains("scripts: version, demo"), "{error}");
    }

    #[test]
    #[cfg(unix)]
    fn scripts_are_valid_shell() {
        for script in Script::ALL {
            let path = std::env::temp_dir().join(format!(
                "xtask-script-{}-{}.sh",
                std::process::id(),
                script.name()
            ));
            std::fs::write(&path, script.text()).unwrap();
            let Ok(output) = std::process::Command::new("sh")
                .arg("-n")
                .arg(&path)
                .output()
            else {
                return;
            };
            assert!(
                output.status.success(),
                "{script}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            std::fs::remove_file(path).unwrap();
        }
    }

    /// Every command the scripts run is a linked busybox applet, a shell builtin or the tool.
    #[test]
    fn scripts_use_only_what_the_initramfs_has() {
        let builtins = [
            "if",
            "then",
            "else",
            "elif",
            "break",
            "fi",
            "while",
            "do",
            "done",
            "for",
            "in",
            "case",
            "esac",
            "shift",
            "return",
            "local",
            "set",
            "export",
            "mark",
            "step",
            "memory_free",
            "wait_for_failed",
            "cell_state",
            "cell_cycles",
            "wild_case",
            "now",
            "soak_cycle",
            "wait_stopped",
            "exit",
            ":",
            "state_file",
            "same_state",
            "count",
            "raw",
            "devmem32",
            "snapshot",
            "work",
            "wait",
            "peek",
            "state_of",
            "dumps",
            "reports",
            "case_of",
            "hostile_case",
            "linux_wait",
            "cellvisor",
            "guest-clock",
            "busybox",
            "{",
            "}",
            "!",
        ];
        for script in Script::ALL {
            let text = script.text();
            // The body of a here-document (`<<'EOF'` to `EOF`) is text, not commands.
            let mut here_document = None;
            for line in text.lines().map(str::trim) {
                if let Some(end) = here_document {
                    if line == end {
                        here_document = None;
                    }
                    continue;
                }
                // (Not a shift, `$((1 << cpu))`: the word follows at once, quoted or capital.)
                if let Some((_, rest)) = line.split_once("<<").filter(|(_, rest)| {
                    rest.starts_with(|c: char| c == '\'' || c == '"' || c.is_ascii_uppercase())
                }) {
                    let end = rest.split_whitespace().next().unwrap_or("");
                    here_document = Some(end.trim_matches(['\'', '"']));
                }
                if line.is_empty()
                    || line.starts_with('#')
                    || line.contains('=') && !line.contains(' ')
                {
                    continue;
                }
                // The first word of each command of a line (after `$(`, `|`, `&&`, `;`).
                let line = line
                    .replace("$(", ";")
                    .replace("&&", ";")
                    .replace("||", ";");
                for command in line.split([';', '|']) {
                    let Some(word) = command.split_whitespace().next() else {
                        continue;
                    };
                    if word.contains('=')
                        || word.starts_with(['"', '\'', '$', '>', '<', '(', ')', '-', '\\'])
                        || word.ends_with(')')
                        || word.ends_with("()")
                    {
                        continue;
                    }
                    assert!(
                        APPLETS.contains(&word) || builtins.contains(&word),
                        "{script}: `{word}` in {line:?} is no applet of the initramfs"
                    );
                }
            }
            assert_eq!(
                here_document, None,
                "{script}: a here-document does not end"
            );
        }
    }

    #[test]
    fn scripts_mark_their_steps() {
        assert!(COMMON.contains(&format!("echo \"{MARK}$*\"")));
        assert!(Script::Demo
            .text()
            .contains("step create cellvisor cell create \"$CELL_CONFIG\""));
        for case in [
            "malformed",
            "unknown-cell",
            "cpu-not-owned",
            "start-before-load",
            "image-too-large",
            "destroy-twice",
        ] {
            assert!(
                Script::BadInput
                    .text()
                    .contains(&format!("mark \"{case} status=$?\"")),
                "{case}"
            );
        }
    }
    /// hostile.sh lists the cases of hostile-demo in the inmate's order, each with a kind
    /// the script judges, and counts them all.
    #[test]
    fn the_hostile_cases_match_the_inmate() {
        let inmate = include_str!("../../examples/inmates/demos/src/bin/hostile-demo.rs");
        let table = &inmate[inmate.find("const CASES: &[Attack] = &[").unwrap()..];
        let table = &table[..table.find("\n    ];").unwrap()];
        let inmate_cases: Vec<&str> = table
            .lines()
            .filter_map(|line| line.trim().strip_prefix("(\""))
            .filter_map(|rest| rest.split('"').next())
            .collect();
        let script = include_str!("scripts/hostile.sh");
        let kinds = [
            "stop", "refused", "either", "storm", "off", "reset", "deaf", "cpu-off",
        ];
        let mut script_cases = Vec::new();
        for line in script.lines().map(str::trim) {
            let Some((number, rest)) = line.split_once(") echo ") else {
                continue;
            };
            let words: Vec<&str> = rest.trim_end_matches(" ;;").split(' ').collect();
            assert_eq!(number, (script_cases.len() + 1).to_string(), "{line}");
            assert!(kinds.contains(&words[1]), "{line}");
            script_cases.push(words[0]);
        }
        assert_eq!(script_cases, inmate_cases);
        assert!(inmate_cases.len() >= 30);
        assert!(script.contains(&format!("CASE_COUNT={}\n", inmate_cases.len())));
    }
}
