// node tools/bench/web/ab.mjs PKG_A PKG_B MODEL_DIR INT8.onnx [ROUNDS] [REPS] — two builds of
// maple's npm package (web/pkg copied aside before and after a change) side by side in headless
// Chromium, for a change to the browser's CPU path whose effect is smaller than the spread of one
// tools/bench/web.sh run. maple int8 at 2 and 1 threads from each package, then onnxruntime-web's
// dynamic int8 graph (from tools/bench/ort_bench.py) at 2 and 1 threads, in a fresh
// cross-origin-isolated page each, ROUNDS times (default 3) in that order, REPS timed runs
// (default 12) after a warm-up. Prints images/s (best, 25th percentile, median) over all rounds
// after each round. Needs `npm ci` in tools/bench/web (web.sh runs it).
//
// The V8 in Chromium is years newer than Node's (Node 20: V8 11.3), so a kernel's speed in Node
// (core/examples under tools/wasi-run.mjs) need not carry over; this measures the browser's.
// With PROFILE=1 Chromium's V8 also writes perf maps for `perf record -k 1 node … ab.mjs …`,
// then `perf inject --jit` (jit-PID.dump files land in the working directory).
import { join, resolve } from "node:path";
import { serveIsolated, launchChromium } from "./serve.mjs";

const here = resolve(new URL(".", import.meta.url).pathname);
const [pkgA, pkgB, modelDir, int8] = process.argv.slice(2, 6).map((p) => p && resolve(p));
const rounds = Number(process.argv[6] ?? 3);
const reps = Number(process.argv[7] ?? 12);
if (!int8 || !(rounds > 0) || !(reps > 0)) {
  console.error("usage: node tools/bench/web/ab.mjs PKG_A PKG_B MODEL_DIR INT8.onnx [ROUNDS] [REPS]");
  process.exit(2);
}

const mounts = { "/a/": pkgA, "/b/": pkgB, "/model/": modelDir, "/int8.onnx": int8,
  "/ort/": join(here, "node_modules/onnxruntime-web/dist") };
const page = `<!doctype html><meta charset="utf-8"><title>maple a/b</title>
<script type="module">
window.pkgs = { a: await import("/a/index.js"), b: await import("/b/index.js") };
window.loadOrt = async () => { window.ort = await import("/ort/ort.wasm.min.mjs"); };
</script>`;
const { base, close } = await serveIsolated(mounts, page);

const jsFlags = ["--max-old-space-size=8192", ...(process.env.PROFILE === "1" ? ["--perf-prof", "--no-write-protect-code-memory"] : [])];
const ctx = await launchChromium(jsFlags);

// Seconds per image of `reps` runs in a fresh page: maple package `pkg` (int8, `threads`), or
// onnxruntime-web when `pkg` is null.
async function timed(pkg, threads) {
  const p = await ctx.newPage();
  try {
    await p.goto(`${base}/`);
    await p.waitForFunction(() => window.pkgs !== undefined, null, { timeout: 60000 });
    if (!(await p.evaluate(() => self.crossOriginIsolated))) throw new Error("the page is not cross-origin isolated");
    return await p.evaluate(async ({ pkg, threads, reps }) => {
      const px = new Float32Array(3 * 224 * 224);
      for (let i = 0; i < px.length; i++) px[i] = Math.sin(i * 0.001) * 1.5;
      let run;
      if (pkg) {
        const m = await window.pkgs[pkg].loadModel("/model/", { prompts: "maple_prompts.safetensors", device: "cpu",
          precision: "int8", threads, cache: false });
        if (m.threads !== threads) throw new Error(`asked for ${threads} threads, ran ${m.threads}`);
        run = () => m.embedPixels(px);
      } else {
        await window.loadOrt();
        window.ort.env.wasm.numThreads = threads;
        window.ort.env.wasm.wasmPaths = "/ort/";
        const s = await window.ort.InferenceSession.create("/int8.onnx", { executionProviders: ["wasm"],
          graphOptimizationLevel: "all" });
        const feeds = { [s.inputNames[0]]: new window.ort.Tensor("float32", px, [1, 3, 224, 224]) };
        run = () => s.run(feeds);
      }
      await run();
      const xs = [];
      for (let i = 0; i < reps; i++) {
        const t = performance.now();
        await run();
        xs.push((performance.now() - t) / 1000);
      }
      return xs;
    }, { pkg, threads, reps });
  } finally {
    await p.close();
  }
}

const runs = {};
const rate = (s) => (1 / s).toFixed(2);
try {
  for (let round = 1; round <= rounds; round++) {
    for (const [name, pkg, threads] of [["A int8, 2 threads", "a", 2], ["B int8, 2 threads", "b", 2],
      ["A int8, 1 thread", "a", 1], ["B int8, 1 thread", "b", 1],
      ["onnxruntime-web int8, 2 threads", null, 2], ["onnxruntime-web int8, 1 thread", null, 1]]) {
      (runs[name] ??= []).push(...(await timed(pkg, threads)));
    }
    console.log(`after round ${round} of ${rounds} (${reps} runs each a round), images/s best / p25 / median:`);
    for (const [name, xs] of Object.entries(runs)) {
      const s = [...xs].sort((a, b) => a - b);
      const at = (f) => rate(s[Math.floor(s.length * f)]);
      console.log(`  ${name.padEnd(32)} ${rate(s[0])} / ${at(0.25)} / ${at(0.5)}`);
    }
  }
} finally {
  await ctx.close();
  close();
}
