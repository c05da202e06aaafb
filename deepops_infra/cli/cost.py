"""`deepops cost`: what machines cost (by owner, team, project, cloud, GPU, machine), budgets,
and reconciliation with the clouds' bills. Numbers come from the ledger's frozen prices."""

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from deepops_infra.cli.common import info, open_ledger, print_json, print_table, settings

app = typer.Typer(
    help="Costs from the ledger: reports, budgets, reconciliation with the cloud bill.\n\n"
    "Examples: `deepops cost --by team --month 2026-10 --format csv`, `deepops cost budgets`, "
    "`deepops cost reconcile --cloud aws --month 2026-10`.",
    invoke_without_command=True,
)

By = Annotated[
    list[str] | None,
    typer.Option(
        "--by", metavar="DIM", help="Group by owner, team, project, cloud, gpu or machine (repeat or comma-separate)."
    ),
]
Month = Annotated[
    str | None, typer.Option("--month", metavar="YYYY-MM", help="A UTC calendar month, YYYY-MM (default: this month).")
]
Since = Annotated[
    str | None, typer.Option("--since", metavar="TIME", help="Start, a date (2026-10-01) or UTC time; inclusive.")
]
Until = Annotated[
    str | None, typer.Option("--until", metavar="TIME", help="End, a date or UTC time; exclusive (default: now).")
]
Format = Annotated[str, typer.Option("--format", metavar="FORMAT", help="table, csv, json or html.")]
Output = Annotated[
    Path | None, typer.Option("--output", "-o", metavar="FILE", help="Write to this file instead of stdout.")
]
Idle = Annotated[
    str,
    typer.Option(
        "--idle",
        metavar="HOW",
        help="separate: each row's idle cost is its own machines' (default); share: all idle cost spread over "
        "the rows in proportion to their active cost (like OpenCost's shareIdle).",
    ),
]
FORMATS = ("table", "csv", "json", "html")


