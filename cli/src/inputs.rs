//! Which images to classify: files as given, directories walked recursively (image extensions
//! only, sorted, symlinks followed but never in a loop), `-` for paths on stdin.

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
            let mut line = String::new();
            while stdin.read_line(&mut line).unwrap_or(0) > 0 {
                let t = line.trim_end_matches(['\n', '\r']);
                if !t.is_empty() {
                    add(Path::new(t), &mut out);
                }
                line.clear();
            }
        } else {
            add(a, &mut out);
        }
    }
    out
}

fn add(p: &Path, out: &mut Vec<Input>) {
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => {
            let mut seen = HashSet::new();
            walk(p, &mut seen, out);
        }
        // Missing files and other problems are reported per image by the decoder.
        _ => out.push(Input::Image(p.to_path_buf())),
    }
}

fn walk(dir: &Path, seen: &mut HashSet<PathBuf>, out: &mut Vec<Input>) {
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
    if !seen.insert(canon.clone()) {
        out.push(Input::Failed(
            dir.to_path_buf(),
            format!("symbolic link loop (leads back to {})", canon.display()),
        ));
        return;
    }
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
    seen.remove(&canon);
}
