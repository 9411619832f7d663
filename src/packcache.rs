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
//! 48  table: per entry  u32 name bytes, name, u64 k, u64 n,
//!                       u64 kind (0 f32 panels, 1 f16 panels, 2 int8, 3 bf16),
//!                       u64 offset, u64 bytes, u64 XXH3-64 of the bytes
//! …   panels, each at a 4096-byte aligned offset
//! ```
//!
//! A file is used only if its magic, version, key, table checksum and every entry's bounds and
//! alignment check out; each block's checksum is checked when the loader asks for it (so a run
//! that needs only the image tower never reads the text tower's panels). Anything that fails
//! costs a warning and a rebuild, never the run; a directory that cannot be written costs a
//! warning.
//!
//! A run at `--precision int8` or `bf16` keeps a second file beside it, `packed-<hash>.int8.bin`
//! or `.bf16.bin`, in the same format: the image tower's Linears as [`Q8Matrix::to_bytes`] or
//! [`Bf16Matrix::to_bytes`] give them (kinds 2 and 3), so a warm run neither converts nor reads
//! the f32 panels of those Linears. Its key is the f32 file's key and the precision.

use crate::loader::{map_open_file_at_most, Bytes, MAX_WEIGHTS_BYTES};
use crate::outfile::OutputFile;
use maple_core::bf16::Bf16Matrix;
use maple_core::clip::{LowRef, LowWeight, PanelSource};
use maple_core::gemm::{PackedMatrix, SharedBytes, NR};
use maple_core::q8::Q8Matrix;
use maple_core::Clip;
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use xxhash_rust::xxh3::{xxh3_128, xxh3_64, Xxh3};

const MAGIC: &[u8; 8] = b"MAPLEPAK";
const VERSION: u32 = 1;
const HEADER: usize = 48;
const ALIGN: usize = 4096;
/// The largest table read (ViT-B/16 has 50 entries of under 100 bytes).
const MAX_TABLE: u64 = 1 << 20;

/// What a cache file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holds {
    /// Every Linear's f32 (or f16) panels.
    Panels,
    /// The image tower's Linears in int8.
    Int8,
    /// The image tower's Linears in bf16.
    Bf16,
}

impl Holds {
    fn suffix(self) -> &'static str {
        match self {
            Holds::Panels => "",
            Holds::Int8 => ".int8",
            Holds::Bf16 => ".bf16",
        }
    }
}

const KIND_F32: u64 = 0;
const KIND_F16: u64 = 1;
const KIND_INT8: u64 = 2;
const KIND_BF16: u64 = 3;

/// The byte length of a `[k, n]` entry of `kind`, if `kind` is one.
fn entry_len(kind: u64, k: usize, n: usize) -> Option<usize> {
    k.checked_mul(n)?.checked_mul(4)?;
    match kind {
        KIND_F32 | KIND_F16 => Some(PackedMatrix::panel_byte_len(k, n, kind == KIND_F16)),
        KIND_INT8 => Some(Q8Matrix::byte_len(k, n)),
        KIND_BF16 => Some(Bf16Matrix::byte_len(k, n)),
        _ => None,
    }
}

struct Entry {
    k: usize,
    n: usize,
    kind: u64,
    offset: usize,
    len: usize,
    sum: u64,
    /// 0: not checked yet, 1: checksum matches, 2: it does not.
    checked: AtomicU8,
}

