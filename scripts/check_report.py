#!/usr/bin/env python3
"""Checks a report directory: index.html exists, every figure it shows exists and is a PNG, and
every section of cases.csv has its success and fidelity plots and one heatmap per policy.
Usage: python3 scripts/check_report.py OUT_DIR"""
import csv
import os
import re
import sys

out = sys.argv[1]
index = open(os.path.join(out, "index.html")).read()
images = re.findall(r"<img src='([^']+)'", index)
rows = list(csv.DictReader(open(os.path.join(out, "cases.csv"))))
sections = sorted(set(r["section"] for r in rows))
policies = sorted(set(r["policy"] for r in rows))
want = {"plan_time.png"} if {"single", "single_long"} & set(sections) else set()
for s in sections:
    want |= {f"success_{s}.png", f"fidelity_{s}.png"} | {f"heatmap_{s}_{p}.png" for p in policies}
missing = sorted(want - set(images))
for name in images:
    with open(os.path.join(out, name), "rb") as f:
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            sys.exit(f"{name} is not a PNG")
if missing:
    sys.exit(f"index.html does not show: {', '.join(missing)}")
for s in sections:
    if f">{s}: " not in index:
        sys.exit(f"index.html has no section heading for {s}")
print(f"report in {out}: {len(images)} figures, {len(sections)} sections, {len(policies)} policies, all present")
