#!/bin/sh
# Builds {{name}}.wasm for the `{{world}}` world (ring {{ring}}) with componentize-py
# {{componentize_py}} (`pip install componentize-py=={{componentize_py}}`), from src/ (the agent),
# sdk/ (the `ahv` package) and wit/ (the Agent Hypervisor's WIT).
set -eu
cd "$(dirname "$0")"
exec componentize-py -d wit -w {{world}} componentize app -p src -p sdk -o {{name}}.wasm
