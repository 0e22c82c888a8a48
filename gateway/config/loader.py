"""Reading a config file into a :class:`~citygw.config.model.Config`, with every problem located.

Steps, each collecting problems rather than stopping at the first:

1. parse the YAML with ruamel's round-trip loader, which records the line of every key and value;
2. report duplicate keys (from the composed node tree, so every one is found, not just the first);
3. substitute ``${VAR}`` inside string values (``$${`` writes a literal ``${``), in place, so positions
   are kept;
4. read secret files (``password_file``) into their value (``password``);
5. validate with pydantic under a :class:`~citygw.config.base.LoadContext`, which resolves relative
   paths against the file's directory and checks the files named;
6. map each pydantic error's ``loc`` back to a line through the parsed tree.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml.comments import CommentedMap

from citygw.config import source
from citygw.config.base import LoadContext
from citygw.config.model import Config, default_buffer_path
from citygw.config.source import SECRET_FILES, Loc
from citygw.errors import ConfigError, ConfigProblem

CREDENTIALS_VARIABLE = "CREDENTIALS_DIRECTORY"
CREDENTIALS_STORE = Path("/etc/citygw/credentials")
"""The directory systemd's ``LoadCredential=`` reads (systemd/citygw.service), root 0700."""
CREDENTIALS_STORE_VARIABLE = "CITYGW_CREDENTIALS_STORE"
"""Environment variable naming another store (a unit that loads credentials from elsewhere)."""
CREDENTIAL_PREFIX = "citygw_"
"""The unit's ``LoadCredential=citygw:DIR`` names the credential of file ``NAME`` ``citygw_NAME``."""

_VARIABLE = re.compile(r"\$\$\{|\$\{(?P<name>[^}]*)(?P<close>\}?)")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def load(path: str | os.PathLike[str], *, environ: Mapping[str, str]) -> Config:
    """Read, check and validate the config file at ``path``; :class:`ConfigError` lists every problem."""
    problems = source.Problems(os.fspath(path))
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise ConfigError(
            [ConfigProblem(problems.file, None, "", f"cannot read the config file: {reason}")]
        ) from None
    sections = ", ".join(Config.yaml_keys())
    root = source.parse(
        text,
        problems,
        empty="the file is empty; it needs at least a gateway section with id and key_file",
        top_level=f"a mapping of sections ({sections})",
    )
    if root is None:
        raise ConfigError(problems.found)
    base_dir = Path(os.path.abspath(path)).parent
    credentials = Credentials.from_environ(environ)
    _substitute_all(root, credentials.environ(environ), problems)
    data = source.plain(root)
    _read_secrets(root, data, base_dir, problems, credentials)
    if "source" in root:
        message = f"unknown key 'source'; allowed here: {', '.join(Config.yaml_keys())}"
        problems.add(source.line(root.lc.key("source")), "source", message, ("source",))
    data["source"] = Path(path)
    config: Config | None = None
    try:
        config = Config.model_validate(data, context=LoadContext(base_dir))
    except ValidationError as exc:
        for error in exc.errors():
            if not problems.covers(error["loc"]):
                loc = _secret_source(root, error["loc"])
                key, line = source.locate(root, loc, at_key=error["type"] in source.AT_KEY)
                problems.add(line, key, source.message(error))
    if config is None or problems.found:
        raise ConfigError(sorted(problems.found, key=lambda p: (p.line or 0, p.key)))
    if config.buffer.path is None:
        buffer = config.buffer.model_copy(update={"path": default_buffer_path(environ)})
        config = config.model_copy(update={"buffer": buffer})
    return config


def _substitute_all(node: Any, environ: Mapping[str, str], problems: source.Problems, path: Loc = ()) -> None:
    for key, value in list(source.children(node)):
        loc = (*path, key)
        if isinstance(value, str):
            text, faults = _substitute(value, environ)
            for fault in faults:
                problems.add(source.value_line(node, key), source.dotted(loc), fault, loc)
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
    node: Any, data: Any, base_dir: Path, problems: source.Problems, credentials: Credentials, path: Loc = ()
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
                problems.add(source.line(node.lc.key(file_key)), source.dotted(loc), message, loc)
                continue
            secret, fault = _read_credential(base_dir / name, credentials)
            if fault is not None:
                problems.add(source.value_line(node, file_key), source.dotted(loc), fault, loc)
            data[value_key] = secret
    for key, value in source.children(node):
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
