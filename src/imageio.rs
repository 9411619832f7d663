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
pub fn load_rgb8(path: &Path) -> Result<Rgb8, Error> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Err(Error::image(path, "is a directory, not an image"));
    }
    if meta.len() == 0 {
        return Err(Error::image(path, "empty file, not an image"));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_rgb8(&bytes).map_err(|m| Error::image(path, m))
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
        if let Some(img) = decode_jpeg(bytes).map_err(|e| format!("cannot decode JPEG ({e})"))? {
            return Ok(img);
        }
    }
    let mut reader = ImageReader::with_format(std::io::Cursor::new(bytes), format);
    reader.limits(image::Limits::default());
    let img = reader
        .decode()
        .map_err(|e| format!("cannot decode image ({e})"))?;
    Ok(to_rgb8(img))
}

/// Largest image accepted (pixels): about 16k × 16k.
const MAX_PIXELS: usize = 1 << 28;

/// JPEG through libjpeg-turbo's decoder (islow IDCT, fancy upsampling: Pillow's defaults), so the
/// pixels equal Pillow's. `Ok(None)` for CMYK/YCCK files, which go through the `image` crate.
fn decode_jpeg(bytes: &[u8]) -> Result<Option<Rgb8>, String> {
    // libjpeg pads a cut-off scan with gray and only warns; Pillow refuses such a file
    // ("image file is truncated"). Require an end-of-image marker after the last scan.
    let last = |m: u8| bytes.windows(2).rposition(|w| w == [0xFF, m]);
    match (last(0xDA), last(0xD9)) {
        (Some(sos), Some(eoi)) if eoi > sos => {}
        _ => return Err("file is truncated: no end-of-image marker after the image data".into()),
    }
    let r = std::panic::catch_unwind(|| -> std::io::Result<Option<Rgb8>> {
        let d = mozjpeg::Decompress::new_mem(bytes)?;
        if matches!(
            d.color_space(),
            mozjpeg::ColorSpace::JCS_CMYK | mozjpeg::ColorSpace::JCS_YCCK
        ) {
            return Ok(None);
        }
        let (width, height) = (d.width(), d.height());
        if width.saturating_mul(height) > MAX_PIXELS {
            return Err(std::io::Error::other(format!(
                "{width}×{height} pixels is too large"
            )));
        }
        let mut s = d.rgb()?;
        let data: Vec<u8> = s.read_scanlines()?;
        s.finish()?;
        if data.len() != width * height * 3 {
            return Err(std::io::Error::other("truncated image data"));
        }
        Ok(Some(Rgb8 {
            width,
            height,
            data,
        }))
    });
    match r {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("the JPEG decoder failed".into()),
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
