//! `cellvisor`: the root cell's management tool. It creates, loads, starts, shuts down,
//! destroys and inspects cells through the hypervisor's management interface (a trapped
//! control page and a data window, found in the device tree and reached through `/dev/mem`:
//! no kernel driver), hands CPUs over with Linux CPU hotplug, and checks configurations
//! offline. See the README.

mod cli;
mod client;
mod commands;
mod config;
mod cpus;
mod device;
mod devmem;
#[cfg(test)]
mod fake;
mod linux;
#[cfg(test)]
mod tests;

use std::io::{self, Write as _};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser as _;

use crate::cpus::{Cpus, Sysfs};
use crate::device::Device;

/// The root cell's Linux.
struct Linux {
    cpus: Sysfs,
}

impl commands::Host for Linux {
    fn open_device(&mut self) -> anyhow::Result<Box<dyn Device>> {
        devmem::open()
    }

    fn cpus(&mut self) -> &mut dyn Cpus {
        &mut self.cpus
    }

    fn pause(&mut self, duration: Duration) -> bool {
        std::thread::sleep(duration);
        true
    }

    fn sleep(&mut self, duration: Duration) {
        std::thread::sleep(duration);
    }
}

/// An I/O error's reason without the `(os error N)` that `std` adds: `Permission denied`.
pub(crate) fn reason(error: &io::Error) -> String {
    let text = error.to_string();
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_owned(),
        _ => text,
    }
}

fn main() -> ExitCode {
    // Bad arguments: clap's message and exit status 2.
    let cli = cli::Cli::parse();
    let mut host = Linux {
        cpus: Sysfs::default(),
    };
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let stderr = io::stderr();
    let mut err = stderr.lock();
    match commands::run(cli, &mut host, &mut out, &mut err) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            out.flush().ok();
            writeln!(err, "cellvisor: {error:#}").ok();
            ExitCode::FAILURE
        }
    }
}
