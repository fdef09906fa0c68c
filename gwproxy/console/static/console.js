// The gwproxy console: a client of the gateway's documented JSON API (/openapi.json).
// Tokens live in sessionStorage (never in a URL); a 401 refreshes them once; sign-out revokes.
// No inline scripts or styles (the page's Content-Security-Policy forbids them): the DOM is built
// with `h`, text is always set as text.

const store = window.sessionStorage;
const main = document.getElementById("main");
const notice = document.getElementById("notice");
let me = null; // {id, username, role}
let timers = []; // cleared on every page change

// ---- DOM -------------------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "width") el.style.width = v; // CSSOM, allowed by the CSP
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// A labelled form control: the label beside (not around) the control, so its name is the label's.
function field(id, text, control) {
  return h("div", { class: "field" }, h("label", { for: id }, text), control);
}

function table(headers, rows, label) {
  return h("div", { class: "scroll" },
    h("table", { "aria-label": label },
      h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, "nothing yet")))));
}

// A list the API gives a page at a time (`limit`, `cursor`; `has_more`, `next_cursor`): its rows
// drawn by `row`, a "More" button while there are more. `load()` starts again from the first page.
function paged(path, headers, label, row, size = 100, moreText = `More ${label.toLowerCase()}`) {
  const body = h("tbody", {});
  const more = h("button", { type: "button", class: "secondary", hidden: true }, moreText);
  let cursor = "";
  const next = async () => {
    const q = new URLSearchParams({ limit: size });
    if (cursor) q.set("cursor", cursor);
    const page = await api(`${path}${path.includes("?") ? "&" : "?"}${q}`);
    body.append(...page.data.map(row));
    if (!body.children.length) body.append(h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, "nothing yet")));
    cursor = page.next_cursor || "";
    more.hidden = !page.has_more;
  };
  more.addEventListener("click", guard(next));
  const box = h("div", {}, h("div", { class: "scroll" }, h("table", { "aria-label": label },
    h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t)))), body)), more);
  return { box, load: async () => { cursor = ""; body.replaceChildren(); await next(); } };
}

function say(text, kind = "error") {
  notice.textContent = text;
  notice.className = kind === "info" ? "info" : "";
  notice.hidden = !text;
}

const gib = (bytes) => (bytes / 2 ** 30).toFixed(1) + " GiB";
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "—");

// ---- the API ---------------------------------------------------------------------------------

// The session ended (and the sign-in page is shown, saying so): nothing more to say. Any other
// 401 — a wrong password at sign-in — is said like every other error.
const SIGNED_OUT = "signed_out";

class ApiError extends Error {
  constructor(status, message, code, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
  get words() {
    if (this.status === 429) return `Too many requests: try again in ${this.retryAfter || "a few"} s. (${this.message})`;
    if (this.status === 409 && this.code === "switch_in_progress") return `Not now: ${this.message}`;
    if (this.status === 403) return `Not allowed: ${this.message}`;
    if (this.status === 503) return `Unavailable${this.retryAfter ? ` (retry in ${this.retryAfter} s)` : ""}: ${this.message}`;
    return this.message;
  }
}

async function refresh() {
  const token = store.getItem("refresh");
  if (!token) return false;
  const r = await fetch("/api/auth/refresh", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ refresh_token: token }),
  });
  if (!r.ok) return false;
  const pair = await r.json();
  store.setItem("access", pair.access_token);
  store.setItem("refresh", pair.refresh_token);
  return true;
}

async function call(path, { method = "GET", body } = {}) {
  const send = () => fetch(path, {
    method,
    headers: { Authorization: `Bearer ${store.getItem("access") || ""}`, ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  let r = await send();
  if (r.status === 401 && (await refresh())) r = await send();
  if (r.status === 401 && path !== "/api/auth/login") {
    signedOut("Your session ended: sign in again.");
    throw new ApiError(401, "signed out", SIGNED_OUT);
  }
  return r;
}

async function api(path, options = {}) {
  const r = await call(path, options);
  if (!r.ok) {
    let message = `${r.status} ${r.statusText}`;
    let code = null;
    try {
      const err = (await r.json()).error;
      message = err.message;
      code = err.code;
    } catch { /* not JSON */ }
    throw new ApiError(r.status, message, code, r.headers.get("Retry-After"));
  }
  return r.status === 204 ? null : r.json();
}

// Reads a text/event-stream body, calling onEvent(name, data) per event.
async function events(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    // Lines may end in CRLF (aiohttp-sse writes them so): made LF, a CR at the end kept for its LF.
    let text = buffer + decoder.decode(value, { stream: true });
    const held = text.endsWith("\r") ? "\r" : "";
    if (held) text = text.slice(0, -1);
    buffer = text.replace(/\r\n?/g, "\n") + held;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length && onEvent(name, data.join("\n")) === false) return reader.cancel();
    }
  }
}

