// Drives the operator console in the system Chromium: sign in, the pages, axe-core on each,
// a tenant's <script> payloads shown as text, the session cookie out of script's reach.
// FALRA_URL, FALRA_OPERATOR_TOKEN and SCREENSHOTS come from the test that starts the daemon.
import { chromium } from "playwright-core";
import { readFileSync, mkdirSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
const base = process.env.FALRA_URL;
const token = process.env.FALRA_OPERATOR_TOKEN;
const shots = process.env.SCREENSHOTS || "screenshots";
mkdirSync(shots, { recursive: true });

function check(ok, message) {
  if (!ok) throw new Error(message);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
try {
  // Confirmations are accepted; an alert can only come from a tenant's payload running.
  const alerts = [];
  page.on("dialog", async (d) => {
    if (d.type() !== "confirm") alerts.push(d.message());
    await d.accept();
  });

  async function axe(name) {
    // Evaluated over the DevTools protocol: the page's policy refuses inline script, rightly.
    await page.evaluate(axeSource);
    const result = await page.evaluate(async () => {
      // eslint-disable-next-line no-undef
      const r = await axe.run(document, { resultTypes: ["violations"] });
      return r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.length }));
    });
    const serious = result.filter((v) => v.impact === "serious" || v.impact === "critical");
    check(!serious.length, `${name}: axe found ${JSON.stringify(serious)}`);
  }

  async function visit(hash, name, waitFor) {
    await page.goto(`${base}/ui${hash}`);
    await page.waitForSelector(waitFor);
    await page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
    await axe(name);
  }

  await page.goto(`${base}/ui`);
  await page.waitForSelector("#token");
  await page.screenshot({ path: `${shots}/sign-in.png` });
  await page.fill("#token", token);
  await page.keyboard.press("Enter");
  await page.waitForSelector("h1:text('Tenants')");
  const cookies = await page.context().cookies();
  const session = cookies.find((c) => c.name === "falra_session");
  check(session && session.httpOnly && session.sameSite === "Strict", "session cookie attributes");
  check(!(await page.evaluate(() => document.cookie)).includes("falra_session"), "script reads the session");

  for (const [hash, name, sel] of [
    ["#/tenants", "tenants", "h1:text('Tenants')"],
    [`#/tenant/${process.env.FALRA_TENANT}`, "tenant", "h2:text('Versions')"],
    ["#/calls", "calls", "h1:text('Calls')"],
    ["#/jobs", "jobs", "h1:text('Jobs')"],
    ["#/usage", "usage", "h1:text('Usage')"],
    ["#/audit", "audit", "h1:text('Audit log')"],
    ["#/nodes", "nodes", "h1:text('Nodes')"],
  ]) {
    await visit(hash, name, sel);
  }
  if (process.env.FALRA_CALL) {
    await visit(`#/call/${process.env.FALRA_CALL}`, "call", "h2:text('Logs')");
    const logs = await page.textContent("pre.logs");
    check(logs.includes("<script>"), "the payload is shown as text");
  }

  // The audit log's action filter, within the events fetched.
  await page.goto(`${base}/ui#/audit?action=tenant.`);
  await page.waitForSelector("caption:text('whose action starts with tenant.')");
  const actions = await page.$$eval("tbody tr td:nth-child(3)", (tds) => tds.map((t) => t.textContent));
  check(actions.length > 0 && actions.every((a) => a.startsWith("tenant.")), `audit filtered: ${actions}`);

  // A tenant's whole life, from the console: create it from a git repository, sync and watch
  // the deploy finish, issue a token, call over the API and find the call with its logs, change
  // a policy, deploy again and roll back, revoke the token and see the next call refused.
  const repo = process.env.FALRA_REPO;
  const operator = { Authorization: `Bearer ${token}` };
  const adminGet = async (path) => (await fetch(`${base}/admin/v1${path}`, { headers: operator })).json();
  await page.goto(`${base}/ui#/tenants`);
  await page.waitForSelector("h2:text('New tenant')");
  await page.fill("input[name=name]", "web");
  await page.fill("input[name=repo]", `file://${repo}`);
  await page.click("button:text('Create tenant')");
  await page.waitForSelector("h2:text('Sync')");
  async function syncInBrowser() {
    await page.click("button:text('Sync now')");
    await page.waitForSelector(".steps li.done", { timeout: 60000 });
    await page.waitForSelector("button:text('Sync now'):not([disabled])");
  }
  await syncInBrowser();
  check((await page.locator(".steps li").count()) >= 3, "the deploy's steps are shown");
  await page.screenshot({ path: `${shots}/sync.png`, fullPage: true });
  await page.fill("input[name=scopes]", "call, jobs");
  await page.click("button:text('Issue token')");
  const issued = await (await page.waitForSelector("#issued-token")).inputValue();
  check(issued.startsWith("flr_"), "a token is shown once");
  await page.screenshot({ path: `${shots}/token-issued.png` });
  const call = async (fn = "xss.evil") =>
    await fetch(`${base}/v1/call`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token: issued, fn }),
    });
  const answer = await (await call()).json();
  check(answer.ok, `the call answers: ${JSON.stringify(answer)}`);
  await page.goto(`${base}/ui#/calls?tenant=web`);
  await page.click(`a:text('${answer.call_id}')`);
  await page.waitForSelector("h2:text('Logs')");
  await page.screenshot({ path: `${shots}/call-found.png`, fullPage: true });
  check((await page.textContent("main")).includes("<img src=x"), "the call's logs are found");

  await page.goto(`${base}/ui#/tenant/web`);
  await page.waitForSelector("h2:text('Policy')");
  // The view may still be drawing its reads when the form first shows: a value typed into a
  // form it then replaces is lost ("nothing changed"), so the edit is made again, a few times.
  for (let attempt = 1; ; attempt++) {
    await page.fill("input[aria-label='timeout_ms override']", "2000");
    await page.click("button:text('Save policy')");
    const said = await page.waitForSelector("#toast:is(:text('Policy saved.'), :text('nothing changed'))");
    if ((await said.textContent()).includes("Policy saved.") || attempt === 3) break;
  }
  await page.waitForSelector("#toast:text('Policy saved.')");
  check((await adminGet("/tenants/web")).overrides.timeout_ms === 2000, "the policy changed");
  // A cleared override goes back to the plan (a CPU quota cleared is the plan's, not none).
  await page.waitForSelector("input[aria-label='timeout_ms override'][value='2000']");
  await page.fill("input[aria-label='cpu_seconds_per_month override']", "50");
  await page.click("button:text('Save policy')");
  await page.waitForSelector("input[aria-label='cpu_seconds_per_month override'][value='50']");
  check((await adminGet("/tenants/web")).overrides.cpu_seconds_per_month === 50, "a quota set");
  await page.fill("input[aria-label='timeout_ms override']", "");
  await page.fill("input[aria-label='cpu_seconds_per_month override']", "");
  await page.click("button:text('Save policy')");
  await page.waitForSelector("input[aria-label='cpu_seconds_per_month override'][value='']");
  const reset = await adminGet("/tenants/web");
  check(
    !("timeout_ms" in reset.overrides) && !("cpu_seconds_per_month" in reset.overrides),
    `cleared overrides are the plan's again: ${JSON.stringify(reset.overrides)}`,
  );

  // Secrets and environment: set from the console, given to the code, never shown, removed.
  const seen = async () => (await (await call("xss.env")).json()).result;
  const secret = "s3cr3t-console-value";
  await page.fill("input[name=secret]", "API_KEY");
  await page.fill("input[name=secret_value]", secret);
  await page.check("input[name=expose_env]");
  await page.click("button:text('Set secret')");
  await page.waitForSelector("td code:text('API_KEY')");
  await page.fill("input[name=env_name]", "GREETING");
  await page.fill("input[name=env_value]", "hello");
  await page.click("button:text('Set variable')");
  await page.waitForSelector("td code:text('GREETING')");
  const given = await seen();
  check(given.GREETING === "hello" && given.API_KEY === secret, `the code gets both: ${JSON.stringify(given)}`);
  // Set again with the box unticked, the secret is the node's only.
  await page.fill("input[name=secret]", "API_KEY");
  await page.fill("input[name=secret_value]", secret);
  await page.click("button:text('Set secret')");
  await page.waitForSelector("tr:has(code:text('API_KEY')) td:text('node only')");
  const hidden = await seen();
  check(hidden.API_KEY === null && hidden.GREETING === "hello", `no longer given: ${JSON.stringify(hidden)}`);
  await page.reload();
  await page.waitForSelector("td code:text('API_KEY')");
  const html = await page.content();
  check(!html.includes(secret) && !html.includes(">hello<"), "values are never shown");
  await page.screenshot({ path: `${shots}/secrets.png`, fullPage: true });
  for (const name of ["API_KEY", "GREETING"]) {
    await page.click(`tr:has(code:text('${name}')) button:text('Remove')`);
    await page.waitForSelector(`td code:text('${name}')`, { state: "detached" });
  }
  const gone = await seen();
  check(gone.GREETING === null && gone.API_KEY === null, `both removed: ${JSON.stringify(gone)}`);

  // A job started over the API, found and cancelled in the console.
  const submitted = await (
    await fetch(`${base}/v1/jobs`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token: issued, fn: "xss.slow" }),
    })
  ).json();
  check(submitted.job_id, `a job: ${JSON.stringify(submitted)}`);
  await page.goto(`${base}/ui#/jobs?tenant=web`);
  await page.waitForSelector(`tr:has(code:text('${submitted.job_id}')) button:text('Cancel')`);
  await page.screenshot({ path: `${shots}/job-running.png`, fullPage: true });
  await page.click(`tr:has(code:text('${submitted.job_id}')) button:text('Cancel')`);
  await page.waitForSelector("#toast:text('Cancelled.')");
  await page.waitForSelector(`tr:has(code:text('${submitted.job_id}')) .badge:text('cancelled')`);
  const job = await adminGet(`/tenants/web/jobs/${submitted.job_id}`);
  check(job.status === "cancelled", `the job is cancelled: ${job.status}`);

  // Usage, exported as CSV by the console's link.
  await page.goto(`${base}/ui#/usage?tenant=web`);
  await page.waitForSelector("a:text('Export CSV')");
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("a:text('Export CSV')")]);
  const csv = readFileSync(await download.path(), "utf8").split("\n");
  check(csv[0].startsWith("tenant,fn,calls,"), `a CSV header: ${csv[0]}`);
  check(csv.some((l) => l.startsWith("web,xss.env,")), `the tenant's calls are in it: ${csv.join("|")}`);

  execFileSync("git", ["-C", repo, "commit", "-q", "--allow-empty", "-m", "second"]);
  const first = (await adminGet("/tenants/web")).active_version;
  await page.goto(`${base}/ui#/tenant/web`);
  await page.waitForSelector("h2:text('Sync')");
  await syncInBrowser();
  await page.waitForFunction(() => document.querySelectorAll("button.quiet").length > 0);
  await page.waitForSelector("button:text('Roll back to this')");
  await page.screenshot({ path: `${shots}/versions.png`, fullPage: true });
  await page.click("button:text('Roll back to this')");
  await page.waitForSelector("#toast:text('Rolled back.')");
  check((await adminGet("/tenants/web")).active_version === first, "rolled back to the first version");

  await page.waitForSelector("button:text('Revoke')");
  await page.click("button:text('Revoke')");
  await page.waitForSelector("#toast:text('Revoked')");
  const refused = await call();
  check(refused.status === 401, `a revoked token is refused (${refused.status})`);
  check((await refused.json()).error.code === "token_revoked", "as token_revoked");

  // Keyboard only: the skip link, then the sections' links, reached and followed by keys.
  await page.goto(`${base}/ui#/tenants`);
  await page.reload();
  await page.waitForSelector("h1:text('Tenants')");
  // The page came with its session: the view was drawn without asking for it first.
  const asked = await page.evaluate(() =>
    performance.getEntriesByType("resource").filter((e) => new URL(e.name).pathname === "/ui/session").length,
  );
  check(asked === 0, `a signed-in page asked for its session ${asked} times`);
  await page.keyboard.press("Tab");
  check(await page.evaluate(() => document.activeElement.classList.contains("skip")), "the skip link comes first");
  let reached = false;
  for (let i = 0; i < 8 && !reached; i++) {
    await page.keyboard.press("Tab");
    reached = await page.evaluate(() => document.activeElement.textContent === "Calls");
  }
  check(reached, "the Calls link is reached by Tab");
  await page.keyboard.press("Enter");
  await page.waitForSelector("h1:text('Calls')");

  check(!alerts.length, `script ran in the console: ${alerts}`);
  await page.click("#sign-out");
  await page.waitForSelector("#token");
  const after = await page.evaluate(async () => (await fetch("/admin/v1/tenants")).status);
  check(after === 401, "signed out, the console's API refuses");
  await page.reload();
  await page.waitForSelector("#token");
  check(await page.evaluate(() => document.getElementById("top").hidden), "signed out, a reload shows no header");
} catch (e) {
  // What the page looked like when the flow stopped, beside the other screenshots.
  await page.screenshot({ path: `${shots}/failure.png`, fullPage: true }).catch(() => {});
  throw e;
} finally {
  await browser.close();
}
console.log("console flow passed");
