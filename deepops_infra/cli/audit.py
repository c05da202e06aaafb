"""`deepops audit`: read the audit log (every change through the team server, and the changes
`deepops users` and `deepops tokens` make on the local ledger), newest first."""

from typing import Annotated

import typer

from deepops_infra.cli.common import print_json, print_table


def audit(
    since: Annotated[
        str | None, typer.Option("--since", help="24h or 7d (that long ago), a date 2026-10-01 or a UTC time.")
    ] = None,
    user: Annotated[str | None, typer.Option("--user", help="Only what this user did.")] = None,
    action: Annotated[
        str | None, typer.Option("--action", help="Only actions whose name contains this, e.g. set_role, token.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="At most this many entries.")] = 100,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Who did what, when, from which address, and how it ended (it-admin through the server)."""
    from deepops_infra.client import Client, server_url
    from deepops_infra.ledger import store
    from deepops_infra.server import accounts

    start = accounts.parse_since(since, store.now()) if since else None  # checked before anything is asked
    if server_url():
        params = {"since": since, "user": user, "action": action, "limit": limit}
        rows = Client.from_env().call("GET", "/audit", params=params)
    else:
        from deepops_infra.cli.common import open_ledger, settings

        with open_ledger(settings(), create=False).read() as session:
            rows = accounts.read_audit(session, start, user, action, limit)
    if json_out:
        print_json(rows)
        return
    print_table(
        ["AT", "USER", "ROLE", "ACTION", "TARGET", "STATUS", "CLIENT", "DETAIL"],
        [
            [
                r["at"],
                r["actor"] or "-",
                r["role"] or "-",
                r["action"],
                r["target"] or "-",
                f"{r['status']} {r['outcome']}",
                r["client"] or "-",
                r["detail"] or "",
            ]
            for r in rows
        ],
    )