// Runs an event's action, saying what failed; the button that started it (or the form's submit
// button) is disabled until it ends, so a double click does not do it twice.
function guard(fn) {
  return async (...args) => {
    const ev = args[0];
    const target = ev && ev.currentTarget;
    const button = target instanceof HTMLFormElement ? target.querySelector("button[type=submit]")
      : target instanceof HTMLButtonElement ? target : null;
    if (button && button.disabled) {  // already running: not again (and no native form submission)
      if (ev.type === "submit") ev.preventDefault();
      return;
    }
    if (button) button.disabled = true;
    try {
      say("");
      await fn(...args);
    } catch (e) {
      if (e instanceof ApiError) { if (e.code !== SIGNED_OUT) say(e.words); } else say(String(e));
    } finally {
      if (button && button.isConnected) button.disabled = false;
    }
  };
}

// ---- sign-in ---------------------------------------------------------------------------------

function signedOut(message) {
  store.clear();
  me = null;
  document.getElementById("nav").hidden = true;
  document.getElementById("signout").hidden = true;
  document.getElementById("who").textContent = "";
  if (message) say(message, "info");
  location.hash = "#/login";
}

async function signOut() {
  const token = store.getItem("refresh");
  if (token) {
    await fetch("/api/auth/logout", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ refresh_token: token }),
    });
  }
  signedOut("Signed out.");
}

function loginPage() {
  const user = h("input", { id: "username", name: "username", autocomplete: "username", required: true });
  const pass = h("input", { id: "password", name: "password", type: "password", autocomplete: "current-password", required: true });
  const form = h("form", { class: "login card", "aria-label": "Sign in" },
    h("h1", {}, "Sign in"),
    field("username", "Username", user),
    field("password", "Password", pass),
    h("button", { type: "submit" }, "Sign in"));
  form.addEventListener("submit", guard(async (ev) => {
    ev.preventDefault();
    const r = await fetch("/api/auth/login", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ username: user.value, password: pass.value }),
    });
    if (!r.ok) {
      const err = (await r.json()).error;
      throw new ApiError(r.status, err.message, err.code, r.headers.get("Retry-After"));
    }
    const pair = await r.json();
    store.setItem("access", pair.access_token);
    store.setItem("refresh", pair.refresh_token);
    await identify();
    location.hash = "#/dashboard";
  }));
  return form;
}

async function identify() {
  me = await api("/api/auth/me");
  document.getElementById("nav").hidden = false;
  document.getElementById("signout").hidden = false;
  document.getElementById("who").textContent = `${me.username} (${me.role})`;
  for (const a of document.querySelectorAll("[data-admin]")) a.hidden = me.role !== "admin";
}

// ---- dashboard -------------------------------------------------------------------------------

function gpuCard(g) {
  const used = g.memory_used ?? null;
  const share = used === null ? 0 : (100 * used) / g.memory_total;
  return h("div", { class: "card" },
    h("strong", {}, `GPU ${g.index}: ${g.name}`),
    h("div", { class: "bar", role: "meter", "aria-label": `GPU ${g.index} memory used`, "aria-valuemin": 0,
      "aria-valuemax": 100, "aria-valuenow": Math.round(share) }, h("span", { width: `${share}%` })),
    h("div", { class: "muted" },
      used === null ? `${gib(g.memory_total)} (use not reported: a snapshot)` : `${gib(used)} of ${gib(g.memory_total)}`,
      g.utilization != null ? ` · ${g.utilization}% busy` : "", g.temperature != null ? ` · ${g.temperature} °C` : ""));
}

