//! The safetensors container: an 8-byte little-endian header length, a JSON header, raw data.
//! Parsed from a byte slice (the caller reads or memory-maps the file); nothing is copied.

use crate::error::{Error, Result};
use alloc::borrow::{Cow, ToOwned};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use serde_json::{Map, Value};

/// Element types maple reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// IEEE single.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// Any other dtype the header names (kept so errors can say which).
    Other(&'static str),
}

impl Dtype {
    /// The dtype of a safetensors `dtype` string, with its size in bytes.
    pub fn parse(s: &str) -> Option<(Dtype, usize)> {
        Some(match s {
            "F32" => (Dtype::F32, 4),
            "F16" => (Dtype::F16, 2),
            "BF16" => (Dtype::BF16, 2),
            "F64" => (Dtype::Other("F64"), 8),
            "I64" => (Dtype::Other("I64"), 8),
            "U64" => (Dtype::Other("U64"), 8),
            "I32" => (Dtype::Other("I32"), 4),
            "U32" => (Dtype::Other("U32"), 4),
            "I16" => (Dtype::Other("I16"), 2),
            "U16" => (Dtype::Other("U16"), 2),
            "I8" => (Dtype::Other("I8"), 1),
            "U8" => (Dtype::Other("U8"), 1),
            "BOOL" => (Dtype::Other("BOOL"), 1),
            "F8_E4M3" => (Dtype::Other("F8_E4M3"), 1),
            "F8_E5M2" => (Dtype::Other("F8_E5M2"), 1),
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(&self) -> usize {
        Dtype::parse(self.name()).map_or(1, |(_, s)| s)
    }

    /// The safetensors name (`F32`, `F16`, `BF16`).
    pub fn name(&self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::Other(s) => s,
        }
    }
}

/// A tensor: dtype, shape and its little-endian row-major bytes (any alignment), borrowed from
/// the file where possible, owned where it had to be rearranged (strides, transposes).
#[derive(Debug, Clone)]
pub struct TensorView<'a> {
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Little-endian elements, borrowed when possible.
    pub data: Cow<'a, [u8]>,
}

impl TensorView<'_> {
    /// Elements (product of the shape).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Widens to f32 (`name` is only used in the error).
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        self.extend_f32(name, &mut out)?;
        Ok(out)
    }

    /// Appends the elements widened to f32 (`name` is for errors).
    pub fn extend_f32(&self, name: &str, out: &mut Vec<f32>) -> Result<()> {
        match self.dtype {
            Dtype::F32 => out.extend(
                self.data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
            Dtype::F16 => out.extend(
                self.data
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
            ),
            Dtype::BF16 => out.extend(
                self.data
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()),
            ),
            Dtype::Other(d) => {
                return Err(Error::Dtype {
                    name: name.to_owned(),
                    dtype: d.into(),
                })
            }
        }
        Ok(())
    }
}

/// Anything that can hand out tensors by name (a safetensors file, a PyTorch checkpoint, a map).
pub trait TensorSource {
    /// The tensor called `name`, if present.
    fn tensor(&self, name: &str) -> Option<TensorView<'_>>;
    /// All names, in file order.
    fn names(&self) -> Vec<&str>;
    /// Called once a loader has copied tensor `name` (`view`, as [`tensor`](Self::tensor) gave
    /// it) into its own layout: a source backed by a memory map may drop those pages (so loading
    /// never holds the file and the model at once), and may fingerprint what was read.
    fn release(&self, _name: &str, _view: &TensorView<'_>) {}
    /// A value of the file's free-form metadata (safetensors' `__metadata__`), if it has one.
    fn metadata(&self, _key: &str) -> Option<&str> {
        None
    }
}

struct Entry {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// A parsed safetensors file borrowing its bytes.
pub struct SafeTensors<'a> {
    entries: Vec<Entry>,
    metadata: Vec<(String, String)>,
    data: &'a [u8],
}

/// Headers larger than this are refused (real ones are a few hundred KiB at most).
pub const MAX_HEADER: usize = 100 << 20;

impl<'a> SafeTensors<'a> {
    /// Reads the header and checks every tensor's offsets; the data stays borrowed.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let head = SafeTensorsIndex::head_len(bytes, bytes.len())?;
        let index = SafeTensorsIndex::parse(&bytes[..head], bytes.len())?;
        Ok(SafeTensors {
            entries: index.entries,
            metadata: index.metadata,
            data: &bytes[head..],
        })
    }

