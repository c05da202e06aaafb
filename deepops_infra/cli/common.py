"""Helpers every command shares: opening state, printing JSON and tables."""

import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deepops_infra.config import Settings
    from deepops_infra.ledger.db import Ledger


def settings() -> "Settings":
    from deepops_infra.config import Settings

    return Settings.from_env()


def open_ledger(s: "Settings", create: bool = True) -> "Ledger":
    """The ledger; with `create=False` (commands that only read, or refuse before writing) a
    missing one reads as empty and nothing is created until something is written."""
    from deepops_infra.ledger.db import Ledger

    if create:
        s.ensure_home()
    return Ledger(s.ledger_url, create=create)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def print_table(columns: list[str], rows: list[list[str]], title: str | None = None) -> None:
    import os
    import shutil

    from deepops_infra.textable import cell_width, render

    lines = render(columns, rows, title)
    terminal = sys.stdout.isatty()
    if not terminal or max(map(cell_width, lines)) <= shutil.get_terminal_size().columns:
        # Plain text: what rich prints for a table that fits (piped output is never cut), at a
        # fraction of its cost on long lists; only a terminal gets the bold header.
        if terminal and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb":
            header = len(lines) - len(rows) - 1
            lines[header] = f"\x1b[1m{lines[header]}\x1b[0m"
        sys.stdout.write("".join(line + "\n" for line in lines))
        return
    from rich.console import Console  # a terminal too narrow: rich wraps the long columns
    from rich.table import Table

    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = 250  # piped output: never truncate cells
    table = Table(title=title, box=None, header_style="bold", pad_edge=False)
    for column in columns:
        table.add_column(column, no_wrap=column not in ("DETAIL", "DESCRIPTION"))
    for row in rows:
        table.add_row(*row)
    console.print(table)


def info(message: str) -> None:
    sys.stderr.write(message + "\n")


def refuse_empty_options(command: Any) -> Any:
    """Make every option of `command` (a click command or group, as typer builds it) that takes a
    value refuse an empty one typed on the command line (`--ttl ''`, `--team=`): an unset shell
    variable or a stray `=` is a mistake, never "not given"."""
    for sub in getattr(command, "commands", {}).values():
        refuse_empty_options(sub)
    for param in command.params:
        if param.param_type_name == "option" and not param.is_flag and not param.count:
            param.handle_parse_result = _refusing_empty(param)
    return command


def _refusing_empty(param: Any) -> Any:
    import typer

    handle = param.handle_parse_result

    def check(ctx: Any, opts: Any, args: list[str]) -> Any:
        typed = opts.get(param.name)  # only what the command line gave
        values = typed if isinstance(typed, list | tuple) else (typed,)
        if any(isinstance(v, str) and not v.strip() for v in values):
            raise typer.BadParameter("the value is empty; give one, or leave the option out", ctx, param)
        return handle(ctx, opts, args)

    return check
