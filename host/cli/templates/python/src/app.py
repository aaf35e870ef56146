"""`{{name}}`: an Agent Hypervisor agent in Python, written for ring {{ring}} ({{world}}).

Build:  ./build.sh   (componentize-py {{componentize_py}}: `pip install componentize-py=={{componentize_py}}`)
Run:    ahv run {{name}}.wasm --ring {{ring}} --input Ada
Test:   python3 -m unittest discover -s tests   (the pure logic, under plain CPython)

`run` asks the host who it is (`context`), reads `greeting.txt` from its
directory if there is one (`vfs-read`; a missing file raises `ahv.NotFound`,
not a crash), logs a line (`log`) and answers. componentize-py imports every
interface of the world it builds for, and `ahv inspect` ranks the component
by its imports: build for the narrowest world the agent needs. The module
must not be named like the world's bindings (`wit_world`), hence `app.py`.
"""

import ahv
from ahv import context, log, vfs

from logic import answer


@ahv.agent
def run(input: str) -> str:
    me = context.whoami()
    try:
        greeting = vfs.read_text("greeting.txt").strip()
    except ahv.NotFound:
        greeting = "Hello"
    log.info(f"{me.agent_id} answering in ring {me.ring}")
    return answer(greeting, input, me.ring)