    /// A `__metadata__` string entry.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Tensors in the file.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No tensors.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn parse_entry(name: &str, v: &Value, data_len: usize) -> Result<Entry> {
    let bad = |what: &str| Error::Safetensors(format!("tensor `{name}`: {what}"));
    let o: &Map<String, Value> = v.as_object().ok_or_else(|| bad("entry is not an object"))?;
    let dtype_s = o
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("missing `dtype`"))?;
    let (dtype, size) =
        Dtype::parse(dtype_s).ok_or_else(|| bad(&format!("unknown dtype `{dtype_s}`")))?;
    let shape_v = o
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("missing `shape`"))?;
    let mut shape = Vec::with_capacity(shape_v.len());
    let mut numel: usize = 1;
    for d in shape_v {
        let d = d
            .as_u64()
            .filter(|&d| d <= usize::MAX as u64)
            .ok_or_else(|| bad("shape holds a value that is not a non-negative integer"))?
            as usize;
        numel = numel.checked_mul(d).ok_or_else(|| bad("shape overflows"))?;
        shape.push(d);
    }
    let offs = o
        .get("data_offsets")
        .and_then(Value::as_array)
        .filter(|a| a.len() == 2)
        .ok_or_else(|| bad("missing `data_offsets` [begin, end]"))?;
    let start = offs[0].as_u64().ok_or_else(|| bad("bad data_offsets"))?;
    let end = offs[1].as_u64().ok_or_else(|| bad("bad data_offsets"))?;
    if start > end || end > data_len as u64 {
        return Err(bad(&format!(
            "data_offsets [{start}, {end}] fall outside the {data_len}-byte data section (truncated file?)"
        )));
    }
    let (start, end) = (start as usize, end as usize);
    let want = numel
        .checked_mul(size)
        .ok_or_else(|| bad("byte size overflows"))?;
    if end - start != want {
        return Err(bad(&format!(
            "shape needs {want} bytes but data_offsets span {}",
            end - start
        )));
    }
    Ok(Entry {
        name: name.to_owned(),
        dtype,
        shape,
        start,
        end,
    })
}

impl TensorSource for SafeTensors<'_> {
    fn metadata(&self, key: &str) -> Option<&str> {
        SafeTensors::metadata(self, key)
    }

    fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .map(|e| TensorView {
                dtype: e.dtype,
                shape: e.shape.clone(),
                data: Cow::Borrowed(&self.data[e.start..e.end]),
            })
    }

    fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.name.as_str()).collect()
    }
}

/// A safetensors header parsed on its own: where each tensor lies in a file of known length,
/// for a source that fetches tensors one at a time ([`FetchedTensors`]: in the browser the file
/// stays in JavaScript's memory and only one tensor at a time is copied into wasm's).
pub struct SafeTensorsIndex {
    entries: Vec<Entry>,
    metadata: Vec<(String, String)>,
    head: usize,
}

impl SafeTensorsIndex {
    /// How many bytes from the file's start hold the header (8 + its length), from the file's
    /// first 8 bytes (`start`, at least 8 of them) and its length.
    pub fn head_len(start: &[u8], file_len: usize) -> Result<usize> {
        if start.len() < 8 || file_len < 8 {
            return Err(Error::Safetensors(format!(
                "file is {} bytes, shorter than the 8-byte header length",
                file_len.min(start.len())
            )));
        }
        let n = u64::from_le_bytes(start[..8].try_into().unwrap_or([0; 8]));
        if n > MAX_HEADER as u64 {
            return Err(Error::Safetensors(format!(
                "header length {n} is larger than the {MAX_HEADER}-byte limit"
            )));
        }
        let n = n as usize;
        if n > file_len - 8 {
            return Err(Error::Safetensors(format!(
                "header length {n} runs past the end of the {file_len}-byte file (truncated?)"
            )));
        }
        Ok(8 + n)
    }

