//! Image files → RGB8, converting the way Pillow's `Image.open(p).convert("RGB")` does:
//! alpha dropped (never composited), gray replicated, 16-bit samples reduced as Pillow reduces
//! them (see `to_rgb8`). EXIF orientation and ICC profiles are ignored, as in PIL.

use crate::Error;
use image::{DynamicImage, ImageFormat, ImageReader};
use std::path::Path;

/// Decoded pixels: `height` rows of `width` RGB triples.
#[derive(Clone, Debug, PartialEq)]
pub struct Rgb8 {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// `width * height * 3` bytes, row-major, R G B.
    pub data: Vec<u8>,
}

/// Reads and decodes an image file (the content decides the format, never the name).
/// Pipes and devices (`/dev/stdin`, `<(…)`) are read as streams, up to [`MAX_FILE_BYTES`].
pub fn load_rgb8(path: &Path) -> Result<Rgb8, Error> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = f.metadata().map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Err(Error::image(path, "is a directory, not an image"));
    }
    if meta.is_file() && meta.len() == 0 {
        return Err(Error::image(path, "empty file, not an image"));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(Error::image(path, too_large(Some(meta.len()))));
    }
    let bytes = crate::loader::read_at_most(&f, MAX_FILE_BYTES)
        .map_err(|e| Error::io(path, e))?
        .ok_or_else(|| Error::image(path, too_large(None)))?;
    decode_rgb8(&bytes).map_err(|m| Error::image(path, m))
}

/// The largest image file read (1 GiB; the largest image decoded is [`MAX_PIXELS`]).
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// `n`: the file's size, if it has one (`None`: a stream that kept going).
fn too_large(n: Option<u64>) -> String {
    let limit = MAX_FILE_BYTES >> 20;
    match n {
        Some(n) => format!(
            "{} MiB is more than the {limit} MiB an image file may have",
            n >> 20
        ),
        None => format!("more than the {limit} MiB an image file may have"),
    }
}

/// Decodes an encoded image held in memory (JPEG, PNG, WebP, GIF, BMP, TIFF; the content decides
/// the format). The error is the reason alone, for the caller to put after the image's name.
pub fn decode_rgb8(bytes: &[u8]) -> Result<Rgb8, String> {
    if bytes.is_empty() {
        return Err("empty file, not an image".into());
    }
    let format = image::guess_format(bytes).map_err(|_| {
        "not an image in a format maple reads (JPEG, PNG, WebP, GIF, BMP, TIFF)".to_string()
    })?;
    if format == ImageFormat::Jpeg {
        return decode_jpeg(bytes).map_err(|e| format!("cannot decode JPEG ({e})"));
    }
    if format == ImageFormat::Gif {
        return decode_gif(bytes);
    }
    if format == ImageFormat::Tiff {
        if let Some(img) = decode_tiff_jpeg(bytes) {
            return img;
        }
    }
    let decode = |bytes: &[u8]| {
        let mut reader = ImageReader::with_format(std::io::Cursor::new(bytes), format);
        reader.limits(image::Limits::default());
        reader.decode()
    };
    match decode(bytes) {
        Ok(img) => Ok(to_rgb8(img)),
        // Pillow opens a PNG whose IEND chunk is missing when its image data is complete.
        Err(_) if format == ImageFormat::Png && !bytes.ends_with(PNG_IEND) => {
            let mut whole = bytes.to_vec();
            whole.extend_from_slice(PNG_IEND);
            decode(&whole)
                .map(to_rgb8)
                .map_err(|e| format!("cannot decode image ({e})"))
        }
        // Palette and floating-point TIFFs, which the image crate does not read.
        Err(e) if format == ImageFormat::Tiff => {
            decode_tiff(bytes)?.ok_or_else(|| format!("cannot decode image ({e})"))
        }
        Err(e) => Err(format!("cannot decode image ({e})")),
    }
}

