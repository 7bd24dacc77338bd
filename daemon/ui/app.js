// The operator console: one page whose views follow the URL's fragment (#/tenants, …).
//
// Everything shown comes from the operator API of the same origin; every value a tenant
// controls (names, results, logs, error messages) enters the document through textContent or
// an attribute set one by one, never as markup. Changes carry the session's CSRF token.

const $main = document.getElementById("main");
const $nav = document.getElementById("nav");
const $top = document.getElementById("top");
const $toast = document.getElementById("toast");
let csrf = "";
let navigated = false;
// Each route() draws one generation; a view still loading when the next one starts (a slow
// answer, a refresh after a sync) draws nothing.
let generation = 0;

// -- the DOM, by construction only ----------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElementNS(
    ["svg", "rect", "line", "text", "g", "polyline", "title"].includes(tag)
      ? "http://www.w3.org/2000/svg"
      : "http://www.w3.org/1999/xhtml",
    tag,
  );
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function show(...nodes) {
  $main.replaceChildren(...nodes.filter((n) => n !== null && n !== undefined && n !== false));
  // After following a link, focus moves to the new content; on a fresh load it stays at the
  // top, so the skip link is the first stop of Tab.
  if (navigated) $main.focus({ preventScroll: true });
}

function showIf(mine, ...nodes) {
  if (mine === generation) show(...nodes);
}

function toast(message, bad) {
  $toast.textContent = message;
  $toast.className = bad ? "bad" : "good";
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => ($toast.textContent = ""), 6000);
}

// -- the API -------------------------------------------------------------------------------

class ApiFailure extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error && body.error.code;
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = csrf;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (res.status === 401 && !path.startsWith("/ui/session")) {
    signedOut("Your session ended; sign in again.");
    throw new ApiFailure(res.status, data);
  }
  if (!res.ok) throw new ApiFailure(res.status, data);
  return data;
}

const enc = encodeURIComponent;
const fmtMs = (ms) => (ms >= 10000 ? `${(ms / 1000).toFixed(1)} s` : `${ms} ms`);
const fmtCpu = (ms) => `${(ms / 1000).toFixed(1)} s`;
const today = () => new Date().toISOString().slice(0, 10);

function failed(where) {
  return (e) => {
    if (e.status === 401) return;
    toast(`${where}: ${e.message}`, true);
  };
}

// -- sign in and out -----------------------------------------------------------------------

function signedOut(message) {
  generation += 1;
  csrf = "";
  $top.hidden = true;
  const token = h("input", {
    id: "token",
    name: "token",
    type: "password",
    autocomplete: "current-password",
    required: true,
    spellcheck: "false",
  });
  const error = h("p", { class: "error", role: "alert" }, message || "");
  const form = h(
    "form",
    { class: "signin card", onsubmit: (ev) => signIn(ev, token, error) },
    h("h1", {}, "Falra console"),
    h("p", { class: "muted" }, "Sign in with an operator token (falra admin init prints one)."),
    h("label", { for: "token" }, "Operator token"),
    token,
    error,
    h("button", { type: "submit" }, "Sign in"),
  );
  show(form);
  token.focus();
}

async function signIn(ev, input, error) {
  ev.preventDefault();
  try {
    const s = await api("POST", "/ui/session", { token: input.value });
    input.value = "";
    started(s);
    if (!location.hash || location.hash === "#/") location.hash = "#/tenants";
    else route();
  } catch (e) {
    error.textContent = e.message;
  }
}

function started(session) {
  csrf = session.csrf_token;
  document.getElementById("who").textContent = session.operator_token_id;
  $top.hidden = false;
}

document.getElementById("sign-out").addEventListener("click", async () => {
  try {
    await api("DELETE", "/ui/session");
  } catch (e) {
    failed("Sign out")(e);
  }
  location.hash = "#/";
  signedOut("Signed out.");
});

// -- tables --------------------------------------------------------------------------------

function table(caption, columns, rows, empty) {
  if (!rows.length) return h("p", { class: "muted" }, empty || "Nothing yet.");
  return h(
    "div",
    { class: "scroll" },
    h(
      "table",
      {},
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows.map((r) => h("tr", {}, r.map((cell) => h("td", {}, cell))))),
    ),
  );
}

function badge(outcome) {
  const ok = outcome === "ok" || outcome === "succeeded" || outcome === "live" || outcome === "active";
  const pending = outcome === "queued" || outcome === "running" || outcome === "cancelled";
  return h("span", { class: ok ? "badge ok" : pending ? "badge pending" : "badge bad" }, outcome);
}

