"""YAML files people edit by hand: errors say which file and line is wrong.

Every YAML file the project reads goes through `load_yaml`: strict UTF-8, a key written twice in
a mapping is an error naming both lines (never "the last one wins"), and `.inf`/`.nan` are refused
wherever they appear (no setting of this project takes them).
"""

import math
from pathlib import Path
from typing import Any

import yaml

from deepops_infra.errors import UserError


class Mapping(dict):
    """A YAML mapping that remembers the line of itself and of each key (1-based)."""

    line: int = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key_lines: dict[str, int] = {}

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class Sequence(list):
    """A YAML sequence that remembers the line of itself and of each item (1-based)."""

    line: int = 0

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.item_lines: list[int] = [0] * len(self)


class _Loader(yaml.SafeLoader):
    pass


class _Problem(yaml.MarkedYAMLError):
    """Well-formed YAML this project refuses (a duplicate key, a non-finite number)."""

    def __init__(self, problem: str, mark: yaml.Mark) -> None:
        super().__init__(problem=problem, problem_mark=mark)


def _mapping(loader: _Loader, node: yaml.MappingNode) -> Mapping:
    result = Mapping()
    result.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            seen = key in result
        except TypeError:  # a list or mapping as a key
            raise _Problem("a key must be a plain value, not a list or mapping", key_node.start_mark) from None
        if seen:
            first = result.key_lines.get(str(key), result.line)
            raise _Problem(f"duplicate key {key!r} (first at line {first}); keep one", key_node.start_mark)
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[str(key)] = line
    return result


def _float(loader: _Loader, node: yaml.ScalarNode) -> float:
    value = loader.construct_yaml_float(node)
    if not math.isfinite(value):
        raise _Problem(f"{node.value!r} is not a finite number; write an ordinary number", node.start_mark)
    return value


def _sequence(loader: _Loader, node: yaml.SequenceNode) -> Sequence:
    result = Sequence(loader.construct_object(item, deep=True) for item in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [item.start_mark.line + 1 for item in node.value]
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)
_Loader.add_constructor("tag:yaml.org,2002:float", _float)


def read_text(path: Path) -> str:
    """A hand-edited text file, decoded as strict UTF-8 (a leading BOM is dropped); an unreadable
    or undecodable file is a UserError naming the file and line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        bad = data[exc.start : exc.start + 1].hex()
        raise UserError(f"{path}:{line}: not UTF-8 text (byte 0x{bad}); save the file as UTF-8") from None


def load_yaml(path: Path) -> Any:
    """Parse a YAML file; a syntax error, a duplicate key or a non-finite number becomes a
    UserError naming the file and line."""
    return _parse(path, lambda text: yaml.load(text, Loader=_Loader))


def load_yaml_documents(path: Path) -> list[Any]:
    """Every document of a multi-document YAML file (`---` between them, as Kubernetes manifests
    are written), with the same checks and errors as load_yaml."""
    return _parse(path, lambda text: list(yaml.load_all(text, Loader=_Loader)))


def _parse(path: Path, parse: Any) -> Any:
    text = read_text(path)
    try:
        return parse(text)
    except _Problem as exc:
        raise UserError(f"{path}:{_line(exc)}: {exc.problem}") from None
    except yaml.MarkedYAMLError as exc:
        raise UserError(f"{path}:{_line(exc)}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        char = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        raise UserError(f"{path}:{line}: invalid YAML: character {char} is not allowed") from None
    except RecursionError:
        raise UserError(f"{path}: invalid YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: invalid YAML: {' '.join(str(exc).split())}") from None


def _line(exc: yaml.MarkedYAMLError) -> int:
    mark = exc.problem_mark or exc.context_mark
    return mark.line + 1 if mark else 0


class FileError(UserError):
    """A problem at a given line of a hand-edited file."""

    def __init__(self, path: Path, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.message = message
