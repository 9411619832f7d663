// node web/test.mjs [--full DIR REF.json] — the browser test, in Debian's headless Chromium with
// WebGPU (SwiftShader):
//  1. `npm pack`s web/pkg and installs the tarball into a scratch page (target/web-test/app);
//  2. serves the tiny synthetic model laid out like the Hugging Face hub
//     (/hub/maple-tiny/resolve/main/...), counting the requests for each file;
//  3. the scratch page loads the model by URL with progress events, classifies Blobs, an
//     ImageData and an ImageBitmap, and checks the logits against the PyTorch golden file
//     (≤ 1e-3);
//  4. reloads the page, loads again: every file must come from the browser cache (no request);
//  5. drives the demo page like a person (model URL, then the file pickers) and saves a screenshot.
// With --full, it also loads the full-size model in DIR (an f16 model.safetensors + prompts) and
// compares one image's logits with REF.json (the CPU path's, from maple-classify --format json).
// Prints one JSON summary.
import { createRequire } from "node:module";
import { createServer } from "node:http";
import { readFile, stat, mkdir, rm, writeFile } from "node:fs/promises";
import { mkdtempSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { tmpdir } from "node:os";
import { join, resolve, extname } from "node:path";

const root = resolve(new URL("..", import.meta.url).pathname);
// playwright-core is installed once, for both browser tests, in tools/report-check.
const { chromium } = createRequire(join(root, "tools/report-check/package.json"))("playwright-core");
const outDir = join(root, "target", "web-test");
const fullAt = process.argv.indexOf("--full");
const full = fullAt > 0 ? { dir: resolve(process.argv[fullAt + 1]), ref: resolve(process.argv[fullAt + 2]) } : null;

// 1. The npm package, installed from its tarball as an app would.
const app = join(outDir, "app");
await rm(outDir, { recursive: true, force: true });
await mkdir(app, { recursive: true });
const packed = JSON.parse(execFileSync("npm", ["pack", "--json", "--pack-destination", outDir], { cwd: join(root, "web/pkg") }));
const tarball = join(outDir, packed[0].filename);
await writeFile(join(app, "package.json"), JSON.stringify({ name: "scratch-app", private: true }));
execFileSync("npm", ["install", "--no-audit", "--no-fund", "--silent", tarball], { cwd: app, stdio: "inherit" });
await writeFile(join(app, "index.html"), `<!doctype html><meta charset="utf-8"><title>scratch</title>
<script type="module">
import * as lib from "./node_modules/maple-web/index.js";
window.lib = lib;
</script>`);

// 2. The server: the hub layout (counted), the scratch app, the repository.
const types = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
  ".json": "application/json", ".png": "image/png", ".jpg": "image/jpeg", ".txt": "text/plain" };
const hubs = { "maple-tiny": join(root, "tests/fixtures/tiny") };
if (full) hubs["maple-full"] = full.dir;
const hits = new Map();
const server = createServer(async (req, res) => {
  const url = decodeURIComponent(new URL(req.url, "http://x").pathname);
  let path;
  const hub = url.match(/^\/hub\/([^/]+)\/resolve\/main\/([^/]+)$/);
  if (hub && hubs[hub[1]]) {
    hits.set(url, (hits.get(url) || 0) + 1);
    path = join(hubs[hub[1]], hub[2]);
  } else if (url.startsWith("/app/")) {
    path = join(app, url.slice(5));
  } else {
    path = join(root, url);
  }
  if (!path.startsWith(root)) { res.writeHead(403).end(); return; }
  // `?isolated` pages are cross-origin isolated (the threaded CPU path); the rest are not. COEP
  // goes on every response: a dedicated worker's script needs its own.
  const isolated = { "cross-origin-embedder-policy": "require-corp",
    ...(new URL(req.url, "http://x").searchParams.has("isolated") ? { "cross-origin-opener-policy": "same-origin" } : {}) };
  try {
    const body = await readFile(path);
    res.writeHead(200, { ...isolated, "content-type": types[extname(path)] || "application/octet-stream", "content-length": body.length }).end(body);
  } catch { res.writeHead(404).end(); }
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const base = `http://127.0.0.1:${server.address().port}`;
const tinyUrl = `${base}/hub/maple-tiny/resolve/main/`;
const tinyFiles = ["config.json", "model.safetensors", "maple_prompts.safetensors"];

const golden = JSON.parse(await readFile(join(root, "tests/fixtures/golden_tiny.json"), "utf8"));
// Lossless RGB/gray files: the browser decodes them to exactly Pillow's pixels.
const images = ["rgb_451x300.png", "rgb_100x80.png", "gray_300x451.png", "odd_641x97.png", "exact_224x224.png"];

const args = ["--headless=new", "--no-sandbox", "--disable-gpu-sandbox", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic", "--enable-unsafe-webgpu"];
const ctx = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), "maple-web-")), {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium", headless: true, args, viewport: { width: 960, height: 1100 },
});
const problems = [];
const check = (ok, msg) => { if (!ok) problems.push(msg); };
const summary = {};
let logs = [];

