"""The `deepops` command. Only typer is imported here: every command loads what it needs."""

import sys

import typer

from deepops_infra.cli import audit as audit_cli
from deepops_infra.cli import catalog, cost, doctor, images, login, machines, policy, pool, reap, serve, validate
from deepops_infra.cli import connect as connect_cli
from deepops_infra.cli import jupyter as jupyter_cli
from deepops_infra.cli import users as users_cli
from deepops_infra.cli import work as work_cli
from deepops_infra.errors import DeepopsError

app = typer.Typer(
    name="deepops",
    help="Ephemeral GPU machines from pinned images, on the on-prem pool or the clouds.\n\n"
    "Start with `deepops up --gpus 0 --ttl 30m`, then `deepops ls`, `deepops ssh ID`, `deepops down ID`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
machines.register(app)
connect_cli.register(app)  # ssh, ssh-config
work_cli.register(app)  # exec, logs, jobs, sync
jupyter_cli.register(app)  # jupyter (and `up --jupyter`)
app.add_typer(pool.app, name="pool")
app.add_typer(policy.app, name="policy")
app.add_typer(images.app, name="images")
app.command(name="validate")(validate.validate)
app.command(name="doctor")(doctor.doctor)
app.command(name="reap")(reap.reap)
app.add_typer(catalog.app, name="catalog")
app.command(name="gpus")(catalog.gpus)
app.add_typer(cost.app, name="cost")
app.command(name="serve")(serve.serve)
app.command(name="login")(login.login)
app.add_typer(login.tokens_app, name="tokens")
app.add_typer(users_cli.app, name="users")
app.command(name="audit")(audit_cli.audit)


def _fail(message: str, code: int) -> None:
    sys.stderr.write(f"deepops: error: {message}\n")
    raise SystemExit(code)


def main() -> None:
    """Run the CLI; every error is one line on stderr (2: bad input, nothing changed; 1: failure)."""
    from deepops_infra.cli.common import refuse_empty_options
    from deepops_infra.cli.teammode import refuse_local_only

    try:
        result = refuse_local_only(refuse_empty_options(typer.main.get_command(app)))(standalone_mode=False)
    except DeepopsError as exc:
        _fail(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, exc.exit_code)
    except typer.Abort:
        _fail("aborted", 130)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except typer.TyperException as exc:  # click's usage errors, vendored by typer
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()  # type: ignore[attr-defined]
            raise SystemExit(0) from None
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        _fail(" ".join(message.split()) + hint, getattr(exc, "exit_code", 2))
    raise SystemExit(result if isinstance(result, int) else 0)
