//! Label lists and MaPLe's prompts: one label per line; blank lines and `#` comments skipped;
//! `_` read as a space; the prompt for a label is `"{template} {name}."` (docs/model.md §7).

use crate::tokenizer::ClipTokenizer;
use crate::TextError;
use std::collections::HashMap;

/// Longest label accepted, in bytes, before any tokenizing: a prompt holds 77 tokens, so no
/// usable label comes near this, and a runaway line (a binary file, `/dev/zero`) stops here
/// instead of costing gigabytes in the tokenizer.
pub const MAX_LABEL_BYTES: usize = 4096;

/// How much of a label an error quotes.
const QUOTE_CHARS: usize = 60;

/// Characters that draw nothing: zero-width spaces and joiners, direction marks, word joiner,
/// soft hyphen, byte-order mark. A label made of these (and spaces) is empty to a person, though
/// CLIP's byte-level tokenizer would give it tokens.
fn invisible(c: char) -> bool {
    c.is_whitespace()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{2060}'..='\u{2064}' | '\u{feff}' | '\u{ad}' | '\u{180e}')
}

/// `s` for an error message: at most [`QUOTE_CHARS`] characters, then `…`.
fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// One class.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    /// As written (trimmed): what outputs show.
    pub text: String,
    /// With `_` → space and runs of spaces collapsed: what goes into the prompt.
    pub name: String,
}

impl Label {
    /// A label from its written form.
    pub fn new(text: &str) -> Label {
        let t = text.trim();
        let name = t.replace('_', " ");
        let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
        Label {
            text: t.to_string(),
            name,
        }
    }
}

/// Labels and where they came from (a file name, `--labels`, …), which errors name.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelSet {
    /// The labels, in order.
    pub labels: Vec<Label>,
    /// Where they came from, for errors.
    pub origin: String,
}

impl LabelSet {
    /// Parses the text of a labels file: one label per line (`\n`, `\r\n` or a lone `\r`
    /// ends a line), blank lines and `#` lines skipped, a leading UTF-8 byte-order mark ignored.
    pub fn parse(text: &str, origin: &str) -> Result<LabelSet, TextError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let lines = text
            .split('\n')
            .flat_map(|l| l.strip_suffix('\r').unwrap_or(l).split('\r'))
            .enumerate()
            .map(|(i, l)| (i, l.trim()))
            .filter(|(_, t)| !t.is_empty() && !t.starts_with('#'))
            .map(|(i, t)| (format!("line {}: ", i + 1), t));
        Self::build(lines, origin)
    }

    /// Parses an inline, comma-separated list (`"cat,dog,a red car"`, as `--labels` takes
    /// it): the rules of [`parse`](Self::parse), items numbered `item N` in errors.
    pub fn parse_inline(list: &str, origin: &str) -> Result<LabelSet, TextError> {
        let items = list
            .split(',')
            .enumerate()
            .map(|(i, l)| (i, l.trim()))
            .filter(|(_, t)| !t.is_empty() && !t.starts_with('#'))
            .map(|(i, t)| (format!("item {}: ", i + 1), t));
        Self::build(items, origin)
    }

    /// Labels from a list (`["cat", "dog"]`); each is trimmed, none may be empty.
    pub fn from_names<I, S>(names: I, origin: &str) -> Result<LabelSet, TextError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let names: Vec<S> = names.into_iter().collect();
        for (i, n) in names.iter().enumerate() {
            if n.as_ref().trim().is_empty() {
                return Err(TextError(format!("{origin}: label {} is empty", i + 1)));
            }
        }
        let items = names
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("label {}: ", i + 1), n.as_ref()));
        Self::build(items, origin)
    }

    fn build<'a>(
        items: impl Iterator<Item = (String, &'a str)>,
        origin: &str,
    ) -> Result<LabelSet, TextError> {
        let mut out: Vec<Label> = Vec::new();
        // CLIP's tokenizer lower-cases: `Cat` and `cat` are the same prompt.
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (at, t) in items {
            if t.len() > MAX_LABEL_BYTES {
                return Err(TextError(format!(
                    "{origin}: {at}label \"{}\" is too long ({} bytes; a prompt holds 77 tokens, about {MAX_LABEL_BYTES} bytes at the very most)",
                    quote(t.trim()),
                    t.len()
                )));
            }
            let l = Label::new(t);
            if l.name.chars().all(invisible) {
                return Err(TextError(format!(
                    "{origin}: {at}label \"{}\" is empty (nothing visible once `_` reads as a space)",
                    quote(&l.text)
                )));
            }
            let key = l.name.to_lowercase();
            if let Some(&prev) = seen.get(&key) {
                return Err(TextError(format!(
                    "{origin}: {at}duplicate label \"{}\" (same as \"{}\")",
                    quote(&l.text),
                    quote(&out[prev].text)
                )));
            }
            seen.insert(key, out.len());
            out.push(l);
        }
        if out.is_empty() {
            return Err(TextError(format!(
                "{origin}: no labels (one label per line; blank lines and # comments are skipped)"
            )));
        }
        Ok(LabelSet {
            labels: out,
            origin: origin.to_string(),
        })
    }

    /// How many labels.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Never true for a set built by [`LabelSet::parse`] or [`LabelSet::from_names`].
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// The prompt MaPLe builds for a class: `"{template} {name}."` (docs/model.md §7).
pub fn prompt(template: &str, label: &Label) -> String {
    format!("{} {}.", template.trim(), label.name)
}

