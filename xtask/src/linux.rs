//! `cargo xtask linux`: Debian's stock kernel and a busybox initramfs for the root cell,
//! cached under `target/linux/<arch>/`:
//!
//! - `Image`: the kernel of the package Debian's `linux-image-<arch>` metapackage currently
//!   depends on (e.g. `linux-image-6.1.0-37-arm64`), uncompressed;
//! - `dtbs/`: the device trees shipped with it (`xilinx/zynqmp-zcu102-rev1.0.dtb`, ...);
//! - `busybox`: the binary of Debian's `busybox-static`;
//! - `initramfs.cpio` and `initramfs.cpio.gz`: the initramfs (see `initramfs.rs`), with
//!   `/bin/guest-clock` built from `examples/guest-clock`;
//! - `initramfs-<board>.cpio` and `.cpio.gz`: the same plus what the root cell of a board
//!   manages cells with (`/bin/cellvisor`, `/etc/cellvisor/`, `/lib/cellvisor/inmates/`; see
//!   `tool.rs`), written by [`prepare_board`] for `cargo xtask run` and the system tests;
//! - `VERSION`: what they were made from, as `key=value` lines a shell can source
//!   (`kernel_package`, `kernel_version`, `kernel_release`, `busybox_version`).
//!
//! The packages come through a private apt state in `target/linux/apt/` (see `apt.rs`). Once
//! the cache is complete, later runs use it without asking apt; `--refresh` updates the
//! package lists and fetches what changed. The initramfs is rebuilt on every run (it takes
//! milliseconds, plus a `cargo build` of the guest clock) and rewritten only when its content
//! changes. `cargo xtask run` and the system tests call [`prepare_board`] for the same files
//! and the board's initramfs.

use std::fs;
use std::io::Read as _;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use flate2::read::GzDecoder;

use crate::apt::{self, Apt, Package};
use crate::board::Board;
use crate::cargo::Cargo;
use crate::initramfs;
use crate::tool;
use crate::workspace::Workspace;

/// Offset of the magic number in the arm64 Linux `Image` header.
const ARM64_MAGIC_OFFSET: usize = 56;
/// "ARM\x64".
const ARM64_MAGIC: &[u8; 4] = b"ARM\x64";
/// `e_machine` of AArch64 ELF files.
const EM_AARCH64: u16 = 183;
/// The Debian package holding the static busybox.
const BUSYBOX_PACKAGE: &str = "busybox-static";
/// The package of the guest-clock program put into the initramfs.
pub const GUEST_CLOCK_PACKAGE: &str = "cellvisor-guest-clock";
/// Its binary.
const GUEST_CLOCK_BIN: &str = "guest-clock";
/// The package of the 32-bit program that reads physical memory (`/bin/devmem32` of a board's
/// initramfs on arm64, whose kernels run 32-bit processes).
pub const DEVMEM32_PACKAGE: &str = "cellvisor-devmem32";
/// Its binary.
const DEVMEM32_BIN: &str = "devmem32";
/// Where it goes in the initramfs.
pub const DEVMEM32_PATH: &str = "bin/devmem32";
/// `e_machine` of 32-bit Arm ELF files.
const EM_ARM: u16 = 40;

/// A Debian architecture the root-cell guests can be taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    /// 64-bit Arm (`Image` plus device trees).
    Arm64,
}

impl Arch {
    /// The architecture of the guests of a board whose images are built for `target`.
    pub fn of_target(target: &str) -> Option<Self> {
        target.starts_with("aarch64-").then_some(Self::Arm64)
    }

