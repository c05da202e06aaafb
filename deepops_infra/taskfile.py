"""Task files: `deepops up -f task.yaml` / `deepops run -f task.yaml`.

A task file says what a machine is (resources) and what to do on it (workdir, envs, setup, run),
so that it can be kept with the code and used again. Everything is validated here, before
anything is written; an error names the file and the line. Command-line options override the
file. `deepops show ID --spec` writes a file of this same shape that reproduces a machine.

    name: detr-train            # optional
    team: vision                # optional: team, project
    project: detr
    resources:
      gpus: A100:1              # or 0
      cloud: onprem             # onprem, aws, gcp, azure, auto
      region: us-east-1
      host: gpu-01
      image: pytorch
      image_pin: sha256:...     # optional: refuse when the image now pins something else
      spot: false
      ttl: 8h
      idle_timeout: 30m
      disk: 100                 # GB
    workdir: .                  # relative to this file's folder
    envs: {WANDB_MODE: offline}
    setup: pip install -e .
    run: python train.py
"""

import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from deepops_infra.errors import UserError
from deepops_infra.intake import Options
from deepops_infra.request import GpuSpec, check_cloud, check_disk, check_label, check_name, parse_duration
from deepops_infra.yamlfile import FileError, Mapping, load_yaml

RESOURCE_KEYS = ("gpus", "cloud", "region", "host", "image", "image_pin", "spot", "ttl", "idle_timeout", "disk")
TOP_KEYS = ("name", "team", "project", "owner", "resources", "workdir", "envs", "setup", "run")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_ENVS = 256
_MAX_TEXT = 64 * 1024


@dataclass(frozen=True)
class Task:
    """A validated task file: the options it gives and what to do on the machine."""

    path: Path
    options: Options
    image_pin: str | None = None
    workdir: Path | None = None
    envs: dict[str, str] = field(default_factory=dict)
    setup: str | None = None
    run: str | None = None


def load_task(path: Path) -> Task:
    """Read and validate a task file; a UserError naming file and line on any problem."""
    if not path.is_file():
        raise UserError(f"-f {path}: no such file; give the path of a task file (YAML)")
    raw = load_yaml(path)
    if not isinstance(raw, Mapping):
        raise FileError(path, 1, "a task file is a mapping with keys such as resources, workdir, run")
    _known(path, raw, TOP_KEYS, "")
    resources = raw.get("resources", Mapping())
    if not isinstance(resources, Mapping):
        raise FileError(path, raw.line_of("resources"), "resources: must be a mapping (gpus, cloud, ttl, ...)")
    _known(path, resources, RESOURCE_KEYS, "resources.")
    opts = Options(
        gpus=_gpus(path, resources),
        cloud=_checked(path, resources, "cloud", check_cloud),
        region=_text(path, resources, "region"),
        host=_text(path, resources, "host"),
        image=_text(path, resources, "image"),
        spot=_bool(path, resources, "spot"),
        ttl=_checked(path, resources, "ttl", lambda v: parse_duration(v, "ttl")),
        idle_timeout=_checked(path, resources, "idle_timeout", lambda v: parse_duration(v, "idle_timeout")),
        disk=_disk(path, resources),
        owner=_checked(path, raw, "owner", lambda v: check_label("owner", v)),
        team=_checked(path, raw, "team", lambda v: check_label("team", v)),
        project=_checked(path, raw, "project", lambda v: check_label("project", v)),
        name=_checked(path, raw, "name", check_name),
    )
    return Task(
        path=path,
        options=opts,
        image_pin=_text(path, resources, "image_pin"),
        workdir=_workdir(path, raw),
        envs=_envs(path, raw),
        setup=_text(path, raw, "setup", limit=_MAX_TEXT),
        run=_text(path, raw, "run", limit=_MAX_TEXT),
    )


def merged(task: Task | None, given: Options) -> Options:
    """The file's options with every option given on the command line taking precedence."""
    if task is None:
        return given
    overrides = {f.name: v for f in fields(given) if (v := getattr(given, f.name)) is not None}
    return replace(task.options, **overrides)


