//! Reading a file that configures something: a topology, a token, a key, a
//! certificate, an SQL script. What the orchestrator and its built-in
//! plugins read as configuration goes through [`read`], and a plugin that
//! reads files of its own should too.
//!
//! The rules, those of sshd's `StrictModes`:
//! - the file must be a regular file: a FIFO, a device, a socket or a
//!   directory is refused before it is opened for reading (it is looked at
//!   first, then opened non-blocking, and must still be the same file);
//! - not on a pseudo file system (`/proc`, `/sys`…): what is there
//!   describes the process that reads it (`/proc/self/environ` is the
//!   orchestrator's own environment), not a configuration;
//! - at most `limit` bytes;
//! - nobody but its owner, this user or root, can change it: neither the
//!   file nor its directory (where it could be replaced) may be owned by
//!   another user or writable by every user — a sticky directory such as
//!   `/tmp` excepted, where nobody can replace another's file. Both the
//!   directory the path names and the one its symlinks lead to count: where
//!   a path leads, not how it is written;
//! - a [`Trust::Secret`] (a token, a password, a private key) must not be
//!   readable by other users either (`chmod 600`) — PostgreSQL's rule for
//!   its key: when root owns it, its group may read it too (`0640`), as a
//!   Kubernetes Secret mounted for a pod's `fsGroup` is.

use std::fmt;
use std::fs::{File, Metadata};
use std::io::Read as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

/// What a file holds, and so who else may read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trust {
    /// Configuration every user may read (a topology, a certificate).
    Shared,
    /// A secret: readable by its owner only.
    Secret,
}

/// Why a file was not read.
#[derive(Debug)]
pub enum FileError {
    /// It could not be opened or read.
    Io {
        /// The file as named.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// It is not a regular file: `kind` says what it is.
    NotRegular {
        /// The file as named.
        path: PathBuf,
        /// `a FIFO`, `a device`…
        kind: &'static str,
    },
    /// It is larger than the limit.
    TooLarge {
        /// The file as named.
        path: PathBuf,
        /// The limit, in bytes.
        limit: u64,
    },
    /// Another user could have written it, or could read a secret.
    Insecure {
        /// The file as named.
        path: PathBuf,
        /// Why, and how to fix it.
        reason: String,
    },
}

impl FileError {
    /// The file the error is about, as named.
    pub fn path(&self) -> &Path {
        match self {
            FileError::Io { path, .. }
            | FileError::NotRegular { path, .. }
            | FileError::TooLarge { path, .. }
            | FileError::Insecure { path, .. } => path,
        }
    }
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileError::Io { path, source } => write!(f, "cannot read {}: {source}", path.display()),
            FileError::NotRegular { path, kind } => {
                write!(f, "cannot read {}: it is {kind}, not a regular file", path.display())
            }
            FileError::TooLarge { path, limit } => {
                write!(f, "cannot read {}: it is larger than the limit of {limit} bytes", path.display())
            }
            FileError::Insecure { path, reason } => write!(f, "{} is refused: {reason}", path.display()),
        }
    }
}

impl std::error::Error for FileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FileError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The bytes of the file at `path` (symlinks followed), at most `limit`,
/// if the rules of the module hold for it.
pub fn read(path: &Path, limit: u64, trust: Trust) -> Result<Vec<u8>, FileError> {
    let io = |source| FileError::Io { path: path.to_owned(), source };
    // What the path leads to, before anything opens it: opening a device
    // can have effects of its own.
    let before = std::fs::metadata(path).map_err(io)?;
    regular(path, &before)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    // Replaced between the look and the open: look again at what was opened.
    regular(path, &meta)?;
    if (meta.dev(), meta.ino()) != (before.dev(), before.ino()) {
        return Err(FileError::Insecure { path: path.to_owned(), reason: "it was replaced while it was read".into() });
    }
    pseudo(path, &file)?;
    trusted(path, &meta, trust)?;
    if meta.len() > limit {
        return Err(FileError::TooLarge { path: path.to_owned(), limit });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // A file that grows while it is read stops at the limit.
    file.take(limit + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge { path: path.to_owned(), limit });
    }
    Ok(bytes)
}

/// [`read`], as UTF-8 text.
pub fn read_text(path: &Path, limit: u64, trust: Trust) -> Result<String, FileError> {
    let bytes = read(path, limit, trust)?;
    String::from_utf8(bytes).map_err(|_| FileError::Io {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "it is not UTF-8 text"),
    })
}

