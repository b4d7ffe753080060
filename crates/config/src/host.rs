//! Host-side tools (feature `std`): compiling TOML files to the binary format with every
//! problem reported as `file:line:column: message`, cross-checking a system with its cells,
//! decompiling, and compiling a board's `config/` directory.

use std::borrow::ToOwned;
use std::fmt;
use std::fs;
use std::io;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::string::{String, ToString};
use std::vec;
use std::vec::Vec;

use crate::check;
use crate::error::{Element, Error, Field, FrameKind, Problem, Scope, Space};
use crate::owned::{CellConfig, SystemConfig};
use crate::text::{self, PathSegment, TextError};
use crate::types::ConfigKind;
use crate::view::{peek_kind, read_header, CellConfigView, SystemConfigView};

use PathSegment::{Index, Key};

/// One problem, with the file and, when known, the line and column (both from 1).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Diagnostic {
    /// File name as given.
    pub file: String,
    /// Line and column.
    pub position: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, column)) => write!(f, "{}:{line}:{column}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// A TOML source: a name for messages and the text.
#[derive(Clone, Copy, Debug)]
pub struct Source<'a> {
    /// File name (or any label) used in diagnostics.
    pub name: &'a str,
    /// The TOML text.
    pub text: &'a str,
}

/// Line and column (from 1, columns in characters) of a byte offset.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The byte offset of the value at `path`, or of the deepest part of the path that exists.
pub fn locate(text: &str, path: &[PathSegment]) -> Option<usize> {
    let document = toml::de::DeTable::parse(text).ok()?;
    let mut table = Some(document.get_ref());
    let mut array: Option<&toml::de::DeArray<'_>> = None;
    let mut offset = None;
    for segment in path {
        let next = match (segment, table, array) {
            (Key(key), Some(t), _) => t.get(*key),
            (Index(i), _, Some(a)) => a.get(*i),
            _ => None,
        };
        let Some(value) = next else { break };
        offset = Some(value.span().start);
        table = value.get_ref().as_table();
        array = value.get_ref().as_array();
    }
    offset
}

