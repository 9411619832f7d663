//! The text-feature cache: a label list's L2-normalised text features, saved once and reused by
//! later runs with the same model, prompts, template and labels.
//!
//! One file per key, `text-<key>.bin` in the cache directory (`MAPLE_CACHE_DIR`, else the
//! platform's cache directory + `maple`). The key is an XXH3-128 over everything the features
//! depend on: config.json, the text tower's and text projection's tensors, the prompts file,
//! the template, the labels, their token ids, the backend that computed them and this format's
//! version. Layout, little-endian:
//!
//! ```text
//! 0   b"MAPLETXT"            magic
//! 8   u32 version (1), u32 0
//! 16  u128 key
//! 32  u64 labels, u64 dim
//! 48  f32 × labels × dim     features
//! end u64 XXH3-64 of every byte before it
//! ```
//!
//! A file is used only if its length, magic, version, key, shape and checksum all match and
//! every value is finite; anything else is rebuilt. A directory that cannot be written costs a
//! warning, never the run.

use crate::outfile::OutputFile;
use maple_core::TextFeatures;
use std::io::Read;
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

const MAGIC: &[u8; 8] = b"MAPLETXT";
const VERSION: u32 = 1;
const HEADER: usize = 48;

/// `MAPLE_CACHE_DIR`, else `$XDG_CACHE_HOME/maple` or `~/.cache/maple` (Linux and other Unix),
/// `~/Library/Caches/maple` (macOS), `%LOCALAPPDATA%\maple\cache` (Windows).
pub fn default_dir() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = env("MAPLE_CACHE_DIR") {
        return Some(d);
    }
    if cfg!(windows) {
        return env("LOCALAPPDATA").map(|d| d.join("maple").join("cache"));
    }
    if cfg!(target_os = "macos") {
        return env("HOME").map(|h| h.join("Library/Caches/maple"));
    }
    // The XDG spec: a relative XDG_CACHE_HOME is invalid and ignored.
    env("XDG_CACHE_HOME")
        .filter(|d| d.is_absolute())
        .or_else(|| env("HOME").map(|h| h.join(".cache")))
        .map(|d| d.join("maple"))
}

/// What the key is made of. `model` is [`crate::loader::load_model_fingerprinted`]'s fingerprint;
/// `backend` names what computed the features (`cpu`, `gpu-f32`, `gpu-f16`): they differ in the
/// last bits, so each keeps its own file. `tokenizer` identifies the tokenizer
/// ([`crate::loader::TokenizerSource::id`]): with the template and the labels' names it fixes
/// every token, so a hit needs no tokenizer at all.
pub fn key(model: u128, backend: &str, template: &str, labels: &[String], tokenizer: u128) -> u128 {
    let mut h = Xxh3::new();
    h.update(MAGIC);
    h.update(&VERSION.to_le_bytes());
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(&model.to_le_bytes());
    h.update(&tokenizer.to_le_bytes());
    let mut field = |b: &[u8]| {
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(backend.as_bytes());
    field(template.as_bytes());
    for l in labels {
        field(l.as_bytes());
    }
    h.digest128()
}

/// The cache file for `key` in `dir`.
pub fn path(dir: &Path, key: u128) -> PathBuf {
    dir.join(format!("text-{key:032x}.bin"))
}

/// Why a file was not used.
#[derive(Debug, PartialEq)]
pub enum Miss {
    /// No file (the normal first run).
    Absent,
    /// A file that failed a check: it is rebuilt.
    Invalid(&'static str),
}

/// The features in `path` if it is a complete, matching, undamaged cache file.
pub fn load(path: &Path, key: u128, labels: usize, dim: usize) -> Result<TextFeatures, Miss> {
    let n = labels * dim;
    let want = HEADER + 4 * n + 8;
    // The length is checked before a byte is read: a huge stray file costs nothing. Opened
    // without following a link or waiting on a FIFO; anything but a regular file is a miss.
    let mut f = match open_cache_file(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Miss::Absent),
        Err(_) => return Err(Miss::Invalid("not a regular file the cache wrote")),
    };
    match f.metadata() {
        Ok(m) if m.is_file() && m.len() == want as u64 => {}
        Ok(_) => return Err(Miss::Invalid("wrong length")),
        Err(_) => return Err(Miss::Absent),
    }
    let mut bytes = Vec::with_capacity(want);
    (&mut f)
        .take(want as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|_| Miss::Invalid("unreadable"))?;
    if bytes.len() != want {
        return Err(Miss::Invalid("wrong length"));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 8);
    if u64::from_le_bytes(sum.try_into().unwrap()) != xxh3_64(body) {
        return Err(Miss::Invalid("checksum mismatch"));
    }
    let u32_at = |i: usize| u32::from_le_bytes(body[i..i + 4].try_into().unwrap());
    let u64_at = |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().unwrap());
    if &body[..8] != MAGIC || u32_at(8) != VERSION {
        return Err(Miss::Invalid(
            "not a maple text-feature cache of this version",
        ));
    }
    if u128::from_le_bytes(body[16..32].try_into().unwrap()) != key {
        return Err(Miss::Invalid("key mismatch"));
    }
    if u64_at(32) != labels as u64 || u64_at(40) != dim as u64 {
        return Err(Miss::Invalid("shape mismatch"));
    }
    let data: Vec<f32> = body[HEADER..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    if data.iter().any(|v| !v.is_finite()) {
        return Err(Miss::Invalid("non-finite values"));
    }
    Ok(TextFeatures { dim, data })
}

/// Opens a cache file to read it: never through a symbolic link (a link planted in a shared
/// cache directory is not followed) and without blocking (a FIFO at the name would otherwise
/// wait for a writer forever). The caller checks that it is a regular file.
pub(crate) fn open_cache_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    o.open(path)
}

