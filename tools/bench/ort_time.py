"""Times ONNX Runtime on image-tower graphs that ort_bench.py already wrote (no export, no
accuracy check): for each file and batch size, the best and the mean of --reps runs after one
warm-up. run.sh calls it between maple-bench runs so that both engines are measured in the same
minutes; ort_bench.py times its graphs with the same `session` and `rates`. Prints one JSON
line: {file stem: {batch: [best images/s, mean images/s]}}.

    python tools/bench/ort_time.py --threads 2 --reps 10 target/bench/maple_vision_int8_per_tensor.onnx"""
import argparse
import json
import pathlib
import time

import numpy as np
import onnxruntime as ort


def session(path, threads):
    """ONNX Runtime's CPU provider on `path`: `threads` intra-op threads, every graph optimization."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def rates(sess, batches, reps):
    """{batch: [best, mean] images/s} over `reps` runs after one warm-up, on fixed random pixels."""
    s = sess.get_inputs()[0].shape[-1]
    out = {}
    for b in batches:
        x = np.random.default_rng(0).standard_normal((b, 3, s, s), dtype=np.float32)
        sess.run(None, {"pixels": x})
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            sess.run(None, {"pixels": x})
            times.append(time.perf_counter() - t)
        out[b] = [b / min(times), b * len(times) / sum(times)]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("onnx", nargs="+")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    batches = [int(x) for x in a.batches.split(",")]
    out = {pathlib.Path(p).stem: rates(session(p, a.threads), batches, a.reps) for p in a.onnx}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
