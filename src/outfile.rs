//! Output files that never leave half a file behind, and never replace what is not a file.
//!
//! [`OutputFile::create`] decides where the bytes go before any work is done, so a destination
//! that cannot be written fails first, not after an hour of classifying:
//!
//! * a regular file, or a name that does not exist yet: the bytes go to a temporary file in the
//!   same directory, renamed over the target by [`OutputFile::commit`]; an existing file's
//!   permissions are kept. Dropped without `commit` (an error, a panic), the temporary file is
//!   removed and the target is untouched;
//! * a symbolic link: followed to its target, which is then handled as above (the link stays);
//! * a device, FIFO or socket (`/dev/null`, `/dev/stdout`, `>(…)`): written straight into,
//!   never replaced by a regular file;
//! * a directory: an error.

use crate::error::path_display;
use crate::Error;
use std::fs::{File, OpenOptions, Permissions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Symbolic links followed before giving up (as the kernel's `ELOOP` limit).
const MAX_LINKS: usize = 40;

/// A file being written; see the [module docs](self).
pub struct OutputFile {
    /// The name the caller gave (for errors).
    path: PathBuf,
    out: Option<BufWriter<File>>,
    /// `(temporary, target)` when the bytes are renamed into place at the end.
    rename: Option<(PathBuf, PathBuf)>,
}

/// Where a destination finally points: `path` with every symbolic link resolved (a dangling
/// link resolves to the name it would create). `None` when a link leads through `/proc` or
/// `/dev/fd` (`/dev/stdout`, `/proc/self/fd/1`): those name an open file, not a place, and are
/// written into directly.
fn resolve(path: &Path) -> Result<Option<PathBuf>, Error> {
    let mut p = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        if p.starts_with("/proc") || p.starts_with("/dev/fd") {
            return Ok(None);
        }
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let to = std::fs::read_link(&p).map_err(|e| Error::io(path, e))?;
                p = match p.parent() {
                    Some(dir) if to.is_relative() => dir.join(to),
                    _ => to,
                };
            }
            _ => return Ok(Some(p)),
        }
    }
    Err(Error::Invalid(format!(
        "{}: too many levels of symbolic links",
        path_display(path)
    )))
}

/// Opens `path` to write straight into it (truncating a regular file).
fn open_direct(path: &Path) -> Result<OutputFile, Error> {
    let f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    Ok(OutputFile {
        path: path.to_path_buf(),
        out: Some(BufWriter::new(f)),
        rename: None,
    })
}

impl OutputFile {
    /// Opens `path` for writing as the [module docs](self) say. Errors name `path`.
    pub fn create(path: &Path) -> Result<OutputFile, Error> {
        Self::open(path, true)
    }

    /// Checks, without writing anything or opening a device or FIFO, that [`create`](Self::create)
    /// would succeed now: for a program that writes its output at the end of a long job and
    /// should fail before it rather than after.
    pub fn check(path: &Path) -> Result<(), Error> {
        Self::open(path, false).map(drop)
    }

    fn open(path: &Path, open_devices: bool) -> Result<OutputFile, Error> {
        let direct = |path: &Path| {
            if open_devices {
                open_direct(path)
            } else {
                Ok(OutputFile {
                    path: path.to_path_buf(),
                    out: None,
                    rename: None,
                })
            }
        };
        let keep: Option<Permissions> = match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => {
                return Err(Error::Invalid(format!(
                    "{}: is a directory; give a file name to write to",
                    path_display(path)
                )))
            }
            // A device, FIFO or socket: write into it as a shell redirection would.
            Ok(m) if !m.is_file() => return direct(path),
            Ok(m) => Some(m.permissions()),
            Err(_) => None,
        };
        let Some(target) = resolve(path)? else {
            return direct(path);
        };
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(Error::Invalid(format!(
                "{}: cannot create it, {} is not a directory",
                path_display(path),
                path_display(&dir)
            )));
        }
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "output".into());
        let (tmp, f) = (0..100)
            .find_map(|i| {
                let tmp = dir.join(format!(".{name}.{}-{i}.tmp", std::process::id()));
                match OpenOptions::new().write(true).create_new(true).open(&tmp) {
                    Ok(f) => Some(Ok((tmp, f))),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => None,
                    Err(e) => Some(Err(e)),
                }
            })
            .unwrap_or_else(|| Err(std::io::Error::other("no free temporary name")))
            .map_err(|e| Error::io(path, e))?;
        if let Some(perm) = keep {
            // Before any byte is written: a 0600 file's contents are never readable by others.
            if let Err(e) = f.set_permissions(perm) {
                let _ = std::fs::remove_file(&tmp);
                return Err(Error::io(path, e));
            }
        }
        Ok(OutputFile {
            path: path.to_path_buf(),
            out: Some(BufWriter::new(f)),
            rename: Some((tmp, target)),
        })
    }

    /// The name the caller gave.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The temporary file the bytes go to until [`commit`](Self::commit), if there is one: a
    /// program that can be killed by a signal removes it in its handler (`Drop` does not run).
    pub fn temporary_path(&self) -> Option<&Path> {
        self.rename.as_ref().map(|(tmp, _)| tmp.as_path())
    }

    /// Writes `bytes`; the error names the file.
    pub fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.write_all(bytes).map_err(|e| Error::io(&self.path, e))
    }

    /// Flushes and, for a regular file, renames the temporary file over the target.
    pub fn commit(mut self) -> Result<(), Error> {
        let out = self.out.take();
        let r = out
            .map_or(Ok(()), |mut o| o.flush())
            .map_err(|e| Error::io(&self.path, e));
        r?;
        if let Some((tmp, target)) = self.rename.take() {
            if let Err(e) = std::fs::rename(&tmp, &target) {
                let _ = std::fs::remove_file(&tmp);
                return Err(Error::io(&self.path, e));
            }
        }
        Ok(())
    }
}