impl Entry {
    /// Whether the block's checksum matches (computed once, by whichever thread asks first).
    fn intact(&self, file: &[u8]) -> bool {
        match self.checked.load(Ordering::Acquire) {
            1 => true,
            2 => false,
            _ => {
                let ok = xxh3_64(&file[self.offset..self.offset + self.len]) == self.sum;
                self.checked
                    .store(if ok { 1 } else { 2 }, Ordering::Release);
                ok
            }
        }
    }
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
    holds: Holds,
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
        Self::open_holding(dir, weights, config_json, Holds::Panels)
    }

    /// [`Self::open`] for the file that holds `holds` (the f32 panels, or the image tower in
    /// int8 or bf16).
    pub fn open_holding(dir: &Path, weights: &Path, config_json: &[u8], holds: Holds) -> PackCache {
        let mut path = path(dir, weights);
        let mut key = key(weights, config_json);
        if holds != Holds::Panels {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            path.set_file_name(format!("{stem}{}.bin", holds.suffix()));
            let mut h = Xxh3::new();
            h.update(&key.to_le_bytes());
            h.update(holds.suffix().as_bytes());
            key = h.digest128();
        }
        let mut c = PackCache {
            holds,
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

    /// Checks the blocks of the entries whose names pass `wanted` now, on up to `threads`
    /// threads (the calling one included), instead of one by one on the loader's thread as it
    /// asks for them: every run needs the image tower, whose blocks are most of the bytes.
    pub fn check_ahead(&self, threads: usize, wanted: impl Fn(&str) -> bool) {
        let Some((map, entries)) = &self.file else {
            return;
        };
        let file = map.bytes();
        let mut todo: Vec<&Entry> = entries
            .iter()
            .filter(|(name, _)| wanted(name))
            .map(|(_, e)| e)
            .collect();
        // Largest first, each to the least loaded thread.
        todo.sort_by_key(|e| std::cmp::Reverse(e.len));
        let threads = threads.clamp(1, 8).min(todo.len().max(1));
        let mut groups: Vec<(usize, Vec<&Entry>)> = (0..threads).map(|_| (0, Vec::new())).collect();
        for e in todo {
            let g = groups
                .iter_mut()
                .min_by_key(|g| g.0)
                .expect("one group at least");
            g.0 += e.len;
            g.1.push(e);
        }
        let check = |g: &[&Entry]| {
            for e in g {
                e.intact(file);
            }
        };
        std::thread::scope(|s| {
            let (first, rest) = groups.split_first().expect("one group at least");
            for g in rest {
                s.spawn(|| check(&g.1));
            }
            check(&first.1);
        });
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
        // Never through a link, never waiting on a FIFO: only a regular file is mapped.
        let f = match crate::cache::open_cache_file(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(None),
            Err(_) => return Err(Some("not a regular file the cache wrote".into())),
        };
        match f.metadata() {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(Some("not a regular file the cache wrote".into())),
            Err(e) => return Err(Some(e.to_string())),
        }
        let bytes = map_open_file_at_most(f, &self.path, 2 * MAX_WEIGHTS_BYTES)
            .map_err(|e| Some(e.to_string()))?;
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
                kind: u64_at(f, 16),
                offset: u64_at(f, 24) as usize,
                len: u64_at(f, 32) as usize,
                sum: u64_at(f, 40),
                checked: AtomicU8::new(0),
            };
            let fits = e
                .offset
                .checked_add(e.len)
                .is_some_and(|end| end <= b.len());
            let expected = entry_len(e.kind, e.k, e.n);
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

    /// Writes what this file holds of `clip` (every packed f32 weight, or the image tower's
    /// int8 or bf16 Linears): temporary file + rename, so a reader never sees half a file,
    /// streaming each weight from where it lies (no second copy of the model in memory).
    pub fn store(&self, clip: &Clip) -> Result<(), String> {
        type Bytes<'a> = Box<dyn Fn() -> Cow<'a, [u8]> + 'a>;
        let mut items: Vec<(String, usize, usize, u64, Bytes<'_>)> = Vec::new();
        match self.holds {
            Holds::Panels => {
                for (name, m) in clip.packed_weights() {
                    let Some(bytes) = m.panel_bytes() else {
                        continue;
                    };
                    let kind = if m.is_f16() { KIND_F16 } else { KIND_F32 };
                    items.push((name, m.k, m.n, kind, Box::new(move || Cow::Borrowed(bytes))));
                }
            }
            Holds::Int8 | Holds::Bf16 => {
                for l in clip.low_weights() {
                    let kind = match (l.weight, self.holds) {
                        (LowRef::Int8(_), Holds::Int8) => KIND_INT8,
                        (LowRef::Bf16(_), Holds::Bf16) => KIND_BF16,
                        _ => continue,
                    };
                    let (k, n) = l.weight.shape();
                    let w = l.weight;
                    items.push((
                        l.name,
                        k,
                        n,
                        kind,
                        Box::new(move || Cow::Owned(w.to_bytes())),
                    ));
                }
            }
        }
        // Where each block goes (relative to the first, fixed up below) and its checksum.
        let mut table = Vec::new();
        let mut layout = Vec::with_capacity(items.len());
        let mut offset = 0usize;
        for (_, _, _, _, bytes) in &items {
            let b = bytes();
            layout.push((offset, b.len(), xxh3_64(&b)));
            offset = (offset + b.len()).next_multiple_of(ALIGN);
        }
        // The table's own length fixes where the blocks start.
        let table_len: usize = items.iter().map(|i| 4 + i.0.len() + 48).sum();
        let start = (HEADER + table_len).next_multiple_of(ALIGN);
        for ((name, k, n, kind, _), (off, len, sum)) in items.iter().zip(&layout) {
            table.extend_from_slice(&(name.len() as u32).to_ne_bytes());
            table.extend_from_slice(name.as_bytes());
            for v in [
                *k as u64,
                *n as u64,
                *kind,
                (start + off) as u64,
                *len as u64,
                *sum,
            ] {
                table.extend_from_slice(&v.to_ne_bytes());
            }
        }
        let mut head = Vec::with_capacity(start);
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&VERSION.to_ne_bytes());
        head.extend_from_slice(&(items.len() as u32).to_ne_bytes());
        head.extend_from_slice(&self.key.to_ne_bytes());
        head.extend_from_slice(&(table.len() as u64).to_ne_bytes());
        head.extend_from_slice(&xxh3_64(&table).to_ne_bytes());
        head.extend_from_slice(&table);
        head.resize(start, 0);
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let mut f = OutputFile::create_replacing(&self.path).map_err(|e| e.to_string())?;
        f.write_bytes(&head).map_err(|e| e.to_string())?;
        let zeros = [0u8; ALIGN];
        for (_, _, _, _, bytes) in &items {
            let b = bytes();
            f.write_bytes(&b).map_err(|e| e.to_string())?;
            let pad = b.len().next_multiple_of(ALIGN) - b.len();
            f.write_bytes(&zeros[..pad]).map_err(|e| e.to_string())?;
        }
        f.commit().map_err(|e| e.to_string())
    }

    /// The checked bytes of entry `name` of `kind` and shape `[k, n]`, noting a problem if the
    /// entry is there but does not match or is damaged, and a miss if it is not usable.
    fn entry(
        &self,
        name: &str,
        k: usize,
        n: usize,
        kinds: &[u64],
    ) -> Option<(&Arc<Mapped>, &Entry)> {
        let found = self.file.as_ref().and_then(|(map, entries)| {
            let e = entries.get(name)?;
            if (e.k, e.n) != (k, n) || !kinds.contains(&e.kind) {
                self.problem(format!("{name} has another shape"));
                return None;
            }
            if !e.intact(map.bytes()) {
                self.problem(format!("checksum mismatch in {name}"));
                return None;
            }
            Some((map, e))
        });
        if found.is_none() {
            self.missed.store(true, Ordering::Relaxed);
        }
        found
    }
}

/// The packed-weight cache files a load takes weights from: the f32 panels and (for an int8 or
/// bf16 run) the image tower's reduced-precision Linears.
pub struct PackSet<'a> {
    /// The f32 (or f16) panels.
    pub panels: Option<&'a PackCache>,
    /// The image tower in int8 or bf16.
    pub low: Option<&'a PackCache>,
}