function field(label, input) {
  const id = input.id || `f_${Math.random().toString(36).slice(2)}`;
  input.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, label), input);
}

function confirmThen(message, action) {
  return () => {
    if (window.confirm(message)) action();
  };
}

// -- tenants -------------------------------------------------------------------------------

async function viewTenants() {
  const mine = generation;
  const [list, usage, plans] = await Promise.all([
    api("GET", "/admin/v1/tenants"),
    api("GET", `/admin/v1/usage?from=${today()}`),
    api("GET", "/admin/v1/plans"),
  ]);
  const used = new Map(usage.tenants.map((t) => [t.tenant, t]));
  const rows = list.tenants.map((t) => {
    const u = used.get(t.name) || { calls: 0, errors: 0 };
    return [
      h("a", { href: `#/tenant/${enc(t.name)}` }, t.name),
      t.plan,
      t.active_version ? h("code", { class: "id" }, t.active_version) : h("span", { class: "muted" }, "none"),
      String(u.calls),
      u.errors ? h("span", { class: "badge bad" }, String(u.errors)) : "0",
    ];
  });
  const name = h("input", { name: "name", required: true, pattern: "[a-z][a-z0-9_]{0,31}" });
  const repo = h("input", { name: "repo", placeholder: "https://… or file:///…" });
  const branch = h("input", { name: "branch", placeholder: "main" });
  const plan = h(
    "select",
    { name: "plan" },
    plans.plans.map((p) => h("option", { value: p.name, selected: p.name === "default" }, p.name)),
  );
  const create = async (ev) => {
    ev.preventDefault();
    try {
      const body = { name: name.value, plan: plan.value };
      if (repo.value) body.repo = repo.value;
      if (branch.value) body.branch = branch.value;
      await api("POST", "/admin/v1/tenants", body);
      toast(`Tenant ${name.value} created.`);
      location.hash = `#/tenant/${enc(name.value)}`;
    } catch (e) {
      failed("Create tenant")(e);
    }
  };
  showIf(mine,
    h("h1", {}, "Tenants"),
    table("Tenants, with their calls today (UTC)", ["Tenant", "Plan", "Active version", "Calls today", "Errors today"], rows, "No tenants yet: create one below."),
    h(
      "form",
      { class: "card inline", onsubmit: create },
      h("h2", {}, "New tenant"),
      field("Name", name),
      field("Git repository", repo),
      field("Branch", branch),
      field("Plan", plan),
      h("button", { type: "submit" }, "Create tenant"),
    ),
  );
}

