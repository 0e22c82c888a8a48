"""Fuzzing the config loader: whatever the file holds, `load` returns a Config or raises a clean
ConfigError (file, line, key, message) and nothing else; `citygw check` exits 0 or 78.

Inputs: the corpus in tests/corpus/config/ (YAML bombs, tags, recursion, odd scalars, ...), the
shipped example configs, random text, and those configs mutated line by line and character by
character. The short form runs 300 examples per property; ``-m long`` 20,000.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citygw.config import Config
from citygw.config.loader import load
from citygw.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
CORPUS = sorted((REPO / "tests" / "corpus" / "config").glob("*.yaml"))
SEEDS = [
    p.read_bytes()
    for p in [
        *sorted((REPO / "config").glob("*.yaml")),
        *sorted((REPO / "config" / "examples").glob("*.yaml")),
    ]
]
ENV = {"CITYGW_ID": "gw-fuzz", "X": "x"}
SHORT = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LONG = settings(max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
YAML_BITS = [
    ":",
    "- ",
    "&a ",
    "*a",
    "!!str ",
    "!!python/object ",
    "<<: ",
    "{",
    "}",
    "[",
    "]",
    "\t",
    "'",
    '"',
    "%",
    "@",
    "`",
    "|",
    ">",
    "? ",
    "#",
    "${",
    "}",
    "\\",
    "\n",
    "  ",
    "~",
    ".inf",
    "0x",
    "1e999",
]


def check(data: bytes) -> None:
    """The property: a Config, or a ConfigError whose every problem names the file."""
    with tempfile.TemporaryDirectory(prefix="citygw-fuzz-") as tmp:
        path = Path(tmp) / "citygw.yaml"
        path.write_bytes(data)
        try:
            config = load(path, environ=ENV)
        except ConfigError as exc:
            assert exc.problems, "a ConfigError without a problem"
            for problem in exc.problems:
                assert problem.file == os.fspath(path)
                assert problem.message
            str(exc)  # renders
            return
        assert isinstance(config, Config)


@pytest.mark.parametrize("path", CORPUS, ids=[p.name for p in CORPUS])
def test_corpus(path: Path) -> None:
    check(path.read_bytes())


def problems_of(data: bytes) -> str:
    with tempfile.TemporaryDirectory(prefix="citygw-fuzz-") as tmp:
        path = Path(tmp) / "citygw.yaml"
        path.write_bytes(data)
        with pytest.raises(ConfigError) as caught:
            load(path, environ=ENV)
        return str(caught.value)


def test_a_yaml_bomb_is_refused_before_it_is_expanded() -> None:
    """Found by this fuzzing: 9 aliases of 9 aliases ... expanded in memory (minutes, gigabytes)."""
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    text = "\n".join(levels) + "\ngateway: {id: gw-1, key_file: key.pem}\n"
    assert "expands to more than 100,000 values through anchors and aliases" in problems_of(text.encode())


def test_deep_nesting_is_a_config_error_not_a_recursion_error() -> None:
    """Found by this fuzzing: RecursionError escaped from the YAML parser."""
    assert "nested too deeply" in problems_of(b"a: " + b"[" * 1200 + b"]" * 1200)


@pytest.mark.parametrize("text", [b"._", b"+_", b"gateway: {id: +_}\n"])
def test_a_plain_value_that_only_looks_like_a_number_is_a_config_error(text: bytes) -> None:
    """Found by hypothesis: ruamel.yaml resolves these as a float or an int, then cannot build one."""
    assert "not valid YAML: a value looks like a number but is not one" in problems_of(text)


def test_a_yaml_1_0_directive_is_a_config_error_not_an_assertion_error() -> None:
    """Found by bench/fuzz.py (atheris): ruamel.yaml asserts on ``%YAML 1.0``."""
    assert "not valid YAML: version minor part" in problems_of(b"%YAML 1.0\n---\ngateway: {id: b}\n")


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    lines = draw(st.sampled_from(SEEDS)).split(b"\n")
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["drop", "dup", "swap", "insert", "indent", "truncate", "byte"]))
        i = draw(st.integers(0, max(0, len(lines) - 1)))
        if not lines:
            break
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "insert":
            at = draw(st.integers(0, len(lines[i])))
            bit = draw(st.sampled_from(YAML_BITS)).encode()
            lines[i] = lines[i][:at] + bit + lines[i][at:]
        elif op == "indent":
            lines[i] = b" " * draw(st.integers(0, 5)) + lines[i].lstrip()
        elif op == "truncate":
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
        else:
            at = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:at] + bytes([draw(st.integers(0, 255))]) + lines[i][at + 1 :]
    return b"\n".join(lines)


@SHORT
@given(mutated())
def test_mutated_configs(data: bytes) -> None:
    check(data)


@SHORT
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_random_text(data: bytes) -> None:
    check(data)


@pytest.mark.long
@LONG
@given(mutated())
def test_mutated_configs_long(data: bytes) -> None:
    check(data)
