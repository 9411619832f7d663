"""The Python API against independent numbers: the PyTorch golden logits of the committed fixtures
(tests/fixtures/golden_tiny.json, tools/reference/golden.py) and PyTorch autograd's training
steps (tests/fixtures/train_golden_tiny.safetensors, tools/reference/train_golden.py)."""

from __future__ import annotations

import json
import multiprocessing
import os
import pathlib
import pickle
import struct
import threading
import time

import numpy as np
import pytest
from PIL import Image

import maple_clip

ROOT = pathlib.Path(__file__).resolve().parents[3]
FIX = ROOT / "tests" / "fixtures"
TINY = FIX / "tiny"
PROMPTS = TINY / "maple_prompts.safetensors"
GOLDEN = json.loads((FIX / "golden_tiny.json").read_text())
TOL = 1e-3
PHOTO = FIX / "images" / "photo_320x240.jpg"


def want(name: str, kind: str = "maple") -> np.ndarray:
    return np.array(GOLDEN[kind]["logits"][GOLDEN["images"].index(name)], dtype=np.float32)


def close(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= TOL, (got, expected)


@pytest.fixture(scope="module")
def clf() -> maple_clip.Classifier:
    return maple_clip.Classifier(
        TINY, prompts=PROMPTS, labels=FIX / "labels.txt", device="cpu", cache=False, batch_size=3
    )


def test_every_image_kind_gives_pytorchs_logits(clf: maple_clip.Classifier) -> None:
    for name in GOLDEN["images"]:
        path = FIX / "images" / name
        data = path.read_bytes()
        pil = Image.open(path)
        rgb = np.asarray(pil.convert("RGB"))
        kinds: dict[str, object] = {
            "str": str(path),
            "PathLike": path,
            "bytes": data,
            "bytearray": bytearray(data),
            "memoryview": memoryview(data),
            "1-D uint8 array": np.frombuffer(data, dtype=np.uint8),
            "PIL": pil,
            "RGB array": rgb,
            "RGBA array": np.asarray(pil.convert("RGBA")),
            "non-contiguous RGB": np.asfortranarray(rgb),
        }
        for kind, image in kinds.items():
            r = clf.classify(image)
            assert np.abs(r.logits - want(name)).max() <= TOL, (name, kind)
            assert r.logits.dtype == np.float32 and r.probs.dtype == np.float32
            assert abs(float(r.probs.sum()) - 1.0) < 1e-5


def test_batches_logits_and_errors(clf: maple_clip.Classifier) -> None:
    names = GOLDEN["images"][:7]  # more than one forward pass of batch_size=3
    got = clf.logits([FIX / "images" / n for n in names])
    assert got.shape == (7, len(GOLDEN["labels"])) and got.dtype == np.float32
    close(got, np.stack([want(n) for n in names]))

    mixed = [PHOTO, b"not an image", ROOT / "no-such.jpg", np.zeros((2, 3, 5), np.uint8)]
    with pytest.raises(ValueError, match="H×W×3"):
        clf.classify_batch(mixed)
    r = clf.classify_batch(mixed[:3], errors="return")
    assert isinstance(r[0], maple_clip.Classification)
    close(r[0].logits, want(PHOTO.name))
    assert isinstance(r[1], maple_clip.ImageError) and isinstance(r[1], ValueError)
    assert str(r[1]).startswith("<bytes>: not an image") and r[1].image == "<bytes>"
    assert isinstance(r[2], FileNotFoundError) and r[2].filename == str(ROOT / "no-such.jpg")
    with pytest.raises(maple_clip.ImageError, match="not an image"):
        clf.classify_batch(mixed[:2])
    with pytest.raises(maple_clip.ImageError):
        clf.logits([b"\x89PNG\r\n\x1a\n broken"])
    with pytest.raises(TypeError, match="uint8"):
        clf.classify(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(TypeError, match="list of images"):
        clf.classify_batch(str(PHOTO))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="an image is"):
        clf.classify(12345)
    assert clf.logits([]).shape == (0, len(GOLDEN["labels"]))


def test_scores_follow_the_logits(clf: maple_clip.Classifier) -> None:
    r = clf.classify(PHOTO)
    order = np.argsort(-want(PHOTO.name), kind="stable")
    top = r.top(3)
    assert [s.index for s in top] == list(order[:3])
    assert top[0] == r.best() and r.best().label == "Eiffel Tower"
    assert abs(r.best().logit - 29.145) < TOL
    e = np.exp(want(PHOTO.name) - want(PHOTO.name).max())
    assert abs(r.best().prob - float(e[order[0]] / e.sum())) < 1e-4
    assert len(r.top(100)) == len(GOLDEN["labels"]) and r.top(0) == []


def test_embeddings_times_the_scale_are_the_logits(clf: maple_clip.Classifier) -> None:
    names = ["photo_320x240.jpg", "rgb_100x80.png"]
    img = clf.embed_images([FIX / "images" / n for n in names])
    assert img.shape == (2, clf.embedding_dim)
    assert np.allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    txt = clf.embed_texts(clf.labels)
    assert np.allclose(txt, clf.text_features, atol=1e-6)
    close(clf.logit_scale * img @ txt.T, np.stack([want(n) for n in names]))
    with pytest.raises(maple_clip.LabelError, match="texts"):
        clf.embed_texts(["cat", ""])
    assert clf.embed_texts([]).shape == (0, clf.embedding_dim)
    assert clf.embed_images([]).shape == (0, clf.embedding_dim)
    with pytest.raises(maple_clip.ImageError):
        clf.embed_images([b"junk"])


def test_zero_shot_and_label_changes() -> None:
    zs = maple_clip.Classifier(TINY, labels=GOLDEN["labels"], device="cpu", cache=False)
    close(zs.classify(PHOTO).logits, want(PHOTO.name, "zeroshot"))
    c = maple_clip.Classifier(TINY, prompts=PROMPTS, labels=["cat"], device="cpu", cache=False)
    c.set_labels(["Eiffel Tower", "cat", "sea anemone"])
    w = want(PHOTO.name)
    close(c.classify(PHOTO).logits, w[[7, 0, 8]])
    with pytest.raises(maple_clip.LabelError):
        c.set_labels([])
    with pytest.raises(maple_clip.LabelError, match="too long"):
        c.set_labels(["cat", "word " * 100])
    assert c.labels == ["Eiffel Tower", "cat", "sea anemone"]
    c.set_labels(FIX / "labels.txt")
    close(c.classify(PHOTO).logits, w)


def test_bad_settings_are_typed_errors(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError) as e:
        maple_clip.Classifier(tmp_path, labels=["cat"], device="cpu", cache=False)
    assert e.value.filename == str(tmp_path / "config.json")
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(maple_clip.ModelError, match="config.json"):
        maple_clip.Classifier(tmp_path, labels=["cat"], device="cpu", cache=False)
    with pytest.raises(FileNotFoundError) as e:
        maple_clip.Classifier(TINY, labels=tmp_path / "none.txt", device="cpu", cache=False)
    assert e.value.filename == str(tmp_path / "none.txt")
    bad = tmp_path / "prompts.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    with pytest.raises(maple_clip.ModelError, match="prompts.safetensors"):
        maple_clip.Classifier(TINY, prompts=bad, labels=["cat"], device="cpu", cache=False)
    with pytest.raises(ValueError, match="device"):
        maple_clip.Classifier(TINY, labels=["cat"], device="tpu")  # type: ignore[arg-type]
    with pytest.raises(maple_clip.ConfigError):
        maple_clip.Classifier(TINY, labels=["cat"], device="cpu", precision="f16", cache=False)
    with pytest.raises(maple_clip.ConfigError):
        maple_clip.Classifier(TINY, labels=["cat"], batch_size=0)


def test_results_and_errors_pickle(clf: maple_clip.Classifier) -> None:
    r = clf.classify(PHOTO)
    r2 = pickle.loads(pickle.dumps(r))
    assert np.array_equal(r2.logits, r.logits) and r2.labels == r.labels
    assert r2.top(2) == r.top(2)
    errs = clf.classify_batch([b"junk", ROOT / "no-such.jpg"], errors="return")
    for e in errs:
        e2 = pickle.loads(pickle.dumps(e))
        assert type(e2) is type(e) and str(e2) == str(e)
    assert pickle.loads(pickle.dumps(errs[0])).image == "<bytes>"
    s = pickle.loads(pickle.dumps(r.best()))
    assert s == r.best()


def test_the_gil_is_released_while_the_model_runs() -> None:
    # One model thread: the other core is free for this thread's loop. Were the GIL held by the
    # call, this loop would stop for the whole call; released, it stalls only for moments.
    c = maple_clip.Classifier(TINY, prompts=PROMPTS, labels=GOLDEN["labels"], device="cpu",
                              threads=1, cache=False)
    images = [PHOTO.read_bytes()] * 600
    c.logits(images[:2])  # warm-up
    span = [0.0, 0.0]

    def run() -> None:
        span[0] = time.perf_counter()
        c.logits(images)
        span[1] = time.perf_counter()

    th = threading.Thread(target=run)
    stamps = [time.perf_counter()]
    th.start()
    while th.is_alive():
        time.sleep(0.002)  # waking needs the GIL: a call that holds it leaves no stamps
        stamps.append(time.perf_counter())
    th.join()
    t0, t1 = span
    assert t1 - t0 > 0.1, f"the call took {t1 - t0:.3f} s: too short to tell"
    inside = [t for t in stamps if t0 < t < t1]
    gaps = [b - a for a, b in zip(stamps, stamps[1:]) if b > t0 and a < t1]
    assert len(inside) >= 10 and max(gaps) < 0.5 * (t1 - t0), (
        f"this thread ran {len(inside)} times during a {t1 - t0:.3f} s call, "
        f"longest stall {max(gaps):.3f} s"
    )


def _child_classifies(c: maple_clip.Classifier, expected: list[float], q: "multiprocessing.Queue[bool]") -> None:
    q.put(bool(np.abs(c.classify(PHOTO).logits - np.array(expected)).max() < 1e-5))


def test_a_classifier_built_before_fork_works_in_the_child() -> None:
    c = maple_clip.Classifier(TINY, prompts=PROMPTS, labels=GOLDEN["labels"], device="cpu",
                              threads=2, cache=False)
    parent = c.classify(PHOTO).logits
    close(parent, want(PHOTO.name))
    ctx = multiprocessing.get_context("fork")
    q: multiprocessing.Queue[bool] = ctx.Queue()
    p = ctx.Process(target=_child_classifies, args=(c, parent.tolist(), q))
    p.start()
    p.join(60)
    if p.is_alive():
        p.kill()
        pytest.fail("the forked child hangs")
    assert p.exitcode == 0 and q.get(timeout=5) is True


def _safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        dtype = {"F32": np.float32, "F16": np.float16}[t["dtype"]]
        out[name] = np.frombuffer(raw[8 + n + a : 8 + n + b], dtype=dtype).astype(np.float32)
    return out


def test_train_matches_pytorch_autograd_and_the_result_classifies(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "prompts.safetensors"
    events: list[dict[str, object]] = []
    summary = maple_clip.train(
        TINY, FIX / "train", out, init=PROMPTS, augment=False, shuffle=False,
        lr_schedule="constant", batch_size=2, max_steps=3, checkpoints=False,
        progress=events.append,
    )
    assert summary["steps"] == 3 and summary["step"]["step"] == 3
    assert [e["kind"] for e in events].count("step") == 3 and events[0]["kind"] == "start"
    golden = _safetensors(FIX / "train_golden_tiny.safetensors")
    got = _safetensors(out)
    assert len(got) == 9
    for name, v in got.items():
        short = name.removeprefix("prompt_learner.")
        init, trained = golden[f"init.{short}"], golden[f"trained.{short}"]
        moved = np.abs(trained - init).max()
        assert moved > 0 and np.abs(v - trained).max() <= 1e-3 * moved, name
    c = maple_clip.Classifier(TINY, prompts=out, labels=["cat", "dog", "red car"], device="cpu",
                              cache=False)
    assert c.classify(FIX / "train" / "cat" / "la_64x64.png").labels == ["cat", "dog", "red car"]

    with pytest.raises(maple_clip.ConfigError, match="lr"):
        maple_clip.train(TINY, FIX / "train", out, lr=-1.0)
    with pytest.raises(maple_clip.ConfigError, match="no-data: not a folder"):
        maple_clip.train(TINY, tmp_path / "no-data", out, checkpoints=False)

    def stop(e: dict[str, object]) -> None:
        raise KeyError("from the callback")

    with pytest.raises(KeyError, match="from the callback"):
        maple_clip.train(TINY, FIX / "train", tmp_path / "p2.safetensors", max_steps=1, depth=3,
                         batch_size=2, checkpoints=False, progress=stop)


def test_each_method_trains_from_python_against_pytorch(tmp_path: pathlib.Path) -> None:
    # CoCoOp from its family fixture: 3 deterministic steps against PyTorch autograd
    # (tests/fixtures/train_golden_cocoop_tiny.safetensors, lr 0.002 as its recipe).
    out = tmp_path / "cocoop.safetensors"
    maple_clip.train(
        TINY, FIX / "train", out, method="cocoop", init=FIX / "family" / "cocoop.safetensors",
        augment=False, shuffle=False, lr_schedule="constant", batch_size=2, max_steps=3,
        checkpoints=False,
    )
    golden = _safetensors(FIX / "train_golden_cocoop_tiny.safetensors")
    got = _safetensors(out)
    assert sorted(got) == sorted(k.removeprefix("init.") for k in golden if k.startswith("init."))
    for name, v in got.items():
        init, trained = golden[f"init.{name}"], golden[f"trained.{name}"]
        moved = np.abs(trained - init).max()
        assert moved > 0 and np.abs(v - trained).max() <= 1e-3 * moved, name
    # A fresh start of each method, with its recipe's defaults, classifies.
    for method, depth in (("coop", 1), ("ivlp", 3), ("vpt", 2)):
        out = tmp_path / f"{method}.safetensors"
        maple_clip.train(TINY, FIX / "train", out, method=method, depth=depth, batch_size=2,
                         max_steps=1, checkpoints=False)
        c = maple_clip.Classifier(TINY, prompts=out, labels=["cat", "dog"], device="cpu",
                                  cache=False)
        assert c.classify(FIX / "train" / "cat" / "la_64x64.png").labels == ["cat", "dog"]
    with pytest.raises(ValueError, match="method"):
        maple_clip.train(TINY, FIX / "train", out, method="nope")  # type: ignore[arg-type]


def test_the_caches_answer_a_second_classifier(tmp_path: pathlib.Path) -> None:
    kw = dict(prompts=PROMPTS, labels=GOLDEN["labels"], device="cpu", cache_dir=tmp_path)
    a = maple_clip.Classifier(TINY, **kw)  # type: ignore[arg-type]
    assert any(tmp_path.iterdir()), "nothing cached"
    b = maple_clip.Classifier(TINY, **kw)  # type: ignore[arg-type]
    close(b.classify(PHOTO).logits, want(PHOTO.name))
    assert np.array_equal(a.text_features, b.text_features)


def test_mypy_strict_accepts_the_usage_file() -> None:
    from mypy import api

    out, err, status = api.run(["--strict", str(pathlib.Path(__file__).with_name("usage.py"))])
    assert status == 0, out + err


def test_the_gpu_path_gives_pytorchs_logits() -> None:
    # CI's adapter is Mesa's lavapipe (software Vulkan, installed by tools/test.sh).
    c = maple_clip.Classifier(TINY, prompts=PROMPTS, labels=FIX / "labels.txt", device="gpu",
                              cache=False)
    assert c.device == "gpu" and c.device_info.startswith("running on the GPU"), c.device_info
    names = GOLDEN["images"][:4]
    close(c.logits([FIX / "images" / n for n in names]), np.stack([want(n) for n in names]))
    close(c.embed_texts(c.labels), c.text_features)


def test_evaluate_gives_the_golden_base_novel_and_hm(tmp_path: pathlib.Path) -> None:
    # Image i goes to the base half (labels 0..4) when even, else the novel half (5..9), labelled
    # with the golden prediction among its half, except every third (labelled with the next).
    labels = GOLDEN["labels"]
    halves = [list(range(5)), list(range(5, 10))]
    test, hits = [], [[0, 0], [0, 0]]
    for i, name in enumerate(GOLDEN["images"]):
        h = i % 2
        k = int(np.argmax(want(name)[halves[h]]))
        label = 5 * h + ((k + 1) % 5 if i % 3 == 0 else k)
        test.append([name, label, labels[label]])
        hits[h][0] += label == 5 * h + k
        hits[h][1] += 1
    split = tmp_path / "split_zhou_Fixtures.json"
    train = [[f"t{l}.jpg", l, labels[l]] for l in range(10)]
    split.write_text(json.dumps({"train": train, "val": [], "test": test}))
    c = maple_clip.Classifier(TINY, prompts=PROMPTS, labels=["cat", "dog"], device="cpu", cache=False)
    r = c.evaluate(split=split, images=FIX / "images")
    b, n = (hits[0][0] / hits[0][1], hits[1][0] / hits[1][1])
    assert r["base"]["correct"] == hits[0][0] and r["novel"]["images"] == hits[1][1], r
    assert abs(r["hm"] - 2 * b * n / (b + n)) < 1e-12 and 0 < b < 1 and 0 < n < 1
    assert c.labels == ["cat", "dog"]  # put back
    with pytest.raises(maple_clip.ConfigError, match="one of the two"):
        c.evaluate()
