"""Who am I: the calling agent's identity and ring (capability `context`, every ring)."""

from . import _wit


def whoami():
    """The agent's `agent_id`, `session_id`, `ring` and `trace_id` (a dataclass)."""
    return _wit.interface("context").whoami()


def ring() -> int:
    """The agent's current ring (0 root ... 3 sandbox)."""
    return _wit.interface("context").current_ring()
