//! OpenAI CLIP's text cleaning before BPE (docs/model.md §13): `ftfy.fix_text` (every step except mojibake
//! repair), `html.unescape` twice, whitespace runs → one space, strip, Python `str.lower`.
//! The tables come from Python's `html` module and ftfy (`clean_tables.rs`, generated).

use crate::clean_tables::*;
use unicode_normalization::UnicodeNormalization;

/// The text exactly as OpenAI's `SimpleTokenizer.encode` sees it before BPE.
pub fn clean(text: &str) -> String {
    let t = ftfy(text);
    let t = html_unescape(&html_unescape(&t));
    let mut out = String::with_capacity(t.len());
    for word in t.split(is_py_space).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    // Rust's `to_lowercase` follows the same Unicode mappings as Python's `str.lower`, final
    // sigma included (the HF tokenizers `Lowercase` normalizer does not).
    out.to_lowercase()
}

/// Python's `str.isspace` (what `re`'s `\s` and `str.strip` use).
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `ftfy.fix_text` on one segment, without `fix_encoding` (mojibake detection).
fn ftfy(text: &str) -> String {
    let unescape = !text.contains('<');
    let mut t = text.to_string();
    for _ in 0..16 {
        let orig = t.clone();
        if unescape {
            t = ftfy_unescape(&t);
        }
        t = t.chars().map(fix_c1).collect();
        t = translate(&t, LIGATURES);
        t = translate(&t, WIDTH_MAP);
        t = t
            .chars()
            .map(|c| match c {
                '\u{201c}'..='\u{201f}' => '"',
                '\u{2bc}' | '\u{2018}'..='\u{201b}' => '\'',
                c => c,
            })
            .collect();
        t = t
            .replace("\r\n", "\n")
            .replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n");
        t = remove_terminal_escapes(&t);
        t.retain(|c| CONTROL_CHARS.binary_search(&c).is_err());
        t = t.nfc().collect();
        if t == orig {
            break;
        }
    }
    t
}

fn fix_c1(c: char) -> char {
    if ('\u{80}'..='\u{9f}').contains(&c) {
        if let Ok(i) = INVALID_CHARREFS.binary_search_by_key(&(c as u32), |e| e.0) {
            return INVALID_CHARREFS[i].1.chars().next().unwrap_or(c);
        }
    }
    c
}

fn translate(t: &str, table: &[(char, &str)]) -> String {
    let mut out = String::with_capacity(t.len());
    for c in t.chars() {
        match table.binary_search_by_key(&c, |e| e.0) {
            Ok(i) => out.push_str(table[i].1),
            Err(_) => out.push(c),
        }
    }
    out
}

/// ftfy's `ANSI_RE`: `\x1b[` digits/semicolons, one letter.
fn remove_terminal_escapes(t: &str) -> String {
    let b = t.as_bytes();
    let mut out = String::with_capacity(t.len());
    let mut i = 0;
    let mut last = 0;
    while i < b.len() {
        if b[i] == 0x1b && b.get(i + 1) == Some(&b'[') {
            let mut j = i + 2;
            while j < b.len() && (b[j].is_ascii_digit() || b[j] == b';') {
                j += 1;
            }
            if j < b.len() && b[j].is_ascii_alphabetic() {
                out.push_str(&t[last..i]);
                i = j + 1;
                last = i;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&t[last..]);
    out
}

fn lookup<'a>(table: &'a [(&str, &str)], name: &str) -> Option<&'a str> {
    table
        .binary_search_by(|e| e.0.cmp(name))
        .ok()
        .map(|i| table[i].1)
}

/// ftfy's `unescape_html`: `&#?[0-9A-Za-z]{1,24};` decoded when it is a known entity (or an
/// all-caps one ftfy knows) or a valid numeric reference.
fn ftfy_unescape(t: &str) -> String {
    let b = t.as_bytes();
    let mut out = String::with_capacity(t.len());
    let mut last = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'&' {
            let mut j = i + 1;
            if b.get(j) == Some(&b'#') {
                j += 1;
            }
            let s = j;
            while j < b.len() && j - s < 24 && b[j].is_ascii_alphanumeric() {
                j += 1;
            }
            if j > s && b.get(j) == Some(&b';') {
                let ent = &t[i..=j];
                let rep = if let Some(v) =
                    lookup(HTML5, &ent[1..]).or_else(|| lookup(FTFY_UPPER, &ent[1..]))
                {
                    Some(v.to_string())
                } else if ent.starts_with("&#") {
                    let u = html_unescape(ent);
                    (!u.contains(';')).then_some(u)
                } else {
                    None
                };
                if let Some(r) = rep {
                    out.push_str(&t[last..i]);
                    out.push_str(&r);
                    i = j + 1;
                    last = i;
                    continue;
                }
            }
        }
        i += 1;
    }
    out.push_str(&t[last..]);
    out
}

