// Drives trainyard's web app (/ui) in headless Chromium — keyboard labelling, two labellers at once, scopes, promotion, a live run, page figures against the API, axe-core, screenshots — and prints one JSON line.
// Usage: node webapp.mjs CONFIG_PATH (config: base, shots, tokens {admin, submit, submit2, read}, model, strategy,
// source_one, source_two, count_one, promote_version, run_id, dataset_id, and optionally only: [scenario
// names] to run just those). It never throws: a failed scenario carries `error`, a failure outside the
// scenarios sets result.error.
import { chromium } from "playwright-core";
import { createRequire } from "node:module";
import fs from "node:fs";
import path from "node:path";

const require = createRequire(import.meta.url);
const AXE_PATH = require.resolve("axe-core/axe.min.js");
const SETTLE_MS = 90000;

const result = { requests: [], outside: [], csp_violations: [], dialogs: [] };
const seen = new Set();
let cfg;
let browser;

// ---------------------------------------------------------------- plumbing

async function newContext(opts = {}) {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 }, ...opts });
  ctx.on("request", (r) => {
    const u = r.url();
    const url = new URL(u);
    if (url.protocol === "data:" || url.protocol === "blob:") return;
    if (!seen.has(u)) { seen.add(u); result.requests.push(u); }
    if (!["127.0.0.1", "localhost"].includes(url.hostname)) result.outside.push(u);
  });
  ctx.on("page", (page) => {
    page.on("console", (m) => { if (/Content Security Policy/i.test(m.text())) result.csp_violations.push(m.text().slice(0, 300)); });
    page.on("dialog", (d) => { result.dialogs.push(d.message()); d.dismiss().catch(() => {}); });
  });
  return ctx;
}

/** The API from Node (not through a page), with the admin token unless told otherwise. */
async function apiGet(p, token = cfg.tokens.admin) {
  const res = await fetch(`${cfg.base}/api/v1${p}`, { headers: { Authorization: `Bearer ${token}` } });
  if (!res.ok) throw new Error(`GET ${p}: HTTP ${res.status} ${await res.text()}`);
  return res.json();
}