    /// Parses the header in `head` (the file's first [`Self::head_len`] bytes) of a
    /// `file_len`-byte file, checking every tensor's offsets against the data section.
    pub fn parse(head: &[u8], file_len: usize) -> Result<Self> {
        let h = Self::head_len(head, file_len)?;
        if head.len() < h {
            return Err(Error::Safetensors(format!(
                "{} bytes given for a {h}-byte header",
                head.len()
            )));
        }
        let header = core::str::from_utf8(&head[8..h])
            .map_err(|_| Error::Safetensors("header is not UTF-8".into()))?;
        let root: Value = serde_json::from_str(header)
            .map_err(|e| Error::Safetensors(format!("header is not valid JSON ({e})")))?;
        let obj = root
            .as_object()
            .ok_or_else(|| Error::Safetensors("header is not a JSON object".into()))?;
        let data_len = file_len - h;
        let mut entries = Vec::with_capacity(obj.len());
        let mut metadata = Vec::new();
        for (name, v) in obj {
            if name == "__metadata__" {
                let m = v
                    .as_object()
                    .ok_or_else(|| Error::Safetensors("`__metadata__` is not an object".into()))?;
                for (k, val) in m {
                    let s = val.as_str().ok_or_else(|| {
                        Error::Safetensors(format!("metadata `{k}` is not a string"))
                    })?;
                    metadata.push((k.clone(), s.to_owned()));
                }
                continue;
            }
            entries.push(parse_entry(name, v, data_len)?);
        }
        // Data regions must not overlap (the format requires it; it also rules out aliasing tricks).
        let mut spans: Vec<(usize, usize, usize)> = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.end > e.start)
            .map(|(i, e)| (e.start, e.end, i))
            .collect();
        spans.sort_unstable();
        for w in spans.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(Error::Safetensors(format!(
                    "tensors `{}` and `{}` overlap in the data section",
                    entries[w[0].2].name, entries[w[1].2].name
                )));
            }
        }
        // Keep file order (by offset) for listings.
        entries.sort_by_key(|e| (e.start, e.end));
        Ok(SafeTensorsIndex {
            entries,
            metadata,
            head: h,
        })
    }

    /// A `__metadata__` string entry.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Tensors fetched one at a time from a safetensors file held elsewhere: `fetch(start, end)`
/// returns the file's bytes `start..end` (absolute offsets, checked against the file's length
/// when the index was parsed). A loader copies each tensor into its own layout and drops the
/// fetched bytes, so loading never holds the whole file in this memory.
pub struct FetchedTensors<F> {
    index: SafeTensorsIndex,
    fetch: F,
}

impl<F: Fn(usize, usize) -> Vec<u8>> FetchedTensors<F> {
    /// Tensors of the file that `index` describes, read through `fetch`.
    pub fn new(index: SafeTensorsIndex, fetch: F) -> Self {
        FetchedTensors { index, fetch }
    }
}

impl<F: Fn(usize, usize) -> Vec<u8>> TensorSource for FetchedTensors<F> {
    fn metadata(&self, key: &str) -> Option<&str> {
        self.index.metadata(key)
    }

    fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        let e = self.index.entries.iter().find(|e| e.name == name)?;
        let h = self.index.head;
        let data = (self.fetch)(h + e.start, h + e.end);
        // A fetch that comes back short is a tensor this source cannot give.
        (data.len() == e.end - e.start).then(|| TensorView {
            dtype: e.dtype,
            shape: e.shape.clone(),
            data: Cow::Owned(data),
        })
    }

    fn names(&self) -> Vec<&str> {
        self.index.entries.iter().map(|e| e.name.as_str()).collect()
    }
}

/// One tensor to write.
pub struct OwnedTensor {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Little-endian elements.
    pub data: Vec<u8>,
}

