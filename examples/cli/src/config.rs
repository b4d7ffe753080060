//! Configuration files: a cell configuration for `cell create` and `cell load --config`
//! (TOML, compiled here, or a compiled `.bin`, validated here), and `config check`, the
//! offline checks of a system configuration with its cells.
//!
//! TOML problems are reported as `file:line:column: message`, binary ones as
//! `file: message`; the messages are those of `cellvisor-config`, the same code the hypervisor
//! validates with.

use std::fmt::Write as _;
use std::fs;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use cellvisor_config::host::{self, Diagnostic, Source};
use cellvisor_config::{
    check, layout, peek_kind, text, CellConfig, CellConfigView, ConfigKind, MemoryFlags,
    MemoryRegion, SystemConfigView,
};

use crate::reason;

/// A file as read: TOML text or a binary.
#[derive(Debug)]
enum Content {
    Toml(String),
    Binary(Vec<u8>),
}

/// Reads a configuration file; binaries are told apart by their magic number. The error
/// says why, without the file name.
fn read(path: &Path) -> Result<Content, String> {
    let bytes = fs::read(path).map_err(|e| format!("cannot be read: {}", reason(&e)))?;
    if bytes.starts_with(&layout::MAGIC) {
        return Ok(Content::Binary(bytes));
    }
    String::from_utf8(bytes).map(Content::Toml).map_err(|_| {
        format!(
            "neither a TOML configuration (it is not UTF-8 text) nor a compiled one (no {:?} \
             magic)",
            String::from_utf8_lossy(&layout::MAGIC)
        )
    })
}

/// The message for a list of problems.
fn problems(what: &str, diagnostics: &[Diagnostic]) -> anyhow::Error {
    let mut message = format!(
        "{what} ({} problem{}):",
        diagnostics.len(),
        if diagnostics.len() == 1 { "" } else { "s" }
    );
    for diagnostic in diagnostics {
        write!(message, "\n  {diagnostic}").expect("writing to a String");
    }
    anyhow!(message)
}

/// A validated cell configuration.
#[derive(Debug, Clone)]
pub struct CellFile {
    /// The binary the hypervisor gets.
    pub bytes: Vec<u8>,
    /// What it says.
    pub config: CellConfig,
}

impl CellFile {
    /// The CPUs as a mask (bit n: CPU n); fails for CPUs the interface cannot name.
    pub fn cpu_mask(&self) -> Result<u64> {
        let mut mask = 0u64;
        for cpu in self.config.cell.cpus.iter() {
            if cpu >= 64 {
                bail!("CPU {cpu}: the management interface has CPUs 0 to 63 only");
            }
            mask |= 1 << cpu;
        }
        Ok(mask)
    }

    /// The memory regions an image may be loaded into.
    pub fn loadable(&self) -> impl Iterator<Item = &MemoryRegion> {
        self.config
            .cell
            .memory_regions
            .iter()
            .filter(|r| r.flags.contains(MemoryFlags::LOADABLE))
    }
}

/// Reads a cell configuration: TOML is compiled (every problem reported), a binary is
/// validated; a system configuration is refused.
pub fn load_cell(path: &Path) -> Result<CellFile> {
    let name = path.display().to_string();
    let system = || anyhow!("{name} is a system configuration, not a cell configuration");
    match read(path).map_err(|why| anyhow!("{name}: {why}"))? {
        Content::Toml(text) => {
            if text::is_system_toml(&text) {
                return Err(system());
            }
            let source = Source {
                name: &name,
                text: &text,
            };
            let (config, bytes) = host::compile_cell(&source)
                .map_err(|d| problems(&format!("{name} is no valid cell configuration"), &d))?;
            Ok(CellFile { bytes, config })
        }
        Content::Binary(bytes) => {
            if peek_kind(&bytes) == Some(ConfigKind::System) {
                return Err(system());
            }
            let config = CellConfig::from_bytes(&bytes)
                .map_err(|e| anyhow!("{name} is no valid cell configuration: {e}"))?;
            Ok(CellFile { bytes, config })
        }
    }
}

/// One file of `config check`, compiled or validated.
struct Checked {
    name: String,
    /// The TOML text, for placing cross-check problems at a line.
    text: Option<String>,
    bytes: Option<Vec<u8>>,
}