async function viewTenant(name) {
  const mine = generation;
  const [t, versions, tokens, secrets, env, plans] = await Promise.all([
    api("GET", `/admin/v1/tenants/${enc(name)}`),
    api("GET", `/admin/v1/tenants/${enc(name)}/versions`),
    api("GET", `/admin/v1/tenants/${enc(name)}/tokens`),
    api("GET", `/admin/v1/tenants/${enc(name)}/secrets`),
    api("GET", `/admin/v1/tenants/${enc(name)}/env`),
    api("GET", "/admin/v1/plans"),
  ]);
  const reload = () => route();
  const base = encodeURIComponent(name);

  // Sync, with the deploy's steps as they happen.
  const steps = h("ol", { class: "steps", "aria-live": "polite" });
  const syncButton = h("button", { type: "button" }, "Sync now");
  syncButton.addEventListener("click", async () => {
    syncButton.disabled = true;
    steps.replaceChildren();
    try {
      const res = await fetch(`/admin/v1/tenants/${base}/sync`, {
        method: "POST",
        headers: { Accept: "text/event-stream", "X-CSRF-Token": csrf },
        credentials: "same-origin",
      });
      if (!res.ok) throw new ApiFailure(res.status, await res.json().catch(() => null));
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      let outcome = null;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const raw = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const ev = { event: "message", data: "" };
          for (const line of raw.split("\n")) {
            if (line.startsWith("event:")) ev.event = line.slice(6).trim();
            if (line.startsWith("data:")) ev.data += line.slice(5).trim();
          }
          if (!ev.data) continue;
          const data = JSON.parse(ev.data);
          if (ev.event === "step") {
            const label = `${data.step}: ${data.state}${data.ms !== undefined ? ` (${data.ms} ms)` : ""}`;
            steps.append(h("li", { class: data.state }, label));
          } else {
            outcome = { event: ev.event, data };
          }
        }
      }
      if (outcome && outcome.event === "done") {
        steps.append(h("li", { class: "finished done" }, `Deployed ${outcome.data.version || ""}`));
        toast("Sync finished.");
        setTimeout(reload, 800);
      } else if (outcome) {
        const msg = outcome.data.error ? outcome.data.error.message : "the sync failed";
        steps.append(h("li", { class: "failed" }, `Failed: ${msg}`));
        toast(`Sync failed: ${msg}`, true);
      }
    } catch (e) {
      failed("Sync")(e);
    } finally {
      syncButton.disabled = false;
    }
  });

  // Policy: each value, the plan's beside it, an override where set.
  const plan = plans.plans.find((p) => p.name === t.plan);
  const planPolicy = (plan && plan.policy) || {};
  const overrides = t.overrides || {};
  const editable = ["memory_mb", "timeout_ms", "cpu_percent", "pids", "tmp_mb", "max_concurrency", "calls_per_minute", "network", "builtins", "cpu_seconds_per_month", "job_timeout_ms", "log_retention_hours", "log_mb"];
  const inputs = {};
  // How a policy value reads in a cell and in its input: a network allow-list as JSON, the CPU
  // quota's null as "unlimited" (the one field where null is a value).
  const shown = (key, v) => {
    if (v === undefined) return "";
    if (v === null) return key === "cpu_seconds_per_month" ? "unlimited" : "";
    return typeof v === "object" ? JSON.stringify(v) : String(v);
  };
  const policyRows = editable.map((key) => {
    const input = h("input", {
      name: key,
      value: shown(key, overrides[key]),
      placeholder: "plan's",
      "aria-label": `${key} override`,
    });
    inputs[key] = input;
    return [h("code", {}, key), shown(key, planPolicy[key]) || "—", input, shown(key, t.policy[key]) || "—"];
  });
  const savePolicy = async (ev) => {
    ev.preventDefault();
    // Only what changed is sent; a cleared override goes back to the plan through `reset`
    // (null is no value, and for the CPU quota it would mean no quota at all).
    const patch = {};
    const reset = [];
    for (const [key, input] of Object.entries(inputs)) {
      const v = input.value.trim();
      if (v === shown(key, overrides[key])) continue;
      if (v === "") reset.push(key);
      else if (v === "unlimited" && key === "cpu_seconds_per_month") patch[key] = null;
      else if (v === "true" || v === "false") patch[key] = v === "true";
      else if (/^\d+$/.test(v)) patch[key] = Number(v);
      else if (v.startsWith("{") || v.startsWith("[")) {
        try {
          patch[key] = JSON.parse(v);
        } catch {
          toast(`Policy: ${key} is not valid JSON.`, true);
          input.focus();
          return;
        }
      } else patch[key] = v;
    }
    if (reset.length) patch.reset = reset;
    if (!Object.keys(patch).length) {
      toast("Policy: nothing changed.");
      return;
    }
    try {
      await api("PUT", `/admin/v1/tenants/${base}/policy`, patch);
      toast("Policy saved.");
      reload();
    } catch (e) {
      failed("Policy")(e);
    }
  };

  // Versions, with rollback.
  const versionRows = versions.versions.map((v) => [
    h("code", { class: "id" }, v.version || v.id),
    v.commit ? h("code", { class: "id" }, v.commit.slice(0, 12)) : "—",
    (v.uploads || []).join(", ") || "—",
    v.activated_at || "—",
    (v.version || v.id) === t.active_version
      ? h("span", { class: "badge ok" }, "active")
      : h(
          "button",
          {
            type: "button",
            class: "quiet",
            onclick: confirmThen(`Make ${v.version || v.id} the active version?`, async () => {
              try {
                await api("POST", `/admin/v1/tenants/${base}/rollback`, { version: v.version || v.id });
                toast("Rolled back.");
                reload();
              } catch (e) {
                failed("Rollback")(e);
              }
            }),
          },
          "Roll back to this",
        ),
  ]);

  // Tokens: issue (shown once), list, revoke.
  const issued = h("div", { "aria-live": "polite" });
  const scopes = h("input", { name: "scopes", value: "call" });
  const issue = async (ev) => {
    ev.preventDefault();
    try {
      const tok = await api("POST", `/admin/v1/tenants/${base}/tokens`, {
        scopes: scopes.value.split(",").map((s) => s.trim()).filter(Boolean),
      });
      const value = h("input", { readonly: true, value: tok.token, id: "issued-token", "aria-label": "The new token" });
      issued.replaceChildren(
        h(
          "div",
          { class: "card once" },
          h("p", {}, "Copy this token now: it is not shown again."),
          value,
          h(
            "button",
            {
              type: "button",
              onclick: async () => {
                try {
                  await navigator.clipboard.writeText(tok.token);
                  toast("Copied.");
                } catch {
                  value.select();
                  toast("Select and copy the token.", true);
                }
              },
            },
            "Copy",
          ),
          h("button", { type: "button", class: "quiet", onclick: reload }, "Done"),
        ),
      );
    } catch (e) {
      failed("Issue token")(e);
    }
  };
  const tokenRows = tokens.tokens.map((k) => [
    h("code", { class: "id" }, k.id),
    h("code", {}, k.prefix || ""),
    (k.scopes || []).join(", "),
    k.revoked_at ? h("span", { class: "badge bad" }, "revoked") : h("span", { class: "badge ok" }, "live"),
    k.last_used_at || "never",
    k.revoked_at
      ? ""
      : h(
          "button",
          {
            type: "button",
            class: "danger",
            onclick: confirmThen(`Revoke ${k.id}? Calls with it are refused at once.`, async () => {
              try {
                await api("DELETE", `/admin/v1/tokens/${enc(k.id)}`);
                toast(`Revoked ${k.id}.`);
                reload();
              } catch (e) {
                failed("Revoke")(e);
              }
            }),
          },
          "Revoke",
        ),
  ]);

  // Secrets and environment: names only, values never come back.
  const secretName = h("input", { name: "secret", required: true });
  const secretValue = h("input", { name: "secret_value", type: "password", required: true, autocomplete: "off" });
  const secretEnv = h("input", { type: "checkbox", name: "expose_env" });
  const setSecret = async (ev) => {
    ev.preventDefault();
    try {
      // Said every time: left out, the server would keep a rotated secret's old exposure.
      const body = { value: secretValue.value, expose: secretEnv.checked ? "env" : "none" };
      await api("PUT", `/admin/v1/tenants/${base}/secrets/${enc(secretName.value)}`, body);
      toast(`Secret ${secretName.value} set.`);
      reload();
    } catch (e) {
      failed("Secret")(e);
    }
  };
  const secretRows = (secrets.secrets || []).map((s) => {
    const key = typeof s === "string" ? s : s.name || s.key;
    return [
      h("code", {}, key),
      typeof s === "object" && s.expose === "env" ? "env" : "node only",
      h(
        "button",
        {
          type: "button",
          class: "danger",
          onclick: confirmThen(`Remove secret ${key}?`, async () => {
            try {
              await api("DELETE", `/admin/v1/tenants/${base}/secrets/${enc(key)}`);
              reload();
            } catch (e) {
              failed("Secret")(e);
            }
          }),
        },
        "Remove",
      ),
    ];
  });
  const vars = env.env || {};
  const envName = h("input", { name: "env_name", required: true });
  const envValue = h("input", { name: "env_value", type: "password", autocomplete: "off" });
  const putEnv = async (next) => {
    // The body is the variables themselves, names to values.
    await api("PUT", `/admin/v1/tenants/${base}/env`, next);
    reload();
  };
  const envRows = Object.keys(vars).map((k) => [
    h("code", {}, k),
    h(
      "button",
      {
        type: "button",
        class: "danger",
        onclick: confirmThen(`Remove ${k}?`, () => {
          const next = { ...vars };
          delete next[k];
          putEnv(next).catch(failed("Environment"));
        }),
      },
      "Remove",
    ),
  ]);

  showIf(mine,
    h("p", { class: "crumbs" }, h("a", { href: "#/tenants" }, "Tenants"), " / ", name),
    h("h1", {}, name),
    h(
      "dl",
      { class: "facts" },
      h("dt", {}, "Plan"), h("dd", {}, t.plan),
      h("dt", {}, "Repository"), h("dd", {}, t.repo || "—"),
      h("dt", {}, "Branch"), h("dd", {}, t.branch),
      h("dt", {}, "Active version"), h("dd", {}, t.active_version || "none"),
    ),
    h("section", { class: "card" }, h("h2", {}, "Sync"), h("p", { class: "muted" }, "Fetch the branch and deploy it."), syncButton, steps),
    h("section", { class: "card" }, h("h2", {}, "Versions"), table("Versions", ["Version", "Commit", "Uploads", "Activated", ""], versionRows, "Not deployed yet.")),
    h(
      "section",
      { class: "card" },
      h("h2", {}, "Tokens"),
      table("Tokens", ["Id", "Prefix", "Scopes", "State", "Last used", ""], tokenRows, "No tokens."),
      h("form", { class: "inline", onsubmit: issue }, field("Scopes (comma-separated)", scopes), h("button", { type: "submit" }, "Issue token")),
      issued,
    ),
    h(
      "section",
      { class: "card" },
      h("h2", {}, "Policy"),
      h(
        "form",
        { onsubmit: savePolicy },
        table("Policy: the plan's value, the tenant's override and the effective value", ["Setting", `Plan ${t.plan}`, "Override", "Effective"], policyRows),
        h("button", { type: "submit" }, "Save policy"),
      ),
    ),
    h(
      "section",
      { class: "card" },
      h("h2", {}, "Secrets"),
      table("Secrets (values are never shown)", ["Name", "Given to", ""], secretRows, "No secrets."),
      h("form", { class: "inline", onsubmit: setSecret }, field("Name", secretName), field("Value", secretValue), field("Give to the code as an environment variable", secretEnv), h("button", { type: "submit" }, "Set secret")),
    ),
    h(
      "section",
      { class: "card" },
      h("h2", {}, "Environment"),
      table("Environment variables (values are not shown)", ["Name", ""], envRows, "No variables."),
      h(
        "form",
        {
          class: "inline",
          onsubmit: (ev) => {
            ev.preventDefault();
            putEnv({ ...vars, [envName.value]: envValue.value }).catch(failed("Environment"));
          },
        },
        field("Name", envName),
        field("Value", envValue),
        h("button", { type: "submit" }, "Set variable"),
      ),
    ),
    h("p", {}, h("a", { href: `#/calls?tenant=${enc(name)}` }, "Calls of this tenant"), " · ", h("a", { href: `#/jobs?tenant=${enc(name)}` }, "Jobs"), " · ", h("a", { href: `#/audit?tenant=${enc(name)}` }, "Audit")),
  );
}

