"""Prints the GPU table of bench/gpu/run.sh from its outputs (ours vs the torch path per size, the
stage profile) and writes results.json beside them (format: docs/performance.md).

Usage: table.py OUT_DIR. Reads every bench_*.json in OUT_DIR (a file cut off by a timeout gives the
benchmarks it completed), torch.txt, card.txt and stages.txt."""
import glob, json, os, sys

out = sys.argv[1]


def benchmarks(path):
    """The benchmark objects of a Google Benchmark JSON file, also of one cut off mid-way."""
    text = open(path).read()
    try:
        return json.loads(text)["benchmarks"]
    except ValueError:
        pass
    found, dec = [], json.JSONDecoder()
    i = text.find('"benchmarks"')
    i = text.find("[", i) + 1 if i >= 0 else len(text)
    while True:
        i = text.find("{", i)
        if i < 0:
            return found
        try:
            obj, i = dec.raw_decode(text, i)
            found.append(obj)
        except ValueError:
            return found


ours, copy, compact, others = {}, None, {}, {}
files = sorted(glob.glob(os.path.join(out, "bench_*.json")))
if not files:
    print("no CUDA benchmark results in", out)
for path in files:
    for b in benchmarks(path):
        name = b["name"]
        if name.startswith("BM_d2d_copy"):
            copy = b.get("TBps_rw")
        elif name.startswith("BM_snapkv_evict") and b.get("aggregate_name") == "median":
            n, budget, plan_only = (int(x) for x in name.split("/")[1:4])
            ours[(n, budget, plan_only)] = b
        elif (name.startswith("BM_sablock_evict") or name.startswith("BM_chunkkv_evict")) and b.get("aggregate_name") == "median":
            n, budget = (int(x) for x in name.split("/")[1:3])
            others[(name.split("/")[0][3:-6], n, budget)] = b
        elif name.startswith("BM_ada_snapkv_plan") and b.get("aggregate_name") == "median":
            n, budget = (int(x) for x in name.split("/")[1:3])
            others[("ada_snapkv (plan only)", n, budget)] = b
        elif name.startswith("BM_compact_half"):
            compact[int(name.split("/")[1])] = b
torch = {}
try:
    for line in open(os.path.join(out, "torch.txt")):
        if line.startswith("{"):
            r = json.loads(line)
            torch[(r["N"], r["budget"])] = r
except OSError as e:
    print("no torch results:", e)

print(f"\nd2d copy (ours, cudaMemcpy): {copy if copy is None else round(copy, 2)} TB/s read+write")
print("| tokens | budget | ours plan+compact ms | ours plan ms | torch SnapKV ms | torch / ours | ours extra MiB | torch extra MiB | extra ratio | floor ms | ours / floor |")
print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for (n, budget, plan_only), b in sorted(ours.items()):
    if plan_only:
        continue
    t = torch.get((n, budget), {})
    p = ours.get((n, budget, 1), {})
    ms = b["real_time"]
    tms = t.get("snapkv_ms")
    mib = b["workspace_MiB"]
    tmib = t.get("snapkv_peak_mib")
    fl = b["floor_ms"]
    f = lambda x, d=3: "-" if x is None else f"{x:.{d}f}"
    print(f"| {n} | {budget} | {f(ms)} | {f(p.get('real_time'))} | {f(tms)} | {f(tms / ms if tms else None, 1)} | "
          f"{f(mib, 2)} | {f(tmib, 1)} | {f(mib / tmib if tmib else None, 4)} | {f(fl, 3)} | {f(ms / fl, 1)} |")
print("\n| tokens | compaction 50% ms | TB/s read+write | of copy bandwidth |")
print("| ---: | ---: | ---: | ---: |")
# The copy bandwidth this output measured (a bench process that skipped the copy benchmark divides
# by its default instead, so its own `of_copy` is not used when a measurement is here).
def copy_tbs(b):
    return copy if copy else (b["TBps_rw"] / b["of_copy"] if b.get("of_copy") else None)


for n, b in sorted(compact.items()):
    c = copy_tbs(b)
    print(f"| {n} | {b['real_time']:.3f} | {b['TBps_rw']:.2f} | {b['TBps_rw'] / c if c else float('nan'):.2f} |")

