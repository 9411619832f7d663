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
//!
//! [`OutputFile::create_replacing`] is for the files a program owns (the caches): whatever is
//! at the name — a symbolic link, a FIFO, a device node — is replaced by the new regular file,
//! never followed, opened or written into, so a link planted in a shared cache directory cannot
//! redirect the write to another file.
//!
//! Every temporary file is also noted in a process-wide list that
//! [`remove_live_temporaries`] empties from a signal handler (destructors do not run when a
//! signal ends a process), and [`remove_stale_temporaries`] removes the temporaries that dead
//! processes left (`.NAME.PID-N.tmp`, PID no longer running).

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
    /// The temporary file's place in the list a signal handler empties.
    live: Option<usize>,
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
        live: None,
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
                    live: None,
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
        let (dir, name) = dir_and_name(&target);
        if !dir.is_dir() {
            return Err(Error::Invalid(format!(
                "{}: cannot create it, {} is not a directory",
                path_display(path),
                path_display(&dir)
            )));
        }
        remove_stale_temporaries(&dir, Some(&name));
        let (tmp, f, live) = temporary(&dir, &name).map_err(|e| Error::io(path, e))?;
        let f = OutputFile {
            path: path.to_path_buf(),
            out: Some(BufWriter::new(f)),
            rename: Some((tmp, target)),
            live,
        };
        if let Some(perm) = keep {
            // Before any byte is written: a 0600 file's contents are never readable by others.
            // (On error, dropping `f` removes the temporary file.)
            if let Some(out) = &f.out {
                out.get_ref()
                    .set_permissions(perm)
                    .map_err(|e| Error::io(path, e))?;
            }
        }
        Ok(f)
    }

    /// Opens `path` for a file the program owns (a cache file): the bytes go to a temporary
    /// file beside it, renamed over `path` by [`commit`](Self::commit), replacing whatever is
    /// there — a regular file, a symbolic link (the link itself, never its target), a FIFO or a
    /// device node — without opening or following it. A directory is an error.
    pub fn create_replacing(path: &Path) -> Result<OutputFile, Error> {
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
            return Err(Error::Invalid(format!(
                "{}: is a directory",
                path_display(path)
            )));
        }
        let (dir, name) = dir_and_name(path);
        let (tmp, f, live) = temporary(&dir, &name).map_err(|e| Error::io(path, e))?;
        Ok(OutputFile {
            path: path.to_path_buf(),
            out: Some(BufWriter::new(f)),
            rename: Some((tmp, path.to_path_buf())),
            live,
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
            let r = std::fs::rename(&tmp, &target);
            if r.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            if let Some(i) = self.live.take() {
                live::forget(i);
            }
            r.map_err(|e| Error::io(&self.path, e))?;
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
        if let Some(i) = self.live.take() {
            live::forget(i);
        }
    }
}

/// Whether `path` is (or will be) a plain file: not `-` (stdout), a device or a FIFO, so that
/// something (a checkpoint folder) can go beside it.
pub fn is_plain_file_path(path: &Path) -> bool {
    path.as_os_str() != "-" && std::fs::metadata(path).map_or(true, |m| m.is_file())
}

/// Whether `a` and `b` are one existing regular file (the same name, a link to it, or a
/// hard link): the same device and inode on Unix, the same canonical path elsewhere.
pub fn same_file(a: &Path, b: &Path) -> bool {
    let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) else {
        return false;
    };
    if !x.is_file() {
        return false;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        x.dev() == y.dev() && x.ino() == y.ino()
    }
    #[cfg(not(unix))]
    {
        let _ = y;
        matches!(
            (std::fs::canonicalize(a), std::fs::canonicalize(b)),
            (Ok(p), Ok(q)) if p == q
        )
    }
}

/// Where a new file at `path` goes: its folder (`.` for a bare name) and its file name.
fn dir_and_name(path: &Path) -> (PathBuf, String) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    (dir, name)
}

