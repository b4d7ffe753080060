//! The command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Manage the cells of a cellvisor system from its root cell.
#[derive(Debug, Parser)]
#[command(
    name = "cellvisor",
    version,
    about = "Manage the cells of a cellvisor system from its root cell",
    long_about = "Manage the cells of a cellvisor system from its root cell.\n\n\
        The hypervisor's management interface is found through the device tree \
        (/proc/device-tree/chosen/cellvisor,management) or, on x86, the kernel command line \
        (cellvisor.management= in /proc/cmdline), and reached through /dev/mem: run as \
        root. `config check` works anywhere, offline.\n\n\
        A <CELL> is a cell name or a numeric cell id (0 is the root cell). Configuration CPU \
        numbers are the hypervisor's CPU indices and Linux's logical CPU numbers."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, load, start, shut down, destroy and inspect cells.
    #[command(subcommand)]
    Cell(CellCommand),
    /// Print the hypervisor console's output (kept in the hypervisor's ring buffer).
    Console {
        /// Keep printing new output as it comes (every 100 ms) until interrupted.
        #[arg(short, long)]
        follow: bool,
    },
    /// Check configurations offline, with the checks the hypervisor runs.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Show the hypervisor's memory, CPUs and cells.
    Info {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run one management command with raw register values, unchecked: for tests of the
    /// hypervisor's own checks of hostile input (hidden from the help). Prints
    /// `raw command N: status S`; a refusal is an error as for every command.
    #[command(hide = true)]
    Raw {
        /// The value written to the command register (`cellvisor_abi::Command`).
        #[arg(value_parser = parse_command)]
        command: u32,
        /// ARG0 to ARG3 (decimal or 0x hexadecimal); missing ones are 0.
        #[arg(value_parser = parse_address, num_args = 0..=4)]
        args: Vec<u64>,
        /// A file whose bytes go into the data window first (cut at the window's size).
        #[arg(long, value_name = "FILE")]
        data: Option<PathBuf>,
    },
}

