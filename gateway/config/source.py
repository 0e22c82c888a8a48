"""Reading YAML with every value's line, and placing a validation error at its file, line and key.

The config loader (:mod:`citygw.config.loader`) and the profile loader
(:mod:`citygw.config.profiles`) share it: parse with ruamel's round-trip loader (which records the
line of every key and value), report every duplicate key and YAML bomb, turn the tree into plain
values for pydantic, and map each pydantic error's ``loc`` back to a line with a message a person at
the box can act on.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic_core import ErrorDetails
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from citygw.config.units import describe
from citygw.errors import ConfigProblem

Loc = tuple[str | int, ...]

SECRET_FILES: Mapping[str, str] = {
    "password_file": "password",
    "bearer_token_file": "bearer_token",
    "bindkey_file": "bindkey",
}
"""Keys naming a file whose content (less trailing newlines) becomes the value of another key."""

_ID_SECTIONS = ("uplinks", "buses", "devices")
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
AT_KEY = frozenset({"citygw_unknown_key", "extra_forbidden"})


class Problems:
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


# --- YAML -------------------------------------------------------------------------------------


def parse(text: str, problems: Problems, *, empty: str, top_level: str) -> CommentedMap | None:
    """The file's tree, or None with the problems added. ``empty`` is the problem of an empty file;
    ``top_level`` says what the top level must be (a mapping is required)."""
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
        problems.add(None, "", empty)
        return None
    if not isinstance(root, CommentedMap):
        problems.add(1, "", f"the top level must be {top_level}; got {describe(plain(root))}")
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


def _find_duplicates(node: Node, path: Loc, problems: Problems, seen: set[int]) -> None:
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
                    problems.add(line, dotted((*path, key)), _duplicate_message(path, key, first_lines[key]))
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


def children(node: Any) -> Iterator[tuple[str | int, Any]]:
    if isinstance(node, CommentedMap):
        yield from node.items()
    elif isinstance(node, CommentedSeq):
        yield from enumerate(node)


def plain(node: Any) -> Any:
    """The parsed tree as plain dicts, lists, str, int, float and bool, for validation."""
    if isinstance(node, CommentedMap):
        return {key: plain(value) for key, value in node.items()}
    if isinstance(node, CommentedSeq):
        return [plain(item) for item in node]
    if isinstance(node, TaggedScalar):
        return node.value
    for kind in (bool, str, int, float):
        if isinstance(node, kind):
            return kind(node)
    return node


# --- environment and secrets -------------------------------------------------------------------


# --- positions and messages --------------------------------------------------------------------


def line(position: tuple[int, int] | list[int]) -> int:
    return position[0] + 1


def key_line(parent: Any, key: Any) -> int | None:
    try:
        if isinstance(parent, CommentedMap):
            return line(parent.lc.key(key))
        if isinstance(parent, CommentedSeq):
            return line(parent.lc.item(key))
    except (KeyError, IndexError, TypeError):
        pass
    return None


def value_line(parent: Any, key: Any) -> int | None:
    if isinstance(parent, CommentedMap) and parent.get(key) is not None:
        try:
            return line(parent.lc.value(key))
        except (KeyError, TypeError):
            pass
    return key_line(parent, key)  # a null value has no position of its own


def dotted(loc: Loc) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def locate(root: CommentedMap, loc: Loc, *, at_key: bool) -> tuple[str, int | None]:
    """The dotted key of ``loc`` and its line: of the key itself for ``at_key`` or a bad id, of the
    value otherwise, and of the enclosing mapping's key when ``loc`` is not in the file (a missing key)."""
    node: Any = root
    parent: Any = None
    last: Any = None
    key: list[str | int] = []
    for index, part in enumerate(loc):
        if part == "[key]":  # the mapping key itself is wrong (a bad id)
            return dotted(tuple(key)), key_line(parent, last)
        is_index = isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node)
        if not is_index and not (isinstance(node, CommentedMap) and part in node):
            rest = [str(p) if isinstance(p, int) else p for p in loc[index:] if p != "[key]"]
            return dotted((*key, *rest)), key_line(parent, last)
        key.append(part if is_index else str(part))
        parent, last, node = node, part, node[part]
    return dotted(tuple(key)), key_line(parent, last) if at_key else value_line(parent, last)


def message(error: ErrorDetails) -> str:
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
