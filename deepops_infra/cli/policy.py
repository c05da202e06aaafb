"""`deepops policy`: team policies. config.yaml's teams are IT's (edited by hand); the others live
in policy.yaml, written by these commands locally or, with DEEPOPS_SERVER set, by the team server
(it-admin)."""

from typing import Annotated, Any

import typer

from deepops_infra.cli.common import info, print_json, print_table, settings

app = typer.Typer(
    help="Team policies: what each team may request (config.yaml, and policy.yaml for teams set here).",
    no_args_is_help=True,
)
Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _client() -> Any:
    """The team server's client when DEEPOPS_SERVER is set, else None (work on the local files)."""
    from deepops_infra.client import Client, server_url

    return Client.from_env() if server_url() else None


def _team_path(team: str) -> str:
    from urllib.parse import quote

    return "/policy/teams/" + quote(team, safe="")


@app.command("ls")
def ls(json_out: Json = False) -> None:
    """Every team's effective policy and where it is defined."""
    client = _client()
    if client is not None:
        data = client.call("GET", "/policy/teams")
    else:
        from deepops_infra.policy_file import listing

        data = listing(settings())
    if json_out:
        print_json(data)
        return
    default = data["default"]
    rows = [("(default)", default["source"], default["policy"])]
    rows += [(t["team"], f"{t['source']}:{t['line']}", t["policy"]) for t in data["teams"]]
    print_table(
        ["TEAM", "DEFINED IN", "TARGETS", "GPU MODELS", "MAX GPUS", "MAX TTL", "DEFAULT TTL", "IDLE TIMEOUT"],
        [
            [
                name,
                source,
                ",".join(p["targets"]),
                ",".join(p["gpu_models"]),
                str(p["max_gpus_running"]),
                p["max_ttl"],
                p["default_ttl"],
                f"{p['default_idle_timeout']} (max {p['max_idle_timeout']})",
            ]
            for name, source, p in rows
        ],
        title=f"Team policies (set here: {data['policy_file']})",
    )


def _names(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


@app.command("set")
def set_(
    team: Annotated[str, typer.Argument(help="The team.")],
    max_gpus: Annotated[int | None, typer.Option("--max-gpus", help="GPUs the team holds at once.")] = None,
    max_ttl: Annotated[str | None, typer.Option("--max-ttl", help="A machine's whole lifetime, e.g. 3d.")] = None,
    default_ttl: Annotated[str | None, typer.Option("--default-ttl", help="When --ttl is not given.")] = None,
    targets: Annotated[str | None, typer.Option("--targets", help="Allowed clouds, e.g. onprem,aws.")] = None,
    gpu_models: Annotated[
        str | None, typer.Option("--gpu-models", help="Allowed GPU models, e.g. A100,H100 ('*': any).")
    ] = None,
    default_idle_timeout: Annotated[
        str | None, typer.Option("--default-idle-timeout", help="When --idle-timeout is not given.")
    ] = None,
    max_idle_timeout: Annotated[
        str | None, typer.Option("--max-idle-timeout", help="The longest --idle-timeout allowed.")
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Drop the team's other rules (default: keep them).")
    ] = False,
    json_out: Json = False,
) -> None:
    """Set rules of a team's policy in policy.yaml (rules not set inherit policy.default)."""
    from deepops_infra.errors import UserError

    given = {
        "targets": _names(targets),
        "gpu_models": _names(gpu_models),
        "max_gpus_running": max_gpus,
        "max_ttl": max_ttl,
        "default_ttl": default_ttl,
        "default_idle_timeout": default_idle_timeout,
        "max_idle_timeout": max_idle_timeout,
    }
    rules = {k: v for k, v in given.items() if v is not None}
    if not rules:
        raise UserError("give at least one rule, e.g. --max-gpus 4 (see `deepops policy set --help`)")
    client = _client()
    if client is not None:
        if not replace:
            teams = client.call("GET", "/policy/teams")["teams"]
            rules = next((t["rules"] or {} for t in teams if t["team"] == team), {}) | rules
        entry = client.call("PUT", _team_path(team), rules)
    else:
        from deepops_infra.policy_file import set_team

        entry = set_team(settings(), team, rules, merge=not replace)
    if json_out:
        print_json(entry)
        return
    written = ", ".join(f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in entry["rules"].items())
    info(f"team {team}: {written} (in {entry['file']})")


@app.command("rm")
def rm(
    team: Annotated[str, typer.Argument(help="The team.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Drop a team's policy from policy.yaml: the team falls back to policy.default."""
    import sys

    from deepops_infra.errors import UserError

    if not yes:
        if not sys.stdin.isatty():
            raise UserError("policy rm needs --yes when not run from a terminal")
        typer.confirm(f"Drop the policy of team {team}?", abort=True)
    client = _client()
    if client is not None:
        client.call("DELETE", _team_path(team))
    else:
        from deepops_infra.policy_file import remove_team

        remove_team(settings(), team)
    info(f"team {team} now follows the default policy")