/// Why a cache directory should not be used, if it should not: one that other users can
/// write to (world-writable, or owned by another user) could hold a file planted to give
/// this user's runs wrong features or weights.
pub fn unsafe_dir(dir: &Path) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(dir).ok()?;
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if m.mode() & 0o002 != 0 {
            return Some("it is writable by every user".into());
        }
        if m.uid() != me && me != 0 {
            return Some(format!("it belongs to another user (uid {})", m.uid()));
        }
        None
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// Writes the features (temp file + rename, so a reader never sees half a file; whatever is
/// at the name, a link or a FIFO included, is replaced, never followed or opened).
pub fn store(path: &Path, key: u128, feats: &TextFeatures) -> Result<(), String> {
    let dim = feats.dim;
    let mut b = Vec::with_capacity(HEADER + 4 * feats.data.len() + 8);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&key.to_le_bytes());
    b.extend_from_slice(&(feats.len() as u64).to_le_bytes());
    b.extend_from_slice(&(dim as u64).to_le_bytes());
    for v in &feats.data {
        b.extend_from_slice(&v.to_le_bytes());
    }
    let sum = xxh3_64(&b);
    b.extend_from_slice(&sum.to_le_bytes());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut f = OutputFile::create_replacing(path).map_err(|e| e.to_string())?;
    f.write_bytes(&b).map_err(|e| e.to_string())?;
    f.commit().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feats() -> TextFeatures {
        TextFeatures {
            dim: 3,
            data: vec![0.6, 0.8, 0.0, 1.0, 0.0, -0.0],
        }
    }

    #[test]
    fn round_trip_and_every_damage_is_refused() {
        let dir = std::env::temp_dir().join(format!("maple-cache-unit-{}", std::process::id()));
        let p = path(&dir, 7);
        store(&p, 7, &feats()).unwrap();
        let back = load(&p, 7, 2, 3).unwrap();
        assert_eq!(back.data, feats().data);
        assert_eq!(
            load(&p, 8, 2, 3).unwrap_err(),
            Miss::Invalid("key mismatch")
        );
        assert_eq!(
            load(&p, 7, 3, 3).unwrap_err(),
            Miss::Invalid("wrong length")
        );
        let good = std::fs::read(&p).unwrap();
        // Any flipped byte is caught (checksum), as is a cut-off file.
        for i in [0, 9, 20, 33, HEADER + 5, good.len() - 1] {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            std::fs::write(&p, &bad).unwrap();
            assert!(
                matches!(load(&p, 7, 2, 3), Err(Miss::Invalid(_))),
                "byte {i}"
            );
        }
        std::fs::write(&p, &good[..good.len() - 3]).unwrap();
        assert_eq!(
            load(&p, 7, 2, 3).unwrap_err(),
            Miss::Invalid("wrong length")
        );
        std::fs::remove_file(&p).unwrap();
        assert_eq!(load(&p, 7, 2, 3).unwrap_err(), Miss::Absent);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A huge or endless file where a cache file should be is rejected by its length alone,
    /// before a byte is read (reading /dev/zero would never end).
    #[cfg(unix)]
    #[test]
    fn huge_and_endless_files_are_not_read() {
        let dir = std::env::temp_dir().join(format!("maple-cache-huge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = path(&dir, 9);
        std::os::unix::fs::symlink("/dev/zero", &p).unwrap();
        assert_eq!(
            load(&p, 9, 2, 3).unwrap_err(),
            Miss::Invalid("not a regular file the cache wrote")
        );
        std::fs::remove_file(&p).unwrap();
        // Nor is a FIFO opened in a way that waits for a writer (issue 31, N6).
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(
            load(&p, 9, 2, 3).unwrap_err(),
            Miss::Invalid("wrong length")
        );
        std::fs::remove_file(&p).unwrap();
        // 3 GB, sparse: costs nothing on disk (it would cost 3 GB of memory to read).
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(3 << 30).unwrap();
        assert_eq!(
            load(&p, 9, 2, 3).unwrap_err(),
            Miss::Invalid("wrong length")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn key_changes_with_each_part() {
        let l = vec!["cat".to_string(), "dog".to_string()];
        let k = key(1, "cpu", "a photo of a", &l, 7);
        assert_ne!(k, key(2, "cpu", "a photo of a", &l, 7));
        assert_ne!(k, key(1, "gpu-f32", "a photo of a", &l, 7));
        assert_ne!(k, key(1, "cpu", "a photo of", &l, 7));
        assert_ne!(k, key(1, "cpu", "a photo of a", &l[..1], 7));
        assert_ne!(k, key(1, "cpu", "a photo of a", &l, 8));
        // Field boundaries are part of the key: "ab"+"c" is not "a"+"bc".
        let a = key(1, "cpu", "t", &["ab".into(), "c".into()], 7);
        assert_ne!(a, key(1, "cpu", "t", &["a".into(), "bc".into()], 7));
    }
}
