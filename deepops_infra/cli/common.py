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


def open_ledger(s: "Settings") -> "Ledger":
    from deepops_infra.ledger.db import Ledger

    s.ensure_home()
    return Ledger(s.ledger_url)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def print_table(columns: list[str], rows: list[list[str]], title: str | None = None) -> None:
    from rich.console import Console
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