/// The TOML path of the value an error is about (see `docs/config-format.md` for the keys).
pub fn toml_path(error: &Error) -> Vec<PathSegment> {
    let mut path = match error.scope {
        Scope::RootCell => vec![Key("root-cell")],
        Scope::Config | Scope::Cell(_) => Vec::new(),
    };
    let field = |path: &mut Vec<PathSegment>, key| path.push(Key(key));
    let problem = &error.problem;
    let memory_field = |problem: &Problem| match problem {
        Problem::NotPageAligned {
            field: Field::PhysStart,
            ..
        }
        | Problem::CommRegionPhys { .. }
        | Problem::BeyondAddressSpace {
            space: Space::Physical,
            ..
        }
        | Problem::MemoryOverlap {
            space: Space::Physical,
            ..
        }
        | Problem::OverlapsHypervisor { .. }
        | Problem::MapsSensitive { .. }
        | Problem::MemoryNotInRootCell { .. }
        | Problem::MemoryTaken { .. } => Some("phys"),
        Problem::NotPageAligned {
            field: Field::VirtStart,
            ..
        }
        | Problem::BeyondAddressSpace {
            space: Space::GuestPhysical,
            ..
        }
        | Problem::MemoryOverlap {
            space: Space::GuestPhysical,
            ..
        } => Some("virt"),
        Problem::NotPageAligned {
            field: Field::Size, ..
        }
        | Problem::ZeroSize
        | Problem::CommRegionSize { .. } => Some("size"),
        Problem::NoAccess
        | Problem::UnknownFlags { .. }
        | Problem::CommRegionFlag { .. }
        | Problem::NotForRootCell { .. } => Some("flags"),
        _ => None,
    };
    match error.element {
        Element::Header | Element::Descriptor | Element::Count(_) => {}
        Element::Architecture => field(&mut path, "architecture"),
        Element::HypervisorMemory => {
            path = vec![Key("hypervisor")];
            match problem {
                Problem::NotPageAligned {
                    field: Field::Size, ..
                }
                | Problem::ZeroSize => field(&mut path, "size"),
                _ => field(&mut path, "start"),
            }
        }
        Element::DebugConsole => path = vec![Key("debug-console")],
        Element::InterruptController => {
            path = vec![Key("interrupt-controller")];
            if matches!(
                problem,
                Problem::MaintenanceNotPpi { .. } | Problem::NotUsed { .. }
            ) {
                field(&mut path, "maintenance-irq");
            }
        }
        Element::Frame(kind) => {
            path = vec![
                Key("interrupt-controller"),
                Key(match kind {
                    FrameKind::GicDistributor => "distributor",
                    FrameKind::GicCpuInterface => "cpu-interface",
                    FrameKind::GicHypervisorInterface => "hypervisor-interface",
                    FrameKind::GicVirtualCpuInterface => "virtual-cpu-interface",
                    FrameKind::GicRedistributors => "redistributors",
                    FrameKind::LocalApic => "local-apic",
                }),
            ]
        }
        Element::IoApic(i) => {
            path = vec![
                Key("interrupt-controller"),
                Key("ioapic"),
                Index(i as usize),
            ]
        }
        Element::IommuUnit(i) => path = vec![Key("iommu"), Index(i as usize)],
        Element::PciHost => path = vec![Key("pci-host")],
        Element::Name => field(&mut path, "name"),
        Element::Flags => field(&mut path, "flags"),
        Element::Cpus => field(&mut path, "cpus"),
        Element::MemoryRegion(i) => {
            path.extend([Key("memory"), Index(i as usize)]);
            if let Some(key) = memory_field(problem) {
                path.push(Key(key));
            }
        }
        Element::IrqRange(i) => path.extend([Key("irqs"), Index(i as usize)]),
        Element::PortRange(i) => path.extend([Key("ports"), Index(i as usize)]),
        Element::PciDevice(i) => path.extend([Key("pci-devices"), Index(i as usize)]),
        Element::StreamId(i) => path.extend([Key("stream-ids"), Index(i as usize)]),
        Element::Console => field(&mut path, "console"),
        Element::CpuResetAddress => field(&mut path, "cpu-reset-address"),
    }
    path
}

fn diagnostic(source: &Source<'_>, path: &[PathSegment], message: String) -> Diagnostic {
    let offset = locate(source.text, path).unwrap_or(0);
    Diagnostic {
        file: source.name.to_owned(),
        position: Some(line_column(source.text, offset)),
        message,
    }
}

/// A diagnostic for a TOML reading error.
pub fn error_diagnostic_for_text(source: &Source<'_>, error: &TextError) -> Diagnostic {
    match &error.span {
        Some(span) => Diagnostic {
            file: source.name.to_owned(),
            position: Some(line_column(source.text, span.start)),
            message: error.message.clone(),
        },
        None => diagnostic(source, &error.path, error.message.clone()),
    }
}

/// A diagnostic for a validation error, placed at the TOML value it is about.
pub fn error_diagnostic(source: &Source<'_>, error: &Error) -> Diagnostic {
    diagnostic(source, &toml_path(error), error.to_string())
}

/// Compiles a system configuration; every problem is reported.
pub fn compile_system(source: &Source<'_>) -> Result<(SystemConfig, Vec<u8>), Vec<Diagnostic>> {
    let config = text::system_from_toml(source.text)
        .map_err(|e| vec![error_diagnostic_for_text(source, &e)])?;
    let bytes = config
        .encode()
        .map_err(|e| vec![error_diagnostic(source, &e)])?;
    let mut problems = Vec::new();
    let _ = SystemConfigView::parse_reporting(&bytes, &mut |e| {
        problems.push(error_diagnostic(source, &e));
        ControlFlow::Continue(())
    });
    if problems.is_empty() {
        Ok((config, bytes))
    } else {
        Err(problems)
    }
}

