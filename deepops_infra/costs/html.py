"""The HTML cost report: one self-contained file (inline CSS and SVG, no script, no network).

Written for someone who never ran the tool: every chart has a title, axis labels and a legend,
every table says what its columns mean, and the rules behind the numbers are on the page.
"""

from datetime import datetime
from decimal import Decimal
from html import escape

from deepops_infra.costs.report import Report, Row
from deepops_infra.pricing import dollars

PALETTE = ["#2f6fde", "#e8772e", "#2aa876", "#c2417e", "#8a5cd6", "#b8a22e", "#2ba6c4", "#d94a4a", "#6b7a8f", "#9c6b3c"]
OTHER = "#b0b7c3"
CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1d2430;margin:0;
  background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:28px 32px 48px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:4px 0 8px}
.sub{color:#5b6577;margin:0 0 18px}
.cards{display:flex;gap:14px;flex-wrap:wrap;margin:18px 0}
.card{background:#fff;border:1px solid #dfe3ea;border-radius:8px;padding:12px 16px;min-width:150px}
.card b{display:block;font-size:22px}.card span{color:#5b6577;font-size:13px}
section{background:#fff;border:1px solid #dfe3ea;border-radius:8px;padding:14px 18px;margin:14px 0}
table{border-collapse:collapse;width:100%;font-size:14px}
th,td{padding:6px 10px;border-bottom:1px solid #e7eaf0;text-align:left}
th{background:#f0f2f6;font-weight:600}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tr.total td{font-weight:700;border-top:2px solid #1d2430}
.legend{display:flex;flex-wrap:wrap;gap:6px 16px;margin:6px 0 0;font-size:13px}
.legend i{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:5px;vertical-align:-1px}
.note{color:#5b6577;font-size:13px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;font-size:14px}dt{font-weight:600}
svg text{font-family:inherit}
"""


def _money(value: Decimal) -> str:
    return dollars(value)


def _num(value: Decimal, places: int = 1) -> str:
    return f"{value:,.{places}f}"


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def spend_over_time(report: Report, width: int = 1100, height: int = 320) -> str:
    """Stacked daily bars per team (the top 9 teams by spend; the rest as `other`)."""
    series = report.series
    totals: dict[str, Decimal] = {}
    for _, day in series:
        for team, amount in day.items():
            totals[team] = totals.get(team, Decimal(0)) + amount
    teams = [t for t, _ in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))]
    shown, rest = teams[:9], teams[9:]
    colors = {t: PALETTE[i % len(PALETTE)] for i, t in enumerate(shown)}
    left, right, top, bottom = 70, 10, 14, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    day_totals = [float(sum(day.values(), Decimal(0))) for _, day in series]
    ymax = _nice_max(max(day_totals, default=0))
    n = max(len(series), 1)
    slot = plot_w / n
    bar_w = max(slot * 0.78, 1)
    parts = [
        f'<svg id="chart-spend" role="img" aria-labelledby="spend-title" viewBox="0 0 {width} {height}" '
        f'width="100%" xmlns="http://www.w3.org/2000/svg"><title id="spend-title">Spend per day by team, USD</title>'
    ]
    for i in range(5):
        value = ymax * i / 4
        y = top + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e6ec"/>')
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="12" fill="#5b6577">${value:,.0f}</text>'
        )
    for i, (day, amounts) in enumerate(series):
        x = left + slot * i + (slot - bar_w) / 2
        y = top + plot_h
        stack = [(t, amounts.get(t, Decimal(0)), colors[t]) for t in shown]
        if rest:
            stack.append(("other", sum((amounts.get(t, Decimal(0)) for t in rest), Decimal(0)), OTHER))
        for team, amount, color in stack:
            if amount <= 0:
                continue
            h = plot_h * float(amount) / ymax
            y -= h
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" fill="{color}">'
                f"<title>{escape(team)} {day:%Y-%m-%d}: {_money(amount)}</title></rect>"
            )
        if n <= 16 or i % max(n // 10, 1) == 0:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h + 16}" text-anchor="middle" font-size="11" '
                f'fill="#5b6577">{day:%m-%d}</text>'
            )
    parts.append(
        f'<text x="{left + plot_w / 2}" y="{height - 6}" text-anchor="middle" font-size="12" '
        f'fill="#5b6577">day (UTC)</text>'
    )
    parts.append(
        f'<text x="14" y="{top + plot_h / 2}" text-anchor="middle" font-size="12" fill="#5b6577" '
        f'transform="rotate(-90 14 {top + plot_h / 2})">USD per day</text>'
    )
    parts.append("</svg>")
    legend = [(t, colors[t]) for t in shown] + ([("other teams", OTHER)] if rest else [])
    parts.append(_legend(legend))
    return "".join(parts)


def _legend(items: list[tuple[str, str]]) -> str:
    return (
        '<div class="legend">'
        + "".join(f'<span><i style="background:{c}"></i>{escape(t)}</span>' for t, c in items)
        + "</div>"
    )


def hbars(chart_id: str, title: str, items: list[tuple[str, Decimal, Decimal]], labels: tuple[str, str]) -> str:
    """Horizontal bars: the whole amount, with the part of it shaded (idle) drawn over it."""
    width, row_h, left, right = 1100, 26, 250, 150
    height = row_h * max(len(items), 1) + 36
    vmax = _nice_max(float(max((a for _, a, _ in items), default=Decimal(0))))
    plot_w = width - left - right
    parts = [
        f'<svg id="{chart_id}" role="img" viewBox="0 0 {width} {height}" width="100%" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
    ]
    for i, (name, whole, part) in enumerate(items):
        y = 8 + i * row_h
        w = plot_w * float(whole) / vmax
        wp = plot_w * float(part) / vmax
        parts.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end" font-size="13">{escape(name)}</text>')
        parts.append(
            f'<rect class="bar" x="{left}" y="{y + 2}" width="{w:.1f}" height="{row_h - 8}" fill="#2f6fde">'
            f"<title>{escape(name)}: {_money(whole)}</title></rect>"
        )
        if part > 0:
            parts.append(
                f'<rect class="bar idle" x="{left}" y="{y + 2}" width="{wp:.1f}" height="{row_h - 8}" '
                f'fill="#e8772e"><title>{escape(name)} idle: {_money(part)}</title></rect>'
            )
        parts.append(
            f'<text x="{left + w + 6:.1f}" y="{y + 15}" font-size="12" fill="#37404f">{_money(whole)}'
            f"{f' ({_money(part)} idle)' if part > 0 else ''}</text>"
        )
    axis_y = 8 + len(items) * row_h + 14
    parts.append(f'<text x="{left}" y="{axis_y}" font-size="12" fill="#5b6577">$0</text>')
    parts.append(
        f'<text x="{left + plot_w}" y="{axis_y}" text-anchor="end" font-size="12" fill="#5b6577">'
        f"${vmax:,.0f}</text></svg>"
    )
    parts.append(_legend([(labels[0], "#2f6fde"), (labels[1], "#e8772e")]))
    return "".join(parts)


def _table(report: Report) -> str:
    forecast = report.forecast_to is not None
    head = [escape(n.capitalize()) for n in report.by] + [
        "Cost",
        "GPU-hours",
        "Idle GPU-hours",
        "Idle cost",
        "Machines",
        "Running now",
        "Burn rate",
    ]
    if forecast:
        head.append(f"Forecast to {report.forecast_to:%b %d}")
    numeric = len(report.by)
    out = ['<table id="summary"><thead><tr>']
    out += [f'<th class="{"n" if i >= numeric else ""}">{h}</th>' for i, h in enumerate(head)]
    out.append("</tr></thead><tbody>")

    def cells(row: Row, keys: list[str], css: str = "") -> str:
        values = [
            _money(row.cost),
            _num(row.gpu_hours),
            _num(row.idle_gpu_hours),
            _money(row.idle_cost),
            str(row.machines),
            str(row.running),
            f"{_money(row.burn_rate)}/h" if row.running else "-",
        ]
        if forecast:
            values.append(_money(row.forecast))
        tds = [f"<td>{escape(k)}</td>" for k in keys] + [f'<td class="n">{v}</td>' for v in values]
        return f'<tr class="{css}">' + "".join(tds) + "</tr>"

    for row in report.rows:
        out.append(cells(row, [row.keys[n] for n in report.by]))
    out.append(cells(report.total, ["Total"] + [""] * (len(report.by) - 1) if report.by else [], "total"))
    out.append("</tbody></table>")
    return "".join(out)


def _top_table(report: Report) -> str:
    rows = "".join(
        f"<tr><td>{escape(m['machine'])}</td><td>{escape(m['owner'])}</td><td>{escape(m['team'])}</td>"
        f'<td>{escape(m["project"])}</td><td>{escape(m["gpus"])}</td><td class="n">{_money(m["cost"])}</td>'
        f'<td class="n">{_money(m["idle_cost"])}</td><td>{"running" if m["running"] else "ended"}</td></tr>'
        for m in report.top_machines
    )
    return (
        '<table id="top-machines"><thead><tr><th>Machine</th><th>Owner</th><th>Team</th><th>Project</th>'
        '<th>GPUs</th><th class="n">Cost</th><th class="n">Idle cost</th><th>State</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>"
    )


def render_html(report: Report) -> str:
    period, total = report.period, report.total
    idle_share = (total.idle_micro * 100 / total.cost_micro) if total.cost_micro else 0
    end_shown = min(period.end, report.generated_at)
    cards = [
        (_money(total.cost), "total cost"),
        (_num(total.gpu_hours), "GPU-hours"),
        (f"{_money(total.idle_cost)} ({idle_share:.0f}%)", "spent while idle"),
        (str(total.machines), "machines"),
    ]
    if report.forecast_to:
        cards.append((_money(total.forecast), f"forecast to {report.forecast_to:%b %d}"))
    top = [(m["machine"] + " · " + m["owner"], m["cost"], m["idle_cost"]) for m in report.top_machines]
    idle = [(r.keys["team"], r.cost, r.idle_cost) for r in report.idle_by_team if r.cost_micro]
    by = ", ".join(report.by) or "nothing"
    body = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>GPU machine costs {escape(period.label)}</title><style>{CSS}</style></head>
<body><main>
<h1>GPU machine costs, {escape(period.label)}</h1>
<p class="sub">From {period.start:%Y-%m-%d %H:%M} to {end_shown:%Y-%m-%d %H:%M} UTC · generated
{_when(report.generated_at)} by <code>deepops cost</code> · amounts in US dollars at the prices fixed when each
machine started</p>
<div class="cards">{"".join(f'<div class="card"><b>{v}</b><span>{escape(k)}</span></div>' for v, k in cards)}</div>
<section><h2>Spend over time, by team</h2>
<p class="note">What each team's machines cost on each day (UTC). A machine running across midnight counts on
both days.</p>
{spend_over_time(report)}</section>
<section><h2>Summary by {escape(by)}</h2>{_table(report)}
<p class="note"><b>GPU-hours</b>: hours x GPUs. <b>Idle</b>: time the machine's own agent reported no GPU or CPU
activity; idle cost is the machine's full hourly price for that time. <b>Burn rate</b>: what the machines running
now cost per hour. <b>Forecast</b>: spend so far plus running machines until the end of the month or their expiry,
whichever comes first.</p></section>
<section><h2>Top machines by cost</h2>
{hbars("chart-top", "Top machines by cost, USD", top, ("cost", "of which idle"))}
{_top_table(report)}</section>
<section><h2>Idle waste by team</h2>
<p class="note">Orange is money spent on machines while they sat idle: the first place to save.</p>
{hbars("chart-idle", "Idle waste by team, USD", idle, ("cost", "spent while idle"))}</section>
<section><h2>How these numbers are made</h2><dl>
<dt>Start and end</dt><dd>A machine costs from the moment its resources exist until their removal is confirmed.</dd>
<dt>Price</dt><dd>The hourly price fixed at launch (instance or GPU-hours plus disk; spot at its launch price;
on-prem at the host's rates). Prices are never changed afterwards; extending a machine changes nothing already
recorded.</dd>
<dt>Failed launches</dt><dd>Cost only the time their resources existed.</dd>
<dt>Periods</dt><dd>All times are UTC; a machine running across the start or end of the period counts only
the part inside it.</dd>
<dt>Rounding</dt><dd>Each stretch of usage is priced to the micro-dollar (half up) and summed; pages show cents.</dd>
</dl></section>
</main></body></html>
"""
    return body


def _when(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M UTC")
