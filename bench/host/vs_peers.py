"""One layer's SnapKV plan on the CPU: kvevict beside the numpy path (one BLAS matmul, the
research-code way: ../shared/bench/numpy_path_baseline.py) and torch's CPU path (the kvpress
formula), in one run, at 1 thread and at every thread. Prints a table with the ratios last and
writes JSON.

    build/pyvenv/bin/python bench/host/vs_peers.py [--build build/release] [--rounds 3] [--json out.json]

kvevict: build/<build>/bench/kvevict_bench_layer (plain -O2, no -march; the scorer dispatches to
AVX2 at run time), fp32 and bf16 keys. numpy: float32 (its BLAS has no bf16). torch: fp32 and bf16.
"""

import argparse
import json
import os
import subprocess
import sys
import time

HQ, HK, D, W, POOL, BUDGET = 32, 8, 128, 64, 5, 1024
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def run_ours(build, reps):
    exe = os.path.join(ROOT, build, "bench", "kvevict_bench_layer")
    out = subprocess.run([exe, "--benchmark_format=json", f"--benchmark_repetitions={reps}",
                          "--benchmark_report_aggregates_only=true"], capture_output=True, text=True, check=True)
    rows = {}
    for b in json.loads(out.stdout)["benchmarks"]:
        if b.get("aggregate_name") != "median":
            continue
        name = b["run_name"]  # BM_plan_layer<float>/tokens:8192/threads:1/real_time
        dtype = "bf16" if "bfloat16" in name else "fp32"
        n = int(name.split("tokens:")[1].split("/")[0])
        t = int(name.split("threads:")[1].split("/")[0])
        rows[(dtype, n, "all" if t == 0 else str(t))] = b["real_time"]
    return rows


