// What tools/bench/web's scripts share: a local server whose pages are cross-origin isolated
// (COOP/COEP, so SharedArrayBuffer and threads are allowed), and Debian's headless Chromium.
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, extname } from "node:path";
import { chromium } from "playwright-core";

const types = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
  ".json": "application/json", ".png": "image/png", ".jpg": "image/jpeg" };
const isolate = { "cross-origin-opener-policy": "same-origin", "cross-origin-embedder-policy": "require-corp" };

// Serves `page` at / and each mount (a URL prefix ending in "/" for a directory, or a whole URL
// for one file) from disk, on 127.0.0.1. Returns the base URL and a close function.
export async function serveIsolated(mounts, page) {
  const server = createServer(async (req, res) => {
    const url = decodeURIComponent(new URL(req.url, "http://x").pathname);
    if (url === "/") {
      res.writeHead(200, { ...isolate, "content-type": "text/html" }).end(page);
      return;
    }
    const at = Object.keys(mounts).find((m) => url === m || (m.endsWith("/") && url.startsWith(m)));
    if (!at) { res.writeHead(404, isolate).end(); return; }
    const path = at.endsWith("/") ? join(mounts[at], url.slice(at.length)) : mounts[at];
    try {
      const body = await readFile(path);
      res.writeHead(200, { ...isolate, "content-type": types[extname(path)] || "application/octet-stream",
        "content-length": body.length }).end(body);
    } catch { res.writeHead(404, isolate).end(); }
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return { base: `http://127.0.0.1:${server.address().port}`, close: () => server.close() };
}

// Headless Chromium ($CHROMIUM, else /usr/bin/chromium) in a fresh profile, V8 given `jsFlags`.
export function launchChromium(jsFlags = ["--max-old-space-size=8192"]) {
  return chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), "maple-web-bench-")), {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium", headless: true,
    args: ["--headless=new", "--no-sandbox", "--disable-background-networking", "--disable-component-update",
      "--disable-sync", "--no-first-run", "--disable-quic", `--js-flags=${jsFlags.join(" ")}`],
  });
}
