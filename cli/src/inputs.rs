//! Which images to classify: files as given, directories walked recursively (image extensions
//! only, sorted, symlinks followed but never in a loop), `-` for paths on stdin.

use maple::path_display;
use std::collections::HashSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// Extensions picked up inside directories (case-insensitive). Files named explicitly are
/// always tried, whatever their name.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];

/// One input: a path to classify, or a path that cannot be (with why).
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Image(PathBuf),
    Failed(PathBuf, String),
}

impl Input {
    pub fn path(&self) -> &Path {
        match self {
            Input::Image(p) | Input::Failed(p, _) => p,
        }
    }
}

pub fn is_image_name(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Expands the command-line arguments (`-` reads one path per line from `stdin`).
pub fn collect(args: &[PathBuf], stdin: &mut dyn BufRead) -> Vec<Input> {
    let mut out = Vec::new();
    for a in args {
        if a.as_os_str() == "-" {
            // Paths are bytes (a file name need not be UTF-8): read lines as bytes, to the end.
            let mut line = Vec::new();
            let mut number = 0usize;
            loop {
                line.clear();
                number += 1;
                match read_line_at_most(stdin, &mut line, MAX_LINE) {
                    Ok(Line::End) => break,
                    Ok(Line::Read) => {}
                    Ok(Line::TooLong) => {
                        out.push(Input::Failed(
                            PathBuf::from("-"),
                            format!(
                                "line {number} of stdin is over {} KiB long: not a path (skipped)",
                                MAX_LINE >> 10
                            ),
                        ));
                        continue;
                    }
                    Err(e) => {
                        out.push(Input::Failed(
                            PathBuf::from("-"),
                            format!("cannot read paths from stdin: {e}"),
                        ));
                        break;
                    }
                }
                let mut t = line.as_slice();
                while let [rest @ .., b'\n' | b'\r'] = t {
                    t = rest;
                }
                if !t.is_empty() {
                    add(&path_from_bytes(t), &mut out);
                }
            }
        } else {
            add(a, &mut out);
        }
    }
    out
}

/// The longest line of stdin read as a path (Linux's PATH_MAX is 4 KiB): a longer one is
/// skipped without being held in memory.
const MAX_LINE: usize = 64 << 10;

enum Line {
    Read,
    TooLong,
    End,
}

/// Reads one line (with its `\n`) into `line` if it is at most `max` bytes; a longer one is
/// read to its end and dropped.
fn read_line_at_most(r: &mut dyn BufRead, line: &mut Vec<u8>, max: usize) -> std::io::Result<Line> {
    let mut too_long = false;
    let mut any = false;
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            break;
        }
        any = true;
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if !too_long {
            if line.len() + take > max + 1 {
                too_long = true;
                line.clear();
            } else {
                line.extend_from_slice(&buf[..take]);
            }
        }
        r.consume(take);
        if done {
            break;
        }
    }
    Ok(match (any, too_long) {
        (false, _) => Line::End,
        (true, true) => Line::TooLong,
        (true, false) => Line::Read,
    })
}

#[cfg(unix)]
fn path_from_bytes(b: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(b))
}

#[cfg(not(unix))]
fn path_from_bytes(b: &[u8]) -> PathBuf {
    PathBuf::from(String::from_utf8_lossy(b).into_owned())
}

fn add(p: &Path, out: &mut Vec<Input>) {
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => {
            let mut walk_state = Walk::default();
            walk(p, &mut walk_state, out);
        }
        // Missing files and other problems are reported per image by the decoder.
        _ => out.push(Input::Image(p.to_path_buf())),
    }
}

/// What one walk of a directory tree has seen.
#[derive(Default)]
struct Walk {
    /// The real directories on the way down to the current one (a link back to one of them
    /// is a loop).
    stack: HashSet<PathBuf>,
    /// Every real directory walked so far: reached again through another link, it is skipped
    /// (a tree of links that share directories would otherwise be walked once per path).
    done: HashSet<PathBuf>,
}

fn walk(dir: &Path, seen: &mut Walk, out: &mut Vec<Input>) {
    let canon = match std::fs::canonicalize(dir) {
        Ok(c) => c,
        Err(e) => {
            out.push(Input::Failed(
                dir.to_path_buf(),
                format!("cannot read directory: {e}"),
            ));
            return;
        }
    };
    if seen.stack.contains(&canon) {
        out.push(Input::Failed(
            dir.to_path_buf(),
            format!(
                "symbolic link loop (leads back to {})",
                path_display(&canon)
            ),
        ));
        return;
    }
    if !seen.done.insert(canon.clone()) {
        return;
    }
    seen.stack.insert(canon.clone());
    let mut entries: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) => {
            out.push(Input::Failed(
                dir.to_path_buf(),
                format!("cannot read directory: {e}"),
            ));
            return;
        }
    };
    entries.sort();
    for e in entries {
        match std::fs::metadata(&e) {
            Ok(m) if m.is_dir() => walk(&e, seen, out),
            Ok(_) if is_image_name(&e) => out.push(Input::Image(e)),
            Ok(_) => {}
            // A dangling link or a loop of links between files.
            Err(err) if is_image_name(&e) || std::fs::symlink_metadata(&e).is_ok() => {
                out.push(Input::Failed(e, format!("cannot open: {err}")))
            }
            Err(_) => {}
        }
    }
    seen.stack.remove(&canon);
}
