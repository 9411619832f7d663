//! Odd but valid image files decode to exactly the pixels Pillow gives
//! (`Image.open(p).convert("RGB")`), saved beside each file as NAME.pillow.png by
//! `tools/reference/make_odd_images.py`.

use maple::imageio::load_rgb8;
use std::path::Path;

fn odd(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/odd")
        .join(name)
}

/// `None` when equal, else what differs.
fn differs(name: &str) -> Option<String> {
    let ours = match load_rgb8(&odd(name)) {
        Ok(img) => img,
        Err(e) => return Some(format!("{name}: not decoded: {e}")),
    };
    let want = image::open(odd(&format!("{name}.pillow.png")))
        .unwrap()
        .to_rgb8();
    let size = (want.width() as usize, want.height() as usize);
    if (ours.width, ours.height) != size {
        return Some(format!(
            "{name}: {}×{} pixels, Pillow {}×{}",
            ours.width, ours.height, size.0, size.1
        ));
    }
    let want = want.into_raw();
    let (mut n, mut max) = (0, 0u8);
    for (a, b) in ours.data.iter().zip(&want) {
        n += usize::from(a != b);
        max = max.max(a.abs_diff(*b));
    }
    (n > 0).then(|| format!("{name}: {n} samples differ from Pillow's, by up to {max}"))
}

fn all_equal(names: &[&str]) {
    let bad: Vec<String> = names.iter().filter_map(|n| differs(n)).collect();
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn gif_first_frames_that_do_not_cover_the_screen() {
    all_equal(&[
        "gif_partial_frame.gif",
        "gif_partial_transparent.gif",
        "gif_local_palette.gif",
        "gif_frame_past_screen.gif",
    ]);
}

#[test]
fn jpeg_with_a_video_after_it_and_cmyk_jpeg() {
    all_equal(&["jpeg_motion_photo.jpg", "cmyk_100x80.jpg"]);
}

#[test]
fn png_without_iend() {
    all_equal(&["png_no_iend.png"]);
}

#[test]
fn palette_float_and_jpeg_tiffs() {
    all_equal(&[
        "palette_100x80.tiff",
        "float_60x40.tiff",
        "jpeg_in_tiff_100x80.tiff",
        "jpeg_in_tiff_strips_451x300.tiff",
    ]);
}