// -- calls and jobs ------------------------------------------------------------------------

function params() {
  const q = location.hash.split("?")[1] || "";
  return new URLSearchParams(q);
}

// A tenant filter; `list` is the tenants listing when the view has fetched it already.
async function tenantSelect(current, all, list) {
  if (!list) list = await api("GET", "/admin/v1/tenants");
  return h(
    "select",
    { name: "tenant" },
    all ? h("option", { value: "" }, "All tenants") : null,
    list.tenants.map((t) => h("option", { value: t.name, selected: t.name === current }, t.name)),
  );
}

async function viewCalls() {
  const mine = generation;
  const p = params();
  const query = new URLSearchParams();
  for (const k of ["tenant", "status", "code", "cursor"]) if (p.get(k)) query.set(k, p.get(k));
  const [page, tenant] = await Promise.all([
    api("GET", `/admin/v1/calls?${query}`),
    tenantSelect(p.get("tenant"), true),
  ]);
  const status = h(
    "select",
    { name: "status" },
    ["", "succeeded", "failed"].map((s) => h("option", { value: s, selected: s === (p.get("status") || "") }, s || "Any status")),
  );
  const code = h("input", { name: "code", value: p.get("code") || "", placeholder: "timeout, function_error…" });
  const filter = (ev) => {
    ev.preventDefault();
    const next = new URLSearchParams();
    if (tenant.value) next.set("tenant", tenant.value);
    if (status.value) next.set("status", status.value);
    if (code.value) next.set("code", code.value.trim());
    location.hash = `#/calls?${next}`;
  };
  const rows = page.calls.map((c) => [
    h("a", { href: `#/call/${enc(c.call_id)}` }, c.call_id),
    c.tenant,
    h("code", {}, c.fn),
    badge(c.error ? c.error.code : "ok"),
    fmtMs(c.usage.wall_ms),
    c.at,
  ]);
  let more = null;
  if (page.next_cursor) {
    const next = new URLSearchParams(query);
    next.set("cursor", page.next_cursor);
    more = h("a", { href: `#/calls?${next}`, class: "button" }, "Older calls");
  }
  showIf(mine,
    h("h1", {}, "Calls"),
    h("form", { class: "card inline", onsubmit: filter }, field("Tenant", tenant), field("Status", status), field("Error code", code), h("button", { type: "submit" }, "Filter")),
    table("Calls, newest first", ["Call", "Tenant", "Function", "Outcome", "Wall", "At"], rows, "No calls match."),
    more,
  );
}

