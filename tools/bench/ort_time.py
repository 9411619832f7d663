"""Times ONNX Runtime on image-tower graphs that ort_bench.py already wrote (no export, no
accuracy check): for each file and batch size, the best and the mean of --reps runs after one
warm-up, with the session options ort_bench.py uses. run.sh calls it between maple-bench runs
so that both engines are measured in the same minutes. Prints one JSON line:
{file stem: {batch: [best images/s, mean images/s]}}.

    python tools/bench/ort_time.py --threads 2 --reps 10 target/bench/maple_vision_int8_per_tensor.onnx"""
import argparse
import json
import pathlib
import time

import numpy as np
import onnxruntime as ort


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("onnx", nargs="+")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    out = {}
    for path in a.onnx:
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        s = sess.get_inputs()[0].shape[-1]
        rates = {}
        for b in [int(x) for x in a.batches.split(",")]:
            x = np.random.default_rng(0).standard_normal((b, 3, s, s), dtype=np.float32)
            sess.run(None, {"pixels": x})
            times = []
            for _ in range(a.reps):
                t = time.perf_counter()
                sess.run(None, {"pixels": x})
                times.append(time.perf_counter() - t)
            rates[b] = [b / min(times), b * len(times) / sum(times)]
        out[pathlib.Path(path).stem] = rates
    print(json.dumps(out))


main()
