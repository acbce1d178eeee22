#!/usr/bin/env python3
"""Reads pgbench per-transaction logs (pgbench -l) and measures what clients saw around a cutover.

pgbench 15 log lines: client_id transaction_no time script_no time_epoch time_us [...]
where `time` is the transaction's latency in µs (or "failed"/"skipped") and time_epoch.time_us
is when it completed. A transaction ran from (completion - latency) to completion.

  txlog.py --t0 EPOCH --t1 EPOCH [--hold-from MS --hold-to MS] LOGFILE...

t0/t1: when the CUTOVER command was sent and when it returned (epoch seconds, fractional).
--hold-from/--hold-to: the hold window (gate closed until every session is rebound), in ms after
t0, from the CUTOVER report's phase durations; transactions overlapping it are the ones the hold
itself delayed (the preflight before it holds nothing).
Reports: transactions whose run overlaps [t0, t1] and the longest of them (the client-visible
stall), the latency baseline (p50/p99 over the 5 s before t0), the longest interval during
[t0, t1 + 1 s] in which no client completed any transaction, and failed transactions.
Last line "RESULT key=value ...".
"""

import argparse
import sys


def pct(sorted_values, q):
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[i]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--t0", type=float, required=True)
    p.add_argument("--t1", type=float, required=True)
    p.add_argument("--hold-from", type=float, help="ms after t0")
    p.add_argument("--hold-to", type=float, help="ms after t0")
    p.add_argument("logs", nargs="+")
    a = p.parse_args()

    tx = []  # (start, end, latency_s, client)
    failed = skipped = 0
    for path in a.logs:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) < 6:
                    continue
                if parts[2] == "failed":
                    failed += 1
                    continue
                if parts[2] == "skipped":
                    skipped += 1
                    continue
                latency = int(parts[2]) / 1e6
                end = int(parts[4]) + int(parts[5]) / 1e6
                tx.append((end - latency, end, latency, int(parts[0])))
    if not tx:
        print("no transactions in the logs", file=sys.stderr)
        print("RESULT transactions=0")
        return 1
    tx.sort(key=lambda t: t[1])
    t0, t1 = a.t0, a.t1

    spanning = [t for t in tx if t[0] < t1 and t[1] > t0]
    longest = max(spanning, key=lambda t: t[2]) if spanning else None
    baseline = sorted(t[2] for t in tx if t0 - 5.0 <= t[1] < t0)
    overall = max(tx, key=lambda t: t[2])
    held_longest = None
    if a.hold_from is not None and a.hold_to is not None:
        h0, h1 = t0 + a.hold_from / 1000.0, t0 + a.hold_to / 1000.0
        held = [t for t in tx if t[0] < h1 and t[1] > h0]
        held_longest = max(held, key=lambda t: t[2]) if held else None

    # Longest interval without any completion, within [t0, t1 + 1 s].
    window_end = t1 + 1.0
    ends = [t0] + [t[1] for t in tx if t0 <= t[1] <= window_end] + [min(window_end, tx[-1][1])]
    gap, gap_at = 0.0, t0
    for prev, cur in zip(ends, ends[1:]):
        if cur - prev > gap:
            gap, gap_at = cur - prev, prev

    ms = lambda s: s * 1000.0  # noqa: E731
    print(f"transactions: {len(tx)} completed, {failed} failed, {skipped} skipped")
    print(f"baseline latency (5 s before the cutover): p50 {ms(pct(baseline, 0.5)):.1f} ms, "
          f"p99 {ms(pct(baseline, 0.99)):.1f} ms, max {ms(baseline[-1]) if baseline else float('nan'):.1f} ms")
    print(f"CUTOVER command window: {ms(t1 - t0):.0f} ms; {len(spanning)} transactions overlap it")
    if longest:
        print(f"longest transaction overlapping the cutover: {ms(longest[2]):.1f} ms "
              f"(client {longest[3]}, started {ms(longest[0] - t0):+.0f} ms, ended {ms(longest[1] - t0):+.0f} ms relative to CUTOVER)")
    if held_longest:
        print(f"hold window {a.hold_from:+.0f}..{a.hold_to:+.0f} ms: longest transaction overlapping it {ms(held_longest[2]):.1f} ms "
              f"(client {held_longest[3]}, started {ms(held_longest[0] - t0):+.0f} ms, ended {ms(held_longest[1] - t0):+.0f} ms), "
              f"{ms(held_longest[2] - pct(baseline, 0.5)):.1f} ms above the baseline p50")
    print(f"longest time with no transaction completing (from CUTOVER to 1 s after it returned): {ms(gap):.1f} ms "
          f"(from {ms(gap_at - t0):+.0f} ms)")
    print(f"longest transaction of the whole run: {ms(overall[2]):.1f} ms (ended {ms(overall[1] - t0):+.0f} ms relative to CUTOVER)")
    print("RESULT " + " ".join([
        f"transactions={len(tx)}", f"failed={failed}", f"skipped={skipped}", f"spanning={len(spanning)}",
        f"stall_ms={ms(longest[2]) if longest else 0:.1f}", f"gap_ms={ms(gap):.1f}",
        f"hold_stall_ms={ms(held_longest[2]) if held_longest else float('nan'):.1f}",
        f"p50_ms={ms(pct(baseline, 0.5)):.1f}", f"p99_ms={ms(pct(baseline, 0.99)):.1f}",
        f"window_ms={ms(t1 - t0):.0f}", f"run_max_ms={ms(overall[2]):.1f}",
    ]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
