"""Device profiles: register maps as YAML files, found by name and validated when the config loads.

A profile named ``eastron-sdm630`` is the file ``eastron-sdm630.yaml`` in the user's profile
directory (a device's ``profiles_dir``, else ``profiles/`` beside the config file) or, failing
that, in the profiles shipped with citygw (``config/profiles/``). A user profile with the name of
a shipped one replaces it. A profile's problems are reported with its file, line and key.
"""

from __future__ import annotations

import difflib
import functools
import os
from pathlib import Path

from pydantic import ValidationError

from citygw.config import source
from citygw.config.register_map import PROFILE_NAME_RE, Profile
from citygw.errors import CitygwError
from citygw.shipped import shipped

SHIPPED_DIR = shipped("profiles")
"""The profiles shipped with citygw."""


class ProfileError(CitygwError):
    """A profile cannot be found or is not valid."""


def _names(directory: Path | None) -> dict[str, Path]:
    if directory is None or not directory.is_dir():
        return {}
    return {
        path.stem: path
        for path in sorted(directory.glob("*.yaml"))
        if PROFILE_NAME_RE.fullmatch(path.stem) and path.is_file()
    }


def available(user_dir: Path | None = None) -> dict[str, Path]:
    """Every profile name and its file: shipped ones, replaced by user ones of the same name."""
    return _names(SHIPPED_DIR) | _names(user_dir)


def find_profile(name: str, *, user_dir: Path | None = None) -> Profile:
    """The validated profile ``name``; :class:`ProfileError` says what exists when it does not."""
    known = available(user_dir)
    path = known.get(name)
    if path is None:
        shipped = ", ".join(_names(SHIPPED_DIR)) or "none"
        user = _names(user_dir)
        mine = f"; user profiles in {user_dir}: {', '.join(user) or 'none'}" if user_dir is not None else ""
        close = difflib.get_close_matches(name, known, n=1)
        guess = f" (did you mean {close[0]!r}?)" if close else ""
        raise ProfileError(f"unknown profile {name!r}{guess}; shipped profiles: {shipped}{mine}")
    return load_profile(path)


def load_profile(path: Path) -> Profile:
    """The profile in ``path``, validated; read again only when the file changes."""
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise ProfileError(f"cannot read profile {path}: {exc.strerror}") from None
    return _load(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _load(path: str, mtime_ns: int, size: int) -> Profile:
    problems = source.Problems(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise ProfileError(f"cannot read profile {path}: {reason}") from None
    root = source.parse(
        text,
        problems,
        empty="the file is empty; a profile needs description, source and registers",
        top_level="a mapping (description, source, registers, ...)",
    )
    if root is not None and not problems.found:
        try:
            return Profile.model_validate(source.plain(root))
        except ValidationError as exc:
            for error in exc.errors():
                key, line = source.locate(root, error["loc"], at_key=error["type"] in source.AT_KEY)
                problems.add(line, key, source.message(error))
    found = sorted(problems.found, key=lambda p: (p.line or 0, p.key))
    raise ProfileError(f"profile {Path(path).stem!r} is not valid: " + "; ".join(str(p) for p in found))
