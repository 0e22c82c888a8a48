"""Reading a config file into a :class:`~gateway.config.model.Config`, with every problem located.

Steps, each collecting problems rather than stopping at the first:

1. parse the YAML with ruamel's round-trip loader, which records the line of every key and value;
2. report duplicate keys (from the composed node tree, so every one is found, not just the first);
3. substitute ``${VAR}`` inside string values (``$${`` writes a literal ``${``), in place, so positions
   are kept;
4. read secret files (``password_file``) into their value (``password``);
5. validate with pydantic under a :class:`~gateway.config.base.LoadContext`, which resolves relative
   paths against the file's directory and checks the files named;
6. map each pydantic error's ``loc`` back to a line through the parsed tree.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from gateway.config.base import LoadContext
from gateway.config.model import Config, default_buffer_path
from gateway.config.units import describe
from gateway.errors import ConfigError, ConfigProblem

Loc = tuple[str | int, ...]

SECRET_FILES: Mapping[str, str] = {
    "password_file": "password",
    "bearer_token_file": "bearer_token",
    "bindkey_file": "bindkey",
}
"""Keys naming a file whose content (less trailing newlines) becomes the value of another key."""

CREDENTIALS_VARIABLE = "CREDENTIALS_DIRECTORY"
CREDENTIALS_STORE = Path("/etc/citygw/credentials")
"""The directory systemd's ``LoadCredential=`` reads (systemd/citygw.service), root 0700."""
CREDENTIALS_STORE_VARIABLE = "CITYGW_CREDENTIALS_STORE"
"""Environment variable naming another store (a unit that loads credentials from elsewhere)."""
CREDENTIAL_PREFIX = "citygw_"
"""The unit's ``LoadCredential=citygw:DIR`` names the credential of file ``NAME`` ``citygw_NAME``."""

_ID_SECTIONS = ("uplinks", "buses", "devices")
_VARIABLE = re.compile(r"\$\$\{|\$\{(?P<name>[^}]*)(?P<close>\}?)")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_VALUES = 100_000  # values a config may stand for once anchors and aliases are expanded
_MAPPING = "a mapping (indented key: value lines)"
_EXPECTED = {
    "string_type": "text",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": _MAPPING,
    "model_type": _MAPPING,
    "model_attributes_type": _MAPPING,
    "list_type": "a list, e.g. [a, b]",
    "tuple_type": "a list, e.g. [a, b]",
    "path_type": "a file path",
}
_AT_KEY = frozenset({"citygw_unknown_key", "extra_forbidden"})


