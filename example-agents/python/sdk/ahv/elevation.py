"""Ask for a more privileged ring for a while (capability `elevation`, every ring)."""

from . import _wit


def request(ring: int, ttl_secs: int, justification: str, sponsorship: str | None = None):
    """Asks for `ring` for `ttl_secs` seconds; returns the grant (`ring`, `remaining_ms`).

    A refusal raises `Denied` naming the rule that refused.
    """
    return _wit.call("elevation", "request", ring, ttl_secs, justification, sponsorship)


def relinquish() -> bool:
    """Ends the elevation early; True if one was in force."""
    return _wit.call("elevation", "relinquish")


def current():
    """The elevation in force (`ring`, `remaining_ms`), or None."""
    return _wit.call("elevation", "current")
