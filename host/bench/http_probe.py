#!/usr/bin/env python3
"""What a client of `ahv serve` waits for: the latency of the session routes over HTTP.

Each of CLIENTS clients (a thread with its own keep-alive connection) runs SESSIONS
rounds of: create a session, join an agent (no component: the session routes, not an
agent's instantiation), terminate it. `POST /v1/sessions/{id}/terminate` answers only
once the session's seal is on disk (the audit log's group commit), so its latency is
mostly the wait for that sync. Prints sessions per second over all clients and, per
route, p50, p90, p99 and the maximum over the rounds after each client's first
WARM ones. Any answer other than 2xx fails the probe, naming the route and status.

    python3 host/bench/http_probe.py --serve target/release/ahv --clients 16

starts `ahv serve` itself (a temporary state directory, a free port on 127.0.0.1,
no component cache, a request budget no client reaches) and stops it at the end;
`--url URL --token TOKEN` measures a server already running instead. Standard
library only.
"""

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

ROUTES = ("create", "join", "terminate")


def start_server(binary, state_dir, timeout_s):
    """Starts `ahv serve` on a free port; returns (process, url, token)."""
    try:
        proc = subprocess.Popen(
            [binary, "serve", "--state-dir", state_dir, "--listen", "127.0.0.1:0",
             "--rate", "1000000", "--no-cache"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    except OSError as e:
        sys.exit(f"http_probe: cannot start {binary}: {e}")
    found = {}

    def read_stderr():
        for line in proc.stderr:
            m = re.search(r"listening on (http://\S+)", line)
            if m and "url" not in found:
                found["url"] = m.group(1)
        found.setdefault("eof", True)

    threading.Thread(target=read_stderr, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while "url" not in found:
        if proc.poll() is not None or "eof" in found:
            sys.exit(f"http_probe: `{binary} serve` exited (status {proc.poll()}) before listening")
        if time.monotonic() > deadline:
            proc.kill()
            sys.exit(f"http_probe: `{binary} serve` did not say where it listens within {timeout_s} s")
        time.sleep(0.02)
    with open(os.path.join(state_dir, "serve.token"), encoding="utf-8") as f:
        token = f.read().strip()
    return proc, found["url"], token


def stop_server(proc, timeout_s):
    """Stops the server as an operator would (SIGINT), bounded; kills it if it hangs."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        sys.exit(f"http_probe: the server did not stop within {timeout_s} s of SIGINT")


def client(url, token, rounds, out, errors, timeout_s):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout_s)
    headers = {"Authorization": f"Bearer {token}", "content-type": "application/json"}

    def call(route, method, path, body=None):
        t = time.perf_counter()
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        elapsed = time.perf_counter() - t
        if not 200 <= resp.status < 300:
            raise RuntimeError(f"{method} {path} ({route}) answered {resp.status}: {data[:300]!r}")
        return (json.loads(data) if data else None), elapsed

    times = {r: [] for r in ROUTES}
    try:
        for _ in range(rounds):
            session, t = call("create", "POST", "/v1/sessions", {})
            times["create"].append(t)
            sid = session["id"]
            _, t = call("join", "POST", f"/v1/sessions/{sid}/agents",
                        {"agent": "did:ex:probe", "sigma": 0.8})
            times["join"].append(t)
            _, t = call("terminate", "POST", f"/v1/sessions/{sid}/terminate")
            times["terminate"].append(t)
    except Exception as e:  # reported by the main thread
        errors.append(str(e))
    out.append(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--serve", metavar="AHV", help="start this `ahv` binary's server and measure it")
    where.add_argument("--url", help="measure the server at this address (with --token or $AHV_TOKEN)")
    p.add_argument("--token", default=os.environ.get("AHV_TOKEN"), help="bearer token for --url")
    p.add_argument("--clients", type=int, default=1, help="concurrent clients (default 1)")
    p.add_argument("--sessions", type=int, default=300, help="rounds per client (default 300)")
    p.add_argument("--warm", type=int, default=20, help="rounds per client left out of the figures (default 20)")
    p.add_argument("--timeout", type=float, default=30.0, help="bound on any one request and on start and stop, in s")
    a = p.parse_args()
    if a.clients < 1 or a.sessions <= a.warm or a.warm < 0:
        p.error("need --clients >= 1 and --sessions > --warm >= 0")

    state = proc = None
    if a.serve:
        state = tempfile.mkdtemp(prefix="ahv-http-probe-")
        try:
            proc, url, token = start_server(a.serve, state, a.timeout)
        except SystemExit:
            shutil.rmtree(state, ignore_errors=True)
            raise
    else:
        url, token = a.url, a.token
        if not token:
            p.error("--url needs --token or $AHV_TOKEN")
    try:
        out, errors = [], []
        threads = [threading.Thread(target=client, args=(url, token, a.sessions, out, errors, a.timeout))
                   for _ in range(a.clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=a.timeout * a.sessions * len(ROUTES))
            if t.is_alive():
                sys.exit("http_probe: a client did not finish within its bound")
        elapsed = time.perf_counter() - start
    finally:
        if proc is not None:
            stop_server(proc, a.timeout)
            shutil.rmtree(state, ignore_errors=True)
    if errors:
        sys.exit(f"http_probe: {errors[0]}")
    print(f"{a.clients} client(s) x {a.sessions} sessions: {a.clients * a.sessions / elapsed:.0f} sessions/s")
    for route in ROUTES:
        v = sorted(x for times in out for x in times[route][a.warm:])
        q = lambda f: v[min(len(v) - 1, int(len(v) * f))] * 1e3  # noqa: E731
        print(f"  {route:9} p50 {q(0.5):.3f} ms  p90 {q(0.9):.3f} ms  p99 {q(0.99):.3f} ms  max {v[-1] * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