async function dashboardPage() {
  const page = h("section", { "aria-labelledby": "title" }, h("h1", { id: "title" }, "Dashboard"));
  const gpus = h("div", { class: "grid", id: "gpus" });
  const models = h("div", { id: "running" });
  const traffic = h("div", { id: "traffic" });
  const tail = h("div", { id: "tail" });
  page.append(h("h2", {}, "GPUs"), gpus, h("h2", {}, "Models"), models);
  if (me.role === "admin") page.append(h("h2", {}, "Traffic by model"), traffic, h("h2", {}, "Recent requests"), tail);
  let last = null;
  const tick = guard(async () => {
    const status = await api("/api/models/status");
    gpus.replaceChildren(...(status.hardware.gpus.length ? status.hardware.gpus.map(gpuCard)
      : [h("p", { class: "muted" }, status.hardware.note || "no GPU found")]));
    const rows = [h("tr", {}, h("td", {}, status.current_profile || "—"), h("td", {}, "switched"), h("td", {}, status.state),
      h("td", {}, status.served_models.join(", ")), h("td", {}, "—"))];
    for (const i of status.instances) {
      rows.push(h("tr", {}, h("td", {}, i.profile_id), h("td", {}, "on demand"), h("td", {}, i.state),
        h("td", {}, i.served_names.join(", ")), h("td", {}, `${i.host} GPU ${i.gpus.join(",")} · ${i.memory_gib_per_gpu} GiB`)));
    }
    models.replaceChildren(table(["profile", "kind", "state", "serves", "where"], rows, "Running models"));
    if (me.role !== "admin") return;
    const stats = await api("/api/stats");
    const now = performance.now();
    traffic.replaceChildren(table(["model", "requests", "per second", "failed (4xx/5xx)", "mean latency"],
      stats.models.map((m) => {
        const before = last && last.models.find((x) => x.model === m.model);
        const rate = before ? ((m.requests - before.requests) / ((now - last.at) / 1000)).toFixed(2) : "…";
        return h("tr", {}, h("td", {}, m.model), h("td", {}, m.requests), h("td", {}, rate),
          h("td", { class: m.server_errors ? "bad" : "" }, `${m.errors - m.server_errors} / ${m.server_errors}`),
          h("td", {}, `${m.mean_ms.toFixed(1)} ms`));
      }), "Traffic by model"));
    last = { ...stats, at: now };
    tail.replaceChildren(table(["time", "route", "model", "status", "duration", "user"],
      stats.recent.map((r) => h("tr", {}, h("td", {}, new Date(r.at * 1000).toLocaleTimeString()), h("td", {}, r.route),
        h("td", {}, r.model), h("td", { class: r.status >= 400 ? "bad" : "" }, r.status), h("td", {}, `${r.duration_ms} ms`),
        h("td", {}, r.user || "—"))), "Recent requests"));
  });
  await tick();
  timers.push(setInterval(tick, 2000));
  return page;
}

// ---- models ----------------------------------------------------------------------------------

async function modelsPage() {
  const page = h("section", { "aria-labelledby": "title" }, h("h1", { id: "title" }, "Models"));
  const admin = me.role === "admin";
  const job = h("div", { id: "job", class: "card", hidden: true });
  const holder = h("div", { id: "profiles" });
  // The table is drawn again after a switch, a load or an unload, and every 2 s while an instance is
  // loading or stopping (until it settles, or the page is left).
  async function render() {
    const [profiles, status] = await Promise.all([api("/api/models/profiles"), api("/api/models/status")]);
    const loaded = new Map(status.instances.map((i) => [i.profile_id, i]));
    const rows = profiles.data.map((p) => {
      const actions = h("td", {});
      if (admin) {
        actions.append(h("button", { type: "button", "aria-label": `Switch to ${p.id}`, disabled: p.current,
          onclick: guard(async () => {
            if (!confirm(`Switch the served model to ${p.id}? Requests wait while it loads.`)) return;
            const answer = await api("/api/models/switch", { method: "POST", body: { profile_id: p.id } });
            follow(job, answer.job.id, render);
          }) }, "Switch"));
        if (status.on_demand) {
          actions.append(" ", loaded.has(p.id)
            ? h("button", { type: "button", class: "secondary", "aria-label": `Unload ${p.id}`, onclick: guard(async () => {
              if (!confirm(`Unload ${p.id}?`)) return;
              await api("/api/models/unload", { method: "POST", body: { profile_id: p.id } });
              say(`${p.id} unloaded.`, "info");
              await render();
            }) }, "Unload")
            : h("button", { type: "button", class: "secondary", "aria-label": `Load ${p.id}`, disabled: p.current, onclick: guard(async () => {
              if (!confirm(`Load ${p.id} beside the running models?`)) return;
              await api("/api/models/load", { method: "POST", body: { profile_id: p.id } });
              say(`${p.id} is loading.`, "info");
              await render();
            }) }, "Load"));
        }
      }
      const fit = p.fit;
      return h("tr", {}, h("td", {}, h("strong", {}, p.id), h("div", { class: "muted" }, p.name)),
        h("td", { "data-state": p.id }, p.current ? "serving" : loaded.has(p.id) ? loaded.get(p.id).state : "—"),
        h("td", { class: fit.fits ? "ok" : "bad" }, { fits: "fits", tight: "fits tightly", no_fit: "does not fit" }[fit.verdict]),
        h("td", { class: "muted" }, fit.reason), actions);
    });
    holder.replaceChildren(
      h("p", { class: "muted" }, `Hardware: ${profiles.hardware}. Serving: ${profiles.current_profile || "nothing"}.`),
      table(["profile", "state", "fit", "why", ""], rows, "Profiles"));
    if (status.instances.some((i) => i.state === "loading" || i.state === "stopping")) {
      setTimeout(() => { if (holder.isConnected) render().catch(() => {}); }, 2000);
    }
    return status;
  }
  const status = await render();
  page.append(holder, job);
  if (status.job && !status.job.done) follow(job, status.job.id, render);
  return page;
}

