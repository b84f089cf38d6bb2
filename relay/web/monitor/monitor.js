// The Monitor page: a small ES module, no build step, no libraries. It talks only to the
// reports API on the same origin (docs/reports.md), with the signed-in administrator's token
// as `Authorization: Bearer`. The token is kept in sessionStorage: this tab only, gone when
// it closes. It comes from the tenant's OpenID Connect provider (authorization code with
// PKCE, ./oidc.js, for the tenants the relay offers in sign-in.json) or, in development,
// pasted into the token form.

import { beginSignIn, completeSignIn, SignInError } from "./oidc.js";

/** @typedef {{tenant: string|null, subject: string|null, operator: boolean, may_end: boolean}} Me */
/** @typedef {{session_id: string, tenant: string, helper: string, sharer: string, device: string,
 *   start_time: string, end_time: string|null, duration_secs: number|null, control_type: string,
 *   modes: string[], end_reason: string|null, helper_id: string|null, sharer_id: string|null,
 *   device_id: string|null, administrator: string|null}} Row */

const TOKEN_KEY = "rhr-monitor-token";

/** The API's error codes as sentences (docs/reports.md, "Errors"). */
const SENTENCES = {
  unauthenticated: "Sign in with an administrator token first.",
  token_refused: "This token is not accepted for reports",
  permission_denied: "Your tenant's role assignments do not allow you to do this.",
  bad_request: "The relay did not understand the request",
  bad_cursor: "The list changed shape; reload it.",
  not_found: "There is no such session (or it is no longer running).",
  too_many_queries: "Too many reports are being read for your organisation right now; try again in a moment.",
  index_unavailable: "The reports are not available right now; try again in a moment.",
  internal: "The relay failed to answer; try again, and tell the operator if it persists.",
};

/** Token refusal reasons as words. */
const REASONS = {
  wrong_audience: "it is not for the administration audience (a helper's token?)",
  expired: "it has expired",
  bad_signature: "its signature does not verify",
  unknown_tenant: "its tenant is not known to this relay",
};

/** @param {string} id @returns {HTMLElement} */
const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));

class ApiError extends Error {
  /** @param {string} code @param {string} message */
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

/** @param {unknown} e @returns {string} */
function sentence(e) {
  if (e instanceof SignInError) return e.message;
  if (e instanceof ApiError) {
    const base = SENTENCES[/** @type {keyof typeof SENTENCES} */ (e.code)] ?? "The relay refused the request";
    if (e.code === "token_refused") {
      const why = REASONS[/** @type {keyof typeof REASONS} */ (e.message)] ?? e.message;
      return `${base}: ${why}.`;
    }
    if (e.code === "bad_request") return `${base}: ${e.message}.`;
    return base;
  }
  return "The relay cannot be reached.";
}

/** @param {string} text */
function showError(text) {
  const el = $("error");
  el.textContent = text;
  el.hidden = !text;
}

/**
 * Calls the API with the token; throws ApiError with the API's code on a refusal.
 * @param {string} path @param {RequestInit} [init] @returns {Promise<Response>}
 */
async function api(path, init = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY) ?? "";
  const response = await fetch(path, {
    ...init,
    headers: { Authorization: `Bearer ${token}` },
    cache: "no-store",
    credentials: "omit",
  });
  if (!response.ok) {
    let code = "internal";
    let message = `HTTP ${response.status}`;
    try {
      const body = await response.json();
      code = body.error.code;
      message = body.error.reason ?? body.error.message;
    } catch {
      // Not the API's JSON (e.g. the HTTP layer's plain 400): keep the status.
    }
    throw new ApiError(code, message);
  }
  return response;
}

/**
 * Shows, or clears, that some relay nodes did not answer: in a cluster the API flags such
 * an answer `partial` with the `missing_nodes` (docs/reports.md, "In a cluster"), and the
 * page must not pass a smaller report off as the whole.
 * @param {boolean} partial @param {number[]} nodes
 */
