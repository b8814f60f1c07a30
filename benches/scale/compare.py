# benches/scale: per-step cost per document of run B against run A (two scale.sh JSON files); issue 18 wants <= 1.25x.
import json, sys

a, b = (json.load(open(path)) for path in sys.argv[1:3])
rows_a = {r["step"]: r for r in a["steps"]}
print(f"A: {a['n']:,} docs ({a['date']}), B: {b['n']:,} docs ({b['date']})\n")
print(f"| step | A s | B s | A us/doc | B us/doc | cost per doc B/A | seconds B/A | peak RSS A -> B (MB, max of serve/w1/w2) |")
print("|---|---|---|---|---|---|---|---|")
worst = []
for rb in b["steps"]:
    ra = rows_a.get(rb["step"])
    if ra is None or ra["status"] != "ok" or rb["status"] != "ok":
        state = "absent" if ra is None else f"{ra['status']} / {rb['status']}"
        print(f"| {rb['step']} | | | | | ({state}) | | |")
        continue
    ua, ub = 1e6 * ra["seconds"] / a["n"], 1e6 * rb["seconds"] / b["n"]
    ratio = ub / ua if ua > 0 else float("inf")
    peak = lambda r: max([v for k, v in r["rss_mb"].items() if k != "cli"] or [0])
    flag = " **>1.25**" if ratio > 1.25 else ""
    if flag:
        worst.append(rb["step"])
    print(f"| {rb['step']} | {ra['seconds']:.3f} | {rb['seconds']:.3f} | {ua:.2f} | {ub:.2f} | {ratio:.2f}x{flag} "
          f"| {rb['seconds'] / max(ra['seconds'], 1e-9):.2f}x | {peak(ra)} -> {peak(rb)} |")
pa, pb = a.get("peak_rss_mb", {}), b.get("peak_rss_mb", {})
print("\npeak RSS over the run (VmHWM, MB): " + ", ".join(f"{k} {pa.get(k)} -> {pb.get(k)}" for k in pb))
db = lambda run: run["steps"][-1].get("db_mb")
print(f"database at the end: {db(a)} MB -> {db(b)} MB")
print("over 1.25x cost per document: " + (", ".join(worst) if worst else "none"))