/** A status code of a call made from inside the page with fetch (as a person's browser would). */
function pageFetchStatus(page, method, p, token, body) {
  return page.evaluate(async ({ method, p, token, body }) => {
    const res = await fetch(`/api/v1${p}`, { method, headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" }, body: body ? JSON.stringify(body) : undefined });
    return res.status;
  }, { method, p, token, body });
}

async function waitLoaded(page, hash) {
  await page.waitForSelector(`main[data-loaded="true"][data-route=${JSON.stringify(hash)}]`, { timeout: 30000 });
}

async function go(page, hash) {
  const current = await page.evaluate(() => location.hash).catch(() => null);
  if (current === hash) await page.reload();
  else if (current === null || !page.url().startsWith(`${cfg.base}/ui`)) await page.goto(`${cfg.base}/ui${hash}`);
  else await page.evaluate((h) => { location.hash = h; }, hash);
  await waitLoaded(page, hash);
}

/**
 * Signs in by typing the token into the sign-in form and pressing Enter. Opening `land` while
 * signed out shows the sign-in form, which then goes on to `land` (#/label by default).
 */
async function signIn(page, token, land = "#/label") {
  await page.goto(`${cfg.base}/ui${land}`);
  await page.waitForSelector("#signin-token", { timeout: 30000 });
  await page.focus("#signin-token");
  await page.keyboard.type(token);
  await page.keyboard.press("Enter");
  await waitLoaded(page, land);
}

async function tabTo(page, id, max = 60) {
  for (let i = 0; i < max; i++) {
    if (await page.evaluate(() => document.activeElement && document.activeElement.id) === id) return;
    await page.keyboard.press("Tab");
  }
  throw new Error(`Tab never reached #${id}`);
}

/** Picks an option of a <select> with Tab and the arrow keys only. */
async function chooseByKeyboard(page, id, value) {
  await tabTo(page, id);
  const { options, index } = await page.$eval(`#${id}`, (el) => ({ options: [...el.options].map((o) => o.value), index: el.selectedIndex }));
  const want = options.indexOf(value);
  if (want < 0) throw new Error(`#${id} has no option ${value} (it has ${options.join(", ")})`);
  for (let i = 0; i < Math.abs(want - index); i++) await page.keyboard.press(want > index ? "ArrowDown" : "ArrowUp");
  const now = await page.$eval(`#${id}`, (el) => el.value);
  if (now !== value) throw new Error(`#${id} shows ${now} after the arrow keys, not ${value}`);
}

function labelState(page) {
  return page.evaluate(() => {
    const v = document.getElementById("label-session");
    const doc = document.getElementById("doc-text");
    return {
      state: v ? v.dataset.state : null,
      seq: v ? Number(v.dataset.seq) : 0,
      id: doc ? Number(doc.dataset.documentId) : null,
      task: v && v.dataset.task ? v.dataset.task : null,
      n: document.querySelectorAll("#label-body [data-label-index]").length,
    };
  });
}

/** Waits until the labelling view shows a newer document (or says empty / failed). */
async function settle(page, prevSeq) {
  await page.waitForFunction((prev) => {
    const v = document.getElementById("label-session");
    if (!v) return false;
    const st = v.dataset.state;
    return st === "error" || ((st === "ready" || st === "empty") && Number(v.dataset.seq) > prev);
  }, prevSeq, { timeout: SETTLE_MS });
  const st = await labelState(page);
  if (st.state === "error") throw new Error(`labelling failed: ${await alertText(page)}`);
  return st;
}

const alertText = (page) => page.$eval("#alert", (el) => el.textContent.trim()).catch(() => "");

/** Decides the shown document by keyboard: y/n alternating, a class digit, or label toggles + Enter. */
async function decideByKeys(page, st, k) {
  if (st.task === "binary") {
    await page.keyboard.press(k % 2 === 0 ? "y" : "n");
  } else if (st.task === "multi_class") {
    await page.keyboard.press(String((k % Math.min(st.n, 9)) + 1));
  } else {
    const n = Math.min(st.n, 9);
    await page.keyboard.press(String((k % n) + 1));
    if (n > 1 && k % 3 === 0) await page.keyboard.press(String(((k + 1) % n) + 1));
    await page.keyboard.press("Enter");
  }
}

async function startQueue(page, source, { keyboard }) {
  if (keyboard) {
    await chooseByKeyboard(page, "label-model", cfg.model);
    await chooseByKeyboard(page, "label-strategy", cfg.strategy);
    await chooseByKeyboard(page, "label-source", source);
    await tabTo(page, "label-start");
    await page.keyboard.press("Enter");
  } else {
    await page.selectOption("#label-model", cfg.model);
    await page.selectOption("#label-strategy", cfg.strategy);
    await page.selectOption("#label-source", source);
    await page.click("#label-start");
  }
  return settle(page, 0);
}

async function scenario(name, fn) {
  try {
    result[name] = await fn();
  } catch (e) {
    result[name] = { ...(result[name] || {}), error: String(e && e.stack ? e.stack.split("\n").slice(0, 3).join(" | ") : e) };
  }
}

// ---------------------------------------------------------------- 1. one person, keyboard only

async function one() {
  const ctx = await newContext();
  const page = await ctx.newPage();
  const posted = [];
  let undoAnswer = null;
  page.on("request", (r) => {
    if (r.method() === "POST" && r.url().endsWith("/api/v1/labelling/answers")) posted.push(JSON.parse(r.postData() || "{}"));
  });
  page.on("response", async (r) => {
    if (r.url().endsWith("/api/v1/labelling/undo") && r.ok()) undoAnswer = await r.json().catch(() => null);
  });
  const out = { decided: [], skipped: [], undone: null, key_help_visible: false };
  try {
    await signIn(page, cfg.tokens.submit);
    let st = await startQueue(page, cfg.source_one, { keyboard: true });
    await page.keyboard.press("?");
    out.key_help_visible = await page.isVisible("#key-help");
    await page.keyboard.press("?");
    out.key_help_hidden_again = !(await page.isVisible("#key-help"));
    let skippedOnce = false;
    let undoneOnce = false;
    for (let guard = 0; out.decided.length < cfg.count_one && guard < cfg.count_one * 2 + 10; guard++) {
      if (st.state !== "ready") { out.stopped = `queue ${st.state} after ${out.decided.length} decisions`; break; }
      if (!skippedOnce && out.decided.length === 2) {
        skippedOnce = true;
        await page.keyboard.press("s");
        out.skipped.push(st.id);
        st = await settle(page, st.seq);
        continue;
      }
      if (!undoneOnce && out.decided.length === 4) {
        undoneOnce = true;
        const last = out.decided[out.decided.length - 1];
        await page.keyboard.press("u");
        st = await settle(page, st.seq);
        out.undone = undoAnswer ? undoAnswer.document_id : null;
        out.undone_labels = undoAnswer ? undoAnswer.labels : null;
        out.undone_shown_again = st.id === out.undone;
        if (out.undone === last.document_id) out.decided.pop();
        out.decided_counter_after_undo = Number(await page.$eval('[data-figure="label_decided_session"]', (el) => el.dataset.value));
        continue;
      }
      if (out.decided.length === 6 && cfg.shots) {
        // The labelling screen with a document on it, for the README's tour.
        const file = path.join(cfg.shots, "label-document.png");
        await page.screenshot({ path: file, fullPage: true });
        out.screenshot = file;
      }
      const before = posted.length;
      await decideByKeys(page, st, out.decided.length);
      st = await settle(page, st.seq);
      const body = posted[posted.length - 1];
      if (posted.length === before || !body || body.skip) throw new Error("a decision key sent no answer");
      out.decided.push({ document_id: body.document_id, labels: body.labels, guideline_versions: body.guideline_versions });
    }
    out.decided_counter = Number(await page.$eval('[data-figure="label_decided_session"]', (el) => el.dataset.value));
    out.answers_posted = posted.length;
    out.mouse_used = false;
  } finally {
    await ctx.close();
  }
  return out;
}

// ---------------------------------------------------------------- 2. two people on one source

async function two() {
  // shown: [id shown to a, id shown to b] at every check (null: nothing shown), repeats folded.
  const out = { a: [], b: [], same_at_once: [], steps: 0, shown: [] };
  const people = [];
  try {
    for (const [key, token] of [["a", cfg.tokens.submit], ["b", cfg.tokens.submit2]]) {
      const ctx = await newContext();
      const page = await ctx.newPage();
      await signIn(page, token);
      people.push({ key, ctx, page, st: await startQueue(page, cfg.source_two, { keyboard: false }) });
    }
    const check = async () => {
      const [sa, sb] = await Promise.all(people.map((p) => labelState(p.page)));
      const pair = [sa.state === "ready" ? sa.id : null, sb.state === "ready" ? sb.id : null];
      const last = out.shown[out.shown.length - 1];
      if (!last || last[0] !== pair[0] || last[1] !== pair[1]) out.shown.push(pair);
      if (sa.state === "ready" && sb.state === "ready" && sa.id === sb.id && !out.same_at_once.includes(sa.id)) out.same_at_once.push(sa.id);
    };
    for (let round = 0; round < 200; round++) {
      for (const p of people) {
        await check();
        if (p.st.state === "ready" && out[p.key].length < 60) {
          const id = p.st.id;
          await decideByKeys(p.page, p.st, 0);
          p.st = await settle(p.page, p.st.seq);
          out[p.key].push(id);
          out.steps++;
        } else if (p.st.state === "empty") {
          await p.page.click("#label-again");
          p.st = await settle(p.page, p.st.seq);
        }
        await check();
      }
      // One person's "empty" may be stale (the other held a document they still had to decide):
      // stop only when both, asked again while neither holds a document, still see nothing.
      if (people.every((p) => p.st.state === "empty" || out[p.key].length >= 60)) {
        for (const p of people) {
          if (p.st.state !== "empty") continue;
          await p.page.click("#label-again");
          p.st = await settle(p.page, p.st.seq);
        }
        if (people.every((p) => p.st.state === "empty" || out[p.key].length >= 60)) break;
      }
    }
    out.final_states = Object.fromEntries(people.map((p) => [p.key, p.st.state]));
  } finally {
    for (const p of people) await p.ctx.close();
  }
  return out;
}

// ---------------------------------------------------------------- 3. a read token cannot label

async function read() {
  const ctx = await newContext();
  const page = await ctx.newPage();
  try {
    await signIn(page, cfg.tokens.read);
    const start = await page.$("#label-start");
    const canLabel = !!start && (await start.isEnabled());
    const next = await pageFetchStatus(page, "POST", "/labelling/next", cfg.tokens.read,
      { model: cfg.model, strategy: cfg.strategy, source: cfg.source_one });
    return { can_label: canLabel, message_shown: await page.isVisible("#label-denied"), next_status: next };
  } finally {
    await ctx.close();
  }
}

// ---------------------------------------------------------------- 4. and 5. promotion needs admin

async function submitPromote() {
  const ctx = await newContext();
  const page = await ctx.newPage();
  try {
    await signIn(page, cfg.tokens.submit);
    await go(page, `#/models/${encodeURIComponent(cfg.model)}`);
    await page.waitForSelector("#versions-table", { timeout: 30000 });
    return {
      promote_buttons: await page.locator('button[data-action="promote"]').count(),
      rollback_buttons: await page.locator('button[data-action="rollback"]').count(),
      promote_status: await pageFetchStatus(page, "POST", `/models/${encodeURIComponent(cfg.model)}/versions/${cfg.promote_version}/promote`, cfg.tokens.submit),
    };
  } finally {
    await ctx.close();
  }
}

async function adminPromote() {
  const ctx = await newContext();
  const page = await ctx.newPage();
  const out = { clicked: false };
  try {
    await signIn(page, cfg.tokens.admin);
    await go(page, `#/models/${encodeURIComponent(cfg.model)}`);
    await page.waitForSelector("#versions-table", { timeout: 30000 });
    const v = cfg.promote_version;
    const b = page.locator(`button[data-action="promote"][data-version="${v}"]`);
    if (await b.count()) {
      await b.click();
      await page.waitForSelector(`button[data-action="promote"][data-version="${v}"][data-armed]`, { timeout: 5000 });
      out.dialogs_before = result.dialogs.length;
      await b.click();
      out.clicked = true;
      await page.waitForSelector(`[data-served-version="${v}"]`, { timeout: 30000 }).catch(() => {});
      out.page_alert = await alertText(page);
      out.page_served = Number(await page.$eval('[data-figure="served_version"]', (el) => el.dataset.value).catch(() => NaN));
    } else {
      out.note = `no promote button for v${v} (already served?)`;
    }
    const models = await apiGet("/models");
    const m = models.find((x) => x.name === cfg.model);
    out.served_after = m ? m.served_version ?? null : null;
  } finally {
    await ctx.close();
  }
  return out;
}

// ---------------------------------------------------------------- 6. a run that is training

async function runs() {
  if (!cfg.run_id) return { skipped: "no run_id" };
  const ctx = await newContext();
  const page = await ctx.newPage();
  const out = { epochs_seen: [], final_status: null };
  try {
    await signIn(page, cfg.tokens.read, `#/runs/${encodeURIComponent(cfg.run_id)}`);
    const end = Date.now() + 120000;
    let afterDone = 0;
    while (Date.now() < end && afterDone < 3) {
      const seenNow = await page.evaluate(() => {
        const t = document.querySelector("[data-epochs]");
        const s = document.querySelector('[data-figure-text="run_status"]');
        const img = document.querySelector("#run-curves img");
        return { epochs: t ? Number(t.dataset.epochs) : null, status: s ? s.dataset.value : null, curves: img ? img.src.length : 0 };
      });
      if (seenNow.epochs != null && out.epochs_seen[out.epochs_seen.length - 1] !== seenNow.epochs) out.epochs_seen.push(seenNow.epochs);
      out.final_status = seenNow.status;
      out.curves_shown = seenNow.curves > 0;
      if (seenNow.status && !["pending", "queued", "running"].includes(seenNow.status)) afterDone++;
      await page.waitForTimeout(1000);
    }
    out.increasing = out.epochs_seen.every((v, i) => i === 0 || v > out.epochs_seen[i - 1]);
  } finally {
    await ctx.close();
  }
  return out;
}

// ---------------------------------------------------------------- 7. page figures against the API

const norm = (v) => (typeof v === "number" && Number.isFinite(v) ? String(v) : "");

function flatten(obj, prefix, out) {
  for (const [k, v] of Object.entries(obj || {})) {
    const key = prefix ? `${prefix}.${k}` : k;
    if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, key, out);
    else out.set(key, v);
  }
  return out;
}

async function expectDataset() {
  return flatten(await apiGet(`/datasets/${encodeURIComponent(cfg.dataset_id)}`), "", new Map());
}

async function expectModel() {
  const name = cfg.model;
  const [models, versions, evals] = await Promise.all([apiGet("/models"), apiGet(`/models/${encodeURIComponent(name)}/versions`), apiGet("/evaluations?limit=200")]);
  const m = models.find((x) => x.name === name) || {};
  const e = new Map([["served_version", m.served_version], ["latest_version", m.latest_version], ["loaded_version", m.loaded_version]]);
  const split = (v, k) => (v.metrics && v.metrics[k] && !v.metrics[k][`${k}_split`] ? v.metrics[k] : {});
  for (const v of versions) {
    const n = `v${v.version}`;
    const test = split(v, "test");
    e.set(`f1_macro:${n}`, test.macro_f1).set(`f1_micro:${n}`, test.micro_f1).set(`test_rows:${n}`, test.rows)
      .set(`val_f1_macro:${n}`, split(v, "validation").macro_f1).set(`weights_bytes:${n}`, v.weights_bytes);
    const labels = (v.spec && v.spec.labels) || [];
    labels.forEach((l, i) => e.set(`threshold:${n}:${l}`, (v.thresholds || [])[i]));
    for (const pl of test.per_label || []) e.set(`f1:${n}:${pl.label}`, pl.f1);
    for (const [l, c] of Object.entries(v.label_coverage || {})) {
      e.set(`coverage:${n}:${l}:positives`, c.positives).set(`coverage:${n}:${l}:negatives`, c.negatives);
      for (const [src, sc] of Object.entries(c.sources || {})) e.set(`coverage:${n}:${l}:${src}:positives`, sc.positives).set(`coverage:${n}:${l}:${src}:negatives`, sc.negatives);
    }
  }
  // Labels a version does not have, or that have no test figure, are shown as absent.
  const allLabels = [...new Set(versions.flatMap((v) => (v.spec && v.spec.labels) || []))];
  for (const v of versions) for (const l of allLabels) for (const k of [`f1:v${v.version}:${l}`, `threshold:v${v.version}:${l}`]) if (!e.has(k)) e.set(k, null);
  for (const ev of evals.items.filter((x) => x.model === name)) {
    e.set(`eval_disagreements:${ev.id}`, ev.disagreements);
    for (const ver of ev.versions) {
      const r = ((ev.results && ev.results.versions) || []).find((x) => x.version === ver);
      e.set(`eval_f1_macro:${ev.id}:v${ver}`, r && r.at_stored_thresholds ? r.at_stored_thresholds.macro_f1 : null);
    }
  }
  return e;
}

async function expectAgreement() {
  const [{ groups }, { guidelines }, { sources }] = await Promise.all([apiGet("/agreement"), apiGet("/guidelines"), apiGet("/sources")]);
  const e = new Map();
  for (const g of groups) {
    const key = `${g.label}:${g.source}`;
    e.set(`alpha:${key}`, g.alpha).set(`pairable:${key}`, g.pairable_documents).set(`votes:${key}`, g.votes);
    for (const a of g.annotators) {
      e.set(`documents:${key}:${a.annotator}`, a.documents).set(`kappa_documents:${key}:${a.annotator}`, a.kappa_documents).set(`kappa:${key}:${a.annotator}`, a.kappa);
    }
    for (const b of g.by_guideline_version) {
      const v = b.guideline_version == null ? "none" : `v${b.guideline_version}`;
      e.set(`alpha:${key}:${v}`, b.alpha).set(`pairable:${key}:${v}`, b.pairable_documents).set(`votes:${key}:${v}`, b.votes);
    }
  }
  for (const g of guidelines) e.set(`guideline_version:${g.label}`, g.version);
  for (const s of sources) e.set(`source_documents:${s.source}`, s.documents).set(`overlap:${s.source}`, s.overlap);
  return e;
}

async function expectQueues() {
  const [health, failed, retrying] = await Promise.all([apiGet("/health"), apiGet("/jobs?status=failed&limit=100"), apiGet("/jobs?status=retrying&limit=100")]);
  const e = new Map([["live_workers", health.live_workers ? health.live_workers.length : null], ["failed_jobs", failed.total], ["retrying_jobs", retrying.total]]);
  for (const q of health.queues || []) e.set(`waiting:${q.queue}`, q.waiting).set(`running:${q.queue}`, q.running);
  return e;
}

async function compareFigures(page, pageName, expect) {
  const shown = await page.$$eval("[data-figure]", (els) => els.map((el) => [el.dataset.figure, el.dataset.value]));
  const expected = await expect();
  const mismatches = [];
  for (const [name, value] of shown) {
    if (!expected.has(name)) mismatches.push({ page: pageName, figure: name, page_value: value, api_value: "not in the API's answer" });
    else if (norm(expected.get(name)) !== value) mismatches.push({ page: pageName, figure: name, page_value: value, api_value: norm(expected.get(name)) });
  }
  return { checked: shown.length, mismatches };
}

async function figures() {
  const ctx = await newContext();
  const page = await ctx.newPage();
  const out = { checked: 0, mismatches: [], per_page: {} };
  try {
    await signIn(page, cfg.tokens.admin);
    const pages = [
      ["dataset", `#/datasets/${encodeURIComponent(cfg.dataset_id)}`, expectDataset],
      ["model", `#/models/${encodeURIComponent(cfg.model)}`, expectModel],
      ["agreement", "#/agreement", expectAgreement],
      ["queues", "#/queues", expectQueues],
    ];
    for (const [name, hash, expect] of pages) {
      await go(page, hash);
      let r = await compareFigures(page, name, expect);
      // Some figures move on their own (queue depths, the version a process has loaded just
      // after a promotion): a mismatch counts only if it is still there after reloading twice.
      for (let again = 0; again < 2 && r.mismatches.length; again++) {
        await page.waitForTimeout(3500);
        await go(page, hash);
        r = await compareFigures(page, name, expect);
      }
      out.per_page[name] = r.checked;
      out.checked += r.checked;
      out.mismatches.push(...r.mismatches);
    }
  } finally {
    await ctx.close();
  }
  return out;
}

// ---------------------------------------------------------------- 8. and 9. axe-core and screenshots

async function axeAndScreenshots() {
  const runsList = await apiGet("/training-runs?limit=1").catch(() => ({ items: [] }));
  const runId = cfg.run_id || (runsList.items[0] && runsList.items[0].id);
  const pages = [
    ["signin", "#/signin"], ["label", "#/label"], ["agreement", "#/agreement"], ["datasets", "#/datasets"],
    ["dataset", `#/datasets/${encodeURIComponent(cfg.dataset_id)}`], ["runs", "#/runs"],
    ...(runId ? [["run", `#/runs/${encodeURIComponent(runId)}`]] : []),
    ["models", "#/models"], ["model", `#/models/${encodeURIComponent(cfg.model)}`], ["queues", "#/queues"],
  ];
  // overflow: pages wider than the viewport (the nav must wrap, wide tables scroll inside their region).
  const out = { pages_checked: 0, serious: [], moderate_or_minor: 0, overflow: [] };
  const shots = [];
  fs.mkdirSync(cfg.shots, { recursive: true });
  for (const [vw, vh, suffix] of [[1280, 800, ""], [390, 844, "-phone"]]) {
    // The page's CSP forbids injected scripts; axe-core is injected, so this context bypasses it.
    const ctx = await newContext({ viewport: { width: vw, height: vh }, bypassCSP: true });
    const page = await ctx.newPage();
    try {
      for (const [name, hash] of pages) {
        if (name === "signin") {
          await page.goto(`${cfg.base}/ui#/signin`);
          await page.waitForSelector("#signin-token", { timeout: 30000 });
        } else {
          if (!(await page.evaluate(() => !!sessionStorage.getItem("trainyard.token")).catch(() => false))) await signIn(page, cfg.tokens.admin);
          await go(page, hash);
          if (name === "label") {
            // Check the labelling view with a document on screen, not only the pickers.
            await startQueue(page, cfg.source_one, { keyboard: false }).catch((e) => { out.label_note = String(e); });
          }
          if (name === "run") await page.waitForSelector("[data-epochs]", { timeout: 15000 }).catch(() => {});
        }
        await page.waitForTimeout(300);
        await page.addScriptTag({ path: AXE_PATH });
        const r = await page.evaluate(async () => {
          const res = await window.axe.run(document);
          return res.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.length, targets: v.nodes.slice(0, 5).map((n) => n.target.join(" ")) }));
        });
        out.pages_checked++;
        if (await page.evaluate(() => document.documentElement.scrollWidth > document.documentElement.clientWidth + 1)) out.overflow.push(`${name}${suffix}`);
        for (const v of r) {
          if (v.impact === "serious" || v.impact === "critical") out.serious.push({ page: `${name}${suffix}`, ...v });
          else out.moderate_or_minor++;
        }
        if (!suffix || name === "label" || name === "model") {
          const file = path.join(cfg.shots, `${name}${suffix}.png`);
          await page.screenshot({ path: file, fullPage: true });
          shots.push(file);
        }
      }
    } finally {
      await ctx.close();
    }
  }
  return { axe: out, screenshots: shots };
}

// ---------------------------------------------------------------- main

try {
  cfg = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
  browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ],
  });
  const wanted = (name) => !Array.isArray(cfg.only) || cfg.only.includes(name);
  for (const [name, fn] of [["one", one], ["two", two], ["read", read], ["submit_promote", submitPromote],
    ["admin_promote", adminPromote], ["runs", runs], ["figures", figures]]) {
    if (wanted(name)) await scenario(name, fn);
  }
  if (wanted("axe") || wanted("screenshots")) {
    try {
      const r = await axeAndScreenshots();
      result.axe = r.axe;
      result.screenshots = r.screenshots;
    } catch (e) {
      result.axe = { error: String(e) };
    }
  }
} catch (e) {
  result.error = String(e);
} finally {
  if (browser) await browser.close().catch(() => {});
}
console.log(JSON.stringify(result));