/// Checks the rules of the module (but the size) for a file another library
/// will read by its path (a credentials file a client opens itself).
pub fn check(path: &Path, trust: Trust) -> Result<(), FileError> {
    let io = |source| FileError::Io { path: path.to_owned(), source };
    let meta = std::fs::metadata(path).map_err(io)?;
    regular(path, &meta)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(io)?;
    pseudo(path, &file)?;
    trusted(path, &file.metadata().map_err(io)?, trust)
}

/// A new secret: `bytes` random bytes from the kernel, as hex (a session,
/// a generated password).
pub fn random_hex(bytes: usize) -> std::io::Result<String> {
    use std::fmt::Write as _;
    let mut buf = vec![0u8; bytes];
    let mut filled = 0;
    while filled < bytes {
        filled += rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty())
            .map_err(std::io::Error::from)?;
    }
    let mut out = String::with_capacity(bytes * 2);
    for b in buf {
        let _ = write!(out, "{b:02x}");
    }
    Ok(out)
}

/// Writes a secret to a new file at `path` readable by its owner only
/// (`0600`), replacing any file there atomically (a rename).
pub fn write_secret(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}", random_hex(6)?));
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    let written = file.write_all(content).and_then(|()| file.sync_all());
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

fn regular(path: &Path, meta: &Metadata) -> Result<(), FileError> {
    let kind = meta.file_type();
    if kind.is_file() {
        return Ok(());
    }
    let kind = if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_dir() {
        "a directory"
    } else {
        "not a file"
    };
    Err(FileError::NotRegular { path: path.to_owned(), kind })
}

/// Refuses a file of a pseudo file system: the kernel's views of processes
/// and devices, whose content is not a configuration.
fn pseudo(path: &Path, file: &File) -> Result<(), FileError> {
    const PSEUDO: [(i64, &str); 6] = [
        (0x9fa0, "/proc"),
        (0x6265_6572, "/sys"),
        (0x6462_6720, "debugfs"),
        (0x7363_6673, "securityfs"),
        (0x6367_7270, "cgroup"),
        (0x7472_6163, "tracefs"),
    ];
    let io = |e: rustix::io::Errno| FileError::Io { path: path.to_owned(), source: e.into() };
    let fs = rustix::fs::fstatfs(file).map_err(io)?;
    #[allow(clippy::unnecessary_cast)] // `f_type`'s width depends on the platform.
    let magic = fs.f_type as i64;
    match PSEUDO.iter().find(|(m, _)| *m == magic) {
        Some((_, name)) => Err(FileError::NotRegular {
            path: path.to_owned(),
            kind: if *name == "/proc" { "a file of /proc" } else { "a file of a pseudo file system" },
        }),
        None => Ok(()),
    }
}

