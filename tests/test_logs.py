"""The log contract of docs/operations.md ("Logs"), checked two ways.

By reading the source: every logging call in ``gateway/`` and ``drivers/`` names an event of
:data:`citygw.logs.EVENTS`, at that event's level, with its fields. By running the real daemon
(a subprocess, at debug level) through a broker restart, a dead Modbus device and a serial frame
with a bad checksum on a real pty, and parsing every line it wrote: the keys in their order, an
event on every line, the fields the event promises, and no ``level=error`` (nothing there needs a
person: the MQTT client library's socket errors at the restart are its debug lines).
"""

from __future__ import annotations

import ast
import io
import logging
import os
import re
import time
import tty
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from citygw.demo.broker import LocalBroker, free_port
from citygw.demo.devices import pms5003_frame
from citygw.logs import EVENTS, EventLog
from citygw.ops.logging_setup import FIELDS, KeyValueFormatter

from .support import REPO, Daemon, write_config

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "exception": 40, "critical": 50}
PACKAGES = ("gateway", "drivers")


# --- the source ----------------------------------------------------------------------------------


def sources() -> Iterator[tuple[Path, ast.Module]]:
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            yield path, ast.parse(path.read_text(), str(path))


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(REPO)}:{getattr(node, 'lineno', '?')}"