/// Compiles a cell configuration; every problem is reported.
pub fn compile_cell(source: &Source<'_>) -> Result<(CellConfig, Vec<u8>), Vec<Diagnostic>> {
    let config = text::cell_from_toml(source.text)
        .map_err(|e| vec![error_diagnostic_for_text(source, &e)])?;
    let bytes = config
        .encode()
        .map_err(|e| vec![error_diagnostic(source, &e)])?;
    let mut problems = Vec::new();
    let _ = CellConfigView::parse_reporting(&bytes, &mut |e| {
        problems.push(error_diagnostic(source, &e));
        ControlFlow::Continue(())
    });
    if problems.is_empty() {
        Ok((config, bytes))
    } else {
        Err(problems)
    }
}

/// The compiled binaries of a system and its cells.
#[derive(Clone, Debug)]
pub struct Checked {
    /// The system configuration.
    pub system: Vec<u8>,
    /// The cell configurations, in the order given.
    pub cells: Vec<Vec<u8>>,
}

/// Compiles a system and its cells and cross-checks them (CPUs, memory, interrupts, devices
/// taken from the root cell, nothing owned twice, the root cell keeps a CPU). Every problem
/// of every file is reported; cells that do not compile are left out of the cross-checks.
pub fn check(system: &Source<'_>, cells: &[Source<'_>]) -> Result<Checked, Vec<Diagnostic>> {
    check_with(system, cells, false)
}

