"""kvpress's presses beside kvevict's press: time per compression and peak extra memory, on the CPU
or (``--device cuda``, a package built with KVEVICT_PY_CUDA=ON) on a GPU.

One attention layer of a Llama-3-8B-shaped model (32 query heads, 8 KV heads, head_dim 128,
hidden 4096; random weights) and one prompt per length: each press's `compress` runs on the same
hidden states, keys, values and rotary embeddings. Every (press, length) runs in its own process:
the time is the median of `--repeats` calls (fresh copies of K and V before each, not timed), and
the peak extra memory is the process's resident high-water mark during one call minus its resident
size before it (Linux: VmHWM reset through /proc/self/clear_refs), so it counts every temporary a
press makes, whoever allocates it. On a GPU the time is between two device synchronisations and the
peak extra memory is PyTorch's allocator high-water mark during the call minus what it held before
(kvevict's CUDA outputs and workspace are PyTorch allocations, so both presses are counted alike).

    python bench/python/bench_press.py [--lengths 2048 8192 32768] [--repeats 5] [--device cuda] [--json out.json]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

PRESSES = ["snapkv", "pyramidkv", "chunkkv", "knorm", "streaming_llm", "sablock"]
RATIO = 0.75  # keep a quarter
WINDOW = 64


def make_press(name, impl):
    import kvevict
    import kvpress
    from kvevict.kvpress import KvevictPress

    if impl == "kvpress":
        return {
            "snapkv": lambda: kvpress.SnapKVPress(compression_ratio=RATIO, window_size=WINDOW),
            "pyramidkv": lambda: kvpress.PyramidKVPress(compression_ratio=RATIO, window_size=WINDOW),
            "chunkkv": lambda: kvpress.ChunkKVPress(kvpress.SnapKVPress(compression_ratio=RATIO, window_size=WINDOW),
                                                    chunk_length=20),
            "knorm": lambda: kvpress.KnormPress(compression_ratio=RATIO),
            "streaming_llm": lambda: kvpress.StreamingLLMPress(compression_ratio=RATIO, n_sink=4),
        }[name]()
    policy = {
        "snapkv": lambda: kvevict.SnapKV(sinks=0, window=WINDOW),
        "pyramidkv": lambda: kvevict.PyramidKV(sinks=0, window=WINDOW),
        "chunkkv": lambda: kvevict.ChunkKV(sinks=0, window=60, chunk=20, kernel_size=5),
        "knorm": lambda: kvevict.KNorm(sinks=0, window=0),
        "streaming_llm": lambda: kvevict.StreamingLLM(sinks=4, window=0),
        "sablock": lambda: kvevict.SABlock(sinks=4, window=WINDOW, delimiter_ids=[1, 2, 3]),
    }[name]()
    return KvevictPress(policy, compression_ratio=RATIO)


def rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def child(name, impl, n, repeats, dtype, device):
    import torch
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    config = LlamaConfig(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                         num_hidden_layers=32, max_position_embeddings=max(n, 8192), intermediate_size=14336)
    module = LlamaAttention(config, layer_idx=16).to(dt).eval().to(device)
    rotary = LlamaRotaryEmbedding(config).to(device)
    hidden = torch.randn(1, n, 4096, dtype=dt).to(device)
    cos, sin = rotary(hidden, torch.arange(n, device=device).unsqueeze(0))
    kwargs = {"position_embeddings": (cos.to(dt), sin.to(dt))}
    keys = torch.randn(1, 8, n, 128, dtype=dt).to(device)
    values = torch.randn(1, 8, n, 128, dtype=dt).to(device)
    cuda = device == "cuda"
    press = make_press(name, impl)
    if impl == "kvevict" and "token_ids" in press.policy.needs:
        ids = torch.randint(10, 32000, (1, n))
        ids[0, ::17] = 1  # a clause every 17 tokens
        press._input_ids = ids
    times, kept = [], None
    with torch.no_grad():
        for r in range(repeats + 1):
            k, v = keys.clone(), values.clone()
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated() / 1024
            else:
                before = rss_kib("VmRSS")
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # reset VmHWM to the current RSS
            t0 = time.perf_counter()
            k2, v2 = press.compress(module, hidden, k, v, None, kwargs)
            if cuda:
                torch.cuda.synchronize()
            t1 = time.perf_counter()
            peak = (torch.cuda.max_memory_allocated() / 1024 if cuda else rss_kib("VmHWM")) - before
            kept = k2.shape[2]
            del k2, v2, k, v
            if r > 0:  # the first call warms up
                times.append(t1 - t0)
    return {"press": name, "impl": impl, "tokens": n, "dtype": dtype, "kept": kept,
            "median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
            "peak_extra_mib": peak / 1024, "kv_mib": 2 * keys.numel() * keys.element_size() / 2**20,
            "torch_threads": torch.get_num_threads(), "device": torch.cuda.get_device_name() if cuda else "cpu"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 32768])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--presses", nargs="+", default=PRESSES)
    ap.add_argument("--json")
    ap.add_argument("--child", nargs=3)
    a = ap.parse_args()
    if a.child:
        name, impl, n = a.child
        print(json.dumps(child(name, impl, int(n), a.repeats, a.dtype, a.device)))
        return
    rows = []
    for n in a.lengths:
        for name in a.presses:
            for impl in (["kvpress", "kvevict"] if name != "sablock" else ["kvevict"]):
                out = subprocess.run([sys.executable, __file__, "--child", name, impl, str(n), "--repeats",
                                      str(a.repeats), "--dtype", a.dtype, "--device", a.device],
                                     capture_output=True, text=True)
                if out.returncode != 0:
                    print(out.stderr, file=sys.stderr)
                    raise SystemExit(f"{name}/{impl}/{n} failed")
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(f"  {n:6d} {name:14s} {impl:8s} {row['median_ms']:9.2f} ms  peak +{row['peak_extra_mib']:8.1f} MiB",
                      flush=True)
    if a.device == "cuda":
        print(f"\nOne Llama-3-8B-shaped layer ({a.dtype}, keep {1 - RATIO:.0%}), {rows[0]['device']}, "
              f"kvevict's CUDA backend\n")
    else:
        print(f"\nOne Llama-3-8B-shaped layer ({a.dtype}, keep {1 - RATIO:.0%}), CPU, torch threads "
              f"{rows[0]['torch_threads']}, kvevict host backend on all threads; {os.cpu_count()} CPUs\n")
    print("| tokens | press | kvpress ms | kvevict ms | time ratio | kvpress peak extra MiB | kvevict peak extra MiB |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    by = {(r["tokens"], r["press"], r["impl"]): r for r in rows}
    for n in a.lengths:
        for name in a.presses:
            ours = by[(n, name, "kvevict")]
            theirs = by.get((n, name, "kvpress"))
            if theirs:
                print(f"| {n} | {name} | {theirs['median_ms']:.1f} | {ours['median_ms']:.1f} | "
                      f"{theirs['median_ms'] / ours['median_ms']:.2f}x | {theirs['peak_extra_mib']:.1f} | "
                      f"{ours['peak_extra_mib']:.1f} |")
            else:
                print(f"| {n} | {name} | - | {ours['median_ms']:.1f} | - | - | {ours['peak_extra_mib']:.1f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "device": a.device, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
