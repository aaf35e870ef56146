#!/usr/bin/env bash
# Runs the Python reference's published scenarios (PyPI agent-hypervisor 3.7.0, in a
# virtualenv under target/), the matching criterion benches and `instantiate_probe pairs` in
# one run, then prints the table of medians, baselines and ratios, and the performance goals
# judged beside the design's floors measured in the same run (host/bench/table.py).
#
#   host/bench/compare.sh [--readme] [--quick]
#
# --readme rewrites the README's performance table with this run's figures; --quick runs a
# tenth of the reference's calls and shorter criterion measurements (for checking the
# script, not for figures).
set -euo pipefail
cd "$(dirname "$0")/../.."

readme=""
quick=""
for arg in "$@"; do
  case "$arg" in
    --readme) readme=1 ;;
    --quick) quick=1 ;;
    *) echo "usage: host/bench/compare.sh [--readme] [--quick]" >&2; exit 2 ;;
  esac
done

out=target/bench
mkdir -p "$out"
venv=target/bench-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check agent-hypervisor==3.7.0 jsonschema

scale=1
measure=(--warm-up-time 2 --measurement-time 5)
if [ -n "$quick" ]; then
  scale=0.1
  measure=(--warm-up-time 1 --measurement-time 1)
fi

# Built before the benches run, so that no compile runs beside them.
cargo build --release --quiet -p ahv-runtime --example instantiate_probe

echo "== the Python reference"
"$venv/bin/python" host/bench/reference.py --json "$out/reference.json" --scale "$scale"

echo "== our benches (criterion; the same groups the table reads)"
# The one bench command (README, "Performance"); it shares its build with the tests' through
# the workspace hack.
env -u RUST_BACKTRACE cargo bench --workspace \
  --bench core --bench audit --bench session --bench saga --bench runtime -- "${measure[@]}" \
  '^(ring_computation/ring_for_score|delta_capture/auditor|session_lifecycle/(unaudited|audited|audited_incl_disk|floor_unaudited_plus_encoding_hashing_and_announcements)|join_wasm/(pinger|raw_instantiate)|vfs_1k/(guest_write_read|native_atomic)|full_pipeline/(no_wasm|unaudited|floor_unaudited_plus_hashing|wasm|wasm_unaudited|wasm_floor_unaudited_plus_encoding_hashing_and_announcements)|saga_3_steps/(wasm|floor_three_calls|floor_raw_wasmtime|floor_raw_wasmtime_plus_events)|instantiate_call/(governed|raw_wasmtime)|hostcall/(governed|raw)_x1000)$'

echo "== instantiate + call, governed and raw in alternating blocks of one process"
# Criterion times the two benches seconds apart, and this VM's speed drifts by more than
# the gap between them; a pair of blocks sees the same moments (instantiate_probe's docs).
pairs=(10000 20)
if [ -n "$quick" ]; then
  pairs=(1000 6)
fi
env -u RUST_BACKTRACE target/release/examples/instantiate_probe pairs "${pairs[@]}" \
  | tee "$out/instantiate_pairs.txt"

echo "== side by side"
args=("$out/reference.json" target/criterion --pairs "$out/instantiate_pairs.txt")
if [ -n "$readme" ]; then
  args+=(--readme README.md --date "$(date -u +%Y-%m-%d)")
fi
python3 host/bench/table.py "${args[@]}"