impl PanelSource for PackSet<'_> {
    fn panels(&self, name: &str, k: usize, n: usize, f16: bool) -> Option<PackedMatrix> {
        self.panels?.panels(name, k, n, f16)
    }

    fn low(&self, name: &str, k: usize, n: usize) -> Option<LowWeight> {
        let low = self.low?;
        // Only the image tower's encoder layers are ever in reduced precision.
        if !name.starts_with("vision_model.encoder.") {
            return None;
        }
        let kind = match low.holds {
            Holds::Int8 => KIND_INT8,
            Holds::Bf16 => KIND_BF16,
            Holds::Panels => return None,
        };
        let (map, e) = low.entry(name, k, n, &[kind])?;
        // Read in place from the mapping, as the f32 panels are: no copy, no second resident
        // copy of the image tower.
        let shared: Arc<dyn SharedBytes> = map.clone();
        // (`read` checked that the entry's length is its kind's length for [k, n].)
        let w = match low.holds {
            Holds::Int8 => Q8Matrix::from_shared(k, n, shared, e.offset).map(LowWeight::Int8),
            _ => Bf16Matrix::from_shared(k, n, shared, e.offset).map(LowWeight::Bf16),
        };
        if w.is_none() {
            low.problem(format!("{name} has another shape"));
            low.missed.store(true, Ordering::Relaxed);
        }
        w
    }
}

