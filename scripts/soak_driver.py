# Soak driver for scripts/soak.sh (standard library only): mixed load against a running
# trainyard (ingest, dataset builds, predictions at a steady rate, head training runs with
# promotions, cancels, reads), then a report and verdict lines. Exit 0 only if all pass.
import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

MODEL = "soak"
SOURCE = "soak"
SPAM_WORDS = ["winner", "free", "prize", "offer", "cash", "urgent", "click", "bonus"]
HAM_WORDS = ["meeting", "lunch", "report", "garden", "river", "train", "music", "letter",
             "coffee", "window", "planet", "summer", "station", "paper", "morning"]
FINAL = ("Done", "Killed")


class Recorder:
    """Every request: route template, status (or ERR), latency in seconds."""

    def __init__(self):
        self.lock = threading.Lock()
        self.samples = []
        self.errors = []

    def add(self, route, status, seconds, detail=None):
        with self.lock:
            self.samples.append((route, status, seconds))
            if (status == "ERR" or (isinstance(status, int) and status >= 500)) and len(self.errors) < 20:
                self.errors.append((route, status, detail))


class Client:
    """One keep-alive connection per thread; reconnects after any transport error."""

    def __init__(self, base, recorder):
        u = urllib.parse.urlparse(base)
        self.host, self.port = u.hostname, u.port
        self.recorder = recorder
        self.local = threading.local()
        self.headers = {"Content-Type": "application/json"}
        token = os.environ.get("TRAINYARD_TOKEN")
        if token:
            self.headers["Authorization"] = "Bearer " + token

    def _conn(self):
        c = getattr(self.local, "conn", None)
        if c is None:
            c = http.client.HTTPConnection(self.host, self.port, timeout=120)
            self.local.conn = c
        return c

    def call(self, method, path, route, body=None, record=True):
        data = json.dumps(body).encode() if body is not None else None
        start = time.monotonic()
        try:
            c = self._conn()
            c.request(method, path, body=data, headers=self.headers)
            r = c.getresponse()
            raw = r.read()
            status = r.status
        except Exception as e:  # transport error: counted, connection dropped
            self.local.conn = None
            if record:
                self.recorder.add(route, "ERR", time.monotonic() - start, repr(e))
            return "ERR", None
        elapsed = time.monotonic() - start
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = None
        if record:
            self.recorder.add(route, status, elapsed, raw[:300] if status >= 500 else None)
        return status, payload


def rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def thread_count(pid):
    """OS threads of a process (a served version's encoder threads must go when it is swapped out)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def psql(url, sql):
    out = subprocess.run(["psql", url, "-AtF", "|", "-c", sql], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"psql failed: {out.stderr.strip()}\n{sql}")
    return [line.split("|") for line in out.stdout.splitlines() if line]


class Load:
    def __init__(self, args):
        self.args = args
        self.rec = Recorder()
        self.api = Client(args.base, self.rec)
        self.stop = threading.Event()
        self.doc_counter = 0
        self.doc_lock = threading.Lock()
        self.ready_datasets = []
        self.job_ids = {}  # job id -> what enqueued it
        self.jobs_lock = threading.Lock()
        self.counts = {"promotions": 0, "runs_succeeded": 0, "runs_cancel_requested": 0,
                       "builds_ready": 0, "build_cancels": 0, "predictions_late": 0}
        self.rng = random.Random(7)
        self.promoted_at = []
        # One row per promotion: version, seconds since start at the promote call, serve's RSS
        # just before it, when serve reported the version loaded and its RSS then and 10 s later.
        self.promotions = []
        self.t0 = time.monotonic()
        self.serve_pid = None

    def note_job(self, job_id, what):
        if job_id:
            with self.jobs_lock:
                self.job_ids[job_id] = what

    # ---------------------------------------------------------------- activities
    def ingest(self, n):
        docs, anns = [], []
        with self.doc_lock:
            start = self.doc_counter
            self.doc_counter += n
        for i in range(start, start + n):
            rng = random.Random(i)
            spam = rng.random() < 0.35
            words = [rng.choice(HAM_WORDS) for _ in range(8)]
            if spam:
                words[rng.randrange(8)] = rng.choice(SPAM_WORDS)
                words[rng.randrange(8)] = rng.choice(SPAM_WORDS)
            docs.append({"source": SOURCE, "external_id": f"d{i}", "text": f"{' '.join(words)} #{i}"})
            anns.append({"source": SOURCE, "external_id": f"d{i}", "annotator": "soak",
                         "labels": {"spam": spam}})
        self.api.call("POST", "/api/v1/documents", "POST /api/v1/documents", {"documents": docs})
        self.api.call("POST", "/api/v1/annotations", "POST /api/v1/annotations", {"annotations": anns})

    def build(self, wait=True):
        s, d = self.api.call("POST", "/api/v1/datasets", "POST /api/v1/datasets",
                             {"name": "soak", "selection": {"sources": [SOURCE]},
                              "label_schema": {"type": "binary", "labels": ["spam"]}})
        if s != 200 or not d:
            return None, None
        self.note_job(d.get("build_job_id"), "dataset_build")
        if not wait:
            return d["id"], d.get("build_job_id")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            s, d = self.api.call("GET", f"/api/v1/datasets/{d['id']}", "GET /api/v1/datasets/{id}")
            if s == 200 and d and d.get("status") in ("ready", "failed", "cancelled"):
                if d["status"] == "ready":
                    self.ready_datasets.append(d["id"])
                    self.counts["builds_ready"] += 1
                return d["id"], d.get("build_job_id")
            time.sleep(0.5)
        return None, None

    def start_run(self, dataset, epochs):
        s, r = self.api.call("POST", "/api/v1/training-runs", "POST /api/v1/training-runs",
                             {"dataset_id": dataset, "model_name": MODEL, "mode": "head",
                              "hyperparameters": {"epochs": epochs, "patience": 0}})
        if s != 202 or not r:
            return None
        self.note_job(r.get("job_id"), "train")
        return r["id"]

    def train_and_promote(self, dataset):
        run = self.start_run(dataset, 5)
        if not run:
            return None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            s, r = self.api.call("GET", f"/api/v1/training-runs/{run}", "GET /api/v1/training-runs/{id}")
            if s == 200 and r and r.get("status") in ("succeeded", "failed", "cancelled"):
                if r["status"] != "succeeded":
                    return None
                self.counts["runs_succeeded"] += 1
                v = r.get("model_version")
                before = rss_mib(self.serve_pid) if self.serve_pid else None
                s, _ = self.api.call("POST", f"/api/v1/models/{MODEL}/versions/{v}/promote",
                                     "POST /api/v1/models/{name}/versions/{v}/promote")
                if s == 200:
                    self.counts["promotions"] += 1
                    self.promoted_at.append(time.monotonic())
                    row = {"version": v, "at": time.monotonic() - self.t0, "rss_before": before,
                           "loaded_at": None, "rss_loaded": None, "rss_10s": None}
                    self.promotions.append(row)
                    threading.Thread(target=self.follow_promotion, args=(row,), daemon=True).start()
                return v
            time.sleep(0.5)
        return None

    def wait_loaded(self, version, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s, models = self.api.call("GET", "/api/v1/models", "GET /api/v1/models")
            if s == 200 and isinstance(models, list):
                for m in models:
                    if m.get("name") == MODEL and m.get("loaded_version") == version:
                        return True
            time.sleep(0.5)
        return False

    def follow_promotion(self, row):
        """Fills in when serve reports the promoted version loaded, and its RSS then and 10 s
        later (unrecorded requests: they are the driver's, not the load's)."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            s, models = self.api.call("GET", "/api/v1/models", "GET /api/v1/models", record=False)
            if s == 200 and isinstance(models, list) and any(
                    m.get("name") == MODEL and (m.get("loaded_version") or 0) >= row["version"]
                    for m in models):
                row["loaded_at"] = time.monotonic() - self.t0
                row["rss_loaded"] = rss_mib(self.serve_pid) if self.serve_pid else None
                time.sleep(10)
                row["rss_10s"] = rss_mib(self.serve_pid) if self.serve_pid else None
                return
            time.sleep(0.25)

    def predict_once(self, i):
        rng = random.Random(1_000_000 + i)
        text = " ".join(rng.choice(HAM_WORDS + SPAM_WORDS) for _ in range(10))
        if i % 10 == 0:
            texts = [text + f" {k}" for k in range(8)]
            self.api.call("POST", f"/api/v1/models/{MODEL}/batch", "POST /api/v1/models/{name}/batch",
                          {"texts": texts})
        elif i % 5 == 0:
            self.api.call("POST", "/predict", "POST /predict", {"text": text})
        else:
            self.api.call("POST", f"/api/v1/models/{MODEL}/predict", "POST /api/v1/models/{name}/predict",
                          {"text": text})

    # ---------------------------------------------------------------- loops
    def predictor(self, pool):
        period = 1.0 / self.args.predict_rps
        nxt = time.monotonic()
        i = 0
        while not self.stop.is_set():
            now = time.monotonic()
            if now < nxt:
                time.sleep(min(nxt - now, 0.05))
                continue
            if now - nxt > 1.0:
                self.counts["predictions_late"] += 1
            pool.submit(self.predict_once, i)
            i += 1
            nxt += period

    def every(self, seconds, action, jitter=0.0):
        while not self.stop.wait(seconds + self.rng.uniform(0, jitter)):
            try:
                action()
            except Exception as e:  # a driver bug must not end the soak silently
                print(f"driver: {action.__name__}: {e!r}", file=sys.stderr)

    def ingest_tick(self):
        self.ingest(10)

    def build_train_promote(self):
        dataset, _ = self.build()
        if dataset and not self.stop.is_set():
            self.train_and_promote(dataset)

    def cancel_tick(self):
        # Alternate: a long training run cancelled while it runs, a dataset build cancelled
        # through its job right after it is enqueued.
        if self.rng.random() < 0.5 and self.ready_datasets:
            run = self.start_run(self.ready_datasets[-1], 200)
            if run:
                time.sleep(self.rng.uniform(0.2, 2.0))
                s, _ = self.api.call("POST", f"/api/v1/training-runs/{run}/cancel",
                                     "POST /api/v1/training-runs/{id}/cancel")
                if s in (200, 202):
                    self.counts["runs_cancel_requested"] += 1
        else:
            _, job = self.build(wait=False)
            if job:
                s, _ = self.api.call("POST", f"/api/v1/jobs/{job}/cancel", "POST /api/v1/jobs/{id}/cancel")
                if s in (200, 202):
                    self.counts["build_cancels"] += 1

    def read_tick(self):
        path, route = self.rng.choice([
            ("/api/v1/jobs?limit=20", "GET /api/v1/jobs"),
            ("/api/v1/datasets", "GET /api/v1/datasets"),
            ("/api/v1/training-runs", "GET /api/v1/training-runs"),
            ("/api/v1/health", "GET /api/v1/health"),
            ("/health", "GET /health"),
            ("/api/v1/models", "GET /api/v1/models"),
        ])
        self.api.call("GET", path, route)