class _Problems:
    """The problems found so far, and the places already reported (not to be reported twice)."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.found: list[ConfigProblem] = []
        self.reported: set[Loc] = set()

    def add(self, line: int | None, key: str, message: str, loc: Loc | None = None) -> None:
        problem = ConfigProblem(self.file, line, key, message)
        if problem not in self.found:
            self.found.append(problem)
        if loc is not None:
            self.reported.add(loc)

    def covers(self, loc: Loc) -> bool:
        return any(loc[: len(done)] == done for done in self.reported)


def load(path: str | os.PathLike[str], *, environ: Mapping[str, str]) -> Config:
    """Read, check and validate the config file at ``path``; :class:`ConfigError` lists every problem."""
    problems = _Problems(os.fspath(path))
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise ConfigError(
            [ConfigProblem(problems.file, None, "", f"cannot read the config file: {reason}")]
        ) from None
    root = _parse(text, problems)
    if root is None:
        raise ConfigError(problems.found)
    base_dir = Path(os.path.abspath(path)).parent
    credentials = Credentials.from_environ(environ)
    _substitute_all(root, credentials.environ(environ), problems)
    data = _plain(root)
    _read_secrets(root, data, base_dir, problems, credentials)
    if "source" in root:
        message = f"unknown key 'source'; allowed here: {', '.join(Config.yaml_keys())}"
        problems.add(_line(root.lc.key("source")), "source", message, ("source",))
    data["source"] = Path(path)
    config: Config | None = None
    try:
        config = Config.model_validate(data, context=LoadContext(base_dir))
    except ValidationError as exc:
        for error in exc.errors():
            if not problems.covers(error["loc"]):
                loc = _secret_source(root, error["loc"])
                key, line = _locate(root, loc, at_key=error["type"] in _AT_KEY)
                problems.add(line, key, _message(error))
    if config is None or problems.found:
        raise ConfigError(sorted(problems.found, key=lambda p: (p.line or 0, p.key)))
    if config.buffer.path is None:
        buffer = config.buffer.model_copy(update={"path": default_buffer_path(environ)})
        config = config.model_copy(update={"buffer": buffer})
    return config


# --- YAML --------------------------------------------------------------------------------------


def _parse(text: str, problems: _Problems) -> CommentedMap | None:
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = True  # reported below, all of them, from the node tree
    try:
        node = yaml.compose(text)
        root = yaml.load(text)
        if node is not None and _expanded_size(node, {}) > MAX_VALUES:
            problems.add(
                None,
                "",
                f"the file expands to more than {MAX_VALUES:,} values through anchors and aliases"
                " (&name, *name); a config needs far fewer: write the values out, or alias less",
            )
            return None
    except RecursionError:
        problems.add(None, "", "nested too deeply for a config; a config needs a few levels of indentation")
        return None
    except AssertionError as exc:  # ruamel.yaml asserts on some directives, e.g. %YAML 1.0
        problems.add(None, "", f"not valid YAML: {exc}; remove the %YAML line or write %YAML 1.2")
        return None
    except (ValueError, IndexError) as exc:  # ruamel.yaml resolves "._" or "+_" as a number, then fails
        problems.add(
            None, "", f"not valid YAML: a value looks like a number but is not one ({exc}); put it in quotes"
        )
        return None
    except TypeError:  # ruamel.yaml hashes a complex key ("? a: {}") and fails
        problems.add(
            None, "", "not valid for a config: a key that is a mapping or a list ('? ...'); write plain keys"
        )
        return None
    except MarkedYAMLError as exc:
        where = exc.problem_mark or exc.context_mark
        started = (
            f" ({exc.context} started on line {exc.context_mark.line + 1})"
            if exc.context and exc.context_mark is not None
            else ""
        )
        message = f"not valid YAML: {exc.problem}{started}; check the indentation, colons and quotes"
        problems.add(where.line + 1 if where is not None else None, "", message)
        return None
    except YAMLError as exc:
        problems.add(None, "", f"not valid YAML: {exc}")
        return None
    if node is not None:
        _find_duplicates(node, (), problems, set())
    if root is None:
        problems.add(None, "", "the file is empty; it needs at least a gateway section with id and key_file")
        return None
    if not isinstance(root, CommentedMap):
        sections = ", ".join(Config.yaml_keys())
        problems.add(
            1, "", f"the top level must be a mapping of sections ({sections}); got {describe(_plain(root))}"
        )
        return None
    return root


def _expanded_size(node: Node, memo: dict[int, int]) -> int:
    """How many values ``node`` stands for once every alias is expanded (a YAML bomb is small
    on disk and huge in memory)."""
    known = memo.get(id(node))
    if known is not None:
        return known
    memo[id(node)] = 1  # a node that contains itself counts once
    size = 1
    if isinstance(node, MappingNode):
        size += sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    elif isinstance(node, SequenceNode):
        size += sum(_expanded_size(item, memo) for item in node.value)
    memo[id(node)] = size
    return size


def _find_duplicates(node: Node, path: Loc, problems: _Problems, seen: set[int]) -> None:
    if id(node) in seen:  # an alias: already visited
        return
    seen.add(id(node))
    if isinstance(node, MappingNode):
        first_lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, ScalarNode) else None
            if key is not None and key != "<<":
                line = key_node.start_mark.line + 1
                if key in first_lines:
                    problems.add(line, _dotted((*path, key)), _duplicate_message(path, key, first_lines[key]))
                else:
                    first_lines[key] = line
            _find_duplicates(value_node, (*path, key if key is not None else "?"), problems, seen)
    elif isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            _find_duplicates(item, (*path, index), problems, seen)


def _duplicate_message(path: Loc, key: str, first_line: int) -> str:
    if len(path) == 1 and path[0] in _ID_SECTIONS:
        return (
            f"duplicate key {key!r}; each id must be unique within {path[0]} "
            f"(first defined on line {first_line}): rename one of them"
        )
    return f"duplicate key {key!r}; it is already set on line {first_line}: keep one"


def _children(node: Any) -> Iterator[tuple[str | int, Any]]:
    if isinstance(node, CommentedMap):
        yield from node.items()
    elif isinstance(node, CommentedSeq):
        yield from enumerate(node)


def _plain(node: Any) -> Any:
    """The parsed tree as plain dicts, lists, str, int, float and bool, for validation."""
    if isinstance(node, CommentedMap):
        return {key: _plain(value) for key, value in node.items()}
    if isinstance(node, CommentedSeq):
        return [_plain(item) for item in node]
    if isinstance(node, TaggedScalar):
        return node.value
    for kind in (bool, str, int, float):
        if isinstance(node, kind):
            return kind(node)
    return node


# --- environment and secrets -------------------------------------------------------------------


def _substitute_all(node: Any, environ: Mapping[str, str], problems: _Problems, path: Loc = ()) -> None:
    for key, value in list(_children(node)):
        loc = (*path, key)
        if isinstance(value, str):
            text, faults = _substitute(value, environ)
            for fault in faults:
                problems.add(_value_line(node, key), _dotted(loc), fault, loc)
            if not faults and text != value:
                node[key] = text
        else:
            _substitute_all(value, environ, problems, loc)


def _substitute(text: str, environ: Mapping[str, str]) -> tuple[str, list[str]]:
    """``text`` with each ``${NAME}`` replaced by its value in ``environ``, and what went wrong."""
    faults: list[str] = []

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name = match["name"]
        if not match["close"] or not _NAME.fullmatch(name):
            faults.append(
                f"{match.group(0)!r} is not a variable reference; write ${{NAME}} with letters, digits "
                "and _, or $${ for a literal ${"
            )
            return match.group(0)
        if name not in environ:
            faults.append(f"environment variable {name} is not set")
            return match.group(0)
        return environ[name]

    return _VARIABLE.sub(replace, text), faults


@dataclass(frozen=True, slots=True)
class Credentials:
    """Where ``${CREDENTIALS_DIRECTORY}`` points, in the service and outside it.

    The unit's ``LoadCredential=citygw:/etc/citygw/credentials`` hands each file ``NAME`` of that
    store to the service as ``$CREDENTIALS_DIRECTORY/citygw_NAME``. So that one config works in the
    service and in a technician's ``citygw check`` / ``status`` / ``probe`` / ``resend`` (and in a
    deploy's ``validate: citygw check -c %s``), a secret file in that directory is found under either
    name: ``${CREDENTIALS_DIRECTORY}/NAME`` and ``.../citygw_NAME`` both mean credential ``NAME``.
    Outside the service (no ``CREDENTIALS_DIRECTORY``), the directory is the store itself.
    """

    directory: Path
    in_service: bool

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Credentials:
        given = environ.get(CREDENTIALS_VARIABLE)
        if given:
            return cls(Path(given), in_service=True)
        return cls(Path(environ.get(CREDENTIALS_STORE_VARIABLE) or CREDENTIALS_STORE), in_service=False)

    def environ(self, environ: Mapping[str, str]) -> Mapping[str, str]:
        """``environ`` with ``CREDENTIALS_DIRECTORY`` set to where the credentials are."""
        return environ if self.in_service else {**environ, CREDENTIALS_VARIABLE: str(self.directory)}

    def candidates(self, path: Path) -> list[Path]:
        """The files ``path`` may be, first the one named in error messages."""
        if path.parent != self.directory:
            return [path]
        name = path.name.removeprefix(CREDENTIAL_PREFIX)
        loaded = self.directory / (CREDENTIAL_PREFIX + name)
        stored = self.directory / name
        return [path, loaded if self.in_service else stored]


def _read_secrets(
    node: Any, data: Any, base_dir: Path, problems: _Problems, credentials: Credentials, path: Loc = ()
) -> None:
    """Put the content of each secret file (``password_file``) into ``data`` as its value (``password``)."""
    if isinstance(node, CommentedMap):
        for file_key, value_key in SECRET_FILES.items():
            loc = (*path, file_key)
            name = node.get(file_key)
            if not isinstance(name, str) or problems.covers(loc):
                continue
            if value_key in node:
                message = f"{value_key} and {file_key} are mutually exclusive; keep one"
                problems.add(_line(node.lc.key(file_key)), _dotted(loc), message, loc)
                continue
            secret, fault = _read_credential(base_dir / name, credentials)
            if fault is not None:
                problems.add(_value_line(node, file_key), _dotted(loc), fault, loc)
            data[value_key] = secret
    for key, value in _children(node):
        _read_secrets(value, data[key], base_dir, problems, credentials, (*path, key))


def _read_credential(path: Path, credentials: Credentials) -> tuple[str | None, str | None]:
    """The secret at ``path`` (or at the other name of the same credential), or what is wrong."""
    candidates = list(dict.fromkeys(credentials.candidates(path)))
    for candidate in candidates[1:]:
        if candidate.exists():
            return _read_secret(candidate)
    secret, fault = _read_secret(candidates[0])
    if fault is not None and len(candidates) > 1 and not candidates[0].exists():
        fault = f"cannot read {' or '.join(map(str, candidates))}: No such file or directory"
    if fault is not None and not credentials.in_service and path.parent == credentials.directory:
        fault += (
            f" (outside the service, ${{{CREDENTIALS_VARIABLE}}} is {credentials.directory}, the store"
            " the unit's LoadCredential= reads; as root: sudo citygw ...)"
        )
    return secret, fault


def _secret_source(root: CommentedMap, loc: Loc) -> Loc:
    """Where a problem with a secret read from a file is reported: at its ``*_file`` key."""
    if not loc or loc[-1] not in SECRET_FILES.values():
        return loc
    node: Any = root
    for part in loc[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return loc
    file_key = next(f for f, v in SECRET_FILES.items() if v == loc[-1])
    if isinstance(node, CommentedMap) and loc[-1] not in node and file_key in node:
        return (*loc[:-1], file_key)
    return loc


def _read_secret(path: Path) -> tuple[str | None, str | None]:
    """The file's text less trailing newlines, or None and what is wrong with it."""
    try:
        secret = path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror}"
    except UnicodeDecodeError:
        return None, f"{path} is not UTF-8 text"
    return (secret, None) if secret else (None, f"{path} is empty; it must hold the secret")