/// `cellvisor cell ...`.
#[derive(Debug, Subcommand)]
pub enum CellCommand {
    /// Create a cell: take its CPUs offline in Linux and hand the configuration to the
    /// hypervisor, which moves the cell's resources out of the root cell.
    Create {
        /// The cell configuration: TOML (compiled here) or a compiled .bin.
        config: PathBuf,
    },
    /// Copy an image into a cell's loadable memory (before it starts).
    Load {
        /// Cell name or id.
        cell: String,
        /// The image file (raw binary).
        image: PathBuf,
        /// Guest-physical load address [default: the start of the first loadable memory
        /// region of --config, else 0].
        #[arg(long, value_name = "ADDR", value_parser = parse_address)]
        address: Option<u64>,
        /// The cell's configuration (TOML or .bin): gives the default address and checks
        /// that the image fits before loading.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Start a loaded cell at its reset address.
    Start {
        /// Cell name or id.
        cell: String,
    },
    /// Boot Linux (an arm64 Image) in a new cell: create the cell, write its device tree
    /// (its CPUs with PSCI, its RAM, its part of the GIC, the timer, its console UART; the
    /// machine's from the root cell's tree), load kernel, initramfs and tree, and start it
    /// on its first CPU, which brings up the others with PSCI CPU_ON.
    Linux {
        /// The cell configuration: TOML (compiled here) or a compiled .bin.
        config: PathBuf,
        /// The kernel: an arm64 Image (or, with --raw, any binary).
        image: PathBuf,
        /// An initramfs for the kernel.
        #[arg(long, value_name = "FILE")]
        initrd: Option<PathBuf>,
        /// The kernel command line [default: the console on the cell's UART].
        #[arg(long, value_name = "STR")]
        cmdline: Option<String>,
        /// A device tree of yours instead of the generated one.
        #[arg(long, value_name = "FILE")]
        dtb: Option<PathBuf>,
        /// Enter the binary at its first byte (the start of the cell's RAM) with x0 = the
        /// device tree: Zephyr, test kernels. Its PSCI SYSTEM_RESET restarts it there,
        /// memory as it left it (a Linux kernel's stops the cell in state reset instead).
        #[arg(long)]
        raw: bool,
        /// Stay after the start and boot the cell again each time it resets (its kernel's
        /// `reboot`: PSCI SYSTEM_RESET, which a kernel cannot survive in place); end when it
        /// shuts down, fails or is destroyed.
        #[arg(long)]
        watch: bool,
    },
    /// Stop a cell, asking it first through its communication region.
    Shutdown {
        /// Cell name or id.
        cell: String,
        /// How long a cell that does not answer has before it is stopped anyway.
        #[arg(long, value_name = "N", default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Destroy a cell: every resource goes back to the root cell, its CPUs back online in
    /// Linux.
    Destroy {
        /// Cell name or id.
        cell: String,
    },
    /// List the cells: ID NAME STATE CPUS MEMORY.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a cell's trap counts per CPU and reason.
    Stats {
        /// Cell name or id.
        cell: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `cellvisor config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check a system configuration and the cell configurations meant to run on it (TOML or
    /// compiled .bin), listing every problem; no hypervisor needed.
    Check {
        /// The system configuration.
        system: PathBuf,
        /// Cell configurations.
        cells: Vec<PathBuf>,
    },
}

/// A decimal or `0x` hexadecimal address; `_` may separate digits.
pub fn parse_address(text: &str) -> Result<u64, String> {
    let clean = text.replace('_', "");
    let parsed = match clean
        .strip_prefix("0x")
        .or_else(|| clean.strip_prefix("0X"))
    {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => clean.parse(),
    };
    parsed.map_err(|_| format!("{text:?} is no address (decimal or 0x hexadecimal)"))
}

/// A command register value: 32 bits, decimal or `0x` hexadecimal.
fn parse_command(text: &str) -> Result<u32, String> {
    let value = parse_address(text)?;
    u32::try_from(value).map_err(|_| format!("{text:?} does not fit the 32-bit command register"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_addresses() {
        assert_eq!(parse_address("0x4000_0000"), Ok(0x4000_0000));
        assert_eq!(parse_address("4096"), Ok(4096));
        assert_eq!(parse_address("0XfF"), Ok(255));
        assert!(parse_address("0xg").is_err());
        assert!(parse_address("-1").is_err());
    }

    #[test]
    fn parses_the_commands() {
        let cli = Cli::try_parse_from([
            "cellvisor",
            "cell",
            "load",
            "demo",
            "x.bin",
            "--address",
            "0x1000",
        ])
        .unwrap();
        let Command::Cell(CellCommand::Load { address, .. }) = cli.command else {
            panic!("{cli:?}");
        };
        assert_eq!(address, Some(0x1000));
        let cli = Cli::try_parse_from(["cellvisor", "cell", "shutdown", "1"]).unwrap();
        let Command::Cell(CellCommand::Shutdown { timeout_ms, .. }) = cli.command else {
            panic!("{cli:?}");
        };
        assert_eq!(timeout_ms, 2000);
        let cli = Cli::try_parse_from(["cellvisor", "raw", "0x3", "1", "0xffff", "8"]).unwrap();
        let Command::Raw {
            command,
            args,
            data,
        } = cli.command
        else {
            panic!("{cli:?}");
        };
        assert_eq!((command, &args[..], data), (3, &[1, 0xffff, 8][..], None));
        for bad in [
            &["cellvisor", "raw", "0x1_0000_0000"][..],
            &["cellvisor", "raw", "1", "1", "2", "3", "4", "5"],
            &["cellvisor", "cell", "start"][..],
            &["cellvisor", "cell", "load", "demo", "x", "--address", "zz"],
            &["cellvisor", "cell", "frobnicate"],
        ] {
            let error = Cli::try_parse_from(bad).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{bad:?}");
        }
    }
}
