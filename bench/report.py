#!/usr/bin/env python3
"""Formats bench/run.sh's raw results as markdown: throughput table, memory table, targets."""

import argparse
import csv
import statistics
import sys
from collections import defaultdict

MODE_NAMES = {"select": "select-only (-S)", "tpcb": "TPC-B-like"}
PROXIES = ("pgcutover", "pgbouncer")


def read_tsv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def fmt(x, digits=0):
    if x is None:
        return "–"
    return f"{x:,.{digits}f}"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--raw", required=True)
    p.add_argument("--memory", required=True)
    p.add_argument("--clk-tck", type=int, default=100)
    p.add_argument("--seconds", required=True)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--scale", required=True)
    p.add_argument("--jobs", required=True)
    p.add_argument("--versions", default="")
    p.add_argument("--machine", default="")
    p.add_argument("--cores", default="?")
    a = p.parse_args()

    rows = read_tsv(a.raw)
    cells = defaultdict(lambda: {"tps": [], "tx": 0, "failed": 0, "ticks": 0})
    order, targets = [], []
    for r in rows:
        key = (r["mode"], r["protocol"], int(r["clients"]))
        if key not in order:
            order.append(key)
        if r["target"] not in targets:
            targets.append(r["target"])
        c = cells[key + (r["target"],)]
        c["tps"].append(float(r["tps"]))
        c["tx"] += int(r["transactions"])
        c["failed"] += int(r["failed"] or 0)
        c["ticks"] += int(r["cpu_ticks"])

    def tps(key, target):
        c = cells.get(key + (target,))
        return statistics.median(c["tps"]) if c and c["tps"] else None

    def cpu_per_1k(key, target):
        c = cells.get(key + (target,))
        if not c or not c["tx"]:
            return None
        return c["ticks"] / a.clk_tck / c["tx"] * 1000.0

    out = []
    w = out.append
    if a.machine:
        w(f"Machine: {a.machine}  ")
    if a.versions:
        w(f"Versions: {a.versions}  ")
    w(f"pgbench -j {a.jobs} (capped at the client count), {a.seconds} s per run, scale {a.scale}, "
      f"{a.rounds} round(s) (median TPS); everything on 127.0.0.1 on this one machine.")
    w("")
    proxies = [t for t in PROXIES if t in targets]
    head = ["workload", "-M", "clients"]
    if "direct" in targets:
        head.append("direct TPS")
    for t in proxies:
        head += [f"{t} TPS", f"{t} / direct" if "direct" in targets else ""]
    head += [f"{t} CPU s / 1k tx" for t in proxies]
    head = [h for h in head if h]
    w("| " + " | ".join(head) + " |")
    w("|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|")
    for key in order:
        mode, proto, clients = key
        direct = tps(key, "direct")
        line = [MODE_NAMES.get(mode, mode), proto, str(clients)]
        if "direct" in targets:
            line.append(fmt(direct))
        for t in proxies:
            v = tps(key, t)
            line.append(fmt(v))
            if "direct" in targets:
                line.append(f"{v / direct:.2f}" if v and direct else "–")
        for t in proxies:
            line.append(fmt(cpu_per_1k(key, t), 3))
        w("| " + " | ".join(line) + " |")
    failed = sum(c["failed"] for c in cells.values())
    loads = [float(r["loadavg"]) for r in rows if r.get("loadavg")]
    w("")
    w(f"Failed transactions over all runs: {failed}.")
    if loads:
        w(f"1-minute load average at the end of each run: {min(loads):.1f}–{max(loads):.1f} "
          f"(median {statistics.median(loads):.1f}) on {a.cores} cores; pgbench, Postgres and the proxy share them.")

    mem = read_tsv(a.memory)
    if mem:
        w("")
        w("Memory per idle client session (fresh proxy process, sessions opened with bench/pgclient.py, "
          "each holding its server connection):")
        w("")
        w("| proxy | sessions | VmRSS before → after (KiB) | VmRSS KiB / session | Pss before → after (KiB) | Pss KiB / session |")
        w("|---|---:|---:|---:|---:|---:|")
        for m in mem:
            w(f"| {m['target']} | {m['sessions']} | {m['rss_before']} → {m['rss_after']} | {m['rss_per_session']} "
              f"| {m['pss_before']} → {m['pss_after']} | {m['pss_per_session']} |")

    # Targets.
    w("")
    w("Targets:")
    w("")
    key = ("select", "prepared", 16)
    ours, theirs = tps(key, "pgcutover"), tps(key, "pgbouncer")
    if ours and theirs:
        verdict = "MET" if ours >= theirs else "NOT MET"
        w(f"- select-only, -M prepared, 16 clients: pgcutover TPS ≥ PgBouncer's — **{verdict}** "
          f"({fmt(ours)} vs {fmt(theirs)} TPS, {100.0 * (ours / theirs - 1):+.1f}%).")
    else:
        w("- select-only, -M prepared, 16 clients, TPS: not measured in this run.")
    ours, theirs = cpu_per_1k(key, "pgcutover"), cpu_per_1k(key, "pgbouncer")
    if ours is not None and theirs:
        verdict = "MET" if ours <= theirs else "NOT MET"
        w(f"- same workload: pgcutover CPU per transaction ≤ PgBouncer's — **{verdict}** "
          f"({ours * 1000:.0f} µs vs {theirs * 1000:.0f} µs per transaction, {ours / theirs:.2f}×).")
    else:
        w("- CPU per transaction at select-only prepared 16 clients: not measured in this run.")
    ours_mem = next((m for m in mem if m["target"] == "pgcutover"), None)
    if ours_mem:
        try:
            worst = max(float(ours_mem["rss_per_session"]), float(ours_mem["pss_per_session"]))
            verdict = "MET" if worst <= 64 else "NOT MET"
            w(f"- memory per idle session ≤ 64 KiB — **{verdict}** ({worst:.1f} KiB, the larger of the VmRSS "
              f"and Pss deltas per session).")
        except ValueError:
            w("- memory per idle session: measurement incomplete.")
    else:
        w("- memory per idle session: not measured in this run.")
    print("\n".join(out))


if __name__ == "__main__":
    sys.exit(main())
