//! The root cell's initramfs: Debian's static busybox and a `/init` shell script, as a
//! gzip-compressed newc (SVR4 "new ASCII") cpio archive, the format the kernel unpacks.
//!
//! `/init` mounts `/proc`, `/sys` and `/dev` (devtmpfs), prints [`MARKER`] on the console (on
//! the kernel log if there is no console), then powers the machine off if the kernel command
//! line has `cellvisor.poweroff`, and otherwise runs a shell on the console; leaving the shell
//! powers off too.
//!
//! The archive is reproducible: every entry belongs to root, has modification time 0 and gets
//! its inode number from its position.

use std::io::Write as _;

use anyhow::{bail, Context as _, Result};
use flate2::write::GzEncoder;
use flate2::Compression;

/// What `/init` prints once it runs, for the system tests to look for.
pub const MARKER: &str = "cellvisor-initramfs: /init reached";

/// Kernel command-line word that makes `/init` power off right after printing [`MARKER`].
pub const POWEROFF: &str = "cellvisor.poweroff";

/// The busybox applets linked into `/bin`: what `/init` and a person at the shell need.
pub const APPLETS: &[&str] = &[
    "[", "ash", "cat", "chmod", "cp", "cttyhack", "date", "dd", "devmem", "df", "dmesg", "echo",
    "env", "false", "find", "free", "grep", "halt", "head", "hexdump", "kill", "less", "ln", "ls",
    "mkdir", "mknod", "more", "mount", "mv", "poweroff", "printf", "ps", "reboot", "rm", "sed",
    "setsid", "sh", "sleep", "stty", "sync", "tail", "test", "top", "true", "umount", "uname",
    "uptime", "vi", "wc", "xargs",
];

/// Empty directories at the root: mount points and scratch space.
const DIRECTORIES: [&str; 4] = ["dev", "proc", "sys", "tmp"];

/// What an archive entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory, with its permission bits.
    Directory { mode: u32 },
    /// A regular file.
    File { mode: u32, data: Vec<u8> },
    /// A symbolic link to `target`.
    Symlink { target: String },
    /// A character device node.
    CharDevice { mode: u32, major: u32, minor: u32 },
}

impl Node {
    /// The `st_mode` value: file type and permission bits.
    pub fn mode(&self) -> u32 {
        match self {
            Self::Directory { mode } => 0o040_000 | mode,
            Self::File { mode, .. } => 0o100_000 | mode,
            Self::Symlink { .. } => 0o120_777,
            Self::CharDevice { mode, .. } => 0o020_000 | mode,
        }
    }

    /// The entry's data: the file content or the link target.
    pub fn data(&self) -> &[u8] {
        match self {
            Self::File { data, .. } => data,
            Self::Symlink { target } => target.as_bytes(),
            Self::Directory { .. } | Self::CharDevice { .. } => &[],
        }
    }
}

/// One archive entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path from the root, without a leading `/`; parents come first in an archive.
    pub path: String,
    /// What it is.
    pub node: Node,
}

impl Entry {
    fn new(path: impl Into<String>, node: Node) -> Self {
        Self {
            path: path.into(),
            node,
        }
    }
}

/// The `/init` script.
pub fn init_script() -> String {
    format!(
        r#"#!/bin/sh
# /init of the cellvisor initramfs, written by `cargo xtask linux`.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# The kernel opened /dev/console as stdin/stdout/stderr. Without a console driver (only an
# early console) there is none: say it on the kernel log, which the early console prints.
echo "{MARKER}" 2>/dev/null || echo "{MARKER}" >/dev/kmsg
for word in $(cat /proc/cmdline); do
    if [ "$word" = {POWEROFF} ]; then
        poweroff -f
    fi
done
# A shell with a controlling terminal (for Ctrl-C), on the console's real device.
setsid cttyhack sh
poweroff -f
"#
    )
}

/// The entries of the initramfs around `busybox`, a static busybox binary.
pub fn layout(busybox: Vec<u8>) -> Vec<Entry> {
    let mut entries = vec![
        Entry::new("bin", Node::Directory { mode: 0o755 }),
        Entry::new(
            "bin/busybox",
            Node::File {
                mode: 0o755,
                data: busybox,
            },
        ),
    ];
    entries.extend(APPLETS.iter().map(|applet| {
        Entry::new(
            format!("bin/{applet}"),
            Node::Symlink {
                target: "busybox".into(),
            },
        )
    }));
    for dir in DIRECTORIES {
        let mode = if dir == "tmp" { 0o1777 } else { 0o755 };
        entries.push(Entry::new(dir, Node::Directory { mode }));
    }
    // The kernel opens /dev/console for /init before anything is mounted.
    entries.push(Entry::new(
        "dev/console",
        Node::CharDevice {
            mode: 0o600,
            major: 5,
            minor: 1,
        },
    ));
    entries.push(Entry::new(
        "init",
        Node::File {
            mode: 0o755,
            data: init_script().into_bytes(),
        },
    ));
    entries
}

