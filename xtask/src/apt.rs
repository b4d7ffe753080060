//! A private apt state for fetching Debian packages of one architecture (the host's or
//! another), leaving the host's apt alone.
//!
//! Everything lives in one directory per architecture (`target/linux/apt/<arch>/`, e.g.
//! `arm64` or `amd64`): the package lists of that architecture only, apt's caches, an empty
//! dpkg status file and the downloaded `.deb` files. The states of two architectures do not
//! share a directory because `apt-get update` removes the lists its configuration does not
//! name. The sources are the host's
//! (`/etc/apt/sources.list` and `sources.list.d/`), as are its other settings (proxies, keys),
//! so whatever reaches Debian's archive on this machine is used as it is.
//!
//! The settings are in `apt.conf`, given to apt as `APT_CONFIG`. apt reads that file first,
//! then `/etc/apt/apt.conf.d/`, then the file named by `Dir::Etc::main`, which `apt.conf`
//! points at `main.conf`: the private settings live there, so that they win over the host's
//! configuration snippets. `main.conf` also drops the host's hooks (`APT::Update::Post-Invoke*`
//! and the like, which would refresh the host's AppStream cache or notify PackageKit) and the
//! index targets nobody needs here (AppStream metadata, Contents). The state can be inspected
//! by hand with `APT_CONFIG=target/linux/apt/arm64/apt.conf apt-cache policy <package>`.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};

/// The host's main apt configuration file, which `main.conf` takes the place of.
const HOST_MAIN_CONFIG: &str = "/etc/apt/apt.conf";

/// Hook lists of the host's configuration that must not run for the private state.
const HOOKS: [&str; 6] = [
    "APT::Update::Pre-Invoke",
    "APT::Update::Post-Invoke",
    "APT::Update::Post-Invoke-Success",
    "DPkg::Pre-Invoke",
    "DPkg::Post-Invoke",
    "DPkg::Pre-Install-Pkgs",
];

/// Index targets that distribution snippets add and that only cost download time here.
const EXTRA_INDEX_TARGETS: [&str; 9] = [
    "DEP-11",
    "DEP-11-icons-small",
    "DEP-11-icons",
    "DEP-11-icons-hidpi",
    "DEP-11-icons-large",
    "DEP-11-icons-large-hidpi",
    "Contents-deb",
    "Contents-udeb",
    "CNF",
];

/// A private apt state for one Debian architecture.
#[derive(Debug)]
pub struct Apt {
    dir: PathBuf,
    config: PathBuf,
    /// `config` as shown in messages.
    shown_config: PathBuf,
    arch: &'static str,
}

/// One package version as `apt-cache show` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// The package name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Its `Depends` field, empty if it has none.
    pub depends: String,
}

impl Apt {
    /// Sets up (or reuses) the private state in `dir` for Debian architecture `arch`; messages
    /// show `dir` as `shown_dir`.
    pub fn new(dir: &Path, shown_dir: &Path, arch: &'static str) -> Result<Self> {
        let text = dir.to_str().filter(|d| !d.contains(['"', '\n']));
        let Some(text) = text else {
            bail!(
                "{} cannot be written into an apt configuration file: use a target directory whose path has no quotes",
                dir.display()
            );
        };
        for sub in ["lists/partial", "cache/archives/partial", "debs"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
        }
        let status = dir.join("status");
        if !status.is_file() {
            fs::write(&status, "").with_context(|| format!("cannot write {}", status.display()))?;
        }

        let main = dir.join("main.conf");
        let host_main = Path::new(HOST_MAIN_CONFIG)
            .is_file()
            .then_some(HOST_MAIN_CONFIG);
        write_if_changed(&main, &main_config(text, arch, host_main))?;
        let config = dir.join("apt.conf");
        write_if_changed(
            &config,
            &format!(
                "// Private apt state of `cargo xtask linux` (generated). Use it as\n\
                 // APT_CONFIG={text}/apt.conf apt-cache policy <package>\n\
                 // apt reads this file, then /etc/apt/apt.conf.d/, then the private settings:\n\
                 Dir::Etc::main \"{text}/main.conf\";\n"
            ),
        )?;
        Ok(Self {
            dir: dir.to_owned(),
            config,
            shown_config: shown_dir.join("apt.conf"),
            arch,
        })
    }