impl Write for OutputFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.out {
            Some(o) => o.write(buf),
            None => Err(std::io::Error::other("already committed")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.out {
            Some(o) => o.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        // Not committed: forget the bytes, remove the temporary file, leave the target as it was.
        if let Some((tmp, _)) = self.rename.take() {
            if let Some(o) = self.out.take() {
                let (f, _) = o.into_parts();
                drop(f);
            }
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Writes `bytes` to `path` in one go through an [`OutputFile`]: a reader sees the old file or
/// the new one, never half; on any error nothing at `path` changes.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut f = OutputFile::create(path)?;
    f.write_bytes(bytes)?;
    f.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("maple-outfile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_a_file_only_on_commit_and_cleans_up_otherwise() {
        let d = dir("commit");
        let p = d.join("out.txt");
        std::fs::write(&p, "old").unwrap();
        let mut f = OutputFile::create(&p).unwrap();
        f.write_bytes(b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "old");
        drop(f);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "old");
        assert_eq!(names(&d), ["out.txt"]);
        write_atomic(&p, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(names(&d), ["out.txt"]);
    }

    #[cfg(unix)]
    #[test]
    fn keeps_mode_follows_links_and_writes_into_devices() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir("kinds");
        let p = d.join("secret.txt");
        std::fs::write(&p, "x").unwrap();
        std::fs::set_permissions(&p, Permissions::from_mode(0o600)).unwrap();
        write_atomic(&p, b"y").unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A relative link, then a link to the link: both stay links, the file gets the bytes.
        std::os::unix::fs::symlink("secret.txt", d.join("link")).unwrap();
        std::os::unix::fs::symlink(d.join("link"), d.join("link2")).unwrap();
        write_atomic(&d.join("link2"), b"through links").unwrap();
        assert!(std::fs::symlink_metadata(d.join("link2"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "through links");
        // A dangling link creates its target.
        std::os::unix::fs::symlink("new.txt", d.join("dangling")).unwrap();
        write_atomic(&d.join("dangling"), b"made").unwrap();
        assert_eq!(std::fs::read_to_string(d.join("new.txt")).unwrap(), "made");
        // A device stays a device; a full one is an error naming it. Private device nodes
        // (root only), never the system's /dev/null, which a regression would replace.
        let node = |name: &str, minor: &str| {
            let p = d.join(name);
            std::process::Command::new("mknod")
                .arg(&p)
                .args(["c", "1", minor])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
                .then_some(p)
        };
        if let (Some(null), Some(full)) = (node("null", "3"), node("full", "7")) {
            write_atomic(&null, b"gone").unwrap();
            assert!(!std::fs::metadata(&null).unwrap().is_file());
            let e = write_atomic(&full, b"x").unwrap_err();
            assert!(e.to_string().contains("full: "), "{e}");
            assert!(!std::fs::metadata(&full).unwrap().is_file());
        }
        // A link loop.
        std::os::unix::fs::symlink("loop-b", d.join("loop-a")).unwrap();
        std::os::unix::fs::symlink("loop-a", d.join("loop-b")).unwrap();
        let e = write_atomic(&d.join("loop-a"), b"x").unwrap_err();
        assert!(e.to_string().contains("too many levels"), "{e}");
    }

    #[test]
    fn refuses_directories_and_missing_parents_before_writing() {
        let d = dir("refuse");
        let e = OutputFile::create(&d).err().unwrap();
        assert!(e.to_string().contains("is a directory"), "{e}");
        let e = OutputFile::create(&d.join("no/such/out.csv"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("is not a directory"), "{e}");
        let e = OutputFile::check(&d.join("no/such/out.csv")).unwrap_err();
        assert!(e.to_string().contains("is not a directory"), "{e}");
        OutputFile::check(&d.join("fine.csv")).unwrap();
        assert!(names(&d).is_empty());
    }
}