print("\n| policy | tokens | budget | ours plan+compact ms | torch ms (ChunkKV path; SnapKV path for SABlock and Ada-SnapKV) | torch / ours | ours / our SnapKV (plan only against plan only) | ours extra MiB |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for (pol, n, budget), b in sorted(others.items()):
    t = torch.get((n, budget), {})
    tms = t.get("chunkkv_ms") if pol == "chunkkv" else t.get("snapkv_ms")
    snap = ours.get((n, budget, 1 if "plan only" in pol else 0), {}).get("real_time")  # like for like
    ms = b["real_time"]
    f = lambda x, d=3: "-" if x is None else f"{x:.{d}f}"
    print(f"| {pol} | {n} | {budget} | {f(ms)} | {f(tms)} | {f(tms / ms if tms else None, 1)} | "
          f"{f(ms / snap if snap else None, 2)} | {f(b['workspace_MiB'], 2)} |")

stages = []
try:
    stages = [json.loads(l) for l in open(os.path.join(out, "stages.txt")) if l.startswith("{")]
except OSError:
    pass
if stages:
    print("\n| policy | tokens | op | stream operation | ms | share of the call |")
    print("| --- | ---: | ---: | --- | ---: | ---: |")
    total = {}
    for r in stages:
        if "prefix_ms" in r:
            total[(r["policy"], r["tokens"])] = r["prefix_ms"]
    for r in stages:
        if "op_ms" not in r:
            print(f"| {r['policy']} | {r['tokens']} | - | {r.get('error', '?')} | - | - |")
            continue
        t = total.get((r["policy"], r["tokens"]))
        share = f"{r['op_ms'] / t:.0%}" if t else "-"
        print(f"| {r['policy']} | {r['tokens']} | {r['op']} | {r['name']} | {r['op_ms']:.3f} | {share} |")

# results.json (docs/performance.md): card, date, torch, rows.
card = date = torch_version = commit = None
try:  # card.txt: the card, the date, "commit <id>" (run.sh)
    lines = [l.strip() for l in open(os.path.join(out, "card.txt")) if l.strip()]
    card = lines[0]
    date = lines[1] if len(lines) > 1 else None
    commit = lines[2].split()[-1] if len(lines) > 2 and lines[2].startswith("commit") else None
except (OSError, IndexError):
    pass
try:  # the torch path's first line: "<device name> <torch version>"
    first = open(os.path.join(out, "torch.txt")).readline().split()
    torch_version = first[-1] if first else None
except OSError:
    pass
rows = []
for (n, budget, plan_only), b in sorted(ours.items()):
    if plan_only:
        continue
    t = torch.get((n, budget), {})
    rows.append({"policy": "snapkv", "tokens": n, "budget": budget, "ours_ms": b["real_time"],
                 "torch_ms": t.get("snapkv_ms"), "extra_mib": b["workspace_MiB"],
                 "torch_extra_mib": t.get("snapkv_peak_mib")})
for (pol, n, budget), b in sorted(others.items()):
    t = torch.get((n, budget), {})
    rows.append({"policy": pol, "tokens": n, "budget": budget, "ours_ms": b["real_time"],
                 "torch_ms": t.get("chunkkv_ms" if pol == "chunkkv" else "snapkv_ms"),
                 "torch_path": "chunkkv" if pol == "chunkkv" else "snapkv",
                 "extra_mib": b["workspace_MiB"], "torch_extra_mib": t.get("chunkkv_peak_mib" if pol == "chunkkv" else "snapkv_peak_mib")})
for n, b in sorted(compact.items()):
    c = copy_tbs(b)
    rows.append({"kernel": "compact", "tokens": n, "gbps": b["TBps_rw"] * 1e3, "copy_gbps": c * 1e3 if c else None})
if rows:
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"card": card, "date": date, "torch": torch_version, "commit": commit, "rows": rows,
                   "stages": [r for r in stages if "op_ms" in r]}, f, indent=1)
        f.write("\n")
    print(f"\nwrote {os.path.join(out, 'results.json')} ({len(rows)} rows)")