    /// Debian's name of the architecture.
    pub fn debian(self) -> &'static str {
        match self {
            Self::Arm64 => "arm64",
        }
    }

    /// The metapackage that depends on the current stock kernel.
    fn metapackage(self) -> &'static str {
        match self {
            Self::Arm64 => "linux-image-arm64",
        }
    }

    /// ELF `e_machine` of the architecture's binaries.
    fn elf_machine(self) -> u16 {
        match self {
            Self::Arm64 => EM_AARCH64,
        }
    }

    /// The Rust target of the programs built for the initramfs.
    pub fn guest_target(self) -> &'static str {
        match self {
            Self::Arm64 => "aarch64-unknown-none",
        }
    }

    /// The Rust target of the 32-bit programs built for the initramfs, if the architecture's
    /// kernels run 32-bit processes (Debian's arm64 kernels have `CONFIG_COMPAT`).
    pub fn compat_target(self) -> Option<&'static str> {
        match self {
            Self::Arm64 => Some("armv7a-none-eabi"),
        }
    }

    /// Device trees the boards need, relative to `dtbs/`.
    fn required_dtbs(self) -> &'static [&'static str] {
        match self {
            Self::Arm64 => &["xilinx/zynqmp-zcu102-rev1.0.dtb"],
        }
    }

    /// Checks a kernel image (already uncompressed) for the architecture's boot header.
    pub fn check_image(self, image: &[u8]) -> Result<()> {
        match self {
            Self::Arm64 => {
                let magic = image.get(ARM64_MAGIC_OFFSET..ARM64_MAGIC_OFFSET + 4);
                if magic != Some(ARM64_MAGIC) {
                    bail!("it has no arm64 Image header (no \"ARM\\x64\" at byte 56)");
                }
            }
        }
        Ok(())
    }
}

/// What the cache holds, as written to `VERSION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versions {
    /// The kernel package, e.g. `linux-image-6.1.0-37-arm64`.
    pub kernel_package: String,
    /// Its Debian version, e.g. `6.1.140-1`.
    pub kernel_version: String,
    /// `uname -r` of the kernel, e.g. `6.1.0-37-arm64`.
    pub kernel_release: String,
    /// The Debian version of `busybox-static`.
    pub busybox_version: String,
}

impl Versions {
    fn new(kernel: &Package, busybox: &Package) -> Result<Self> {
        let release = kernel
            .name
            .strip_prefix("linux-image-")
            .with_context(|| format!("{} is no linux-image-* package", kernel.name))?;
        Ok(Self {
            kernel_package: kernel.name.clone(),
            kernel_version: kernel.version.clone(),
            kernel_release: release.to_owned(),
            busybox_version: busybox.version.clone(),
        })
    }