/// A JPEG-compressed RGB TIFF in strips, as libtiff + libjpeg decode it for Pillow: each strip
/// is a JPEG stream (completed with the file's shared tables) given to libjpeg-turbo, like
/// plain JPEGs. `None` for any other TIFF (tiles, YCbCr, other compressions), which the image
/// crate decodes.
fn decode_tiff_jpeg(bytes: &[u8]) -> Option<Result<Rgb8, String>> {
    use tiff::decoder::Decoder;
    use tiff::tags::Tag;
    let mut d = Decoder::new(std::io::Cursor::new(bytes)).ok()?;
    let tag = |d: &mut Decoder<_>, t: Tag| d.find_tag_unsigned::<u64>(t).ok().flatten();
    let plain_rgb_jpeg = tag(&mut d, Tag::Compression) == Some(7)
        && tag(&mut d, Tag::PhotometricInterpretation) == Some(2)
        && tag(&mut d, Tag::PlanarConfiguration).unwrap_or(1) == 1
        && tag(&mut d, Tag::TileWidth).is_none();
    if !plain_rgb_jpeg {
        return None;
    }
    let (w, h) = d.dimensions().ok()?;
    let (w, h) = (w as usize, h as usize);
    let rows = tag(&mut d, Tag::RowsPerStrip).map_or(h, |r| (r as usize).min(h));
    let offsets = d.get_tag_u64_vec(Tag::StripOffsets).ok()?;
    let counts = d.get_tag_u64_vec(Tag::StripByteCounts).ok()?;
    let tables = d.get_tag_u8_vec(Tag::JPEGTables).ok();
    Some((|| {
        check_pixels(w, h)?;
        if rows == 0 || offsets.len() != h.div_ceil(rows) || counts.len() != offsets.len() {
            return Err("cannot decode TIFF (its strips do not cover the image)".into());
        }
        let mut data = Vec::with_capacity(w * h * 3);
        for (i, (&off, &n)) in offsets.iter().zip(&counts).enumerate() {
            let strip = usize::try_from(off)
                .ok()
                .zip(usize::try_from(n).ok())
                .and_then(|(o, n)| bytes.get(o..o.checked_add(n)?))
                .ok_or("file is truncated: a TIFF strip lies past its end")?;
            let jpeg = match (&tables, strip.strip_prefix(&[0xFF, 0xD8])) {
                (Some(t), Some(body)) if t.ends_with(&[0xFF, 0xD9]) => {
                    [&t[..t.len() - 2], body].concat()
                }
                _ => strip.to_vec(),
            };
            let img = decode_jpeg(&jpeg)?;
            let want = rows.min(h - i * rows);
            if img.width != w || img.height != want {
                return Err(format!(
                    "cannot decode TIFF (strip {i} is {}×{}, not {w}×{want})",
                    img.width, img.height
                ));
            }
            data.extend_from_slice(&img.data);
        }
        Ok(Rgb8 {
            width: w,
            height: h,
            data,
        })
    })())
}

/// A copy of a classic TIFF whose first image is a palette image (photometric interpretation 3),
/// marked as gray (1) instead, so that its samples decode as the palette indices they are.
fn palette_as_gray(b: &[u8]) -> Option<Vec<u8>> {
    let le = match b.get(..4)? {
        [b'I', b'I', 42, 0] => true,
        [b'M', b'M', 0, 42] => false,
        _ => return None,
    };
    let u16_at = |i: usize| {
        let x = [*b.get(i)?, *b.get(i + 1)?];
        Some(if le {
            u16::from_le_bytes(x)
        } else {
            u16::from_be_bytes(x)
        })
    };
    let u32_at = |i: usize| {
        let x = [*b.get(i)?, *b.get(i + 1)?, *b.get(i + 2)?, *b.get(i + 3)?];
        Some(if le {
            u32::from_le_bytes(x)
        } else {
            u32::from_be_bytes(x)
        })
    };
    let ifd = u32_at(4)? as usize;
    for k in 0..usize::from(u16_at(ifd)?) {
        let e = ifd + 2 + 12 * k;
        // PhotometricInterpretation, SHORT, one value: RGB palette.
        if u16_at(e)? == 262 && u16_at(e + 2)? == 3 && u32_at(e + 4)? == 1 && u16_at(e + 8)? == 3 {
            let mut out = b.to_vec();
            let one = if le {
                1u16.to_le_bytes()
            } else {
                1u16.to_be_bytes()
            };
            out[e + 8..e + 10].copy_from_slice(&one);
            return Some(out);
        }
    }
    None
}

