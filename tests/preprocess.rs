//! Preprocessing against the reference crops made by Pillow + torchvision
//! (`tools/reference/make_fixtures.py`): decode → RGB → Resize(S, BICUBIC) → CenterCrop(S).

use maple::engine::preprocess::resize_crop_rgb8;
use maple::imageio::load_rgb8;
use std::path::Path;

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// (largest per-sample difference, number of differing samples) against the Pillow crop.
fn compare(name: &str, size: usize) -> (u8, usize) {
    let img = load_rgb8(&fixtures().join("images").join(name)).unwrap();
    let ours = resize_crop_rgb8(&img.data, img.width, img.height, size).unwrap();
    let want = image::open(fixtures().join("crops").join(format!("{name}_{size}.png")))
        .unwrap()
        .to_rgb8();
    assert_eq!(
        (want.width() as usize, want.height() as usize),
        (size, size)
    );
    let want = want.into_raw();
    let mut max = 0u8;
    let mut n = 0;
    for (a, b) in ours.iter().zip(&want) {
        let d = a.abs_diff(*b);
        max = max.max(d);
        n += usize::from(d > 0);
    }
    (max, n)
}

#[test]
fn lossless_fixtures_are_bit_exact_with_pillow() {
    let names = [
        "rgb_451x300.png",     // downscale
        "rgb_100x80.png",      // upscale
        "gray_300x451.png",    // gray, portrait
        "rgba_256x256.png",    // alpha dropped before resizing (Dassl order)
        "odd_641x97.png",      // odd margin: crop offset rounds half to even
        "exact_224x224.png",   // no resampling at 224
        "gray16_120x90.png",   // 16-bit gray (Pillow clamps to 0..=255)
        "la_64x64.png",        // gray + alpha
        "palette_200x150.png", // palette
        "rgb16_77x99.png",     // 16-bit RGB (Pillow keeps the high byte)
        "rgb_150x100.bmp",
        "rgb_130x170.gif",
        "rgb_180x120.webp",
        "rgb_90x140.tiff",
    ];
    let mut bad = Vec::new();
    for n in names {
        for s in [224, 32] {
            let (max, count) = compare(n, s);
            if max != 0 {
                bad.push(format!("{n} at {s}: {count} samples differ, max {max}"));
            }
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn jpeg_fixtures_are_bit_exact_with_pillow() {
    // JPEGs go through libjpeg-turbo's decoder, as in Pillow; the image crate's own decoder
    // differed by up to 4 levels on these files.
    for n in ["photo_320x240.jpg", "photo_gray_97x131.jpg"] {
        for s in [224, 32] {
            assert_eq!(compare(n, s), (0, 0), "{n} at {s}");
        }
    }
}
