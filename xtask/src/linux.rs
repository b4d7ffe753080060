//! `cargo xtask linux`: Debian's stock kernel and a busybox initramfs for the root cell,
//! cached under `target/linux/<arch>/` for the Debian architectures `arm64` and `amd64`:
//!
//! - the kernel of the package Debian's `linux-image-<arch>` metapackage currently depends on
//!   (e.g. `linux-image-6.1.0-37-arm64`), its `boot/vmlinuz-<release>` as the architecture's
//!   boot protocol wants it: on arm64 `Image`, uncompressed (Linux's
//!   Documentation/arch/arm64/booting.rst), on amd64 `bzImage`, as it is (the x86 boot protocol
//!   image with the compressed kernel inside, Documentation/arch/x86/boot.rst);
//! - `dtbs/`: the device trees shipped with it (`xilinx/zynqmp-zcu102-rev1.0.dtb`, ...); empty
//!   on amd64, whose kernel package has none;
//! - on amd64 `msr.ko`: the kernel's module of the `/dev/cpu/<n>/msr` driver
//!   (`lib/modules/<release>/kernel/arch/x86/kernel/msr.ko`, Debian builds it as a module),
//!   which the initramfs actions `msr-read` and `msr-write` load;
//! - `busybox`: the binary of Debian's `busybox-static`;
//! - `initramfs.cpio` and `initramfs.cpio.gz`: the initramfs (see `initramfs.rs`), with
//!   `/bin/guest-clock` built from `examples/guest-clock` (for `aarch64-unknown-none` or
//!   `x86_64-unknown-none`) and the modules above in `/lib/modules/`;
//! - `initramfs-<board>.cpio` and `.cpio.gz`: the same plus what the root cell of a board
//!   manages cells with (`/bin/cellvisor`, `/etc/cellvisor/`, `/lib/cellvisor/inmates/`; see
//!   `tool.rs`), written by [`prepare_board`] for `cargo xtask run` and the system tests;
//! - `VERSION`: what they were made from, as `key=value` lines a shell can source
//!   (`kernel_package`, `kernel_version`, `kernel_release`, `busybox_version`).
//!
//! The packages come through a private apt state per architecture in
//! `target/linux/apt/<arch>/` (see `apt.rs`). Once the cache is complete (every file above is
//! there), later runs use it without asking apt; an incomplete one, e.g. of an older xtask
//! that took no module, is unpacked again from the packages (their `.deb` files are kept).
//! `--refresh` updates the package lists and fetches what changed. The initramfs is rebuilt
//! on every run (it takes milliseconds, plus a `cargo build` of the guest clock) and
//! rewritten only when its content changes. `cargo xtask run` and the system tests
//! call [`prepare_board`] for the same files and the board's initramfs.

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
use crate::tool::{self, NamedFile};
use crate::workspace::Workspace;

/// Offset of the magic number in the arm64 Linux `Image` header.
const ARM64_MAGIC_OFFSET: usize = 56;
/// "ARM\x64".
const ARM64_MAGIC: &[u8; 4] = b"ARM\x64";
/// `e_machine` of AArch64 ELF files.
const EM_AARCH64: u16 = 183;
/// `e_machine` of x86-64 ELF files.
const EM_X86_64: u16 = 62;
/// Where the x86 boot sector signature is (`boot_flag` of Linux's
/// Documentation/arch/x86/boot.rst, "The Real-Mode Kernel Header").
const X86_BOOT_FLAG_OFFSET: usize = 0x1fe;
/// The boot sector signature.
const X86_BOOT_FLAG: u16 = 0xaa55;
/// Where the boot protocol header's magic number is (`header`).
const X86_HEADER_OFFSET: usize = 0x202;
/// "HdrS".
const X86_HEADER_MAGIC: &[u8; 4] = b"HdrS";
/// Where the boot protocol version is (`version`, major in the high byte).
const X86_VERSION_OFFSET: usize = 0x206;
/// The first boot protocol version with `xloadflags`, 2.12.
const X86_MIN_VERSION: u16 = 0x020c;
/// Where `xloadflags` is.
const X86_XLOADFLAGS_OFFSET: usize = 0x236;
/// `XLF_KERNEL_64`: the kernel has the legacy 64-bit entry point (0x200 into the protected-mode
/// kernel).
const X86_XLF_KERNEL_64: u16 = 1 << 0;
/// How many bytes of a kernel image [`Arch::check_image`] needs at most.
pub const IMAGE_HEADER_LEN: usize = X86_XLOADFLAGS_OFFSET + 2;
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
/// The kernel modules of the amd64 initramfs, under the package's
/// `lib/modules/<release>/kernel/`: the MSR driver (`CONFIG_X86_MSR=m` in Debian's config),
/// whose `/dev/cpu/<n>/msr` the `msr-read` and `msr-write` actions of `/init` use.
const AMD64_MODULES: &[&str] = &["arch/x86/kernel/msr.ko"];