/// Python's `html.unescape`.
pub fn html_unescape(t: &str) -> String {
    if !t.contains('&') {
        return t.to_string();
    }
    let chars: Vec<char> = t.chars().collect();
    let mut out = String::with_capacity(t.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '&' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        match charref(&chars[i + 1..]) {
            Some((len, rep)) => {
                out.push_str(&rep);
                i += 1 + len;
            }
            None => {
                out.push('&');
                i += 1;
            }
        }
    }
    out
}

/// One reference after `&`: (chars consumed, replacement), or None if the regex does not match.
fn charref(s: &[char]) -> Option<(usize, String)> {
    if s.first() == Some(&'#') {
        let (digits, radix, start) = if matches!(s.get(1), Some('x') | Some('X'))
            && s.get(2).is_some_and(|c| c.is_ascii_hexdigit())
            && !s.get(1).is_some_and(|c| c.is_ascii_digit())
        {
            (
                s[2..].iter().take_while(|c| c.is_ascii_hexdigit()).count(),
                16,
                2,
            )
        } else {
            (
                s[1..].iter().take_while(|c| c.is_ascii_digit()).count(),
                10,
                1,
            )
        };
        if digits == 0 {
            return None;
        }
        let mut len = start + digits;
        if s.get(len) == Some(&';') {
            len += 1;
        }
        // Values past U+10FFFF all decode to U+FFFD; saturate instead of overflowing.
        let num = s[start..start + digits].iter().fold(0u64, |n, c| {
            (n * radix as u64 + c.to_digit(radix).unwrap_or(0) as u64).min(0x11_0000)
        }) as u32;
        if let Ok(k) = INVALID_CHARREFS.binary_search_by_key(&num, |e| e.0) {
            return Some((len, INVALID_CHARREFS[k].1.to_string()));
        }
        if (0xD800..=0xDFFF).contains(&num) || num > 0x10FFFF {
            return Some((len, "\u{fffd}".into()));
        }
        if INVALID_CODEPOINTS.binary_search(&num).is_ok() {
            return Some((len, String::new()));
        }
        return Some((
            len,
            char::from_u32(num).map(String::from).unwrap_or_default(),
        ));
    }
    let n = s
        .iter()
        .take(32)
        .take_while(|c| !matches!(c, '\t' | '\n' | '\u{c}' | ' ' | '<' | '&' | '#' | ';'))
        .count();
    if n == 0 {
        return None;
    }
    let mut len = n;
    if s.get(n) == Some(&';') {
        len += 1;
    }
    let name: String = s[..len].iter().collect();
    if let Some(v) = lookup(HTML5, &name) {
        return Some((len, v.to_string()));
    }
    for x in (2..len).rev() {
        let pre: String = s[..x].iter().collect();
        if let Some(v) = lookup(HTML5, &pre) {
            let rest: String = s[x..len].iter().collect();
            return Some((len, format!("{v}{rest}")));
        }
    }
    Some((len, format!("&{name}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_html_unescape_cases() {
        assert_eq!(html_unescape("&amp;amp;"), "&amp;");
        assert_eq!(html_unescape("it&#39;s &#x27;x&#X27;"), "it's 'x'");
        assert_eq!(html_unescape("&notit; &notin;"), "¬it; ∉");
        assert_eq!(html_unescape("&#150;&#0;&#1;"), "–\u{fffd}");
        assert_eq!(html_unescape("& &# &x; &amp"), "& &# &x; &");
        assert_eq!(html_unescape("&#99999999999999999999;"), "\u{fffd}");
    }

    #[test]
    fn cleaning_cases() {
        assert_eq!(
            clean("  “Curly”\tQuotes&amp;ﬁsh  "),
            "\"curly\" quotes&fish"
        );
        assert_eq!(clean("ＦＵＬＬ　ｗｉｄｔｈ"), "full width");
        assert_eq!(clean("ΟΔΥΣΣΕΥΣ"), "οδυσσευς");
        assert_eq!(clean("red\x1b[31mtext\x07"), "redtext");
    }
}
