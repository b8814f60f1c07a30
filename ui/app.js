// trainyard web app: hash-routed pages (sign-in, labelling, agreement, datasets, runs, models, queues) over /api/v1.

const API = "/api/v1";
const TOKEN_KEY = "trainyard.token";
const ANNOTATOR_KEY = "trainyard.annotator";
const STRATEGIES = [
  ["uncertain", "Uncertain (score near the threshold)"],
  ["disagreement", "Disagreement (annotators disagree)"],
  ["suspect_label", "Suspect label (consensus contradicted)"],
  ["uncovered", "Uncovered (label nobody annotated here)"],
];
const ACTIVE_DATASET = ["pending", "building", "embedding"];
const ACTIVE_RUN = ["pending", "queued", "running"];
const NAV = [
  ["#/label", "Label"], ["#/agreement", "Agreement"], ["#/datasets", "Datasets"],
  ["#/runs", "Runs"], ["#/models", "Models"], ["#/queues", "Queues"],
];

// gen: bumped on every route change; timers and late answers of an older page check it and stop.
const state = { me: null, token: sessionStorage.getItem(TOKEN_KEY), gen: 0, keys: null, after: null, session: null };
const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, body, fallback) {
    const detail = body && body.error;
    super((detail && detail.message) || fallback);
    this.status = status;
    this.code = detail ? detail.code : null;
  }
}

/** Calls the API with the bearer token; throws ApiError carrying the ErrorBody's message. */
async function api(method, path, body, opts = {}) {
  const token = "token" in opts ? opts.token : state.token;
  const headers = {};
  if (!opts.raw) headers.Accept = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(API + path, {
      method, headers, cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, null, `The server could not be reached (${e.message}).`);
  }
  if (!res.ok) {
    let parsed = null;
    try { parsed = await res.json(); } catch { /* not JSON */ }
    const err = new ApiError(res.status, parsed, `${method} ${path} answered HTTP ${res.status}.`);
    if (res.status === 401 && token && token === state.token) expireSession(err.message);
    throw err;
  }
  if (opts.raw) return res;
  return res.status === 204 ? null : res.json();
}
const get = (path) => api("GET", path);
const post = (path, body = {}) => api("POST", path, body);

/** Fetches a file with the bearer header and hands it to the browser as a download. */
async function download(path, filename) {
  const res = await api("GET", path, undefined, { raw: true });
  const url = URL.createObjectURL(await res.blob());
  const a = h("a", { href: url, download: filename, class: "sr-only" }, filename);
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 30000);
}

// ---------------------------------------------------------------- session and scopes

const signedIn = () => !!state.me && (!state.me.auth_enabled || !!state.token);

/** admin implies every scope, submit implies read; with auth off everything is allowed. */
function can(scope) {
  const me = state.me;
  if (!me || !me.auth_enabled) return true;
  const have = me.scopes || [];
  return have.includes("admin") || have.includes(scope) || (scope === "read" && have.includes("submit"));
}

function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  state.me = { ...state.me, name: null, token_id: null, scopes: [] };
}

function expireSession(message) {
  forgetToken();
  state.pendingAlert = `Signed out: ${message}`;
  if (location.hash !== "#/signin") { state.after = location.hash; location.hash = "#/signin"; }
}

function signOut() {
  forgetToken();
  state.after = null;
  location.hash = "#/signin";
}

// ---------------------------------------------------------------- DOM helpers

function build(el, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c != null && c !== false) el.append(c instanceof Node ? c : String(c));
  }
  return el;
}
const h = (tag, attrs, ...children) => build(document.createElement(tag), attrs, children);
const s = (tag, attrs, ...children) => build(document.createElementNS("http://www.w3.org/2000/svg", tag), attrs, children);

const isNum = (v) => typeof v === "number" && Number.isFinite(v);
const fmt = (v) => (!isNum(v) ? String(v) : Number.isInteger(v) ? v.toLocaleString("en") : v.toFixed(3));
const when = (t) => (t ? h("time", { datetime: t }, new Date(t).toLocaleString()) : "—");
const short = (id) => String(id).slice(0, 8);
const clamp01 = (v) => Math.min(1, Math.max(0, isNum(v) ? v : 0));

function fmtBytes(n) {
  if (!isNum(n)) return "—";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

/**
 * A figure: its raw number in data-value under a stable data-figure name. A figure the API
 * left out is "—" with the reason as a title (never 0), and data-value "".
 */
function fig(name, value, why = "This figure could not be computed.", text) {
  if (!isNum(value)) {
    return h("span", { class: "fig absent", "data-figure": name, "data-value": "", title: why },
      "—", h("span", { class: "sr-only" }, ` (${why})`));
  }
  return h("span", { class: "fig", "data-figure": name, "data-value": String(value) }, text ?? fmt(value));
}

function badge(status) {
  const kind = ["ready", "succeeded", "done", "served"].includes(status) ? "ok"
    : ["failed", "cancelled"].includes(status) ? "bad" : "busy";
  return h("span", { class: `badge ${kind}` }, status);
}

/** A table in a scrollable, keyboard-reachable region; the first cell of a row is its header. */
function table(caption, head, rows, attrs = {}) {
  return h("div", { class: "scroll", tabindex: "0", role: "region", "aria-label": caption, id: attrs.id ? `${attrs.id}-region` : null },
    h("table", attrs,
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, head.map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c, i) => (i === 0 ? h("th", { scope: "row" }, c) : h("td", {}, c))))))));
}

function field(text, control, help) {
  return h("div", { class: "field" }, h("label", { for: control.id }, text), control, help ? h("span", { class: "help" }, help) : null);
}

function select(id, options, value) {
  return h("select", { id, name: id },
    options.map(([v, t]) => h("option", { value: v, selected: v === value || null }, t)));
}

function button(text, onclick, attrs = {}) {
  return h("button", { type: "button", onclick, ...attrs }, text);
}

/** A button that acts on a second press within 6 s (an in-page confirmation, no window.confirm). */
function confirmButton(text, confirmText, attrs, action) {
  let timer = null;
  const b = button(text, async () => {
    if (!b.dataset.armed) {
      b.dataset.armed = "true";
      b.textContent = confirmText;
      b.classList.add("danger");
      note(`${confirmText}: press the button again within 6 seconds to confirm.`);
      timer = setTimeout(reset, 6000);
      return;
    }
    clearTimeout(timer);
    reset();
    b.disabled = true;
    try { await action(); } catch (e) { showError(e); } finally { b.disabled = false; }
  }, attrs);
  function reset() { delete b.dataset.armed; b.textContent = text; b.classList.remove("danger"); }
  return b;
}

function showError(e) { $("alert").replaceChildren(h("p", {}, e && e.message ? e.message : String(e))); }
function note(msg) { $("notice").replaceChildren(...(msg ? [h("p", {}, msg)] : [])); }
function clearMessages() { $("alert").replaceChildren(); note(""); }

/** Replaces a region's content, keeping focus on the element of the same id if it had it. */
function swap(container, ...children) {
  const active = document.activeElement;
  const id = active && active.id && container.contains(active) ? active.id : null;
  container.replaceChildren(...children);
  if (id && $(id)) $(id).focus({ preventScroll: true });
}

/** Runs fn now and every ms after it finishes while fn does not return false and the page is current. */
function poll(fn, ms) {
  const g = state.gen;
  const tick = async () => {
    if (g !== state.gen) return;
    let again = true;
    try { again = (await fn()) !== false; } catch (e) { if (g === state.gen) showError(e); }
    if (again && g === state.gen) setTimeout(tick, ms);
  };
  return tick();
}

// ---------------------------------------------------------------- charts (inline SVG)

function niceTicks(max, integer) {
  const raw = max / 5;
  const mag = 10 ** Math.floor(Math.log10(raw));
  let step = [1, 2, 5, 10].map((m) => m * mag).find((x) => x >= raw);
  if (integer) step = Math.max(1, Math.round(step));
  const ticks = [];
  for (let v = 0; v < max + step; v += step) ticks.push(+v.toFixed(6));
  return ticks;
}