    /// Whether `apt-get update` has fetched some package list.
    pub fn has_lists(&self) -> bool {
        fs::read_dir(self.dir.join("lists")).is_ok_and(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.env("APT_CONFIG", &self.config).stdin(Stdio::null());
        command
    }

    fn shown(&self, args: &str) -> String {
        format!("APT_CONFIG={} {args}", self.shown_config.display())
    }

    /// `apt-get update`. Failures of single sources (a third-party repository that is down or
    /// has no packages for the architecture) only warn: what matters is whether the packages
    /// are found afterwards.
    pub fn update(&self) -> Result<()> {
        println!("==> {}", self.shown("apt-get update"));
        std::io::stdout().flush().ok();
        let status = self
            .command("apt-get")
            .arg("update")
            .status()
            .context("cannot run apt-get: install Debian's apt")?;
        if !status.success() {
            println!(
                "    apt-get update failed ({status}); going on with the package lists it fetched"
            );
        }
        Ok(())
    }

    /// The candidate version of `name`, as apt would install it.
    pub fn candidate(&self, name: &str) -> Result<Package> {
        let output = self
            .command("apt-cache")
            .args(["show", "--no-all-versions", name])
            .output()
            .context("cannot run apt-cache: install Debian's apt")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        match parse_show(&stdout) {
            Some(package) if output.status.success() && package.name == name => Ok(package),
            _ => bail!(
                "Debian package {name} ({}) not found in the package lists of {}: check that /etc/apt/sources.list(.d) has Debian's main component, then run `cargo xtask linux --refresh`",
                self.arch,
                self.shown_config.parent().unwrap_or(Path::new("")).display()
            ),
        }
    }

    /// The `.deb` of `package`, downloaded into `debs/` unless it is there already.
    pub fn download(&self, package: &Package) -> Result<PathBuf> {
        let debs = self.dir.join("debs");
        let deb = debs.join(deb_file_name(&package.name, &package.version, self.arch));
        if deb.is_file() {
            return Ok(deb);
        }
        // apt-get download writes into the current directory: let it write into an empty one.
        let partial = debs.join("partial");
        if partial.exists() {
            fs::remove_dir_all(&partial)
                .with_context(|| format!("cannot remove {}", partial.display()))?;
        }
        fs::create_dir(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
        let spec = format!("{}={}", package.name, package.version);
        // The `_apt` user apt downloads as when run by root cannot write into the caller's
        // directory; apt checks the file against the signed package lists either way.
        let args = ["-o", "APT::Sandbox::User=root", "download", &spec];
        println!(
            "==> {} (in {})",
            self.shown(&format!("apt-get {}", args.join(" "))),
            self.shown_config.with_file_name("debs/partial").display()
        );
        std::io::stdout().flush().ok();
        let status = self
            .command("apt-get")
            .args(args)
            .current_dir(&partial)
            .status()
            .context("cannot run apt-get: install Debian's apt")?;
        if !status.success() {
            bail!(
                "cannot download {spec} ({status}): the package lists may be stale, run `cargo xtask linux --refresh`"
            );
        }
        let mut downloaded = Vec::new();
        for entry in fs::read_dir(&partial)? {
            downloaded.push(entry?.path());
        }
        let [file] = &downloaded[..] else {
            bail!(
                "apt-get download {spec} left {} files in {} instead of one .deb",
                downloaded.len(),
                partial.display()
            );
        };
        fs::rename(file, &deb).with_context(|| format!("cannot move {}", file.display()))?;
        fs::remove_dir(&partial).ok();
        Ok(deb)
    }

    /// Removes the `.deb` files of `name` other than `keep`: older versions.
    pub fn remove_other_debs(&self, name: &str, keep: &Path) -> Result<()> {
        let prefix = format!("{name}_");
        for entry in fs::read_dir(self.dir.join("debs"))? {
            let path = entry?.path();
            let file = path.file_name().unwrap_or_default().to_string_lossy();
            if file.starts_with(&prefix) && file.ends_with(".deb") && path != keep {
                fs::remove_file(&path)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
            }
        }
        Ok(())
    }
}

/// What the single state of all architectures in `dir` had before each got its own
/// subdirectory.
const SHARED_STATE: [&str; 7] = [
    "lists",
    "cache",
    "debs",
    "status",
    "extended_states",
    "apt.conf",
    "main.conf",
];

/// Removes from `dir` (`target/linux/apt/`) the state all architectures once shared there,
/// package lists and `.deb` files that nothing uses any more. Only those names go.
pub fn remove_shared_state(dir: &Path) -> Result<()> {
    for name in SHARED_STATE {
        let path = dir.join(name);
        let Ok(metadata) = fs::symlink_metadata(&path) else {
            continue;
        };
        if metadata.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        }
        .with_context(|| format!("cannot remove {}", path.display()))?;
    }
    Ok(())
}

/// Fails with one line saying what to install unless apt and dpkg are there.
pub fn require_tools() -> Result<()> {
    for tool in ["apt-get", "apt-cache", "dpkg-deb"] {
        let found = Command::new(tool)
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            bail!(
                "{tool} not found: `cargo xtask linux` fetches Debian packages with apt and dpkg, run it on a Debian host with the `apt` and `dpkg` packages installed"
            );
        }
    }
    Ok(())
}

