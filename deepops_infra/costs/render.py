"""Report output: a terminal table, CSV for spreadsheets, JSON; HTML lives in costs/html.py."""

import csv
import io
import json

from deepops_infra.costs.report import Report, Row
from deepops_infra.money import hours, money, rate

COLUMNS = ["cost", "gpu_hours", "idle_gpu_hours", "idle_cost", "machines", "running", "burn_rate_per_hour"]


def to_json(report: Report) -> str:
    return json.dumps(report.to_json(), indent=2) + "\n"


def to_csv(report: Report) -> str:
    """One header row; numbers without units or thousands separators (USD, hours)."""
    forecast = report.forecast_to is not None
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = [*report.columns, *COLUMNS, *(["forecast"] if forecast else [])]
    writer.writerow(header)
    for row in report.rows:
        writer.writerow(_csv_row(report, row, forecast))
    return out.getvalue()


def _csv_row(report: Report, row: Row, forecast: bool) -> list[str]:
    values = [
        *(row.keys.get(name, "") for name in report.columns),
        f"{row.cost:.6f}",
        f"{row.gpu_hours:.6f}",
        f"{row.idle_gpu_hours:.6f}",
        f"{row.idle_cost:.6f}",
        str(row.machines),
        str(row.running),
        f"{row.burn_rate:.6f}",
    ]
    if forecast:
        values.append(f"{row.forecast:.6f}")
    return values


def table_title(report: Report) -> str:
    shared = ", idle cost shared in proportion to active cost" if report.idle == "share" else ""
    return f"Costs {report.period.label} (UTC), USD at launch prices{shared}"


def table_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    forecast = report.forecast_to is not None
    columns = [name.upper() for name in report.columns] + [
        "COST",
        "GPU-H",
        "IDLE GPU-H",
        "IDLE COST",
        "MACHINES",
        "RUNNING",
        "BURN RATE",
    ]
    if forecast:
        columns.append(f"FORECAST {report.forecast_to:%m-%d}")

    def cells(row: Row, keys: list[str]) -> list[str]:
        out = [
            *keys,
            money(row.cost),
            hours(row.gpu_hours),
            hours(row.idle_gpu_hours),
            money(row.idle_cost),
            f"{row.machines:,}",
            f"{row.running:,}",
            rate(row.burn_rate) if row.running else "-",
        ]
        if forecast:
            out.append(money(row.forecast))
        return out

    rows = [cells(r, [r.keys[n] for n in report.columns]) for r in report.rows]
    if report.by:
        rows.append(cells(report.total, ["TOTAL"] + [""] * (len(report.columns) - 1)))
    else:
        rows = [cells(report.total, [])]
    return columns, rows
