"""A Ray Data job on a real local cluster (a head and a second raylet node, on loopback): an actor
pool with one Classifier per actor labels a folder of a few hundred images, two of them corrupt,
while one actor is killed with SIGKILL. Every image must come back exactly once, with the logits
`maple-classify --format json` gives and, for the corrupt ones, its error text.

`maple-classify` is $MAPLE_CLASSIFY, else target/{debug,release}/maple-classify (tools/test.sh
builds it first)."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np
import pytest

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
# Every node on loopback: Ray's own switch for clusters that stay on one machine (otherwise the
# nodes advertise the machine's outward address, which this machine's sandbox does not route).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
import ray  # noqa: E402
import ray.cloudpickle  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[3]
FIX = ROOT / "tests" / "fixtures"
TINY = FIX / "tiny"
PROMPTS = TINY / "maple_prompts.safetensors"
COPIES = 20  # × 16 fixture images


def cli() -> pathlib.Path:
    if os.environ.get("MAPLE_CLASSIFY"):
        return pathlib.Path(os.environ["MAPLE_CLASSIFY"])
    for profile in ("debug", "release"):
        p = ROOT / "target" / profile / "maple-classify"
        if p.exists():
            return p
    pytest.fail("no maple-classify binary: run cargo build -p maple-cli first (or set MAPLE_CLASSIFY)")


class Labeler:
    """One per actor: builds its Classifier once, then labels batches of paths."""

    def __init__(self, progress: str) -> None:
        import maple_clip

        self.progress = progress
        self.clf = maple_clip.Classifier(
            TINY, prompts=PROMPTS, labels=FIX / "labels.txt", device="cpu", threads=1, cache=False
        )

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        paths = [str(p) for p in batch["path"]]
        results = self.clf.classify_batch(paths, errors="return")
        logits, errors = [], []
        for r in results:
            if isinstance(r, BaseException):
                logits.append(None)
                errors.append(str(r))
            else:
                logits.append(r.logits.tolist())
                errors.append(None)
        # One line per batch done, with this actor's pid: the test's killer waits for it.
        with open(self.progress, "a") as f:
            f.write(f"{os.getpid()} {len(paths)}\n")
        time.sleep(0.05)  # a job long enough to be interrupted
        n = len(paths)
        node = ray.get_runtime_context().get_node_id()
        return {"path": paths, "logits": logits, "error": errors, "pid": [os.getpid()] * n,
                "node": [node] * n}


def test_ray_data_job_on_two_nodes_survives_a_killed_actor(tmp_path: pathlib.Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    fixtures = sorted((FIX / "images").iterdir())
    for i in range(COPIES):
        for f in fixtures:
            shutil.copy(f, images / f"{i:02d}_{f.name}")
    (images / "corrupt_1.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (images / "corrupt_2.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR")
    paths = sorted(str(p) for p in images.iterdir())
    assert len(paths) == COPIES * len(fixtures) + 2

    # The CLI's answers for the same files.
    o = subprocess.run(
        [str(cli()), str(images), "--model", str(TINY), "--prompts", str(PROMPTS),
         "--classes", str(FIX / "labels.txt"), "--format", "json", "--device", "cpu"],
        capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=600,
    )
    assert o.returncode == 2, o.stderr  # 2: some images failed
    want: dict[str, dict[str, Any]] = {}
    for line in o.stdout.splitlines():
        r = json.loads(line)
        want[r["image"]] = r
    assert sorted(want) == paths

    progress = tmp_path / "progress.txt"
    progress.touch()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False, "node_ip_address": "127.0.0.1",
                        "object_store_memory": 150 * 2**20},
    )
    killed: list[int] = []
    try:
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", object_store_memory=150 * 2**20)
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        # Ray's workers cannot import this test file: ship Labeler by value.
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2

        def killer() -> None:
            # After the first few batches, SIGKILL the actor that ran the latest one.
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                lines = progress.read_text().splitlines()
                if len(lines) >= 6:
                    pid = int(lines[-1].split()[0])
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
                time.sleep(0.01)

        k = threading.Thread(target=killer, daemon=True)
        k.start()
        ds = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=40)
        out = ds.map_batches(
            Labeler, fn_constructor_kwargs={"progress": str(progress)}, batch_size=4,
            # (Ray Data restarts a pool's actors and retries their tasks by default.)
            compute=ray.data.ActorPoolStrategy(size=2), num_cpus=1,
        ).take_all()
        k.join(5)
    finally:
        ray.shutdown()
        cluster.shutdown()

    assert killed, "the job ended before an actor could be killed"
    done_after = progress.read_text().splitlines()
    pids = {int(line.split()[0]) for line in done_after}
    got_paths = [r["path"] for r in out]
    assert len(got_paths) == len(paths) and sorted(got_paths) == paths, "an image is missing or doubled"
    assert len(pids - set(killed)) >= 2, f"batches ran in {pids}: no replacement actor seen"
    assert len({r["node"] for r in out}) == 2, "the actors did not run on both nodes"
    for r in out:
        w = want[r["path"]]
        if "error" in w:
            assert r["logits"] is None and r["error"] == w["error"], (r, w)
        else:
            assert r["error"] is None, r
            cli_logits = np.array([s["logit"] for s in w["scores"]], dtype=np.float32)
            assert np.abs(np.array(r["logits"], dtype=np.float32) - cli_logits).max() < 1e-4, r["path"]
    assert sum(r["error"] is not None for r in out) == 2
    print(f"ray: {len(out)} images, 2 nodes, actor {killed[0]} killed, "
          f"{len(pids)} actor processes ran batches")