async function viewCall(id) {
  const mine = generation;
  const c = await api("GET", `/admin/v1/calls/${enc(id)}`);
  showIf(mine,
    h("p", { class: "crumbs" }, h("a", { href: "#/calls" }, "Calls"), " / ", id),
    h("h1", {}, id),
    h(
      "dl",
      { class: "facts" },
      h("dt", {}, "Tenant"), h("dd", {}, h("a", { href: `#/tenant/${enc(c.tenant)}` }, c.tenant)),
      h("dt", {}, "Function"), h("dd", {}, h("code", {}, c.fn)),
      h("dt", {}, "Version"), h("dd", {}, c.version || "—"),
      h("dt", {}, "Status"), h("dd", {}, badge(c.status)),
      h("dt", {}, "At"), h("dd", {}, c.at),
      h("dt", {}, "Wall"), h("dd", {}, fmtMs(c.usage.wall_ms)),
      h("dt", {}, "CPU"), h("dd", {}, `${c.usage.cpu_ms} ms`),
      h("dt", {}, "Peak memory"), h("dd", {}, `${(c.usage.peak_memory_bytes / 1048576).toFixed(1)} MiB`),
    ),
    c.error ? h("section", { class: "card" }, h("h2", {}, "Error"), h("p", {}, badge(c.error.code)), h("pre", { class: "logs" }, c.error.message || "")) : null,
    h("section", { class: "card" }, h("h2", {}, "Logs"), c.logs ? h("pre", { class: "logs" }, c.logs) : h("p", { class: "muted" }, "Nothing printed (or the logs were pruned).")),
  );
}

