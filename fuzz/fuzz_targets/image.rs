//! The image decoders (JPEG through libjpeg-turbo, GIF, PNG, WebP, BMP, TIFF and maple's own
//! JPEG marker walk, GIF canvas, palette and float TIFF paths): any bytes give an RGB image of
//! the size it says and within the pixel limit, or an error. Never a panic, hang or abort.
#![no_main]
use libfuzzer_sys::fuzz_target;
use maple::imageio::{decode_rgb8, MAX_PIXELS};

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = decode_rgb8(data) {
        assert!(img.width > 0 && img.height > 0);
        assert!(img.width * img.height <= MAX_PIXELS);
        assert_eq!(img.data.len(), img.width * img.height * 3);
    }
});