# --- positions and messages --------------------------------------------------------------------


def _line(position: tuple[int, int] | list[int]) -> int:
    return position[0] + 1


def _key_line(parent: Any, key: Any) -> int | None:
    try:
        if isinstance(parent, CommentedMap):
            return _line(parent.lc.key(key))
        if isinstance(parent, CommentedSeq):
            return _line(parent.lc.item(key))
    except (KeyError, IndexError, TypeError):
        pass
    return None


def _value_line(parent: Any, key: Any) -> int | None:
    if isinstance(parent, CommentedMap) and parent.get(key) is not None:
        try:
            return _line(parent.lc.value(key))
        except (KeyError, TypeError):
            pass
    return _key_line(parent, key)  # a null value has no position of its own


def _dotted(loc: Loc) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def _locate(root: CommentedMap, loc: Loc, *, at_key: bool) -> tuple[str, int | None]:
    """The dotted key of ``loc`` and its line: of the key itself for ``at_key`` or a bad id, of the
    value otherwise, and of the enclosing mapping's key when ``loc`` is not in the file (a missing key)."""
    node: Any = root
    parent: Any = None
    last: Any = None
    key: list[str | int] = []
    for index, part in enumerate(loc):
        if part == "[key]":  # the mapping key itself is wrong (a bad id)
            return _dotted(tuple(key)), _key_line(parent, last)
        is_index = isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node)
        if not is_index and not (isinstance(node, CommentedMap) and part in node):
            rest = [str(p) if isinstance(p, int) else p for p in loc[index:] if p != "[key]"]
            return _dotted((*key, *rest)), _key_line(parent, last)
        key.append(part if is_index else str(part))
        parent, last, node = node, part, node[part]
    return _dotted(tuple(key)), _key_line(parent, last) if at_key else _value_line(parent, last)


def _message(error: ErrorDetails) -> str:
    kind, given, ctx = error["type"], error["input"], error.get("ctx", {})
    if (
        kind in _EXPECTED and error["loc"] and error["loc"][-1] in SECRET_FILES.values()
    ):  # never echo a secret
        return "expected text; the value is not shown, it is a secret (quote it, or use a *_file key)"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}; got {describe(given)}"
    if kind in ("enum", "literal_error"):
        close = difflib.get_close_matches(str(given), re.findall(r"'([^']*)'", ctx["expected"]), n=1)
        guess = f" (did you mean {close[0]!r}?)" if isinstance(given, str) and close else ""
        return f"must be {ctx['expected']}; got {describe(given)}{guess}"
    if kind == "string_too_short":
        return (
            "must not be empty"
            if ctx["min_length"] == 1
            else f"must be at least {ctx['min_length']} characters"
        )
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters"
    bounds = {"greater_than_equal": "at least", "less_than_equal": "at most", "greater_than": "more than"}
    if kind in bounds:
        limit = next(iter(ctx.values()))
        return f"must be {bounds[kind]} {limit}; got {given}"
    return error["msg"]
