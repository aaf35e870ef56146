"""`hello` in Python: a ring 3 (sandbox) agent built with componentize-py on
the SDK (`../sdk/ahv`).

`run(input)` asks the host who it is (`context`), logs one line through the
`log` capability, prints one to stdout (which the host also puts in the
agent's log) and answers `"Hello, <input>! (agent <id>, ring <n>, from Python)"`.

Build it against the `sandbox` world (from the repository root):

    componentize-py -d wit -w sandbox componentize app \
        -p example-agents/python/hello -p example-agents/python/sdk -o hello.wasm

componentize-py imports every interface of the world it targets, used or
not, so target the narrowest world the agent needs: `ahv inspect` ranks the
component by its imports. The module must not be named like the world's
bindings (`wit_world`), hence `app.py`.
"""

import ahv
from ahv import context, log


@ahv.agent
def run(input: str) -> str:
    me = context.whoami()
    name = input.strip() or "world"
    log.info(f"greeting {name} from {me.agent_id} in ring {me.ring}")
    print("hello.py says hi on stdout")
    return f"Hello, {name}! (agent {me.agent_id}, ring {me.ring}, from Python)"
