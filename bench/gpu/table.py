"""Prints the GPU table of bench/gpu/run.sh from its outputs: ours vs the torch path per size."""
import json, os, sys

out = sys.argv[1]
ours, copy, compact, others = {}, None, {}, {}
try:
    for b in json.load(open(os.path.join(out, "bench_cuda.json")))["benchmarks"]:
        name = b["name"]
        if name.startswith("BM_d2d_copy"):
            copy = b.get("TBps_rw")
        elif name.startswith("BM_snapkv_evict") and b.get("aggregate_name") == "median":
            n, budget, plan_only = (int(x) for x in name.split("/")[1:4])
            ours[(n, budget, plan_only)] = b
        elif (name.startswith("BM_sablock_evict") or name.startswith("BM_chunkkv_evict")) and b.get("aggregate_name") == "median":
            n, budget = (int(x) for x in name.split("/")[1:3])
            others[(name.split("/")[0][3:-6], n, budget)] = b
        elif name.startswith("BM_compact_half"):
            compact[int(name.split("/")[1])] = b
except (OSError, ValueError, KeyError) as e:
    print("no CUDA benchmark results:", e)
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
for n, b in sorted(compact.items()):
    print(f"| {n} | {b['real_time']:.3f} | {b['TBps_rw']:.2f} | {b['of_copy']:.2f} |")

print("\n| policy | tokens | budget | ours plan+compact ms | torch ms (ChunkKV path; SnapKV path for SABlock) | torch / ours | ours / our SnapKV | ours extra MiB |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for (pol, n, budget), b in sorted(others.items()):
    t = torch.get((n, budget), {})
    tms = t.get("chunkkv_ms") if pol == "chunkkv" else t.get("snapkv_ms")
    snap = ours.get((n, budget, 0), {}).get("real_time")
    ms = b["real_time"]
    f = lambda x, d=3: "-" if x is None else f"{x:.{d}f}"
    print(f"| {pol} | {n} | {budget} | {f(ms)} | {f(tms)} | {f(tms / ms if tms else None, 1)} | "
          f"{f(ms / snap if snap else None, 2)} | {f(b['workspace_MiB'], 2)} |")