    fn keys(&self) -> [(&'static str, &str); 4] {
        [
            ("kernel_package", &self.kernel_package),
            ("kernel_version", &self.kernel_version),
            ("kernel_release", &self.kernel_release),
            ("busybox_version", &self.busybox_version),
        ]
    }

    /// The `VERSION` file.
    pub fn to_file(&self) -> String {
        self.keys()
            .iter()
            .map(|(key, value)| format!("{key}={value}\n"))
            .collect()
    }

    /// Parses a `VERSION` file; `None` if a key is missing.
    pub fn parse(text: &str) -> Option<Self> {
        let value = |key: &str| {
            text.lines()
                .filter_map(|line| line.split_once('='))
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        Some(Self {
            kernel_package: value("kernel_package")?,
            kernel_version: value("kernel_version")?,
            kernel_release: value("kernel_release")?,
            busybox_version: value("busybox_version")?,
        })
    }
}

/// The files of the cache of one architecture.
struct Cache {
    dir: PathBuf,
    arch: Arch,
}

impl Cache {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// What the cache was made from, `None` unless every file is there.
    fn complete(&self) -> Option<Versions> {
        let versions = Versions::parse(&fs::read_to_string(self.path("VERSION")).ok()?)?;
        let dtbs = self.path("dtbs");
        let complete = self.path("Image").is_file()
            && self.path("busybox").is_file()
            && self
                .arch
                .required_dtbs()
                .iter()
                .all(|dtb| dtbs.join(dtb).is_file());
        complete.then_some(versions)
    }
}

/// The files of a prepared cache.
#[derive(Debug, Clone)]
pub struct Files {
    /// The kernel `Image`.
    pub image: PathBuf,
    /// The gzip-compressed initramfs.
    pub initramfs: PathBuf,
    /// The directory of the kernel's device trees.
    pub dtbs: PathBuf,
}

/// Fills the cache of `arch` if it is incomplete (or, with `refresh`, looks for newer
/// packages) and rebuilds the initramfs: what `cargo xtask linux` does, without the summary.
pub fn prepare(workspace: &Workspace, arch: Arch, refresh: bool) -> Result<(Files, Versions)> {
    let (files, versions, _) = prepare_base(workspace, arch, refresh)?;
    Ok((files, versions))
}

/// [`prepare`], then the initramfs of `board`: the base one plus the `cellvisor` tool, the
/// board's cell configurations, the scripts and the inmates (see
/// [`initramfs::root_cell_entries`]), as `initramfs-<board>.cpio.gz` next to the base one.
/// The files returned name it as the initramfs. What `cargo xtask run` and the system tests
/// boot.
pub fn prepare_board(
    workspace: &Workspace,
    board: &Board,
    refresh: bool,
) -> Result<(Files, Versions)> {
    let Some(arch) = Arch::of_target(&board.target) else {
        bail!(
            "board {}: no Linux guest for its target {}",
            board.name,
            board.target
        );
    };
    let (mut files, versions, mut entries) = prepare_base(workspace, arch, refresh)?;
    let root_cell = tool::prepare(workspace, board)?;
    entries.extend(initramfs::root_cell_entries(&root_cell));
    if let Some(target) = arch.compat_target() {
        let devmem32 = build_program(workspace, target, DEVMEM32_PACKAGE, DEVMEM32_BIN, EM_ARM)?;
        entries.push(initramfs::Entry::new(
            DEVMEM32_PATH,
            initramfs::Node::File {
                mode: 0o755,
                data: devmem32,
            },
        ));
    }
    let archive = initramfs::newc(&entries)?;
    let dir = files
        .initramfs
        .parent()
        .context("the initramfs has no directory")?
        .to_owned();
    let cpio = dir.join(format!("initramfs-{}.cpio", board.name));
    let gz = dir.join(format!("initramfs-{}.cpio.gz", board.name));
    write_archive(&cpio, &gz, &archive)?;
    println!(
        "{}: {} with the cellvisor tool, {} configuration file(s), {} inmate(s)",
        board.name,
        workspace.relative(&gz).display(),
        root_cell.configs.len(),
        root_cell.inmates.len()
    );
    files.initramfs = gz;
    Ok((files, versions))
}

/// Writes an archive and its gzip-compressed copy, unless the archive is unchanged.
fn write_archive(cpio: &Path, gz: &Path, archive: &[u8]) -> Result<()> {
    if fs::read(cpio).ok().as_deref() != Some(archive) || !gz.is_file() {
        write_atomically(gz, &initramfs::gzip(archive)?)?;
        write_atomically(cpio, archive)?;
    }
    Ok(())
}

/// [`prepare`], also returning the entries of the base initramfs.
fn prepare_base(
    workspace: &Workspace,
    arch: Arch,
    refresh: bool,
) -> Result<(Files, Versions, Vec<initramfs::Entry>)> {
    let linux_dir = workspace.target_dir.join("linux");
    let cache = Cache {
        dir: linux_dir.join(arch.debian()),
        arch,
    };
    fs::create_dir_all(&cache.dir)
        .with_context(|| format!("cannot create {}", cache.dir.display()))?;

    let versions = match cache.complete() {
        Some(versions) if !refresh => {
            println!(
                "==> Debian {} kernel and busybox cached in {} (`cargo xtask linux --refresh` looks for newer ones)",
                arch.debian(),
                workspace.relative(&cache.dir).display()
            );
            versions
        }
        cached => fetch(workspace, &linux_dir, &cache, refresh, cached)?,
    };

    let busybox = fs::read(cache.path("busybox"))
        .with_context(|| format!("cannot read {}", cache.path("busybox").display()))?;
    initramfs::check_applets(&busybox)?;
    let guest_clock = build_guest_clock(workspace, arch)?;
    let entries = initramfs::layout(busybox, guest_clock);
    let archive = initramfs::newc(&entries)?;
    let gz = cache.path("initramfs.cpio.gz");
    write_archive(&cache.path("initramfs.cpio"), &gz, &archive)?;
    let files = Files {
        image: cache.path("Image"),
        initramfs: gz,
        dtbs: cache.path("dtbs"),
    };
    Ok((files, versions, entries))
}

/// Builds the guest-clock program for the initramfs and returns the executable.
fn build_guest_clock(workspace: &Workspace, arch: Arch) -> Result<Vec<u8>> {
    build_program(
        workspace,
        arch.guest_target(),
        GUEST_CLOCK_PACKAGE,
        GUEST_CLOCK_BIN,
        arch.elf_machine(),
    )
}

/// Builds the binary `bin` of `package` for `target` and returns the executable, which must be
/// an ELF file for `machine`.
fn build_program(
    workspace: &Workspace,
    target: &str,
    package: &str,
    bin: &str,
    machine: u16,
) -> Result<Vec<u8>> {
    crate::require_target(target)?;
    Cargo::new(["build", "--release", "-p", package, "--target", target]).run()?;
    let built = workspace.target_dir.join(target).join("release").join(bin);
    let data = fs::read(&built).with_context(|| format!("cannot read {}", built.display()))?;
    if elf_machine(&data) != Some(machine) {
        bail!(
            "{} is no ELF executable for machine {machine} ({target})",
            workspace.relative(&built).display()
        );
    }
    Ok(data)
}

/// `e_machine` of an ELF file.
fn elf_machine(data: &[u8]) -> Option<u16> {
    (data.get(..4) == Some(b"\x7fELF"))
        .then(|| data.get(18..20))
        .flatten()
        .map(|m| u16::from_le_bytes([m[0], m[1]]))
}

/// `cargo xtask linux`.
pub fn run(workspace: &Workspace, arch: Arch, refresh: bool) -> Result<()> {
    let start = Instant::now();
    let (files, versions) = prepare(workspace, arch, refresh)?;

    println!(
        "Debian {} {} (kernel {}), {BUSYBOX_PACKAGE} {}",
        versions.kernel_package,
        versions.kernel_version,
        versions.kernel_release,
        versions.busybox_version
    );
    let shown = |path: &Path| workspace.relative(path).display().to_string();
    let dtbs = &files.dtbs;
    let (dtb_count, dtb_bytes) = tree_size(dtbs)?;
    let row = |path: &Path| -> Result<(String, u64, String)> {
        Ok((shown(path), size(path)?, String::new()))
    };
    let mut rows = vec![
        row(&files.image)?,
        row(&files.initramfs)?,
        (
            format!("{}/", shown(dtbs)),
            dtb_bytes,
            format!(" in {dtb_count} files"),
        ),
    ];
    for dtb in arch.required_dtbs() {
        rows.push(row(&dtbs.join(dtb))?);
    }
    rows.push(row(&files.dtbs.with_file_name("VERSION"))?);
    let width = rows.iter().map(|(path, ..)| path.len()).max().unwrap_or(0);
    for (path, bytes, note) in rows {
        println!("  {path:width$}  {bytes:>9} bytes{note}");
    }
    println!("    ok in {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}

/// Fetches the current packages through apt and unpacks them into the cache, unless `cached`
/// already has those versions. Returns what the cache now holds.
fn fetch(
    workspace: &Workspace,
    linux_dir: &Path,
    cache: &Cache,
    refresh: bool,
    cached: Option<Versions>,
) -> Result<Versions> {
    apt::require_tools()?;
    let arch = cache.arch;
    let apt_dir = linux_dir.join("apt");
    let apt = Apt::new(&apt_dir, workspace.relative(&apt_dir), arch.debian())?;
    if refresh || !apt.has_lists() {
        apt.update()?;
    }
    let metapackage = apt.candidate(arch.metapackage())?;
    let kernel = apt.candidate(&apt::kernel_of(&metapackage)?)?;
    let busybox = apt.candidate(BUSYBOX_PACKAGE)?;
    let versions = Versions::new(&kernel, &busybox)?;
    println!(
        "==> {} {} depends on {} {}",
        metapackage.name, metapackage.version, kernel.name, kernel.version
    );
    if cached.as_ref() == Some(&versions) {
        println!("    the cache is up to date");
        return Ok(versions);
    }

    // Whatever happens below, the cache is incomplete until VERSION is written again.
    let version_file = cache.path("VERSION");
    if version_file.exists() {
        fs::remove_file(&version_file)
            .with_context(|| format!("cannot remove {}", version_file.display()))?;
    }

    let kernel_deb = apt.download(&kernel)?;
    let busybox_deb = apt.download(&busybox)?;
    println!(
        "==> unpacking {} and {} into {}",
        workspace.relative(&kernel_deb).display(),
        workspace.relative(&busybox_deb).display(),
        workspace.relative(&cache.dir).display()
    );
    unpack_kernel(&kernel_deb, &versions.kernel_release, cache)
        .with_context(|| format!("{}", workspace.relative(&kernel_deb).display()))?;
    unpack_busybox(&busybox_deb, cache)
        .with_context(|| format!("{}", workspace.relative(&busybox_deb).display()))?;
    write_atomically(&version_file, versions.to_file().as_bytes())?;
    apt.remove_other_debs(&kernel.name, &kernel_deb)?;
    apt.remove_other_debs(&busybox.name, &busybox_deb)?;
    Ok(versions)
}

/// Where a file of the kernel package goes in the cache.
#[derive(Debug, PartialEq, Eq)]
enum KernelFile {
    /// `boot/vmlinuz-<release>`.
    Image,
    /// A file under `usr/lib/linux-image-<release>/`, at this path under `dtbs/`.
    DeviceTree(PathBuf),
}

/// What `path` (from the package's data archive) is in a kernel package of `release`.
fn kernel_file(path: &Path, release: &str) -> Option<KernelFile> {
    if path == Path::new("boot").join(format!("vmlinuz-{release}")) {
        return Some(KernelFile::Image);
    }
    let dtb = path
        .strip_prefix(Path::new("usr/lib").join(format!("linux-image-{release}")))
        .ok()?;
    (dtb.components().count() > 0).then(|| KernelFile::DeviceTree(dtb.to_owned()))
}

fn unpack_kernel(deb: &Path, release: &str, cache: &Cache) -> Result<()> {
    let dtbs = cache.path("dtbs");
    let dtbs_new = cache.path("dtbs.new");
    if dtbs_new.exists() {
        fs::remove_dir_all(&dtbs_new)
            .with_context(|| format!("cannot remove {}", dtbs_new.display()))?;
    }
    let mut image = None;
    let mut dtb_count = 0;
    for_each_file(deb, |path, data| {
        match kernel_file(path, release) {
            Some(KernelFile::Image) => image = Some(data()?),
            Some(KernelFile::DeviceTree(dtb)) => {
                let to = dtbs_new.join(dtb);
                if let Some(parent) = to.parent() {
                    fs::create_dir_all(parent)
                        .with_context(|| format!("cannot create {}", parent.display()))?;
                }
                fs::write(&to, data()?)
                    .with_context(|| format!("cannot write {}", to.display()))?;
                dtb_count += 1;
            }
            None => {}
        }
        Ok(())
    })?;

    let Some(vmlinuz) = image else {
        bail!("the package has no boot/vmlinuz-{release}");
    };
    let image = uncompress(vmlinuz)
        .and_then(|image| cache.arch.check_image(&image).map(|()| image))
        .with_context(|| format!("boot/vmlinuz-{release}"))?;
    if dtb_count == 0 {
        bail!("the package has no device tree in usr/lib/linux-image-{release}/");
    }
    for dtb in cache.arch.required_dtbs() {
        if !dtbs_new.join(dtb).is_file() {
            bail!("the package has no usr/lib/linux-image-{release}/{dtb}");
        }
    }
    write_atomically(&cache.path("Image"), &image)?;
    if dtbs.exists() {
        fs::remove_dir_all(&dtbs).with_context(|| format!("cannot remove {}", dtbs.display()))?;
    }
    fs::rename(&dtbs_new, &dtbs).with_context(|| format!("cannot create {}", dtbs.display()))
}

/// The kernel image in `vmlinuz`: Debian's arm64 `vmlinuz` is the uncompressed `Image` (with
/// an EFI stub and signature), but a gzip-compressed one is uncompressed.
fn uncompress(vmlinuz: Vec<u8>) -> Result<Vec<u8>> {
    if !vmlinuz.starts_with(&[0x1f, 0x8b]) {
        return Ok(vmlinuz);
    }
    let mut image = Vec::new();
    GzDecoder::new(&vmlinuz[..])
        .read_to_end(&mut image)
        .context("cannot decompress it (gzip)")?;
    Ok(image)
}

fn unpack_busybox(deb: &Path, cache: &Cache) -> Result<()> {
    let mut busybox = None;
    for_each_file(deb, |path, data| {
        if path == Path::new("bin/busybox") {
            busybox = Some(data()?);
        }
        Ok(())
    })?;
    let Some(busybox) = busybox else {
        bail!("the package has no bin/busybox");
    };
    if elf_machine(&busybox) != Some(cache.arch.elf_machine()) {
        bail!("bin/busybox is no {} ELF executable", cache.arch.debian());
    }
    write_atomically(&cache.path("busybox"), &busybox)
}

/// Calls `visit` with the path (relative, without `./`) of every regular file in the data
/// archive of `deb`, and a function reading its content. The archive comes from
/// `dpkg-deb --fsys-tarfile`, which deals with its compression.
fn for_each_file(
    deb: &Path,
    mut visit: impl FnMut(&Path, &mut dyn FnMut() -> Result<Vec<u8>>) -> Result<()>,
) -> Result<()> {
    let mut child = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run dpkg-deb: install Debian's dpkg")?;
    let stdout = child.stdout.take().context("no pipe from dpkg-deb")?;
    let result = (|| -> Result<()> {
        let mut archive = tar::Archive::new(stdout);
        for entry in archive.entries().context("cannot read the data archive")? {
            let mut entry = entry.context("cannot read the data archive")?;
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let path = normalise(&entry.path()?)?;
            let mut read = || -> Result<Vec<u8>> {
                let mut data = Vec::new();
                entry
                    .read_to_end(&mut data)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                Ok(data)
            };
            visit(&path, &mut read)?;
        }
        Ok(())
    })();
    // On an early error, dpkg-deb may be blocked writing: stop it before waiting.
    if result.is_err() {
        child.kill().ok();
    }
    let status = child.wait().context("cannot wait for dpkg-deb")?;
    result?;
    if !status.success() {
        bail!("dpkg-deb --fsys-tarfile failed ({status})");
    }
    Ok(())
}

/// `path` without `./` components; an error for absolute paths and `..`.
fn normalise(path: &Path) -> Result<PathBuf> {
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::Normal(part) => normal.push(part),
            _ => bail!("unsafe path {} in the data archive", path.display()),
        }
    }
    Ok(normal)
}

/// Writes `path` through a temporary file, so that it is either old or new, never partial.
fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".new");
    let temporary = PathBuf::from(temporary);
    fs::write(&temporary, data).with_context(|| format!("cannot write {}", temporary.display()))?;
    fs::rename(&temporary, path).with_context(|| format!("cannot write {}", path.display()))
}