/// A PNG's closing chunk: length 0, `IEND`, its CRC.
const PNG_IEND: &[u8] = b"\0\0\0\0IEND\xaeB`\x82";

/// The TIFFs Pillow opens and the image crate does not: 8-bit palette images (mode `P`; the
/// 16-bit colour map is cut to 8 bits as Pillow cuts it, `v // 256`) and 32-bit float gray
/// (mode `F`, which Pillow's `convert("RGB")` clips to 0..=255 and truncates). `Ok(None)` for
/// anything else.
fn decode_tiff(bytes: &[u8]) -> Result<Option<Rgb8>, String> {
    use tiff::decoder::{Decoder, DecodingResult};
    use tiff::ColorType;
    let bad = |e: tiff::TiffError| format!("cannot decode TIFF ({e})");
    // The tiff crate refuses palette images outright; read one as gray to get its indices.
    let as_gray = palette_as_gray(bytes);
    let palette = as_gray.is_some();
    let bytes = as_gray.as_deref().unwrap_or(bytes);
    let mut d = Decoder::new(std::io::Cursor::new(bytes)).map_err(bad)?;
    let (w, h) = d.dimensions().map_err(bad)?;
    let (w, h) = (w as usize, h as usize);
    check_pixels(w, h)?;
    let ct = d.colortype().map_err(bad)?;
    let pixels = match (ct, d.read_image().map_err(bad)?) {
        (ColorType::Gray(8), DecodingResult::U8(ix)) if palette => {
            let map = d.get_tag_u16_vec(tiff::tags::Tag::ColorMap).map_err(bad)?;
            let n = map.len() / 3;
            let mut out = Vec::with_capacity(ix.len() * 3);
            for &i in &ix {
                let i = usize::from(i);
                for c in 0..3 {
                    out.push(map.get(c * n + i).map_or(0, |&v| (v >> 8) as u8));
                }
            }
            out
        }
        (ColorType::Gray(32), DecodingResult::F32(v)) => v
            .iter()
            .flat_map(|&x| [x as u8; 3]) // saturating, NaN → 0: Pillow's F → L
            .collect(),
        _ => return Ok(None),
    };
    if pixels.len() != w * h * 3 {
        return Err("file is truncated: the TIFF has too few pixels".into());
    }
    Ok(Some(Rgb8 {
        width: w,
        height: h,
        data: pixels,
    }))
}

/// Largest image accepted (pixels): about 16k × 16k.
pub const MAX_PIXELS: usize = 1 << 28;

/// The error for an image over [`MAX_PIXELS`], checked before its pixels are allocated.
fn check_pixels(width: usize, height: usize) -> Result<(), String> {
    if width.saturating_mul(height) > MAX_PIXELS {
        return Err(format!("{width}×{height} pixels is too large"));
    }
    Ok(())
}

/// JPEG through libjpeg-turbo's decoder (islow IDCT, fancy upsampling: Pillow's defaults), so the
/// pixels equal Pillow's, CMYK and YCCK files included (converted as Pillow converts them).
fn decode_jpeg(bytes: &[u8]) -> Result<Rgb8, String> {
    // libjpeg pads a cut-off scan with gray and only warns; Pillow refuses such a file
    // ("image file is truncated"). Walk the markers to the end-of-image marker that closes the
    // image (bytes after it, such as a motion photo's video, are not the image's).
    let bytes = &bytes[..jpeg_end(bytes)?];
    let r = std::panic::catch_unwind(|| -> std::io::Result<Rgb8> {
        let d = mozjpeg::Decompress::new_mem(bytes)?;
        let (width, height) = (d.width(), d.height());
        check_pixels(width, height).map_err(std::io::Error::other)?;
        if matches!(
            d.color_space(),
            mozjpeg::ColorSpace::JCS_CMYK | mozjpeg::ColorSpace::JCS_YCCK
        ) {
            let mut s = d.to_colorspace(mozjpeg::ColorSpace::JCS_CMYK)?;
            let cmyk: Vec<u8> = s.read_scanlines()?;
            s.finish()?;
            if cmyk.len() != width * height * 4 {
                return Err(std::io::Error::other("truncated image data"));
            }
            return Ok(Rgb8 {
                width,
                height,
                data: cmyk_to_rgb(&cmyk),
            });
        }
        let mut s = d.rgb()?;
        let data: Vec<u8> = s.read_scanlines()?;
        s.finish()?;
        if data.len() != width * height * 3 {
            return Err(std::io::Error::other("truncated image data"));
        }
        Ok(Rgb8 {
            width,
            height,
            data,
        })
    });
    match r {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("the JPEG decoder failed".into()),
    }
}

