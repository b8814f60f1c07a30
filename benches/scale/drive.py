# benches/scale: runs and times every step of issue 18 against a running serve + 2 workers; prints the table, writes JSON.
import argparse, datetime, http.client, json, os, platform, subprocess, sys, threading, time

p = argparse.ArgumentParser()
for a in ("n", "port", "db", "admin-url", "corpus", "bin", "out", "logs", "pids"):
    p.add_argument("--" + a, required=True)
args = p.parse_args()
N = int(args.n)
PIDS = dict(kv.split("=") for kv in args.pids.split(","))  # serve=..,w1=..,w2=..
PROCS = ["serve", "w1", "w2", "cli"]
TIMEOUT = float(os.environ.get("SCALE_STEP_TIMEOUT", max(1800, 0.02 * N)))
LABEL = os.environ.get("SCALE_LABEL", "")  # what the binary is, for the title and the JSON
MODEL, SOURCES, LABELS = "scale-head", ["mail", "reviews"], ["spam", "positive_sentiment"]


def say(msg):
    print(f"[scale {N}] {msg}", file=sys.stderr, flush=True)


class Fail(Exception):
    pass


def rss_kb(pid, field="VmRSS"):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:") and "Z" in line.split()[1]:
                    return None
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return 0


class Sampler(threading.Thread):
    """Max VmRSS per process every 0.5 s; take() returns the peaks since the last take()."""
    def __init__(self):
        super().__init__(daemon=True)
        self.pids, self.lock, self.peak = dict(PIDS), threading.Lock(), {}

    def sample(self):
        with self.lock:
            for name, pid in list(self.pids.items()):
                kb = rss_kb(pid)
                if kb is not None:
                    self.peak[name] = max(self.peak.get(name, 0), kb)

    def run(self):
        while True:
            self.sample()
            time.sleep(0.5)

    def take(self):
        self.sample()
        with self.lock:
            peak, self.peak = self.peak, {}
            self.pids.pop("cli", None)
        return {k: round(v / 1024, 1) for k, v in peak.items()}


sampler = Sampler()
sampler.start()
LOAD_AT_START = os.getloadavg()


def check_alive():
    for name in ("serve", "w1", "w2"):
        if rss_kb(PIDS[name]) is None:
            raise Fail(f"`{name}` (pid {PIDS[name]}) exited; see {args.logs}/{name}.log")


def call(method, path, body=None, stream=False):
    """One request on a fresh connection. Returns (status, JSON or stream info, seconds)."""
    conn = http.client.HTTPConnection("127.0.0.1", int(args.port), timeout=TIMEOUT)
    t0 = time.monotonic()
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers={"Content-Type": "application/json"} if body is not None else {})
        r = conn.getresponse()
        if stream and r.status == 200:
            size, lines, tail = 0, 0, b""
            while chunk := r.read(1 << 20):
                size, lines, tail = size + len(chunk), lines + chunk.count(b"\n"), (tail + chunk)[-4:]
            data = {"bytes": size, "lines": lines, "tail": tail}
        else:
            raw = r.read()
            try:
                data = json.loads(raw) if raw else None
            except ValueError:
                data = raw[:300].decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as e:
        raise Fail(f"{method} {path}: {e!r}")
    finally:
        conn.close()
    if not 200 <= r.status < 300:
        raise Fail(f"{method} {path} answered {r.status}: {json.dumps(data)[:500]}")
    return r.status, data, time.monotonic() - t0


def wait(path, done, progress=lambda o: ""):
    """Polls GET path until its `status` is in done; fails on failed/cancelled or the step timeout."""
    t0, last = time.monotonic(), time.monotonic()
    while True:
        _, obj, _ = call("GET", path)
        status = obj.get("status")
        if status in done:
            return obj
        if status in ("failed", "cancelled"):
            raise Fail(f"{path} is {status}: {obj.get('error')}")
        check_alive()
        if time.monotonic() - t0 > TIMEOUT:
            raise Fail(f"{path} still {status} after {TIMEOUT:.0f} s (SCALE_STEP_TIMEOUT)")
        if time.monotonic() - last > 15:
            last = time.monotonic()
            say(f"  ... {status} {progress(obj)} ({last - t0:.0f} s)")
        time.sleep(0.25)