/// The uncompressed newc archive of `entries`, with its trailer.
pub fn newc(entries: &[Entry]) -> Result<Vec<u8>> {
    let mut archive = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        if entry.path.is_empty() || entry.path.starts_with('/') || entry.path.contains('\0') {
            bail!("bad initramfs path {:?}", entry.path);
        }
        let data = entry.node.data();
        let size = u32::try_from(data.len())
            .with_context(|| format!("initramfs entry {} is too large", entry.path))?;
        let (major, minor) = match entry.node {
            Node::CharDevice { major, minor, .. } => (major, minor),
            _ => (0, 0),
        };
        let nlink = if matches!(entry.node, Node::Directory { .. }) {
            2
        } else {
            1
        };
        let mut writer = cpio::newc::Builder::new(&entry.path)
            .ino(index as u32 + 1)
            .mode(entry.node.mode())
            .nlink(nlink)
            .rdev_major(major)
            .rdev_minor(minor)
            .write(&mut archive, size);
        writer.write_all(data)?;
        writer.finish()?;
    }
    cpio::newc::trailer(&mut archive)?;
    Ok(archive)
}

/// `data` compressed with gzip, which every Debian kernel unpacks.
pub fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
    encoder.write_all(data)?;
    Ok(encoder.finish()?)
}