def peer(kind, threads, tokens, reps):
    """Runs a peer in a child process with its thread count fixed before numpy/torch load."""
    env = dict(os.environ)
    if threads == "1":
        env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    code = f"import sys; sys.path.insert(0, {HERE!r}); import vs_peers; vs_peers.child({kind!r}, {tokens}, {reps})"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        print(out.stderr, file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else 0.5 * (xs[m - 1] + xs[m])


def best_ms(fn, reps):
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def child(kind, tokens, reps):
    res = {}
    if kind == "numpy":
        import numpy as np
        sys.path.insert(0, os.path.join(ROOT, "..", "shared", "bench"))
        from numpy_path_baseline import plan
        for n in tokens:
            rng = np.random.default_rng(0)
            k = rng.standard_normal((HK, n, D), dtype=np.float32)
            q = rng.standard_normal((HQ, W, D), dtype=np.float32)
            res[f"fp32/{n}"] = best_ms(lambda: plan(q, k, BUDGET), reps)
            # The one-matmul floor: the logits alone, one BLAS sgemm per KV head of its query
            # group's window rows against its keys (2 x 32 x 64 x n x 128 flops), into a reused
            # output; the floor is this time, its rate the machine's measured sgemm rate.
            qg = np.ascontiguousarray(q.reshape(HK, HQ // HK * W, D))
            kt = np.ascontiguousarray(k.transpose(0, 2, 1))
            out = np.empty((HQ // HK * W, n), dtype=np.float32)

            def logits():
                for h in range(HK):
                    np.matmul(qg[h], kt[h], out=out)

            res[f"sgemm/{n}"] = best_ms(logits, reps)
        try:
            from threadpoolctl import threadpool_info
            res["blas"] = [(i.get("internal_api"), i.get("num_threads"), i.get("architecture")) for i in threadpool_info()]
        except ImportError:
            res["blas"] = "threadpoolctl not installed"
    else:
        import torch
        import torch.nn.functional as F

        def plan(q, k):
            g = HQ // HK
            n = k.shape[2]
            kk = k.repeat_interleave(g, dim=1)
            s = torch.matmul(q, kk.transpose(2, 3)) / D ** 0.5
            s[..., n - W:] += torch.full((W, W), float("-inf")).triu(1).to(s.dtype)
            p = torch.softmax(s, dim=-1, dtype=torch.float32)[..., : n - W]
            a = p.mean(2).view(1, HK, g, n - W).mean(2)
            a = F.avg_pool1d(a, kernel_size=POOL, padding=POOL // 2, stride=1)
            return a.topk(BUDGET - W, dim=-1).indices.sort(-1).values

        for dt, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
            for n in tokens:
                g = torch.Generator().manual_seed(0)
                k = torch.randn(1, HK, n, D, generator=g).to(dt)
                q = torch.randn(1, HQ, W, D, generator=g).to(dt)
                with torch.no_grad():
                    res[f"{name}/{n}"] = best_ms(lambda: plan(q, k), reps)
        res["torch_threads"] = torch.get_num_threads()
    print(json.dumps(res))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build/release")
    ap.add_argument("--tokens", type=int, nargs="+", default=[8192, 32768])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds of (kvevict, then the peers); each ratio is the median of the rounds' ratios")
    ap.add_argument("--json")
    a = ap.parse_args()
    rounds = []
    for _ in range(a.rounds):
        ours = run_ours(a.build, a.repeats)
        peers = {}
        for kind in ("numpy", "torch"):
            for threads in ("1", "all"):
                peers[(kind, threads)] = peer(kind, threads, a.tokens, a.repeats)
        rounds.append((ours, peers))
    print(f"\nOne layer's SnapKV plan (32 q / 8 KV heads, head_dim 128, window 64, pool 5, budget 1024), "
          f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}; best (peers) / median (kvevict) of {a.repeats}, "
          f"{a.rounds} rounds: times and ratios are medians over the rounds (a ratio within each round)")
    if peers[("numpy", "all")]:
        print(f"numpy BLAS: {peers[('numpy', 'all')].get('blas')}")
    print("\nfloor: one sgemm of the logits (numpy's BLAS, same threads), the one-matmul floor of the issue")
    print("\n| keys | tokens | threads | kvevict ms | numpy fp32 ms | numpy / kvevict | torch ms | torch / kvevict "
          "| floor ms | sgemm GFLOP/s | kvevict / floor |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rows = []
    for dtype in ("fp32", "bf16"):
        for n in a.tokens:
            for threads in ("1", "all"):
                per = [(ours.get((dtype, n, threads)), (peers[("numpy", threads)] or {}).get(f"fp32/{n}"),
                        (peers[("torch", threads)] or {}).get(f"{dtype}/{n}"),
                        (peers[("numpy", threads)] or {}).get(f"sgemm/{n}")) for ours, peers in rounds]
                o, npy, tch, floor = (median([x[i] for x in per]) for i in range(4))
                # Ratios within each round, then their median.
                r_npy = median([x[1] / x[0] if x[0] and x[1] else None for x in per])
                r_tch = median([x[2] / x[0] if x[0] and x[2] else None for x in per])
                r_floor = median([x[0] / x[3] if x[0] and x[3] else None for x in per])
                gflops = 2.0 * HQ * W * n * D / (floor * 1e6) if floor else None
                rows.append({"keys": dtype, "tokens": n, "threads": threads, "kvevict_ms": o, "numpy_fp32_ms": npy,
                             "torch_ms": tch, "sgemm_floor_ms": floor, "sgemm_gflops": gflops,
                             "numpy_over_kvevict": r_npy, "torch_over_kvevict": r_tch, "kvevict_over_floor": r_floor,
                             "rounds": [dict(zip(("kvevict_ms", "numpy_fp32_ms", "torch_ms", "sgemm_floor_ms"), x))
                                        for x in per]})
                f = lambda x: f"{x:.1f}" if x else "-"  # noqa: E731
                r = lambda x: f"{x:.2f}x" if x else "-"  # noqa: E731
                g = f"{gflops:.1f}" if gflops else "-"
                print(f"| {dtype} | {n} | {threads} | {f(o)} | {f(npy)} | {r(r_npy)} | {f(tch)} | {r(r_tch)} | {f(floor)} "
                      f"| {g} | {r(r_floor)} |")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "rounds": a.rounds, "rows": rows,
                       "peers": [{f"{k}/{t}": v for (k, t), v in peers.items()} for _, peers in rounds]}, fh, indent=1)


if __name__ == "__main__":
    main()
