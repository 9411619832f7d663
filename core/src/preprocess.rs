//! Image preprocessing, bit-exact with torchvision `Resize(S, BICUBIC)` + `CenterCrop(S)` on a PIL
//! image (docs/model.md §3): Pillow's fixed-point bicubic (22 fractional bits, a = −0.5), horizontal pass
//! then vertical, long side truncated, crop offsets rounded half-to-even, then CLIP's mean/std.
//!
//! Every output pixel of a Pillow resize depends only on its own coefficient window, so only the
//! pixels inside the centre crop are computed; the values are the same as resizing everything.

use crate::error::{Error, Result};
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

/// CLIP's normalisation constants, written as in OpenAI's and MaPLe's configs.
#[allow(clippy::excessive_precision)]
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's per-channel standard deviation (OpenAI's).
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

const PRECISION_BITS: u32 = 22;

/// Pillow's `bicubic_filter` with a = −0.5 (same operation order, in f64).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = if x < 0.0 { -x } else { x };
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Fixed-point coefficients of one output sample: first input index and weights.
struct Coeffs {
    start: usize,
    weights: Vec<i32>,
}

/// Pillow `precompute_coeffs` + `normalize_coeffs_8bpc` for output index `o`.
fn coeffs(in_size: usize, out_size: usize, o: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = if scale < 1.0 { 1.0 } else { scale };
    let support = 2.0 * filterscale;
    let center = (o as f64 + 0.5) * scale;
    let ss = 1.0 / filterscale;
    let xmin = ((center - support + 0.5) as i64).max(0) as usize;
    let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
    let n = xmax.saturating_sub(xmin);
    let mut w: Vec<f64> = (0..n)
        .map(|x| bicubic(((x + xmin) as f64 - center + 0.5) * ss))
        .collect();
    let ww: f64 = w.iter().sum();
    if ww != 0.0 {
        for v in w.iter_mut() {
            *v /= ww;
        }
    }
    let one = (1u64 << PRECISION_BITS) as f64;
    Coeffs {
        start: xmin,
        weights: w
            .iter()
            .map(|&k| {
                if k < 0.0 {
                    (-0.5 + k * one) as i32
                } else {
                    (0.5 + k * one) as i32
                }
            })
            .collect(),
    }
}

/// Pillow's `clip8`: floor-shift out the fraction, clamp to 0..=255.
#[inline]
fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// torchvision `Resize(size)` geometry: the short side becomes `size`, the long side
/// `int(size · long / short)` (truncated).
pub fn resized_dims(w: usize, h: usize, size: usize) -> (usize, usize) {
    if w <= h {
        (size, (size as f64 * h as f64 / w as f64) as usize)
    } else {
        ((size as f64 * w as f64 / h as f64) as usize, size)
    }
}