/** Grouped bar chart: one group per category, one bar per series; axes, ticks, legend, title. */
function barChart({ title, categories, series, xLabel, yLabel }) {
  const W = Math.max(560, 80 + categories.length * 28 * series.length);
  const H = 280, L = 60, R = 12, T = 34, B = 58;
  const pw = W - L - R, ph = H - T - B;
  const max = Math.max(1, ...series.flatMap((x) => x.values.filter(isNum)));
  const ticks = niceTicks(max, true);
  const top = ticks[ticks.length - 1];
  const y = (v) => T + ph - (v / top) * ph;
  const gw = pw / Math.max(1, categories.length);
  const bw = Math.min(44, (gw * 0.8) / series.length);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title, class: "chart" }, s("title", {}, title));
  for (const t of ticks) {
    svg.append(s("line", { x1: L, x2: W - R, y1: y(t), y2: y(t), class: "grid" }),
      s("text", { x: L - 6, y: y(t) + 4, "text-anchor": "end" }, fmt(t)));
  }
  categories.forEach((c, i) => {
    const gx = L + i * gw + (gw - bw * series.length) / 2;
    series.forEach((sr, j) => {
      const v = isNum(sr.values[i]) ? sr.values[i] : 0;
      svg.append(s("rect", { x: gx + j * bw, y: y(v), width: Math.max(1, bw - 2), height: T + ph - y(v), class: `bar s${j}` },
        s("title", {}, `${sr.name}, ${c}: ${v}`)));
    });
    const label = c.length > 14 ? `${c.slice(0, 13)}…` : c;
    svg.append(s("text", { x: L + i * gw + gw / 2, y: T + ph + 16, "text-anchor": "middle" }, label));
  });
  svg.append(
    s("line", { x1: L, x2: L, y1: T, y2: T + ph, class: "axis" }),
    s("line", { x1: L, x2: W - R, y1: T + ph, y2: T + ph, class: "axis" }),
    s("text", { x: 16, y: T + ph / 2, transform: `rotate(-90 16 ${T + ph / 2})`, "text-anchor": "middle", class: "axis-title" }, yLabel),
    s("text", { x: L + pw / 2, y: H - 10, "text-anchor": "middle", class: "axis-title" }, xLabel));
  if (series.length > 1) {
    series.forEach((sr, j) => svg.append(
      s("rect", { x: L + j * 120, y: 8, width: 12, height: 12, class: `bar s${j}` }),
      s("text", { x: L + j * 120 + 16, y: 18 }, sr.name)));
  }
  return h("figure", { class: "chart-box" }, svg, h("figcaption", {}, title));
}

/** Precision against recall for one label, with the chosen threshold's point marked. */
function prChart(curve) {
  const W = 280, H = 240, L = 46, R = 12, T = 16, B = 44;
  const pw = W - L - R, ph = H - T - B;
  const X = (r) => L + clamp01(r) * pw;
  const Y = (p) => T + ph - clamp01(p) * ph;
  const pts = curve.points || [];
  let chosen = null;
  for (const p of pts) {
    if (!chosen || Math.abs(p.threshold - curve.threshold) < Math.abs(chosen.threshold - curve.threshold)) chosen = p;
  }
  const title = `Precision–recall curve of ${curve.label}` + (chosen
    ? `; at the chosen threshold ${fmt(curve.threshold)} precision is ${fmt(chosen.precision)} and recall ${fmt(chosen.recall)}` : "");
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title, class: "chart pr" }, s("title", {}, title));
  for (const t of [0, 0.5, 1]) {
    svg.append(s("line", { x1: L, x2: W - R, y1: Y(t), y2: Y(t), class: "grid" }),
      s("text", { x: L - 6, y: Y(t) + 4, "text-anchor": "end" }, String(t)),
      s("text", { x: X(t), y: T + ph + 16, "text-anchor": "middle" }, String(t)));
  }
  if (pts.length) {
    svg.append(s("path", { d: pts.map((p, i) => `${i ? "L" : "M"}${X(p.recall).toFixed(1)},${Y(p.precision).toFixed(1)}`).join(" "), class: "line" }));
  }
  if (chosen) {
    svg.append(s("circle", { cx: X(chosen.recall), cy: Y(chosen.precision), r: 5, class: "marker" }),
      s("text", { x: Math.min(X(chosen.recall) + 8, W - 70), y: Math.max(Y(chosen.precision) - 8, T + 10) }, `t = ${fmt(curve.threshold)}`));
  }
  svg.append(
    s("line", { x1: L, x2: L, y1: T, y2: T + ph, class: "axis" }),
    s("line", { x1: L, x2: W - R, y1: T + ph, y2: T + ph, class: "axis" }),
    s("text", { x: L + pw / 2, y: H - 8, "text-anchor": "middle", class: "axis-title" }, "Recall"),
    s("text", { x: 14, y: T + ph / 2, transform: `rotate(-90 14 ${T + ph / 2})`, "text-anchor": "middle", class: "axis-title" }, "Precision"));
  return h("figure", { class: "chart-box small" }, svg, h("figcaption", {}, `${curve.label}: chosen threshold `,
    fig(`pr_threshold:${curve.label}`, curve.threshold)));
}

/** A score bar with the label's threshold marked (decorative: the numbers are in the text). */
function scoreBar(score, threshold, above) {
  const W = 160, H = 16;
  return s("svg", { class: "score-bar", viewBox: `0 0 ${W} ${H}`, width: W, height: H, "aria-hidden": "true", focusable: "false" },
    s("rect", { x: 0, y: 3, width: W, height: H - 6, class: "track" }),
    s("rect", { x: 0, y: 3, width: clamp01(score) * W, height: H - 6, class: above ? "fill above" : "fill" }),
    s("line", { x1: clamp01(threshold) * W, x2: clamp01(threshold) * W, y1: 0, y2: H, class: "threshold" }));
}

// ---------------------------------------------------------------- router

