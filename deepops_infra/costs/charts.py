"""Chart colours shared by the HTML report and the web page (static/money.js has the same rules).

A team's colour comes from its name (FNV-1a hash into PALETTE), so the same team has the same
colour in every chart, report and month; when two teams of one chart land on the same colour,
the later one in name order takes the next free one. Idle time and `other teams` have colours
of their own that no team gets.
"""

from collections.abc import Iterable

PALETTE = ("#2f6fde", "#e8772e", "#2aa876", "#c2417e", "#8a5cd6", "#b8a22e", "#2ba6c4", "#9c6b3c")
IDLE = "#d62f2f"  # money spent while idle: red, never a team's colour
OTHER = "#b0b7c3"  # teams past the ones a chart names


def fnv1a(text: str) -> int:
    """32-bit FNV-1a of the UTF-8 bytes (money.js computes the same)."""
    h = 0x811C9DC5
    for byte in text.encode("utf-8"):
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


def team_colors(teams: Iterable[str]) -> dict[str, str]:
    """A colour for each team (see the module docstring)."""
    out: dict[str, str] = {}
    taken: set[int] = set()
    for team in sorted(set(teams)):
        slot = fnv1a(team) % len(PALETTE)
        if len(taken) < len(PALETTE):
            while slot in taken:
                slot = (slot + 1) % len(PALETTE)
        taken.add(slot)
        out[team] = PALETTE[slot]
    return out