/// torchvision `center_crop` offset: `round((len − size) / 2)` with round-half-to-even.
pub fn crop_offset(len: usize, size: usize) -> usize {
    let d = len - size;
    let half = d / 2;
    if d % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

/// Resize (shorter side → `size`) and centre-crop an RGB8 image to `size × size` RGB8.
pub fn resize_crop_rgb8(rgb: &[u8], w: usize, h: usize, size: usize) -> Result<Vec<u8>> {
    if w == 0 || h == 0 {
        return Err(Error::Input(format!("image is {w}×{h} pixels")));
    }
    if rgb.len() != w * h * 3 {
        return Err(Error::Input(format!(
            "{w}×{h} RGB image needs {} bytes, got {}",
            w * h * 3,
            rgb.len()
        )));
    }
    if size == 0 {
        return Err(Error::Input("crop size is 0".into()));
    }
    let (nw, nh) = resized_dims(w, h, size);
    if nw < size || nh < size || nw > 1 << 20 || nh > 1 << 20 {
        return Err(Error::Input(format!(
            "a {w}×{h} image is too elongated to resize (would become {nw}×{nh})"
        )));
    }
    let (left, top) = (crop_offset(nw, size), crop_offset(nh, size));

    // Vertical coefficients for the output rows we keep, and the input rows they read.
    let vco: Option<Vec<Coeffs>> =
        (nh != h).then(|| (top..top + size).map(|o| coeffs(h, nh, o)).collect());
    let (r0, r1) = match &vco {
        Some(v) => (
            v.iter().map(|c| c.start).min().unwrap_or(0),
            v.iter()
                .map(|c| c.start + c.weights.len())
                .max()
                .unwrap_or(0),
        ),
        None => (top, top + size),
    };
    // Horizontal pass over rows r0..r1, only the kept columns → tmp [(r1 − r0), size, 3].
    let rows = r1 - r0;
    let mut tmp = vec![0u8; rows * size * 3];
    if nw != w {
        let hco: Vec<Coeffs> = (left..left + size).map(|o| coeffs(w, nw, o)).collect();
        for y in 0..rows {
            let src = &rgb[(r0 + y) * w * 3..(r0 + y + 1) * w * 3];
            for (x, c) in hco.iter().enumerate() {
                for ch in 0..3 {
                    let mut acc: i64 = 1 << (PRECISION_BITS - 1);
                    for (i, &k) in c.weights.iter().enumerate() {
                        acc += src[(c.start + i) * 3 + ch] as i64 * k as i64;
                    }
                    tmp[(y * size + x) * 3 + ch] = clip8(acc);
                }
            }
        }
    } else {
        for y in 0..rows {
            let src = &rgb[((r0 + y) * w + left) * 3..][..size * 3];
            tmp[y * size * 3..(y + 1) * size * 3].copy_from_slice(src);
        }
    }
    let mut out = vec![0u8; size * size * 3];
    match vco {
        Some(v) => {
            for (y, c) in v.iter().enumerate() {
                for x in 0..size * 3 {
                    let mut acc: i64 = 1 << (PRECISION_BITS - 1);
                    for (i, &k) in c.weights.iter().enumerate() {
                        acc += tmp[(c.start - r0 + i) * size * 3 + x] as i64 * k as i64;
                    }
                    out[y * size * 3 + x] = clip8(acc);
                }
            }
        }
        None => out.copy_from_slice(&tmp[..size * size * 3]),
    }
    Ok(out)
}

/// Pillow `Image.resize((ow, oh), BICUBIC, box)` of the `bw × bh` region at (`x0`, `y0`) of an
/// RGB8 image (torchvision `resized_crop` on a PIL image, as `RandomResizedCrop` does): the
/// horizontal pass first, then the vertical one, each skipped when its size does not change.
#[allow(clippy::too_many_arguments)]
pub fn resize_box_rgb8(
    rgb: &[u8],
    w: usize,
    h: usize,
    (x0, y0, bw, bh): (usize, usize, usize, usize),
    ow: usize,
    oh: usize,
) -> Result<Vec<u8>> {
    if rgb.len() != w * h * 3
        || bw == 0
        || bh == 0
        || x0 + bw > w
        || y0 + bh > h
        || ow == 0
        || oh == 0
    {
        return Err(Error::Input(format!(
            "box {bw}×{bh} at ({x0}, {y0}) does not fit a {w}×{h} RGB image of {} bytes, or an empty output",
            rgb.len()
        )));
    }
    // Horizontal: rows y0..y0+bh, bw → ow columns.
    let mut tmp = vec![0u8; bh * ow * 3];
    if ow != bw {
        let hco: Vec<Coeffs> = (0..ow).map(|o| coeffs(bw, ow, o)).collect();
        for y in 0..bh {
            let src = &rgb[((y0 + y) * w + x0) * 3..][..bw * 3];
            for (x, c) in hco.iter().enumerate() {
                for ch in 0..3 {
                    let mut acc: i64 = 1 << (PRECISION_BITS - 1);
                    for (i, &k) in c.weights.iter().enumerate() {
                        acc += src[(c.start + i) * 3 + ch] as i64 * k as i64;
                    }
                    tmp[(y * ow + x) * 3 + ch] = clip8(acc);
                }
            }
        }
    } else {
        for y in 0..bh {
            tmp[y * ow * 3..(y + 1) * ow * 3]
                .copy_from_slice(&rgb[((y0 + y) * w + x0) * 3..][..bw * 3]);
        }
    }
    if oh == bh {
        return Ok(tmp);
    }
    let mut out = vec![0u8; oh * ow * 3];
    for y in 0..oh {
        let c = coeffs(bh, oh, y);
        for x in 0..ow * 3 {
            let mut acc: i64 = 1 << (PRECISION_BITS - 1);
            for (i, &k) in c.weights.iter().enumerate() {
                acc += tmp[(c.start + i) * ow * 3 + x] as i64 * k as i64;
            }
            out[y * ow * 3 + x] = clip8(acc);
        }
    }
    Ok(out)
}

/// ToTensor + Normalize: RGB8 `[S, S, 3]` → f32 `[3, S, S]`, `(u/255 − mean) / std` in f32.
pub fn normalize_into(crop: &[u8], size: usize, out: &mut [f32]) -> Result<()> {
    if crop.len() != size * size * 3 || out.len() != 3 * size * size {
        return Err(Error::Input("crop and output sizes do not match".into()));
    }
    for c in 0..3 {
        for i in 0..size * size {
            out[c * size * size + i] =
                (crop[i * 3 + c] as f32 / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c];
        }
    }
    Ok(())
}

/// RGBA8 → RGB8 by dropping alpha (never compositing), as Pillow's `convert("RGB")` does.
pub fn rgb_from_rgba(rgba: &[u8]) -> Vec<u8> {
    rgba.chunks_exact(4)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect()
}

/// The whole CLIP/MaPLe test transform on an RGB8 image → `[3, S, S]` f32.
pub fn preprocess(rgb: &[u8], w: usize, h: usize, size: usize) -> Result<Vec<f32>> {
    let crop = resize_crop_rgb8(rgb, w, h, size)?;
    let mut out = vec![0.0; 3 * size * size];
    normalize_into(&crop, size, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_examples_from_the_spec() {
        assert_eq!(resized_dims(451, 300, 224), (336, 224));
        assert_eq!(resized_dims(640, 427, 224), (335, 224));
        assert_eq!(resized_dims(640, 97, 224), (1477, 224));
        assert_eq!(resized_dims(31, 500, 224), (224, 3612));
        assert_eq!(crop_offset(1477, 224), 626);
        assert_eq!(crop_offset(335, 224), 56);
        assert_eq!(crop_offset(3612, 224), 1694);
        assert_eq!(crop_offset(224, 224), 0);
    }

    #[test]
    fn coefficients_sum_to_one_in_fixed_point() {
        for (i, o) in [(451, 336), (100, 224), (3000, 224), (7, 224)] {
            for x in [0, o / 2, o - 1] {
                let c = coeffs(i, o, x);
                let s: i64 = c.weights.iter().map(|&v| v as i64).sum();
                assert!(
                    (s - (1 << 22)).abs() <= c.weights.len() as i64,
                    "{i}->{o} @ {x}: {s}"
                );
            }
        }
    }

    #[test]
    fn flat_image_stays_flat_and_bad_sizes_are_errors() {
        let img = vec![77u8; 50 * 30 * 3];
        let out = resize_crop_rgb8(&img, 50, 30, 24).unwrap();
        assert!(out.iter().all(|&v| v == 77));
        assert!(resize_crop_rgb8(&img, 0, 30, 24).is_err());
        assert!(resize_crop_rgb8(&img[1..], 50, 30, 24).is_err());
        // 1×100000 would resize to 224×22400000: refused, not allocated.
        let e = resize_crop_rgb8(&vec![0; 300_000], 1, 100_000, 224).unwrap_err();
        assert!(alloc::format!("{e}").contains("too elongated"));
    }
}
