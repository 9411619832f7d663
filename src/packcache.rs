//! The packed-weight cache: every Linear weight of a model in the GEMM's packed panel layout,
//! written once beside the text-feature cache and memory-mapped read-only by later runs, which
//! then use the panels where they lie instead of reading and re-packing the checkpoint.
//!
//! One file per weights file, `packed-<hash of its path>.bin` in the cache directory. The key
//! stored inside is an XXH3-128 over this format's version, the crate version, the panel layout
//! (columns per panel, byte order, pointer width), config.json and the weights file's path,
//! length, modification time and inode; a weights file replaced or touched gives a new key, and
//! its cache file is rebuilt in place. The SIMD path is not part of the key: every micro-kernel
//! reads the same panels. Layout, native byte order:
//!
//! ```text
//! 0   b"MAPLEPAK"            magic
//! 8   u32 version (1), u32 entries
//! 16  u128 key
//! 32  u64 table bytes, u64 XXH3-64 of the table
//! 48  table: per entry  u32 name bytes, name, u64 k, u64 n, u64 f16 (0/1),
//!                       u64 offset, u64 bytes, u64 XXH3-64 of the bytes
//! …   panels, each at a 4096-byte aligned offset
//! ```
//!
//! A file is used only if its magic, version, key, table checksum and every entry's bounds and
//! alignment check out; each block's checksum is checked when the loader asks for it (so a run
//! that needs only the image tower never reads the text tower's panels). Anything that fails
//! costs a warning and a rebuild, never the run; a directory that cannot be written costs a
//! warning.

use crate::loader::{map_file_at_most, Bytes, MAX_WEIGHTS_BYTES};
use crate::outfile::OutputFile;
use maple_core::clip::PanelSource;
use maple_core::gemm::{PackedMatrix, SharedBytes, NR};
use maple_core::Clip;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use xxhash_rust::xxh3::{xxh3_128, xxh3_64, Xxh3};

const MAGIC: &[u8; 8] = b"MAPLEPAK";
const VERSION: u32 = 1;
const HEADER: usize = 48;
const ALIGN: usize = 4096;
/// The largest table read (ViT-B/16 has 50 entries of under 100 bytes).
const MAX_TABLE: u64 = 1 << 20;

struct Entry {
    k: usize,
    n: usize,
    f16: bool,
    offset: usize,
    len: usize,
    sum: u64,
}

struct Mapped(Bytes);

/// A valid file: its mapping and its entries by name.
type Opened = (Arc<Mapped>, HashMap<String, Entry>);

impl SharedBytes for Mapped {
    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// One model's packed-weight cache file: the panels it holds (if it was valid) and what the
/// loader found missing or damaged, to rebuild it after loading.
pub struct PackCache {
    path: PathBuf,
    key: u128,
    file: Option<Opened>,
    missed: AtomicBool,
    problems: Mutex<Vec<String>>,
}

/// The cache file for the weights file `weights` in `dir`.
pub fn path(dir: &Path, weights: &Path) -> PathBuf {
    let canon = std::fs::canonicalize(weights).unwrap_or_else(|_| weights.to_path_buf());
    let h = xxh3_128(canon.to_string_lossy().as_bytes());
    dir.join(format!("packed-{h:032x}.bin"))
}

/// The key for the weights file `weights` read with the config file's bytes `config_json`.
pub fn key(weights: &Path, config_json: &[u8]) -> u128 {
    let mut h = Xxh3::new();
    h.update(MAGIC);
    h.update(&VERSION.to_le_bytes());
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(&(NR as u64).to_le_bytes());
    h.update(&1u32.to_ne_bytes()); // byte order
    h.update(&(usize::BITS as u64).to_le_bytes());
    h.update(&(config_json.len() as u64).to_le_bytes());
    h.update(config_json);
    let canon = std::fs::canonicalize(weights).unwrap_or_else(|_| weights.to_path_buf());
    let name = canon.to_string_lossy();
    h.update(&(name.len() as u64).to_le_bytes());
    h.update(name.as_bytes());
    if let Ok(m) = std::fs::metadata(weights) {
        h.update(&m.len().to_le_bytes());
        if let Ok(t) = m.modified() {
            if let Ok(d) = t.duration_since(std::time::UNIX_EPOCH) {
                h.update(&d.as_nanos().to_le_bytes());
            }
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            h.update(&m.dev().to_le_bytes());
            h.update(&m.ino().to_le_bytes());
            h.update(&m.ctime().to_le_bytes());
            h.update(&m.ctime_nsec().to_le_bytes());
        }
    }
    h.digest128()
}

impl PackCache {
    /// Opens the cache file for `weights` in `dir` (absent, stale or damaged files are noted for
    /// [`Self::take_warnings`] and rebuilt by [`Self::store`]; opening never fails).
    pub fn open(dir: &Path, weights: &Path, config_json: &[u8]) -> PackCache {
        let path = path(dir, weights);
        let key = key(weights, config_json);
        let mut c = PackCache {
            file: None,
            missed: AtomicBool::new(false),
            problems: Mutex::new(Vec::new()),
            path,
            key,
        };
        match c.read() {
            Ok(f) => c.file = Some(f),
            Err(None) => {}
            Err(Some(why)) => c.problem(why),
        }
        c
    }

