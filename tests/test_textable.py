"""Plain-text tables (deepops_infra/textable.py): the layout rich's borderless table prints."""

import io

import pytest

from deepops_infra.textable import cell_width, render


def rich_lines(columns: list[str], rows: list[list[str]], title: str | None = None) -> list[str]:
    """What print_table printed through rich before (piped: width 250, bold header, no box)."""
    from rich.console import Console
    from rich.table import Table

    out = io.StringIO()
    console = Console(file=out, width=250, highlight=False, force_terminal=False)
    table = Table(title=title, box=None, header_style="bold", pad_edge=False)
    for column in columns:
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    return out.getvalue().splitlines()


@pytest.mark.parametrize(
    ("columns", "rows", "title"),
    [
        (["ID", "NAME", "$/H"], [["m-1", "exp-0", "$17.20/h"], ["m-22222222", "", "-"]], None),
        (["KIND", "BUDGET"], [["team", "$1,000.00"]], "Budgets 2026-10"),
        (["NAME", "OWNER"], [["漢字", "é"], ["x", "bob"]], None),
    ],
)
def test_the_same_layout_as_rich(columns: list[str], rows: list[list[str]], title: str | None) -> None:
    assert render(columns, rows, title) == rich_lines(columns, rows, title)


def test_wide_characters_take_two_columns() -> None:
    assert cell_width("漢字") == 4 and cell_width("é") == 1 and cell_width("abc") == 3