/// [`check`](fn@check) for a board's reference cells, some of which are alternatives: cells that share
/// a CPU can never run at once, so they are not checked against each other (each still is
/// against the system and against every cell it could run beside).
pub fn check_alternatives(
    system: &Source<'_>,
    cells: &[Source<'_>],
) -> Result<Checked, Vec<Diagnostic>> {
    check_with(system, cells, true)
}

fn check_with(
    system: &Source<'_>,
    cells: &[Source<'_>],
    alternatives: bool,
) -> Result<Checked, Vec<Diagnostic>> {
    let mut problems = Vec::new();
    let system_bytes = compile_system(system)
        .map(|(_, bytes)| bytes)
        .map_err(|p| problems.extend(p))
        .ok();
    let cell_bytes: Vec<Option<Vec<u8>>> = cells
        .iter()
        .map(|cell| {
            compile_cell(cell)
                .map(|(_, bytes)| bytes)
                .map_err(|p| problems.extend(p))
                .ok()
        })
        .collect();
    // Cross-check what compiled, so that one broken file does not hide the others' problems.
    let Some(system_bytes) = system_bytes else {
        return Err(problems);
    };
    let Ok(system_view) = SystemConfigView::parse(&system_bytes) else {
        return Err(problems);
    };
    let compiled: Vec<(usize, &Vec<u8>)> = cell_bytes
        .iter()
        .enumerate()
        .filter_map(|(i, b)| b.as_ref().map(|b| (i, b)))
        .collect();
    let views: Vec<CellConfigView<'_>> = compiled
        .iter()
        .filter_map(|(_, b)| CellConfigView::parse(b).ok())
        .collect();
    for (k, view) in views.iter().enumerate() {
        let source = &cells[compiled[k].0];
        let shares_a_cpu = |other: &CellConfigView<'_>| {
            view.cell()
                .cpus()
                .iter()
                .any(|cpu| other.cell().cpus().contains(cpu))
        };
        let beside: Vec<CellConfigView<'_>> = views[..k]
            .iter()
            .filter(|other| !(alternatives && shares_a_cpu(other)))
            .cloned()
            .collect();
        let _ = check::check_cell(&system_view, &beside, view, &mut |e| {
            problems.push(error_diagnostic(source, &e));
            ControlFlow::Continue(())
        });
    }
    let _ = check::check_root_keeps_a_cpu(
        &system_view,
        views.iter().map(|v| v.cell().cpus()),
        &mut |e| {
            problems.push(error_diagnostic(system, &e));
            ControlFlow::Continue(())
        },
    );
    if problems.is_empty() {
        Ok(Checked {
            system: system_bytes,
            cells: cell_bytes.into_iter().flatten().collect(),
        })
    } else {
        Err(problems)
    }
}

/// Turns a binary configuration (system or cell) back into TOML. The binary must validate.
pub fn decompile(bytes: &[u8]) -> Result<String, Error> {
    match peek_kind(bytes) {
        Some(ConfigKind::System) => {
            SystemConfig::from_bytes(bytes).map(|c| text::system_to_toml(&c))
        }
        Some(ConfigKind::Cell) => CellConfig::from_bytes(bytes).map(|c| text::cell_to_toml(&c)),
        None => match read_header(bytes, ConfigKind::Cell) {
            Err(error) => Err(error),
            Ok(_) => CellConfig::from_bytes(bytes).map(|c| text::cell_to_toml(&c)),
        },
    }
}

/// A configuration compiled from a board's `config/` directory.
#[derive(Clone, Debug)]
pub struct CompiledFile {
    /// The TOML file.
    pub source: PathBuf,
    /// System or cell.
    pub kind: ConfigKind,
    /// The binary.
    pub bytes: Vec<u8>,
}

/// Why a directory could not be compiled.
#[derive(Debug)]
pub enum DirectoryError {
    /// Reading or writing a file failed.
    Io(PathBuf, io::Error),
    /// The configurations have problems.
    Invalid(Vec<Diagnostic>),
}

impl fmt::Display for DirectoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirectoryError::Io(path, error) => write!(f, "{}: {error}", path.display()),
            DirectoryError::Invalid(problems) => {
                for (i, problem) in problems.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "{problem}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for DirectoryError {}

/// Compiles every `*.toml` in a directory (a board's `config/`): files with a `root-cell`
/// table are system configurations, the others cells. Every cell is cross-checked against
/// every system configuration (a board may have one per interrupt-controller variant) and
/// against the cells it could run beside ([`check_alternatives`]: cells that share a CPU are
/// alternatives).
pub fn compile_directory(dir: &Path) -> Result<Vec<CompiledFile>, DirectoryError> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| DirectoryError::Io(dir.to_owned(), e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    let mut files = Vec::new();
    for path in paths {
        let text = fs::read_to_string(&path).map_err(|e| DirectoryError::Io(path.clone(), e))?;
        files.push((path.display().to_string(), path, text));
    }
    fn source(file: &(String, PathBuf, String)) -> Source<'_> {
        Source {
            name: &file.0,
            text: &file.2,
        }
    }
    let (systems, cells): (Vec<_>, Vec<_>) = files.iter().partition(|f| text::is_system_toml(&f.2));
    if systems.is_empty() {
        return Err(DirectoryError::Invalid(vec![Diagnostic {
            file: dir.display().to_string(),
            position: None,
            message: "no system configuration (a TOML file with a [root-cell] table)".to_owned(),
        }]));
    }
    let cell_sources: Vec<Source<'_>> = cells.iter().map(|f| source(f)).collect();
    let mut problems = Vec::new();
    let mut out = Vec::new();
    let mut cell_files = Vec::new();
    for (i, system) in systems.iter().enumerate() {
        match check_alternatives(&source(system), &cell_sources) {
            Ok(checked) => {
                out.push(CompiledFile {
                    source: system.1.clone(),
                    kind: ConfigKind::System,
                    bytes: checked.system,
                });
                if i == 0 {
                    for (cell, bytes) in cells.iter().zip(checked.cells) {
                        cell_files.push(CompiledFile {
                            source: cell.1.clone(),
                            kind: ConfigKind::Cell,
                            bytes,
                        });
                    }
                }
            }
            Err(p) => {
                for d in p {
                    if !problems.contains(&d) {
                        problems.push(d);
                    }
                }
            }
        }
    }
    out.extend(cell_files);
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(DirectoryError::Invalid(problems))
    }
}

/// Compiles a directory ([`compile_directory`]) and writes each binary as
/// `<out_dir>/<file stem>.bin`; returns the files written.
pub fn compile_directory_to(dir: &Path, out_dir: &Path) -> Result<Vec<PathBuf>, DirectoryError> {
    let compiled = compile_directory(dir)?;
    fs::create_dir_all(out_dir).map_err(|e| DirectoryError::Io(out_dir.to_owned(), e))?;
    let mut written = Vec::new();
    for file in compiled {
        let stem = file.source.file_stem().unwrap_or_default();
        let path = out_dir.join(stem).with_extension("bin");
        fs::write(&path, &file.bytes).map_err(|e| DirectoryError::Io(path.clone(), e))?;
        written.push(path);
    }
    Ok(written)
}