impl Checked {
    fn diagnostic(&self, error: &cellvisor_config::Error) -> Diagnostic {
        match &self.text {
            Some(text) => host::error_diagnostic(
                &Source {
                    name: &self.name,
                    text,
                },
                error,
            ),
            None => Diagnostic {
                file: self.name.clone(),
                position: None,
                message: error.to_string(),
            },
        }
    }
}

/// Compiles (TOML) or validates (binary) one file of `kind`, every problem into `problems`.
fn compile(path: &Path, kind: ConfigKind, problems: &mut Vec<Diagnostic>) -> Checked {
    let name = path.display().to_string();
    let mut checked = Checked {
        name: name.clone(),
        text: None,
        bytes: None,
    };
    let problem = |message: String| Diagnostic {
        file: name.clone(),
        position: None,
        message,
    };
    let content = match read(path) {
        Ok(content) => content,
        Err(why) => {
            problems.push(problem(why));
            return checked;
        }
    };
    match content {
        Content::Toml(text) => {
            let source = Source {
                name: &name,
                text: &text,
            };
            let compiled = match (kind, text::is_system_toml(&text)) {
                (ConfigKind::System, true) => host::compile_system(&source).map(|(_, b)| b),
                (ConfigKind::Cell, false) => host::compile_cell(&source).map(|(_, b)| b),
                (ConfigKind::System, false) => Err(vec![problem(
                    "a cell configuration (no [root-cell] table), where the system \
                     configuration was expected"
                        .to_owned(),
                )]),
                (ConfigKind::Cell, true) => Err(vec![problem(
                    "a system configuration, where a cell configuration was expected".to_owned(),
                )]),
            };
            match compiled {
                Ok(bytes) => checked.bytes = Some(bytes),
                Err(found) => problems.extend(found),
            }
            checked.text = Some(text);
        }
        Content::Binary(bytes) => {
            let mut clean = true;
            let mut report = |error: cellvisor_config::Error| {
                clean = false;
                problems.push(problem(error.to_string()));
                ControlFlow::Continue(())
            };
            match kind {
                ConfigKind::System => {
                    let _ = SystemConfigView::parse_reporting(&bytes, &mut report);
                }
                ConfigKind::Cell => {
                    let _ = CellConfigView::parse_reporting(&bytes, &mut report);
                }
            }
            if clean {
                checked.bytes = Some(bytes);
            }
        }
    }
    checked
}

/// `config check`: the system configuration and the cells meant to run on it, each on its
/// own, then the cells against the system and each other. Prints `file: ok (N bytes)` per
/// file; fails listing every problem.
pub fn check_files(system: &Path, cells: &[&Path], out: &mut dyn Write) -> Result<()> {
    let mut problems = Vec::new();
    let system = compile(system, ConfigKind::System, &mut problems);
    let cells: Vec<Checked> = cells
        .iter()
        .map(|cell| compile(cell, ConfigKind::Cell, &mut problems))
        .collect();
    if let Some(system_view) = system
        .bytes
        .as_deref()
        .and_then(|b| SystemConfigView::parse(b).ok())
    {
        // Cross-check what compiled, so that one broken file does not hide the others'
        // problems.
        let compiled: Vec<(&Checked, CellConfigView<'_>)> = cells
            .iter()
            .filter_map(|c| {
                let view = CellConfigView::parse(c.bytes.as_deref()?).ok()?;
                Some((c, view))
            })
            .collect();
        let views: Vec<CellConfigView<'_>> = compiled.iter().map(|(_, v)| *v).collect();
        for (k, (cell, view)) in compiled.iter().enumerate() {
            let _ = check::check_cell(&system_view, &views[..k], view, &mut |e| {
                problems.push(cell.diagnostic(&e));
                ControlFlow::Continue(())
            });
        }
        let _ = check::check_root_keeps_a_cpu(
            &system_view,
            views.iter().map(|v| v.cell().cpus()),
            &mut |e| {
                problems.push(system.diagnostic(&e));
                ControlFlow::Continue(())
            },
        );
    }
    if !problems.is_empty() {
        return Err(self::problems("config check", &problems));
    }
    for file in std::iter::once(&system).chain(&cells) {
        let size = file.bytes.as_ref().map_or(0, Vec::len);
        writeln!(out, "{}: ok ({size} bytes)", file.name)?;
    }
    Ok(())
}