def _constant(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def check(path: Path, module: ast.Module, used: set[str]) -> list[str]:
    """The problems of one module's logging calls; adds the events it logs to ``used``."""
    problems: list[str] = []
    loggers = {  # module names bound to a logger: calling a level on them skips the event
        target.id
        for node in ast.walk(module)
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
        for target in node.targets
        if isinstance(target, ast.Name)
        and getattr(node.value.func, "attr", getattr(node.value.func, "id", "")) in ("getLogger", "EventLog")
    } | {"logging"}
    for node in ast.walk(module):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id == "library_logger" and len(node.args) > 1:
            used.add(_constant(node.args[1]) or "")
        if not isinstance(func, ast.Attribute) or func.attr not in (*LEVELS, "log"):
            continue
        target = func.value
        if isinstance(target, ast.Name) and target.id in loggers:
            problems.append(f"{_where(path, node)}: {target.id}.{func.attr}() names no event")
            continue
        if not (isinstance(target, ast.Call) and isinstance(target.func, ast.Attribute)):
            continue
        if target.func.attr != "event":
            continue
        name = _constant(target.args[0]) if target.args else None
        if name is None or name not in EVENTS:
            problems.append(f"{_where(path, node)}: event {name!r} is not in citygw.logs.EVENTS")
            continue
        used.add(name)
        event = EVENTS[name]
        if func.attr == "log" or LEVELS[func.attr] != event.level:
            level = logging.getLevelName(event.level).lower()
            problems.append(f"{_where(path, node)}: {name} is logged at {func.attr}, its level is {level}")
        given = {keyword.arg for keyword in target.keywords}
        if missing := set(event.fields) - given:
            problems.append(f"{_where(path, node)}: {name} lacks {', '.join(sorted(missing))}")
        if unknown := given - set(FIELDS):
            problems.append(f"{_where(path, node)}: {', '.join(sorted(map(str, unknown)))} not in FIELDS")
    return problems


def test_every_logging_call_names_an_event_at_its_level_with_its_fields() -> None:
    used: set[str] = {"library"}  # set by the formatter on a library's lines
    problems = [problem for path, module in sources() for problem in check(path, module, used)]
    assert problems == []
    assert set(EVENTS) - used == set(), "events no call logs"


def test_the_source_check_refuses_what_breaks_the_contract() -> None:
    """The check above on calls that break the contract (so that it cannot pass vacuously)."""
    source = """\
log = logging.getLogger(__name__)
elog = EventLog(__name__)
log.warning("no event")
logging.error("the root logger")
elog.event("device_failing").warning("no device field")
elog.event("device_failing", device=d).error("the wrong level")
elog.event("no_such_event").info("x")
elog.event("device_ok", device=d, colour=c).info("a field not in the contract")
elog.event("device_ok", device=d).info("fine")
"""
    used: set[str] = set()
    assert check(REPO / "x.py", ast.parse(source), used) == [
        "x.py:3: log.warning() names no event",
        "x.py:4: logging.error() names no event",
        "x.py:5: device_failing lacks device",
        "x.py:6: device_failing is logged at error, its level is warning",
        "x.py:7: event 'no_such_event' is not in citygw.logs.EVENTS",
        "x.py:8: colour not in FIELDS",
    ]
    assert used == {"device_failing", "device_ok"}


def test_operations_md_lists_every_event_at_its_level() -> None:
    text = (REPO / "docs" / "operations.md").read_text()
    section = text[text.index("## Logs") : text.index("## Disk budget")]
    for name, event in EVENTS.items():
        level = logging.getLevelName(event.level).lower()
        bullet = next(line for line in section.split("\n- ") if line.startswith(f"`{level}`:"))
        assert f"`{name}`" in bullet, f"{name} is not listed under {level} in docs/operations.md"


def test_a_line_names_its_event_and_fields_and_a_library_line_says_library() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(KeyValueFormatter(journald=True))
    ours, theirs = logging.getLogger("drivers.test_logs"), logging.getLogger("somelib")
    for logger in (ours, theirs):
        logger.addHandler(handler)
        logger.propagate = False
    try:
        EventLog("drivers.test_logs").event("device_failing", device="meter-1").warning(
            "device %s: x", "meter-1"
        )
        theirs.warning("something")
    finally:
        for logger in (ours, theirs):
            logger.removeHandler(handler)
            logger.propagate = True
    assert stream.getvalue().splitlines() == [
        "<4>level=warning logger=drivers.test_logs event=device_failing device=meter-1 "
        'msg="device meter-1: x"',
        "<4>level=warning logger=somelib event=library msg=something",
    ]


# --- the lines of a real daemon ------------------------------------------------------------------

_TOKEN = re.compile(r'([a-z]+)=("(?:[^"\\]|\\.)*"|[^ "]+)(?: |$)')
_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")


def parse(line: str) -> dict[str, str]:
    """A line's fields in order; raises AssertionError where the line breaks the contract."""
    stamp = _STAMP.match(line)
    assert stamp, f"no time stamp: {line}"
    rest, fields = line[stamp.end() :], {}
    while rest:
        token = _TOKEN.match(rest)
        assert token, f"not key=value at {rest[:40]!r}: {line}"
        fields[token[1]] = token[2].strip('"')
        rest = rest[token.end() :]
    keys = list(fields)
    order = ["level", "logger", *[k for k in FIELDS if k in fields], "msg"]
    assert keys[: len(order)] == order and keys[len(order) :] in ([], ["exc"]), f"keys {keys}: {line}"
    assert "event" in fields, f"no event: {line}"
    event = EVENTS.get(fields["event"])
    assert event is not None, f"event not in citygw.logs.EVENTS: {line}"
    if fields["event"] != "library":
        assert fields["level"] == logging.getLevelName(event.level).lower(), f"level: {line}"
        assert all(field in fields for field in event.fields), f"lacks {event.fields}: {line}"
    return fields


@pytest.fixture
def pty_port() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    tty.setraw(slave)
    yield master, os.ttyname(slave)
    os.close(master)
    os.close(slave)


def test_a_daemon_through_a_broker_restart_a_dead_device_and_a_bad_frame_keeps_the_contract(
    tmp_path: Path, broker: LocalBroker, key: Path, pty_port: tuple[int, str]
) -> None:
    master, port = pty_port
    log = tmp_path / "daemon.log"
    config = write_config(
        tmp_path / "c.yaml",
        key=key,
        port=broker.port,
        log={"level": "debug"},
        metrics={"listen": f"127.0.0.1:{free_port()}"},  # not 9108, which another daemon may hold
        buses={
            "gen": {"type": "synthetic"},
            "cabinet": {"type": "modbus-tcp", "host": "127.0.0.1", "port": free_port(), "timeout": "200ms"},
            "uart": {"type": "serial", "port": port},
        },
        devices={
            "d1": {"bus": "gen", "rate": 20},
            "meter": {
                "bus": "cabinet",
                "unit": 1,
                "interval": "200ms",
                "backoff_max": "1s",
                "registers": [{"name": "voltage", "address": 0}],
            },
            "dust": {"bus": "uart", "protocol": "pms5003"},
        },
    )
    daemon = Daemon(config, log)
    daemon.start()

    def lines() -> list[dict[str, str]]:
        return [parse(line) for line in log.read_text().splitlines()]

    def wait_for(what: str, predicate: Callable[[list[dict[str, str]]], bool], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(lines()):
            assert daemon.alive(), log.read_text()
            assert time.monotonic() < deadline, f"no {what}:\n{log.read_text()}"
            time.sleep(0.05)

    def count(event: str, **fields: str) -> Callable[[list[dict[str, str]]], int]:
        def n(seen: list[dict[str, str]]) -> int:
            return sum(
                1 for f in seen if f["event"] == event and all(f.get(k) == v for k, v in fields.items())
            )

        return n

    try:
        connected = count("uplink_connected", uplink="local")
        wait_for("connection", lambda seen: connected(seen) == 1)
        wait_for("dead device", lambda seen: count("device_failing", device="meter")(seen) > 0)
        frame = bytearray(pms5003_frame([12, 20, 25, 10, 18, 24, 2100, 640, 90, 11, 3, 1, 0x9700]))
        frame[-1] ^= 0xFF  # a bad checksum
        os.write(master, bytes(frame))
        wait_for("bad frame", lambda seen: count("device_error", device="dust", reason="checksum")(seen) > 0)
        broker.stop()
        wait_for("retrying", lambda seen: count("uplink_retrying", uplink="local")(seen) > 0)
        broker.start()
        wait_for("reconnection", lambda seen: connected(seen) == 2)
        assert daemon.terminate() == 0
    finally:
        if daemon.alive():
            daemon.kill9()
    seen = lines()  # every line parses (parse asserts the contract)
    assert [f for f in seen if f["level"] == "error"] == []
    assert count("stopped")(seen) == 1 and count("started")(seen) == 1
    assert count("mqtt_client", uplink="local")(seen) > 0  # the client library's lines, as debug
