// node check.mjs REPORT.html SCREENSHOT.png EXPECTED_CARDS
// Opens the report in Debian's headless Chromium, waits for it to render, checks the number of
// image cards and that every image thumbnail decoded, saves a screenshot, prints one JSON line.
import { chromium } from "playwright-core";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const [report, shot, expected] = process.argv.slice(2);
const args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"];
const ctx = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), "maple-chromium-")), {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium", headless: true, args,
  viewport: { width: 1280, height: 900 },
});
try {
  const page = await ctx.newPage();
  await page.goto(pathToFileURL(resolve(report)).href, { waitUntil: "load" });
  const cards = await page.locator(".card").count();
  const imgs = await page.$$eval("img", (els) => els.map((e) => e.complete && e.naturalWidth > 0));
  const bars = await page.locator(".bar > div").count();
  await page.screenshot({ path: shot, fullPage: true });
  console.log(JSON.stringify({ cards, images: imgs.length, decoded: imgs.filter(Boolean).length, bars }));
  if (cards !== Number(expected)) {
    console.error(`expected ${expected} cards, found ${cards}`);
    process.exitCode = 1;
  }
} finally {
  await ctx.close();
}
