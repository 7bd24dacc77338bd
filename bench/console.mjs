// Times the operator console's pages in the system Chromium against the same browser's floor.
//
// Each sample is read on the browser's clock (performance.now(), whose origin is the document's
// navigation) when the view's heading appears, noted by a MutationObserver installed before the
// document's first byte. The driver waits for it over the DevTools protocol (Runtime.evaluate
// of a promise), so nothing of the driver's own (its selector engine, its polling) runs in the
// page while it loads.
//
// Four kinds of load, each against a floor of the same kind — /healthz of the same daemon, a
// JSON document with nothing to run or draw, read from its navigation timing
// (domContentLoadedEventEnd):
//   reload  a fresh document of a console tab (a reload, a bookmark opened in it): the page is
//           fetched, its fingerprinted files come from the cache, the view's reads go out;
//   tab     a new tab of a browser that has used the console (files cached, a new page);
//   cold    a new browser context: nothing cached, the files fetched;
//   switch  a view reached from another by a link in the console (no new document): from the
//           link's follow to the view drawn. Its floor is the reload floor.
// Prints one line per page and kind: median and p95 in ms, and the median over its floor's.
// Env: FALRA_URL, FALRA_OPERATOR_TOKEN, FALRA_TENANT, FALRA_CALL, RUNS (samples per page and
//      kind), CONSOLE_MODULES (the directory holding playwright-core), CHROMIUM.
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

// Runs in every document before its own script: notes when each heading first appears and
// answers window.__drawnAt(text) with that time, once it has.
function markHeadings() {
  let drawn = {};
  const waiting = [];
  const note = () => {
    for (const h of document.querySelectorAll("h1, h2")) {
      const text = h.textContent.trim();
      if (!(text in drawn)) drawn[text] = performance.now();
    }
    for (let i = waiting.length - 1; i >= 0; i--) {
      const [text, resolve] = waiting[i];
      if (text in drawn) {
        resolve(drawn[text]);
        waiting.splice(i, 1);
      }
    }
  };
  new MutationObserver(note).observe(document, { childList: true, subtree: true });
  window.__drawnAt = (text) => new Promise((resolve) => (waiting.push([text, resolve]), note()));
  window.__forget = () => (drawn = {});
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});

async function value(cdp, expression) {
  const r = await cdp.send("Runtime.evaluate", { expression, awaitPromise: true, returnByValue: true });
  if (r.exceptionDetails) throw new Error(`${expression}: ${r.exceptionDetails.text}`);
  return r.result.value;
}

const drawnAt = (cdp, heading) => value(cdp, `window.__drawnAt(${JSON.stringify(heading)})`);
const floorOf = (cdp) =>
  value(cdp, `performance.getEntriesByType("navigation")[0].domContentLoadedEventEnd`);

async function signedInContext() {
  const context = await browser.newContext();
  await context.addInitScript(markHeadings);
  const res = await context.request.post(`${base}/ui/session`, {
    data: { token: process.env.FALRA_OPERATOR_TOKEN },
  });
  if (!res.ok()) throw new Error(`sign-in: ${res.status()}`);
  return context;
}

async function tab(context) {
  const page = await context.newPage();
  return { page, cdp: await context.newCDPSession(page) };
}

// A new page of `context` opening `url`: the heading's time, or the floor's with heading null.
async function fresh(context, url, heading) {
  const { page, cdp } = await tab(context);
  try {
    if (heading === null) {
      await page.goto(url, { waitUntil: "load" });
      return await floorOf(cdp);
    }
    await page.goto(url, { waitUntil: "commit" });
    return await drawnAt(cdp, heading);
  } finally {
    await page.close();
  }
}

const samples = {};
const add = (label, x) => (samples[label] ||= []).push(x);
try {
  const warm = await signedInContext();
  const main = await tab(warm);
  // The first visit fills the context's cache; it is not counted.
  await main.page.goto(`${base}/ui#/tenants`, { waitUntil: "commit" });
  await drawnAt(main.cdp, "Tenants");
  for (let i = 0; i < runs; i++) {
    for (const [name, hash, heading] of pages) {
      // reload: the floor's document reloaded, then the view's.
      await main.page.goto(`${base}/healthz`, { waitUntil: "load" });
      await main.page.reload({ waitUntil: "load" });
      add("floor reload", await floorOf(main.cdp));
      await main.page.goto(`${base}/ui/assets/icon.svg`, { waitUntil: "load" });
      await main.page.reload({ waitUntil: "load" });
      add("headers reload", await floorOf(main.cdp));
      await main.page.goto(`${base}/ui${hash}`, { waitUntil: "commit" });
      await drawnAt(main.cdp, heading);
      await main.page.reload({ waitUntil: "commit" });
      add(`${name} reload`, await drawnAt(main.cdp, heading));
      // switch: from another view, by the link's route.
      const [from, fromHeading] = name === "nodes" ? ["#/tenants", "Tenants"] : ["#/nodes", "Nodes"];
      await value(main.cdp, `(location.hash = ${JSON.stringify(from)}, window.__drawnAt(${JSON.stringify(fromHeading)}))`);
      add(
        `${name} switch`,
        await value(
          main.cdp,
          `(() => { window.__forget(); const t = performance.now(); location.hash = ${JSON.stringify(hash)};
             return window.__drawnAt(${JSON.stringify(heading)}).then((d) => d - t); })()`,
        ),
      );
      // tab: a new page of the same browser.
      add("floor tab", await fresh(warm, `${base}/healthz`, null));
      add("headers tab", await fresh(warm, `${base}/ui/assets/icon.svg`, null));
      add(`${name} tab`, await fresh(warm, `${base}/ui${hash}`, heading));
      // cold: a new context, nothing cached.
      const coldFloor = await signedInContext();
      add("floor cold", await fresh(coldFloor, `${base}/healthz`, null));
      add("headers cold", await fresh(coldFloor, `${base}/ui/assets/icon.svg`, null));
      await coldFloor.close();
      const cold = await signedInContext();
      add(`${name} cold`, await fresh(cold, `${base}/ui${hash}`, heading));
      await cold.close();
    }
  }
} finally {
  await browser.close();
}

const quantile = (xs, q) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
};
const floor = (kind) => quantile(samples[`floor ${kind === "switch" ? "reload" : kind}`], 0.5);
console.log(`${"load".padEnd(16)} ${"median ms".padStart(10)} ${"p95 ms".padStart(8)} ${"x floor".padStart(8)}`);
const order = Object.keys(samples).sort((a, b) => {
  const rank = (l) => ["reload", "switch", "tab", "cold"].indexOf(l.split(" ")[1]);
  const first = (l) => (l.startsWith("floor") ? 0 : l.startsWith("headers") ? 1 : 2);
  return rank(a) - rank(b) || first(a) - first(b);
});
for (const label of order) {
  const xs = samples[label];
  const median = quantile(xs, 0.5);
  console.log(
    `${label.padEnd(16)} ${median.toFixed(1).padStart(10)} ${quantile(xs, 0.95).toFixed(1).padStart(8)} ${(median / floor(label.split(" ")[1])).toFixed(2).padStart(8)}`,
  );
}
