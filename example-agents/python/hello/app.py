"""`hello` in Python: a ring 3 (sandbox) agent built with componentize-py.

`run(input)` asks the host who it is (`context`), logs one line through the
`log` capability, prints one to stdout (which the host also puts in the
agent's log) and answers `"Hello, <input>! (agent <id>, ring <n>, from Python)"`.

Build it against the `sandbox` world (from this directory):

    componentize-py -d ../../../wit -w sandbox componentize app -o hello.wasm

componentize-py imports every interface of the world it targets, used or
not, so target the narrowest world the agent needs: `ahv inspect` ranks the
component by its imports. The module must not be named like the world's
bindings (`wit_world`), hence `app.py`.
"""

import wit_world
from wit_world.imports import context, log
from wit_world.imports.log import Level


class WitWorld(wit_world.WitWorld):
    def run(self, input: str) -> str:
        # Returning a str is `ok(...)`; raising componentize_py_types.Err(str)
        # would be `err(...)`. Any other exception traps the instance.
        me = context.whoami()
        name = input.strip() or "world"
        log.log(Level.INFO, f"greeting {name} from {me.agent_id} in ring {me.ring}")
        print("hello.py says hi on stdout")
        return f"Hello, {name}! (agent {me.agent_id}, ring {me.ring}, from Python)"
