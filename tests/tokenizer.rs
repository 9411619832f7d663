//! Token ids against OpenAI's own tokenizer (SimpleTokenizer + ftfy, tools/tokenizer/golden_ids.py)
//! on 70 strings: unicode, HTML entities, curly quotes, full-width forms, ligatures, emoji, long text.

mod common;
use maple::text::ClipTokenizer;

#[test]
fn ids_equal_openai_simple_tokenizer() {
    let g = common::golden("tokenizer_golden.json");
    let tok = ClipTokenizer::builtin().unwrap();
    let cases = g.as_array().unwrap();
    assert!(cases.len() >= 50);
    let mut bad = Vec::new();
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let want: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = tok.encode(text).unwrap();
        if got != want {
            bad.push(format!("{text:?}: got {got:?}, want {want:?}"));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} differ:\n{}",
        bad.len(),
        cases.len(),
        bad.join("\n")
    );
}
