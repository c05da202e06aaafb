"""`deepops users`: the team server's users, their roles and access (it-admin).

With DEEPOPS_SERVER set the commands go through the server (it-admin token); without it they work
on the local ledger (IT on the server's machine). Every change is written to the audit log."""

from collections.abc import Callable
from typing import Annotated, Any

import typer

from deepops_infra.cli.common import info, open_ledger, print_json, print_table, settings

app = typer.Typer(help="Users of the team server: list them, change a role or team, disable or enable one.")

Name = Annotated[str, typer.Argument(metavar="USER", help="The user's name.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@app.command("ls")
def ls(json_out: Json = False) -> None:
    """List users with their team, role, state, live tokens and last use."""
    from deepops_infra.client import Client, server_url

    if server_url():
        rows = Client.from_env().call("GET", "/users")
    else:
        from deepops_infra.ledger import store
        from deepops_infra.server import accounts

        with open_ledger(settings(), create=False).read() as session:
            rows = accounts.list_users(session, store.now())
    if json_out:
        print_json(rows)
        return
    print_table(
        ["USER", "TEAM", "ROLE", "STATE", "TOKENS", "LAST USED"],
        [
            [
                r["name"],
                r["team"],
                r["role"],
                "disabled" if r["disabled"] else "active",
                str(r["active_tokens"]),
                r["last_used_at"] or "never",
            ]
            for r in rows
        ],
    )


def _change(name: str, method: str, path: str, body: Any, action: str, act: Callable[[Any], Any]) -> dict[str, Any]:
    """One change, through the server or on the local ledger with its audit entry."""
    from urllib.parse import quote

    from deepops_infra.client import Client, server_url
    from deepops_infra.request import check_label

    check_label("user", name)
    if server_url():
        return Client.from_env().call(method, f"/users/{quote(name, safe='')}/{path}", body)
    from deepops_infra.server import accounts

    with open_ledger(settings()).write() as session:
        done = act(session)
        command = action.replace("_", " ", 1).replace("_", "-")  # users_set_role: `users set-role`
        accounts.record_local(session, command, action, name, done.detail)
    return done.user | {"change": done.detail}


def _report(out: dict[str, Any], json_out: bool) -> None:
    if json_out:
        print_json(out)
        return
    state = "disabled" if out["disabled"] else "active"
    info(f"{out['name']}: {out['change']} (now {out['role']}, team {out['team']}, {state})")


@app.command("set-role")
def set_role(
    name: Name,
    role: Annotated[str, typer.Argument(metavar="ROLE", help="member, team-admin, it-admin or finance.")],
    json_out: Json = False,
) -> None:
    """Change a user's role; every token of theirs carries the new role at once."""
    from deepops_infra.server import accounts, identity

    identity.check_role(role)
    out = _change(
        name, "PUT", "role", {"role": role}, "users_set_role", lambda s: accounts.set_role(s, name, role, by="")
    )
    _report(out, json_out)


@app.command("set-team")
def set_team(
    name: Name,
    team: Annotated[str, typer.Argument(metavar="TEAM", help="The user's new team.")],
    json_out: Json = False,
) -> None:
    """Move a user to another team (their machines keep the team they were requested for)."""
    from deepops_infra.request import check_label
    from deepops_infra.server import accounts

    check_label("team", team)
    out = _change(name, "PUT", "team", {"team": team}, "users_set_team", lambda s: accounts.set_team(s, name, team))
    _report(out, json_out)


@app.command("disable")
def disable(name: Name, json_out: Json = False) -> None:
    """Refuse every token of a user at once (their machines are left as they are)."""
    from deepops_infra.server import accounts

    out = _change(name, "POST", "disable", None, "users_disable", lambda s: accounts.set_disabled(s, name, True, by=""))
    _report(out, json_out)


@app.command("enable")
def enable(name: Name, json_out: Json = False) -> None:
    """Let a disabled user's live tokens in again."""
    from deepops_infra.server import accounts

    out = _change(name, "POST", "enable", None, "users_enable", lambda s: accounts.set_disabled(s, name, False, by=""))
    _report(out, json_out)