/// Creates a new temporary file `.NAME.PID-N.tmp` in `dir` (exclusively: never an existing
/// name, never through a link), noted in the list [`remove_live_temporaries`] empties.
fn temporary(dir: &Path, name: &str) -> std::io::Result<(PathBuf, File, Option<usize>)> {
    for i in 0..100 {
        let tmp = dir.join(format!(".{name}.{}-{i}.tmp", std::process::id()));
        // Noted before it exists, so no signal can leave it behind.
        let slot = live::note(&tmp);
        let mut o = OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.custom_flags(libc::O_NOFOLLOW);
        }
        match o.open(&tmp) {
            Ok(f) => return Ok((tmp, f, slot)),
            Err(e) => {
                if let Some(s) = slot {
                    live::forget(s);
                }
                if e.kind() != std::io::ErrorKind::AlreadyExists {
                    return Err(e);
                }
            }
        }
    }
    Err(std::io::Error::other("no free temporary name"))
}

/// The process id in a temporary file's name `.NAME.PID-N.tmp` (any NAME when `name` is
/// `None`).
fn temporary_pid(file: &str, name: Option<&str>) -> Option<u32> {
    let rest = file.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (stem, tail) = rest.rsplit_once('.')?;
    if name.is_some_and(|n| n != stem) {
        return None;
    }
    let (pid, n) = tail.split_once('-')?;
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

/// Whether no process `pid` runs on this machine (`false` when that cannot be told).
fn is_dead(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(p) = libc::pid_t::try_from(pid) else {
            return false;
        };
        // SAFETY: signal 0 only asks whether the process exists.
        let r = unsafe { libc::kill(p, 0) };
        r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        false
    }
}

