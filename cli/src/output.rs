//! Result records in text, JSON lines or CSV; a failed image is a record too.

use crate::classify::{top_k, ImageResult};
use crate::labels::Label;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Format {
    Text,
    Json,
    Csv,
}

/// What goes before the first record (the CSV header).
pub fn header(f: Format) -> String {
    match f {
        Format::Csv => "image,rank,label,logit,prob,error\n".into(),
        _ => String::new(),
    }
}

pub fn record(
    f: Format,
    labels: &[Label],
    image: &str,
    r: &Result<ImageResult, String>,
    k: usize,
) -> String {
    match (f, r) {
        (Format::Json, Ok(r)) => format!("{}\n", crate::classify::json_line(labels, r, k)),
        (Format::Json, Err(e)) => format!("{}\n", serde_json::json!({"image": image, "error": e})),
        (Format::Text, Ok(r)) => crate::classify::text_block(labels, r, k),
        (Format::Text, Err(e)) => format!("{image}\n  error: {e}\n"),
        (Format::Csv, Ok(r)) => top_k(&r.logits, k)
            .into_iter()
            .enumerate()
            .map(|(rank, i)| {
                format!(
                    "{},{},{},{},{},\n",
                    csv(image),
                    rank + 1,
                    csv(&labels[i].text),
                    r.logits[i],
                    r.probs[i]
                )
            })
            .collect(),
        (Format::Csv, Err(e)) => format!("{},,,,,{}\n", csv(image), csv(e)),
    }
}

/// RFC 4180 quoting where needed.
pub fn csv(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