/// A Debian architecture the root-cell guests can be taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    /// 64-bit Arm (`Image` plus device trees).
    Arm64,
    /// x86-64 (`bzImage`, no device trees).
    Amd64,
}

impl Arch {
    /// Every architecture.
    pub const ALL: [Self; 2] = [Self::Arm64, Self::Amd64];

    /// The architecture of the guests of a board whose images are built for `target`.
    pub fn of_target(target: &str) -> Option<Self> {
        if target.starts_with("aarch64-") {
            Some(Self::Arm64)
        } else if target.starts_with("x86_64-") {
            Some(Self::Amd64)
        } else {
            None
        }
    }

    /// Debian's name of the architecture.
    pub fn debian(self) -> &'static str {
        match self {
            Self::Arm64 => "arm64",
            Self::Amd64 => "amd64",
        }
    }

    /// The metapackage that depends on the current stock kernel.
    fn metapackage(self) -> &'static str {
        match self {
            Self::Arm64 => "linux-image-arm64",
            Self::Amd64 => "linux-image-amd64",
        }
    }

    /// The name of the kernel image in the cache, after the format the boot protocol takes.
    pub fn image_name(self) -> &'static str {
        match self {
            Self::Arm64 => "Image",
            Self::Amd64 => "bzImage",
        }
    }

    /// ELF `e_machine` of the architecture's binaries.
    fn elf_machine(self) -> u16 {
        match self {
            Self::Arm64 => EM_AARCH64,
            Self::Amd64 => EM_X86_64,
        }
    }

    /// The Rust target of the programs built for the initramfs.
    pub fn guest_target(self) -> &'static str {
        match self {
            Self::Arm64 => "aarch64-unknown-none",
            Self::Amd64 => "x86_64-unknown-none",
        }
    }

    /// The Rust target of the 32-bit programs built for the initramfs, if the architecture's
    /// kernels run 32-bit processes (Debian's arm64 kernels have `CONFIG_COMPAT`; the 32-bit
    /// program, `devmem32`, is an Arm one).
    pub fn compat_target(self) -> Option<&'static str> {
        match self {
            Self::Arm64 => Some("armv7a-none-eabi"),
            Self::Amd64 => None,
        }
    }

    /// The Linux target of the root cell's `cellvisor` tool (see `tool.rs`).
    pub fn tool_target(self) -> tool::Target {
        match self {
            Self::Arm64 => tool::AARCH64,
            Self::Amd64 => tool::X86_64,
        }
    }

    /// Kernel modules the initramfs gets, as paths under the kernel package's
    /// `lib/modules/<release>/kernel/`; each is cached and put into the initramfs's
    /// [`initramfs::MODULE_DIR`] under its file name (see [`module_name`]).
    fn modules(self) -> &'static [&'static str] {
        match self {
            Self::Arm64 => &[],
            Self::Amd64 => AMD64_MODULES,
        }
    }

    /// Device trees the boards need, relative to `dtbs/`.
    fn required_dtbs(self) -> &'static [&'static str] {
        match self {
            Self::Arm64 => &["xilinx/zynqmp-zcu102-rev1.0.dtb"],
            Self::Amd64 => &[],
        }
    }

    /// The kernel image of the package's `vmlinuz`, checked: on arm64 uncompressed if it is
    /// gzip-compressed, on amd64 the `bzImage` as it is.
    fn kernel_image(self, vmlinuz: Vec<u8>) -> Result<Vec<u8>> {
        let image = match self {
            Self::Arm64 => uncompress(vmlinuz)?,
            Self::Amd64 => vmlinuz,
        };
        self.check_image(&image)?;
        Ok(image)
    }

    /// Checks the start of a kernel image ([`IMAGE_HEADER_LEN`] bytes are enough) for the
    /// architecture's boot header: on arm64 the `Image` header's magic number, on amd64 the
    /// x86 boot protocol header of a 64-bit kernel.
    pub fn check_image(self, image: &[u8]) -> Result<()> {
        match self {
            Self::Arm64 => {
                let magic = image.get(ARM64_MAGIC_OFFSET..ARM64_MAGIC_OFFSET + 4);
                if magic != Some(ARM64_MAGIC) {
                    bail!("it has no arm64 Image header (no \"ARM\\x64\" at byte 56)");
                }
            }
            Self::Amd64 => check_bzimage(image)?,
        }
        Ok(())
    }
}