/// A GIF's first frame as Pillow opens it (mode `P`, then `convert("RGB")`): the frame is drawn on
/// a canvas of the logical screen (grown if the frame reaches past it) whose other pixels hold
/// palette index 0, or the frame's transparent index if it has one; every index then takes its
/// colour from the frame's own palette, else the global one (no palette: gray levels).
fn decode_gif(bytes: &[u8]) -> Result<Rgb8, String> {
    let bad = |e: gif::DecodingError| format!("cannot decode GIF ({e})");
    let mut opts = gif::DecodeOptions::new();
    opts.set_color_output(gif::ColorOutput::Indexed);
    if let Some(limit) = std::num::NonZeroU64::new(MAX_PIXELS as u64) {
        opts.set_memory_limit(gif::MemoryLimit::Bytes(limit));
    }
    let mut d = opts.read_info(std::io::Cursor::new(bytes)).map_err(bad)?;
    let global = d.global_palette().map(<[u8]>::to_vec);
    let (sw, sh) = (usize::from(d.width()), usize::from(d.height()));
    let f = d
        .read_next_frame()
        .map_err(bad)?
        .ok_or("cannot decode GIF (it has no image)")?;
    let (x0, y0) = (usize::from(f.left), usize::from(f.top));
    let (fw, fh) = (usize::from(f.width), usize::from(f.height));
    let (w, h) = (sw.max(x0 + fw), sh.max(y0 + fh));
    if w == 0 || h == 0 {
        return Err("cannot decode GIF (the image is empty)".into());
    }
    check_pixels(w, h)?;
    if f.buffer.len() < fw * fh {
        return Err("file is truncated: the GIF frame has too few pixels".into());
    }
    let mut index = vec![f.transparent.unwrap_or(0); w * h];
    for r in 0..fh {
        index[(y0 + r) * w + x0..][..fw].copy_from_slice(&f.buffer[r * fw..][..fw]);
    }
    let palette = f.palette.as_deref().or(global.as_deref());
    let mut data = Vec::with_capacity(w * h * 3);
    for &i in &index {
        let i = usize::from(i);
        match palette {
            Some(p) if 3 * i + 3 <= p.len() => data.extend_from_slice(&p[3 * i..3 * i + 3]),
            _ => data.extend_from_slice(&[i as u8; 3]),
        }
    }
    Ok(Rgb8 {
        width: w,
        height: h,
        data,
    })
}

/// Pillow's CMYK → RGB (`cmyk2rgb` in its Convert.c): R = (255 − K) − C·(255 − K)/255 with
/// Pillow's rounded division, likewise G from M and B from Y, on samples stored inverted
/// (Adobe's convention, which Pillow assumes for every CMYK JPEG: its raw mode `CMYK;I`).
fn cmyk_to_rgb(cmyk: &[u8]) -> Vec<u8> {
    let muldiv255 = |a: i32, b: i32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    let mut out = Vec::with_capacity(cmyk.len() / 4 * 3);
    for p in cmyk.chunks_exact(4) {
        let v = |i: usize| 255 - i32::from(p[i]);
        let nk = 255 - v(3);
        for c in 0..3 {
            out.push((nk - muldiv255(v(c), nk)).clamp(0, 255) as u8);
        }
    }
    out
}

