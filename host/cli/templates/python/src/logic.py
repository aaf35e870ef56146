"""The agent's logic without host calls, so that plain CPython can test it."""


def answer(greeting: str, input: str, ring: int) -> str:
    """The answer to `input`, given the greeting and the ring."""
    name = input.strip() or "world"
    return f"{greeting}, {name}! (ring {ring})"