// In the page: load by URL, classify every image kind, return logits and progress events.
async function inPage({ url, labelsText, images, kinds, device }) {
  const events = [];
  const t0 = performance.now();
  const m = await window.lib.loadModel(url, { prompts: "maple_prompts.safetensors", device, onProgress: (e) => events.push(e) });
  const loadMs = performance.now() - t0;
  await m.setLabels(labelsText);
  const out = [];
  let ms = 0;
  for (const name of images) {
    const blob = await (await fetch(`/tests/fixtures/images/${name}`)).blob();
    const t = performance.now();
    const r = await m.classify(blob);
    ms += performance.now() - t;
    out.push({ name, kind: "Blob", logits: r.scores.map((s) => s.logit), top: r.top(5).map((s) => s.index) });
  }
  if (kinds) {
    const blob = await (await fetch(`/tests/fixtures/images/${images[0]}`)).blob();
    const bmp = await createImageBitmap(blob, { premultiplyAlpha: "none", colorSpaceConversion: "none" });
    out.push({ name: images[0], kind: "ImageBitmap", logits: (await m.classify(bmp)).scores.map((s) => s.logit) });
    const { rgba, width, height } = await window.lib.pixelsOf(blob);
    const data = new ImageData(new Uint8ClampedArray(rgba), width, height);
    out.push({ name: images[0], kind: "ImageData", logits: (await m.classify(data)).scores.map((s) => s.logit) });
    // Labels as a list; a label set that cannot work is an error and leaves the old one.
    await m.setLabels(["cat", "Eiffel_Tower"]);
    out.push({ name: images[0], kind: "list", logits: (await m.classify(blob)).scores.map((s) => s.logit) });
    // Features: logitScale · image row · text rows are the golden logits of those labels.
    const f = await m.embedImage(blob);
    const rows = await m.embedTexts(["cat", "Eiffel_Tower"]);
    const dot = (a, b) => a.reduce((s, v, k) => s + v * b[k], 0);
    out.push({ name: images[0], kind: "embed", logits: rows.map((t) => m.logitScale * dot(f, t)),
      dim: f.length === m.embeddingDim && rows.every((t) => t.length === m.embeddingDim) });
    // A preprocessed image: 32 × 32 pixels (the tiny model's input size: no resize, no crop),
    // normalised here with CLIP's published mean and std, against embedImage of the same pixels.
    const S = 32, rgba32 = new Uint8ClampedArray(S * S * 4);
    for (let i = 0; i < S * S; i++) {
      rgba32.set([(i * 7) % 256, (i * 13 + 50) % 256, (i * 29 + 100) % 256, 255], 4 * i);
    }
    const mean = [0.48145466, 0.4578275, 0.40821073], std = [0.26862954, 0.26130258, 0.27577711];
    const px = new Float32Array(3 * S * S);
    for (let c = 0; c < 3; c++) {
      for (let i = 0; i < S * S; i++) px[c * S * S + i] = (Math.fround(rgba32[4 * i + c] / 255) - mean[c]) / std[c];
    }
    const fromImage = await m.embedImage(new ImageData(rgba32, S, S));
    const fromPixels = await m.embedPixels(px);
    let pixelsErr = "";
    try { await m.embedPixels(px.subarray(1)); } catch (e) { pixelsErr = String(e.message || e); }
    out.push({ kind: "pixels", dim: fromPixels.length === m.embeddingDim, err: pixelsErr,
      diff: fromImage.reduce((d, v, k) => Math.max(d, Math.abs(v - fromPixels[k])), 0) });
    let err = "";
    try { await m.setLabels(["cat", "cat"]); } catch (e) { err = String(e.message || e); }
    out.push({ kind: "error", err, labels: m.labels });
  }
  return { adapter: m.adapter, device: m.device, reason: m.deviceReason, events, out, loadMs, msPerImage: ms / images.length };
}