fn size(path: &Path) -> Result<u64> {
    Ok(fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len())
}

/// Number and total size of the files under `dir`.
fn tree_size(dir: &Path) -> Result<(u64, u64)> {
    let mut count = 0;
    let mut bytes = 0;
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            let (c, b) = tree_size(&entry.path())?;
            count += c;
            bytes += b;
        } else if kind.is_file() {
            count += 1;
            bytes += entry.metadata()?.len();
        }
    }
    Ok((count, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_file_round_trips() {
        let versions = Versions {
            kernel_package: "linux-image-6.1.0-56-arm64".into(),
            kernel_version: "6.1.192-2".into(),
            kernel_release: "6.1.0-56-arm64".into(),
            busybox_version: "1:1.35.0-4+deb12u1+b1".into(),
        };
        let text = versions.to_file();
        assert_eq!(
            text,
            "kernel_package=linux-image-6.1.0-56-arm64\nkernel_version=6.1.192-2\n\
             kernel_release=6.1.0-56-arm64\nbusybox_version=1:1.35.0-4+deb12u1+b1\n"
        );
        assert_eq!(Versions::parse(&text), Some(versions));
        assert_eq!(Versions::parse("kernel_package=x\n"), None);
    }

    #[test]
    fn release_comes_from_the_package_name() {
        let package = |name: &str, version: &str| Package {
            name: name.into(),
            version: version.into(),
            depends: String::new(),
        };
        let versions = Versions::new(
            &package("linux-image-6.1.0-56-arm64", "6.1.192-2"),
            &package("busybox-static", "1:1.35.0-4"),
        )
        .unwrap();
        assert_eq!(versions.kernel_release, "6.1.0-56-arm64");
        assert!(Versions::new(&package("busybox", "1"), &package("busybox", "1")).is_err());
    }

    #[test]
    fn picks_the_kernel_files() {
        let release = "6.1.0-56-arm64";
        assert_eq!(
            kernel_file(Path::new("boot/vmlinuz-6.1.0-56-arm64"), release),
            Some(KernelFile::Image)
        );
        assert_eq!(
            kernel_file(
                Path::new("usr/lib/linux-image-6.1.0-56-arm64/xilinx/zynqmp-zcu102-rev1.0.dtb"),
                release
            ),
            Some(KernelFile::DeviceTree(
                "xilinx/zynqmp-zcu102-rev1.0.dtb".into()
            ))
        );
        for other in [
            "boot/config-6.1.0-56-arm64",
            "boot/vmlinuz-6.1.0-55-arm64",
            "lib/modules/6.1.0-56-arm64/modules.order",
            "usr/lib/linux-image-6.1.0-56-arm64",
        ] {
            assert_eq!(kernel_file(Path::new(other), release), None, "{other}");
        }
        assert_eq!(
            normalise(Path::new("./boot/vmlinuz")).unwrap(),
            Path::new("boot/vmlinuz")
        );
        assert!(normalise(Path::new("./usr/../../etc/passwd")).is_err());
        assert!(normalise(Path::new("/etc/passwd")).is_err());
    }

    #[test]
    fn uncompresses_gzip_images_only() {
        let mut image = vec![0; 64];
        image[56..60].copy_from_slice(b"ARM\x64");
        assert_eq!(uncompress(image.clone()).unwrap(), image);
        let compressed = crate::initramfs::gzip(&image).unwrap();
        assert_eq!(uncompress(compressed.clone()).unwrap(), image);
        assert!(uncompress(compressed[..20].to_vec()).is_err());
    }

    #[test]
    fn checks_the_arm64_header() {
        let mut image = vec![0; 64];
        assert!(Arch::Arm64.check_image(&image).is_err());
        image[56..60].copy_from_slice(b"ARM\x64");
        assert!(Arch::Arm64.check_image(&image).is_ok());
        assert!(Arch::Arm64.check_image(&image[..58]).is_err());
    }
}
