"""`deepops login` (keep a team-server token, 0600) and `deepops tokens` (API tokens: create, list, revoke).

`deepops tokens` talks to the server when DEEPOPS_SERVER is set; without it, it works on the local
ledger, which is how IT creates the first it-admin token on the server's machine."""

import sys
from typing import Annotated

import typer

from deepops_infra.cli.common import info, open_ledger, print_json, print_table, settings

tokens_app = typer.Typer(help="API tokens of the team server: create (shown once), list, revoke.")


def login(
    server: Annotated[str | None, typer.Option("--server", help="Server URL (default: DEEPOPS_SERVER).")] = None,
    token_stdin: Annotated[bool, typer.Option("--token-stdin", help="Read the token from stdin.")] = False,
) -> None:
    """Check a token against the server and keep it under DEEPOPS_HOME (mode 0600)."""
    from deepops_infra.client import Client, save_credentials, server_url
    from deepops_infra.errors import UserError

    base = (server or server_url() or "").rstrip("/")
    if not base:
        raise UserError("give --server URL (or set DEEPOPS_SERVER)")
    if token_stdin or not sys.stdin.isatty():
        token = sys.stdin.readline().strip()
    else:
        token = typer.prompt("API token", hide_input=True).strip()
    if not token:
        raise UserError("no token given")
    me = Client(base, token).call("GET", "/me")
    path = save_credentials(base, token)
    info(f"logged in to {base} as {me['user']} ({me['role']}, team {me['team']}); token kept in {path}")
    if server_url() != base:
        info(f"set DEEPOPS_SERVER={base} for the commands to use it")


Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@tokens_app.command("create")
def create(
    user: Annotated[str | None, typer.Option("--user", help="Whose token (created when new).")] = None,
    team: Annotated[str | None, typer.Option("--team", help="The user's team (new users).")] = None,
    role: Annotated[
        str | None,
        typer.Option(
            "--role", help="member, team-admin, it-admin or finance (new users; `deepops users set-role` changes one)."
        ),
    ] = None,
    ttl: Annotated[str | None, typer.Option("--ttl", help="Lifetime, e.g. 90d (default: server.token_ttl).")] = None,
    label: Annotated[str | None, typer.Option("--label", help="What the token is for.")] = None,
    json_out: Json = False,
) -> None:
    """Create a token; it is printed once, only its hash is kept."""
    from deepops_infra.client import Client, server_url

    if server_url():
        body = {"user": user, "team": team, "role": role, "ttl": ttl, "label": label}
        out = Client.from_env().call("POST", "/tokens", {k: v for k, v in body.items() if v is not None})
    else:
        from deepops_infra.durations import parse_duration
        from deepops_infra.errors import UserError
        from deepops_infra.ledger import store
        from deepops_infra.server import identity
        from deepops_infra.server.settings import ServerSettings

        if not user:
            raise UserError("--user is needed without a server (the local ledger has no caller)")
        s = settings()
        life = parse_duration(ttl, "--ttl") if ttl else ServerSettings.load(s).token_ttl
        from deepops_infra.server.accounts import record_local

        with open_ledger(s).write() as session:
            row = identity.ensure_user(session, user, team, role)
            token, secret = identity.create_token(session, row, life, label)
            out = identity.token_json(token, store.now(), row) | {"token": secret}
            detail = f"for {row.name} ({row.role}, team {row.team})"
            record_local(session, "tokens create", "create_token", token.id, detail)
    if json_out:
        print_json(out)
        return
    sys.stdout.write(out["token"] + "\n")
    info(f"token {out['id']} for {out['user']} ({out['role']}, team {out['team']}), expires {out['expires_at']}")
    info("it is shown only now; keep it in a password manager or `deepops login --token-stdin`")


@tokens_app.command("ls")
def ls(json_out: Json = False) -> None:
    """List tokens (never the tokens themselves)."""
    from deepops_infra.client import Client, server_url

    if server_url():
        rows = Client.from_env().call("GET", "/tokens")
    else:
        from deepops_infra.ledger import store
        from deepops_infra.server import identity

        with open_ledger(settings(), create=False).read() as session:
            rows = [identity.token_json(t, store.now(), u) for t, u in identity.list_tokens(session)]
    if json_out:
        print_json(rows)
        return
    print_table(
        ["ID", "USER", "ROLE", "TEAM", "LABEL", "EXPIRES", "LAST USED", "STATE"],
        [
            [
                r["id"],
                r["user"],
                str(r.get("role") or "-"),
                str(r.get("team") or "-"),
                r["label"] or "",
                r["expires_at"],
                r.get("last_used_at") or "never",
                r["state"],
            ]
            for r in rows
        ],
    )


@tokens_app.command("revoke")
def revoke(token_id: Annotated[str, typer.Argument(metavar="ID", help="Token ID (t-...).")]) -> None:
    """Revoke a token at once."""
    from deepops_infra.client import Client, server_url

    if server_url():
        Client.from_env().call("DELETE", f"/tokens/{token_id}")
    else:
        from deepops_infra.ledger import store
        from deepops_infra.server import identity
        from deepops_infra.server.accounts import record_local

        with open_ledger(settings()).write() as session:
            row = identity.revoke_token(session, token_id, store.now())
            record_local(session, "tokens revoke", "revoke_token", token_id, f"of {row.user_name}")
    info(f"revoked {token_id}")