// Follows a switch job on /api/models/events: phase, progress, outcome (a rollback said plainly).
async function follow(box, jobId, done = () => {}) {
  box.hidden = false;
  const bar = h("span", { width: "0%" });
  const phase = h("p", { "aria-live": "polite" }, "starting…");
  const logs = h("pre", { class: "log", "aria-label": "Last log lines" });
  box.replaceChildren(h("h2", {}, `Switch job ${jobId}`), h("div", { class: "progress", role: "progressbar",
    "aria-label": "Switch progress" }, bar), phase, logs);
  const r = await call("/api/models/events");
  let state = {};
  await events(r, (name, data) => {
    const event = JSON.parse(data);
    if (name === "status") return true;
    if (name !== "job" || event.job.id !== jobId) return true;
    state = { ...state, ...event.job };
    bar.style.width = `${Math.round(100 * (state.progress || 0))}%`;
    phase.textContent = `${state.state}: ${state.phase}`;
    if (state.done) {
      const outcome = state.outcome === "rolled_back" ? `rolled back to the previous model: ${state.error}`
        : state.outcome === "switched" ? "ready" : `${state.outcome}${state.error ? ": " + state.error : ""}`;
      phase.textContent = `Done — ${outcome}`;
      phase.className = state.outcome === "switched" || state.outcome === "already_serving" ? "ok" : "bad";
      api("/api/models/status").then((s) => { logs.textContent = (s.log_tail || []).join("\n"); });
      if (box.isConnected) Promise.resolve(done()).catch(() => {});
      return false;
    }
    api("/api/models/status").then((s) => { logs.textContent = (s.log_tail || []).join("\n"); }).catch(() => {});
    return true;
  });
}

// ---- keys ------------------------------------------------------------------------------------

async function keysPage() {
  const admin = me.role === "admin";
  const page = h("section", { "aria-labelledby": "title" }, h("h1", { id: "title" }, "API keys"));
  const shown = h("div", { id: "new-key" });
  const name = h("input", { id: "key-name", name: "name", maxlength: 128 });
  const days = h("input", { id: "key-days", name: "days", type: "number", min: 1, step: 1 });
  const models = h("input", { id: "key-models", name: "models", placeholder: "any" });
  const form = h("form", { class: "inline", "aria-label": "Create a key" },
    field("key-name", "Name", name), field("key-days", "Expires in days", days),
    field("key-models", "Models (comma-separated)", models), h("button", { type: "submit" }, "Create key"));
  form.addEventListener("submit", guard(async (ev) => {
    ev.preventDefault();
    const body = { name: name.value };
    if (days.value) body.expires_days = Number(days.value);
    if (models.value.trim()) body.allowed_models = models.value.split(",").map((m) => m.trim()).filter(Boolean);
    const key = await api("/api/auth/keys", { method: "POST", body });
    const copy = h("button", { type: "button", class: "secondary", onclick: async () => {
      await navigator.clipboard.writeText(key.key);
      copy.textContent = "Copied";
    } }, "Copy");
    shown.replaceChildren(h("div", { class: "card" }, h("p", {}, "Your new key — shown this once:"),
      h("p", { class: "secret", id: "key-value" }, key.key), copy));
    await list();
  }));
  const holder = h("div", {});
  const keys = paged(admin ? "/api/auth/keys?user_id=all" : "/api/auth/keys",
    ["id", "name", "prefix", "user", "models", "created", "expires", "last used", "state", ""], "Keys",
    (k) => h("tr", {}, h("td", {}, k.id), h("td", {}, k.name || "—"), h("td", {}, `${k.prefix}…`),
      h("td", {}, k.user_id), h("td", {}, k.allowed_models ? k.allowed_models.join(", ") : "any"),
      h("td", {}, when(k.created_at)), h("td", {}, when(k.expires_at)), h("td", {}, when(k.last_used_at)),
      h("td", { class: k.revoked_at ? "bad" : "ok" }, k.revoked_at ? "revoked" : "active"),
      h("td", {}, k.revoked_at ? "" : h("button", { type: "button", class: "secondary", "aria-label": `Revoke key ${k.name || k.prefix}`,
        onclick: guard(async () => {
          if (!confirm(`Revoke ${k.name || k.prefix}? Programs using it stop working.`)) return;
          await api(`/api/auth/keys/${k.id}`, { method: "DELETE" });
          await list();
        }) }, "Revoke"),
      admin ? h("button", { type: "button", class: "secondary", "aria-label": `Limits of key ${k.id}`,
        onclick: guard(() => limits(`/api/admin/keys/${k.id}/limits`, `key ${k.name || k.prefix}`)) }, "Limits") : "")));
  holder.append(keys.box);
  const list = keys.load;
  await list();
  page.append(form, shown, holder, limitsBox);
  return page;
}