/// Walks a JPEG's segments and entropy-coded scans as libjpeg reads them, to the end-of-image
/// marker; returns the offset just past it. `Err` when the file ends before it (a truncated
/// file, as Pillow reports it).
fn jpeg_end(b: &[u8]) -> Result<usize, String> {
    const TRUNCATED: &str = "file is truncated: the image data ends before its end marker";
    if !b.starts_with(&[0xFF, 0xD8]) {
        return Err("not a JPEG (no start-of-image marker)".into());
    }
    let (mut i, mut scans) = (2usize, 0usize);
    loop {
        // Markers: 0xFF, any fill 0xFF bytes, then the code. libjpeg skips stray bytes between
        // segments (with a warning), and so does this walk.
        while i < b.len() && b[i] != 0xFF {
            i += 1;
        }
        while i < b.len() && b[i] == 0xFF {
            i += 1;
        }
        let Some(&m) = b.get(i) else {
            return Err(TRUNCATED.into());
        };
        i += 1;
        match m {
            0xD9 if scans > 0 => return Ok(i),
            0xD9 => return Err("no image data before the end-of-image marker".into()),
            0x00 | 0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let len = match b.get(i..i + 2) {
            Some(l) => usize::from(u16::from_be_bytes([l[0], l[1]])),
            None => return Err(TRUNCATED.into()),
        };
        if len < 2 {
            return Err(format!("corrupt segment length {len} at byte {i}"));
        }
        if i + len > b.len() {
            return Err(TRUNCATED.into());
        }
        i += len;
        if m == 0xDA {
            scans += 1;
            // Entropy-coded data runs to the next marker that is not a stuffed zero or a
            // restart marker.
            loop {
                let Some(p) = b[i..].iter().position(|&x| x == 0xFF) else {
                    return Err(TRUNCATED.into());
                };
                let mut k = i + p + 1;
                while k < b.len() && b[k] == 0xFF {
                    k += 1;
                }
                match b.get(k) {
                    None => return Err(TRUNCATED.into()),
                    Some(0x00 | 0xD0..=0xD7) => i = k + 1,
                    Some(_) => {
                        i += p;
                        break;
                    }
                }
            }
        }
    }
}

/// Pillow's conversions to RGB: 16-bit RGB(A) PNGs are opened by Pillow as 8-bit by keeping the
/// high byte; 16-bit gray opens as mode `I;16`/`I`, whose conversion to 8 bits clamps to 0..=255.
pub fn to_rgb8(img: DynamicImage) -> Rgb8 {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut data = Vec::with_capacity(w * h * 3);
    match img {
        DynamicImage::ImageRgb8(b) => data = b.into_raw(),
        DynamicImage::ImageRgba8(b) => {
            for p in b.pixels() {
                data.extend_from_slice(&p.0[..3]);
            }
        }
        DynamicImage::ImageLuma8(b) => {
            for p in b.pixels() {
                data.extend_from_slice(&[p.0[0]; 3]);
            }
        }
        DynamicImage::ImageLumaA8(b) => {
            for p in b.pixels() {
                data.extend_from_slice(&[p.0[0]; 3]);
            }
        }
        DynamicImage::ImageLuma16(b) => {
            for p in b.pixels() {
                data.extend_from_slice(&[p.0[0].min(255) as u8; 3]);
            }
        }
        DynamicImage::ImageLumaA16(b) => {
            for p in b.pixels() {
                data.extend_from_slice(&[(p.0[0] >> 8) as u8; 3]);
            }
        }
        DynamicImage::ImageRgb16(b) => {
            for p in b.pixels() {
                data.extend(p.0.iter().map(|&v| (v >> 8) as u8));
            }
        }
        DynamicImage::ImageRgba16(b) => {
            for p in b.pixels() {
                data.extend(p.0[..3].iter().map(|&v| (v >> 8) as u8));
            }
        }
        other => data = other.to_rgb8().into_raw(),
    }
    Rgb8 {
        width: w,
        height: h,
        data,
    }
}
