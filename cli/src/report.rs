//! `--report report.html`: one self-contained page (no external assets) with a thumbnail of each
//! image and a bar chart of its top-k scores.

use maple::imageio::Rgb8;
use maple::{top_k, Classification, Label};
use std::fmt::Write;

pub struct Entry {
    pub image: String,
    pub result: Result<Classification, String>,
    /// JPEG thumbnail bytes.
    pub thumb: Option<Vec<u8>>,
}

/// A JPEG thumbnail at most `max` pixels on its longer side (it takes the decoded image, so a
/// huge photo is never held twice).
pub fn thumbnail(img: Rgb8, max: u32) -> Option<Vec<u8>> {
    let buf = image::RgbImage::from_raw(img.width as u32, img.height as u32, img.data)?;
    let t = image::DynamicImage::ImageRgb8(buf)
        .thumbnail(max, max)
        .to_rgb8();
    let mut out = std::io::Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80)
        .encode_image(&t)
        .ok()?;
    Some(out.into_inner())
}

fn base64(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(b.len().div_ceil(3) * 4);
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page up to its first card. Cards follow as images are classified ([`card`]), then
/// [`finish`]: the page is written as it goes, so memory does not grow with the folder.
pub fn start(title: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{t}</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fafafa;display:flex;flex-direction:column}}
h1{{font-size:20px;margin:0 0 4px;order:0}} .sub{{color:#666;margin-bottom:16px;order:1}}
.grid{{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:16px;order:2}}
.card{{background:#fff;border:1px solid #ddd;border-radius:8px;padding:12px}}
.card img{{display:block;max-width:100%;max-height:160px;margin:0 auto 8px}}
.name{{font-weight:600;word-break:break-all;margin-bottom:6px}}
.row{{display:grid;grid-template-columns:9em 1fr 4.5em;align-items:center;gap:6px;margin:3px 0}}
.label{{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}}
.bar{{background:#e8eef8;height:12px;border-radius:3px}} .bar>div{{background:#3b6fd8;height:100%;border-radius:3px}}
.pct{{text-align:right;font-variant-numeric:tabular-nums}} .error{{color:#b00020}}
</style></head><body>
<h1>{t}</h1>
<div class="grid">
"#,
        t = esc(title)
    )
}

/// One image's card: its thumbnail, name and top-k bars (or its error).
pub fn card(labels: &[Label], e: &Entry, k: usize) -> String {
    let mut h = String::new();
    let _ = write!(h, "<div class=\"card\" data-image=\"{}\">", esc(&e.image));
    if let Some(t) = &e.thumb {
        let _ = write!(
            h,
            "<img alt=\"\" src=\"data:image/jpeg;base64,{}\">",
            base64(t)
        );
    }
    let _ = write!(h, "<div class=\"name\">{}</div>", esc(&e.image));
    match &e.result {
        Ok(r) => {
            for i in top_k(&r.logits, k) {
                let p = 100.0 * r.probs[i];
                let _ = write!(
                    h,
                    "<div class=\"row\"><span class=\"label\" title=\"{l}\">{l}</span><div class=\"bar\"><div style=\"width:{p:.1}%\"></div></div><span class=\"pct\">{p:.1}%</span></div>",
                    l = esc(&labels[i].text)
                );
            }
        }
        Err(m) => {
            let _ = write!(h, "<div class=\"error\">{}</div>", esc(m));
        }
    }
    h.push_str("</div>\n");
    h
}

/// The end of the page, with the counts (shown under the title: the page's CSS orders it there).
pub fn finish(images: usize, labels: usize, failed: usize) -> String {
    format!(
        "</div>\n<div class=\"sub\">{images} images, {labels} labels{}</div>\n</body></html>\n",
        if failed > 0 {
            format!(", {failed} failed")
        } else {
            String::new()
        }
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_known_values() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foobar"), "Zm9vYmFy");
    }
}
