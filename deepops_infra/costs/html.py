"""The HTML cost report: one self-contained file (inline CSS and SVG, no script, no network).

Written for someone who never ran the tool: every chart has a title, axis labels and a legend,
every table says what its columns mean, and the rules behind the numbers are on the page.
"""

from datetime import datetime
from decimal import Decimal
from html import escape

from deepops_infra.costs.charts import IDLE, OTHER, team_colors
from deepops_infra.costs.report import Report, Row
from deepops_infra.money import axis, hours, money, rate

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
tr.over td{background:#fdecec}tr.over td:first-child{box-shadow:inset 4px 0 #d62f2f}
.flag{color:#b3261e;font-weight:600;font-size:12px;margin-left:6px}
.legend{display:flex;flex-wrap:wrap;gap:6px 16px;margin:6px 0 0;font-size:13px}
.legend i{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:5px;vertical-align:-1px}
.note{color:#5b6577;font-size:13px}
.empty{color:#5b6577;font-style:italic;padding:18px 0;margin:0}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;font-size:14px}dt{font-weight:600}
svg text{font-family:inherit}
"""
CHAR_W = 7.2  # px per character of a 12px label (digits and `$,.`), for margins that fit the labels
MUTED = "#5b6577"


def _num(value: Decimal, places: int = 1) -> str:
    return hours(value, places)


def _empty(what: str) -> str:
    return f'<p class="empty">{escape(what)}</p>'


def _text(x: float, y: float, label: str, anchor: str = "end", size: int = 12, fill: str = MUTED, css: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    return (
        f'<text{cls} x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" fill="{fill}">'
        f"{escape(label)}</text>"
    )


def spend_over_time(report: Report, width: int = 1100, height: int = 320) -> str:
    """Stacked daily bars per team (the top 8 teams by spend; the rest as `other teams`)."""
    series = report.series
    totals: dict[str, Decimal] = {}
    for _, day in series:
        for team, amount in day.items():
            totals[team] = totals.get(team, Decimal(0)) + amount
    if not any(v > 0 for v in totals.values()):
        return _empty("No spend in this period: no machine ran in it.")
    teams = [t for t, _ in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))]
    shown, rest = teams[:8], teams[8:]
    colors = team_colors(shown)
    day_totals = [sum(day.values(), Decimal(0)) for _, day in series]
    ticks = axis(max(day_totals, default=Decimal(0)))
    ymax = float(ticks[-1][0])
    left = 30 + CHAR_W * max(len(label) for _, label in ticks)
    right, top, bottom = 10, 14, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    n = max(len(series), 1)
    slot = plot_w / n
    bar_w = max(slot * 0.78, 1)
    parts = [
        f'<svg id="chart-spend" role="img" aria-labelledby="spend-title" viewBox="0 0 {width} {height}" '
        f'width="100%" xmlns="http://www.w3.org/2000/svg"><title id="spend-title">Spend per day by team, USD</title>'
    ]
    for value, label in ticks:
        y = top + plot_h - plot_h * float(value) / ymax
        parts.append(f'<line x1="{left:.1f}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e6ec"/>')
        parts.append(_text(left - 6, y + 4, label, css="tick"))
    for i, (day, amounts) in enumerate(series):
        x = left + slot * i + (slot - bar_w) / 2
        y = top + plot_h
        stack = [(t, amounts.get(t, Decimal(0)), colors[t]) for t in shown]
        if rest:
            stack.append(("other teams", sum((amounts.get(t, Decimal(0)) for t in rest), Decimal(0)), OTHER))
        for team, amount, color in stack:
            if amount <= 0:
                continue
            h = plot_h * float(amount) / ymax
            y -= h
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" fill="{color}">'
                f"<title>{escape(team)} {day:%Y-%m-%d}: {money(amount)}</title></rect>"
            )
        if n <= 16 or i % max(n // 10, 1) == 0:
            parts.append(_text(x + bar_w / 2, top + plot_h + 16, f"{day:%m-%d}", "middle", 11))
    parts.append(_text(left + plot_w / 2, height - 6, "day (UTC)", "middle"))
    parts.append(
        f'<text x="14" y="{top + plot_h / 2}" text-anchor="middle" font-size="12" fill="{MUTED}" '
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


def _clip(name: str, chars: int = 32) -> str:
    return name if len(name) <= chars else name[: chars - 1] + "…"


def hbars(chart_id: str, title: str, items: list[tuple[str, str, Decimal, Decimal]], empty: str) -> str:
    """Horizontal bars, one per (name, team, whole, idle part): the whole in the team's colour,
    the idle part drawn over it in the idle colour, a round-valued axis below."""
    if not items or not any(whole > 0 for _, _, whole, _ in items):
        return _empty(empty)
    colors = team_colors(team for _, team, _, _ in items)
    width, row_h = 1100, 26
    names = [_clip(name) for name, _, _, _ in items]
    values = [money(w) + (f" ({money(p)} idle)" if p > 0 else "") for _, _, w, p in items]
    left = 16 + CHAR_W * 1.1 * max(len(n) for n in names)
    right = 12 + CHAR_W * max(len(v) for v in values)
    ticks = axis(max(whole for _, _, whole, _ in items))
    vmax = float(ticks[-1][0])
    plot_w = width - left - right
    axis_y = 8 + len(items) * row_h
    height = axis_y + 40
    parts = [
        f'<svg id="{chart_id}" role="img" viewBox="0 0 {width} {height}" width="100%" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
    ]
    for value, label in ticks:
        x = left + plot_w * float(value) / vmax
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="4" y2="{axis_y:.1f}" stroke="#e3e6ec"/>')
        parts.append(_text(x, axis_y + 16, label, "middle", css="tick"))
    for i, ((name, team, whole, part), short, value) in enumerate(zip(items, names, values, strict=True)):
        y = 8 + i * row_h
        w = plot_w * float(whole) / vmax
        parts.append(
            f'<text x="{left - 8:.1f}" y="{y + 15}" text-anchor="end" font-size="13"><title>{escape(name)}</title>'
            f"{escape(short)}</text>"
        )
        parts.append(
            f'<rect class="bar" x="{left:.1f}" y="{y + 2}" width="{w:.1f}" height="{row_h - 8}" '
            f'fill="{colors[team]}"><title>{escape(name)}: {money(whole)}</title></rect>'
        )
        if part > 0:
            wp = plot_w * float(part) / vmax
            parts.append(
                f'<rect class="bar idle" x="{left:.1f}" y="{y + 2}" width="{wp:.1f}" height="{row_h - 8}" '
                f'fill="{IDLE}"><title>{escape(name)} idle: {money(part)}</title></rect>'
            )
        parts.append(_text(left + w + 6, y + 15, value, "start", fill="#37404f"))
    parts.append(_text(left + plot_w / 2, axis_y + 34, "USD", "middle"))
    parts.append("</svg>")
    legend = [(f"team {t}", c) for t, c in sorted(colors.items())] + [("spent while idle", IDLE)]
    parts.append(_legend(legend))
    return "".join(parts)


def _table(report: Report) -> str:
    forecast = report.forecast_to is not None
    head = [escape(n.capitalize()) for n in report.columns] + [
        "Cost",
        "GPU-hours",
        "Idle GPU-hours",
        "Shared idle cost" if report.idle == "share" else "Idle cost",
        "Machines",
        "Running now",
        "Burn rate",
    ]
    if forecast:
        head.append(f"Forecast to {report.forecast_to:%b %d}")
    numeric = len(report.columns)
    out = ['<table id="summary"><thead><tr>']
    out += [f'<th class="{"n" if i >= numeric else ""}">{h}</th>' for i, h in enumerate(head)]
    out.append("</tr></thead><tbody>")

    def cells(row: Row, keys: list[str], css: str = "") -> str:
        values = [
            money(row.cost),
            _num(row.gpu_hours),
            _num(row.idle_gpu_hours),
            money(row.idle_cost),
            f"{row.machines:,}",
            f"{row.running:,}",
            rate(row.burn_rate) if row.running else "-",
        ]
        if forecast:
            values.append(money(row.forecast))
        budget = report.over_budget(row) if keys and not css else None
        flag = f'<span class="flag">over its {money(budget)} budget</span>' if budget is not None else ""
        tds = [f"<td>{escape(k)}{flag if i == 0 else ''}</td>" for i, k in enumerate(keys)]
        tds += [f'<td class="n">{v}</td>' for v in values]
        css = css or ("over" if budget is not None else "")
        return f'<tr class="{css}">' + "".join(tds) + "</tr>"

    for row in report.rows:
        out.append(cells(row, [row.keys[n] for n in report.columns]))
    out.append(cells(report.total, ["Total"] + [""] * (len(report.columns) - 1) if report.by else [], "total"))
    out.append("</tbody></table>")
    return "".join(out)


def _top_table(report: Report) -> str:
    rows = "".join(
        f"<tr><td>{escape(m['machine'])}</td><td>{escape(m['owner'])}</td><td>{escape(m['team'])}</td>"
        f'<td>{escape(m["project"])}</td><td>{escape(m["gpus"])}</td><td class="n">{money(m["cost"])}</td>'
        f'<td class="n">{money(m["idle_cost"])}</td><td>{"running" if m["running"] else "ended"}</td></tr>'
        for m in report.top_machines
    )
    return (
        '<table id="top-machines"><thead><tr><th>Machine</th><th>Owner</th><th>Team</th><th>Project</th>'
        '<th>GPUs</th><th class="n">Cost</th><th class="n">Idle cost</th><th>State</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>"
    )


def idle_rule(report: Report) -> str:
    """How idle cost is counted in this report (the `idle` option), for the rules section."""
    if report.idle == "share":
        return (
            f"Shared (<code>--idle share</code>): the idle cost of all rows ({money(report.total.idle_cost)}) is "
            "spread over the rows in proportion to their active (not idle) cost, as OpenCost's shareIdle does. "
            "A row's cost is its active cost plus its share, and its idle cost column is that share. Idle "
            "GPU-hours, the daily chart and the idle waste chart stay with the machines that sat idle."
        )
    return (
        "Separate (<code>--idle separate</code>, the default): a row's idle cost is what its own machines "
        "cost while idle; it is part of the row's cost. <code>--idle share</code> spreads it over all rows "
        "in proportion to their active cost instead."
    )


def render_html(report: Report) -> str:
    period, total = report.period, report.total
    idle_share = (total.idle_micro * 100 / total.cost_micro) if total.cost_micro else 0
    end_shown = min(period.end, report.generated_at)
    cards = [
        (money(total.cost), "total cost"),
        (_num(total.gpu_hours), "GPU-hours"),
        (f"{money(total.idle_cost)} ({idle_share:.0f}%)", "spent while idle"),
        (f"{total.machines:,}", "machines"),
    ]
    if report.forecast_to:
        cards.append((money(total.forecast), f"forecast to {report.forecast_to:%b %d}"))
    top = [(m["machine"] + " · " + m["owner"], m["team"], m["cost"], m["idle_cost"]) for m in report.top_machines]
    idle = [(r.keys["team"], r.keys["team"], r.cost, r.idle_cost) for r in report.idle_by_team if r.cost_micro]
    by = ", ".join(report.by) or "nothing"
    over = [r for r in report.rows if report.over_budget(r) is not None]
    budget_note = (
        f'<p class="note">Rows in red have reached their monthly budget ({len(over)} of {len(report.rows)}).</p>'
        if over
        else ""
    )
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
<section><h2>Summary by {escape(by)}</h2>{_table(report)}{budget_note}
<p class="note"><b>GPU-hours</b>: hours x GPUs. <b>Idle</b>: time the machine's own agent reported no GPU or CPU
activity; idle cost is the machine's full hourly price for that time. <b>Burn rate</b>: what the machines running
now cost per hour. <b>Forecast</b>: spend so far plus running machines until the end of the month or their expiry,
whichever comes first.</p></section>
<section><h2>Top machines by cost</h2>
{hbars("chart-top", "Top machines by cost, USD", top, "No machine cost anything in this period.")}
{_top_table(report)}</section>
<section><h2>Idle waste by team</h2>
<p class="note">Red is money spent on machines while they sat idle: the first place to save.</p>
{hbars("chart-idle", "Idle waste by team, USD", idle, "No spend in this period, so no idle waste.")}</section>
<section><h2>How these numbers are made</h2><dl>
<dt>Start and end</dt><dd>A machine costs from the moment its resources exist until their removal is confirmed.</dd>
<dt>Price</dt><dd>The hourly price fixed at launch (instance or GPU-hours plus disk; spot at its launch price;
on-prem at the host's rates). Prices are never changed afterwards; extending a machine changes nothing already
recorded.</dd>
<dt>Idle cost</dt><dd>{idle_rule(report)}</dd>
<dt>Failed launches</dt><dd>Cost only the time their resources existed.</dd>
<dt>Periods</dt><dd>All times are UTC; a machine running across the start or end of the period counts only
the part inside it.</dd>
<dt>Rounding</dt><dd>Each stretch of usage is priced to the micro-dollar (half up) and summed; pages show cents
(amounts under a dollar with two significant digits, so that small amounts never read as $0.00).</dd>
</dl></section>
</main></body></html>
"""
    return body


def _when(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M UTC")
