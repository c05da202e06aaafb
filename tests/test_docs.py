"""The documentation stays honest and findable, cheaply (no process, no network).

- every page under docs/ is linked from README.md and from the index docs/README.md, and the
  README stays short;
- every relative link in README.md and docs/*.md points at a file that exists, and at a heading
  (or an explicit anchor) of it when the link names one;
- every `deepops <command> [<subcommand>]` in a code block is a command the CLI registers,
  with long options it has (checked against the Typer app imported in-process);
- the README's two commands exist as Makefile targets.
"""

import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_BYTES = 15 * 1024
PAGES = [README, *sorted(DOCS.glob("*.md"))]

FENCE = re.compile(r"^(\s*)(```|~~~)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"`[^`\n]*`")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
EXPLICIT_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")
# Where a `deepops` token starts a command: first on the line, or after one of these.
COMMAND_STARTS = {";", "&&", "||", "|", "--", "sudo", "exec", "time", "then", "do", "watch", "!"}
ENV_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=\S*")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def split_blocks(text: str) -> tuple[list[str], list[str]]:
    """(prose lines, code lines): fenced blocks and 4-space indented blocks are code."""
    prose: list[str] = []
    code: list[str] = []
    fence: str | None = None
    previous_blank = True
    in_indented = False
    for line in text.splitlines():
        match = FENCE.match(line)
        if fence is not None:
            if match and match.group(2) == fence:
                fence = None
            else:
                code.append(line)
            continue
        if match:
            fence = match.group(2)
            continue
        indented = line.startswith("    ") and not line.lstrip().startswith(("- ", "* ", "|"))
        if indented and (previous_blank or in_indented):
            in_indented = True
            code.append(line)
        else:
            in_indented = False
            prose.append(line)
        previous_blank = not line.strip()
    return prose, code


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"<[^>]+>", "", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading keeps its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    prose, _ = split_blocks(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    counts: dict[str, int] = {}
    for line in prose:
        found.update(EXPLICIT_ANCHOR.findall(line))
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(1))
        n = counts.get(base, 0)
        counts[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return frozenset(found)


def relative_links(path: Path) -> list[str]:
    prose, _ = split_blocks(path.read_text(encoding="utf-8"))
    links = []
    for line in prose:
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
                continue
            links.append(target)
    return links


def broken(path: Path, target: str) -> str | None:
    """Why `target` (a link in `path`) does not resolve, or None."""
    file_part, _, anchor = target.partition("#")
    dest = (path.parent / file_part).resolve() if file_part else path
    if not dest.exists():
        return f"{target}: no file {dest}"
    if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
        return f"{target}: no heading #{anchor} in {_rel(dest)}"
    return None


@cache
def cli() -> Any:
    """The CLI's root group (typer vendors its own click, so groups are known by `commands`)."""
    import typer

    from deepops_infra.cli import app

    command = typer.main.get_command(app)
    assert hasattr(command, "commands")
    return command


def invocations(line: str) -> list[list[str]]:
    """The argument lists following each `deepops` at a command position of a shell line."""
    line = re.sub(r"(^|\s)#.*", "", line)
    tokens = line.replace(";", " ; ").split()
    found = []
    for i, token in enumerate(tokens):
        bare = token.lstrip("$(`").rsplit("=", 1)[-1]
        if bare != "deepops" and not bare.endswith("/deepops"):
            continue
        before = tokens[:i]
        while before and ENV_ASSIGNMENT.fullmatch(before[-1]):
            before.pop()
        if before and before[-1] not in COMMAND_STARTS:
            continue
        args = []
        for arg in tokens[i + 1 :]:
            if arg in COMMAND_STARTS or arg in (">", "<", "2>&1", ">/dev/null"):
                break
            args.append(arg)
        found.append(args)
    return found


def unknown_command(args: list[str]) -> str | None:
    """Why `deepops ARGS` names no registered command or option (None: all are real)."""
    command = cli()
    path = ["deepops"]
    rest = list(args)
    while rest and hasattr(command, "commands") and not rest[0].startswith(("-", "[")):
        name = rest[0].rstrip(";`)").split("|")[0]
        if not re.fullmatch(r"[a-z][a-z0-9-]*", name):  # a placeholder such as <cmd> or ID
            return None
        sub = command.commands.get(name)
        if sub is None:
            known = ", ".join(sorted(command.commands))
            return f"`{' '.join(path)} {name}` is not a command (known: {known})"
        command, path, rest = sub, [*path, name], rest[1:]
    return unknown_option(command, path, rest)


def unknown_option(command: Any, path: list[str], args: list[str]) -> str | None:
    """Why one of the long options in `args` is not an option of `command` (up to a bare `--`)."""
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    known.add("--help")
    for arg in args:
        if arg == "--":
            break
        for option in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", arg):
            if option not in known:
                return f"`{' '.join(path)}` has no option {option} (known: {', '.join(sorted(known))})"
    return None


def test_readme_is_short() -> None:
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, (
        f"README.md is {size} bytes; keep it under {README_MAX_BYTES}: move detail to docs/"
    )


@pytest.mark.parametrize("index", [README, DOCS / "README.md"], ids=_rel)
def test_every_docs_page_is_linked_from_the_indexes(index: Path) -> None:
    linked = {(index.parent / t.partition("#")[0]).resolve() for t in relative_links(index)}
    pages = [p for p in sorted(DOCS.glob("*.md")) if p.resolve() != index.resolve()]
    missing = [_rel(p) for p in pages if p.resolve() not in linked]
    assert not missing, f"link these pages from {_rel(index)}: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_resolve(page: Path) -> None:
    problems = [why for target in relative_links(page) if (why := broken(page, target))]
    assert not problems, f"{_rel(page)}: " + "; ".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_commands_in_code_blocks_exist(page: Path) -> None:
    _, code = split_blocks(page.read_text(encoding="utf-8"))
    problems = [why for line in code for args in invocations(line) if (why := unknown_command(args))]
    assert not problems, f"{_rel(page)}: " + "; ".join(sorted(set(problems)))


def test_the_two_commands_are_makefile_targets() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    readme = README.read_text(encoding="utf-8")
    for target in ("demo", "test"):
        assert f"make {target}" in readme
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), f"Makefile has no `{target}:` target"


def test_the_checks_catch_what_they_should() -> None:
    """The helpers above fail on the mistakes they exist for (a guard against a vacuous test)."""
    assert unknown_command(["pool", "ls"]) is None
    assert unknown_command(["no-such-command"]) is not None
    assert unknown_command(["pool", "no-such-sub"]) is not None
    assert unknown_command(["pool", "ls", "[--detect]", "--json"]) is None
    assert unknown_command(["pool", "ls", "--no-such-option"]) is not None
    assert unknown_command(["ssh", "m-1", "--", "python", "--anything"]) is None
    assert invocations("kubectl -n deepops create secret") == []
    assert invocations("X=1 deepops ls --json; .venv/bin/deepops pool ls") == [["ls", "--json"], ["pool", "ls"]]
    assert slug("Metrics: `GET /metrics`") == "metrics-get-metrics"
    assert broken(README, "docs/no-such-page.md") is not None
    assert broken(README, "#no-such-heading") is not None
    assert broken(README, "#the-two-commands") is None