    /// The key: what identifies the weights file (path, size, times, inode) and the layout.
    pub fn key(&self) -> u128 {
        self.key
    }

    /// The cache file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file was valid when opened.
    pub fn is_valid(&self) -> bool {
        self.file.is_some()
    }

    fn problem(&self, why: impl Into<String>) {
        self.problems.lock().unwrap().push(why.into());
    }

    /// `Err(None)`: no file; `Err(Some(why))`: a file that is not usable.
    fn read(&self) -> Result<Opened, Option<String>> {
        match std::fs::metadata(&self.path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(Some("not a regular file".into())),
            Err(_) => return Err(None),
        }
        let bytes =
            map_file_at_most(&self.path, 2 * MAX_WEIGHTS_BYTES).map_err(|e| Some(e.to_string()))?;
        let b: &[u8] = &bytes;
        if b.len() < HEADER || &b[..8] != MAGIC {
            return Err(Some("not a maple packed-weight cache".into()));
        }
        let u32_at = |i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().unwrap());
        let u64_at = |b: &[u8], i: usize| u64::from_ne_bytes(b[i..i + 8].try_into().unwrap());
        if u32_at(8) != VERSION {
            return Err(Some("written by another version".into()));
        }
        if u128::from_ne_bytes(b[16..32].try_into().unwrap()) != self.key {
            return Err(Some(
                "stale: the weights or config changed since it was written".into(),
            ));
        }
        let count = u32_at(12) as usize;
        let table_len = u64_at(b, 32);
        if table_len > MAX_TABLE || table_len as usize > b.len() - HEADER {
            return Err(Some("table runs past the end of the file".into()));
        }
        let table = &b[HEADER..HEADER + table_len as usize];
        if xxh3_64(table) != u64_at(b, 40) {
            return Err(Some("table checksum mismatch".into()));
        }
        let mut entries = HashMap::new();
        let mut at = 0usize;
        let damaged = || Some("damaged table".to_string());
        for _ in 0..count {
            let name_len = u32::from_ne_bytes(
                table
                    .get(at..at + 4)
                    .ok_or_else(damaged)?
                    .try_into()
                    .unwrap(),
            ) as usize;
            at += 4;
            let name = std::str::from_utf8(table.get(at..at + name_len).ok_or_else(damaged)?)
                .map_err(|_| damaged())?
                .to_string();
            at += name_len;
            let f = table.get(at..at + 48).ok_or_else(damaged)?;
            at += 48;
            let e = Entry {
                k: u64_at(f, 0) as usize,
                n: u64_at(f, 8) as usize,
                f16: u64_at(f, 16) != 0,
                offset: u64_at(f, 24) as usize,
                len: u64_at(f, 32) as usize,
                sum: u64_at(f, 40),
            };
            let fits = e
                .offset
                .checked_add(e.len)
                .is_some_and(|end| end <= b.len());
            let expected =
                e.k.checked_mul(e.n)
                    .map(|_| PackedMatrix::panel_byte_len(e.k, e.n, e.f16));
            if !fits || !e.offset.is_multiple_of(ALIGN) || expected != Some(e.len) {
                return Err(Some(format!("entry {name} is out of bounds")));
            }
            entries.insert(name, e);
        }
        if at != table.len() {
            return Err(damaged());
        }
        Ok((Arc::new(Mapped(bytes)), entries))
    }

    /// Whether loading asked for a weight the file did not have (or had damaged): then
    /// [`Self::store`] should write the file again.
    pub fn needs_store(&self) -> bool {
        self.missed.load(Ordering::Relaxed)
    }

    /// Marks the file as written (or given up on), so that [`Self::needs_store`] says no until
    /// another load misses.
    pub fn stored(&self) {
        self.missed.store(false, Ordering::Relaxed);
    }

