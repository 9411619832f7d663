// node web/test.mjs — the browser test: serves the repository on 127.0.0.1, opens the demo page
// in Debian's headless Chromium with WebGPU (SwiftShader), loads the tiny synthetic model, checks
// the logits of the lossless fixture images against the PyTorch golden file (≤ 1e-3), then drives
// the page like a person (pick files, classify) and saves a screenshot. Prints one JSON summary.
import { createRequire } from "node:module";
import { createServer } from "node:http";
import { readFile, stat, mkdir } from "node:fs/promises";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, extname } from "node:path";

const root = resolve(new URL("..", import.meta.url).pathname);
// playwright-core is installed once, for both browser tests, in tools/report-check.
const { chromium } = createRequire(join(root, "tools/report-check/package.json"))("playwright-core");
const outDir = join(root, "target", "web-test");
await mkdir(outDir, { recursive: true });
const types = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
  ".json": "application/json", ".png": "image/png", ".jpg": "image/jpeg", ".txt": "text/plain" };
const server = createServer(async (req, res) => {
  const path = join(root, decodeURIComponent(new URL(req.url, "http://x").pathname));
  if (!path.startsWith(root)) { res.writeHead(403).end(); return; }
  try {
    const body = await readFile(path);
    res.writeHead(200, { "content-type": types[extname(path)] || "application/octet-stream" }).end(body);
  } catch { res.writeHead(404).end(); }
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const base = `http://127.0.0.1:${server.address().port}`;

const golden = JSON.parse(await readFile(join(root, "tests/fixtures/golden_tiny.json"), "utf8"));
// Lossless RGB/gray files: the browser decodes them to exactly Pillow's pixels.
const images = ["rgb_451x300.png", "rgb_100x80.png", "gray_300x451.png", "odd_641x97.png", "exact_224x224.png"];

const args = ["--headless=new", "--no-sandbox", "--disable-gpu-sandbox", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic", "--enable-unsafe-webgpu"];
const ctx = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), "maple-web-")), {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium", headless: true, args, viewport: { width: 960, height: 1100 },
});
let failed = false;
try {
  const page = await ctx.newPage();
  const logs = [];
  page.on("console", (m) => logs.push(m.text()));
  page.on("pageerror", (e) => logs.push(String(e)));
  await page.goto(`${base}/web/index.html`);
  await page.waitForFunction(() => window.maple !== undefined, null, { timeout: 60000 });
  const r = await page.evaluate(async ({ images }) => {
    const get = async (p) => new Uint8Array(await (await fetch(p)).arrayBuffer());
    const cfg = await (await fetch("/tests/fixtures/tiny/config.json")).text();
    const m = await window.maple.Maple.load(cfg, await get("/tests/fixtures/tiny/model.safetensors"),
      await get("/tests/fixtures/tiny/maple_prompts.safetensors"));
    await m.set_labels(await (await fetch("/tests/fixtures/labels.txt")).text());
    const out = [];
    let ms = 0;
    for (const name of images) {
      const px = await window.maple.pixelsOf(await (await fetch(`/tests/fixtures/images/${name}`)).blob());
      const t = performance.now();
      const logits = await m.classify(px.rgba, px.width, px.height);
      ms += performance.now() - t;
      out.push({ name, logits: Array.from(logits) });
    }
    return { adapter: m.adapter(), out, msPerImage: ms / images.length };
  }, { images });
  let maxDiff = 0;
  for (const { name, logits } of r.out) {
    const i = golden.images.indexOf(name);
    golden.maple.logits[i].forEach((g, j) => { maxDiff = Math.max(maxDiff, Math.abs(g - logits[j])); });
  }
  // Then as a person: pick the files, load, classify, look.
  const f = (p) => join(root, p);
  await page.setInputFiles("#config", f("tests/fixtures/tiny/config.json"));
  await page.setInputFiles("#weights", f("tests/fixtures/tiny/model.safetensors"));
  await page.setInputFiles("#prompts", f("tests/fixtures/tiny/maple_prompts.safetensors"));
  await page.fill("#labels", (await readFile(f("tests/fixtures/labels.txt"), "utf8")));
  await page.click("#load");
  await page.waitForFunction(() => document.getElementById("status").textContent.startsWith("model ready"), null, { timeout: 60000 });
  await page.setInputFiles("#image", f("tests/fixtures/images/rgb_451x300.png"));
  await page.waitForFunction(() => document.querySelectorAll("#results .row").length === 5, null, { timeout: 60000 });
  const shot = join(outDir, "web-demo.png");
  await page.screenshot({ path: shot, fullPage: true });
  const wasm = (await stat(join(root, "web/pkg/maple_web_bg.wasm"))).size;
  const summary = { adapter: r.adapter, images: r.out.length, maxAbsLogitDiff: maxDiff, msPerImage: Math.round(r.msPerImage),
    wasmBytes: wasm, screenshot: shot };
  console.log(JSON.stringify(summary));
  if (!(maxDiff <= 1e-3)) { console.error(`logits differ from the PyTorch golden by ${maxDiff}`); failed = true; }
  if (logs.some((l) => /panicked|RuntimeError/.test(l))) { console.error(logs.join("\n")); failed = true; }
} catch (e) {
  console.error(String(e));
  failed = true;
} finally {
  await ctx.close();
  server.close();
}
process.exitCode = failed ? 1 : 0;