def _write(text: str, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(text)
        return
    output.write_text(text, encoding="utf-8")
    info(f"wrote {output}")


@app.callback()
def cost(
    ctx: typer.Context,
    by: By = None,
    month: Month = None,
    since: Since = None,
    until: Until = None,
    fmt: Format = "table",
    output: Output = None,
    idle: Idle = "separate",
) -> None:
    """Cost, GPU-hours, idle GPU-hours and idle cost, machines, and for running machines the
    burn rate and a forecast to the end of the month. Amounts in USD at the prices frozen at launch."""
    if ctx.invoked_subcommand is not None:
        return
    if os.environ.get("DEEPOPS_SERVER"):  # the team server does it (deepops_infra/client.py)
        from deepops_infra import client

        return client.cost(by, month, since, until, fmt, output, idle=idle)
    from datetime import UTC, datetime

    from deepops_infra.costs.period import Period
    from deepops_infra.costs.report import validate_by, validate_idle
    from deepops_infra.errors import UserError

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    groups = validate_by(by or ["team"])
    validate_idle(idle)
    period = Period.from_options(month, since, until, datetime.now(UTC))
    if output is not None and not output.parent.is_dir():
        raise UserError(f"-o {output}: the folder {output.parent} does not exist")

    from deepops_infra.costs import render
    from deepops_infra.costs.report import build

    s = settings()
    ledger = open_ledger(s, create=False)
    report = build(ledger, period, groups, details=fmt == "html", idle=idle)
    if fmt == "json":
        _write(render.to_json(report), output)
    elif fmt == "csv":
        _write(render.to_csv(report), output)
    elif fmt == "html":
        from deepops_infra.costs import budgets as budget_mod
        from deepops_infra.costs.html import render_html

        budget_mod.mark_budgets(report, budget_mod.load(s.config))
        _write(render_html(report), output)
    else:
        columns, rows = render.table_rows(report)
        title = render.table_title(report)
        if output is not None:
            import io

            from rich.console import Console
            from rich.table import Table

            buf = io.StringIO()
            table = Table(title=title, box=None, header_style="bold", pad_edge=False)
            for column in columns:
                table.add_column(column, no_wrap=True)
            for row in rows:
                table.add_row(*row)
            Console(file=buf, width=250, color_system=None).print(table)
            _write(buf.getvalue(), output)
        else:
            print_table(columns, rows, title=title)


@app.command("budgets")
def budgets(
    month: Month = None,
    alert: Annotated[
        bool, typer.Option("--alert/--no-alert", help="Send threshold alerts not sent yet (each once a month).")
    ] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Spend against the monthly budgets of teams and projects (config.yaml `budgets:`)."""
    from deepops_infra.cli.teammode import team_client
    from deepops_infra.money import money as dollars

    server = team_client()
    if server is not None:  # the server's ledger and budgets; it sends the alerts (its reaper)
        report = server.budgets(month)
    else:
        from deepops_infra.service.budgets import budget_report

        s = settings()
        report = budget_report(s, open_ledger(s, create=False), month, alert=alert)
    statuses, alerts = report.budgets, report.alerts
    if json_out:
        print_json(report.to_json())
        return
    if not statuses:
        info("no budgets configured (config.yaml `budgets:` with `teams:` and/or `projects:`)")
        return
    rows = [
        [
            st.kind,
            st.name,
            dollars(st.budget),
            dollars(st.spent),
            f"{st.percent:.1f}%",
            dollars(st.forecast),
            st.state,
        ]
        for st in statuses
    ]
    print_table(["KIND", "NAME", "BUDGET", "SPENT", "USED", "FORECAST", "STATE"], rows, title=f"Budgets {report.month}")
    for key, a in alerts.items():
        if a.delivered:
            info(f"alert sent: {key}")
        elif a.no_webhook:
            info(f"alert {key} {a.describe()}; set notify.webhook_url and a later run sends it")
        else:
            info(f"alert {key} {a.describe()}; tried again on the next run")


@app.command("reconcile")
def reconcile(
    cloud: Annotated[str, typer.Option("--cloud", help="aws, gcp or azure.")],
    month: Annotated[str, typer.Option("--month", help="The billing month, YYYY-MM (UTC).")],
    tolerance: Annotated[
        str, typer.Option("--tolerance", help="Differences up to this many USD per machine count as a match.")
    ] = "0.01",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Compare the ledger with the cloud's bill per machine (the `deepops-machine` cost-allocation tag)."""
    from decimal import Decimal, InvalidOperation

    from deepops_infra.costs.period import Period
    from deepops_infra.costs.reconcile import SOURCES, compare, source_for
    from deepops_infra.errors import UserError
    from deepops_infra.money import money as dollars

    if cloud not in SOURCES:
        raise UserError(f"--cloud {cloud!r}: use one of {', '.join(SOURCES)}")
    period = Period.month(month)
    try:
        tol = Decimal(tolerance)
    except InvalidOperation:
        raise UserError(f"--tolerance {tolerance!r}: give an amount in USD, e.g. 0.01") from None
    if tol < 0:
        raise UserError("--tolerance must be 0 or more")
    s = settings()
    source = source_for(cloud, s.config)
    ledger = open_ledger(s, create=False)
    result = compare(ledger, source, period, tol)
    if json_out:
        print_json(result.to_json())
        return
    rows = [
        [line.machine, dollars(line.ledger), dollars(line.bill), dollars(line.difference), line.status]
        for line in result.lines
    ]
    print_table(
        ["MACHINE", "LEDGER", "BILL", "DIFFERENCE", "STATUS"],
        rows,
        title=f"{cloud} {period.label}: ledger {dollars(result.ledger_total)}, bill {dollars(result.bill_total)}",
    )
    if result.untagged:
        info(f"not tagged with deepops-machine on the bill: {dollars(result.untagged)} (not deepops' machines)")
    if result.estimated:
        info("the bill for this month is still an estimate (the cloud has not finalized it)")