/// Checks that a template has at least `n_ctx` words for MaPLe's learned context to replace
/// (`what` names the prompts, in errors).
pub fn check_template(
    tok: &ClipTokenizer,
    template: &str,
    n_ctx: usize,
    what: &str,
) -> Result<(), TextError> {
    let template_tokens = tok.encode(template)?.len() - 2;
    if n_ctx > template_tokens {
        return Err(TextError(format!(
            "{what}: the prompts learn {n_ctx} context tokens but the template \"{template}\" has only {template_tokens}; use a --template with at least {n_ctx} words"
        )));
    }
    Ok(())
}

/// Token rows for every label. Errors name the label (or the template): a prompt longer than
/// `max_len` tokens, a label the tokenizer reads as nothing (zero-width characters), two labels
/// that give the same prompt once cleaned (`café` / `cafe\u{301}`).
pub fn tokenize_labels(
    tok: &ClipTokenizer,
    template: &str,
    labels: &LabelSet,
    max_len: usize,
) -> Result<Vec<Vec<u32>>, TextError> {
    if template.len() > MAX_LABEL_BYTES {
        return Err(TextError(format!(
            "the template \"{}\" is too long ({} bytes)",
            quote(template),
            template.len()
        )));
    }
    let base = tok.encode(template)?.len() - 2;
    // [SOT] template label . [EOT]: the label needs at least one token.
    if base + 4 > max_len {
        return Err(TextError(format!(
            "the template \"{}\" is {base} tokens: with a label, a period and the start and end tokens it cannot fit the model's {max_len}",
            quote(template.trim())
        )));
    }
    let mut seen: HashMap<Vec<u32>, usize> = HashMap::new();
    let mut rows = Vec::with_capacity(labels.labels.len());
    for (i, l) in labels.labels.iter().enumerate() {
        let ids = tok.encode(&prompt(template, l))?;
        if ids.len() > max_len {
            let room = max_len.saturating_sub(base + 3);
            return Err(TextError(format!(
                "{}: label \"{}\" is too long: its prompt is {} tokens, the model takes {max_len} (about {room} tokens for the label after \"{}\")",
                labels.origin,
                quote(&l.text),
                ids.len(),
                quote(template.trim())
            )));
        }
        if ids.len() <= base + 3 {
            return Err(TextError(format!(
                "{}: label \"{}\" is empty to CLIP's tokenizer (no characters it reads)",
                labels.origin,
                quote(&l.text)
            )));
        }
        if let Some(&j) = seen.get(&ids) {
            return Err(TextError(format!(
                "{}: duplicate label \"{}\" (CLIP reads it as \"{}\")",
                labels.origin,
                quote(&l.text),
                quote(&labels.labels[j].text)
            )));
        }
        seen.insert(ids.clone(), i);
        rows.push(ids);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing_rules() {
        let l = LabelSet::parse("# animals\n\ngolden_retriever\n  cat  \r\n", "f").unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l.labels[0].name, "golden retriever");
        assert_eq!(l.labels[0].text, "golden_retriever");
        assert_eq!(l.labels[1].text, "cat");
        let e = LabelSet::parse("cat\ndog\ncat\n", "labels.txt").unwrap_err();
        assert_eq!(
            e.0,
            "labels.txt: line 3: duplicate label \"cat\" (same as \"cat\")"
        );
        assert!(LabelSet::parse("# only\n\n", "f")
            .unwrap_err()
            .0
            .contains("no labels"));
    }

    #[test]
    fn lists() {
        let l = LabelSet::from_names(["cat", " red_car "], "labels").unwrap();
        assert_eq!(l.labels[1].text, "red_car");
        assert_eq!(l.labels[1].name, "red car");
        let e = LabelSet::from_names(["cat", "dog", "red car", "red_car"], "labels").unwrap_err();
        assert_eq!(
            e.0,
            "labels: label 4: duplicate label \"red_car\" (same as \"red car\")"
        );
        let e = LabelSet::from_names(["cat", " "], "labels").unwrap_err();
        assert_eq!(e.0, "labels: label 2 is empty");
        let none: [&str; 0] = [];
        assert!(LabelSet::from_names(none, "labels").is_err());
    }

    #[test]
    fn template_rules() {
        let tok = ClipTokenizer::builtin().unwrap();
        assert!(check_template(&tok, "a photo of a", 2, "p").is_ok());
        let e = check_template(&tok, "photo", 2, "p.safetensors").unwrap_err();
        assert!(e
            .0
            .starts_with("p.safetensors: the prompts learn 2 context tokens"));
        let set = LabelSet::from_names(["cat"], "labels").unwrap();
        let rows = tokenize_labels(&tok, "a photo of a", &set, 77).unwrap();
        // [SOT] a photo of a cat . [EOT]
        assert_eq!(rows[0].len(), 8);
        assert_eq!(rows[0][0], 49406);
        assert_eq!(*rows[0].last().unwrap(), 49407);
        let long = LabelSet::from_names(["cat ".repeat(80)], "labels").unwrap();
        let e = tokenize_labels(&tok, "a photo of a", &long, 77).unwrap_err();
        assert!(e.0.starts_with("labels: label \"cat cat"), "{e}");
        // The label is quoted short (60 characters and an ellipsis), not in full.
        assert!(e.0.contains(&format!("{}…\"", "cat ".repeat(15))), "{e}");
        assert!(e.0.contains("its prompt is 87 tokens"), "{e}");
    }

    #[test]
    fn inline_lists_number_their_items() {
        // Issue 31 (N16): `--labels` errors said "line 1" of a list that has no lines.
        let l = LabelSet::parse_inline("cat, dog ,a red car", "--labels").unwrap();
        assert_eq!(l.labels.len(), 3);
        assert_eq!(l.labels[2].text, "a red car");
        let e = LabelSet::parse_inline("cat,dog,Cat", "--labels").unwrap_err();
        assert_eq!(
            e.0,
            "--labels: item 3: duplicate label \"Cat\" (same as \"cat\")"
        );
    }

    #[test]
    fn byte_order_mark_and_line_ends() {
        // Issue 15 (5): a BOM before a comment made the comment a label.
        let l = LabelSet::parse("\u{feff}# animals\ncat\n", "f").unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l.labels[0].text, "cat");
        // (14): lone CRs end lines (classic Mac files); line numbers follow them.
        let l = LabelSet::parse("cat\rdog\r\nfish", "f").unwrap();
        let names: Vec<&str> = l.labels.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["cat", "dog", "fish"]);
        let e = LabelSet::parse("cat\rdog\rcat", "f").unwrap_err();
        assert_eq!(e.0, "f: line 3: duplicate label \"cat\" (same as \"cat\")");
    }

    #[test]
    fn what_the_model_sees_decides_duplicates_and_empties() {
        // Issue 15 (14): `Cat`/`cat` gave one prompt twice; `___` was accepted.
        let e = LabelSet::from_names(["cat", "Cat"], "labels").unwrap_err();
        assert_eq!(
            e.0,
            "labels: label 2: duplicate label \"Cat\" (same as \"cat\")"
        );
        let e = LabelSet::from_names(["cat", "___"], "labels").unwrap_err();
        assert!(
            e.0.starts_with("labels: label 2: label \"___\" is empty"),
            "{e}"
        );
        let e = LabelSet::parse("cat\n\u{200b}\n", "z.txt").unwrap_err();
        assert!(
            e.0.starts_with("z.txt: line 2: label \"\u{200b}\" is empty"),
            "{e}"
        );
        let tok = ClipTokenizer::builtin().unwrap();
        // NFC: the same word, precomposed and decomposed.
        let nfc = LabelSet::from_names(["caf\u{e9}", "cafe\u{301}"], "labels").unwrap();
        let e = tokenize_labels(&tok, "a photo of a", &nfc, 77).unwrap_err();
        assert!(e.0.starts_with("labels: duplicate label"), "{e}");
    }

    #[test]
    fn runaway_labels_stop_before_the_tokenizer() {
        // Issue 15 (8): a 10 MB line took gigabytes in the tokenizer and a 20 MB error.
        let huge = "x".repeat(10 << 20);
        let e = LabelSet::parse(&format!("cat\n{huge}\n"), "big.txt").unwrap_err();
        assert!(e.0.starts_with("big.txt: line 2: label \"xxxx"), "{e}");
        assert!(e.0.contains("is too long (10485760 bytes"), "{e}");
        assert!(e.0.len() < 300, "error is {} bytes", e.0.len());
    }

    #[test]
    fn a_template_too_long_is_blamed_on_the_template() {
        // Issue 15 (17): the label was blamed ("about 0 tokens for the label").
        let tok = ClipTokenizer::builtin().unwrap();
        let set = LabelSet::from_names(["cat"], "labels").unwrap();
        let t = "a photo of a ".repeat(20);
        let e = tokenize_labels(&tok, &t, &set, 77).unwrap_err();
        assert!(
            e.0.starts_with("the template \"a photo of a a photo"),
            "{e}"
        );
        assert!(e.0.contains("is 80 tokens"), "{e}");
    }
}
