// Times the operator console's pages in the system Chromium against the daemon's own floor.
// Each sample is a full load of a fresh document (the page, its script and styles, then the
// view's API calls, until the view's heading is drawn), read on the browser's clock
// (performance.now(), whose origin is the navigation's start) by a MutationObserver installed
// before the document's first byte, so the driver's own round trips are not counted. The floor
// is a load of /healthz from the same daemon in the same browser, interleaved with the pages and
// read from its navigation timing (domContentLoadedEventEnd): what a navigation costs with
// nothing to draw. "cold" samples run in a new browser context (nothing
// cached); "warm" ones in a context that has loaded the console before (its files revalidated
// by entity tag). Prints one line per page: median and p95 in ms, and the median over the
// floor's median.
// Env: FALRA_URL, FALRA_OPERATOR_TOKEN, FALRA_TENANT, FALRA_CALL, RUNS (samples per page),
//      CONSOLE_MODULES (the directory holding playwright-core).
import { createRequire } from "node:module";
import { join } from "node:path";

const require = createRequire(join(process.env.CONSOLE_MODULES, "package.json"));
const { chromium } = require("playwright-core");
const base = process.env.FALRA_URL;
const runs = Number(process.env.RUNS || 20);

// [name, route, heading drawn when the view is done]
const pages = [
  ["tenants", "#/tenants", "Tenants"],
  ["tenant", `#/tenant/${process.env.FALRA_TENANT}`, "Versions"],
  ["calls", "#/calls", "Calls"],
  ["call", `#/call/${process.env.FALRA_CALL}`, "Logs"],
  ["jobs", "#/jobs", "Jobs"],
  ["usage", "#/usage", "Usage"],
  ["audit", "#/audit", "Audit log"],
  ["nodes", "#/nodes", "Nodes"],
];

// Runs in every document before its own script: notes when each heading first appears.
function markHeadings() {
  window.__drawn = {};
  const note = () => {
    for (const h of document.querySelectorAll("h1, h2")) {
      const text = h.textContent.trim();
      if (!(text in window.__drawn)) window.__drawn[text] = performance.now();
    }
  };
  new MutationObserver(note).observe(document, { childList: true, subtree: true });
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});

async function signedIn(context) {
  await context.addInitScript(markHeadings);
  const page = await context.newPage();
  const res = await page.request.post(`${base}/ui/session`, {
    data: { token: process.env.FALRA_OPERATOR_TOKEN },
  });
  if (!res.ok()) throw new Error(`sign-in: ${res.status()}`);
  return page;
}

// One load: a fresh document, timed from its navigation's start to `heading` drawn.
async function load(page, url, heading) {
  await page.goto("about:blank");
  await page.goto(url);
  await page.waitForSelector(`:is(h1, h2):text-is("${heading}")`);
  return page.evaluate((h) => window.__drawn[h], heading);
}

// The floor: a fresh document with nothing to draw, timed by its navigation entry.
async function bare(page, url) {
  await page.goto("about:blank");
  await page.goto(url, { waitUntil: "load" });
  return page.evaluate(() => performance.getEntriesByType("navigation")[0].domContentLoadedEventEnd);
}

const samples = { floor: [] };
for (const [name] of pages) {
  samples[`${name} warm`] = [];
  samples[`${name} cold`] = [];
}
try {
  const warm = await signedIn(await browser.newContext());
  // The warm context's first visit fills its cache; it is not counted.
  await load(warm, `${base}/ui#/tenants`, "Tenants");
  for (let i = 0; i < runs; i++) {
    for (const [name, hash, selector] of pages) {
      samples.floor.push(await bare(warm, `${base}/healthz`));
      samples[`${name} warm`].push(await load(warm, `${base}/ui${hash}`, selector));
      const context = await browser.newContext();
      const cold = await signedIn(context);
      samples[`${name} cold`].push(await load(cold, `${base}/ui${hash}`, selector));
      await context.close();
    }
  }
} finally {
  await browser.close();
}

const quantile = (xs, q) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
};
const floor = quantile(samples.floor, 0.5);
console.log(`${"load".padEnd(14)} ${"median ms".padStart(10)} ${"p95 ms".padStart(8)} ${"x floor".padStart(8)}`);
for (const [label, xs] of Object.entries(samples)) {
  const median = quantile(xs, 0.5);
  console.log(
    `${label.padEnd(14)} ${median.toFixed(1).padStart(10)} ${quantile(xs, 0.95).toFixed(1).padStart(8)} ${(median / floor).toFixed(2).padStart(8)}`,
  );
}