fn trusted(path: &Path, meta: &Metadata, trust: Trust) -> Result<(), FileError> {
    let insecure = |reason: String| FileError::Insecure { path: path.to_owned(), reason };
    let me = rustix::process::geteuid().as_raw();
    let owner_ok = |uid: u32| uid == me || uid == 0;
    if !owner_ok(meta.uid()) {
        return Err(insecure(format!("it belongs to another user (uid {}); only its owner may change it", meta.uid())));
    }
    if meta.mode() & 0o002 != 0 {
        return Err(insecure(format!(
            "every user can write it (mode {:04o}): `chmod o-w {}`",
            meta.mode() & 0o7777,
            path.display()
        )));
    }
    let group_may_read = if meta.uid() == 0 { 0o040 } else { 0 };
    if trust == Trust::Secret && meta.mode() & 0o077 & !group_may_read != 0 {
        return Err(insecure(format!(
            "it holds a secret that other users can read (mode {:04o}): `chmod 600 {}`",
            meta.mode() & 0o7777,
            path.display()
        )));
    }
    // The directory it is named in, and the one it really is in.
    let named = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let real = std::fs::canonicalize(path).ok().and_then(|p| p.parent().map(Path::to_path_buf));
    for dir in std::iter::once(named).chain(real) {
        let Ok(d) = std::fs::metadata(&dir) else { continue };
        let sticky = d.mode() & 0o1000 != 0;
        if d.mode() & 0o002 != 0 && !sticky {
            return Err(insecure(format!(
                "its directory {} is writable by every user, who could replace it: `chmod o-w {}`",
                dir.display(),
                dir.display()
            )));
        }
        if !owner_ok(d.uid()) && !sticky {
            return Err(insecure(format!(
                "its directory {} belongs to another user (uid {}), who could replace it",
                dir.display(),
                d.uid()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_file_others_can_write_or_whose_directory_they_can_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("topology.yaml");
        std::fs::write(&file, "x").unwrap();
        chmod(&file, 0o644);
        assert_eq!(read(&file, 10, Trust::Shared).unwrap(), b"x");
        chmod(&file, 0o666);
        let e = read(&file, 10, Trust::Shared).unwrap_err();
        assert!(e.to_string().contains("every user can write it (mode 0666)"), "{e}");
        chmod(&file, 0o664);
        assert!(read(&file, 10, Trust::Shared).is_ok(), "the group may write (user private groups)");
        chmod(dir.path(), 0o777);
        let e = read(&file, 10, Trust::Shared).unwrap_err();
        assert!(e.to_string().contains("its directory") && e.to_string().contains("could replace it"), "{e}");
        // Sticky, as /tmp: nobody can replace another's file.
        chmod(dir.path(), 0o1777);
        assert!(read(&file, 10, Trust::Shared).is_ok());
        chmod(dir.path(), 0o700);
    }

    #[test]
    fn a_file_or_directory_of_another_user_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("topology.yaml");
        std::fs::write(&file, "x").unwrap();
        // The tests run as root (CI's user), who may give a file away.
        std::os::unix::fs::chown(&file, Some(65534), None).unwrap();
        let e = read(&file, 10, Trust::Shared).unwrap_err();
        assert!(e.to_string().contains("belongs to another user (uid 65534)"), "{e}");
        std::os::unix::fs::chown(&file, Some(0), None).unwrap();
        std::os::unix::fs::chown(dir.path(), Some(65534), None).unwrap();
        let e = read(&file, 10, Trust::Shared).unwrap_err();
        assert!(e.to_string().contains("its directory") && e.to_string().contains("uid 65534"), "{e}");
    }

    #[test]
    fn a_symlink_counts_where_it_leads() {
        let open = tempfile::tempdir().unwrap();
        let safe = tempfile::tempdir().unwrap();
        let target = open.path().join("real.yaml");
        std::fs::write(&target, "x").unwrap();
        chmod(open.path(), 0o777);
        let link = safe.path().join("topology.yaml");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = read(&link, 10, Trust::Shared).unwrap_err();
        assert!(e.to_string().contains(&open.path().display().to_string()), "{e}");
        chmod(open.path(), 0o700);
    }

    #[test]
    fn a_secret_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret").unwrap();
        chmod(&file, 0o604);
        let e = read(&file, 10, Trust::Secret).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        // Root's file (the tests run as root), its group may read: a Secret
        // mounted for a pod's fsGroup.
        chmod(&file, 0o640);
        assert!(read(&file, 10, Trust::Secret).is_ok());
        chmod(&file, 0o600);
        assert_eq!(read(&file, 10, Trust::Secret).unwrap(), b"s3cret");
        chmod(&file, 0o400);
        assert!(check(&file, Trust::Secret).is_ok());
    }

    #[test]
    fn what_is_not_a_regular_file_is_refused_unread() {
        let e = read(Path::new("/proc/self/environ"), 1 << 20, Trust::Shared).unwrap_err();
        assert!(e.to_string().contains("a file of /proc"), "{e}");
        let e = read(Path::new("/dev/zero"), 10, Trust::Shared).unwrap_err();
        assert!(e.to_string().contains("a device"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = read(dir.path(), 10, Trust::Shared).unwrap_err();
        assert!(e.to_string().contains("a directory"), "{e}");
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let e = read(&fifo, 10, Trust::Shared).unwrap_err();
        assert!(e.to_string().contains("a FIFO"), "{e}");
    }

    #[test]
    fn secrets_are_random_and_written_for_their_owner_only() {
        let (a, b) = (random_hex(16).unwrap(), random_hex(16).unwrap());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        write_secret(&file, a.as_bytes()).unwrap();
        write_secret(&file, b.as_bytes()).unwrap();
        assert_eq!(read(&file, 64, Trust::Secret).unwrap(), b.as_bytes());
        assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    }

    #[test]
    fn the_size_limit_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, vec![b'a'; 16]).unwrap();
        assert_eq!(read(&file, 16, Trust::Shared).unwrap().len(), 16);
        assert!(matches!(read(&file, 15, Trust::Shared), Err(FileError::TooLarge { limit: 15, .. })));
    }
}
