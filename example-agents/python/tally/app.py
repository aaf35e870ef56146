"""`tally` in Python: a session participant in the `standard` world (ring 2).

Input, a JSON object (every field optional):

    {"by": 1, "times": 1, "read": "shared/brief.txt"}

It reads `read` (a file another agent wrote; a missing one is reported, not
fatal), adds `by` to the shared counter `tally` `times` times (each one a
compare-and-set `state.update`, so racing instances lose no increment),
then, holding a write lock on `shared/tally.json`, records its runs in that
file (read, change, write back: the lock keeps other instances' entries).
It answers a JSON object:

    {"agent": "...", "ring": 2, "counter": 7, "version": 7, "attempts": 1,
     "read": "text of the file" or null, "missing": "not-found: ..." (only if missing),
     "runs": 3, "ledger": {"<agent id>": {"runs": 3, "added": 3}, ...}}

A bad input (`{"by": "x"}`) is an uncaught `ValueError`: the SDK makes it the
`err` value, and the instance lives on. Build it (from the repository root):

    componentize-py -d wit -w standard componentize app \
        -p example-agents/python/tally -p example-agents/python/sdk -o tally.wasm
"""

import ahv
from ahv import context, locks, log, state, vfs

LEDGER = "shared/tally.json"


@ahv.agent(json=True)
def run(ask: dict) -> dict:
    me = context.whoami()
    by = int(ask.get("by", 1))
    times = int(ask.get("times", 1))
    answer = {"agent": me.agent_id, "ring": me.ring, "read": None}

    if "read" in ask:
        try:
            answer["read"] = vfs.read_text(ask["read"])
        except ahv.NotFound as e:
            answer["missing"] = str(e)

    attempts = 0
    written = 0

    def add(old: bytes | None) -> str:
        nonlocal attempts, written
        attempts += 1
        written = int((old or b"0").decode()) + by
        return str(written)

    version = 0
    for _ in range(times):
        version = state.update("tally", add)
    answer.update(counter=written, version=version, attempts=attempts)

    with locks.lock(path=LEDGER, mode="write", wait_ms=10_000):
        try:
            ledger = ahv.json.input(vfs.read_text(LEDGER))
        except ahv.NotFound:
            ledger = {}
        mine = ledger.setdefault(me.agent_id, {"runs": 0, "added": 0})
        mine["runs"] += 1
        mine["added"] += by * times
        vfs.write(LEDGER, ahv.json.answer(ledger))
    answer.update(runs=mine["runs"], ledger=ledger)

    log.info(f"{me.agent_id} added {by * times}: the counter is {written} (version {version})")
    return answer