// Rate-limit overrides (admins): requests, window, tokens per minute, concurrency; empty = default.
const limitsBox = h("div", { id: "limits" });
async function limits(path, who) {
  limitsBox.replaceChildren();  // another's form must not stay up (and be filled in) while this one loads
  const current = await api(path);
  const fields = ["requests", "window", "tokens_per_minute", "concurrency"];
  const inputs = Object.fromEntries(fields.map((f) => [f, h("input", { id: `limit-${f}`, type: "number", min: 0, step: "any",
    value: current.overrides[f] ?? "", placeholder: `default: ${current.effective[f] ?? "none"}` })]));
  const form = h("form", { class: "inline card", "aria-label": `Limits of ${who}` },
    h("strong", {}, `Limits of ${who}`), fields.map((f) => field(`limit-${f}`, f.replaceAll("_", " "), inputs[f])),
    h("button", { type: "submit" }, "Save limits"));
  form.addEventListener("submit", guard(async (ev) => {
    ev.preventDefault();
    const body = Object.fromEntries(fields.map((f) => [f, inputs[f].value === "" ? null : Number(inputs[f].value)]));
    await api(path, { method: "PUT", body });
    say(`Limits of ${who} saved.`, "info");
  }));
  limitsBox.replaceChildren(form);
}

// ---- users (admins) --------------------------------------------------------------------------

async function usersPage() {
  if (me.role !== "admin") return h("section", {}, h("h1", {}, "Users"), h("p", { class: "bad" }, "This page is for admins."));
  const page = h("section", { "aria-labelledby": "title" }, h("h1", { id: "title" }, "Users"));
  const username = h("input", { id: "new-username", required: true, maxlength: 64 });
  const password = h("input", { id: "new-password", type: "password", required: true, minlength: 8, autocomplete: "new-password" });
  const role = h("select", { id: "new-role" }, h("option", { value: "user" }, "user"), h("option", { value: "admin" }, "admin"));
  const form = h("form", { class: "inline", "aria-label": "Create a user" },
    field("new-username", "Username", username), field("new-password", "Password", password),
    field("new-role", "Role", role), h("button", { type: "submit" }, "Create user"));
  const holder = h("div", {});
  form.addEventListener("submit", guard(async (ev) => {
    ev.preventDefault();
    await api("/api/admin/users", { method: "POST", body: { username: username.value, password: password.value, role: role.value } });
    username.value = password.value = "";
    await list();
  }));
  const patch = (u, body) => guard(async () => { await api(`/api/admin/users/${u.id}`, { method: "PATCH", body }); await list(); });
  const find = h("input", { id: "find-user", type: "search", placeholder: "name starts with…" });
  const search = h("form", { class: "inline", role: "search", "aria-label": "Find users" },
    field("find-user", "Find", find), h("button", { type: "submit" }, "Find"));
  const row = (u) => {
    const roleSelect = h("select", { "aria-label": `Role of ${u.username}` },
      ["user", "admin"].map((r) => h("option", { value: r, selected: r === u.role }, r)));
    roleSelect.addEventListener("change", guard(async () => {  // the role chosen now; refused: back as it was
      try {
        await api(`/api/admin/users/${u.id}`, { method: "PATCH", body: { role: roleSelect.value } });
      } catch (e) {
        roleSelect.value = u.role;
        throw e;
      }
      await list();
    }));
    return h("tr", {}, h("td", {}, u.id), h("td", {}, u.username), h("td", {}, roleSelect),
      h("td", { class: u.active ? "ok" : "bad" }, u.active ? "active" : "disabled"),
      h("td", {}, u.capture ? "on" : "off"), h("td", {}, u.allowed_models ? u.allowed_models.join(", ") : "any"),
      h("td", {}, when(u.created_at)),
      h("td", {}, h("button", { type: "button", class: "secondary", "aria-label": `${u.active ? "Disable" : "Enable"} ${u.username}`,
        onclick: patch(u, { active: !u.active }) }, u.active ? "Disable" : "Enable"), " ",
      h("button", { type: "button", class: "secondary", "aria-label": `Turn capture ${u.capture ? "off" : "on"} for ${u.username}`,
        onclick: patch(u, { capture: !u.capture }) }, u.capture ? "Capture off" : "Capture on"), " ",
      h("button", { type: "button", class: "secondary", "aria-label": `Limits of ${u.username}`,
        onclick: guard(() => limits(`/api/admin/users/${u.id}/limits`, u.username)) }, "Limits")));
  };
  async function list() {
    const q = find.value.trim();
    const users = paged(`/api/admin/users${q ? `?${new URLSearchParams({ q })}` : ""}`,
      ["id", "user", "role", "state", "capture", "models", "created", ""], "Users", row);
    holder.replaceChildren(users.box);
    await users.load();
  }
  search.addEventListener("submit", guard(async (ev) => { ev.preventDefault(); await list(); }));
  page.append(search);
  await list();
  page.append(form, holder, limitsBox);
  return page;
}

// ---- usage -----------------------------------------------------------------------------------

