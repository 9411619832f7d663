//! Result records in text, JSON lines or CSV; a failed image is a record too.

use maple::{top_k, Classification, Label};

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
    r: &Result<Classification, String>,
    k: usize,
) -> String {
    match (f, r) {
        (Format::Json, Ok(r)) => format!("{}\n", json_line(labels, image, r, k)),
        (Format::Json, Err(e)) => format!("{}\n", serde_json::json!({"image": image, "error": e})),
        (Format::Text, Ok(r)) => text_block(labels, image, r, k),
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

/// One JSON object per image: `{"image", "scores": [{"label","logit","prob"}…], "top": […]}`.
pub fn json_line(labels: &[Label], image: &str, r: &Classification, k: usize) -> String {
    let scores: Vec<serde_json::Value> = labels
        .iter()
        .zip(r.logits.iter().zip(&r.probs))
        .map(|(l, (&logit, &prob))| serde_json::json!({"label": l.text, "logit": logit, "prob": prob}))
        .collect();
    let top: Vec<&str> = top_k(&r.logits, k)
        .into_iter()
        .map(|i| labels[i].text.as_str())
        .collect();
    serde_json::json!({"image": image, "scores": scores, "top": top}).to_string()
}

/// A readable block: the image, then its top-k labels with percentages.
pub fn text_block(labels: &[Label], image: &str, r: &Classification, k: usize) -> String {
    let mut s = format!("{image}\n");
    for i in top_k(&r.logits, k) {
        s.push_str(&format!(
            "  {:>6.2}%  {:<30}  (logit {:.3})\n",
            100.0 * r.probs[i],
            labels[i].text,
            r.logits[i]
        ));
    }
    s
}
