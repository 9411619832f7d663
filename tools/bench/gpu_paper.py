"""The GPU kernels on paper (issue 12): for the MaPLe ViT-B/16 image tower at batch 1 and 32,
each kernel's FLOPs, the bytes the chosen tiling moves through global memory, and the fraction of
f32 peak it can reach on an NVIDIA H100 SXM and an Apple M2 — a roofline with the kernels' own
limits. Mirrors the tile choice of gpu/src/kernels/matmul.rs. Prints Markdown for BENCHMARKS.md.

    python3 tools/bench/gpu_paper.py"""

T, D, F, H, HD, LAYERS = 199, 768, 3072, 12, 64, 12   # tokens (197 + 2 prompts), widths, heads
TILES = [(128, 128, 8, 8), (64, 64, 4, 4), (32, 32, 2, 2)]   # BM, BN, TM, TN
FILL = 192
# Peaks (vendor figures): H100 SXM5 67 TFLOP/s f32 (non-tensor), 3.35 TB/s HBM3, 132 SMs of
# 128 f32 lanes; Apple M2 GPU 3.6 TFLOP/s f32, 100 GB/s, 10 cores of 128 lanes.
GPUS = {"H100 SXM": (67e12, 3.35e12), "M2 (10-core GPU)": (3.6e12, 100e9)}


def tile_for(m, n):
    for t in TILES:
        if -(-m // t[0]) * -(-n // t[1]) >= FILL:
            return t
    return TILES[-1]


def gemm(name, m, k, n, acc):
    bm, bn, tm, tn = tile_for(m, n)
    wgs = -(-m // bm) * -(-n // bn)
    flops = 2 * m * n * k
    # A is read once per column of tiles, W once per row of tiles; C written (and read: residual).
    moved = 4 * (m * k * -(-n // bn) + n * k * -(-m // bm) + m * n * (2 if acc else 1))
    # Per k step an invocation does TM·TN FMAs and TM + TN scalar workgroup-memory loads; an SM
    # serves 32 words a clock to 128 FMA lanes, so the FMA rate is capped at 32·TM·TN/(TM+TN)/128
    # of peak, and at ~60 % by issue and stalls (scalar loads, address math, bounds checks, a
    # barrier wait per k step with no double buffering). A grid below two
    # workgroups per compute unit (20 on the M2, 264 on the H100) idles units.
    lds_cap = min(1.0, 32 * tm * tn / (tm + tn) / 128) * 0.6
    return dict(name=name, m=m, k=k, n=n, tile=f"{bm}×{bn}", wgs=wgs, flops=flops, bytes=moved, cap=lds_cap)


def attention(b):
    flops = 4 * b * H * T * T * HD
    blocks = b * H * -(-T // 64)
    # qkv read once per block of 64 queries (K and V) + Q once; output written once.
    moved = 4 * (b * T * 3 * D + b * T * D)
    # One query per invocation, 64 invocations: each score is HD FMAs with HD workgroup loads
    # (broadcast: every invocation reads the same K word), so a load per FMA: capped at 32/128.
    return dict(name="attention tiled (×12 layers)", m=b * T, k=HD, n=T, tile="64 q × 16 kv", wgs=blocks,
                flops=flops * LAYERS, bytes=moved * LAYERS, cap=0.25 * 0.6)


def rows(b):
    m = b * T
    out = [
        gemm("qkv (×12)", m, D, 3 * D, False),
        gemm("out_proj (×12)", m, D, D, True),
        gemm("fc1 (×12)", m, D, F, False),
        gemm("fc2 (×12)", m, F, D, True),
    ]
    for r in out:
        r["flops"] *= LAYERS
        r["bytes"] *= LAYERS
    out.append(attention(b))
    return out


def expected(r, peak, bw, units):
    occupancy = min(1.0, r["wgs"] / (2 * units))
    t_compute = r["flops"] / (peak * r["cap"] * occupancy)
    t_memory = r["bytes"] / bw
    t = max(t_compute, t_memory)
    return t, r["flops"] / t / peak


def main():
    units = {"H100 SXM": 132, "M2 (10-core GPU)": 10}
    for b in (1, 32):
        print(f"\n**Batch {b}** (M = {b}·199 = {b * T} rows)\n")
        print("| kernel | M×K×N | tile | workgroups | GFLOP | MB moved | FLOP/byte | " +
              " | ".join(f"{g}: ms, % of f32 peak" for g in GPUS) + " |")
        print("|" + " --- |" * (7 + len(GPUS)))
        tot = {g: 0.0 for g in GPUS}
        flops = 0
        for r in rows(b):
            cells = []
            for g, (peak, bw) in GPUS.items():
                t, frac = expected(r, peak, bw, units[g])
                tot[g] += t
                cells.append(f"{t * 1e3:.2f}, {100 * frac:.0f} %")
            flops += r["flops"]
            print(f"| {r['name']} | {r['m']}×{r['k']}×{r['n']} | {r['tile']} | {r['wgs']} | {r['flops'] / 1e9:.1f} | "
                  f"{r['bytes'] / 1e6:.0f} | {r['flops'] / r['bytes']:.0f} | " + " | ".join(cells) + " |")
        print(f"| **tower** (+ LayerNorm, embed: < 2 %) | | | | {flops / 1e9:.1f} | | | " +
              " | ".join(f"**{tot[g] * 1e3:.1f} ms = {b / tot[g]:.0f} images/s**" for g in GPUS) + " |")


main()