/// The private settings, read after the host's configuration snippets.
fn main_config(dir: &str, arch: &str, host_main: Option<&str>) -> String {
    let mut text = String::from("// Private apt settings of `cargo xtask linux` (generated).\n");
    if let Some(host_main) = host_main {
        // This file takes the place of the host's main configuration file: keep what it says.
        let _ = writeln!(text, "#include \"{host_main}\";");
    }
    for hook in HOOKS {
        let _ = writeln!(text, "#clear {hook};");
    }
    for target in EXTRA_INDEX_TARGETS {
        let _ = writeln!(text, "#clear Acquire::IndexTargets::deb::{target};");
    }
    let _ = write!(
        text,
        "Dir::State::Lists \"{dir}/lists/\";\n\
         Dir::State::status \"{dir}/status\";\n\
         Dir::State::extended_states \"{dir}/extended_states\";\n\
         Dir::Cache \"{dir}/cache/\";\n\
         Dir::Cache::archives \"archives/\";\n\
         Dir::Cache::pkgcache \"pkgcache.bin\";\n\
         Dir::Cache::srcpkgcache \"srcpkgcache.bin\";\n\
         APT::Architecture \"{arch}\";\n\
         #clear APT::Architectures;\n\
         APT::Architectures {{ \"{arch}\"; }};\n\
         Acquire::Languages \"none\";\n"
    );
    text
}

/// The name `apt-get download` gives a `.deb`: `:` (an epoch) is quoted as `%3a`.
pub fn deb_file_name(name: &str, version: &str, arch: &str) -> String {
    format!("{name}_{}_{arch}.deb", version.replace(':', "%3a"))
}

/// The first stanza of `apt-cache show` output, `None` without `Package` and `Version` fields.
pub fn parse_show(text: &str) -> Option<Package> {
    let mut fields: Vec<(&str, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if fields.is_empty() {
                continue;
            }
            break;
        }
        if line.starts_with([' ', '\t']) {
            // A continuation line.
            if let Some((_, value)) = fields.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((key, value)) = line.split_once(':') {
            fields.push((key, value.trim().to_owned()));
        }
    }
    let field = |key: &str| {
        fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.clone())
    };
    Some(Package {
        name: field("Package")?,
        version: field("Version")?,
        depends: field("Depends").unwrap_or_default(),
    })
}

/// The package names of a `Depends` field, alternatives included, without versions or
/// architecture qualifiers.
pub fn dependency_names(depends: &str) -> Vec<&str> {
    depends
        .split([',', '|'])
        .filter_map(|item| item.split_whitespace().next())
        .map(|name| name.split_once(':').map_or(name, |(name, _)| name))
        .collect()
}

/// The kernel package a kernel metapackage (`linux-image-arm64`) depends on, e.g.
/// `linux-image-6.1.0-37-arm64`.
pub fn kernel_of(metapackage: &Package) -> Result<String> {
    dependency_names(&metapackage.depends)
        .into_iter()
        .find(|name| name.starts_with("linux-image-") && *name != metapackage.name)
        .map(str::to_owned)
        .with_context(|| {
            format!(
                "{} {} depends on no linux-image-* package (Depends: {:?})",
                metapackage.name, metapackage.version, metapackage.depends
            )
        })
}