/// Checks the x86 boot protocol header of a `bzImage` (Linux's Documentation/arch/x86/boot.rst):
/// the boot sector signature, the header's magic number, a protocol version that has
/// `xloadflags` (2.12), and the 64-bit entry point in them.
fn check_bzimage(image: &[u8]) -> Result<()> {
    if image.len() < IMAGE_HEADER_LEN {
        bail!(
            "it is too short for an x86 boot protocol header ({} bytes; the header ends at byte \
             {IMAGE_HEADER_LEN:#x})",
            image.len()
        );
    }
    let u16_at = |offset: usize| u16::from_le_bytes([image[offset], image[offset + 1]]);
    let boot_flag = u16_at(X86_BOOT_FLAG_OFFSET);
    if boot_flag != X86_BOOT_FLAG {
        bail!(
            "it has no x86 boot sector signature ({boot_flag:#06x} instead of {X86_BOOT_FLAG:#06x} \
             at byte {X86_BOOT_FLAG_OFFSET:#x})"
        );
    }
    if image[X86_HEADER_OFFSET..X86_HEADER_OFFSET + 4] != X86_HEADER_MAGIC[..] {
        bail!("it has no x86 boot protocol header (no \"HdrS\" at byte {X86_HEADER_OFFSET:#x})");
    }
    let version = u16_at(X86_VERSION_OFFSET);
    if version < X86_MIN_VERSION {
        bail!(
            "its x86 boot protocol version is {}.{:02}, older than 2.12, the first with \
             xloadflags (the version is at byte {X86_VERSION_OFFSET:#x})",
            version >> 8,
            version & 0xff
        );
    }
    let xloadflags = u16_at(X86_XLOADFLAGS_OFFSET);
    if xloadflags & X86_XLF_KERNEL_64 == 0 {
        bail!(
            "it is no 64-bit kernel: XLF_KERNEL_64 (bit 0 of xloadflags {xloadflags:#06x} at byte \
             {X86_XLOADFLAGS_OFFSET:#x}) is clear"
        );
    }
    Ok(())
}