async function viewJobs() {
  const mine = generation;
  const p = params();
  const list = await api("GET", "/admin/v1/tenants");
  const name = p.get("tenant") || (list.tenants[0] && list.tenants[0].name);
  if (!name) return showIf(mine, h("h1", {}, "Jobs"), h("p", { class: "muted" }, "No tenants yet."));
  const query = new URLSearchParams();
  if (p.get("status")) query.set("status", p.get("status"));
  const page = await api("GET", `/admin/v1/tenants/${enc(name)}/jobs?${query}`);
  const tenant = await tenantSelect(name, false, list);
  const status = h(
    "select",
    { name: "status" },
    ["", "queued", "running", "succeeded", "failed", "cancelled"].map((s) => h("option", { value: s, selected: s === (p.get("status") || "") }, s || "Any status")),
  );
  const rows = page.jobs.map((j) => [
    h("code", { class: "id" }, j.job_id),
    h("code", {}, j.fn),
    badge(j.status),
    String(j.attempts),
    j.node || "—",
    j.status === "queued" || j.status === "running"
      ? h(
          "button",
          {
            type: "button",
            class: "danger",
            onclick: confirmThen(`Cancel ${j.job_id}?`, async () => {
              try {
                await api("DELETE", `/admin/v1/tenants/${enc(name)}/jobs/${enc(j.job_id)}`);
                toast("Cancelled.");
                route();
              } catch (e) {
                failed("Cancel")(e);
              }
            }),
          },
          "Cancel",
        )
      : j.status,
  ]);
  showIf(mine,
    h("h1", {}, "Jobs"),
    h(
      "form",
      {
        class: "card inline",
        onsubmit: (ev) => {
          ev.preventDefault();
          const next = new URLSearchParams({ tenant: tenant.value });
          if (status.value) next.set("status", status.value);
          location.hash = `#/jobs?${next}`;
        },
      },
      field("Tenant", tenant),
      field("Status", status),
      h("button", { type: "submit" }, "Filter"),
    ),
    table(`Jobs of ${name}, newest first`, ["Job", "Function", "Status", "Attempts", "Node", ""], rows, "No jobs."),
  );
}

// -- usage and its charts ------------------------------------------------------------------

