//! Handing CPUs between Linux and the hypervisor with CPU hotplug: a cell's CPUs are taken
//! offline in the root cell (`/sys/devices/system/cpu/cpuN/online` = `0`, which ends in PSCI
//! CPU_OFF, which the hypervisor intercepts) before `cell create`, and brought online again
//! (`1`, PSCI CPU_ON) after `cell destroy`.
//!
//! On the supported boards a configuration's CPU number, the hypervisor's CPU index and
//! Linux's logical CPU number are the same (CPUs are numbered in MPIDR order everywhere).

use std::fmt;
use std::fs;
use std::io;
use std::path::PathBuf;

/// What Linux says about a CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuState {
    /// Running Linux.
    Online,
    /// Offline (given back to the firmware, i.e. the hypervisor).
    Offline,
    /// Present but not hot-pluggable (no `online` file), e.g. the boot CPU on some kernels.
    Fixed,
    /// Linux does not know the CPU.
    Absent,
}

/// CPU hotplug in the root cell.
pub trait Cpus {
    /// The state of `cpu`.
    fn state(&self, cpu: u32) -> io::Result<CpuState>;
    /// Takes `cpu` offline (`false`) or brings it online (`true`).
    fn set_online(&mut self, cpu: u32, online: bool) -> io::Result<()>;
    /// The file that controls `cpu`, for messages.
    fn control(&self, cpu: u32) -> String;
}

/// The sysfs CPU directory of Linux.
#[derive(Debug, Clone)]
pub struct Sysfs {
    /// `/sys/devices/system/cpu` (another directory in tests).
    pub root: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/sys/devices/system/cpu"),
        }
    }
}

impl Cpus for Sysfs {
    fn state(&self, cpu: u32) -> io::Result<CpuState> {
        let dir = self.root.join(format!("cpu{cpu}"));
        if !dir.is_dir() {
            return Ok(CpuState::Absent);
        }
        match fs::read_to_string(dir.join("online")) {
            Ok(text) if text.trim() == "0" => Ok(CpuState::Offline),
            Ok(_) => Ok(CpuState::Online),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(CpuState::Fixed),
            Err(error) => Err(error),
        }
    }

    fn set_online(&mut self, cpu: u32, online: bool) -> io::Result<()> {
        let path = self.root.join(format!("cpu{cpu}")).join("online");
        // One write(2) of the whole value: sysfs takes a store per write.
        fs::write(path, if online { "1\n" } else { "0\n" })
    }

    fn control(&self, cpu: u32) -> String {
        self.root
            .join(format!("cpu{cpu}"))
            .join("online")
            .display()
            .to_string()
    }
}

/// A CPU list the way Linux writes one: `0-2,5`.
#[derive(Debug, Clone, Copy)]
pub struct CpuList(pub u64);

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("none");
        }
        let mut first = true;
        let mut cpu = 0;
        while cpu < 64 {
            if self.0 & (1 << cpu) == 0 {
                cpu += 1;
                continue;
            }
            let start = cpu;
            while cpu + 1 < 64 && self.0 & (1 << (cpu + 1)) != 0 {
                cpu += 1;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == cpu {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{cpu}")?;
            }
            cpu += 1;
        }
        Ok(())
    }
}

/// The CPUs of a mask, in order.
pub fn cpus_of(mask: u64) -> impl Iterator<Item = u32> {
    (0..64).filter(move |cpu| mask & (1 << cpu) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_cpus_like_linux() {
        assert_eq!(CpuList(0b1000).to_string(), "3");
        assert_eq!(CpuList(0b1110).to_string(), "1-3");
        assert_eq!(CpuList(0b10_0111).to_string(), "0-2,5");
        assert_eq!(CpuList(1 << 63 | 1).to_string(), "0,63");
        assert_eq!(CpuList(u64::MAX).to_string(), "0-63");
        assert_eq!(CpuList(0).to_string(), "none");
        assert_eq!(cpus_of(0b1010).collect::<Vec<_>>(), [1, 3]);
    }

    #[test]
    fn reads_and_writes_sysfs() {
        let root = std::env::temp_dir().join(format!("cellvisor-cli-sysfs-{}", std::process::id()));
        for cpu in 0..3 {
            fs::create_dir_all(root.join(format!("cpu{cpu}"))).unwrap();
        }
        fs::write(root.join("cpu1/online"), "1\n").unwrap();
        fs::write(root.join("cpu2/online"), "0\n").unwrap();
        let mut sysfs = Sysfs { root: root.clone() };
        assert_eq!(sysfs.state(0).unwrap(), CpuState::Fixed);
        assert_eq!(sysfs.state(1).unwrap(), CpuState::Online);
        assert_eq!(sysfs.state(2).unwrap(), CpuState::Offline);
        assert_eq!(sysfs.state(7).unwrap(), CpuState::Absent);
        sysfs.set_online(1, false).unwrap();
        assert_eq!(sysfs.state(1).unwrap(), CpuState::Offline);
        sysfs.set_online(2, true).unwrap();
        assert_eq!(fs::read_to_string(root.join("cpu2/online")).unwrap(), "1\n");
        assert!(sysfs.control(3).ends_with("cpu3/online"));
        fs::remove_dir_all(root).unwrap();
    }
}
