#!/usr/bin/env python3
"""A minimal asyncio Postgres wire-protocol client (no libpq) for the benchmarks.

Used by bench/run.sh (memory per idle session) and bench/cutover.sh (time to move idle sessions,
replication apply lag). Only trust authentication: these are benchmark setups on 127.0.0.1.

  pgclient.py measure --port P --count N --pid PID [--pid PID ...]
      Reads VmRSS (/proc/PID/status) and Pss (/proc/PID/smaps_rollup) of each PID, opens N
      sessions, waits until they are idle and memory settles, reads again, closes the sessions.
      Prints per PID: before/after and KiB per session; last line "RESULT ..." (key=value).

  pgclient.py hold --port P --count N [--run 'shell command'] [--expect-version-min 180000]
      Opens N sessions, runs the command (timing it; its output is printed), then sends
      `SELECT current_setting('server_version_num')` on every session and reports how many
      answered, on which server version, and how many failed. Exit 1 if any session failed or
      does not meet --expect-version-min.

  pgclient.py lag --old-port P15 --new-port P18 [--samples 5] [--interval 0.3]
      Replication apply lag: upserts a fresh token into bench_lag (id int primary key, token
      text; must exist on both servers and be replicated) on old, then polls new every
      millisecond until the token is visible. Prints each sample; last line "RESULT ...".
"""

import argparse
import asyncio
import os
import resource
import struct
import subprocess
import sys
import time


def raise_nofile(needed):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed + 256
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < want:
            sys.exit(f"open-files limit too low: need {want}, hard limit is {hard}")


class PgError(Exception):
    pass


def startup_message(user, database, application_name):
    params = b""
    for k, v in (("user", user), ("database", database), ("application_name", application_name)):
        params += k.encode() + b"\0" + v.encode() + b"\0"
    params += b"\0"
    body = struct.pack("!I", 196608) + params
    return struct.pack("!I", len(body) + 4) + body


def query_message(sql):
    body = sql.encode() + b"\0"
    return b"Q" + struct.pack("!I", len(body) + 4) + body


def error_text(body):
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return f"{fields.get('S', 'ERROR')} {fields.get('C', '?????')}: {fields.get('M', '')}"


class Session:
    def __init__(self, reader, writer):
        self.reader = reader
        self.writer = writer
        self.params = {}

    async def read_frame(self):
        header = await self.reader.readexactly(5)
        tag = header[0:1]
        (length,) = struct.unpack("!I", header[1:5])
        body = await self.reader.readexactly(length - 4) if length > 4 else b""
        return tag, body

    @classmethod
    async def open(cls, host, port, user, database, timeout):
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        s = cls(reader, writer)
        writer.write(startup_message(user, database, "pgclient.py"))
        await writer.drain()

        async def handshake():
            while True:
                tag, body = await s.read_frame()
                if tag == b"R":
                    (code,) = struct.unpack("!I", body[:4])
                    if code != 0:
                        raise PgError(f"server asks for authentication method {code}; only trust is supported")
                elif tag == b"S":
                    k, v, _ = body.split(b"\0", 2)
                    s.params[k.decode()] = v.decode()
                elif tag == b"E":
                    raise PgError(error_text(body))
                elif tag == b"Z":
                    return

        await asyncio.wait_for(handshake(), timeout)
        return s

    async def scalar(self, sql, timeout):
        self.writer.write(query_message(sql))
        await self.writer.drain()
        value, error = None, None

        async def run():
            nonlocal value, error
            while True:
                tag, body = await self.read_frame()
                if tag == b"D":
                    (ncols,) = struct.unpack("!H", body[:2])
                    if ncols >= 1:
                        (n,) = struct.unpack("!i", body[2:6])
                        value = body[6:6 + n].decode() if n >= 0 else None
                elif tag == b"E":
                    error = error_text(body)
                elif tag == b"Z":
                    return

        await asyncio.wait_for(run(), timeout)
        if error:
            raise PgError(error)
        return value

    def close(self):
        try:
            self.writer.write(b"X\0\0\0\4")
        except Exception:
            pass
        self.writer.close()


