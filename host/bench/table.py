#!/usr/bin/env python3
"""Prints the performance table from one run of host/bench/compare.sh: criterion's medians
(target/criterion/<group>/<bench>/new/estimates.json) beside the baseline each is compared
with — a floor measured by another bench of the same run, or the Python reference's p50
from host/bench/reference.py — and the ratio. With --readme FILE, the table also replaces
the block between the `perf-table` markers in FILE.

Usage: table.py REFERENCE.json CRITERION_DIR [--readme README.md] [--date YYYY-MM-DD]
       table.py --list     (the criterion benches and reference scenarios the table reads)
"""
from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys

# (what is measured, our bench, what it is compared with, its bench or reference scenario, note)
# A baseline starting with "ref:" is the Python reference's scenario of that name.
ROWS = [
    ("ring computation (σ 0.85 → ring)", "ring_computation/ring_for_score",
     "Python reference", "ref:ring_computation", ""),
    ("delta capture (encode, SHA-256 leaf, chain, Merkle append)", "delta_capture/auditor",
     "Python reference", "ref:delta_capture", "the reference hashes one delta and keeps no tree"),
    ("session lifecycle, audit off", "session_lifecycle/unaudited",
     "Python reference", "ref:session_lifecycle",
     "the reference builds a new `Hypervisor` per iteration and records no deltas"),
    ("session lifecycle, audited (6 deltas, a commitment)", "session_lifecycle/audited",
     "the same, audit off", "session_lifecycle/unaudited", ""),
    ("full pipeline without Wasm, audited (10 deltas)", "full_pipeline/no_wasm",
     "Python reference (3 deltas)", "ref:full_governance_pipeline", ""),
    ("full pipeline without Wasm, audited", "full_pipeline/no_wasm",
     "audit off plus only the SHA-256 work its deltas need", "full_pipeline/floor_unaudited_plus_hashing", ""),
    ("full pipeline, agent instantiated at join, step inside it, audited", "full_pipeline/wasm",
     "Python reference (no sandbox, 3 deltas)", "ref:full_governance_pipeline", ""),
    ("full pipeline, agent instantiated at join, step inside it, audited", "full_pipeline/wasm",
     "the same, audit off", "full_pipeline/wasm_unaudited", ""),
    ("3-step saga, steps in a live Wasm agent", "saga_3_steps/wasm",
     "Python reference (no sandbox)", "ref:saga_3_steps", ""),
    ("3-step saga, steps in a live Wasm agent", "saga_3_steps/wasm",
     "3 host→guest calls, no saga", "saga_3_steps/floor_three_calls", ""),
    ("3-step saga, steps in a live Wasm agent", "saga_3_steps/wasm",
     "the 3 calls in raw wasmtime, plus the saga's 8 events emitted bare",
     "saga_3_steps/floor_raw_wasmtime_plus_events",
     "the least a saga of this participant's steps costs here"),
    ("3 host→guest calls of `saga-participant.execute`", "saga_3_steps/floor_three_calls",
     "the same calls in raw wasmtime", "saga_3_steps/floor_raw_wasmtime", ""),
    ("instantiate from a cached `InstancePre` + call `run`", "instantiate_call/governed",
     "raw wasmtime", "instantiate_call/raw_wasmtime", ""),
    ("1000 guest→host calls", "hostcall/governed_x1000",
     "raw wasmtime", "hostcall/raw_x1000", ""),
    ("join a session with a Wasm agent (instantiation included)", "join_wasm/pinger",
     "a standalone `Runtime::spawn` of the same agent", "join_wasm/raw_instantiate", ""),
    ("session lifecycle, audited, its log's disk writes and syncs included", "session_lifecycle/audited_incl_disk",
     "the same, audit off", "session_lifecycle/unaudited", ""),
    ("1 KiB file write + read by a guest (`vfs-write`, `vfs-read`)", "vfs_1k/guest_write_read",
     "cap-std: temporary file, `sync_data`, rename, read", "vfs_1k/native_atomic",
     "the disk-bound rows vary widely between runs on this VM"),
]

BEGIN = re.compile(r"<!-- perf-table: .*?-->")
END = "<!-- perf-table: end -->"


def fmt(ns: float) -> str:
    if ns < 1_000:
        return f"{ns:.1f} ns"
    if ns < 1_000_000:
        return f"{ns / 1_000:.1f} µs"
    return f"{ns / 1_000_000:.2f} ms"


def median_ns(criterion: pathlib.Path, bench: str) -> float | None:
    path = criterion.joinpath(*bench.split("/"), "new", "estimates.json")
    try:
        return json.loads(path.read_text())["median"]["point_estimate"]
    except FileNotFoundError:
        return None


def table(reference: dict, criterion: pathlib.Path) -> tuple[str, list[str]]:
    lines = ["| Scenario | Ours (median) | Compared with | Its figure | Ratio |", "|---|---|---|---|---|"]
    missing = []
    for what, ours_id, against, base_id, note in ROWS:
        ours = median_ns(criterion, ours_id)
        if base_id.startswith("ref:"):
            r = reference.get(base_id[4:])
            base = None if r is None else r["p50_us"] * 1_000
            base_text = "—" if base is None else f"{fmt(base)} p50"
        else:
            base = median_ns(criterion, base_id)
            base_text = "—" if base is None else fmt(base)
        if ours is None:
            missing.append(ours_id)
        if base is None:
            missing.append(base_id)
        if ours is None or base is None:
            ratio = "—"
        elif base_id.startswith("ref:"):
            ratio = f"{base / ours:.1f}× faster" if base >= ours else f"{ours / base:.1f}× slower"
        else:
            ratio = f"{ours / base:.2f}×"
        label = f"{what} (`{ours_id}`)" + (f"; {note}" if note else "")
        lines.append(f"| {label} | {'—' if ours is None else fmt(ours)} | {against} | {base_text} | {ratio} |")
    return "\n".join(lines), missing


def main() -> int:
    if sys.argv[1:] == ["--list"]:
        ids = sorted({i for row in ROWS for i in (row[1], row[3])})
        print("\n".join(ids))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("reference")
    p.add_argument("criterion")
    p.add_argument("--readme")
    p.add_argument("--date", default="")
    args = p.parse_args()
    reference = {r["scenario"]: r for r in json.loads(pathlib.Path(args.reference).read_text())}
    text, missing = table(reference, pathlib.Path(args.criterion))
    print(text)
    if missing:
        print(f"missing from this run: {', '.join(sorted(set(missing)))}", file=sys.stderr)
        return 1
    if args.readme:
        readme = pathlib.Path(args.readme)
        body = readme.read_text()
        m = BEGIN.search(body)
        end = body.find(END)
        if m is None or end < m.end():
            print(f"{readme}: no `<!-- perf-table: … -->` … `{END}` block", file=sys.stderr)
            return 1
        head = f"<!-- perf-table: generated by host/bench/compare.sh --readme{' on ' + args.date if args.date else ''}; do not edit -->"
        readme.write_text(body[:m.start()] + head + "\n\n" + text + "\n\n" + body[end:])
        print(f"{readme}: table rewritten", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