def spec_of(machine: Any) -> dict[str, Any]:
    """The task file that reproduces `machine`'s configuration: image pin, GPUs, target."""
    request: dict[str, Any] = dict(machine.request or {})
    resources: dict[str, Any] = {"gpus": request.get("gpus") or "0", "cloud": machine.cloud}
    for key, value in (
        ("region", machine.region),
        ("host", machine.host if machine.cloud == "onprem" else None),
        ("image", machine.image),
        ("image_pin", machine.image_pin),
        ("spot", True if request.get("spot") else None),
        ("ttl", _exact(request.get("ttl"))),
        ("idle_timeout", _exact(request.get("idle_timeout"))),
        ("disk", request.get("disk_gb")),
    ):
        if value is not None:
            resources[key] = value
    spec: dict[str, Any] = {"team": machine.team, "project": machine.project, "resources": resources}
    return {k: v for k, v in spec.items() if v is not None}


def _exact(seconds: int | None) -> str | None:
    """Seconds as a duration that parses back to exactly the same value (`90061` -> `1d1h1m1s`)."""
    if not seconds:
        return None
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def dump_spec(spec: dict[str, Any], machine_id: str) -> str:
    import yaml

    head = f"# deepops task file: the configuration of {machine_id}; `deepops up -f FILE` makes it again\n"
    return head + yaml.safe_dump(spec, sort_keys=False, default_flow_style=False)


# -- field checks: each returns the value or raises FileError at the key's line ------------------


def _known(path: Path, data: Mapping, keys: tuple[str, ...], prefix: str) -> None:
    for key in data:
        if key not in keys:
            raise FileError(path, data.line_of(key), f"{prefix}{key}: unknown key; known: {', '.join(keys)}")


def _text(path: Path, data: Mapping, key: str, limit: int = 256) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise FileError(path, data.line_of(key), f"{key}: must be text")
    text = str(value)
    if not text.strip():
        raise FileError(path, data.line_of(key), f"{key}: is empty; give a value or leave the key out")
    if len(text) > limit or "\0" in text:
        raise FileError(path, data.line_of(key), f"{key}: too long or not text (at most {limit} characters)")
    return text


def _checked(path: Path, data: Mapping, key: str, check: Any) -> str | None:
    text = _text(path, data, key)
    if text is None:
        return None
    try:
        check(text)
    except UserError as exc:
        raise FileError(path, data.line_of(key), f"{key}: {_reason(exc)}") from None
    return text


def _reason(exc: UserError) -> str:
    """A shared check's message without the command-line option it names (`--ttl: ...`)."""
    option, sep, rest = str(exc).partition(": ")
    return rest if sep and " " not in option else str(exc)


def _gpus(path: Path, data: Mapping) -> str | None:
    value = data.get("gpus")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise FileError(path, data.line_of("gpus"), "gpus: give MODEL:COUNT (e.g. A100:1) or a count")
    try:
        GpuSpec.parse(str(value))
    except UserError as exc:
        raise FileError(path, data.line_of("gpus"), f"gpus: {_reason(exc)}") from None
    return str(value)


def _bool(path: Path, data: Mapping, key: str) -> bool | None:
    value = data.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise FileError(path, data.line_of(key), f"{key}: must be true or false")


def _disk(path: Path, data: Mapping) -> int | None:
    value = data.get("disk")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise FileError(path, data.line_of("disk"), "disk: must be a whole number of GB, e.g. 100")
    try:
        return check_disk(value)
    except UserError as exc:
        raise FileError(path, data.line_of("disk"), f"disk: {_reason(exc)}") from None


def _workdir(path: Path, data: Mapping) -> Path | None:
    text = _text(path, data, "workdir", limit=4096)
    if text is None:
        return None
    folder = (path.parent / Path(text).expanduser()).resolve()
    if not folder.is_dir():
        raise FileError(path, data.line_of("workdir"), f"workdir: {folder} is not a folder")
    return folder


def _envs(path: Path, data: Mapping) -> dict[str, str]:
    envs = data.get("envs")
    if envs is None:
        return {}
    if not isinstance(envs, Mapping):
        raise FileError(path, data.line_of("envs"), "envs: must be a mapping of NAME: value")
    if len(envs) > _MAX_ENVS:
        raise FileError(path, data.line_of("envs"), f"envs: at most {_MAX_ENVS} variables")
    out = {}
    for name, value in envs.items():
        line = envs.line_of(name)
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name) or name.startswith("DEEPOPS_"):
            raise FileError(path, line, f"envs: {name!r} is not a variable name (letters, digits, _; not DEEPOPS_*)")
        if value is None or isinstance(value, dict | list):
            raise FileError(path, line, f"envs.{name}: must be text or a number")
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if "\0" in text or len(text) > _MAX_TEXT:
            raise FileError(path, line, f"envs.{name}: too long or not text")
        out[name] = text
    return out
