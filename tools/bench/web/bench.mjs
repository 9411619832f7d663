// node tools/bench/web/bench.mjs MODEL_DIR F16_DIR FP32.onnx INT8.onnx IMAGE — the browser half of
// tools/bench/web.sh. One server (127.0.0.1, COOP/COEP headers: the page is cross-origin
// isolated, so onnxruntime-web may use threads) serves the repository, the model directory and
// the two ONNX graphs; Debian's headless Chromium loads a fresh page per configuration:
//   maple   web/pkg on the CPU (device "cpu"), embedPixels on the same preprocessed tensor as ORT
//           (the image tower, projection and L2 norm), and embedImage(blob) (PNG decode and
//           preprocessing too); f32 and int8 from MODEL_DIR's f32 weights, and f32 arithmetic on
//           F16_DIR's f16 weights (kept f16 in memory, widened inside the GEMM);
//   ORT     onnxruntime-web's wasm backend (SIMD, its threaded build), session.run on one
//           preprocessed 1×3×224×224 tensor: the image tower alone, at 1 and 2 threads.
// maple runs at 1 and 2 threads (its threaded build with one Web Worker), f16 at 1.
// Each: one warm-up, then 5 timed runs; prints one JSON line with best and median seconds per
// image, and maple's wasm memory after loading and after one image.
import { stat } from "node:fs/promises";
import { join, resolve } from "node:path";
import { serveIsolated, launchChromium } from "./serve.mjs";

const root = resolve(new URL("../../..", import.meta.url).pathname);
const here = resolve(new URL(".", import.meta.url).pathname);
const [modelDir, f16Dir, fp32, int8, image] = process.argv.slice(2).map((p) => resolve(p));
if (!image) {
  console.error("usage: node tools/bench/web/bench.mjs MODEL_DIR F16_DIR FP32.onnx INT8.onnx IMAGE");
  process.exit(2);
}

const mounts = { "/model/": modelDir, "/model16/": f16Dir, "/onnx/fp32.onnx": fp32, "/onnx/int8.onnx": int8, "/image": image,
  "/ort/": join(here, "node_modules/onnxruntime-web/dist"), "/pkg/": join(root, "web/pkg") };
const page = `<!doctype html><meta charset="utf-8"><title>maple web bench</title>
<script type="module">
import * as maple from "/pkg/index.js";
window.maple = maple;
window.loadOrt = async () => { window.ort = await import("/ort/ort.wasm.min.mjs"); };
</script>`;
const { base, close } = await serveIsolated(mounts, page);
const ctx = await launchChromium();
const stats = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return { best_s: s[0], median_s: s[Math.floor(s.length / 2)], runs_s: xs };
};

async function fresh() {
  const p = await ctx.newPage();
  const logs = [];
  p.on("console", (m) => logs.push(m.text()));
  p.on("pageerror", (e) => logs.push(String(e)));
  await p.goto(`${base}/`);
  await p.waitForFunction(() => window.maple !== undefined, null, { timeout: 60000 });
  if (!(await p.evaluate(() => self.crossOriginIsolated))) throw new Error("the page is not cross-origin isolated");
  return { p, logs };
}

const out = { chromium: (await ctx.browser()?.version()) ?? null, image: image.split("/").pop() };
try {
  for (const [key, dir, precision, threads] of [["f32_t1", "/model/", "f32", 1], ["f32_t2", "/model/", "f32", 2],
    ["int8_t1", "/model/", "int8", 1], ["int8_t2", "/model/", "int8", 2], ["f16_t1", "/model16/", "f32", 1]]) {
    const { p, logs } = await fresh();
    const r = await p.evaluate(async ({ dir, precision, threads }) => {
      const m = await window.maple.loadModel(dir, { prompts: "maple_prompts.safetensors", device: "cpu",
        precision, threads, cache: false });
      const afterLoad = await window.maple.wasmMemoryBytes();
      const blob = await (await fetch("/image")).blob();
      await m.embedImage(blob);
      const afterImage = await window.maple.wasmMemoryBytes();
      const px = new Float32Array(3 * 224 * 224);
      for (let i = 0; i < px.length; i++) px[i] = Math.sin(i * 0.001) * 1.5;
      await m.embedPixels(px);
      const time = async (f) => {
        const runs = [];
        for (let i = 0; i < 5; i++) {
          const t = performance.now();
          await f();
          runs.push((performance.now() - t) / 1000);
        }
        return runs;
      };
      const runs = await time(() => m.embedPixels(px));
      const imageRuns = await time(() => m.embedImage(blob));
      return { runs, imageRuns, afterLoad, afterImage, device: m.device, threads: m.threads, adapter: m.adapter };
    }, { dir, precision, threads }).catch((e) => ({ error: String(e.message || e), logs }));
    if (!r.error && r.threads !== threads) r.error = `asked for ${threads} threads, ran ${r.threads} (${r.adapter})`;
    out[`maple_${key}`] = r.error ? r : { ...stats(r.runs), image: stats(r.imageRuns), threads: r.threads, adapter: r.adapter,
      wasm_memory_after_load_bytes: r.afterLoad, wasm_memory_after_image_bytes: r.afterImage };
    await p.close();
  }
  for (const [name, file] of [["fp32", "/onnx/fp32.onnx"], ["int8", "/onnx/int8.onnx"]]) {
    for (const threads of [1, 2]) {
      const { p, logs } = await fresh();
      const r = await p.evaluate(async ({ file, threads }) => {
        await window.loadOrt();
        const ort = window.ort;
        ort.env.wasm.numThreads = threads;
        ort.env.wasm.wasmPaths = "/ort/";
        const s = await ort.InferenceSession.create(file, { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
        const px = new Float32Array(3 * 224 * 224);
        for (let i = 0; i < px.length; i++) px[i] = Math.sin(i * 0.001) * 1.5;
        const feeds = { [s.inputNames[0]]: new ort.Tensor("float32", px, [1, 3, 224, 224]) };
        await s.run(feeds);
        const runs = [];
        for (let i = 0; i < 5; i++) {
          const t = performance.now();
          await s.run(feeds);
          runs.push((performance.now() - t) / 1000);
        }
        return { runs, version: ort.env.versions?.web ?? null };
      }, { file, threads }).catch((e) => ({ error: String(e.message || e), logs }));
      out[`ort_${name}_t${threads}`] = r.error ? r : { ...stats(r.runs), version: r.version };
      await p.close();
    }
  }
} finally {
  await ctx.close();
  close();
}
out.model_bytes = (await stat(join(modelDir, "model.safetensors"))).size;
out.f16_model_bytes = (await stat(join(f16Dir, "model.safetensors"))).size;
console.log(JSON.stringify(out));