function chart(rows, since) {
  // Tokens by day, one bar per day of the range stacked by model (SVG, no library).
  const days = [];
  for (let d = new Date(`${since}T00:00:00Z`); d <= new Date(); d = new Date(d.getTime() + 86400e3)) {
    days.push(d.toISOString().slice(0, 10));
  }
  const models = [...new Set(rows.map((r) => r.model))].sort();
  const colors = ["#2458d6", "#1e7a3c", "#b3681e", "#8a2be2", "#b3261e", "#107c91"];
  const total = (d) => rows.filter((r) => r.day === d).reduce((s, r) => s + r.prompt_tokens + r.completion_tokens, 0);
  const top = Math.max(1, ...days.map(total));
  // Every day of the range fits the width: a bar is 80 % of its day's slot (at most 40 units).
  const W = 640, H = 220, pad = 30, step = (W - pad * 2) / Math.max(1, days.length), bw = Math.min(40, step * 0.8);
  const every = Math.max(1, Math.ceil(days.length / 10));
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H + 30}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `Tokens by day and model, ${days.length} day(s)`);
  svg.setAttribute("id", "usage-chart");
  days.forEach((d, i) => {
    let y = H;
    models.forEach((m, j) => {
      const r = rows.find((x) => x.day === d && x.model === m);
      if (!r) return;
      const height = ((r.prompt_tokens + r.completion_tokens) / top) * (H - 20);
      const rect = document.createElementNS(ns, "rect");
      for (const [k, v] of Object.entries({ x: pad + i * step, y: y - height, width: bw, height, fill: colors[j % colors.length] })) rect.setAttribute(k, v);
      const title = document.createElementNS(ns, "title");
      title.textContent = `${d} ${m || "no model"}: ${r.prompt_tokens + r.completion_tokens} tokens`;
      rect.append(title);
      svg.append(rect);
      y -= height;
    });
    if (i % every === 0) {
      const label = document.createElementNS(ns, "text");
      label.setAttribute("x", pad + i * step);
      label.setAttribute("y", H + 15);
      label.textContent = d.slice(5);
      svg.append(label);
    }
  });
  const legend = h("p", { class: "muted" }, models.map((m) => h("span", {}, `■ ${m || "no model"}  `)));
  [...legend.children].forEach((s, j) => { s.style.color = colors[j % colors.length]; });
  return h("div", { class: "card" }, svg, legend);
}

async function usagePage() {
  // Charts read the daily rollups (/api/usage); "everyone" is summed over users, and the per-user
  // totals come a page at a time (/api/usage/users).
  const page = h("section", { "aria-labelledby": "title" }, h("h1", { id: "title" }, "Usage"));
  const who = h("select", { id: "usage-user", "aria-label": "Whose usage" }, h("option", { value: "" }, "mine"));
  const range = h("select", { id: "usage-range" }, [7, 30, 90].map((d) => h("option", { value: d }, `last ${d} days`)));
  range.value = "30";
  if (me.role === "admin") who.append(h("option", { value: "all" }, "everyone"));
  const holder = h("div", {});
  const load = guard(async () => {
    const days = Number(range.value);
    const since = new Date(Date.now() - (days - 1) * 86400e3).toISOString().slice(0, 10);
    const q = new URLSearchParams({ since });
    if (who.value) q.set("user_id", who.value);
    const usage = await api(`/api/usage?${q}`);
    holder.replaceChildren(
      h("p", {}, `Last ${days} days: ${usage.total.requests} requests (${usage.total.failed} failed), `,
        `${usage.total.prompt_tokens} prompt and ${usage.total.completion_tokens} completion tokens.`),
      usage.data.length ? chart(usage.data, since) : h("p", { class: "muted" }, "No requests in this range."),
      table(["day", "model", "requests", "failed", "prompt tokens", "completion tokens"],
        usage.data.map((r) => h("tr", {}, h("td", {}, r.day), h("td", {}, r.model || "—"), h("td", {}, r.requests), h("td", {}, r.failed),
          h("td", {}, r.prompt_tokens), h("td", {}, r.completion_tokens))), "Usage by day and model"));
    if (who.value === "all") holder.append(await perUser(since, show));
  });
  // A user picked in the per-user table: their own chart (kept in the list until the page is left).
  const show = (u) => {
    if (![...who.options].some((o) => o.value === String(u.user_id))) {
      who.append(h("option", { value: u.user_id }, u.username || `#${u.user_id}`));
    }
    who.value = String(u.user_id);
    load();
  };
  who.addEventListener("change", load);
  range.addEventListener("change", load);
  page.append(h("div", { class: "inline" }, field("usage-user", "Whose", who), field("usage-range", "Range", range)), holder);
  await load();
  return page;
}