function showPartial(partial, nodes) {
  const el = $("partial");
  el.textContent = partial
    ? `Relay node${nodes.length === 1 ? "" : "s"} ${nodes.join(", ")} did not answer: ` +
      "what is shown lacks their sessions. Refresh to ask again."
    : "";
  el.hidden = !partial;
}

/** @param {string} path @returns {Promise<any>} */
const json = async (path) => {
  const body = await (await api(path)).json();
  if (body && typeof body.partial === "boolean") showPartial(body.partial, body.missing_nodes ?? []);
  return body;
};

/** @param {number|null|undefined} secs @returns {string} */
function duration(secs) {
  if (secs == null) return "running";
  const s = Math.round(secs);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

/** @param {string} iso @returns {string} */
const when = (iso) => new Date(iso).toLocaleString();

/**
 * A table cell or other element with text (never HTML: every value comes from tokens).
 * @param {string} tag @param {string} text @returns {HTMLElement}
 */
function el(tag, text) {
  const e = document.createElement(tag);
  e.textContent = text;
  return e;
}

/** @type {Me|null} */
let me = null;
/** Sorting and paging of the Sessions tab. */
const view = { sort: "start_time", order: "desc", cursor: /** @type {string|null} */ (null) };

// ---- Sign-in ----

async function signIn() {
  try {
    me = await json("/api/v1/reports/me");
  } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    showError(sentence(e));
    $("sign-in").hidden = false;
    $("app").hidden = true;
    return;
  }
  showError("");
  $("sign-in").hidden = true;
  $("app").hidden = false;
  $("sign-out").hidden = false;
  $("who").textContent = me.operator
    ? "Signed in as the relay's operator (every tenant)"
    : `Signed in as ${me.subject} of tenant ${me.tenant}`;
  select("monitor");
  await Promise.all([loadMonitor(), loadSessions(true)]);
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const field = /** @type {HTMLTextAreaElement} */ ($("token"));
  sessionStorage.setItem(TOKEN_KEY, field.value.trim());
  field.value = "";
  signIn();
});

/** @type {import("./oidc.js").SignInChoice[]} */
let choices = [];

/** Offers the tenants whose administrators sign in at their provider (if any). */
async function loadChoices() {
  try {
    const response = await fetch("/monitor/sign-in.json", { cache: "no-store", credentials: "omit" });
    choices = response.ok ? await response.json() : [];
  } catch {
    choices = [];
  }
  const select = /** @type {HTMLSelectElement} */ ($("tenant-choice"));
  select.replaceChildren(...choices.map((c) => {
    const option = /** @type {HTMLOptionElement} */ (el("option", c.display_name));
    option.value = c.tenant;
    return option;
  }));
  $("provider-form").hidden = choices.length === 0;
  document.body.dataset.choices = String(choices.length);
}

$("provider-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const tenant = /** @type {HTMLSelectElement} */ ($("tenant-choice")).value;
  const choice = choices.find((c) => c.tenant === tenant);
  if (!choice) return;
  const button = /** @type {HTMLButtonElement} */ ($("provider-form").querySelector("button"));
  button.disabled = true;
  showError("");
  try {
    // The page's own address is the redirect URI the tenant registered.
    await beginSignIn(choice, `${location.origin}${location.pathname}`);
  } catch (e) {
    button.disabled = false;
    showError(sentence(e));
  }
});

$("sign-out").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  location.reload();
});

// ---- Tabs (WAI-ARIA tabs pattern: arrow keys, Home and End move between tabs) ----

/** @returns {HTMLElement[]} */
const tabs = () => [...document.querySelectorAll('[role="tab"]')].filter((t) => !(/** @type {HTMLElement} */ (t)).hidden).map((t) => /** @type {HTMLElement} */ (t));

/** @param {string} name @param {boolean} [focus] */
function select(name, focus = false) {
  for (const tab of document.querySelectorAll('[role="tab"]')) {
    const on = tab.id === `tab-${name}`;
    tab.setAttribute("aria-selected", String(on));
    tab.setAttribute("tabindex", on ? "0" : "-1");
    $(/** @type {string} */ (tab.getAttribute("aria-controls"))).hidden = !on;
    if (on && focus) /** @type {HTMLElement} */ (tab).focus();
  }
  document.body.dataset.tab = name;
}

