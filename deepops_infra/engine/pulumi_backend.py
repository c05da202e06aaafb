"""The real backend: Pulumi's Automation API driving the `pulumi` CLI over stacks/<cloud>.

State goes to `file://$DEEPOPS_HOME/pulumi` unless `engine.backend_url` names another backend
(s3://, gs://, azblob://, https://api.pulumi.com). Secrets use the passphrase provider: the
passphrase comes from PULUMI_CONFIG_PASSPHRASE, or is generated once into
`$DEEPOPS_HOME/pulumi-passphrase` (0600); it travels to the CLI in its environment, never on a
command line. The program is copied into `$DEEPOPS_HOME/pulumi/work/<cloud>` so the per-stack
files Pulumi writes never land in the installed package.
"""

import contextlib
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepops_infra.engine.base import Backend, OnEvent, StackOutputs
from deepops_infra.errors import UserError
from deepops_infra.paths import private_dir, project_dir
from deepops_infra.yamlfile import FileError

if TYPE_CHECKING:
    from deepops_infra.config import Settings

INSTALL_HINT = (
    "the `pulumi` CLI is not installed (it creates and destroys cloud machines); install it with "
    "`curl -fsSL https://get.pulumi.com | sh` or `brew install pulumi/tap/pulumi`, then open a new shell"
)
PASSPHRASE_FILE = "pulumi-passphrase"


def pulumi_cli() -> str | None:
    found = shutil.which("pulumi") or shutil.which("pulumi", path=str(Path("~/.pulumi/bin").expanduser()))
    return found


def backend_url(settings: "Settings") -> str:
    section = settings.config.section("engine")
    url = section.get("backend_url")
    if url is None:
        return f"file://{settings.home / 'pulumi'}"
    if not isinstance(url, str) or "://" not in url:
        path = settings.config.path or settings.config_path
        raise FileError(path, section.line_of("backend_url"), "engine.backend_url must be a URL (file://, s3://, ...)")
    return url


def passphrase(settings: "Settings") -> str:
    """PULUMI_CONFIG_PASSPHRASE, else the installation's own, generated once and kept 0600."""
    env = os.environ.get("PULUMI_CONFIG_PASSPHRASE")
    if env:
        return env
    return read_or_create_secret(settings.ensure_home() / PASSPHRASE_FILE)


def read_or_create_secret(path: Path) -> str:
    """The secret in `path`, created once when missing. Any number of processes may race here and
    all get the same non-empty value: the secret is written and fsynced in a private temp file of
    the same folder, then hard-linked to its name, which fails for all but the first (they read
    the winner's). Only a complete file ever has the final name, so a reader never sees a partial
    one; a stack encrypted with a passphrase nobody kept could never be destroyed."""
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process linked its own first: everyone uses that one
        else:
            _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return _read_secret(path)


def _read_secret(path: Path) -> str:
    value = path.read_text().strip()
    if not value:
        raise UserError(
            f"{path} is empty (written by an interrupted older version?): if no Pulumi stack was created "
            "with it, delete the file and run again; else restore the passphrase into it"
        )
    return value


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def describe(event: Any) -> str | None:
    """One progress line for a Pulumi engine event, or None for the ones not worth a line."""
    if event.resource_pre_event is not None:
        meta = event.resource_pre_event.metadata
        if meta.type.startswith("pulumi:"):
            return None
        return f"{meta.op.value if hasattr(meta.op, 'value') else meta.op} {meta.type} {meta.urn.rsplit('::', 1)[-1]}"
    if event.res_op_failed_event is not None:
        meta = event.res_op_failed_event.metadata
        return f"failed {meta.type} {meta.urn.rsplit('::', 1)[-1]}"
    if event.diagnostic_event is not None and event.diagnostic_event.severity == "error":
        return " ".join(event.diagnostic_event.message.split())[:300]
    return None