impl PanelSource for PackCache {
    fn panels(&self, name: &str, k: usize, n: usize, f16: bool) -> Option<PackedMatrix> {
        if self.holds != Holds::Panels {
            return None;
        }
        let kind = if f16 { KIND_F16 } else { KIND_F32 };
        let (map, e) = self.entry(name, k, n, &[kind])?;
        let shared: Arc<dyn SharedBytes> = map.clone();
        match PackedMatrix::from_shared(k, n, f16, shared, e.offset) {
            Ok(m) => Some(m),
            Err(why) => {
                self.problem(format!("{name}: {why}"));
                self.missed.store(true, Ordering::Relaxed);
                None
            }
        }
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
            let m = load_model_packed(
                &tiny(),
                Some(&prompts),
                true,
                packs.map(|p| p as _),
                packs.map(PackCache::key),
            )
            .unwrap();
            m.model
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

    #[test]
    fn a_warm_int8_or_bf16_load_takes_the_converted_linears_from_their_file() {
        let dir = std::env::temp_dir().join(format!("maple-packcache-low-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let weights = weights_file(&tiny()).unwrap();
        let config = std::fs::read(tiny().join("config.json")).unwrap();
        let load = |set: &PackSet| {
            load_model_packed(&tiny(), None, true, Some(set as _), None)
                .unwrap()
                .model
        };
        for holds in [Holds::Int8, Holds::Bf16] {
            let convert = |m: &mut maple_core::Model| match holds {
                Holds::Int8 => m.quantize_image_tower(),
                _ => m.bf16_image_tower(),
            };
            let low = PackCache::open_holding(&dir, &weights, &config, holds);
            assert!(!low.is_valid());
            let set = PackSet {
                panels: None,
                low: Some(&low),
            };
            let mut fresh = load(&set);
            assert!(low.needs_store(), "a missing file is a miss");
            convert(&mut fresh);
            low.store(&fresh.clip).unwrap();
            assert!(low
                .path()
                .to_string_lossy()
                .ends_with(&format!("{}.bin", holds.suffix())));

            let warm = PackCache::open_holding(&dir, &weights, &config, holds);
            assert!(warm.is_valid());
            let set = PackSet {
                panels: None,
                low: Some(&warm),
            };
            let m = load(&set);
            assert!(!warm.needs_store() && warm.take_warnings().is_empty());
            let (got, want) = (m.clip.low_weights(), fresh.clip.low_weights());
            assert_eq!(got.len(), 4 * m.clip.vision_model.layers.len());
            assert_eq!(got.len(), want.len());
            for (a, b) in got.iter().zip(&want) {
                assert_eq!(a.name, b.name);
                assert_eq!(a.weight.to_bytes(), b.weight.to_bytes(), "{}", a.name);
                // Read in place from the mapped file, not copied out of it.
                assert!(a.weight.is_shared() && !b.weight.is_shared(), "{}", a.name);
            }
            // Loaded converted: the f32 panels of those Linears were never made.
            for l in &m.clip.vision_model.layers {
                for lin in [&l.qkv_proj, &l.out_proj, &l.fc1, &l.fc2] {
                    assert!(lin.weight.is_released());
                }
            }
            // The text tower stays f32 and is never looked up in the file.
            assert!(m
                .clip
                .text_model
                .layers
                .iter()
                .all(|l| !l.fc1.weight.is_released()));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
