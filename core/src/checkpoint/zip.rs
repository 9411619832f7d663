//! A read-only ZIP reader for PyTorch's archive format: central directory (ZIP64 included),
//! stored (uncompressed) entries only, names checked. Entries are borrowed slices; nothing is
//! extracted to disk, and a name that could escape a directory is refused anyway.

use crate::error::{Error, Result};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// One stored (uncompressed) member of a zip archive.
pub struct Entry<'a> {
    /// Its path inside the archive.
    pub name: String,
    /// Its bytes, borrowed from the archive.
    pub data: &'a [u8],
}

fn u16le(b: &[u8], at: usize) -> Result<u16> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| bad("a header runs past the end of the file (truncated?)"))
}
fn u32le(b: &[u8], at: usize) -> Result<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| bad("a header runs past the end of the file (truncated?)"))
}
fn u64le(b: &[u8], at: usize) -> Result<u64> {
    b.get(at..at + 8)
        .map(|s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
        .ok_or_else(|| bad("a header runs past the end of the file (truncated?)"))
}
fn bad(m: &str) -> Error {
    Error::Checkpoint(format!("broken zip archive: {m}"))
}
fn usize_of(v: u64) -> Result<usize> {
    usize::try_from(v).map_err(|_| bad("an offset does not fit in memory"))
}

const MAX_ENTRIES: usize = 1 << 20;

/// Lists every entry of a ZIP archive held in memory.
pub fn read_zip(b: &[u8]) -> Result<Vec<Entry<'_>>> {
    // End of central directory: the last signature in the final 64 KiB + 22 bytes.
    let lo = b.len().saturating_sub(0xFFFF + 22);
    let eocd = (lo..b.len().saturating_sub(21))
        .rev()
        .find(|&i| b[i..i + 4] == [0x50, 0x4b, 0x05, 0x06])
        .ok_or_else(|| bad("no end-of-central-directory record (truncated or not a zip file)"))?;
    let mut count = u16le(b, eocd + 10)? as u64;
    let mut cd_size = u32le(b, eocd + 12)? as u64;
    let mut cd_off = u32le(b, eocd + 16)? as u64;
    if count == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_off == 0xFFFF_FFFF {
        // ZIP64 locator sits right before the EOCD.
        let loc = eocd
            .checked_sub(20)
            .filter(|&l| b[l..l + 4] == [0x50, 0x4b, 0x06, 0x07])
            .ok_or_else(|| bad("ZIP64 locator missing"))?;
        let z = usize_of(u64le(b, loc + 8)?)?;
        if u32le(b, z)? != 0x0606_4b50 {
            return Err(bad("ZIP64 end-of-central-directory record missing"));
        }
        count = u64le(b, z + 32)?;
        cd_size = u64le(b, z + 40)?;
        cd_off = u64le(b, z + 48)?;
    }
    let (cd_off, cd_size) = (usize_of(cd_off)?, usize_of(cd_size)?);
    if cd_off.checked_add(cd_size).is_none_or(|e| e > b.len()) {
        return Err(bad("central directory lies outside the file (truncated?)"));
    }
    if count as usize > MAX_ENTRIES {
        return Err(bad("too many entries"));
    }
    let mut out = Vec::with_capacity(count as usize);
    let mut p = cd_off;
    for _ in 0..count {
        if u32le(b, p)? != 0x0201_4b50 {
            return Err(bad("central directory entry has a bad signature"));
        }
        let method = u16le(b, p + 10)?;
        let mut csize = u32le(b, p + 20)? as u64;
        let mut usize_ = u32le(b, p + 24)? as u64;
        let nlen = u16le(b, p + 28)? as usize;
        let xlen = u16le(b, p + 30)? as usize;
        let clen = u16le(b, p + 32)? as usize;
        let mut local = u32le(b, p + 42)? as u64;
        let name_bytes = b
            .get(p + 46..p + 46 + nlen)
            .ok_or_else(|| bad("entry name runs past the end"))?;
        let name =
            core::str::from_utf8(name_bytes).map_err(|_| bad("an entry name is not UTF-8"))?;
        // ZIP64 extra field: the 0xFFFFFFFF fields, in order usize, csize, offset.
        let extra = b
            .get(p + 46 + nlen..p + 46 + nlen + xlen)
            .ok_or_else(|| bad("extra field runs past the end"))?;
        let mut x = 0;
        while x + 4 <= extra.len() {
            let id = u16le(extra, x)?;
            let len = u16le(extra, x + 2)? as usize;
            if id == 1 {
                let mut q = x + 4;
                for f in [&mut usize_, &mut csize, &mut local] {
                    if *f == 0xFFFF_FFFF {
                        *f = u64le(extra, q)?;
                        q += 8;
                    }
                }
            }
            x += 4 + len;
        }
        check_name(name)?;
        if method != 0 {
            return Err(Error::Checkpoint(format!(
                "zip entry `{name}` is compressed (method {method}); PyTorch archives store entries uncompressed"
            )));
        }
        if csize != usize_ {
            return Err(bad(
                "a stored entry has different packed and unpacked sizes",
            ));
        }
        let local = usize_of(local)?;
        if u32le(b, local)? != 0x0403_4b50 {
            return Err(bad("local header has a bad signature"));
        }
        let start = local + 30 + u16le(b, local + 26)? as usize + u16le(b, local + 28)? as usize;
        let end = start
            .checked_add(usize_of(csize)?)
            .filter(|&e| e <= b.len())
            .ok_or_else(|| {
                Error::Checkpoint(format!(
                    "broken zip archive: entry `{name}` runs past the end of the file (truncated?)"
                ))
            })?;
        out.push(Entry {
            name: String::from(name),
            data: &b[start..end],
        });
        p += 46 + nlen + xlen + clen;
    }
    Ok(out)
}

/// Refuses names that could escape a directory if anyone ever extracted them.
fn check_name(name: &str) -> Result<()> {
    let unsafe_path = name.is_empty()
        || name.starts_with('/')
        || name.contains('\\')
        || name.contains('\0')
        || name.as_bytes().get(1) == Some(&b':')
        || name.split('/').any(|c| c == "..");
    if unsafe_path {
        return Err(Error::Checkpoint(format!(
            "zip entry `{}` has an unsafe path",
            name.escape_debug()
        )));
    }
    Ok(())
}