// Each user's totals over the range, 50 at a time; a name opens that user's chart.
async function perUser(since, show) {
  const list = paged(`/api/usage/users?${new URLSearchParams({ since })}`,
    ["user", "requests", "failed", "prompt tokens", "completion tokens"], "Usage by user",
    (u) => h("tr", {}, h("td", {}, h("button", { type: "button", class: "link", "aria-label": `Usage of ${u.username || u.user_id}`,
      onclick: () => show(u) }, u.username || `#${u.user_id}`)), h("td", {}, u.requests), h("td", {}, u.failed),
      h("td", {}, u.prompt_tokens), h("td", {}, u.completion_tokens)), 50, "More users");
  await list.load();
  return h("div", { class: "card" }, h("h2", {}, "By user"), list.box);
}

// ---- requests in flight ----------------------------------------------------------------------

async function requestsPage() {
  const page = h("section", { "aria-labelledby": "title" }, h("h1", { id: "title" }, "Requests in flight"),
    h("p", { class: "muted" }, me.role === "admin" ? "Every model request being answered now." : "Your model requests being answered now."));
  const holder = h("div", {});
  const tick = guard(async () => {
    const running = await api("/api/requests");
    holder.replaceChildren(table(["id", "route", "model", "user", "age", "answer so far", ""], running.data.map((r) =>
      h("tr", {}, h("td", { class: "muted", title: `request id ${r.request_id}` }, r.request_id.slice(0, 16)), h("td", {}, r.route), h("td", {}, r.model), h("td", {}, r.user || "—"),
        h("td", {}, `${r.age_s.toFixed(1)} s`), h("td", {}, r.streaming ? `${r.chunks} chunk(s)` : "waiting for the first token"),
        h("td", {}, r.cancelled_by ? `cancelled by ${r.cancelled_by}` : h("button", { type: "button", class: "secondary",
          "aria-label": `Cancel request ${r.id.slice(0, 12)}`, onclick: guard(async () => {
            if (!confirm("Cancel this request? Its generation stops and the caller gets an incomplete answer.")) return;
            await api(`/api/requests/${encodeURIComponent(r.id)}`, { method: "DELETE" });
            await tick();
          }) }, "Cancel")))), "Requests in flight"));
  });
  await tick();
  timers.push(setInterval(tick, 1000));
  page.append(holder);
  return page;
}

// ---- conversations ---------------------------------------------------------------------------

let conversationSearch = "";  // the search in force: opening a conversation keeps it

async function conversationsPage() {
  const page = h("section", { "aria-labelledby": "title" }, h("h1", { id: "title" }, "Conversations"));
  const q = h("input", { id: "search", type: "search", placeholder: "title contains…", value: conversationSearch });
  const form = h("form", { class: "inline", role: "search", "aria-label": "Search conversations" },
    field("search", "Search", q), h("button", { type: "submit" }, "Search"));
  const holder = h("div", {});
  const detail = h("div", { id: "conversation" });
  async function list() {  // newest first, 20 at a time ("More conversations" appends the next page)
    const conversations = paged(`/api/conversations${q.value ? `?${new URLSearchParams({ q: q.value })}` : ""}`,
      ["title", "model", "updated"], "Conversations",
      (c) => h("tr", {}, h("td", {}, h("a", { href: `#/conversations/${c.id}` }, c.title || "(untitled)")),
        h("td", {}, c.model || "—"), h("td", {}, when(c.updated_at))), 20);
    holder.replaceChildren(conversations.box);
    await conversations.load();
  }
  form.addEventListener("submit", guard(async (ev) => { ev.preventDefault(); conversationSearch = q.value; await list(); }));
  await list();
  page.append(form, holder, detail);
  const id = location.hash.split("/")[2];
  if (id) await showConversation(detail, id);
  return page;
}

// A stored message's content as text: a string, or the text parts of multimodal content.
function contentText(content) {
  if (content == null) return "";
  if (typeof content === "string") return content;
  return content.map((p) => (p.type === "text" ? p.text : `[${p.type}]`)).join(" ");
}

async function showConversation(box, id) {
  const c = await api(`/api/conversations/${id}`);
  box.setAttribute("data-scroll-to", "");  // opened: brought into view, not left below the list
  const branch = new Set(c.branch || []);
  const download = (format) => guard(async () => {
    const r = await call(`/api/conversations/${id}/export?format=${format}`);
    const url = URL.createObjectURL(await r.blob());
    h("a", { href: url, download: `conversation-${id}.${format === "json" ? "json" : "md"}` }).click();
    URL.revokeObjectURL(url);
  });
  box.replaceChildren(h("div", { class: "card" }, h("h2", {}, c.title || "(untitled)"),
    h("p", {}, h("button", { type: "button", class: "secondary", onclick: download("json") }, "Export JSON"), " ",
      h("button", { type: "button", class: "secondary", onclick: download("markdown") }, "Export Markdown"), " ",
      h("a", { href: `#/playground/${id}` }, "Continue in the playground")),
    h("div", { class: "chat" }, c.messages.map((m) => h("div", { class: `msg ${m.role}` },
      h("strong", {}, `${m.role}${branch.size && !branch.has(m.id) ? " (another branch)" : ""}: `), contentText(m.content))))));
}

