"""Token ids from OpenAI's own tokenizer (clip/simple_tokenizer.py from the `openai-clip` sdist,
with ftfy) for the strings in tests/fixtures/tokenizer_strings.json → tests/fixtures/tokenizer_golden.json.

    python tools/tokenizer/golden_ids.py /tmp/oc/openai-clip-1.0.1.tar.gz"""
import importlib.util
import json
import pathlib
import sys
import tarfile
import tempfile

root = pathlib.Path(__file__).resolve().parents[2]
tmp = pathlib.Path(tempfile.mkdtemp())
with tarfile.open(sys.argv[1]) as tf:
    for m in tf.getmembers():
        if m.name.endswith(("clip/simple_tokenizer.py", "bpe_simple_vocab_16e6.txt.gz")):
            (tmp / pathlib.Path(m.name).name).write_bytes(tf.extractfile(m).read())
# Load the module on its own (the package __init__ would import torchvision).
spec = importlib.util.spec_from_file_location("simple_tokenizer", tmp / "simple_tokenizer.py")
st = importlib.util.module_from_spec(spec)
spec.loader.exec_module(st)
tok = st.SimpleTokenizer(bpe_path=str(tmp / "bpe_simple_vocab_16e6.txt.gz"))
strings = json.loads((root / "tests/fixtures/tokenizer_strings.json").read_text())
out = []
for s in strings:
    ids = [49406] + tok.encode(s) + [49407]
    out.append({"text": s, "ids": ids})
(root / "tests/fixtures/tokenizer_golden.json").write_text(json.dumps(out, ensure_ascii=False, indent=1))
print(f"{len(out)} strings")