async def open_many(args):
    sem = asyncio.Semaphore(args.parallel)
    errors = []

    async def one(i):
        async with sem:
            try:
                return await Session.open(args.host, args.port, args.user, args.database, args.timeout)
            except Exception as e:  # noqa: BLE001 - report every kind of failure
                errors.append(f"session {i}: {type(e).__name__}: {e}")
                return None

    started = time.monotonic()
    results = await asyncio.gather(*(one(i) for i in range(args.count)))
    sessions = [s for s in results if s is not None]
    elapsed = time.monotonic() - started
    print(f"opened {len(sessions)}/{args.count} sessions to {args.host}:{args.port} in {elapsed:.2f} s", flush=True)
    for e in errors[:5]:
        print(f"  {e}", flush=True)
    if len(errors) > 5:
        print(f"  ... {len(errors) - 5} more failures", flush=True)
    return sessions, errors


def read_mem(pid):
    """(VmRSS KiB, Pss KiB) of a process; Pss is None if smaps_rollup is unavailable."""
    rss = None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    pss = None
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


async def settle(pids, seconds):
    """Wait until RSS stops growing (or `seconds` pass)."""
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        now = tuple(read_mem(p)[0] for p in pids)
        if now == last:
            return
        last = now
        await asyncio.sleep(0.5)


async def cmd_measure(args):
    raise_nofile(args.count)
    before = {p: read_mem(p) for p in args.pid}
    sessions, errors = await open_many(args)
    await settle(args.pid, 10)
    after = {p: read_mem(p) for p in args.pid}
    n = len(sessions)
    result = [f"sessions={n}", f"failed={len(errors)}"]
    for i, p in enumerate(args.pid):
        (rss0, pss0), (rss1, pss1) = before[p], after[p]
        per_rss = (rss1 - rss0) / n if n else float("nan")
        per_pss = (pss1 - pss0) / n if n and pss0 is not None and pss1 is not None else float("nan")
        print(f"pid {p}: VmRSS {rss0} -> {rss1} KiB ({per_rss:.1f} KiB/session), "
              f"Pss {pss0} -> {pss1} KiB ({per_pss:.1f} KiB/session)", flush=True)
        result += [f"rss_before_{i}={rss0}", f"rss_after_{i}={rss1}", f"rss_per_session_{i}={per_rss:.1f}",
                   f"pss_before_{i}={pss0}", f"pss_after_{i}={pss1}", f"pss_per_session_{i}={per_pss:.1f}"]
    for s in sessions:
        s.close()
    await asyncio.sleep(0.2)
    print("RESULT " + " ".join(result), flush=True)
    return 0 if not errors else 1