for (const tab of document.querySelectorAll('[role="tab"]')) {
  tab.addEventListener("click", () => select(tab.id.slice(4)));
  tab.addEventListener("keydown", (event) => {
    const key = /** @type {KeyboardEvent} */ (event).key;
    const list = tabs();
    let i = list.indexOf(/** @type {HTMLElement} */ (tab));
    if (key === "ArrowRight") i = (i + 1) % list.length;
    else if (key === "ArrowLeft") i = (i - 1 + list.length) % list.length;
    else if (key === "Home") i = 0;
    else if (key === "End") i = list.length - 1;
    else return;
    event.preventDefault();
    select(list[i].id.slice(4), true);
  });
}

// ---- Monitor tab ----

async function loadMonitor() {
  try {
    const [active, summary] = await Promise.all([
      json("/api/v1/reports/active"),
      json("/api/v1/reports/summary"),
    ]);
    $("active-count").textContent = String(active.sessions.length);
    $("total-count").textContent = String(summary.sessions);
    $("median").textContent = duration(summary.median_duration_secs);
    $("p90").textContent = duration(summary.p90_duration_secs);
    const days = lastDays();
    drawBars($("chart"), days,
      [{ name: "sessions", values: days.map((d) => summary.sessions_per_day[d] ?? 0), css: "count" }], String);
    const durations = await durationsPerDay(days);
    drawBars($("duration-chart"), days, [
      { name: "median", values: durations.median, css: "median" },
      { name: "90th percentile", values: durations.p90, css: "p90" },
    ], duration);
    const body = /** @type {HTMLElement} */ ($("active-table").querySelector("tbody"));
    body.replaceChildren(
      ...active.sessions.map((/** @type {any} */ s) => {
        const tr = document.createElement("tr");
        const cell = document.createElement("td");
        cell.append(detailButton(s.session_id));
        tr.append(cell, el("td", s.helper_name), el("td", s.sharer_name), el("td", s.device_name ?? ""),
          el("td", s.mode), el("td", when(s.start_time)));
        return tr;
      }),
    );
    document.body.dataset.monitorLoaded = "true";
  } catch (e) {
    showError(sentence(e));
  }
}

/** The last 30 UTC days, oldest first, as `YYYY-MM-DD` (the API's retention window). */
function lastDays() {
  const today = Date.UTC(new Date().getUTCFullYear(), new Date().getUTCMonth(), new Date().getUTCDate());
  return Array.from({ length: 30 }, (_, i) => new Date(today - (29 - i) * 86400000).toISOString().slice(0, 10));
}

/**
 * Each day's median and 90th-percentile duration: one /summary per day (the index answers
 * each in milliseconds), in parallel.
 * @param {string[]} days @returns {Promise<{median: number[], p90: number[]}>}
 */
async function durationsPerDay(days) {
  const answers = await Promise.all(days.map((day) => {
    const since = `${day}T00:00:00Z`;
    const until = new Date(Date.parse(since) + 86400000).toISOString();
    return json(`/api/v1/reports/summary?${new URLSearchParams({ since, until })}`);
  }));
  return {
    median: answers.map((a) => a.median_duration_secs),
    p90: answers.map((a) => a.p90_duration_secs),
  };
}

/**
 * A bar chart over `days`, drawn as SVG (no chart library): one bar per series per day,
 * each with a title for pointers and the whole summarised in the container's label.
 * @param {HTMLElement} chart
 * @param {string[]} days
 * @param {{name: string, values: number[], css: string}[]} series
 * @param {(v: number) => string} format
 */