class PulumiBackend(Backend):
    def __init__(self, settings: "Settings", cloud: str) -> None:
        self.settings = settings
        self.cloud = cloud
        self.project = f"deepops-{cloud}"
        self._stacks: dict[str, Any] = {}

    def check(self) -> None:
        if pulumi_cli() is None:
            raise UserError(INSTALL_HINT)

    @property
    def work_dir(self) -> Path:
        """A private copy of stacks/<cloud> that Pulumi may write its stack files into."""
        source = project_dir("stacks") / self.cloud
        work = private_dir(self.settings.home / "pulumi" / "work" / self.cloud)
        for item in source.iterdir():
            if (item.is_file() and not item.name.startswith("Pulumi.")) or item.name == "Pulumi.yaml":
                shutil.copy2(item, work / item.name)
        return work

    def _env(self) -> dict[str, str]:
        url = backend_url(self.settings)
        state = Path(url.removeprefix("file://"))
        if url.startswith("file://") and state == self.settings.home / "pulumi":
            private_dir(state)  # the embedded stack state: 0700 like all of $DEEPOPS_HOME
        elif url.startswith("file://"):
            state.mkdir(parents=True, exist_ok=True, mode=0o700)  # a folder IT named: made, never changed
        return {
            "PULUMI_BACKEND_URL": url,
            "PULUMI_CONFIG_PASSPHRASE": passphrase(self.settings),
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            # The program runs with this interpreter, which has pulumi and pulumi_aws installed.
            "PULUMI_PYTHON_CMD": sys.executable,
        }

    def _workspace(self) -> Any:
        from pulumi import automation as auto

        self.check()
        return auto.LocalWorkspace(work_dir=str(self.work_dir), env_vars=self._env(), secrets_provider="passphrase")

    def _stack(self, name: str, create: bool = False) -> Any:
        from pulumi import automation as auto

        if name not in self._stacks:
            ws = self._workspace()
            if create:
                self._stacks[name] = auto.Stack.create_or_select(name, ws)
            else:
                self._stacks[name] = auto.Stack.select(name, ws)
        return self._stacks[name]

    def exists(self, stack: str) -> bool:
        ws = self._workspace()
        return any(s.name == stack for s in ws.list_stacks())

    def set_config(self, stack: str, config: dict[str, Any], secret: frozenset[str] = frozenset()) -> None:
        import json

        from pulumi import automation as auto

        values = {
            key: auto.ConfigValue(value=value if isinstance(value, str) else json.dumps(value), secret=key in secret)
            for key, value in config.items()
        }
        self._stack(stack, create=True).set_all_config(values, path=False)

    @staticmethod
    def _on_event(on_event: OnEvent) -> Any:
        def handle(event: Any) -> None:
            line = describe(event)
            if line:
                on_event(line)

        return handle

    def up(self, stack: str, on_event: OnEvent) -> StackOutputs:
        result = self._stack(stack).up(on_event=self._on_event(on_event), color="never", suppress_outputs=True)
        return {key: out.value for key, out in result.outputs.items()}

    def destroy(self, stack: str, on_event: OnEvent) -> None:
        self._stack(stack).destroy(on_event=self._on_event(on_event), color="never", suppress_outputs=True)

    def refresh(self, stack: str, on_event: OnEvent) -> None:
        self._stack(stack).refresh(on_event=self._on_event(on_event), color="never")

    def _deployment(self, stack: str) -> dict[str, Any]:
        return self._stack(stack).export_stack().deployment or {}

    def pending_operations(self, stack: str) -> list[dict[str, Any]]:
        return list(self._deployment(stack).get("pending_operations") or [])

    def clear_pending(self, stack: str) -> None:
        from pulumi import automation as auto

        target = self._stack(stack)
        with contextlib.suppress(auto.CommandError):
            target.cancel()  # only a service backend holds an update lock to cancel
        exported = target.export_stack()
        deployment = dict(exported.deployment or {})
        deployment.pop("pending_operations", None)
        target.import_stack(auto.Deployment(version=exported.version, deployment=deployment))

    def resource_count(self, stack: str) -> int:
        resources = self._deployment(stack).get("resources") or []
        return sum(1 for r in resources if not str(r.get("type", "")).startswith("pulumi:"))

    def remove(self, stack: str) -> None:
        self._workspace().remove_stack(stack)
        self._stacks.pop(stack, None)
        for leftover in self.work_dir.glob(f"Pulumi.{stack}.yaml"):
            leftover.unlink()