    /// What went wrong with the file, as one warning line each (then cleared).
    pub fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut *self.problems.lock().unwrap())
            .into_iter()
            .map(|why| {
                format!(
                    "ignoring packed-weight cache {} ({why}); rebuilding it",
                    self.path.display()
                )
            })
            .collect()
    }

    /// Writes every packed weight of `clip` (temporary file + rename: a reader never sees half a
    /// file), streaming the panels from where they lie (no second copy of the model in memory).
    pub fn store(&self, clip: &Clip) -> Result<(), String> {
        let weights = clip.packed_weights();
        let mut table = Vec::new();
        let mut offset = 0usize; // relative to the first panel, fixed up below
        let mut blocks = Vec::with_capacity(weights.len());
        let mut layout = Vec::with_capacity(weights.len());
        for (name, m) in &weights {
            let Some(bytes) = m.panel_bytes() else {
                continue;
            };
            layout.push((name.as_str(), m.k, m.n, m.is_f16(), offset, bytes.len()));
            blocks.push((bytes, xxh3_64(bytes)));
            offset = (offset + bytes.len()).next_multiple_of(ALIGN);
        }
        // The table's own length fixes where the panels start.
        let table_len: usize = layout.iter().map(|l| 4 + l.0.len() + 48).sum();
        let start = (HEADER + table_len).next_multiple_of(ALIGN);
        for ((name, k, n, f16, off, len), (_, sum)) in layout.iter().zip(&blocks) {
            table.extend_from_slice(&(name.len() as u32).to_ne_bytes());
            table.extend_from_slice(name.as_bytes());
            for v in [*k, *n, usize::from(*f16), start + off, *len] {
                table.extend_from_slice(&(v as u64).to_ne_bytes());
            }
            table.extend_from_slice(&sum.to_ne_bytes());
        }
        let mut head = Vec::with_capacity(start);
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&VERSION.to_ne_bytes());
        head.extend_from_slice(&(layout.len() as u32).to_ne_bytes());
        head.extend_from_slice(&self.key.to_ne_bytes());
        head.extend_from_slice(&(table.len() as u64).to_ne_bytes());
        head.extend_from_slice(&xxh3_64(&table).to_ne_bytes());
        head.extend_from_slice(&table);
        head.resize(start, 0);
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let mut f = OutputFile::create(&self.path).map_err(|e| e.to_string())?;
        f.write_bytes(&head).map_err(|e| e.to_string())?;
        let zeros = [0u8; ALIGN];
        for (bytes, _) in &blocks {
            f.write_bytes(bytes).map_err(|e| e.to_string())?;
            let pad = bytes.len().next_multiple_of(ALIGN) - bytes.len();
            f.write_bytes(&zeros[..pad]).map_err(|e| e.to_string())?;
        }
        f.commit().map_err(|e| e.to_string())
    }
}

impl PanelSource for PackCache {
    fn panels(&self, name: &str, k: usize, n: usize, f16: bool) -> Option<PackedMatrix> {
        let found = self.file.as_ref().and_then(|(map, entries)| {
            let e = entries.get(name)?;
            if (e.k, e.n, e.f16) != (k, n, f16) {
                self.problem(format!("{name} has another shape"));
                return None;
            }
            if xxh3_64(&map.bytes()[e.offset..e.offset + e.len]) != e.sum {
                self.problem(format!("checksum mismatch in {name}"));
                return None;
            }
            let shared: Arc<dyn SharedBytes> = map.clone();
            match PackedMatrix::from_shared(k, n, f16, shared, e.offset) {
                Ok(m) => Some(m),
                Err(why) => {
                    self.problem(format!("{name}: {why}"));
                    None
                }
            }
        });
        if found.is_none() {
            self.missed.store(true, Ordering::Relaxed);
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::{load_model_packed, weights_file};

    fn tiny() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny")
    }

    #[test]
    fn a_warm_load_takes_every_panel_from_the_file() {
        let dir = std::env::temp_dir().join(format!("maple-packcache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let weights = weights_file(&tiny()).unwrap();
        let config = std::fs::read(tiny().join("config.json")).unwrap();
        let prompts = tiny().join("maple_prompts.safetensors");
        let load = |packs: Option<&PackCache>| {
            let (m, _) = load_model_packed(
                &tiny(),
                Some(&prompts),
                true,
                packs.map(|p| p as _),
                packs.map(PackCache::key),
            )
            .unwrap();
            m
        };
        let plain = load(None);

        // Cold: nothing there, every Linear missed, then written.
        let cold = PackCache::open(&dir, &weights, &config);
        assert!(!cold.is_valid());
        let m = load(Some(&cold));
        assert!(cold.needs_store());
        cold.store(&m.clip).unwrap();
        assert!(cold.take_warnings().is_empty());

        // Warm: every Linear is a view of the mapped file, byte for byte what packing gives.
        let warm = PackCache::open(&dir, &weights, &config);
        assert!(warm.is_valid());
        let m = load(Some(&warm));
        assert!(!warm.needs_store());
        assert!(warm.take_warnings().is_empty());
        let (got, want) = (m.clip.packed_weights(), plain.clip.packed_weights());
        assert_eq!(got.len(), want.len());
        assert_eq!(
            got.len(),
            2 * 3 * 4 + 3,
            "tiny model: 2 towers × 3 layers × 4 + 3"
        );
        for ((name, a), (name_b, b)) in got.iter().zip(&want) {
            assert_eq!(name, name_b);
            assert!(a.is_shared(), "{name} was packed again");
            assert!(!b.is_shared());
            assert_eq!(a.panel_bytes(), b.panel_bytes(), "{name}");
        }

        // Another config (or weights file) is another key: the file is stale.
        let other = PackCache::open(&dir, &weights, b"{}");
        assert!(!other.is_valid());
        let w = other.take_warnings();
        assert!(w.len() == 1 && w[0].contains("stale"), "{w:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