/// Serialises tensors (in the given order) and string metadata into safetensors bytes.
/// The header is padded with spaces to a multiple of 8 so the data section stays aligned.
pub fn serialize(tensors: &[OwnedTensor], metadata: &[(&str, &str)]) -> Vec<u8> {
    let mut header = Map::new();
    if !metadata.is_empty() {
        let mut m = Map::new();
        for (k, v) in metadata {
            m.insert((*k).into(), Value::String((*v).into()));
        }
        header.insert("__metadata__".into(), Value::Object(m));
    }
    let mut off = 0usize;
    for t in tensors {
        let mut e = Map::new();
        e.insert("dtype".into(), Value::String(t.dtype.name().into()));
        e.insert(
            "shape".into(),
            Value::Array(t.shape.iter().map(|&d| Value::from(d as u64)).collect()),
        );
        e.insert(
            "data_offsets".into(),
            Value::Array(alloc::vec![
                Value::from(off as u64),
                Value::from((off + t.data.len()) as u64)
            ]),
        );
        header.insert(t.name.clone(), Value::Object(e));
        off += t.data.len();
    }
    let mut h = serde_json::to_string(&Value::Object(header)).unwrap_or_default();
    while !h.len().is_multiple_of(8) {
        h.push(' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + off);
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(h.as_bytes());
    for t in tensors {
        out.extend_from_slice(&t.data);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// Fetched one tensor at a time (as the browser reads a file held in JavaScript), the same
    /// tensors and metadata as parsed from the bytes; a short fetch is a missing tensor; a header
    /// that runs past the file is refused before anything is fetched.
    #[test]
    fn fetched_tensors_are_the_parsed_ones() {
        let t = |name: &str, v: &[f32]| OwnedTensor {
            name: name.into(),
            dtype: Dtype::F32,
            shape: vec![v.len()],
            data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        };
        let bytes = serialize(&[t("a", &[1.0, 2.0]), t("b", &[-3.5])], &[("k", "v")]);
        let head = SafeTensorsIndex::head_len(&bytes[..8], bytes.len()).unwrap();
        let index = SafeTensorsIndex::parse(&bytes[..head], bytes.len()).unwrap();
        let fetches = core::cell::Cell::new(0);
        let src = FetchedTensors::new(index, |s: usize, e: usize| {
            fetches.set(fetches.get() + 1);
            bytes[s..e].to_vec()
        });
        let parsed = SafeTensors::parse(&bytes).unwrap();
        assert_eq!(src.names(), parsed.names());
        assert_eq!(src.metadata("k"), Some("v"));
        for name in ["a", "b"] {
            let (x, y) = (src.tensor(name).unwrap(), parsed.tensor(name).unwrap());
            assert_eq!(
                (x.dtype, &x.shape, &x.data[..]),
                (y.dtype, &y.shape, &y.data[..])
            );
        }
        assert_eq!(src.tensor("b").unwrap().to_f32("b").unwrap(), [-3.5]);
        assert!(src.tensor("c").is_none());
        assert_eq!(
            fetches.get(),
            3,
            "one fetch per tensor asked for, none for a missing one"
        );
        let short = FetchedTensors::new(
            SafeTensorsIndex::parse(&bytes[..head], bytes.len()).unwrap(),
            |s: usize, e: usize| bytes[s..e - 1].to_vec(),
        );
        assert!(short.tensor("a").is_none());
        let err = SafeTensorsIndex::head_len(&bytes[..8], head - 1).unwrap_err();
        assert!(
            alloc::format!("{err}").contains("runs past the end"),
            "{err}"
        );
        assert!(SafeTensorsIndex::parse(&bytes[..head - 1], bytes.len()).is_err());
    }

    fn one() -> Vec<u8> {
        let t = OwnedTensor {
            name: "w".into(),
            dtype: Dtype::F32,
            shape: vec![2],
            data: [1.5f32.to_le_bytes(), (-2.0f32).to_le_bytes()].concat(),
        };
        serialize(&[t], &[("format", "pt")])
    }

    #[test]
    fn round_trip() {
        let b = one();
        let st = SafeTensors::parse(&b).unwrap();
        assert_eq!(st.metadata("format"), Some("pt"));
        let v = st.tensor("w").unwrap();
        assert_eq!(v.shape, vec![2]);
        assert_eq!(v.to_f32("w").unwrap(), vec![1.5, -2.0]);
    }

    #[test]
    fn refuses_truncation_and_lies() {
        let b = one();
        for cut in [0, 7, 9, b.len() - 1] {
            assert!(SafeTensors::parse(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = b.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(SafeTensors::parse(&huge).is_err());
        let h = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}"#;
        let mut f = (h.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(h.as_bytes());
        f.extend_from_slice(&[0; 8]);
        let e = SafeTensors::parse(&f).err().unwrap();
        assert!(alloc::format!("{e}").contains("needs 16 bytes"));
        let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        let mut f = (h.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(h.as_bytes());
        f.extend_from_slice(&[0; 8]);
        assert!(alloc::format!("{}", SafeTensors::parse(&f).err().unwrap()).contains("overlap"));
    }
}