def computing(status, obj):
    """A 2xx answer that says the page is still being prepared (tolerant of the shape)."""
    if status == 202:
        return True
    if not isinstance(obj, dict):
        return False
    return (obj.get("status") in ("computing", "pending", "queued", "running", "planning")
            or obj.get("computing") is True or obj.get("ready") is False)


def get_ready(path):
    """GET path, re-asked every 0.25 s while it answers 'computing'; seconds until the ready page."""
    t0 = time.monotonic()
    while True:
        status, obj, _ = call("GET", path)
        if not computing(status, obj):
            return obj, time.monotonic() - t0
        check_alive()
        if time.monotonic() - t0 > TIMEOUT:
            raise Fail(f"{path} still computing after {TIMEOUT:.0f} s")
        time.sleep(0.25)


ctx, results = {}, []


def sql(query, url=None):
    out = subprocess.run(["psql", url or args.admin_url, "-Atc", query], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def db_mb():
    size = sql(f"SELECT pg_database_size('{args.db}')")
    return round(int(size) / 2**20, 1) if size else None


# SCALE_ANALYZE=1: ANALYZE between steps (untimed), as autovacuum would do on a default Postgres.
ANALYZE = os.environ.get("SCALE_ANALYZE") == "1"
DB_URL = args.admin_url.rsplit("/", 1)[0] + "/" + args.db


def log_tails():
    for name in ("serve", "w1", "w2"):
        path = f"{args.logs}/{name}.log"
        lines = open(path, errors="replace").read().splitlines()[-8:] if os.path.exists(path) else []
        say(f"  last lines of {path}:\n    " + "\n    ".join(lines))


def step(name, needs=()):
    """Runs fn at once (steps run in the order they are written) and records its row."""
    def register(fn):
        missing = [k for k in needs if k not in ctx]
        row = {"step": name, "docs": N}
        say(f"step {len(results) + 1}: {name} ...")
        sampler.take()
        if missing:
            row.update(status="skipped", error=f"needs {', '.join(missing)} from an earlier step")
        else:
            try:
                seconds, extra = fn()
                row.update(status="ok", seconds=round(seconds, 3), docs_per_s=round(N / max(seconds, 1e-9), 1),
                           extra=extra)
            except Exception as e:  # an unexpected answer's shape fails the step too, never the run
                row.update(status="failed", error=str(e) if isinstance(e, Fail) else f"{type(e).__name__}: {e}")
        row.update(rss_mb=sampler.take())
        if ANALYZE:
            t0 = time.monotonic()
            sql("ANALYZE", DB_URL)
            row["analyze_s"] = round(time.monotonic() - t0, 2)
        row["db_mb"] = db_mb()
        results.append(row)
        if row["status"] == "ok":
            say(f"  {name}: {row['seconds']:.2f} s, {row['docs_per_s']:,.0f} docs/s, {row['extra'] or ''}")
        else:
            say(f"  {name} {row['status'].upper()}: {row['error']}")
            if row["status"] == "failed":
                log_tails()
        return fn
    return register


@step("import")
def _():
    t0 = time.monotonic()
    with open(f"{args.logs}/import.log", "w") as log:
        proc = subprocess.Popen([args.bin, "import", args.corpus], stdout=log, stderr=log)
        sampler.pids["cli"] = proc.pid
        rc = proc.wait()
    if rc != 0:
        raise Fail(f"trainyard import exited {rc}; see {args.logs}/import.log")
    ctx["import"] = True
    return time.monotonic() - t0, {}


def build(key, name):
    spec = {"name": name, "selection": {"sources": SOURCES}, "embedding_model": "tiny-bert",
            "label_schema": {"type": "multi_label", "labels": LABELS}, "splits": {"seed": 42}}
    t0 = time.monotonic()
    _, ds, _ = call("POST", "/api/v1/datasets", spec)
    ds = wait(f"/api/v1/datasets/{ds['id']}", ("ready",),
              lambda o: f"texts {o['progress'].get('texts_done')}/{o['progress'].get('texts_total')}")
    seconds = time.monotonic() - t0
    ctx[key] = ds["id"]
    return seconds, {"new_embeddings": ds["new_embeddings"], "reused_embeddings": ds["reused_embeddings"]}


step("dataset_build", needs=["import"])(lambda: build("dataset", "scale"))
step("rebuild", needs=["dataset"])(lambda: build("rebuild", "scale-rebuild"))


@step("head_training", needs=["dataset"])
def _():
    body = {"dataset_id": ctx["dataset"], "model_name": MODEL, "mode": "head", "device": "cpu",
            "hyperparameters": {"seed": 42, "epochs": 5, "patience": 100}}
    t0 = time.monotonic()
    _, run, _ = call("POST", "/api/v1/training-runs", body)
    run = wait(f"/api/v1/training-runs/{run['id']}", ("succeeded",), lambda o: json.dumps(o.get("progress")))
    ctx["version"] = run["model_version"]
    return time.monotonic() - t0, {"version": run["model_version"], "best_epoch": run["best_epoch"]}


@step("promote", needs=["version"])
def _():
    t0 = time.monotonic()
    call("POST", f"/api/v1/models/{MODEL}/versions/{ctx['version']}/promote")
    while True:  # until serve has loaded it
        _, models, _ = call("GET", "/api/v1/models")
        models = models["items"] if isinstance(models, dict) else models  # a list today; a page later?
        m = next((m for m in models if m["name"] == MODEL), {})
        if m.get("loaded_version") == ctx["version"]:
            return time.monotonic() - t0, {}
        if m.get("load_error") or time.monotonic() - t0 > TIMEOUT:
            raise Fail(f"serve did not load {MODEL} v{ctx['version']}: {m.get('load_error')}")
        time.sleep(0.25)


@step("scoring_job", needs=["version"])
def _():
    body = {"model": MODEL, "version": ctx["version"], "selection": {"sources": SOURCES}}
    t0 = time.monotonic()
    _, job, _ = call("POST", "/api/v1/scoring-jobs", body)
    job = wait(f"/api/v1/scoring-jobs/{job['id']}", ("done",),
               lambda o: f"docs {o['progress'].get('texts_done')}/{o['progress'].get('texts_total')}")
    ctx["scoring"] = job["id"]
    return time.monotonic() - t0, {k: job[k] for k in ("documents", "scored", "reused")}


def export(path, rows_key, fmt):
    _, info, seconds = call("GET", f"{path}?format={fmt}", stream=True)
    if fmt == "parquet" and info["tail"] != b"PAR1":
        raise Fail(f"{path}: {info['bytes']} bytes that do not end as a Parquet file")
    if fmt == "jsonl" and info["lines"] != ctx[rows_key]:
        raise Fail(f"{path}: {info['lines']} lines, expected {ctx[rows_key]}")
    return seconds, {"bytes": info["bytes"]}


def total(path, key):
    if key not in ctx:
        ctx[key] = call("GET", f"{path}{'&' if '?' in path else '?'}limit=1")[1]["total"]
    return ctx[key]


def page(path, key, at_end):
    total(path, key)
    offset = max(ctx[key] - 50, 0) if at_end else 0
    _, obj, seconds = call("GET", f"{path}{'&' if '?' in path else '?'}limit=50&offset={offset}")
    if not obj.get("items"):
        raise Fail(f"{path} at offset {offset} of {ctx[key]} has no items")
    return seconds, {"offset": offset, "total": ctx[key]}


for fmt in ("parquet", "jsonl"):
    step(f"dataset_export_{fmt}", needs=["dataset"])(
        lambda fmt=fmt: (total(f"/api/v1/datasets/{ctx['dataset']}/records", "records"),
        export(f"/api/v1/datasets/{ctx['dataset']}/export", "records", fmt))[1])
for fmt in ("parquet", "jsonl"):
    step(f"scoring_export_{fmt}", needs=["scoring"])(
        lambda fmt=fmt: (total(f"/api/v1/scoring-jobs/{ctx['scoring']}/results", "results"),
        export(f"/api/v1/scoring-jobs/{ctx['scoring']}/export", "results", fmt))[1])
for where in ("first", "end"):
    step(f"records_page_{where}", needs=["dataset"])(
        lambda w=where: page(f"/api/v1/datasets/{ctx['dataset']}/records", "records", w == "end"))
    step(f"results_page_{where}", needs=["scoring"])(
        lambda w=where: page(f"/api/v1/scoring-jobs/{ctx['scoring']}/results", "results", w == "end"))

for strategy in ("uncertain", "disagreement", "suspect_label", "uncovered"):
    q = f"/api/v1/review-queue?model={MODEL}&strategy={strategy}" + ("&source=reviews" if strategy == "uncovered" else "")

    def review(q=q, offset=0):
        obj, seconds = get_ready(f"{q}&limit=50&offset={offset}")
        if "items" not in obj:
            raise Fail(f"{q}: no items in {json.dumps(obj)[:300]}")
        return seconds, {"items": len(obj["items"]), "total": obj.get("total")}
    needs = ["version"] + (["scoring"] if strategy == "uncertain" else [])
    step(f"review_{strategy}_first", needs=needs)(review)
    step(f"review_{strategy}_page2", needs=needs)(lambda review=review: review(offset=50))


@step("metrics")
def _():
    return call("GET", "/metrics")[2], {}


step("jobs_list")(lambda: page("/api/v1/jobs", "jobs", False))
step("jobs_list_end")(lambda: page("/api/v1/jobs", "jobs", True))
step("jobs_list_embed_succeeded")(lambda: page("/api/v1/jobs?kind=embed&status=succeeded", "embed_jobs", True))


@step("other_lists")
def _():
    times = {}
    for path in ("/api/v1/datasets", "/api/v1/training-runs", "/api/v1/models", "/api/v1/scoring-jobs",
                 "/api/v1/evaluations", "/api/v1/health"):
        times[path] = round(call("GET", path)[2], 3)
    return sum(times.values()), times


hwm = {name: round((rss_kb(pid, "VmHWM") or 0) / 1024, 1) for name, pid in PIDS.items()}
failed = [r["step"] for r in results if r["status"] != "ok"]
print(f"\n### scale.sh {N:,} documents ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
      f"{os.cpu_count()} cores{', ' + LABEL if LABEL else ''}{', ANALYZE between steps' if ANALYZE else ''})\n")
print("| step | seconds | docs/s | serve MB | w1 MB | w2 MB | cli MB | DB MB |")
print("|---|---|---|---|---|---|---|---|")
for r in results:
    secs = f"{r['seconds']:.3f}" if r["status"] == "ok" else r["status"].upper()
    dps = f"{r['docs_per_s']:,.0f}" if r["status"] == "ok" else "-"
    rss = " | ".join(str(r["rss_mb"].get(k, "-")) for k in PROCS)
    print(f"| {r['step']} | {secs} | {dps} | {rss} | {r['db_mb']} |")
print(f"\npeak RSS over the run (VmHWM): " + ", ".join(f"{k} {v} MB" for k, v in hwm.items()))
print(f"load average (1, 5, 15 min) at the start {LOAD_AT_START}, at the end {os.getloadavg()}")

cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
mem = next((l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")), "0")
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "jobs", "migrations"],
                       capture_output=True, text=True).stdout.count("\n")
os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
with open(args.out, "w") as f:
    json.dump({"n": N, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": {"cpu": cpu, "cores": os.cpu_count(), "mem_gb": round(int(mem) / 2**20, 1),
                           "host": platform.node()},
               "git": {"commit": commit, "uncommitted_src_files": dirty},
               "label": LABEL, "binary": {"path": args.bin, "mtime": datetime.datetime.fromtimestamp(
                   os.path.getmtime(args.bin), datetime.timezone.utc).isoformat(timespec="seconds")},
               "postgres": {"version": sql("SHOW server_version"), "analyze_between_steps": ANALYZE,
                            "settings": dict(l.split("|") for l in (sql(
                                "SELECT name, setting FROM pg_settings WHERE name IN ('autovacuum', "
                                "'shared_buffers', 'work_mem', 'synchronous_commit', 'max_wal_size')") or "").splitlines()),
                            "tables": [l.split("|") for l in (sql(
                                "SELECT relname, n_live_tup, last_analyze, last_autoanalyze FROM pg_stat_user_tables "
                                "WHERE n_live_tup > 1000 ORDER BY 1", DB_URL) or "").splitlines()]},
               "peak_rss_mb": hwm, "load_avg": {"start": LOAD_AT_START, "end": os.getloadavg()},
               "steps": results}, f, indent=1)
say(f"wrote {args.out}")
if failed:
    say(f"FAILED steps: {', '.join(failed)}")
    sys.exit(1)