function drawBars(chart, days, series, format) {
  const ns = "http://www.w3.org/2000/svg";
  const max = Math.max(1, ...series.flatMap((s) => s.values));
  const width = 600, height = 200, pad = 28, slot = (width - pad) / days.length;
  const bar = Math.max((slot - 2) / series.length, 1);
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height + pad}`);
  days.forEach((day, i) => {
    series.forEach((s, j) => {
      const value = s.values[i];
      const h = (value / max) * (height - pad);
      const rect = document.createElementNS(ns, "rect");
      rect.setAttribute("x", String(pad + i * slot + 1 + j * bar));
      rect.setAttribute("y", String(height - h));
      rect.setAttribute("width", String(bar));
      rect.setAttribute("height", String(h));
      rect.setAttribute("class", s.css);
      rect.dataset.day = day;
      rect.dataset.value = String(value);
      const title = document.createElementNS(ns, "title");
      title.textContent = `${day}: ${s.name} ${format(value)}`;
      rect.append(title);
      svg.append(rect);
    });
  });
  const label = (/** @type {string} */ text, /** @type {number} */ x, /** @type {number} */ y) => {
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", String(x));
    t.setAttribute("y", String(y));
    t.textContent = text;
    svg.append(t);
  };
  label(format(max), 0, pad - 8);
  label(days[0], pad, height + pad - 4);
  label(days[days.length - 1], width - 80, height + pad - 4);
  chart.replaceChildren(svg);
  const busy = days.flatMap((day, i) =>
    series.some((s) => s.values[i] > 0) ? [`${day}: ${series.map((s) => `${s.name} ${format(s.values[i])}`).join(", ")}`] : []);
  chart.setAttribute("aria-label", busy.length ? busy.join("; ") : "No sessions in the last 30 days");
}

$("refresh").addEventListener("click", () => loadMonitor());

// ---- Sessions tab ----

/** The filters as API parameters (empty ones left out; local times as RFC 3339 UTC). */
function filterParams() {
  const params = new URLSearchParams();
  const form = new FormData(/** @type {HTMLFormElement} */ ($("filters")));
  for (const [name, value] of form) {
    const text = String(value).trim();
    if (!text) continue;
    params.set(name, name === "since" || name === "until" ? new Date(text).toISOString() : text);
  }
  return params;
}

/** @param {string} id @returns {HTMLButtonElement} */
function detailButton(id) {
  const button = /** @type {HTMLButtonElement} */ (el("button", id.slice(0, 8)));
  button.type = "button";
  button.className = "link";
  button.dataset.session = id;
  button.setAttribute("aria-label", `Session ${id}: details`);
  button.addEventListener("click", () => openDetail(id));
  return button;
}

/** @param {boolean} fresh start from the first page */
async function loadSessions(fresh) {
  const params = filterParams();
  params.set("sort", view.sort);
  params.set("order", view.order);
  params.set("limit", "100");
  if (!fresh && view.cursor) params.set("cursor", view.cursor);
  const body = /** @type {HTMLElement} */ ($("sessions-table").querySelector("tbody"));
  try {
    const page = await json(`/api/v1/reports/sessions?${params}`);
    const rows = page.sessions.map((/** @type {Row} */ s) => {
      const tr = document.createElement("tr");
      tr.dataset.session = s.session_id;
      const first = document.createElement("td");
      first.append(detailButton(s.session_id), " ", el("span", when(s.start_time)));
      tr.append(first, el("td", s.helper), el("td", s.sharer), el("td", s.device),
        el("td", duration(s.duration_secs)), el("td", s.control_type), el("td", s.end_reason ?? "running"));
      return tr;
    });
    if (fresh) body.replaceChildren(...rows);
    else body.append(...rows);
    view.cursor = page.next_cursor;
    $("more").hidden = !page.next_cursor;
    $("count").textContent = `${body.children.length} sessions shown${page.next_cursor ? " (more available)" : ""}`;
    document.body.dataset.sessionsLoaded = String(Date.now());
    showError("");
  } catch (e) {
    showError(sentence(e));
  }
}

$("filters").addEventListener("submit", (event) => {
  event.preventDefault();
  loadSessions(true);
});
$("filters").addEventListener("reset", () => setTimeout(() => loadSessions(true)));
$("more").addEventListener("click", () => loadSessions(false));

for (const th of document.querySelectorAll("th[data-sort]")) {
  /** @type {HTMLElement} */ (th.querySelector("button")).addEventListener("click", () => {
    const key = /** @type {string} */ (/** @type {HTMLElement} */ (th).dataset.sort);
    view.order = view.sort === key && view.order === "desc" ? "asc" : "desc";
    view.sort = key;
    for (const other of document.querySelectorAll("th[data-sort]")) other.removeAttribute("aria-sort");
    th.setAttribute("aria-sort", view.order === "asc" ? "ascending" : "descending");
    loadSessions(true);
  });
}

// The CSV comes with the token in a header, so a plain link cannot fetch it: fetch it, then
// offer it as a blob link (and click it, which downloads it).
$("csv").addEventListener("click", async () => {
  try {
    const response = await api(`/api/v1/reports/sessions.csv?${filterParams()}`);
    const missing = response.headers.get("Relay-Report-Missing-Nodes");
    const partial = response.headers.get("Relay-Report-Partial") === "true";
    if (response.headers.has("Relay-Report-Partial")) {
      showPartial(partial, missing ? missing.split(",").map(Number) : []);
    }
    const blob = await response.blob();
    const link = /** @type {HTMLAnchorElement} */ ($("csv-link"));
    link.download = partial ? "sessions-partial.csv" : "sessions.csv";
    if (link.href) URL.revokeObjectURL(link.href);
    link.href = URL.createObjectURL(blob);
    link.hidden = false;
    link.click();
  } catch (e) {
    showError(sentence(e));
  }
});

// ---- Session detail ----

/** @param {string} id */
async function openDetail(id) {
  $("end-status").textContent = "";
  try {
    const detail = await json(`/api/v1/reports/sessions/${encodeURIComponent(id)}`);
    /** @type {Row} */
    const s = detail.session;
    $("detail-title").textContent = `Session ${s.session_id}`;
    const fields = [
      ["Tenant", s.tenant], ["Helper", `${s.helper} (${s.helper_id ?? "?"})`],
      ["Recipient", `${s.sharer} (${s.sharer_id ?? "?"})`], ["Device", `${s.device} (${s.device_id ?? "?"})`],
      ["Started", when(s.start_time)], ["Ended", s.end_time ? when(s.end_time) : "running"],
      ["Duration", duration(s.duration_secs)], ["Control", s.control_type], ["Modes", s.modes.join(", ")],
      ["End reason", s.end_reason ?? "—"], ["Ended by", s.administrator ?? "—"],
    ];
    $("detail").replaceChildren(...fields.flatMap(([k, v]) => [el("dt", k), el("dd", v)]));
    $("changes").replaceChildren(
      ...detail.changes.map((/** @type {any} */ c) => el("li", `${when(c.time)}: ${c.kind} → ${c.value}`)),
    );
    const end = /** @type {HTMLButtonElement} */ ($("end"));
    end.hidden = !(detail.active && me?.may_end);
    end.disabled = false;
    end.dataset.session = s.session_id;
    document.body.dataset.detail = s.session_id;
    $("tab-detail").hidden = false;
    select("detail", true);
  } catch (e) {
    showError(sentence(e));
  }
}

$("end").addEventListener("click", async () => {
  const end = /** @type {HTMLButtonElement} */ ($("end"));
  const id = /** @type {string} */ (end.dataset.session);
  end.disabled = true;
  try {
    await api(`/api/v1/reports/sessions/${encodeURIComponent(id)}/end`, { method: "POST" });
    // Show the session as the audit log now has it (ended, by whom), then say so.
    await openDetail(id);
    $("end-status").textContent = "The session was ended; both parties were told.";
    loadMonitor();
    loadSessions(true);
  } catch (e) {
    end.disabled = false;
    $("end-status").textContent = sentence(e);
  }
});

/** On load: finish a sign-in the provider sent the browser back from, then sign in. */
async function start() {
  try {
    const done = await completeSignIn(new URL(location.href));
    if (done) sessionStorage.setItem(TOKEN_KEY, done.accessToken);
  } catch (e) {
    showError(sentence(e));
    document.body.dataset.signInFailed = e instanceof SignInError ? e.code : "unknown";
  }
  await loadChoices();
  if (sessionStorage.getItem(TOKEN_KEY)) await signIn();
}

start();