def percentile(values, q):
    values = sorted(values)
    if not values:
        return float("nan")
    k = max(0, min(len(values) - 1, int(round(q * (len(values) - 1)))))
    return values[k]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base", required=True)
    p.add_argument("--database-url", required=True)
    p.add_argument("--duration", type=float, default=600)
    p.add_argument("--predict-rps", type=float, default=20)
    p.add_argument("--mem-bound-mb", type=float, default=128)
    p.add_argument("--drain-secs", type=float, default=120)
    p.add_argument("--process", action="append", default=[], help="name=pid")
    args = p.parse_args()
    procs = [(n, int(pid)) for n, pid in (x.split("=") for x in args.process)]
    load = Load(args)
    t0 = load.t0
    load.serve_pid = dict(procs).get("serve")

    deadline = t0 + 180
    while True:
        s, _ = load.api.call("GET", "/api/v1/health", "GET /api/v1/health", record=False)
        if s == 200:
            break
        if time.monotonic() > deadline:
            print("FAIL: the API never became healthy")
            return 2
        time.sleep(0.5)
    rss_cold = {n: rss_mib(pid) for n, pid in procs}

    # Bootstrap: documents, a dataset, a promoted model, loaded by serve.
    for _ in range(30):
        load.ingest(10)
    dataset, _ = load.build()
    version = load.train_and_promote(dataset) if dataset else None
    if not version or not load.wait_loaded(version):
        print("FAIL: bootstrap (dataset, training, promotion) did not complete")
        return 2
    boot = time.monotonic() - t0
    rss_start = {n: rss_mib(pid) for n, pid in procs}
    print(f"bootstrap: {boot:.1f} s (300 documents, dataset, model v{version} promoted and loaded); "
          f"steady load for {args.duration:.0f} s at {args.predict_rps:g} predictions/s")

    rss_samples = {n: [] for n, _ in procs}
    thread_samples = {n: [] for n, _ in procs}
    def sample_rss():
        for n, pid in procs:
            rss_samples[n].append((time.monotonic() - t0, rss_mib(pid)))
            thread_samples[n].append(thread_count(pid))

    pool = ThreadPoolExecutor(max_workers=12)
    threads = [
        threading.Thread(target=load.predictor, args=(pool,), daemon=True),
        threading.Thread(target=load.every, args=(1.0, load.ingest_tick), daemon=True),
        threading.Thread(target=load.every, args=(20.0, load.build_train_promote, 10.0), daemon=True),
        threading.Thread(target=load.every, args=(15.0, load.cancel_tick, 10.0), daemon=True),
        threading.Thread(target=load.every, args=(1.0, load.read_tick), daemon=True),
        threading.Thread(target=load.every, args=(10.0, sample_rss), daemon=True),
    ]
    steady_start = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(args.duration)
    load.stop.set()
    pool.shutdown(wait=True)
    for t in threads:
        t.join(timeout=330)
    load_secs = time.monotonic() - steady_start
    rss_end = {n: rss_mib(pid) for n, pid in procs}

    # Drain: wait for every job to reach a final state (bounded).
    url = args.database_url
    not_final_sql = ("SELECT count(*) FROM apalis.jobs WHERE status NOT IN ('Done','Killed') "
                     "AND NOT (status = 'Failed' AND attempts >= max_attempts)")
    drain_start = time.monotonic()
    while int(psql(url, not_final_sql)[0][0]) > 0 and time.monotonic() - drain_start < args.drain_secs:
        time.sleep(1)
    drained = time.monotonic() - drain_start

    # ---------------------------------------------------------------- report
    print(f"\n== soak report: {load_secs:.0f} s of steady load after a {boot:.0f} s bootstrap, "
          f"drain {drained:.0f} s ==")
    by_route = {}
    for route, status, secs in load.rec.samples:
        by_route.setdefault(route, []).append((status, secs))
    print("\nrequests by route and status; latency (ms):")
    print(f"  {'route':52} {'n':>6} {'statuses':28} {'p50':>8} {'p99':>8} {'max':>8}")
    total = five = errs = 0
    for route in sorted(by_route):
        rows = by_route[route]
        statuses = {}
        for s, _ in rows:
            statuses[s] = statuses.get(s, 0) + 1
        lat = [secs * 1000 for _, secs in rows]
        st = " ".join(f"{k}:{v}" for k, v in sorted(statuses.items(), key=lambda kv: str(kv[0])))
        print(f"  {route:52} {len(rows):>6} {st:28} {percentile(lat, .5):>8.1f} "
              f"{percentile(lat, .99):>8.1f} {max(lat):>8.1f}")
        total += len(rows)
        five += sum(v for k, v in statuses.items() if isinstance(k, int) and k >= 500)
        errs += statuses.get("ERR", 0)
    preds = [secs for r, s, secs in load.rec.samples if "predict" in r or "batch" in r]
    print(f"  total {total} requests; predictions+batches {len(preds)} = "
          f"{len(preds) / max(load_secs, 1):.1f}/s (target {args.predict_rps:g}/s, "
          f"{load.counts['predictions_late']} sent >1 s late)")
    print(f"  activity: {load.counts}")
    for e in load.rec.errors:
        print(f"  error sample: {e}")

    print("\njobs by queue and final state (apalis.jobs):")
    rows = psql(url, "SELECT job_type, CASE WHEN status = 'Killed' AND coalesce(i.cancel_requested, false) "
                     "THEN 'Killed (cancelled)' ELSE status END, count(*) "
                     "FROM apalis.jobs j LEFT JOIN job_info i ON i.job_id = j.id GROUP BY 1, 2 ORDER BY 1, 2")
    for q, s, n in rows:
        print(f"  {q:16} {s:22} {n:>6}")
    not_final = psql(url, "SELECT id, job_type, status, attempts, max_attempts, "
                          "(run_at > now())::text, coalesce(lock_by, '') FROM apalis.jobs "
                          "WHERE status NOT IN ('Done','Killed') AND NOT (status = 'Failed' AND attempts >= max_attempts)")
    legit = [r for r in not_final if r[2] in ("Pending", "Queued", "Failed") and r[5] == "true"]
    lost = [r for r in not_final if r not in legit]
    known = psql(url, "SELECT id FROM apalis.jobs")
    known_ids = {r[0] for r in known}
    missing = [j for j in load.job_ids if j not in known_ids]
    runs = psql(url, "SELECT status, count(*) FROM training_runs GROUP BY 1 ORDER BY 1")
    datasets = psql(url, "SELECT status, count(*) FROM datasets GROUP BY 1 ORDER BY 1")
    print(f"  training runs: {dict((s, int(n)) for s, n in runs)}; datasets: {dict((s, int(n)) for s, n in datasets)}")
    print(f"  {len(load.job_ids)} job ids returned by the API, {len(missing)} of them missing from apalis.jobs")
    for r in not_final:
        print(f"  not final after the drain: {r} ({'legitimately waiting: run_at in the future' if r in legit else 'LOST'})")

    # The memory verdict compares two levels in the second half of the steady load: the median
    # of the 10 s samples taken in 50-75 % of it ("mid") and in 75-100 % ("late"). Not the first
    # half: serve grows in steps over its first promotions while the malloc arenas of successive
    # encoder threads fill up (src/ml/allocator.rs). Not single samples: one taken while a
    # version loads holds two versions' weights for a few seconds (+100-200 MiB). A leak per
    # promotion or per request keeps the level rising through the second half, and that is what
    # the bound catches (about 8 promotions per quarter: 128 MiB is ~16 MiB per promotion).
    lo, mid_at, hi = (steady_start - t0 + load_secs * f for f in (0.5, 0.75, 1.0))
    print(f"\nRSS (MiB): cold = API healthy, start = after bootstrap, mid = median of {lo:.0f}-{mid_at:.0f} s, "
          f"late = median of {mid_at:.0f}-{hi:.0f} s, end = end of steady load, peak = highest sample")
    mem_ok = True
    for n, _ in procs:
        c, s, e = rss_cold[n], rss_start[n], rss_end[n]
        series = [(t, v) for t, v in rss_samples[n] if v is not None]
        mid_w = [v for t, v in series if lo <= t < mid_at]
        late_w = [v for t, v in series if t >= mid_at]
        mid = statistics.median(mid_w) if mid_w else s
        late = statistics.median(late_w) if late_w else e
        peak = max([v for _, v in series] + [x for x in (s, e) if x is not None], default=None)
        growth = (late - mid) if (late is not None and mid is not None) else float("nan")
        ok = e is not None and late is not None and mid is not None and growth <= args.mem_bound_mb
        mem_ok &= ok
        print(f"  {n:10} cold {c or 0:7.1f}  start {s or 0:7.1f}  mid {mid or 0:7.1f}  late {late or 0:7.1f}  "
              f"end {e or 0:7.1f}  peak {peak or 0:7.1f}  growth mid->late {growth:+7.1f}  "
              f"{'' if e is not None else '(process gone!)'}")
        print(f"  {'':10} every 10 s: " + " ".join(f"{v:.0f}" for _, v in series))
        print(f"  {'':10} threads:    " + " ".join(str(v) for v in thread_samples[n] if v is not None))
    marks = " ".join(f"{t - t0:.0f}" for t in load.promoted_at)
    print(f"  promotions at (s since start): {marks}; samples start at {steady_start - t0 + 10:.0f} s")
    print("\nserve RSS around each promotion (MiB; times in s since start):")
    print(f"  {'version':>7} {'promoted':>9} {'loaded':>7} {'before':>8} {'at load':>8} {'+10 s':>8} {'step':>7}")
    fmt = lambda v, w=8: f"{v:{w}.1f}" if v is not None else f"{'-':>{w}}"
    for row in load.promotions:
        step = (row["rss_10s"] - row["rss_before"]) if None not in (row["rss_10s"], row["rss_before"]) else None
        print(f"  {row['version']:>7} {row['at']:>9.0f} {fmt(row['loaded_at'], 7)} {fmt(row['rss_before'])} "
              f"{fmt(row['rss_loaded'])} {fmt(row['rss_10s'])} {fmt(step, 7)}")

    verdicts = [
        (not lost and not missing,
         f"lost jobs: {len(lost) + len(missing)} ({len(known_ids)} jobs in apalis.jobs; "
         f"{len(legit)} legitimately still queued with a future run_at; every other job final)"),
        (five == 0, f"5xx responses: {five} of {total} requests"),
        (errs == 0, f"transport errors (no response): {errs}"),
        (mem_ok, f"RSS growth over the second half (median of 50-75 % to median of 75-100 % of the "
                 f"load) within {args.mem_bound_mb:g} MiB per process"),
    ]
    print()
    for ok, line in verdicts:
        print(f"VERDICT {'PASS' if ok else 'FAIL'}: {line}")
    return 0 if all(ok for ok, _ in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