// ---- playground ------------------------------------------------------------------------------

async function playgroundPage() {
  const page = h("section", { "aria-labelledby": "title" }, h("h1", { id: "title" }, "Playground"));
  const models = (await api("/v1/models")).data;
  const picker = h("select", { id: "model" }, models.map((m) => h("option", { value: m.id },
    m.gwproxy ? `${m.id} (loads on demand)` : m.id)));
  const prompt = h("textarea", { id: "prompt", rows: 3, required: true });
  const chat = h("div", { class: "chat", id: "chat", "aria-live": "polite" });
  let conversation = location.hash.split("/")[2] || null;
  const history = [];
  if (conversation) {
    const c = await api(`/api/conversations/${conversation}`);
    const branch = new Set(c.branch || c.messages.map((m) => m.id));
    for (const m of c.messages.filter((x) => branch.has(x.id))) {
      history.push({ role: m.role, content: m.content });
      chat.append(h("div", { class: `msg ${m.role}` }, contentText(m.content)));
    }
  }
  const fresh = h("button", { type: "button", class: "secondary" }, "New chat");
  fresh.addEventListener("click", () => {  // a new conversation: nothing of this one is sent again
    conversation = null;
    history.length = 0;
    chat.replaceChildren();
    say("");
    if (location.hash !== "#/playground") window.history.replaceState(null, "", "#/playground");  // no redraw
    prompt.focus();
  });
  const form = h("form", { "aria-label": "Chat" }, field("model", "Model", picker),
    field("prompt", "Message", prompt), h("p", {}, h("button", { type: "submit" }, "Send"), " ", fresh));
  form.addEventListener("submit", guard(async (ev) => {
    ev.preventDefault();
    const text = prompt.value.trim();
    if (!text) return;
    prompt.value = "";
    const asked = h("div", { class: "msg user" }, text);
    const answer = h("div", { class: "msg assistant", id: `reply-${history.length + 1}` });
    chat.append(asked, answer);
    let content = "";
    try {
      const r = await call("/api/chat", { method: "POST", body: { model: picker.value, messages: [{ role: "user", content: text }],
        stream: true, ...(conversation ? { conversation_id: conversation } : {}) } });
      if (!r.ok) {
        const err = (await r.json()).error;
        throw new ApiError(r.status, err.message, err.code, r.headers.get("Retry-After"));
      }
      conversation = r.headers.get("X-Conversation-Id") || conversation;
      await events(r, (_, data) => {
        if (data === "[DONE]") return false;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(chunk.error.code, chunk.error.message, chunk.error.code);
        const delta = chunk.choices?.[0]?.delta?.content;
        if (delta) { content += delta; answer.textContent = content; }
        return true;
      });
    } catch (e) {
      if (!content) {  // nothing came: no empty bubble, and the message is back to send again
        asked.remove();
        answer.remove();
        prompt.value = text;
      }
      throw e;
    }
    history.push({ role: "user", content: text }, { role: "assistant", content });
  }));
  page.append(form, chat);
  return page;
}

// ---- routing ---------------------------------------------------------------------------------

const pages = {
  login: loginPage, dashboard: dashboardPage, models: modelsPage, keys: keysPage, users: usersPage,
  usage: usagePage, requests: requestsPage, conversations: conversationsPage, playground: playgroundPage,
};

let routing = 0;  // the latest navigation: a slower earlier one must not draw over it

async function route() {
  const mine = ++routing;
  for (const t of timers) clearInterval(t);
  timers = [];
  limitsBox.replaceChildren();  // shared by the Keys and Users pages: a form stays with its page
  const name = (location.hash.split("/")[1] || "dashboard").split("?")[0];
  if (!store.getItem("access") && name !== "login") { location.hash = "#/login"; return; }
  if (store.getItem("access") && !me) {
    try { await identify(); } catch { return; }
  }
  for (const a of document.querySelectorAll("nav a")) {
    if (a.getAttribute("href") === `#/${name}`) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  const page = pages[name] || dashboardPage;
  try {
    const drawn = await page();
    if (mine !== routing) return;
    main.replaceChildren(drawn);
    document.title = `gwproxy · ${name}`;
    main.focus({ preventScroll: true });  // focus for screen readers; the header stays in view
    const shown = drawn.querySelector("[data-scroll-to]");  // what the page opened (a conversation)
    if (shown) shown.scrollIntoView({ block: "start" }); else window.scrollTo(0, 0);
  } catch (e) {
    if (mine !== routing) return;
    // Not the previous page under this page's highlighted link: say this one failed.
    main.replaceChildren(h("p", { class: "muted" }, `The ${name} page could not be shown.`));
    if (e instanceof ApiError) { if (e.code !== SIGNED_OUT) say(e.words); } else say(String(e));
  }
}

document.getElementById("signout").addEventListener("click", guard(signOut));
window.addEventListener("hashchange", route);
route();
