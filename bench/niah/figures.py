#!/usr/bin/env python3
"""Figures and index of the NIAH report, drawn from the report's cases.csv with matplotlib.

Usage: python3 bench/niah/figures.py [OUT_DIR]   (default out/niah; reads OUT_DIR/cases.csv)

Writes into OUT_DIR:
  heatmap_<section>_<policy>.png  context length (x) x needle depth (y), colour = success rate
                                  over the seeds, one panel per budget
  success_<section>.png           success vs budget, one line per policy
  fidelity_<section>.png          attention fidelity vs budget, one line per policy
  plan_time.png                   plan time per layer vs context length (single-needle sections)
  index.html                      every table and figure on one page
"""

import csv
import html
import os
import sys
import time
from collections import OrderedDict, defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Per policy: label, colour, marker, line style (key-similarity variants dashed, version 1 dotted,
# fp8 caches dash-dotted).
POLICIES = {
    "full_cache": ("full cache", "#000000", "", ":"),
    "streaming_llm": ("StreamingLLM", "#8c564b", "v", "-"),
    "h2o": ("H2O", "#e377c2", "^", "-"),
    "snapkv": ("SnapKV", "#1f77b4", "o", "-"),
    "pyramidkv": ("PyramidKV", "#17becf", "D", "-"),
    "ada_snapkv": ("Ada-SnapKV", "#7f7f7f", "P", "-"),
    "chunkkv": ("ChunkKV", "#bcbd22", "s", "-"),
    "sentencekv": ("SentenceKV (delimiters)", "#ff7f0e", "X", "-"),
    "sablock": ("SABlock (delimiters)", "#d62728", "*", "-"),
    "sablock_v1": ("SABlock v1 (clauses only)", "#9467bd", "*", ":"),
    "sentencekv_keysim": ("SentenceKV (key similarity)", "#ff7f0e", "X", "--"),
    "sablock_keysim": ("SABlock (key similarity)", "#d62728", "*", "--"),
    "snapkv_fp8": ("SnapKV, fp8 E4M3 cache", "#1f77b4", "o", "-."),
    "sablock_fp8": ("SABlock, fp8 E4M3 cache", "#d62728", "*", "-."),
}


def style(p):
    """Colour, marker and line style of a policy."""
    return POLICIES[p][1:] if p in POLICIES else (None, "o", "-")


SECTIONS = {
    "single": "single needle: one key phrase, a 5-digit answer",
    "single_long": "single needle at 16K-32K tokens",
    "multi_key": "multi-key: 4 needles with different keys, the question asks one",
    "multi_value": "multi-value: one key, 3 values, all 15 digits required",
    "multi_query": "multi-query: 4 keys, the question asks 2, both answers required",
    "long_sentence": "needle as a clause of 30-80 tokens inside a long sentence",
    "long_value": "long value: 20-40 answer tokens spanning several clauses",
}


def label(p):
    return POLICIES[p][0] if p in POLICIES else p


def load(path):
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rows.append(
                {
                    "section": r["section"],
                    "policy": r["policy"],
                    "budget": int(r["budget"]),
                    "context": int(r["context"]),
                    "depth": float(r["depth"]),
                    "seed": int(r["seed"]),
                    "success": float(r["success"]),
                    "recall": float(r["answer_recall"]),
                    "fidelity": float(r["fidelity"]),
                    "ms": float(r["plan_ms_per_layer"]),
                    "bytes": float(r["extra_bytes_per_layer"]),
                }
            )
    return rows


def ordered(values):
    return list(OrderedDict.fromkeys(values))


def mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def heatmap(out, section, policy, rows, budgets, contexts, depths):
    cells = defaultdict(list)
    for r in rows:
        cells[(r["budget"], r["context"], r["depth"])].append(r["success"])
    seeds = len(ordered(r["seed"] for r in rows))
    fig, axes = plt.subplots(
        1, len(budgets), figsize=(2.2 + 2.6 * len(budgets), 3.6), sharey=True, constrained_layout=True, squeeze=False
    )
    im = None
    for ax, b in zip(axes[0], budgets):
        grid = [[mean(cells[(b, c, d)]) for c in contexts] for d in depths]
        im = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
        ax.set_title(f"budget {b}", fontsize=10)
        step = max(1, len(contexts) // 5)
        xt = list(range(0, len(contexts), step))
        ax.set_xticks(xt)
        ax.set_xticklabels([f"{contexts[i] / 1000:g}K" for i in xt], fontsize=8)
        ax.set_xlabel("context length (tokens)", fontsize=9)
        ystep = max(1, len(depths) // 6)
        yt = list(range(0, len(depths), ystep))
        ax.set_yticks(yt)
        ax.set_yticklabels([f"{100 * depths[i]:.0f}%" for i in yt], fontsize=8)
    axes[0][0].set_ylabel("needle depth", fontsize=9)
    cb = fig.colorbar(im, ax=axes[0].tolist(), shrink=0.9)
    cb.set_label(f"success rate ({seeds} seed{'s' if seeds != 1 else ''})", fontsize=9)
    fig.suptitle(f"{label(policy)}: {SECTIONS.get(section, section)}", fontsize=11)
    name = f"heatmap_{section}_{policy}.png"
    fig.savefig(os.path.join(out, name), dpi=90)
    plt.close(fig)
    return name


def budget_plot(out, section, rows, policies, budgets, key, ylabel, fname, percent):
    fig, ax = plt.subplots(figsize=(7.5, 4.6), constrained_layout=True)
    for p in policies:
        ys = [mean([r[key] for r in rows if r["policy"] == p and r["budget"] == b]) for b in budgets]
        if percent:
            ys = [100 * y for y in ys]
        colour, marker, ls = style(p)
        ax.plot(budgets, ys, label=label(p), color=colour, marker=marker or None, linestyle=ls, linewidth=1.6)
    ax.set_xscale("log", base=2)
    ax.set_xticks(budgets)
    ax.set_xticklabels([str(b) for b in budgets])
    ax.minorticks_off()
    ax.set_xlabel("budget (KV entries kept per head)")
    ax.set_ylabel(ylabel)
    if percent:
        ax.set_ylim(-3, 103)
    ax.grid(True, alpha=0.3)
    ax.set_title(f"{ylabel} vs budget: {SECTIONS.get(section, section)}", fontsize=10)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    name = f"{fname}_{section}.png"
    fig.savefig(os.path.join(out, name), dpi=90)
    plt.close(fig)
    return name


def plan_time_plot(out, rows, policies):
    single = [r for r in rows if r["section"] in ("single", "single_long")]
    if not single:
        return None
    b0 = min(r["budget"] for r in single)
    fig, ax = plt.subplots(figsize=(7.5, 4.6), constrained_layout=True)
    for p in policies:
        if p == "full_cache":
            continue
        by_ctx = defaultdict(list)
        for r in single:
            if r["policy"] == p and r["budget"] == b0:
                by_ctx[r["context"]].append(r["ms"])
        xs = sorted(by_ctx)
        colour, marker, ls = style(p)
        ax.plot(xs, [mean(by_ctx[x]) for x in xs], label=label(p), color=colour, marker=marker or None, linestyle=ls,
                markersize=4)
    ax.set_xscale("log", base=2)
    ctx = sorted(set(r["context"] for r in single))
    ticks = [c for c in ctx if c in (ctx[0], ctx[-1]) or c in (2000, 4000, 8000, 16384)]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{c / 1024:.0f}K" if c % 1024 == 0 else f"{c / 1000:g}K" for c in ticks])
    ax.minorticks_off()
    ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("plan time per layer (ms, host, one thread)")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"Plan time (scoring + selection) vs context, budget {b0}, single-needle sections", fontsize=10)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    name = "plan_time.png"
    fig.savefig(os.path.join(out, name), dpi=90)
    plt.close(fig)
    return name


def table_html(rows, policies, budgets):
    big = max(r["context"] for r in rows)
    head = "".join(f"<th>budget {b}</th>" for b in budgets)
    out = [f"<table><tr><th>policy</th>{head}<th>ms/layer @{big}</th></tr>"]
    for p in policies:
        cells = []
        for b in budgets:
            sel = [r for r in rows if r["policy"] == p and r["budget"] == b]
            cells.append(
                f"<td>{100 * mean([r['success'] for r in sel]):.1f}% / {mean([r['recall'] for r in sel]):.3f}"
                f" / {mean([r['fidelity'] for r in sel]):.3f}</td>"
            )
        ms = mean([r["ms"] for r in rows if r["policy"] == p and r["budget"] == budgets[0] and r["context"] == big])
        out.append(f"<tr><td>{html.escape(label(p))}</td>{''.join(cells)}<td>{ms:.2f}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "out/niah"
    rows = load(os.path.join(out, "cases.csv"))
    if not rows:
        sys.exit(f"{out}/cases.csv has no rows")
    t0 = time.time()
    sections = ordered(r["section"] for r in rows)
    policies = ordered(r["policy"] for r in rows)
    figures = 0
    page = [
        "<!doctype html><html><head><meta charset='utf-8'><title>kvevict NIAH report</title><style>"
        "body{font-family:sans-serif;max-width:1400px;margin:1em auto;padding:0 1em}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
        "td:first-child{text-align:left}img{max-width:100%}</style></head><body>",
        "<h1>kvevict: synthetic needle-in-a-haystack report</h1>",
        "<p>Synthetic per-layer caches (support/include/kvevict/support/niah.hpp): 2 layers x 4 KV heads x 64 dims, "
        "16 query heads, bf16, paged. Every policy keeps 4 sinks and the 32-token question window and gets the "
        "budget of the column. <b>Success</b>: every required answer token kept in every retrieval head; "
        "<b>recall</b>: the fraction kept; <b>fidelity</b>: 1 - |o_kept - o_full| / |o_full| for the queries "
        "that generate the answer. Cells: success / recall / fidelity, averaged over the section's sequences. "
        "Time: plan per layer, host, one thread, at the section's longest context and the smallest budget. "
        "The numbers of every case are in cases.csv.</p>",
    ]
    for s in sections:
        rs = [r for r in rows if r["section"] == s]
        budgets = sorted(set(r["budget"] for r in rs))
        contexts = sorted(set(r["context"] for r in rs))
        depths = sorted(set(r["depth"] for r in rs))
        n = len(set((r["context"], r["depth"], r["seed"]) for r in rs))
        page.append(f"<h2>{html.escape(s)}: {html.escape(SECTIONS.get(s, s))}</h2>")
        page.append(f"<p>{n} sequences, contexts {contexts[0]}..{contexts[-1]}, {len(depths)} depths.</p>")
        page.append(table_html(rs, policies, budgets))
        for fname, key, ylabel, pct in (
            ("success", "success", "success (%)", True),
            ("fidelity", "fidelity", "attention fidelity", False),
        ):
            name = budget_plot(out, s, rs, policies, budgets, key, ylabel, fname, pct)
            page.append(f"<p><img src='{name}' alt='{ylabel} vs budget, {html.escape(s)}'></p>")
            figures += 1
        page.append("<h3>Heatmaps</h3>")
        for p in policies:
            name = heatmap(out, s, p, [r for r in rs if r["policy"] == p], budgets, contexts, depths)
            page.append(f"<p><img src='{name}' alt='success heatmap, {html.escape(label(p))}, {html.escape(s)}'></p>")
            figures += 1
        print(f"  figures: {s} done ({figures} so far, {time.time() - t0:.1f} s)", flush=True)
    name = plan_time_plot(out, rows, policies)
    if name:
        page.insert(3, f"<h2>Plan time</h2><p><img src='{name}' alt='plan time vs context'></p>")
        figures += 1
    page.append("</body></html>")
    with open(os.path.join(out, "index.html"), "w") as f:
        f.write("\n".join(page))
    print(f"wrote {figures} figures and {out}/index.html ({time.time() - t0:.1f} s)")


if __name__ == "__main__":
    main()