function goldenDiff(out) {
  let maxDiff = 0;
  for (const { name, kind, logits } of out) {
    if (kind === "error" || kind === "pixels") continue;
    const i = golden.images.indexOf(name);
    let want = golden.maple.logits[i];
    if (kind === "list" || kind === "embed") want = [want[0], want[7]];
    check(logits.length === want.length, `${kind} ${name}: ${logits.length} logits, want ${want.length}`);
    want.forEach((g, j) => { maxDiff = Math.max(maxDiff, Math.abs(g - logits[j])); });
  }
  return maxDiff;
}

const fileSize = async (name) => (await stat(join(root, "tests/fixtures/tiny", name))).size;

try {
  const page = await ctx.newPage();
  page.on("console", (m) => logs.push(m.text()));
  page.on("pageerror", (e) => logs.push(String(e)));
  const labelsText = await readFile(join(root, "tests/fixtures/labels.txt"), "utf8");

  // 3. First visit: everything downloads once, with progress.
  await page.goto(`${base}/app/index.html`);
  await page.waitForFunction(() => window.lib !== undefined, null, { timeout: 60000 });
  const first = await page.evaluate(inPage, { url: tinyUrl, labelsText, images, kinds: true, device: "gpu" });
  check(first.device === "gpu", `device "gpu" runs on ${first.device}`);
  summary.adapter = first.adapter;
  summary.maxAbsLogitDiff = goldenDiff(first.out);
  summary.msPerImage = Math.round(first.msPerImage);
  summary.firstLoadMs = Math.round(first.loadMs);
  check(summary.maxAbsLogitDiff <= 1e-3, `logits differ from the PyTorch golden by ${summary.maxAbsLogitDiff}`);
  const embed = first.out.find((r) => r.kind === "embed");
  check(embed && embed.dim, "embedImage / embedTexts rows are not embeddingDim long");
  for (const r of first.out.filter((r) => r.top)) {
    const want = golden.maple.top5[golden.images.indexOf(r.name)];
    check(JSON.stringify(r.top) === JSON.stringify(want), `${r.name}: top-5 ${r.top} != golden ${want}`);
  }
  const pixels = first.out.find((r) => r.kind === "pixels");
  check(pixels.dim && pixels.diff <= 1e-5, `embedPixels differs from embedImage of the same pixels by ${pixels.diff}`);
  check(/needs 3072 values, got 3071/.test(pixels.err), `embedPixels of a short tensor: ${JSON.stringify(pixels.err)}`);
  summary.embedPixelsDiff = pixels.diff;
  const err = first.out.find((r) => r.kind === "error");
  check(/duplicate label/.test(err.err) && err.labels.join() === "cat,Eiffel_Tower", `bad labels: ${JSON.stringify(err)}`);
  for (const name of tinyFiles) {
    const ev = first.events.filter((e) => e.file === name);
    const size = await fileSize(name);
    const last = ev[ev.length - 1];
    check(ev.length >= 2 && ev.every((e) => !e.cached && e.total === size), `${name}: progress events ${JSON.stringify(ev.slice(0, 3))}`);
    check(last && last.loaded === size, `${name}: last progress event ${JSON.stringify(last)}, size ${size}`);
    check(ev.every((e, i) => i === 0 || e.loaded >= ev[i - 1].loaded), `${name}: progress goes backwards`);
    check(hits.get(`/hub/maple-tiny/resolve/main/${name}`) === 1, `${name}: requested ${hits.get(`/hub/maple-tiny/resolve/main/${name}`)} times on the first visit`);
  }
  summary.progressEvents = first.events.length;

  // 4. Reload: the files come from Cache Storage, no request reaches the server.
  const before = new Map(hits);
  await page.reload();
  await page.waitForFunction(() => window.lib !== undefined, null, { timeout: 60000 });
  const second = await page.evaluate(inPage, { url: tinyUrl, labelsText, images: images.slice(0, 1), kinds: false });
  check(goldenDiff(second.out) <= 1e-3, "logits after the reload differ from the golden");
  check(second.events.length === tinyFiles.length && second.events.every((e) => e.cached), `reload: progress ${JSON.stringify(second.events)}`);
  const refetched = [...hits].filter(([k, v]) => v !== before.get(k));
  check(refetched.length === 0, `reload fetched again: ${JSON.stringify(refetched)}`);
  summary.requestsOnReload = refetched.length;
  summary.reloadLoadMs = Math.round(second.loadMs);

  // 4b. The CPU path: "auto" takes the CPU when the only adapter is a software one (headless
  // Chromium's SwiftShader), "cpu" always; every image against the golden, features included.
  const software = /\bCpu\)/.test(first.adapter);
  const auto = await page.evaluate(inPage, { url: tinyUrl, labelsText, images, kinds: true, device: "auto" });
  check(auto.device === (software ? "cpu" : "gpu"), `auto chose ${auto.device} with adapter ${first.adapter}`);
  if (software) check(/software adapter/.test(auto.reason), `auto's reason: ${auto.reason}`);
  const cpu = software ? auto : await page.evaluate(inPage, { url: tinyUrl, labelsText, images, kinds: true, device: "cpu" });
  check(cpu.device === "cpu" && cpu.adapter.startsWith("CPU"), `device "cpu" runs on ${cpu.device} (${cpu.adapter})`);
  const cpuDiff = goldenDiff(cpu.out);
  check(cpuDiff <= 1e-3, `CPU path: logits differ from the PyTorch golden by ${cpuDiff}`);
  const cpuPixels = cpu.out.find((r) => r.kind === "pixels");
  check(cpuPixels.dim && cpuPixels.diff <= 1e-5, `CPU path: embedPixels differs from embedImage by ${cpuPixels.diff}`);
  summary.cpu = { adapter: cpu.adapter, reason: cpu.reason, maxAbsLogitDiff: cpuDiff, msPerImage: Math.round(cpu.msPerImage) };
  // Chromium has relaxed SIMD, so the package loaded its relaxed build; the SIMD128 build (the
  // fallback for engines without it) in a fresh page, told which file to load, and int8 there.
  check(/simd128\+relaxed/.test(cpu.adapter), `the default build on Chromium: ${cpu.adapter}`);
  const plainPage = await ctx.newPage();
  plainPage.on("pageerror", (e) => logs.push(String(e)));
  await plainPage.goto(`${base}/app/index.html`);
  await plainPage.waitForFunction(() => window.lib !== undefined, null, { timeout: 60000 });
  const plain = await plainPage.evaluate(async (args) => {
    await window.lib.initWasm(new URL("./node_modules/maple-web/maple_web_bg.wasm", location.href));
    const m = await window.lib.loadModel(args.url, { prompts: "maple_prompts.safetensors", device: "cpu", cache: false });
    await m.setLabels(args.labelsText);
    const out = [];
    for (const name of args.images) {
      const blob = await (await fetch(`/tests/fixtures/images/${name}`)).blob();
      out.push({ name, kind: "Blob", logits: (await m.classify(blob)).scores.map((s) => s.logit) });
    }
    const q = await window.lib.loadModel(args.url, { prompts: "maple_prompts.safetensors", precision: "int8", cache: false });
    await q.setLabels(args.labelsText);
    const blob = await (await fetch(`/tests/fixtures/images/${args.images[0]}`)).blob();
    const int8 = (await q.classify(blob)).scores.map((s) => s.logit);
    let gpuErr = "";
    try { await window.lib.loadModel(args.url, { precision: "int8", device: "gpu", cache: false }); } catch (e) { gpuErr = String(e.message || e); }
    return { adapter: m.adapter, out, int8, int8Device: q.device, int8Precision: q.precision, gpuErr, relaxed: window.lib.hasRelaxedSimd() };
  }, { url: tinyUrl, labelsText, images });
  await plainPage.close();
  check(/simd128,/.test(plain.adapter) && plain.relaxed, `the SIMD128 build, asked for: ${plain.adapter}`);
  const plainDiff = goldenDiff(plain.out);
  check(plainDiff <= 1e-3, `SIMD128 build: logits differ from the PyTorch golden by ${plainDiff}`);
  // int8 (the CPU's int8 kernel in wasm): PyTorch's top-1 and within 5% of the logit range, the
  // bound tests/int8.rs holds every int8 kernel to.
  const g0 = golden.maple.logits[golden.images.indexOf(images[0])];
  const range = Math.max(...g0) - Math.min(...g0);
  const int8Diff = Math.max(...g0.map((g, j) => Math.abs(g - plain.int8[j])));
  const argmax = (v) => v.indexOf(Math.max(...v));
  check(plain.int8Device === "cpu" && plain.int8Precision === "int8", `int8 ran on ${plain.int8Device} as ${plain.int8Precision}`);
  check(argmax(plain.int8) === argmax(g0) && int8Diff <= 0.05 * range, `int8: top-1 or |Δlogit| ${int8Diff} (range ${range})`);
  check(/runs on the CPU/.test(plain.gpuErr), `int8 on the GPU: "${plain.gpuErr}"`);
  summary.simd128Fallback = { adapter: plain.adapter, maxAbsLogitDiff: plainDiff };
  check(/, 1 thread\)/.test(cpu.adapter), `a page that is not cross-origin isolated runs one thread: ${cpu.adapter}`);
  // The threaded CPU path: a cross-origin-isolated page, 3 threads (the page's and 2 Web Workers
  // on the threaded build), every image against the golden.
  const isoPage = await ctx.newPage();
  isoPage.on("pageerror", (e) => logs.push(String(e)));
  await isoPage.goto(`${base}/app/index.html?isolated`);
  await isoPage.waitForFunction(() => window.lib !== undefined, null, { timeout: 60000 });
  const threaded = await isoPage.evaluate(async (args) => {
    const m = await window.lib.loadModel(args.url, { prompts: "maple_prompts.safetensors", device: "cpu", threads: 3, cache: false });
    await m.setLabels(args.labelsText);
    const out = [];
    for (const name of args.images) {
      const blob = await (await fetch(`/tests/fixtures/images/${name}`)).blob();
      out.push({ name, kind: "Blob", logits: (await m.classify(blob)).scores.map((s) => s.logit) });
    }
    // A worker entry point called with a handle that is no model's returns at once.
    const glue = await import(new URL("./node_modules/maple-web/threads/maple_web.js", location.href).href);
    for (const h of [0, 7, 0x7fff0000]) glue.maple_worker(h, 1);
    const r = { adapter: m.adapter, threads: m.threads, isolated: self.crossOriginIsolated, out };
    m.free(); // the workers leave their loops
    return r;
  }, { url: tinyUrl, labelsText, images });
  await isoPage.close();
  check(threaded.isolated && threaded.threads === 3 && /3 threads/.test(threaded.adapter),
    `threaded CPU path: ${threaded.threads} threads (${threaded.adapter}), isolated ${threaded.isolated}`);
  const threadedDiff = goldenDiff(threaded.out);
  check(threadedDiff <= 1e-3, `threaded CPU path: logits differ from the PyTorch golden by ${threadedDiff}`);
  summary.threaded = { adapter: threaded.adapter, maxAbsLogitDiff: threadedDiff };
  summary.int8 = { maxAbsLogitDiff: int8Diff, logitRange: range };

  // 4c. The prompt family (CoOp, CoCoOp, IVLP, VPT, as safetensors) on the GPU and the CPU
  // against the PyTorch golden (tools/reference/family.py). CoCoOp's per-image text runs on the
  // CPU; its embedTexts is refused.
  const fam = JSON.parse(await readFile(join(root, "tests/fixtures/golden_family_tiny.json"), "utf8"));
  summary.family = {};
  for (const m of ["coop", "cocoop", "ivlp", "vpt"]) {
    for (const device of ["gpu", "cpu"]) {
      const r = await page.evaluate(async ({ url, prompts, labelsText, images, device }) => {
        try {
          const model = await window.lib.loadModel(url, { prompts, device, cache: false });
          await model.setLabels(labelsText);
          const out = [];
          for (const name of images) {
            const blob = await (await fetch(`/tests/fixtures/images/${name}`)).blob();
            out.push({ name, logits: (await model.classify(blob)).scores.map((s) => s.logit) });
          }
          let embedErr = "";
          try { await model.embedTexts(["cat"]); } catch (e) { embedErr = String(e.message || e); }
          return { out, device: model.device, embedErr };
        } catch (e) { return { err: String(e.message || e) }; }
      }, { url: tinyUrl, prompts: `${base}/tests/fixtures/family/${m}.safetensors`, labelsText, images, device });
      if (r.err) { check(false, `${m} on ${device}: ${r.err}`); continue; }
      check((m === "cocoop") === /depend on the image/.test(r.embedErr), `${m}: embedTexts gave "${r.embedErr}"`);
      check(r.device === device, `${m}: device "${device}" ran on ${r.device}`);
      let d = 0;
      for (const { name, logits } of r.out) {
        const want = fam[m].logits[fam.images.indexOf(name)];
        want.forEach((g, j) => { d = Math.max(d, Math.abs(g - logits[j])); });
      }
      check(d <= 1e-3, `${m} on ${device}: logits differ from the PyTorch golden by ${d}`);
      summary.family[`${m}_${device}`] = d;
    }
  }

  // 5. The demo page, as a person: a model URL, then the file pickers.
  await page.goto(`${base}/web/index.html`);
  await page.waitForFunction(() => document.getElementById("status").textContent.startsWith("ready"), null, { timeout: 60000 });
  await page.fill("#url", tinyUrl);
  await page.fill("#prompts-url", "maple_prompts.safetensors");
  await page.fill("#labels", labelsText);
  await page.click("#load-url");
  await page.waitForFunction(() => {
    const s = document.getElementById("status");
    return s.textContent.startsWith("model ready") || s.className === "err";
  }, null, { timeout: 60000 });
  check((await page.textContent("#status")).startsWith("model ready"), `demo (URL): ${await page.textContent("#status")}`);
  await page.setInputFiles("#image", join(root, "tests/fixtures/images/rgb_451x300.png"));
  await page.waitForFunction(() => document.querySelectorAll("#results .row").length === 5, null, { timeout: 60000 });
  const best = golden.labels[golden.maple.top5[golden.images.indexOf("rgb_451x300.png")][0]];
  const shown = await page.textContent("#results .row span");
  check(shown === best, `demo shows ${shown} first, golden says ${best}`);
  const shot = join(outDir, "web-demo.png");
  await page.screenshot({ path: shot, fullPage: true });
  summary.screenshot = shot;
  const f = (p) => join(root, p);
  await page.click("summary");
  await page.setInputFiles("#config", f("tests/fixtures/tiny/config.json"));
  await page.setInputFiles("#weights", f("tests/fixtures/tiny/model.safetensors"));
  await page.setInputFiles("#prompts", f("tests/fixtures/tiny/maple_prompts.safetensors"));
  await page.click("#load");
  await page.waitForFunction(() => /^model ready/.test(document.getElementById("status").textContent), null, { timeout: 60000 });
  await page.setInputFiles("#image", f("tests/fixtures/images/gray_300x451.png"));
  await page.waitForFunction(() => /gray_300x451/.test(document.getElementById("status").textContent), null, { timeout: 60000 });
  const best2 = golden.labels[golden.maple.top5[golden.images.indexOf("gray_300x451.png")][0]];
  check((await page.textContent("#results .row span")) === best2, `demo (files) does not show ${best2} first`);

  // The full-size model (f16 weights), once, against the CPU path.
  if (full) {
    const ref = JSON.parse((await readFile(full.ref, "utf8")).split("\n")[0]);
    const name = ref.image.split("/").pop();
    const labels = ref.scores.map((s) => s.label);
    const r = await page.evaluate(async ({ url, name, labels }) => {
      const t0 = performance.now();
      const m = await window.maple.loadModel(url, { prompts: "maple_prompts.safetensors", cache: false, device: "gpu" });
      const loadMs = performance.now() - t0;
      const t1 = performance.now();
      await m.setLabels(labels);
      const textMs = performance.now() - t1;
      const blob = await (await fetch(`/tests/fixtures/images/${name}`)).blob();
      const t2 = performance.now();
      const res = await m.classify(blob);
      const imageMs = performance.now() - t2;
      const mem = performance.memory ? performance.memory.usedJSHeapSize : null;
      const wasm = await window.maple.wasmMemoryBytes();
      return { logits: res.scores.map((s) => s.logit), loadMs, textMs, imageMs, jsHeap: mem, wasm };
    }, { url: `${base}/hub/maple-full/resolve/main/`, name, labels });
    const diff = Math.max(...ref.scores.map((s, j) => Math.abs(s.logit - r.logits[j])));
    summary.full = { image: name, labels: labels.length, maxAbsLogitDiffVsCpu: diff, loadMs: Math.round(r.loadMs),
      textMs: Math.round(r.textMs), imageMs: Math.round(r.imageMs), jsHeapBytes: r.jsHeap, wasmMemoryBytes: r.wasm,
      weightsBytes: (await stat(join(full.dir, "model.safetensors"))).size };
    check(diff <= 5e-3, `full-size: logits differ from the CPU path by ${diff}`);
  }
  summary.wasmBytes = (await stat(join(root, "web/pkg/maple_web_bg.wasm"))).size;
  summary.tarball = tarball;
  if (logs.some((l) => /panicked|RuntimeError/.test(l))) problems.push(logs.join("\n"));
} catch (e) {
  problems.push(String(e.stack || e));
} finally {
  await ctx.close();
  server.close();
}
console.log(JSON.stringify(summary));
for (const p of problems) console.error(p);
process.exitCode = problems.length ? 1 : 0;