/// Removes, from `dir`, the temporary files (`.NAME.PID-N.tmp`, of `name` only when given)
/// that processes no longer running left behind (killed before they could clean up). Returns
/// how many were removed. Regular files only; errors are ignored.
pub fn remove_stale_temporaries(dir: &Path, name: Option<&str>) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let me = std::process::id();
    let mut removed = 0;
    for e in rd.flatten() {
        let file = e.file_name();
        let Some(pid) = file.to_str().and_then(|f| temporary_pid(f, name)) else {
            continue;
        };
        if pid != me
            && e.file_type().is_ok_and(|t| t.is_file())
            && is_dead(pid)
            && std::fs::remove_file(e.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// Removes every temporary file this process has open (an [`OutputFile`] not yet committed or
/// dropped). Async-signal-safe: a signal handler calls it before the process ends, since
/// destructors do not run then. Each file is removed once.
pub fn remove_live_temporaries() {
    live::remove_all();
}

/// The temporary files a process has open, in fixed slots a signal handler can read without
/// locks or allocation.
#[cfg(unix)]
mod live {
    use std::cell::UnsafeCell;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;
    use std::sync::atomic::{AtomicU8, Ordering::SeqCst};

    const SLOTS: usize = 64;
    const CAP: usize = 4096;
    const FREE: u8 = 0;
    const FILLING: u8 = 1;
    const READY: u8 = 2;
    const GONE: u8 = 3;

    struct Slot {
        state: AtomicU8,
        /// A NUL-terminated absolute path; written only in state FILLING by the thread that
        /// moved the slot there, read only in state READY/GONE.
        path: UnsafeCell<[u8; CAP]>,
    }

    // SAFETY: `path` is written only by the one thread that won the FREE → FILLING exchange,
    // and read only after it published READY (SeqCst), as the comments at each use say.
    unsafe impl Sync for Slot {}

    static LIVE: [Slot; SLOTS] = [const {
        Slot {
            state: AtomicU8::new(FREE),
            path: UnsafeCell::new([0; CAP]),
        }
    }; SLOTS];

    /// Notes `p`; `None` when it cannot be noted (every slot taken, a path too long).
    pub(super) fn note(p: &Path) -> Option<usize> {
        let abs = std::path::absolute(p).ok()?;
        let b = abs.as_os_str().as_bytes();
        if b.len() >= CAP || b.contains(&0) {
            return None;
        }
        for (i, s) in LIVE.iter().enumerate() {
            if s.state
                .compare_exchange(FREE, FILLING, SeqCst, SeqCst)
                .is_ok()
            {
                // SAFETY: in state FILLING this thread is the slot's only user.
                let buf = unsafe { &mut *s.path.get() };
                buf[..b.len()].copy_from_slice(b);
                buf[b.len()] = 0;
                s.state.store(READY, SeqCst);
                return Some(i);
            }
        }
        None
    }

    /// Frees slot `i` (the file was renamed or removed).
    pub(super) fn forget(i: usize) {
        let s = &LIVE[i];
        // READY → FREE; a slot a signal handler took (GONE) stays taken: the process is ending.
        let _ = s.state.compare_exchange(READY, FREE, SeqCst, SeqCst);
    }

    pub(super) fn remove_all() {
        for s in &LIVE {
            if s.state
                .compare_exchange(READY, GONE, SeqCst, SeqCst)
                .is_ok()
            {
                // SAFETY: READY means the path was written whole and NUL-terminated; GONE
                // keeps any thread from writing it again. unlink is async-signal-safe.
                unsafe { libc::unlink(s.path.get() as *const libc::c_char) };
            }
        }
    }
}

#[cfg(not(unix))]
mod live {
    use std::path::Path;
    pub(super) fn note(_: &Path) -> Option<usize> {
        None
    }
    pub(super) fn forget(_: usize) {}
    pub(super) fn remove_all() {}
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

    /// Issue 31 (N5, N6): a cache file's name replaced whatever is there, never following a
    /// link (whose target would be overwritten) or opening a FIFO (which would block).
    #[cfg(unix)]
    #[test]
    fn replacing_never_follows_or_opens_what_is_at_the_name() {
        let d = dir("replacing");
        let victim = d.join("victim.txt");
        std::fs::write(&victim, "precious").unwrap();
        let link = d.join("cache.bin");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let mut f = OutputFile::create_replacing(&link).unwrap();
        f.write_bytes(b"cache").unwrap();
        f.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
        assert_eq!(std::fs::read_to_string(&link).unwrap(), "cache");
        let fifo = d.join("fifo.bin");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let mut f = OutputFile::create_replacing(&fifo).unwrap();
        f.write_bytes(b"x").unwrap();
        f.commit().unwrap();
        assert!(std::fs::symlink_metadata(&fifo).unwrap().is_file());
        let e = OutputFile::create_replacing(&d).err().unwrap();
        assert!(e.to_string().contains("is a directory"), "{e}");
        assert_eq!(names(&d), ["cache.bin", "fifo.bin", "victim.txt"]);
    }

    /// Issue 31 (N7): temporaries of processes that no longer run are removed, a live one's
    /// never; the names parse as written.
    #[cfg(unix)]
    #[test]
    fn stale_temporaries_of_dead_processes_only() {
        assert_eq!(temporary_pid(".out.csv.123-4.tmp", None), Some(123));
        assert_eq!(
            temporary_pid(".out.csv.123-4.tmp", Some("out.csv")),
            Some(123)
        );
        assert_eq!(temporary_pid(".out.csv.123-4.tmp", Some("out")), None);
        assert_eq!(temporary_pid("out.csv.123-4.tmp", None), None);
        assert_eq!(temporary_pid(".out.csv.12x-4.tmp", None), None);
        let d = dir("stale");
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let dead = c.id();
        c.wait().unwrap();
        let me = std::process::id();
        for n in [
            format!(".a.bin.{dead}-0.tmp"),
            format!(".a.bin.{me}-0.tmp"),
            format!(".b.bin.{dead}-7.tmp"),
            "a.bin".to_string(),
        ] {
            std::fs::write(d.join(n), "x").unwrap();
        }
        assert_eq!(remove_stale_temporaries(&d, Some("a.bin")), 1);
        assert_eq!(remove_stale_temporaries(&d, None), 1);
        assert_eq!(
            names(&d),
            [format!(".a.bin.{me}-0.tmp"), "a.bin".to_string()]
        );
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
