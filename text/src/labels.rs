//! Label lists and MaPLe's prompts: one label per line; blank lines and `#` comments skipped;
//! `_` read as a space; the prompt for a label is `"{template} {name}."` (spec §7).

use crate::tokenizer::ClipTokenizer;
use crate::TextError;

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
    /// Parses the text of a labels file: one label per line, blank lines and `#` lines skipped.
    pub fn parse(text: &str, origin: &str) -> Result<LabelSet, TextError> {
        let lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i, l.trim()))
            .filter(|(_, t)| !t.is_empty() && !t.starts_with('#'))
            .map(|(i, t)| (format!("line {}: ", i + 1), t));
        Self::build(lines, origin)
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
        for (at, t) in items {
            let l = Label::new(t);
            if let Some(prev) = out.iter().find(|p| p.name == l.name) {
                return Err(TextError(format!(
                    "{origin}: {at}duplicate label \"{}\" (same as \"{}\")",
                    l.text, prev.text
                )));
            }
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

/// The prompt MaPLe builds for a class: `"{template} {name}."` (spec §7).
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

/// Token rows for every label; a prompt longer than `max_len` tokens is an error naming it.
pub fn tokenize_labels(
    tok: &ClipTokenizer,
    template: &str,
    labels: &LabelSet,
    max_len: usize,
) -> Result<Vec<Vec<u32>>, TextError> {
    let base = tok.encode(template)?.len() - 2;
    labels
        .labels
        .iter()
        .map(|l| {
            let ids = tok.encode(&prompt(template, l))?;
            if ids.len() > max_len {
                let room = max_len.saturating_sub(base + 3);
                return Err(TextError(format!(
                    "{}: label \"{}\" is too long: the prompt \"{}\" is {} tokens, the model takes {max_len} (about {room} tokens for the label)",
                    labels.origin,
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
    }
}