/// The file name of a module path of [`Arch::modules`]: its name in the cache and in the
/// initramfs.
fn module_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
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

    /// The kernel image.
    fn image(&self) -> PathBuf {
        self.path(self.arch.image_name())
    }

    /// A kernel module of [`Arch::modules`].
    fn module(&self, path: &str) -> PathBuf {
        self.path(module_name(path))
    }

    /// What the cache was made from, `None` unless every file is there (a cache without a
    /// module is unpacked again).
    fn complete(&self) -> Option<Versions> {
        let versions = Versions::parse(&fs::read_to_string(self.path("VERSION")).ok()?)?;
        let dtbs = self.path("dtbs");
        let complete = self.image().is_file()
            && self.path("busybox").is_file()
            && self
                .arch
                .modules()
                .iter()
                .all(|module| self.module(module).is_file())
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
    /// The kernel image, `Image` or `bzImage` (see [`Arch::image_name`]).
    pub image: PathBuf,
    /// The gzip-compressed initramfs.
    pub initramfs: PathBuf,
    /// The directory of the kernel's device trees: empty (or missing) on amd64, whose kernel
    /// has none.
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
    // The Linux cell's kernel and initramfs (the base one), for boards with a Linux cell.
    let linux_cell = if arch == Arch::Arm64 {
        let cell = initramfs::gzip(&initramfs::newc(&entries)?)?;
        let kernel = fs::read(&files.image)
            .with_context(|| format!("cannot read {}", files.image.display()))?;
        Some((kernel, cell))
    } else {
        None
    };
    let root_cell = tool::prepare(workspace, board, arch.tool_target())?;
    initramfs::extend(&mut entries, initramfs::root_cell_entries(&root_cell));
    let has_linux_cell = root_cell.configs.iter().any(|c| c.name == "linux.toml");
    if let (true, Some((kernel, cell))) = (has_linux_cell, linux_cell) {
        let file = |name: &str, data| {
            initramfs::Entry::new(
                format!("{}/{name}", initramfs::LINUX_CELL_DIR),
                initramfs::Node::File { mode: 0o644, data },
            )
        };
        entries.push(initramfs::Entry::new(
            initramfs::LINUX_CELL_DIR,
            initramfs::Node::Directory { mode: 0o755 },
        ));
        entries.push(file("Image", kernel));
        entries.push(file("initramfs.cpio.gz", cell));
    }
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
    let modules = arch
        .modules()
        .iter()
        .map(|module| {
            let path = cache.module(module);
            let data =
                fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            Ok(NamedFile {
                name: module_name(module).to_owned(),
                data,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let entries = initramfs::layout(busybox, guest_clock, modules);
    let archive = initramfs::newc(&entries)?;
    let gz = cache.path("initramfs.cpio.gz");
    write_archive(&cache.path("initramfs.cpio"), &gz, &archive)?;
    let files = Files {
        image: cache.image(),
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
    let (dtb_count, dtb_bytes) = if dtbs.is_dir() {
        tree_size(dtbs)?
    } else {
        (0, 0)
    };
    let row = |path: &Path| -> Result<(String, u64, String)> {
        Ok((shown(path), size(path)?, String::new()))
    };
    let mut rows = vec![row(&files.image)?, row(&files.initramfs)?];
    for module in arch.modules() {
        rows.push(row(&files.image.with_file_name(module_name(module)))?);
    }
    // amd64 has no device trees: no row for an empty directory.
    if dtb_count > 0 || !arch.required_dtbs().is_empty() {
        rows.push((
            format!("{}/", shown(dtbs)),
            dtb_bytes,
            format!(" in {dtb_count} files"),
        ));
    }
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
    // One state per architecture: `apt-get update` drops the lists of the architectures its
    // configuration does not name, so a shared state would fetch them anew at every switch.
    let apt_root = linux_dir.join("apt");
    apt::remove_shared_state(&apt_root)?;
    let apt_dir = apt_root.join(arch.debian());
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
    /// `boot/vmlinuz-<release>`, the kernel image.
    Image,
    /// A file under `usr/lib/linux-image-<release>/`, at this path under `dtbs/`.
    DeviceTree(PathBuf),
    /// `lib/modules/<release>/kernel/<path>` for a `path` of `modules`, this one.
    Module(&'static str),
}

/// What `path` (from the package's data archive) is in a kernel package of `release`, whose
/// modules `modules` (paths under `lib/modules/<release>/kernel/`) are wanted.
fn kernel_file(path: &Path, release: &str, modules: &[&'static str]) -> Option<KernelFile> {
    if path == Path::new("boot").join(format!("vmlinuz-{release}")) {
        return Some(KernelFile::Image);
    }
    if let Ok(module) = path.strip_prefix(Path::new("lib/modules").join(release).join("kernel")) {
        return modules
            .iter()
            .copied()
            .find(|wanted| module == Path::new(wanted))
            .map(KernelFile::Module);
    }
    let dtb = path
        .strip_prefix(Path::new("usr/lib").join(format!("linux-image-{release}")))
        .ok()?;
    (dtb.components().count() > 0).then(|| KernelFile::DeviceTree(dtb.to_owned()))
}

/// Unpacks the kernel image, the device trees (if any) and the modules of
/// [`Arch::modules`] of the kernel package `deb` of `release` into the cache.
fn unpack_kernel(deb: &Path, release: &str, cache: &Cache) -> Result<()> {
    let dtbs = cache.path("dtbs");
    let dtbs_new = cache.path("dtbs.new");
    if dtbs_new.exists() {
        fs::remove_dir_all(&dtbs_new)
            .with_context(|| format!("cannot remove {}", dtbs_new.display()))?;
    }
    // Created even if the package has no device trees, so that `dtbs/` always exists.
    fs::create_dir_all(&dtbs_new)
        .with_context(|| format!("cannot create {}", dtbs_new.display()))?;
    let modules = cache.arch.modules();
    let mut image = None;
    let mut found_modules = Vec::new();
    let mut dtb_count = 0;
    for_each_file(deb, |path, data| {
        match kernel_file(path, release, modules) {
            Some(KernelFile::Image) => image = Some(data()?),
            Some(KernelFile::Module(module)) => found_modules.push((module, data()?)),
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
    let image = cache
        .arch
        .kernel_image(vmlinuz)
        .with_context(|| format!("boot/vmlinuz-{release}"))?;
    let required = cache.arch.required_dtbs();
    if dtb_count == 0 && !required.is_empty() {
        bail!("the package has no device tree in usr/lib/linux-image-{release}/");
    }
    for dtb in required {
        if !dtbs_new.join(dtb).is_file() {
            bail!("the package has no usr/lib/linux-image-{release}/{dtb}");
        }
    }
    for module in modules {
        let Some((_, data)) = found_modules.iter().find(|(found, _)| found == module) else {
            bail!("the package has no lib/modules/{release}/kernel/{module}");
        };
        if elf_machine(data) != Some(cache.arch.elf_machine()) {
            bail!(
                "lib/modules/{release}/kernel/{module} is no {} ELF file",
                cache.arch.debian()
            );
        }
    }
    write_atomically(&cache.image(), &image)?;
    for (module, data) in &found_modules {
        write_atomically(&cache.module(module), data)?;
    }
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
        let none = &[];
        assert_eq!(
            kernel_file(Path::new("boot/vmlinuz-6.1.0-56-arm64"), release, none),
            Some(KernelFile::Image)
        );
        assert_eq!(
            kernel_file(
                Path::new("usr/lib/linux-image-6.1.0-56-arm64/xilinx/zynqmp-zcu102-rev1.0.dtb"),
                release,
                none
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
            "lib/modules/6.1.0-56-arm64/kernel/arch/x86/kernel/msr.ko",
        ] {
            assert_eq!(
                kernel_file(Path::new(other), release, none),
                None,
                "{other}"
            );
        }
        assert_eq!(
            normalise(Path::new("./boot/vmlinuz")).unwrap(),
            Path::new("boot/vmlinuz")
        );
        assert!(normalise(Path::new("./usr/../../etc/passwd")).is_err());
        assert!(normalise(Path::new("/etc/passwd")).is_err());
    }

    #[test]
    fn picks_the_amd64_modules() {
        let release = "6.1.0-57-amd64";
        let modules = Arch::Amd64.modules();
        assert_eq!(modules, ["arch/x86/kernel/msr.ko"]);
        assert_eq!(
            kernel_file(
                Path::new("lib/modules/6.1.0-57-amd64/kernel/arch/x86/kernel/msr.ko"),
                release,
                modules
            ),
            Some(KernelFile::Module("arch/x86/kernel/msr.ko"))
        );
        for other in [
            // Another release, another module, a module outside kernel/.
            "lib/modules/6.1.0-56-amd64/kernel/arch/x86/kernel/msr.ko",
            "lib/modules/6.1.0-57-amd64/kernel/drivers/powercap/intel_rapl_msr.ko",
            "lib/modules/6.1.0-57-amd64/msr.ko",
            "lib/modules/6.1.0-57-amd64/kernel/arch/x86/kernel",
        ] {
            assert_eq!(
                kernel_file(Path::new(other), release, modules),
                None,
                "{other}"
            );
        }
        assert_eq!(
            kernel_file(Path::new("boot/vmlinuz-6.1.0-57-amd64"), release, modules),
            Some(KernelFile::Image)
        );
        // The initramfs's actions load it under this name.
        assert_eq!(module_name(modules[0]), initramfs::MSR_MODULE);
        assert!(Arch::Arm64.modules().is_empty());
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

    /// The start of a `bzImage` of boot protocol 2.15 with a 64-bit entry point, as Debian's
    /// amd64 kernels have it: "MZ" of the EFI stub, the boot sector signature, the header.
    fn bzimage() -> Vec<u8> {
        let mut image = vec![0; 0x400];
        image[..2].copy_from_slice(b"MZ");
        image[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&0x020f_u16.to_le_bytes());
        // XLF_KERNEL_64, XLF_CAN_BE_LOADED_ABOVE_4G and the EFI and 5-level paging flags.
        image[0x236..0x238].copy_from_slice(&0x007f_u16.to_le_bytes());
        image
    }

    fn amd64_error(image: &[u8]) -> String {
        Arch::Amd64.check_image(image).unwrap_err().to_string()
    }

    #[test]
    fn checks_the_x86_boot_header() {
        let good = bzimage();
        Arch::Amd64.check_image(&good).unwrap();
        // Exactly the header is enough.
        Arch::Amd64.check_image(&good[..IMAGE_HEADER_LEN]).unwrap();
        // Protocol 2.12, the first with xloadflags, and nothing but XLF_KERNEL_64.
        let mut oldest = good.clone();
        oldest[0x206..0x208].copy_from_slice(&0x020c_u16.to_le_bytes());
        oldest[0x236..0x238].copy_from_slice(&1_u16.to_le_bytes());
        Arch::Amd64.check_image(&oldest).unwrap();

        let error = amd64_error(&good[..IMAGE_HEADER_LEN - 1]);
        assert!(
            error.contains("too short") && error.contains("0x238"),
            "{error}"
        );
        assert!(amd64_error(&[]).contains("too short"));

        let mut bad = good.clone();
        bad[0x1fe] = 0;
        let error = amd64_error(&bad);
        assert!(
            error.contains("no x86 boot sector signature (0xaa00 instead of 0xaa55 at byte 0x1fe)"),
            "{error}"
        );

        let mut bad = good.clone();
        bad[0x202..0x206].copy_from_slice(b"HdrX");
        let error = amd64_error(&bad);
        assert!(error.contains("no \"HdrS\" at byte 0x202"), "{error}");

        let mut bad = good.clone();
        bad[0x206..0x208].copy_from_slice(&0x020b_u16.to_le_bytes());
        let error = amd64_error(&bad);
        assert!(
            error.contains("version is 2.11, older than 2.12") && error.contains("0x206"),
            "{error}"
        );

        let mut bad = good.clone();
        bad[0x236..0x238].copy_from_slice(&0x007e_u16.to_le_bytes());
        let error = amd64_error(&bad);
        assert!(
            error.contains("no 64-bit kernel")
                && error.contains("XLF_KERNEL_64")
                && error.contains("0x007e at byte 0x236"),
            "{error}"
        );

        // Neither architecture takes the other's image.
        assert!(Arch::Arm64.check_image(&good).is_err());
        let mut arm64 = vec![0; 0x400];
        arm64[56..60].copy_from_slice(b"ARM\x64");
        assert!(amd64_error(&arm64).contains("boot sector signature"));
    }

    #[test]
    fn keeps_the_bzimage_as_it_is() {
        let image = bzimage();
        assert_eq!(Arch::Amd64.kernel_image(image.clone()).unwrap(), image);
        // A gzip-compressed file is no bzImage: amd64 does not uncompress it.
        let compressed = crate::initramfs::gzip(&image).unwrap();
        assert!(Arch::Amd64.kernel_image(compressed.clone()).is_err());
        let mut arm64 = vec![0; 64];
        arm64[56..60].copy_from_slice(b"ARM\x64");
        let compressed = crate::initramfs::gzip(&arm64).unwrap();
        assert_eq!(Arch::Arm64.kernel_image(compressed).unwrap(), arm64);
    }

    #[test]
    fn maps_targets_to_architectures() {
        assert_eq!(Arch::of_target("aarch64-unknown-none"), Some(Arch::Arm64));
        assert_eq!(
            Arch::of_target("aarch64-unknown-none-softfloat"),
            Some(Arch::Arm64)
        );
        assert_eq!(Arch::of_target("x86_64-unknown-none"), Some(Arch::Amd64));
        assert_eq!(Arch::of_target("armv7a-none-eabi"), None);
        assert_eq!(Arch::of_target("riscv64gc-unknown-none-elf"), None);
        for arch in Arch::ALL {
            assert_eq!(Arch::of_target(arch.guest_target()), Some(arch));
            assert_eq!(
                Arch::of_target(arch.tool_target().triple),
                Some(arch),
                "{arch:?}"
            );
        }
        assert_eq!(Arch::Arm64.image_name(), "Image");
        assert_eq!(Arch::Amd64.image_name(), "bzImage");
        assert_eq!(Arch::Amd64.metapackage(), "linux-image-amd64");
        assert_eq!(Arch::Amd64.elf_machine(), 62);
        assert_eq!(Arch::Amd64.compat_target(), None);
        assert!(Arch::Amd64.required_dtbs().is_empty());
    }

    #[test]
    fn an_amd64_cache_needs_no_device_trees_but_the_msr_module() {
        let dir = std::env::temp_dir().join(format!("xtask-linux-cache-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let cache = Cache {
            dir: dir.clone(),
            arch: Arch::Amd64,
        };
        let versions = Versions {
            kernel_package: "linux-image-6.1.0-56-amd64".into(),
            kernel_version: "6.1.192-2".into(),
            kernel_release: "6.1.0-56-amd64".into(),
            busybox_version: "1:1.35.0-4+b3".into(),
        };
        fs::write(dir.join("VERSION"), versions.to_file()).unwrap();
        fs::write(dir.join("busybox"), b"").unwrap();
        assert_eq!(cache.complete(), None);
        // An arm64 `Image` does not count.
        fs::write(dir.join("Image"), b"").unwrap();
        assert_eq!(cache.complete(), None);
        fs::write(dir.join("bzImage"), b"").unwrap();
        // Not without the MSR driver's module (a cache of an older xtask is unpacked again).
        assert_eq!(cache.complete(), None);
        fs::write(dir.join("msr.ko"), b"").unwrap();
        assert_eq!(cache.complete(), Some(versions));
        assert_eq!(cache.image(), dir.join("bzImage"));
        assert_eq!(cache.module("arch/x86/kernel/msr.ko"), dir.join("msr.ko"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