/// Fails unless `busybox` has every applet of [`APPLETS`]: its applet names are stored as
/// one NUL-separated list.
pub fn check_applets(busybox: &[u8]) -> Result<()> {
    let names: std::collections::HashSet<&[u8]> = busybox.split(|&b| b == 0).collect();
    let missing: Vec<&str> = APPLETS
        .iter()
        .copied()
        .filter(|applet| !names.contains(applet.as_bytes()))
        .collect();
    if !missing.is_empty() {
        bail!(
            "the busybox binary has no applet {}: drop them from APPLETS in xtask/src/initramfs.rs",
            missing.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use flate2::read::GzDecoder;

    use super::*;

    /// An entry as read back with the `cpio` crate's reader.
    #[derive(Debug)]
    struct ReadBack {
        name: String,
        ino: u32,
        mode: u32,
        uid: u32,
        nlink: u32,
        mtime: u32,
        rdev: (u32, u32),
        data: Vec<u8>,
    }

    fn read_back(mut archive: &[u8]) -> Vec<ReadBack> {
        let mut entries = Vec::new();
        loop {
            let mut reader = cpio::newc::Reader::new(archive).unwrap();
            let entry = reader.entry();
            if entry.is_trailer() {
                assert!(
                    reader.finish().unwrap().is_empty(),
                    "data after the trailer"
                );
                return entries;
            }
            let mut read = ReadBack {
                name: entry.name().to_owned(),
                ino: entry.ino(),
                mode: entry.mode(),
                uid: entry.uid(),
                nlink: entry.nlink(),
                mtime: entry.mtime(),
                rdev: (entry.rdev_major(), entry.rdev_minor()),
                data: Vec::new(),
            };
            reader.read_to_end(&mut read.data).unwrap();
            entries.push(read);
            archive = reader.finish().unwrap();
        }
    }

    fn fake_busybox() -> Vec<u8> {
        let mut binary = b"\x7fELF not really\0".to_vec();
        for applet in APPLETS {
            binary.extend_from_slice(applet.as_bytes());
            binary.push(0);
        }
        binary
    }

    #[test]
    fn the_archive_reads_back_as_the_layout() {
        let busybox = fake_busybox();
        let entries = layout(busybox.clone());
        let archive = newc(&entries).unwrap();
        let read = read_back(&archive);
        assert_eq!(read.len(), entries.len());
        for (index, (read, entry)) in read.iter().zip(&entries).enumerate() {
            assert_eq!(read.name, entry.path);
            assert_eq!(read.ino, index as u32 + 1);
            assert_eq!(read.mode, entry.node.mode(), "{}", entry.path);
            assert_eq!((read.uid, read.mtime), (0, 0));
            assert_eq!(read.data, entry.node.data(), "{}", entry.path);
            let directory = read.mode & 0o170_000 == 0o040_000;
            assert_eq!(read.nlink, if directory { 2 } else { 1 });
        }
        let find = |name: &str| read.iter().find(|r| r.name == name).unwrap();

        let console = find("dev/console");
        assert_eq!((console.mode, console.rdev), (0o020_600, (5, 1)));
        assert_eq!(find("bin/busybox").data, busybox);
        assert_eq!(find("bin/busybox").mode, 0o100_755);
        let sh = find("bin/sh");
        assert_eq!((sh.mode, &sh.data[..]), (0o120_777, &b"busybox"[..]));
        assert_eq!(find("tmp").mode, 0o041_777);
        for dir in ["bin", "dev", "proc", "sys"] {
            assert_eq!(find(dir).mode, 0o040_755);
        }
        let init = find("init");
        assert_eq!(init.mode, 0o100_755);
        assert!(init.data.starts_with(b"#!/bin/sh\n"));

        // Every parent comes before its children, as the kernel needs.
        for (index, entry) in entries.iter().enumerate() {
            if let Some((parent, _)) = entry.path.rsplit_once('/') {
                assert!(entries[..index].iter().any(|e| e.path == parent));
            }
        }
    }

    #[test]
    fn headers_are_newc_and_aligned() {
        let entries = vec![
            Entry::new("a", Node::Directory { mode: 0o755 }),
            Entry::new(
                "a/bc",
                Node::File {
                    mode: 0o644,
                    data: b"12345".to_vec(),
                },
            ),
        ];
        let archive = newc(&entries).unwrap();
        // Header of "a": magic, ino 1, mode 040755, uid, gid, nlink 2, mtime, size 0, dev,
        // rdev, name size 2 (with the NUL), check; then the name padded to 4 bytes.
        let fields = [
            "070701", "00000001", "000041ed", "00000000", "00000000", "00000002", "00000000",
            "00000000", "00000000", "00000000", "00000000", "00000000", "00000002", "00000000",
        ];
        assert_eq!(&archive[..110], fields.concat().as_bytes());
        assert_eq!(&archive[110..112], b"a\0");
        // 110 + 2 = 112 is aligned: the next header follows at once.
        assert_eq!(&archive[112..118], b"070701");
        // "a/bc": 110 + 5 = 115 bytes of header and name, padded to 116; 5 bytes of data,
        // padded to 8.
        assert_eq!(&archive[112 + 110..112 + 116], b"a/bc\0\0");
        assert_eq!(&archive[112 + 116..112 + 124], b"12345\0\0\0");
        let trailer = &archive[112 + 124..];
        assert!(trailer.starts_with(b"070701"));
        assert_eq!(&trailer[110..121], b"TRAILER!!!\0");
        assert_eq!(archive.len() % 4, 0);
    }

    #[test]
    fn the_archive_is_reproducible_and_gzip_round_trips() {
        let archive = newc(&layout(fake_busybox())).unwrap();
        assert_eq!(archive, newc(&layout(fake_busybox())).unwrap());
        let compressed = gzip(&archive).unwrap();
        assert_eq!(&compressed[..2], b"\x1f\x8b");
        let mut decompressed = Vec::new();
        GzDecoder::new(&compressed[..])
            .read_to_end(&mut decompressed)
            .unwrap();
        assert_eq!(decompressed, archive);
    }

    #[test]
    fn init_prints_the_marker_and_honours_poweroff() {
        let script = init_script();
        assert!(script.contains(&format!("echo \"{MARKER}\"")));
        assert!(script.contains("mount -t devtmpfs devtmpfs /dev"));
        assert!(script.contains(&format!("if [ \"$word\" = {POWEROFF} ]; then")));
        // Every command it runs is linked.
        for command in [
            "mount", "echo", "cat", "poweroff", "setsid", "cttyhack", "sh",
        ] {
            assert!(APPLETS.contains(&command), "{command}");
        }
    }

    #[test]
    fn rejects_bad_paths_and_missing_applets() {
        let file = Node::Directory { mode: 0o755 };
        assert!(newc(&[Entry::new("/abs", file.clone())]).is_err());
        assert!(newc(&[Entry::new("", file)]).is_err());
        assert!(check_applets(&fake_busybox()).is_ok());
        let error = check_applets(b"\0sh\0mount\0").unwrap_err().to_string();
        assert!(error.contains("cttyhack"), "{error}");
        assert!(!error.contains(" sh,"), "{error}");
    }
}
