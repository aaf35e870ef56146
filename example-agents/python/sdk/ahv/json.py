"""The JSON convention for input and answers (the Rust SDK's `json` feature).

`run` takes and returns text; an agent that wants structure takes a JSON
document as its input and answers with one, and a failure stays a plain
message. `input` parses the input, `answer` writes the answer (compact,
UTF-8, as serde_json writes it). `@ahv.agent(json=True)` uses both.
"""

import json as _json

from .errors import Failure


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def input(text: str):
    """Parses `text` as a JSON document (an object becomes a dict).

    Raises `Failure("input is not the JSON expected: <reason, line, column>")`.
    """
    try:
        value = _json.loads(text, parse_constant=_no_constant)
        # serde_json refuses lone surrogates (`"\\ud800"`); so does this, so
        # that no text the host cannot take reaches an answer or a call.
        _json.dumps(value, ensure_ascii=False).encode("utf-8")
        return value
    except ValueError as e:
        raise Failure(f"input is not the JSON expected: {e}") from None


def answer(value) -> str:
    """Writes `value` as the agent's JSON answer.

    Raises `Failure("the answer cannot be written as JSON: <reason>")`.
    """
    try:
        return _json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise Failure(f"the answer cannot be written as JSON: {e}") from None
