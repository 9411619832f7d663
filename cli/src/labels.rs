//! Label lists: one label per line; blank lines and `#` comments skipped; `_` read as a space.

use crate::tokenizer::ClipTokenizer;
use crate::CliError;
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    /// As written in the file (trimmed): what the output shows.
    pub text: String,
    /// With `_` → space: what goes into the prompt.
    pub name: String,
}

/// Parses the text of a labels file (`source` names it in errors).
pub fn parse_labels(text: &str, source: &str) -> Result<Vec<Label>, CliError> {
    let mut out: Vec<Label> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let name = t.replace('_', " ");
        let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
        if let Some(prev) = out.iter().find(|l| l.name == name) {
            return Err(CliError(format!(
                "{source}: line {}: duplicate label \"{t}\" (same as \"{}\")",
                i + 1,
                prev.text
            )));
        }
        out.push(Label {
            text: t.to_string(),
            name,
        });
    }
    if out.is_empty() {
        return Err(CliError(format!(
            "{source}: no labels (one label per line; blank lines and # comments are skipped)"
        )));
    }
    Ok(out)
}

pub fn read_labels(path: &Path) -> Result<Vec<Label>, CliError> {
    let bytes = std::fs::read(path).map_err(|e| CliError::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        CliError(format!(
            "{}: not UTF-8 text (byte {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })?;
    parse_labels(&text, &path.display().to_string())
}

/// The prompt MaPLe builds for a class: `"{template} {name}."` (spec §7).
pub fn prompt(template: &str, label: &Label) -> String {
    format!("{} {}.", template.trim(), label.name)
}

/// Token rows for every label; a prompt longer than `max_len` tokens is an error naming it.
pub fn tokenize_labels(
    tok: &ClipTokenizer,
    template: &str,
    labels: &[Label],
    max_len: usize,
    source: &str,
) -> Result<Vec<Vec<u32>>, CliError> {
    let base = tok.encode(template)?.len() - 2;
    labels
        .iter()
        .map(|l| {
            let ids = tok.encode(&prompt(template, l))?;
            if ids.len() > max_len {
                let room = max_len.saturating_sub(base + 3);
                return Err(CliError(format!(
                    "{source}: label \"{}\" is too long: the prompt \"{}\" is {} tokens, the model takes {max_len} (about {room} tokens for the label)",
                    l.text,
                    prompt(template, l),
                    ids.len()
                )));
            }
            Ok(ids)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing_rules() {
        let l = parse_labels("# animals\n\ngolden_retriever\n  cat  \r\n", "f").unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].name, "golden retriever");
        assert_eq!(l[0].text, "golden_retriever");
        assert_eq!(l[1].text, "cat");
        let e = parse_labels("cat\ndog\ncat\n", "labels.txt").unwrap_err();
        assert_eq!(
            e.0,
            "labels.txt: line 3: duplicate label \"cat\" (same as \"cat\")"
        );
        assert!(parse_labels("# only\n\n", "f")
            .unwrap_err()
            .0
            .contains("no labels"));
    }
}
