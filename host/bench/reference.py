#!/usr/bin/env python3
"""Times the Python reference implementation (PyPI `agent-hypervisor` 3.7.0) on the five
scenarios it publishes benchmarks for, through its public API, on this machine.

host/bench/compare.sh runs it in a virtualenv beside the matching criterion benches; the
results go to a JSON file (one object per scenario: name, n, p50/p95/p99/mean in µs).

Each call is timed on its own with perf_counter_ns after an untimed warm-up, and the
percentiles are read off the sorted samples.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

from hypervisor import Hypervisor, SessionConfig
from hypervisor.audit.delta import DeltaEngine, VFSChange
from hypervisor.rings.enforcer import RingEnforcer
from hypervisor.saga.orchestrator import SagaOrchestrator

AGENT = "did:mesh:agent-1"
ADMIN = "did:mesh:admin"


async def noop_step() -> str:
    # The reference's steps are coroutines the caller passes in; a no-op one
    # measures the orchestration alone.
    await asyncio.sleep(0)
    return "ok"


def ring_computation():
    enforcer = RingEnforcer()
    return (lambda: enforcer.compute_ring(0.85)), 50_000


def delta_capture():
    change = [VFSChange(path="/notes.txt", operation="write", content_hash="ab" * 32)]

    def once():
        DeltaEngine("session:bench").capture(AGENT, change)

    return once, 50_000


def session_lifecycle():
    async def once():
        hv = Hypervisor()
        managed = await hv.create_session(config=SessionConfig(), creator_did=ADMIN)
        sid = managed.sso.session_id
        await hv.join_session(sid, AGENT, sigma_raw=0.8)
        await hv.activate_session(sid)
        await hv.terminate_session(sid)

    return once, 5_000


def saga_3_steps():
    async def once():
        orchestrator = SagaOrchestrator()
        saga = orchestrator.create_saga("session:bench")
        for i in range(3):
            step = orchestrator.add_step(
                saga.saga_id, f"action-{i}", AGENT,
                execute_api=f"/api/do-{i}", undo_api=f"/api/undo-{i}",
            )
            await orchestrator.execute_step(saga.saga_id, step.step_id, executor=noop_step)

    return once, 5_000


def full_governance_pipeline():
    async def once():
        hv = Hypervisor()
        managed = await hv.create_session(config=SessionConfig(enable_audit=True), creator_did=ADMIN)
        sid = managed.sso.session_id
        await hv.join_session(sid, AGENT, sigma_raw=0.8)
        await hv.activate_session(sid)
        for i in range(3):
            managed.delta_engine.capture(
                AGENT, [VFSChange(path=f"/file-{i}.txt", operation="write", content_hash=f"{i:02d}" * 32)],
            )
        saga = managed.saga.create_saga(sid)
        step = managed.saga.add_step(saga.saga_id, "draft", AGENT, execute_api="/api/draft")
        await managed.saga.execute_step(saga.saga_id, step.step_id, executor=noop_step)
        if await hv.terminate_session(sid) is None:
            raise RuntimeError("the reference returned no Merkle root for an audited session")

    return once, 2_000


SCENARIOS = {f.__name__: f for f in
             (ring_computation, delta_capture, session_lifecycle, saga_3_steps, full_governance_pipeline)}


async def measure(name: str, scale: float) -> dict:
    once, n = SCENARIOS[name]()
    n = max(100, int(n * scale))
    is_async = asyncio.iscoroutinefunction(once)

    async def call():
        if is_async:
            await once()
        else:
            once()

    for _ in range(min(100, n // 10)):
        await call()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        await call()
        samples.append(time.perf_counter_ns() - t0)
    samples.sort()

    def pct(p: float) -> float:
        return samples[min(len(samples) - 1, int(p * len(samples)))] / 1000.0

    return {"scenario": name, "n": n, "p50_us": pct(0.50), "p95_us": pct(0.95),
            "p99_us": pct(0.99), "mean_us": statistics.fmean(samples) / 1000.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, help="where to write the results")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every scenario's call count (0.1 for a quick run)")
    args = parser.parse_args()
    results = []
    for name in SCENARIOS:
        r = asyncio.run(measure(name, args.scale))
        results.append(r)
        print(f"reference {name:<26} n={r['n']:<6} p50={r['p50_us']:9.2f} µs  p99={r['p99_us']:9.2f} µs",
              flush=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