// Bar charts drawn as SVG by hand: four small charts do not need a charting library, and
// attributes set one by one keep to the page's Content-Security-Policy.
function bars(title, items, { value, label, max, format, series }) {
  const width = 640;
  const rowH = 22;
  const height = items.length * rowH + 10;
  const top = Math.max(max || 0, ...items.flatMap((i) => (series ? series.map((s) => s.value(i)) : [value(i)])), 1);
  const svg = h("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title, class: "chart" }, h("title", {}, title));
  items.forEach((item, n) => {
    const y = n * rowH + 4;
    svg.append(h("text", { x: 0, y: y + 14, class: "axis" }, label(item)));
    const parts = series || [{ value, cls: "bar" }];
    parts.forEach((s, k) => {
      const v = s.value(item);
      const w = Math.max(1, Math.round((v / top) * 380));
      const hgt = series ? (rowH - 6) / parts.length : rowH - 6;
      svg.append(h("rect", { x: 150, y: y + k * hgt, width: w, height: hgt, class: s.cls || "bar" }));
    });
    svg.append(h("text", { x: 540, y: y + 14, class: "value" }, format(item)));
  });
  if (max) {
    const x = 150 + Math.round((max / top) * 380);
    svg.append(h("line", { x1: x, y1: 0, x2: x, y2: height, class: "quota" }));
  }
  return h("figure", { class: "card" }, h("figcaption", {}, title), items.length ? svg : h("p", { class: "muted" }, "No data."));
}

async function viewUsage() {
  const mine = generation;
  const p = params();
  const tenantName = p.get("tenant") || "";
  const days = p.get("days") || "14";
  const q = new URLSearchParams({ days });
  if (tenantName) q.set("tenant", tenantName);
  const [s, tenant] = await Promise.all([api("GET", `/admin/v1/stats?${q}`), tenantSelect(tenantName, true)]);
  const dayCount = h("select", { name: "days" }, ["7", "14", "30", "90"].map((d) => h("option", { value: d, selected: d === days }, `${d} days`)));
  const csvQuery = new URLSearchParams({ format: "csv", from: s.from.slice(0, 10) });
  if (tenantName) csvQuery.set("tenant", tenantName);
  const errorRate = (t) => (t.calls ? `${((t.errors / t.calls) * 100).toFixed(1)} %` : "—");
  showIf(mine,
    h("h1", {}, "Usage"),
    h(
      "form",
      {
        class: "card inline",
        onsubmit: (ev) => {
          ev.preventDefault();
          const next = new URLSearchParams({ days: dayCount.value });
          if (tenant.value) next.set("tenant", tenant.value);
          location.hash = `#/usage?${next}`;
        },
      },
      field("Tenant", tenant),
      field("Range", dayCount),
      h("button", { type: "submit" }, "Show"),
      h("a", { class: "button quiet", href: `/admin/v1/usage?${csvQuery}`, download: "usage.csv" }, "Export CSV"),
    ),
    h(
      "div",
      { class: "grid" },
      bars("Calls per day (errors in red)", s.days, {
        label: (d) => d.day,
        format: (d) => `${d.calls} / ${d.errors} err`,
        series: [{ value: (d) => d.calls, cls: "bar" }, { value: (d) => d.errors, cls: "bar bad" }],
      }),
      bars("Wall time per day: p50 and p99", s.days, {
        label: (d) => d.day,
        format: (d) => `${fmtMs(d.p50_ms)} / ${fmtMs(d.p99_ms)}`,
        series: [{ value: (d) => d.p50_ms, cls: "bar" }, { value: (d) => d.p99_ms, cls: "bar alt" }],
      }),
      ...s.tenants.map((t) =>
        bars(`CPU this month: ${t.tenant}${t.cpu_quota_ms ? ` (quota ${fmtCpu(t.cpu_quota_ms)})` : " (no quota)"}`, [t], {
          label: (x) => x.tenant,
          value: (x) => x.month_cpu_ms,
          max: t.cpu_quota_ms || 0,
          format: (x) => (x.cpu_quota_ms ? `${((x.month_cpu_ms / x.cpu_quota_ms) * 100).toFixed(1)} %` : fmtCpu(x.month_cpu_ms)),
        }),
      ),
      bars("Error codes", s.codes, { label: (c) => c.code, value: (c) => c.count, format: (c) => String(c.count) }),
    ),
    table("Per tenant in the range", ["Tenant", "Calls", "Errors", "Error rate", "CPU", "CPU this month"], s.tenants.map((t) => [t.tenant, String(t.calls), String(t.errors), errorRate(t), fmtCpu(t.cpu_ms), fmtCpu(t.month_cpu_ms)])),
  );
}

// -- audit and nodes -----------------------------------------------------------------------

// The newest AUDIT_PAGE events at first; "Show older events" asks for as many more each time,
// up to the API's limit. The action filter looks within what was fetched.
const AUDIT_PAGE = 100;
const AUDIT_MAX = 10000;

async function viewAudit() {
  const mine = generation;
  const p = params();
  const limit = Math.min(AUDIT_MAX, Math.max(AUDIT_PAGE, Number.parseInt(p.get("limit"), 10) || AUDIT_PAGE));
  const q = new URLSearchParams({ limit: String(limit) });
  if (p.get("tenant")) q.set("tenant", p.get("tenant"));
  const [a, tenant] = await Promise.all([api("GET", `/admin/v1/audit?${q}`), tenantSelect(p.get("tenant"), true)]);
  const action = (p.get("action") || "").trim();
  const fetched = a.events || a.audit || [];
  const events = fetched.filter((e) => !action || e.action.startsWith(action));
  const actionInput = h("input", { name: "action", value: action, placeholder: "tenant., token., deploy…" });
  const older = new URLSearchParams(p);
  older.set("limit", String(Math.min(AUDIT_MAX, limit + AUDIT_PAGE)));
  showIf(mine,
    h("h1", {}, "Audit log"),
    h(
      "form",
      {
        class: "card inline",
        onsubmit: (ev) => {
          ev.preventDefault();
          const next = new URLSearchParams();
          if (tenant.value) next.set("tenant", tenant.value);
          if (actionInput.value) next.set("action", actionInput.value);
          location.hash = `#/audit?${next}`;
        },
      },
      field("Tenant", tenant),
      field("Action starts with", actionInput),
      h("button", { type: "submit" }, "Filter"),
    ),
    table(
      action ? `Audit events, newest first: those of the newest ${fetched.length} whose action starts with ${action}` : "Audit events, newest first",
      ["At", "Actor", "Action", "Tenant", "Detail"],
      events.map((e) => [e.at, h("code", { class: "id" }, e.actor), e.action, e.tenant || "—", h("code", { class: "detail" }, JSON.stringify(e.detail))]),
      "No events.",
    ),
    fetched.length === limit && limit < AUDIT_MAX ? h("p", {}, h("a", { href: `#/audit?${older}` }, "Show older events")) : null,
  );
}

async function viewNodes() {
  const mine = generation;
  const [n, health] = await Promise.all([
    api("GET", "/admin/v1/nodes"),
    fetch("/healthz").then((r) => r.json()).catch(() => null),
  ]);
  showIf(mine,
    h("h1", {}, "Nodes"),
    health ? h("p", {}, "This node: ", h("code", {}, health.node), " ", badge(health.ok ? "ok" : "unreachable"), ` store ${health.store}`) : null,
    table(
      "Nodes of the cluster",
      ["Node", "Health", "Address", "Version", "Started", "Last heartbeat"],
      (n.nodes || []).map((x) => [
        h("code", {}, x.id, x.this ? " (this node)" : ""),
        badge(x.alive ? "ok" : "silent"),
        x.address || "—",
        x.version || "—",
        x.started_at || "—",
        x.heartbeat_at || "—",
      ]),
    ),
  );
}

// -- the router ----------------------------------------------------------------------------

const sections = [
  ["tenants", "Tenants"],
  ["calls", "Calls"],
  ["jobs", "Jobs"],
  ["usage", "Usage"],
  ["audit", "Audit"],
  ["nodes", "Nodes"],
];

function drawNav(current) {
  $nav.replaceChildren(
    ...sections.map(([key, label]) => h("a", { href: `#/${key}`, "aria-current": key === current ? "page" : false }, label)),
  );
}

async function route() {
  generation += 1;
  const path = (location.hash.replace(/^#\//, "").split("?")[0] || "tenants").split("/");
  const view = path[0];
  let arg = "";
  try {
    arg = path.slice(1).map(decodeURIComponent).join("/");
  } catch {
    arg = path.slice(1).join("/"); // a malformed escape is shown as written and not found
  }
  drawNav(view === "tenant" ? "tenants" : view === "call" ? "calls" : view);
  const views = {
    tenants: viewTenants,
    tenant: () => viewTenant(arg),
    calls: viewCalls,
    call: () => viewCall(arg),
    jobs: viewJobs,
    usage: viewUsage,
    audit: viewAudit,
    nodes: viewNodes,
  };
  const draw = views[view] || viewTenants;
  const mine = generation;
  document.title = `${(sections.find(([k]) => k === view) || [null, view])[1]} · Falra console`;
  try {
    await draw();
  } catch (e) {
    if (e.status !== 401) showIf(mine, h("h1", {}, "Could not load this page"), h("p", { class: "error", role: "alert" }, e.message));
  }
}

window.addEventListener("hashchange", () => {
  // Only #/… is a view; "#main" is the skip link, which the browser follows by itself.
  if (location.hash && !location.hash.startsWith("#/")) return;
  navigated = true;
  if (csrf) route();
});

// How the page starts. The daemon says in the page what became of this browser's session when
// the request came with its cookie: a live one's operator and CSRF token (the view is drawn at
// once, no round trip first), or why it ended (the sign-in form, at once). Otherwise the
// session is asked for, and the first view's reads go out beside that check instead of after
// it: one round trip less before anything is drawn. A missing session answers 401 to both and
// the sign-in form wins (signedOut() retires the view's generation).
(async () => {
  const known = document.body.dataset;
  if (known.csrfToken) {
    started({ csrf_token: known.csrfToken, operator_token_id: known.operator });
    await route();
    return;
  }
  if (known.sessionEnded !== undefined) {
    const why = known.sessionEnded;
    signedOut(why ? `${why.charAt(0).toUpperCase()}${why.slice(1)}.` : "");
    return;
  }
  const session = api("GET", "/ui/session");
  const first = route();
  try {
    started(await session);
  } catch {
    signedOut();
    return;
  }
  await first;
})();
