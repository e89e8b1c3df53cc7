#!/usr/bin/python3
"""Throughput over time of one live-patching run, with apply/undo marked.

usage: plot_throughput.py RESULTS.json PATCH BINARY OUT.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

results, patch, binary, out = sys.argv[1:5]
rows = json.load(open(results))["rows"]
row = next(r for r in rows if r["patch"] == patch and r["binary"] == binary)
live = row["live"]
series = sorted(live["series"], key=lambda p: p["t"])
# Drop the partial first and last seconds of the load.
series = series[1:-1]
t = [p["t"] for p in series]
rate = [p["completed"] for p in series]
bad = [p["non_2xx"] for p in series]

fig, ax = plt.subplots(figsize=(9, 4))
ax.plot(t, rate, marker="o", label="requests completed per second")
if any(bad):
    ax.bar(t, bad, color="red", label="non-2xx per second")
top = max(rate) if rate else 1
for step in live["steps"]:
    if step["step"] in ("apply", "undo", "reapply"):
        ax.axvline(step["at_s"], color="grey", linestyle="--")
        ax.text(step["at_s"], top * 1.02, f'{step["step"]} ({step["pause_us"]} µs)', rotation=0,
                fontsize=8, ha="left")
ax.set_ylim(0, top * 1.15)
ax.set_xlabel("seconds since the load started")
ax.set_ylabel("requests per second")
ax.set_title(f"nginx under wrk while hotsplice applies and undoes {patch} ({binary})")
ax.legend(loc="lower right")
fig.tight_layout()
fig.savefig(out, dpi=110)
