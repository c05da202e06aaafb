"""Plain-text tables: the layout rich's borderless Table prints (columns two spaces apart, every cell
padded to its column, an optional title centred above), written directly. Rendering a 1,000-row
table through rich costs about ten times what listing the rows does; this costs a join per row."""

import unicodedata
from collections.abc import Sequence

GAP = "  "


def cell_width(text: str) -> int:
    """Terminal columns `text` takes: wide (East Asian) characters count two, combining marks none."""
    if text.isascii():
        return len(text)
    return sum(0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def render(columns: Sequence[str], rows: Sequence[Sequence[str]], title: str | None = None) -> list[str]:
    """The table's lines: the title (centred), the header, then one line per row (cells as given,
    a newline inside a cell read as a space)."""
    cells = [[str(c).replace("\n", " ") for c in row] for row in rows]
    widths = [cell_width(c) for c in columns]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], cell_width(cell))

    def line(values: Sequence[str]) -> str:
        return GAP.join(v + " " * (w - cell_width(v)) for v, w in zip(values, widths, strict=True))

    lines = [line(columns)] + [line(row) for row in cells]
    if title:
        total = sum(widths) + len(GAP) * (len(widths) - 1)
        lines.insert(0, title.center(total) if cell_width(title) < total else title)
    return lines
