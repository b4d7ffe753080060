//! `cellvisor-config`: check, compile, decompile and import cellvisor configurations.
//!
//! ```text
//! cellvisor-config check system.toml [cell.toml ...]
//! cellvisor-config compile cell.toml [--system system.toml] [-o cell.bin]
//! cellvisor-config decompile cell.bin [-o cell.toml]
//! cellvisor-config import-jailhouse board.cell [--arch aarch64] [--system system.toml] [-o board.toml]
//! cellvisor-config compile-dir platforms/qemu-arm64/config out/
//! ```
//!
//! Every problem is printed as `file:line:column: message`; the exit status is 1 when there is
//! any.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use cellvisor_config::host::{self, Diagnostic, Source};
use cellvisor_config::{jailhouse, text, Architecture};

#[derive(Parser)]
#[command(
    name = "cellvisor-config",
    version,
    about = "Check, compile, decompile and import cellvisor system and cell configurations"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a system configuration and the cell configurations meant to run on it, listing
    /// every problem.
    Check {
        /// The system configuration (TOML).
        system: PathBuf,
        /// Cell configurations (TOML).
        cells: Vec<PathBuf>,
    },
    /// Compile a system or cell configuration from TOML to the binary format.
    Compile {
        /// The TOML file (system or cell, told apart by its `[root-cell]` table).
        input: PathBuf,
        /// Cross-check a cell against this system configuration too.
        #[arg(long)]
        system: Option<PathBuf>,
        /// Output file [default: the input with extension .bin].
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Turn a binary configuration back into TOML.
    Decompile {
        /// The binary configuration.
        input: PathBuf,
        /// Output file [default: standard output].
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Compile every *.toml of a directory (a board's config/) into OUT_DIR/<name>.bin.
    CompileDir {
        /// The directory with the TOML files.
        dir: PathBuf,
        /// Where the binaries go.
        out_dir: PathBuf,
    },
    /// Convert a Jailhouse `.cell` file (configuration revision 13 or 14) into cellvisor TOML.
    ImportJailhouse {
        /// The Jailhouse binary configuration (system or cell).
        input: PathBuf,
        /// Architecture of a revision-13 file (revision 14 records it).
        #[arg(long, value_enum)]
        arch: Option<Arch>,
        /// The cellvisor system configuration (TOML) a cell is meant for: it resolves IOAPIC
        /// pins, IOMMU indices and SMMUv2 stream IDs.
        #[arg(long)]
        system: Option<PathBuf>,
        /// Output file [default: standard output].
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Arch {
    Aarch64,
    #[value(name = "x86_64")]
    X86_64,
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn report(problems: &[Diagnostic]) -> ExitCode {
    for problem in problems {
        eprintln!("{problem}");
    }
    let n = problems.len();
    eprintln!("{n} problem{}", if n == 1 { "" } else { "s" });
    ExitCode::FAILURE
}

fn write_output(output: Option<&Path>, text: &str) -> Result<()> {
    match output {
        Some(path) => {
            fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
        }
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Check { system, cells } => {
            let system_text = read(&system)?;
            let cell_texts = cells.iter().map(|p| read(p)).collect::<Result<Vec<_>>>()?;
            let system_name = system.display().to_string();
            let cell_names: Vec<String> = cells.iter().map(|p| p.display().to_string()).collect();
            let cell_sources: Vec<Source<'_>> = cell_names
                .iter()
                .zip(&cell_texts)
                .map(|(name, text)| Source { name, text })
                .collect();
            let source = Source {
                name: &system_name,
                text: &system_text,
            };
            match host::check(&source, &cell_sources) {
                Ok(checked) => {
                    println!("{system_name}: ok ({} bytes)", checked.system.len());
                    for (name, bytes) in cell_names.iter().zip(&checked.cells) {
                        println!("{name}: ok ({} bytes)", bytes.len());
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(problems) => Ok(report(&problems)),
            }
        }
        Command::Compile {
            input,
            system,
            output,
        } => {
            let text = read(&input)?;
            let name = input.display().to_string();
            let source = Source {
                name: &name,
                text: &text,
            };
            let bytes = if text::is_system_toml(&text) {
                match host::compile_system(&source) {
                    Ok((_, bytes)) => bytes,
                    Err(problems) => return Ok(report(&problems)),
                }
            } else if let Some(system) = system {
                let system_text = read(&system)?;
                let system_name = system.display().to_string();
                let system_source = Source {
                    name: &system_name,
                    text: &system_text,
                };
                match host::check(&system_source, &[source]) {
                    Ok(mut checked) => checked.cells.remove(0),
                    Err(problems) => return Ok(report(&problems)),
                }
            } else {
                match host::compile_cell(&source) {
                    Ok((_, bytes)) => bytes,
                    Err(problems) => return Ok(report(&problems)),
                }
            };
            let output = output.unwrap_or_else(|| input.with_extension("bin"));
            fs::write(&output, &bytes)
                .with_context(|| format!("cannot write {}", output.display()))?;
            println!("{}: {} bytes", output.display(), bytes.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Decompile { input, output } => {
            let bytes =
                fs::read(&input).with_context(|| format!("cannot read {}", input.display()))?;
            match host::decompile(&bytes) {
                Ok(text) => {
                    write_output(output.as_deref(), &text)?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(error) => {
                    eprintln!("{}: {error}", input.display());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::CompileDir { dir, out_dir } => match host::compile_directory_to(&dir, &out_dir) {
            Ok(written) => {
                for path in written {
                    println!("{}", path.display());
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(host::DirectoryError::Invalid(problems)) => Ok(report(&problems)),
            Err(error) => Err(error.into()),
        },
        Command::ImportJailhouse {
            input,
            arch,
            system,
            output,
        } => {
            let bytes =
                fs::read(&input).with_context(|| format!("cannot read {}", input.display()))?;
            let system = match system {
                Some(path) => {
                    let text = read(&path)?;
                    Some(text::system_from_toml(&text).map_err(|e| {
                        let source = Source {
                            name: &path.display().to_string(),
                            text: &text,
                        };
                        anyhow::anyhow!("{}", host::error_diagnostic_for_text(&source, &e))
                    })?)
                }
                None => None,
            };
            let arch = arch.map(|a| match a {
                Arch::Aarch64 => Architecture::Aarch64,
                Arch::X86_64 => Architecture::X86_64,
            });
            let imported = jailhouse::import(&bytes, arch, system.as_ref())
                .with_context(|| format!("cannot import {}", input.display()))?;
            let text = imported.to_toml();
            write_output(output.as_deref(), &text)?;
            for note in &imported.notes {
                eprintln!("{}: note: {note}", input.display());
            }
            let problems = imported.problems();
            if problems.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                for problem in &problems {
                    eprintln!("{}: after import: {problem}", input.display());
                }
                eprintln!("the imported configuration needs fixing before it compiles");
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("cellvisor-config: {error:#}");
            ExitCode::FAILURE
        }
    }
}