fn write_if_changed(path: &Path, text: &str) -> Result<()> {
    if fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `apt-cache show --no-all-versions linux-image-arm64` on bookworm.
    const METAPACKAGE: &str = "\
Package: linux-image-arm64
Source: linux-signed-arm64 (6.1.192+2)
Version: 6.1.192-2
Installed-Size: 13
Maintainer: Debian Kernel Team <debian-kernel@lists.debian.org>
Architecture: arm64
Provides: linux-image-generic, linux-latest-modules-6.1.0-56-arm64, wireguard-modules (= 1.0.0)
Depends: linux-image-6.1.0-56-arm64 (= 6.1.192-2)
Description: Linux for 64-bit ARMv8 machines (meta-package)
 This package depends on the latest Linux kernel and modules for use on
 64-bit ARMv8 machines.
Section: kernel
Priority: optional
Filename: pool/updates/main/l/linux-signed-arm64/linux-image-arm64_6.1.192-2_arm64.deb

";

    #[test]
    fn resolves_the_metapackage() {
        let meta = parse_show(METAPACKAGE).unwrap();
        assert_eq!(meta.name, "linux-image-arm64");
        assert_eq!(meta.version, "6.1.192-2");
        assert_eq!(meta.depends, "linux-image-6.1.0-56-arm64 (= 6.1.192-2)");
        assert_eq!(kernel_of(&meta).unwrap(), "linux-image-6.1.0-56-arm64");
    }

    #[test]
    fn reads_only_the_first_stanza() {
        let two = format!(
            "{METAPACKAGE}Package: linux-image-arm64\nVersion: 6.1.176-1\nDepends: linux-image-6.1.0-50-arm64\n"
        );
        assert_eq!(parse_show(&two).unwrap().version, "6.1.192-2");
        assert_eq!(parse_show(""), None);
        assert_eq!(parse_show("N: Unable to locate package foo\n"), None);
    }

    #[test]
    fn picks_the_kernel_among_other_dependencies() {
        let meta = Package {
            name: "linux-image-rt-arm64".into(),
            version: "6.1.192-2".into(),
            depends: "kmod, linux-image-rt-arm64:arm64 | foo, linux-image-6.1.0-56-rt-arm64:arm64 (= 6.1.192-2), bar (>= 1)".into(),
        };
        assert_eq!(
            dependency_names(&meta.depends),
            [
                "kmod",
                "linux-image-rt-arm64",
                "foo",
                "linux-image-6.1.0-56-rt-arm64",
                "bar"
            ]
        );
        assert_eq!(kernel_of(&meta).unwrap(), "linux-image-6.1.0-56-rt-arm64");
        let none = Package {
            depends: "kmod".into(),
            ..meta
        };
        assert!(kernel_of(&none).is_err());
    }

    #[test]
    fn continuation_lines_join_their_field() {
        let package = parse_show("Package: a\nVersion: 1\nDepends: b,\n c (>= 2)\n").unwrap();
        assert_eq!(package.depends, "b, c (>= 2)");
        assert_eq!(dependency_names(&package.depends), ["b", "c"]);
    }

    #[test]
    fn names_debs_like_apt_get_download() {
        assert_eq!(
            deb_file_name("busybox-static", "1:1.35.0-4+deb12u1+b1", "arm64"),
            "busybox-static_1%3a1.35.0-4+deb12u1+b1_arm64.deb"
        );
    }

    #[test]
    fn removes_only_the_shared_state() {
        let dir = std::env::temp_dir().join(format!("xtask-apt-{}", std::process::id()));
        for sub in ["lists/partial", "debs", "arm64/lists", "amd64/debs"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        for file in [
            "status",
            "apt.conf",
            "main.conf",
            "debs/a_1_arm64.deb",
            "other",
        ] {
            fs::write(dir.join(file), "").unwrap();
        }
        remove_shared_state(&dir).unwrap();
        let mut left: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["amd64", "arm64", "other"]);
        assert!(dir.join("amd64/debs").is_dir());
        // Nothing left to remove is no error.
        remove_shared_state(&dir).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn private_settings_come_after_the_host_ones() {
        let text = main_config(
            "/w/target/linux/apt/arm64",
            "arm64",
            Some("/etc/apt/apt.conf"),
        );
        assert!(text.contains("#include \"/etc/apt/apt.conf\";"));
        assert!(text.contains("#clear APT::Update::Post-Invoke-Success;"));
        assert!(text.contains("Dir::State::Lists \"/w/target/linux/apt/arm64/lists/\";"));
        assert!(text.contains("APT::Architecture \"arm64\";"));
        assert!(text.contains("#clear APT::Architectures;"));
        assert!(text.contains("APT::Architectures { \"arm64\"; };"));
        assert!(!main_config("/w", "arm64", None).contains("#include"));
        // The host's own architecture the same way: only its packages, whatever foreign
        // architectures dpkg knows.
        let text = main_config("/w/target/linux/apt/amd64", "amd64", None);
        assert!(text.contains("APT::Architecture \"amd64\";"));
        assert!(text.contains("APT::Architectures { \"amd64\"; };"));
        assert!(!text.contains("arm64"));
    }
}