async def cmd_hold(args):
    raise_nofile(args.count)
    sessions, errors = await open_many(args)
    if errors and not args.allow_open_failures:
        print("RESULT opened={} open_failed={} run_ok=0".format(len(sessions), len(errors)), flush=True)
        for s in sessions:
            s.close()
        return 1
    if args.settle > 0:
        await asyncio.sleep(args.settle)
    run_ok, run_seconds = 1, 0.0
    if args.run:
        print(f"running: {args.run}", flush=True)
        started = time.monotonic()
        proc = await asyncio.create_subprocess_shell(args.run, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out, _ = await proc.communicate()
        run_seconds = time.monotonic() - started
        run_ok = 1 if proc.returncode == 0 else 0
        text = out.decode(errors="replace").rstrip()
        print(f"command exited with {proc.returncode} after {run_seconds * 1000:.0f} ms; output:", flush=True)
        for line in text.splitlines() or ["(no output)"]:
            print(f"  | {line}", flush=True)

    versions, failures = {}, []

    async def check(i, s):
        try:
            v = await s.scalar("SELECT current_setting('server_version_num')", args.timeout)
            versions[v] = versions.get(v, 0) + 1
            if args.expect_version_min and int(v) < args.expect_version_min:
                failures.append(f"session {i}: server_version_num {v} < {args.expect_version_min}")
        except Exception as e:  # noqa: BLE001
            failures.append(f"session {i}: {type(e).__name__}: {e}")

    started = time.monotonic()
    await asyncio.gather(*(check(i, s) for i, s in enumerate(sessions)))
    check_seconds = time.monotonic() - started
    print(f"checked {len(sessions)} sessions in {check_seconds:.2f} s: server_version_num counts "
          f"{dict(sorted(versions.items()))}, {len(failures)} failed", flush=True)
    for f in failures[:5]:
        print(f"  {f}", flush=True)
    if len(failures) > 5:
        print(f"  ... {len(failures) - 5} more", flush=True)
    for s in sessions:
        s.close()
    await asyncio.sleep(0.2)
    on_min = sum(c for v, c in versions.items() if not args.expect_version_min or int(v) >= args.expect_version_min)
    print(f"RESULT opened={len(sessions)} open_failed={len(errors)} run_ok={run_ok} run_ms={run_seconds * 1000:.0f} "
          f"checked_ok={sum(versions.values())} on_expected_version={on_min} check_failed={len(failures)}", flush=True)
    return 0 if run_ok and not failures and not errors else 1


async def cmd_lag(args):
    """Samples until --duration passes; a sample still unapplied at the deadline counts as
    "at least" its age (reported as unapplied_ms)."""
    old = await Session.open(args.host, args.old_port, args.user, args.database, args.timeout)
    new = await Session.open(args.host, args.new_port, args.user, args.database, args.timeout)
    samples, unapplied = [], None
    deadline = time.monotonic() + args.duration
    try:
        while time.monotonic() < deadline and len(samples) < args.samples:
            token = os.urandom(8).hex()
            await old.scalar(f"INSERT INTO bench_lag (id, token) VALUES (1, '{token}') "
                             f"ON CONFLICT (id) DO UPDATE SET token = EXCLUDED.token", args.timeout)
            committed = time.monotonic()
            while True:
                seen = await new.scalar("SELECT token FROM bench_lag WHERE id = 1", args.timeout)
                elapsed = time.monotonic() - committed
                if seen == token or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.001)
            if seen != token:
                unapplied = elapsed * 1000.0
                print(f"lag sample {len(samples) + 1}: not applied after {unapplied:.0f} ms (deadline)", flush=True)
                break
            samples.append(elapsed * 1000.0)
            print(f"lag sample {len(samples)}: {elapsed * 1000.0:.1f} ms", flush=True)
            await asyncio.sleep(args.interval)
    finally:
        old.close()
        new.close()
    s = sorted(samples)
    fields = [f"samples={len(s)}"]
    if s:
        fields += [f"median_ms={s[len(s) // 2]:.1f}", f"max_ms={s[-1]:.1f}", f"min_ms={s[0]:.1f}"]
    if unapplied is not None:
        fields.append(f"unapplied_ms={unapplied:.0f}")
        if not s:
            fields += [f"median_ms=>{unapplied:.0f}", f"max_ms=>{unapplied:.0f}"]
        else:
            fields[2] = f"max_ms=>{unapplied:.0f}"
    print("RESULT " + " ".join(fields), flush=True)
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    lag = sub.add_parser("lag")
    lag.add_argument("--host", default="127.0.0.1")
    lag.add_argument("--old-port", type=int, required=True)
    lag.add_argument("--new-port", type=int, required=True)
    lag.add_argument("--user", default="postgres")
    lag.add_argument("--database", default="postgres")
    lag.add_argument("--samples", type=int, default=5)
    lag.add_argument("--interval", type=float, default=0.3)
    lag.add_argument("--duration", type=float, default=2.5, help="stop sampling after this many seconds")
    lag.add_argument("--timeout", type=float, default=30.0)
    for name in ("measure", "hold"):
        s = sub.add_parser(name)
        s.add_argument("--host", default="127.0.0.1")
        s.add_argument("--port", type=int, required=True)
        s.add_argument("--user", default="postgres")
        s.add_argument("--database", default="postgres")
        s.add_argument("--count", type=int, default=1000)
        s.add_argument("--parallel", type=int, default=32, help="handshakes in flight at once")
        s.add_argument("--timeout", type=float, default=30.0, help="per-operation timeout, seconds")
        if name == "measure":
            s.add_argument("--pid", type=int, action="append", required=True, help="process to measure (repeatable)")
        else:
            s.add_argument("--run", help="shell command to run (and time) while the sessions are open")
            s.add_argument("--settle", type=float, default=1.0, help="seconds to wait before --run")
            s.add_argument("--expect-version-min", type=int, default=0, help="fail sessions on an older server_version_num")
            s.add_argument("--allow-open-failures", action="store_true")
    args = p.parse_args()
    commands = {"measure": cmd_measure, "hold": cmd_hold, "lag": cmd_lag}
    rc = asyncio.run(commands[args.cmd](args))
    sys.exit(rc)


if __name__ == "__main__":
    main()