const ROUTES = [
  [/^#\/signin$/, "Sign in", pageSignin],
  [/^#\/label$/, "Label", pageLabel],
  [/^#\/agreement$/, "Agreement", pageAgreement],
  [/^#\/datasets$/, "Datasets", pageDatasets],
  [/^#\/datasets\/([^/]+)$/, "Dataset", pageDataset],
  [/^#\/runs$/, "Training runs", pageRuns],
  [/^#\/runs\/([^/]+)$/, "Training run", pageRun],
  [/^#\/models$/, "Models", pageModels],
  [/^#\/models\/([^/]+)$/, "Model", pageModel],
  [/^#\/queues$/, "Queues", pageQueues],
];

async function route(ev) {
  const g = ++state.gen;
  state.keys = null;
  state.session = null;
  const hash = location.hash;
  if (!signedIn() && hash !== "#/signin") {
    if (hash) state.after = hash;
    location.replace("#/signin");
    return;
  }
  const found = ROUTES.find(([re]) => re.test(hash));
  if (!found) { location.replace("#/label"); return; }
  const [re, title, render] = found;
  const args = hash.match(re).slice(1).map(decodeURIComponent);
  document.title = `${title} — trainyard`;
  renderNav(hash);
  clearMessages();
  if (state.pendingAlert) { showError(state.pendingAlert); state.pendingAlert = null; }
  const main = $("main");
  main.dataset.route = hash;
  main.dataset.loaded = "false";
  main.setAttribute("aria-busy", "true");
  // Each route renders into a fresh element, so a late answer of an older page lands nowhere.
  const page = h("div", { class: "page" });
  $("page").replaceChildren(page);
  try { await render(page, ...args); } catch (e) { if (g === state.gen) showError(e); }
  if (g !== state.gen) return;
  main.dataset.loaded = "true";
  main.removeAttribute("aria-busy");
  const heading = page.querySelector("h1");
  if (ev && heading && !page.contains(document.activeElement)) {
    heading.tabIndex = -1;
    heading.focus();
  }
}

function renderNav(hash) {
  const links = signedIn() ? NAV : [["#/signin", "Sign in"]];
  $("nav-links").replaceChildren(...links.map(([href, text]) => h("li", {},
    h("a", { href, "aria-current": hash === href || hash.startsWith(`${href}/`) ? "page" : null }, text))));
  const box = $("user");
  const me = state.me;
  if (!me) { box.replaceChildren(); return; }
  if (me.auth_enabled) {
    box.replaceChildren(...(state.token
      ? [h("span", { id: "user-name" }, "Signed in as ", h("strong", {}, me.name || "an unnamed token")),
        button("Sign out", signOut, { id: "sign-out", class: "secondary" })]
      : []));
  } else {
    const who = sessionStorage.getItem(ANNOTATOR_KEY);
    box.replaceChildren(h("span", { id: "user-name" }, who ? ["Labelling as ", h("strong", {}, who)] : "Authentication is off"),
      who ? button("Change name", () => { sessionStorage.removeItem(ANNOTATOR_KEY); route(); }, { id: "sign-out", class: "secondary" }) : null);
  }
}

// ---------------------------------------------------------------- sign-in

function pageSignin(page) {
  page.append(h("h1", {}, "Sign in"));
  if (!state.me.auth_enabled) {
    page.append(h("p", {}, "Authentication is off on this server: there is nothing to sign in to. ",
      h("a", { href: "#/label" }, "Go to labelling"), "."));
    return;
  }
  if (state.token) {
    page.append(h("p", {}, "You are signed in as ", h("strong", {}, state.me.name || "an unnamed token"), ". ",
      h("a", { href: "#/label" }, "Go to labelling"), "."));
    return;
  }
  const input = h("input", { id: "signin-token", type: "password", name: "token", autocomplete: "off", required: true, spellcheck: "false", "aria-describedby": "signin-help" });
  const submit = h("button", { type: "submit", id: "signin-submit" }, "Sign in");
  const form = h("form", { id: "signin-form", class: "card narrow" },
    field("API token", input),
    h("p", { id: "signin-help", class: "help" }, "The token stays in this tab's session storage; closing the tab signs you out."),
    submit);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearMessages();
    const token = input.value.trim();
    if (!token) return;
    submit.disabled = true;
    try {
      const me = await api("GET", "/me", undefined, { token });
      sessionStorage.setItem(TOKEN_KEY, token);
      state.token = token;
      state.me = me;
      const to = state.after && state.after !== "#/signin" ? state.after : "#/label";
      state.after = null;
      location.hash = to;
    } catch (e) {
      showError(e);
      input.focus();
    } finally {
      submit.disabled = false;
    }
  });
  page.append(form);
  input.focus();
}

// ---------------------------------------------------------------- labelling

function annotatorForm(page) {
  const input = h("input", { id: "annotator-name", type: "text", required: true, maxlength: "100", autocomplete: "name" });
  const form = h("form", { id: "annotator-form", class: "card narrow" },
    h("p", {}, "Authentication is off, so tell us who you are: your answers are recorded under this name."),
    field("Your name", input),
    h("button", { type: "submit" }, "Continue"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const name = input.value.trim();
    if (!name || /\s/.test(name)) { showError("Use one word without spaces as your name."); return; }
    sessionStorage.setItem(ANNOTATOR_KEY, name);
    route();
  });
  page.append(form);
}

async function pageLabel(page) {
  page.append(h("h1", {}, "Label"));
  if (!can("submit")) {
    page.append(h("p", { id: "label-denied", class: "card" },
      "Your token does not have the submit scope, so it cannot label. You can still read every other page."));
    return;
  }
  if (!state.me.auth_enabled && !sessionStorage.getItem(ANNOTATOR_KEY)) { annotatorForm(page); return; }
  const [models, { sources }] = await Promise.all([get("/models"), get("/sources")]);
  if (!models.length || !sources.length) {
    page.append(h("p", { class: "card" }, models.length ? "There is no source with documents yet." : "There is no model yet: train one first."));
    return;
  }
  const modelSel = select("label-model", models.map((m) => [m.name, m.name]));
  const strategySel = select("label-strategy", STRATEGIES);
  const sourceSel = select("label-source", sources.map((x) => [x.source, `${x.source} (${fmt(x.documents)} documents, overlap ${x.overlap})`]));
  const labelSel = select("label-label", [["", "Every label"]]);
  const loadLabels = async () => {
    const m = models.find((x) => x.name === modelSel.value);
    const v = m && (m.served_version ?? m.latest_version);
    labelSel.replaceChildren(h("option", { value: "" }, "Every label"));
    if (!v) return;
    const version = await get(`/models/${enc(m.name)}/versions/${v}`);
    for (const l of (version.spec && version.spec.labels) || []) labelSel.append(h("option", { value: l }, l));
  };
  modelSel.addEventListener("change", () => loadLabels().catch(showError));
  await loadLabels();
  const view = h("section", { id: "label-session", "aria-label": "Document to label", "data-state": "idle", "data-seq": "0" });
  const form = h("form", { id: "label-setup", class: "card form-row" },
    field("Model", modelSel), field("Strategy", strategySel), field("Source", sourceSel),
    field("Label (optional)", labelSel),
    h("button", { type: "submit", id: "label-start" }, "Start"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    clearMessages();
    startSession(view, { model: modelSel.value, strategy: strategySel.value, source: sourceSel.value, label: labelSel.value || undefined });
  });
  page.append(form, view);
}

function keyHelp(task, n) {
  const digits = `1–${Math.min(n, 9)}`;
  const rows = task === "binary" ? [["y", "Yes: the label applies"], ["n", "No: it does not"]]
    : task === "multi_class" ? [[digits, "Choose that class (submits at once)"]]
      : [[digits, "Toggle that label"], ["Enter", "Submit: toggled labels yes, the others no"]];
  rows.push(["s", "Skip this document"], ["u", "Undo your last answer"], ["?", "Show or hide this help"]);
  return [h("h2", {}, "Keys"), h("p", {}, "Keys do nothing while focus is in a text field or a picker."),
    h("dl", { class: "keys" }, rows.flatMap(([k, d]) => [h("dt", {}, h("kbd", {}, k)), h("dd", {}, d)]))];
}

function guidelineView(label) {
  const g = label.guideline;
  if (!g) return h("p", { class: "guideline none" }, `No guideline for ${label.name} yet.`);
  return h("div", { class: "guideline", "data-guideline-version": g.version },
    h("p", { class: "meta" }, `Guideline for ${label.name}, version ${g.version} by ${g.author}`),
    h("p", { class: "gtext" }, g.text));
}

/** One labelling queue: fetches a document, shows it, sends answers, skips and undos. */
function startSession(view, q) {
  const g = state.gen;
  const annotator = state.me.auth_enabled ? undefined : sessionStorage.getItem(ANNOTATOR_KEY) || undefined;
  const S = { decided: 0, seq: 0, cur: null, toggled: new Set(), status: "idle" };
  state.session = S;
  const alive = () => g === state.gen && state.session === S;
  const queue = () => ({ model: q.model, strategy: q.strategy, source: q.source, label: q.label, annotator });
  const title = h("h2", {}, `Labelling ${q.model} · ${q.strategy.replace("_", " ")} · ${q.source}${q.label ? ` · ${q.label}` : ""}`);
  const progress = h("p", { id: "label-progress", class: "progress-line" });
  const body = h("div", { id: "label-body" });
  const help = h("section", { id: "key-help", class: "card", hidden: true, "aria-label": "Keyboard shortcuts" });
  view.replaceChildren(title, progress, body, help);

  const setStatus = (st) => {
    S.status = st;
    view.dataset.state = st;
    view.setAttribute("aria-busy", String(st === "loading"));
    for (const b of view.querySelectorAll("button[data-needs-ready]")) b.disabled = st !== "ready";
  };
  const toggleHelp = () => {
    help.hidden = !help.hidden;
    const t = $("label-keys");
    if (t) t.setAttribute("aria-expanded", String(!help.hidden));
  };
  const renderProgress = (p) => {
    progress.replaceChildren("Decided this session: ", fig("label_decided_session", S.decided),
      " · Left in queue: ", fig("label_left", p && p.left, "Unknown."),
      " · In this queue so far you answered ", fig("label_answered_by_you", p && p.answered_by_you),
      " and skipped ", fig("label_skipped_by_you", p && p.skipped_by_you), ".");
  };
  const message = (text, ...extra) => body.replaceChildren(h("div", { class: "card" }, h("p", { id: "label-message" }, text), ...extra));

  async function next() {
    setStatus("loading");
    let r;
    try {
      r = await post("/labelling/next", queue());
    } catch (e) {
      if (!alive()) return;
      showError(e);
      message("Could not fetch a document.", button("Try again", next, { id: "label-again" }));
      setStatus("error");
      return;
    }
    if (!alive()) return;
    S.cur = r;
    S.toggled = new Set();
    renderProgress(r.progress);
    if (r.status === "computing") {
      message("The queue is being ranked; checking again every 2 seconds…", r.hint ? h("p", { class: "hint" }, r.hint) : null);
      setStatus("computing");
      setTimeout(() => { if (alive() && S.status === "computing") next(); }, 2000);
      return;
    }
    S.seq++;
    view.dataset.seq = String(S.seq);
    if (r.status === "empty" || !r.item) {
      message("Nothing left for you in this queue.", r.hint ? h("p", { class: "hint" }, r.hint) : null,
        h("div", { class: "buttons" }, button("Check again", next, { id: "label-again" }),
          button("Undo (u)", undo, { id: "label-undo", class: "secondary" })));
      setStatus("empty");
      return;
    }
    renderItem(r);
    view.dataset.task = r.task;
    setStatus("ready");
    const active = document.activeElement;
    if (!active || active === document.body || view.contains(active) || active.id === "label-start") $("doc-text").focus();
  }

  function renderItem(r) {
    const it = r.item;
    const labels = r.labels;
    help.replaceChildren(...keyHelp(r.task, labels.length));
    const text = h("div", { id: "doc-text", class: "doc-text", tabindex: "-1", "data-document-id": String(it.document_id) }, it.text);
    const scores = (it.scores || []).map((sc) => h("li", {},
      h("span", { class: "score-name" }, sc.label), scoreBar(sc.score, sc.threshold, sc.above),
      h("span", {}, fig(`score:${sc.label}`, sc.score), " against threshold ", fig(`threshold:${sc.label}`, sc.threshold),
        sc.above ? " (above: predicted yes)" : " (below: predicted no)")));
    let decide;
    if (r.task === "binary") {
      const l = labels[0];
      decide = [h("p", { class: "question" }, `Does “${l.name}” apply to this document?`),
        h("div", { class: "buttons" },
          button("Yes (y)", () => answer({ [l.name]: true }), { id: "decide-yes", "data-needs-ready": true }),
          button("No (n)", () => answer({ [l.name]: false }), { id: "decide-no", "data-needs-ready": true })),
        guidelineView(l)];
    } else if (r.task === "multi_class") {
      decide = [h("p", { class: "question" }, "Which class is it?"),
        h("ol", { class: "choices" }, labels.map((l, i) => h("li", {},
          button(`${i < 9 ? `${i + 1} · ` : ""}${l.name}`, () => chooseClass(i), { id: `decide-${i + 1}`, "data-label-index": i + 1, "data-needs-ready": true }),
          guidelineView(l))))];
    } else {
      decide = [h("p", { class: "question" }, "Which labels apply? Toggle them, then submit."),
        h("ol", { class: "choices" }, labels.map((l, i) => h("li", {},
          button(`${i < 9 ? `${i + 1} · ` : ""}${l.name}`, () => toggle(i), { id: `toggle-${i + 1}`, "aria-pressed": "false", "data-label-index": i + 1, class: "toggle", "data-needs-ready": true }),
          guidelineView(l)))),
        button("Submit (Enter)", submitToggles, { id: "decide-submit", "data-needs-ready": true })];
    }
    body.replaceChildren(h("div", { class: "label-grid" },
      h("article", { id: "label-item", class: "card", "aria-labelledby": "doc-title" },
        h("h3", { id: "doc-title" }, `Document ${it.external_id}`, h("span", { class: "muted" }, ` from ${it.source}`)),
        text,
        it.text_truncated ? h("p", { class: "muted" }, "The text was cut to its first 500 characters.") : null,
        it.explanation ? h("p", { class: "why" }, h("strong", {}, "Why this one: "), it.explanation) : null,
        scores.length ? [h("h4", {}, `Scores${it.scored_by_version ? ` of version ${it.scored_by_version}` : ""}`), h("ul", { class: "scores" }, scores)] : null),
      h("div", { class: "card decide" }, h("h3", {}, "Your decision"), decide,
        h("div", { class: "buttons" },
          button("Skip (s)", skip, { id: "label-skip", class: "secondary", "data-needs-ready": true }),
          button("Undo (u)", undo, { id: "label-undo", class: "secondary" }),
          button("Keys (?)", toggleHelp, { id: "label-keys", class: "secondary", "aria-expanded": String(!help.hidden), "aria-controls": "key-help" })))));
  }

  function toggle(i) {
    const name = S.cur.labels[i].name;
    if (S.toggled.has(name)) S.toggled.delete(name); else S.toggled.add(name);
    const b = $(`toggle-${i + 1}`);
    if (b) b.setAttribute("aria-pressed", String(S.toggled.has(name)));
  }
  const chooseClass = (i) => answer(Object.fromEntries(S.cur.labels.map((l, j) => [l.name, i === j])));
  const submitToggles = () => answer(Object.fromEntries(S.cur.labels.map((l) => [l.name, S.toggled.has(l.name)])));

  function answer(values) {
    if (S.status !== "ready") return;
    const versions = {};
    for (const l of S.cur.labels) if (l.name in values && l.guideline) versions[l.name] = l.guideline.version;
    send({ ...queue(), document_id: S.cur.item.document_id, labels: values, guideline_versions: versions });
  }
  function skip() {
    if (S.status !== "ready") return;
    send({ ...queue(), document_id: S.cur.item.document_id, skip: true });
  }
  async function send(body) {
    setStatus("loading");
    try {
      await post("/labelling/answers", body);
      if (!body.skip) S.decided++;
      clearMessages();
    } catch (e) {
      if (!alive()) return;
      if (e.status === 409 && e.code === "lease_lost") {
        note("Someone else took that document meanwhile; here is the next one.");
      } else {
        showError(e);
        setStatus("ready");
        return;
      }
    }
    if (alive()) await next();
  }
  async function undo() {
    if (!["ready", "empty", "error"].includes(S.status)) return;
    const before = S.status;
    setStatus("loading");
    try {
      const r = await post("/labelling/undo", queue());
      if (!r.skipped) S.decided = Math.max(0, S.decided - 1);
      clearMessages();
      note(`Undone: your ${r.skipped ? "skip" : "decision"} on document ${r.document_id}; it is shown again.`);
    } catch (e) {
      if (!alive()) return;
      showError(e);
      setStatus(before);
      return;
    }
    if (alive()) await next();
  }

  state.keys = (ev) => {
    const key = ev.key.length === 1 ? ev.key.toLowerCase() : ev.key;
    if (key === "?") { toggleHelp(); return true; }
    if (key === "u") { undo(); return true; }
    if (S.status !== "ready") return false;
    const { task, labels } = S.cur;
    if (key === "s") { skip(); return true; }
    if (task === "binary" && (key === "y" || key === "n")) { answer({ [labels[0].name]: key === "y" }); return true; }
    if (task !== "binary" && /^[1-9]$/.test(key) && Number(key) <= labels.length) {
      if (task === "multi_class") chooseClass(Number(key) - 1); else toggle(Number(key) - 1);
      return true;
    }
    if (task === "multi_label" && key === "Enter" && !ev.target.closest("button, a, summary")) { submitToggles(); return true; }
    return false;
  };
  next();
}

document.addEventListener("keydown", (ev) => {
  if (!state.keys || ev.repeat || ev.ctrlKey || ev.metaKey || ev.altKey || ev.isComposing) return;
  if (ev.target instanceof Element && ev.target.closest("input, select, textarea, [contenteditable]")) return;
  if (state.keys(ev)) ev.preventDefault();
});

// ---------------------------------------------------------------- agreement, guidelines, overlap

const ALPHA_WHY = "Alpha could not be computed: no document has two votes, or every paired vote is in one category.";
const KAPPA_WHY = "Kappa could not be computed: fewer than 2 documents to compare with the others, or it is undefined.";

function agreementGroup(g) {
  const key = `${g.label}:${g.source}`;
  return h("section", { class: "card group", "aria-labelledby": `group-${enc(key)}` },
    h("h3", { id: `group-${enc(key)}` }, `${g.label} on ${g.source}`),
    h("p", {}, "Krippendorff's alpha ", fig(`alpha:${key}`, g.alpha, ALPHA_WHY), " over ",
      fig(`pairable:${key}`, g.pairable_documents), " documents with two or more votes (",
      fig(`votes:${key}`, g.votes), " latest votes)."),
    table(`Annotators on ${g.label}, ${g.source}`, ["Annotator", "Documents", "Documents compared", "Cohen's kappa against the others"],
      g.annotators.map((a) => [a.annotator, fig(`documents:${key}:${a.annotator}`, a.documents),
        fig(`kappa_documents:${key}:${a.annotator}`, a.kappa_documents), fig(`kappa:${key}:${a.annotator}`, a.kappa, KAPPA_WHY)])),
    table(`By guideline version, ${g.label}, ${g.source}`, ["Guideline version", "Alpha", "Pairable documents", "Votes"],
      g.by_guideline_version.map((b) => {
        const v = b.guideline_version == null ? "none" : `v${b.guideline_version}`;
        return [b.guideline_version == null ? "no guideline shown" : `version ${b.guideline_version}`,
          fig(`alpha:${key}:${v}`, b.alpha, ALPHA_WHY), fig(`pairable:${key}:${v}`, b.pairable_documents), fig(`votes:${key}:${v}`, b.votes)];
      })));
}

async function pageAgreement(page) {
  page.append(h("h1", {}, "Agreement"));
  const sourceSel = select("agreement-source", [["", "Every source"]]);
  const labelInput = h("input", { id: "agreement-label", type: "text", list: "known-labels", autocomplete: "off" });
  const known = h("datalist", { id: "known-labels" });
  const filters = h("form", { id: "agreement-filters", class: "card form-row" },
    field("Source", sourceSel), field("Label (optional)", labelInput), known,
    h("button", { type: "submit", id: "agreement-show" }, "Show"));
  const groups = h("div", { id: "agreement-groups" });
  const guidelines = h("div", { id: "guidelines" });
  const overlap = h("div", { id: "overlap" });
  page.append(filters, h("h2", {}, "Agreement per label and source"), groups,
    h("h2", {}, "Guidelines"), guidelines, h("h2", {}, "Overlap per source"), overlap);
  const labels = new Set();
  const remember = (names) => {
    for (const n of names) labels.add(n);
    known.replaceChildren(...[...labels].sort().map((l) => h("option", { value: l })));
  };

  const loadGroups = async () => {
    const qs = new URLSearchParams();
    if (sourceSel.value) qs.set("source", sourceSel.value);
    if (labelInput.value.trim()) qs.set("label", labelInput.value.trim());
    const r = await get(`/agreement${qs.toString() ? `?${qs}` : ""}`);
    remember(r.groups.map((x) => x.label));
    groups.replaceChildren(...(r.groups.length ? r.groups.map(agreementGroup) : [h("p", {}, "No votes match these filters.")]));
  };
  filters.addEventListener("submit", (ev) => { ev.preventDefault(); clearMessages(); loadGroups().catch(showError); });

  const loadGuidelines = async () => {
    const { guidelines: list } = await get("/guidelines");
    remember(list.map((x) => x.label));
    const rows = list.map((x) => [x.label, fig(`guideline_version:${x.label}`, x.version), x.author, when(x.created_at), h("p", { class: "gtext" }, x.text)]);
    const parts = [list.length ? table("Latest guideline per label", ["Label", "Version", "Author", "Written", "Text"], rows)
      : h("p", {}, "No guideline yet.")];
    if (can("admin")) parts.push(guidelineEditor(list, loadGuidelines));
    swap(guidelines, ...parts);
  };

  const loadSources = async () => {
    const { sources } = await get("/sources");
    if (sourceSel.options.length === 1) for (const x of sources) sourceSel.append(h("option", { value: x.source }, x.source));
    const admin = can("admin");
    const rows = sources.map((x, i) => {
      const row = [x.source, fig(`source_documents:${x.source}`, x.documents), fig(`overlap:${x.source}`, x.overlap)];
      if (admin) {
        const input = h("input", { id: `overlap-${i}`, type: "number", min: "1", max: "10", value: String(x.overlap), class: "num" });
        row.push(h("form", { class: "inline", onsubmit: (ev) => {
          ev.preventDefault();
          const n = Number(input.value);
          post(`/sources/${enc(x.source)}/settings`, { overlap: n })
            .then(() => loadSources())
            .then(() => note(`${x.source} now needs ${n} ${n === 1 ? "person" : "people"} per document.`))
            .catch(showError);
        } }, h("label", { for: input.id, class: "sr-only" }, `Overlap for ${x.source}`), input,
        h("button", { type: "submit", id: `overlap-save-${i}` }, "Save")));
      }
      return row;
    });
    swap(overlap, h("p", { class: "help" }, "How many people must decide each document of a source before it leaves a labelling queue."),
      table("Sources", ["Source", "Documents", "Overlap", ...(admin ? ["Set overlap"] : [])], rows));
  };
  await Promise.all([loadSources(), loadGroups(), loadGuidelines()]);
}

function guidelineEditor(list, reload) {
  const labelInput = h("input", { id: "guideline-label", type: "text", list: "known-labels", required: true, autocomplete: "off" });
  const text = h("textarea", { id: "guideline-text", rows: "6", required: true });
  labelInput.addEventListener("change", () => {
    const current = list.find((x) => x.label === labelInput.value.trim());
    if (current && !text.value.trim()) text.value = current.text;
  });
  const form = h("form", { id: "guideline-form", class: "card" },
    h("h3", {}, "Write a guideline"),
    h("p", { class: "help" }, "Saving publishes a new version; annotators see it from their next document."),
    field("Label", labelInput), field("Text", text),
    h("button", { type: "submit", id: "guideline-save" }, "Save as a new version"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const r = await post("/guidelines", { label: labelInput.value.trim(), text: text.value });
      await reload();
      note(`Saved version ${r.version} of the guideline for ${r.label}.`);
    } catch (e) { showError(e); }
  });
  return form;
}

// ---------------------------------------------------------------- datasets

async function pageDatasets(page) {
  page.append(h("h1", {}, "Datasets"));
  const { items } = await get("/datasets?limit=200");
  page.append(items.length ? table("Datasets, newest first", ["Name", "Status", "Batches", "Records", "Embedding model", "Created"],
    items.map((d) => [h("a", { href: `#/datasets/${enc(d.id)}` }, d.name), badge(d.status),
      `${fmt(d.progress.batches_done)} / ${fmt(d.progress.batches_total)}`,
      fig(`records:${d.id}`, d.stats && d.stats.records, "Counted once the dataset is built."), d.embedding_model, when(d.created_at)]))
    : h("p", {}, "No dataset yet."));
}

async function pageDataset(page, id) {
  const heading = h("h1", {}, "Dataset");
  const body = h("div");
  page.append(heading, body);
  await poll(async () => {
    const d = await get(`/datasets/${enc(id)}`);
    heading.textContent = `Dataset ${d.name}`;
    swap(body, ...datasetView(d));
    return ACTIVE_DATASET.includes(d.status);
  }, 2000);
}

function datasetView(d) {
  const p = d.progress;
  const eta = isNum(p.eta_seconds) ? `, about ${Math.ceil(p.eta_seconds)} s left` : "";
  const parts = [
    h("dl", { class: "facts" },
      h("dt", {}, "Status"), h("dd", {}, badge(d.status), d.error ? h("span", { class: "error-text" }, ` ${d.error}`) : null),
      h("dt", {}, "Embedding model"), h("dd", {}, `${d.embedding_model} (${d.dimensions} dimensions)`),
      h("dt", {}, "Created"), h("dd", {}, when(d.created_at)),
      h("dt", {}, "Ready"), h("dd", {}, when(d.ready_at)),
      h("dt", {}, "Embeddings"), h("dd", {}, fig("new_embeddings", d.new_embeddings), " computed, ", fig("reused_embeddings", d.reused_embeddings), " reused"),
      d.description ? [h("dt", {}, "Description"), h("dd", {}, d.description)] : null),
    h("div", { class: "card" }, h("h2", {}, "Progress"),
      h("progress", { max: String(Math.max(1, p.batches_total)), value: String(p.batches_done), "aria-label": "Embedding batches done" }),
      h("p", {}, fig("progress.batches_done", p.batches_done), " of ", fig("progress.batches_total", p.batches_total), " batches",
        isNum(p.texts_total) ? [", ", fig("progress.texts_done", p.texts_done), " of ", fig("progress.texts_total", p.texts_total), " texts"] : null,
        isNum(p.texts_per_second) ? [", ", fig("progress.texts_per_second", p.texts_per_second), " texts/s"] : null, eta, ".")),
  ];
  const st = d.stats;
  if (!st || !st.splits) {
    parts.push(h("p", {}, "Split sizes and label counts appear once the dataset is built."));
    return parts;
  }
  const splits = ["train", "validation", "test"].filter((x) => st.splits[x]);
  const labels = [...new Set(splits.flatMap((x) => Object.keys(st.splits[x].labels || {})))];
  parts.push(h("h2", {}, "Records"),
    h("p", {}, fig("stats.records", st.records), " records from ", fig("stats.documents_selected", st.documents_selected),
      " selected documents; left out: ", fig("stats.excluded_empty_text", st.excluded_empty_text), " without text and ",
      fig("stats.excluded_unlabelled", st.excluded_unlabelled), " without labels; ", fig("stats.inconsistent_labels", st.inconsistent_labels),
      " with disagreeing votes, ", fig("stats.ties", st.ties), " ties."),
    barChart({ title: "Records per split", categories: splits, series: [{ name: "Records", values: splits.map((x) => st.splits[x].records) }], xLabel: "Split", yLabel: "Records" }),
    table("Records per split", ["Split", "Records"], splits.map((x) => [x, fig(`stats.splits.${x}.records`, st.splits[x].records)])));
  if (labels.length) {
    parts.push(h("h2", {}, "Labels per split"),
      barChart({ title: "Positive records per label and split", categories: labels, xLabel: "Label", yLabel: "Positive records",
        series: splits.map((x) => ({ name: x, values: labels.map((l) => ((st.splits[x].labels || {})[l] || {}).positive) })) }),
      table("Label counts per split (positive, negative, not annotated)", ["Label", ...splits.flatMap((x) => [`${x} +`, `${x} −`, `${x} n/a`])],
        labels.map((l) => [l, ...splits.flatMap((x) => {
          const c = (st.splits[x].labels || {})[l] || {};
          return ["positive", "negative", "masked"].map((k) => fig(`stats.splits.${x}.labels.${l}.${k}`, c[k]));
        })])));
  }
  return parts;
}

// ---------------------------------------------------------------- training runs

async function pageRuns(page) {
  page.append(h("h1", {}, "Training runs"));
  const { items } = await get("/training-runs?limit=200");
  page.append(items.length ? table("Training runs, newest first", ["Run", "Model", "Status", "Epoch", "Best metric", "Created"],
    items.map((r) => [h("a", { href: `#/runs/${enc(r.id)}`, "aria-label": `Run ${r.id}` }, short(r.id)),
      `${r.model_name}${r.model_version ? ` v${r.model_version}` : ""} (${r.mode}, ${r.task})`, badge(r.status),
      `${r.progress.epoch} / ${r.progress.total_epochs}`, fig(`best_metric:${r.id}`, r.best_metric, "Known after the first epoch."), when(r.created_at)]))
    : h("p", {}, "No training run yet."));
}

async function pageRun(page, id) {
  const heading = h("h1", {}, "Training run");
  const summary = h("div");
  const curves = h("figure", { id: "run-curves", class: "curves" });
  const epochs = h("div", { id: "run-epochs" });
  const tests = h("div", { id: "run-test" });
  page.append(heading, summary, h("h2", {}, "Curves"), curves, h("h2", {}, "Epochs"), epochs, tests);
  await poll(async () => {
    const [run, series] = await Promise.all([get(`/training-runs/${enc(id)}`), get(`/training-runs/${enc(id)}/metrics`)]);
    heading.textContent = `Training run of ${run.model_name}`;
    swap(summary, runSummary(run));
    swap(epochs, epochTable(series));
    swap(tests, ...testMetricsView(run.test_metrics ?? series.test_metrics, run.validation_metrics));
    await loadCurves(curves, id);
    return ACTIVE_RUN.includes(run.status);
  }, 2000);
}

function runSummary(r) {
  const p = r.progress;
  return h("div", { class: "card" },
    h("dl", { class: "facts" },
      h("dt", {}, "Status"), h("dd", { "data-figure-text": "run_status", "data-value": r.status }, badge(r.status), r.error ? h("span", { class: "error-text" }, ` ${r.error}`) : null),
      h("dt", {}, "Model"), h("dd", {}, `${r.model_name}${r.model_version ? ` version ${r.model_version}` : ""} · ${r.mode} · ${r.task}`),
      h("dt", {}, "Labels"), h("dd", {}, r.labels.join(", ")),
      h("dt", {}, "Dataset"), h("dd", {}, h("a", { href: `#/datasets/${enc(r.dataset_id)}` }, short(r.dataset_id))),
      r.base_model ? [h("dt", {}, "Base model"), h("dd", {}, r.base_model)] : null,
      h("dt", {}, "Device"), h("dd", {}, r.device_used || r.device),
      h("dt", {}, "Best epoch"), h("dd", {}, fig("best_epoch", r.best_epoch, "Known after the first epoch."), " (metric ", fig("best_metric", r.best_metric, "Known after the first epoch."), ")"),
      h("dt", {}, "Started"), h("dd", {}, when(r.started_at)),
      h("dt", {}, "Finished"), h("dd", {}, when(r.finished_at))),
    h("progress", { max: String(Math.max(1, p.total_steps)), value: String(p.global_step), "aria-label": "Training steps done" }),
    h("p", {}, "Epoch ", fig("progress.epoch", p.epoch), " of ", fig("progress.total_epochs", p.total_epochs), ", step ",
      fig("progress.global_step", p.global_step), " of ", fig("progress.total_steps", p.total_steps),
      isNum(p.samples_per_sec) ? [", ", fig("progress.samples_per_sec", p.samples_per_sec), " samples/s"] : null,
      isNum(p.eta_secs) ? `, about ${Math.ceil(p.eta_secs)} s left` : null, "."));
}

async function loadCurves(figure, id) {
  try {
    const res = await api("GET", `/training-runs/${enc(id)}/curves.svg`, undefined, { raw: true });
    const svg = await res.text();
    swap(figure, h("img", { src: `data:image/svg+xml;charset=utf-8,${enc(svg)}`, alt: "Training and validation loss and validation F1 per epoch", class: "curves-img" }),
      h("figcaption", {}, `Loss and F1 per epoch, as of ${new Date().toLocaleTimeString()}.`));
  } catch (e) {
    swap(figure, h("p", {}, `No curves yet: ${e.message}`));
  }
}

const EMPTY_SPLIT = "No record of this split was annotated, so it has no figures.";

function epochTable(series) {
  const val = (e, k) => (e.metrics && isNum(e.metrics[k]) ? e.metrics[k] : null);
  const rows = series.epochs.map((e) => [
    `${e.epoch}${e.epoch === series.best_epoch ? " (best)" : ""}`,
    fig(`epoch:${e.epoch}:global_step`, e.global_step), fig(`epoch:${e.epoch}:train_loss`, e.train_loss),
    fig(`epoch:${e.epoch}:val_loss`, e.val_loss, EMPTY_SPLIT), fig(`epoch:${e.epoch}:val_macro_f1`, val(e, "macro_f1"), EMPTY_SPLIT),
    fig(`epoch:${e.epoch}:val_micro_f1`, val(e, "micro_f1"), EMPTY_SPLIT)]);
  if (!rows.length) return h("p", { id: "epochs-none", "data-epochs": "0" }, "No epoch has finished yet.");
  return table("Per-epoch metrics", ["Epoch", "Step", "Train loss", "Validation loss", "Validation macro F1", "Validation micro F1"], rows,
    { id: "epochs-table", "data-epochs": String(series.epochs.length) });
}

function testMetricsView(tm, vm) {
  if (!tm) return [h("p", {}, "Test metrics appear once the run has finished.")];
  if (tm.test_split === "empty") return [h("h2", {}, "Test metrics"), h("p", {}, EMPTY_SPLIT)];
  const parts = [h("h2", {}, "Test metrics"),
    h("p", {}, "Macro F1 ", fig("test.macro_f1", tm.macro_f1), ", micro F1 ", fig("test.micro_f1", tm.micro_f1),
      ", macro ROC-AUC ", fig("test.macro_roc_auc", tm.macro_roc_auc, "Undefined: every label had one class only."), " over ", fig("test.rows", tm.rows), " records."),
    table("Per label on the test split", ["Label", "Threshold", "Positives", "Negatives", "Precision", "Recall", "F1", "ROC-AUC"],
      (tm.per_label || []).map((m) => [m.label, fig(`test:${m.label}:threshold`, m.threshold), fig(`test:${m.label}:support`, m.support),
        fig(`test:${m.label}:negatives`, m.negatives), fig(`test:${m.label}:precision`, m.precision),
        fig(`test:${m.label}:recall`, m.recall, "Undefined: no positive record."), fig(`test:${m.label}:f1`, m.f1, "Undefined: no positive record."),
        fig(`test:${m.label}:roc_auc`, m.roc_auc, "Undefined: only one class among the records.")]))];
  const cm = tm.confusion_matrix;
  if (cm && Array.isArray(cm.classes) && Array.isArray(cm.counts)) {
    parts.push(h("h3", {}, "Confusion matrix"),
      table("Confusion matrix: rows are the true class, columns the predicted one", ["True \\ predicted", ...cm.classes],
        cm.classes.map((c, i) => [c, ...cm.classes.map((p, j) => fig(`confusion:${c}:${p}`, (cm.counts[i] || [])[j]))]), { id: "confusion-matrix" }));
  }
  // The thresholds are chosen on the validation split: its curves show where each one sits.
  const curves = vm && Array.isArray(vm.pr_curves) ? vm.pr_curves.filter((c) => c.points && c.points.length) : [];
  if (curves.length) {
    parts.push(h("h3", {}, "Precision–recall curves (validation split, where each threshold was chosen)"),
      h("div", { class: "pr-grid", id: "pr-curves" }, curves.map(prChart)));
  }
  return parts;
}

// ---------------------------------------------------------------- models

async function pageModels(page) {
  page.append(h("h1", {}, "Models"));
  const models = await get("/models");
  page.append(models.length ? table("Models", ["Model", "Served version", "Latest version", "Versions", "Updated"],
    models.map((m) => [h("a", { href: `#/models/${enc(m.name)}` }, m.name),
      fig(`served_version:${m.name}`, m.served_version, "No version is served."), fig(`latest_version:${m.name}`, m.latest_version, "No version yet."),
      fig(`versions:${m.name}`, m.versions), when(m.updated_at)]))
    : h("p", {}, "No model yet."));
}

async function pageModel(page, name) {
  page.append(h("h1", {}, `Model ${name}`));
  const body = h("div", { id: "model-body" });
  page.append(body);
  const load = async () => {
    const [models, versions, evals] = await Promise.all([get("/models"), get(`/models/${enc(name)}/versions`), get("/evaluations?limit=200")]);
    const m = models.find((x) => x.name === name);
    if (!m) throw new Error(`There is no model named ${name}.`);
    swap(body, modelSummary(m, load), h("h2", {}, "Versions side by side"), versionsTable(m, versions, load),
      h("h2", {}, "Evaluations"), evaluationsView(evals.items.filter((e) => e.model === name)));
  };
  await load();
}

function modelSummary(m, reload) {
  const parts = [h("p", {}, "Served version: ", fig("served_version", m.served_version, "No version is served."),
    " · latest: ", fig("latest_version", m.latest_version, "No version yet."), " · this process serves ",
    fig("loaded_version", m.loaded_version, "This API process has not loaded a version."),
    m.load_error ? h("span", { class: "error-text" }, ` (load error: ${m.load_error})`) : null)];
  if (can("admin") && isNum(m.served_version)) {
    parts.push(confirmButton("Roll back", "Confirm roll back", { id: "rollback", "data-action": "rollback", class: "secondary" }, async () => {
      const r = await post(`/models/${enc(m.name)}/rollback`);
      await reload();
      note(`Version ${r.version} is served again${r.previous_version ? ` (was ${r.previous_version})` : ""}.`);
    }));
  }
  return h("div", { class: "card" }, parts);
}

function versionsTable(m, versions, reload) {
  if (!versions.length) return h("p", {}, "No version yet.");
  const split = (v, k) => (v.metrics && v.metrics[k] && !v.metrics[k][`${k}_split`] ? v.metrics[k] : null);
  const labels = [...new Set(versions.flatMap((v) => (v.spec && v.spec.labels) || []))];
  const row = (title, cell) => [title, ...versions.map(cell)];
  const rows = [
    row("Served", (v) => (v.served ? h("span", { class: "badge ok", "data-served-version": v.version }, "served") : "no")),
    row("Created", (v) => when(v.created_at)),
    row("Dataset", (v) => (v.dataset_id ? h("a", { href: `#/datasets/${enc(v.dataset_id)}` }, short(v.dataset_id)) : "—")),
    row("Base model", (v) => `${(v.spec && v.spec.base_model) || v.embedding_model} (${(v.spec && v.spec.mode) || "?"}, ${(v.spec && v.spec.task) || "?"})`),
    row("Test macro F1", (v) => fig(`f1_macro:v${v.version}`, split(v, "test") && split(v, "test").macro_f1, EMPTY_SPLIT)),
    row("Test micro F1", (v) => fig(`f1_micro:v${v.version}`, split(v, "test") && split(v, "test").micro_f1, EMPTY_SPLIT)),
    row("Validation macro F1", (v) => fig(`val_f1_macro:v${v.version}`, split(v, "validation") && split(v, "validation").macro_f1, EMPTY_SPLIT)),
    row("Test records", (v) => fig(`test_rows:v${v.version}`, split(v, "test") && split(v, "test").rows, EMPTY_SPLIT)),
  ];
  for (const l of labels) {
    rows.push(row(`F1 of ${l} (test)`, (v) => {
      const m2 = split(v, "test") && (split(v, "test").per_label || []).find((x) => x.label === l);
      return fig(`f1:v${v.version}:${l}`, m2 && m2.f1, "No test figure for this label.");
    }));
    rows.push(row(`Threshold of ${l}`, (v) => {
      const i = ((v.spec && v.spec.labels) || []).indexOf(l);
      return fig(`threshold:v${v.version}:${l}`, i >= 0 && Array.isArray(v.thresholds) ? v.thresholds[i] : null, "Not a label of this version.");
    }));
    rows.push(row(`Coverage of ${l} (training split)`, (v) => coverageCell(v, l)));
  }
  rows.push(row("Weights", (v) => fig(`weights_bytes:v${v.version}`, v.weights_bytes, undefined, fmtBytes(v.weights_bytes))));
  rows.push(row("Actions", (v) => h("div", { class: "buttons" },
    !v.served && can("admin") ? confirmButton(`Promote v${v.version}`, `Confirm: serve v${v.version}`,
      { id: `promote-${v.version}`, "data-action": "promote", "data-version": v.version }, async () => {
        const r = await post(`/models/${enc(m.name)}/versions/${v.version}/promote`);
        await reload();
        note(`Version ${r.version} is now served${r.previous_version ? ` (was ${r.previous_version})` : ""}.`);
      }) : null,
    button(`Download v${v.version} (tar)`, () => download(`/models/${enc(m.name)}/versions/${v.version}/export`, `${m.name}-v${v.version}.tar`).catch(showError),
      { id: `export-${v.version}`, class: "secondary", "data-action": "export", "data-version": v.version }))));
  return table(`Versions of ${m.name}, newest first`, ["Figure", ...versions.map((v) => `v${v.version}`)], rows, { id: "versions-table", class: "versions" });
}

function coverageCell(v, label) {
  if (!v.label_coverage) return h("span", { title: "This version was trained before label coverage was kept." }, "not recorded");
  const c = v.label_coverage[label];
  if (!c) return "—";
  const key = `coverage:v${v.version}:${label}`;
  return h("div", {}, h("div", {}, "all: ", fig(`${key}:positives`, c.positives), " + / ", fig(`${key}:negatives`, c.negatives), " −"),
    Object.entries(c.sources || {}).map(([src, n]) => h("div", {}, `${src}: `, fig(`${key}:${src}:positives`, n.positives), " + / ",
      fig(`${key}:${src}:negatives`, n.negatives), " −")));
}

function evaluationsView(evals) {
  if (!evals.length) return h("p", {}, "No evaluation of this model yet.");
  const panel = h("div", { id: "disagreements", class: "card", hidden: true, "aria-live": "polite" });
  const show = async (e, b) => {
    if (!panel.hidden && panel.dataset.evaluation === e.id) {
      panel.hidden = true;
      b.setAttribute("aria-expanded", "false");
      return;
    }
    const page = await get(`/evaluations/${enc(e.id)}/disagreements?limit=50`);
    for (const other of document.querySelectorAll("button[data-action=disagreements]")) other.setAttribute("aria-expanded", "false");
    b.setAttribute("aria-expanded", "true");
    panel.dataset.evaluation = e.id;
    panel.hidden = false;
    panel.replaceChildren(h("h3", {}, `Disagreements of evaluation ${short(e.id)} (first ${page.items.length} of ${fmt(page.total)})`),
      page.items.length ? table("Records on which the versions decide differently", ["Document", "Consensus", ...e.versions.map((v) => `v${v} predicts`)],
        page.items.map((d) => [h("span", {}, `${d.external_id} (${d.source})`, h("br"), h("span", { class: "muted" }, d.text.slice(0, 160))),
          Object.entries(d.labels || {}).map(([l, x]) => `${l}: ${x == null ? "not annotated" : x ? "yes" : "no"}`).join(", "),
          ...e.versions.map((v) => { const p = (d.predictions || {})[v]; return p ? (p.positive_labels.join(", ") || "none") : "—"; })]))
        : h("p", {}, "None."));
  };
  const rows = evals.map((e) => {
    const results = (e.results && e.results.versions) || [];
    const b = button("Show disagreements", (ev) => show(e, ev.currentTarget).catch(showError),
      { id: `disagreements-${e.id}`, "data-action": "disagreements", "aria-expanded": "false", "aria-controls": "disagreements" });
    return [h("span", {}, when(e.created_at), h("br"), h("span", { class: "muted" }, short(e.id))), e.split, e.versions.map((v) => `v${v}`).join(", "), badge(e.status),
      h("div", {}, e.versions.map((v) => {
        const r = results.find((x) => x.version === v);
        return h("div", {}, `v${v}: `, fig(`eval_f1_macro:${e.id}:v${v}`, r && r.at_stored_thresholds && r.at_stored_thresholds.macro_f1, "Not computed (yet)."));
      })),
      fig(`eval_disagreements:${e.id}`, e.disagreements, "Counted once the evaluation is done."), b];
  });
  return h("div", {}, table("Evaluations of this model, newest first", ["Evaluation", "Split", "Versions", "Status", "Macro F1 (stored thresholds)", "Disagreements", "Disagreeing records"], rows), panel);
}

// ---------------------------------------------------------------- queues and jobs

async function pageQueues(page) {
  page.append(h("h1", {}, "Queues"));
  const body = h("div", { id: "queues-body" });
  page.append(body);
  const refresh = async () => {
    const [health, failed, retrying] = await Promise.all([get("/health"), get("/jobs?status=failed&limit=100"), get("/jobs?status=retrying&limit=100")]);
    swap(body, ...queuesView(health, failed, retrying, refresh));
  };
  await poll(refresh, 3000);
}

function queuesView(health, failed, retrying, refresh) {
  const act = (verb, job) => post(`/jobs/${enc(job.id)}/${verb}`)
    .then(() => refresh())
    .then(() => note(`Job ${short(job.id)} ${verb === "retry" ? "is queued again" : "is cancelled"}.`))
    .catch(showError);
  const parts = [h("h2", {}, "Queue depths")];
  if (!health.queues) {
    parts.push(h("p", {}, "Queue depths need a token with the read scope."));
  } else {
    parts.push(table("Jobs waiting and running per queue", ["Queue", "Waiting", "Running", "Oldest waiting since"],
      health.queues.map((q) => [q.queue, fig(`waiting:${q.queue}`, q.waiting), fig(`running:${q.queue}`, q.running), when(q.oldest_waiting_at)])));
  }
  const workers = health.live_workers;
  parts.push(h("h2", {}, "Workers"),
    h("p", {}, "Live workers: ", fig("live_workers", workers ? workers.length : null, "Needs a token with the read scope."),
      workers && workers.length ? ` (${workers.join(", ")})` : ""));
  const jobs = [...failed.items, ...retrying.items];
  parts.push(h("h2", {}, "Failed jobs"),
    h("p", {}, fig("failed_jobs", failed.total), " failed, ", fig("retrying_jobs", retrying.total), " waiting to retry after an error."));
  if (jobs.length) {
    parts.push(table("Failed jobs and jobs waiting to retry", ["Job", "Kind", "Status", "Attempts", "Last error", "Finished", "Actions"],
      jobs.map((j) => [short(j.id), j.kind, badge(j.status), `${j.attempts} / ${j.max_attempts}`,
        h("pre", { class: "error-text" }, j.last_error || "—"), when(j.finished_at),
        can("submit") ? h("div", { class: "buttons" },
          j.status === "failed" ? button("Retry", () => act("retry", j), { id: `retry-${j.id}`, "aria-label": `Retry job ${short(j.id)}` }) : null,
          j.status !== "failed" ? button("Cancel", () => act("cancel", j), { id: `cancel-${j.id}`, class: "secondary", "aria-label": `Cancel job ${short(j.id)}` }) : null)
          : "needs the submit scope"])));
  }
  return parts;
}

// ---------------------------------------------------------------- start

async function boot() {
  try {
    state.me = await api("GET", "/me", undefined, { token: null });
    if (state.me.auth_enabled && state.token) {
      try {
        state.me = await api("GET", "/me");
      } catch (e) {
        if (e.status !== 401) throw e;
      }
    }
  } catch (e) {
    $("page").replaceChildren();
    showError(e);
    return;
  }
  window.addEventListener("hashchange", route);
  route();
}

boot();
