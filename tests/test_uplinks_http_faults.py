"""HTTP uplinks against servers that misbehave: redirects, endless bodies, Retry-After in the window,
and secrets in the url or the token file. The daemon runs as a subprocess, posting to a scripted
aiohttp server on loopback; what counts is what the buffer file and the server saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web

from citygw import redact
from citygw.demo.broker import free_port

from .support import Daemon, citygw, verify_all
from .test_uplinks_http import ScriptedServer, _http_config

SECRET = "Zq9x-api-key-NEVER-SHOWN-4c1d"
TOKEN = "tok-NEVER-SHOWN-77e1"


def _seq(request: web.Request) -> int:
    return int(request.headers["Idempotency-Key"].rsplit(":", 1)[1])


def _buffer(tmp_path: Path) -> tuple[int, int, int]:
    """The http uplink's cursor, the last sealed seq and the batches held, as the buffer file says."""
    db = tmp_path / "state" / "buffer.db"
    if not db.exists():
        return 0, 0, 0
    with sqlite3.connect(db) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"cursors", "batches", "meta"} <= tables:
            return 0, 0, 0
        cursor = conn.execute(
            "SELECT coalesce(max(seq), 0) FROM cursors WHERE uplink = 'platform'"
        ).fetchone()
        held = conn.execute("SELECT count(*), coalesce(max(seq), 0) FROM batches").fetchone()
    return int(cursor[0]), int(held[1]), int(held[0])


def _wait(what: str, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def _all_arrived(tokens: dict[int, str], public_key: Path, count: int) -> Callable[[], bool]:
    """The server holds every one of the ``count`` readings, signed and chained (jwcrypto)."""
    return lambda: len(verify_all(list(tokens.values()), public_key).values.get("d1", [])) >= count


REDIRECTS = [301, 301, 302, 302, 303, 303, 307, 307, 308, 308]
UPSERT = "/ngsi-ld/v1/entityOperations/upsert"


def _cursor(tmp_path: Path, uplink: str) -> tuple[int, int]:
    """An uplink's cursor and the last seq sealed, as the buffer file says."""
    db = tmp_path / "state" / "buffer.db"
    if not db.exists():
        return 0, 0
    with sqlite3.connect(db) as conn:
        try:
            row = conn.execute("SELECT seq FROM cursors WHERE uplink = ?", (uplink,)).fetchone()
            last = conn.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
        except sqlite3.OperationalError:  # not created yet
            return 0, 0
    return (int(row[0]) if row else 0), (int(last[0]) - 1 if last else 0)


def test_a_redirect_is_never_a_delivery_nor_followed_and_the_batch_waits_for_the_right_url(
    tmp_path: Path, key: Path, daemon_factory: Callable[[Path], Daemon]
) -> None:
    """An http and an ngsi-ld uplink, each answered 301, 302, 303, 307 and 308 (twice each) to the
    same server's /moved, which would answer 200 to anything: no request ever reaches /moved
    (neither aiohttp's body-less GET for 301-303 nor its re-POST for 307/308), nothing is acked
    or pruned while redirected, each code is logged once per uplink with its Location (query
    values masked), and everything arrives once the url answers."""
    scripts = {"/ingest": list(REDIRECTS), UPSERT: list(REDIRECTS)}
    delivered: dict[int, str] = {}  # seq -> the JWS of the POST that got the 2xx
    seen: list[tuple[str, str]] = []  # (method, path) of every request

    async def handler(request: web.Request, body: bytes) -> web.StreamResponse:
        seen.append((request.method, request.path))
        if request.path not in scripts:
            return web.Response(status=200, text="the redirect target: anything lands here")
        assert request.method == "POST" and body
        if scripts[request.path]:
            status = scripts[request.path].pop(0)
            location = f"http://127.0.0.1:{request.url.port}/moved?token=hunter2-{status}"
            return web.Response(status=status, headers={"Location": location}, text="moved")
        if request.path == UPSERT:
            return web.Response(status=204)
        delivered[_seq(request)] = body.decode()
        return web.Response(status=200)

    server = ScriptedServer(handler)
    try:
        config = _http_config(
            tmp_path,
            key,
            f"http://127.0.0.1:{server.port}/ingest",
            300,
            backoff_initial="100ms",
            backoff_max="300ms",
        )
        data = json.loads(config.read_text())
        data["uplinks"]["cb"] = {**data["uplinks"]["platform"], "type": "ngsi-ld"}
        data["uplinks"]["cb"]["url"] = f"http://127.0.0.1:{server.port}"
        data["gateway"]["location"] = {"latitude": 13.7563, "longitude": 100.5018}
        config.write_text(json.dumps(data))
        daemon = daemon_factory(config)
        daemon.start()
        _wait(
            "every redirect answered (or one followed)",
            lambda: not any(scripts.values()) or any(path != "/ingest" for _, path in seen),
        )
        assert set(seen) == {("POST", "/ingest"), ("POST", UPSERT)}, f"a redirect was followed: {seen}"
        # the batch at each cursor was redirected ten times: not acked, nothing pruned
        assert _cursor(tmp_path, "platform")[0] == 0 and _cursor(tmp_path, "cb")[0] == 0
        assert _buffer(tmp_path)[2] >= 1
        assert not delivered
        _wait("all delivered after the redirects", _all_arrived(delivered, Path(f"{key}.pub"), 300))
        last = max(delivered)
        # both cursors at the last sealed seq (equal cursors alone may both be 0: saved after a while)
        _wait(
            "the broker has all",
            lambda: _cursor(tmp_path, "cb") == _cursor(tmp_path, "platform") == (last,) * 2,
        )
        # the server counts an answer when it sends it; the daemon logs it when it has read it
        _wait(
            "each redirect logged by both uplinks",
            lambda: (tmp_path / "daemon.log").read_text().count("redirect to ") >= 10,
        )
        assert daemon.terminate() == 0
    finally:
        server.close()
    # /moved never saw anything: no body-less GET taken for a delivery, no re-POST to another place
    assert set(seen) == {("POST", "/ingest"), ("POST", UPSERT)}, seen
    assert verify_all(list(delivered.values()), Path(f"{key}.pub")).values["d1"] == list(range(300))
    log = (tmp_path / "daemon.log").read_text()
    for uplink in ("platform", "cb"):
        for status in (301, 302, 303, 307, 308):
            line = (
                f"uplink {uplink}: HTTP {status} redirect to "
                f"http://127.0.0.1:{server.port}/moved?token=*** not followed"
            )
            assert log.count(line) == 1, f"{status}: {log.count(line)} lines\n{log}"
    assert "hunter2" not in log


STREAM_CAP = 96 * 1024 * 1024  # what the server would send at most: far more than a client should read
READ_BOUND = 16 * 1024 * 1024  # socket buffers on both sides fill with less; reading it all is a bug


def test_an_endless_answer_body_is_not_read_and_the_attempt_ends_within_the_deadline(
    tmp_path: Path, key: Path, daemon_factory: Callable[[Path], Daemon]
) -> None:
    """A 503 whose body never ends, then a 200 whose body never ends: the uplink reads a bounded
    excerpt of the first (logged, the batch kept and retried) and none of the second (the batch is
    delivered by its status), and hangs up on both long before the uplink's timeout; the server
    never gets to send more than the socket buffers hold."""
    script = [503, 200]
    streams: list[tuple[int, int, str, float]] = []  # status, bytes sent, who ended it, seconds
    delivered: dict[int, str] = {}
    timeout = 5.0

    async def handler(request: web.Request, body: bytes) -> web.StreamResponse:
        if not script:
            delivered[_seq(request)] = body.decode()
            return web.Response(status=200)
        status = script.pop(0)
        if status == 200:
            delivered[_seq(request)] = body.decode()
        response = web.StreamResponse(status=status, headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        chunk = b"upstream overloaded, " * 3000
        sent, started, ended = 0, time.monotonic(), "cap"
        try:
            while sent < STREAM_CAP:
                await response.write(chunk)
                sent += len(chunk)
        except ConnectionError:
            ended = "client"
        streams.append((status, sent, ended, time.monotonic() - started))
        return response

    server = ScriptedServer(handler)
    try:
        config = _http_config(
            tmp_path,
            key,
            f"http://127.0.0.1:{server.port}/ingest",
            300,
            timeout=f"{timeout:g}s",
            backoff_initial="100ms",
            backoff_max="300ms",
        )
        daemon = daemon_factory(config)
        daemon.start()
        _wait("both endless answers ended", lambda: len(streams) == 2, timeout=60)
        _wait("all delivered", _all_arrived(delivered, Path(f"{key}.pub"), 300))
        assert daemon.terminate() == 0
    finally:
        server.close()
    for status, sent, ended, seconds in streams:
        assert ended == "client", f"HTTP {status}: the client read all {sent:,} bytes the server had"
        assert sent < READ_BOUND, f"HTTP {status}: {sent:,} bytes sent before the client hung up"
        assert seconds < timeout, f"HTTP {status}: the attempt outlived the uplink's {timeout} s timeout"
    assert verify_all(list(delivered.values()), Path(f"{key}.pub")).values["d1"] == list(range(300))
    log = (tmp_path / "daemon.log").read_text()
    [line] = [line for line in log.splitlines() if "HTTP 503" in line]
    assert "uplink platform: HTTP 503 upstream overloaded, upstream overloaded," in line
    excerpt = line.split("HTTP 503 ", 1)[1].split(" (retrying with backoff)")[0]
    assert len(excerpt) <= 200


def test_retry_after_of_a_batch_behind_the_first_in_the_window_is_honoured_and_logged(
    tmp_path: Path, key: Path, daemon_factory: Callable[[Path], Daemon]
) -> None:
    """Two batches in flight: the second is answered 429 with Retry-After: 3, then the first 503
    without one. Nothing may be sent again before those 3 s (the backoff alone would retry within
    300 ms), the wait is logged with its batch, and everything arrives afterwards."""
    wait = 3
    delivered: dict[int, str] = {}
    answers: list[tuple[float, int, int]] = []  # monotonic time, seq, status
    requests: list[tuple[float, int]] = []
    second_answered: list[asyncio.Event] = []  # made on the server's loop
    done = False

    async def handler(request: web.Request, body: bytes) -> web.StreamResponse:
        nonlocal done
        seq = _seq(request)
        requests.append((time.monotonic(), seq))
        second = second_answered[0] if second_answered else asyncio.Event()
        second_answered[:] = [second]
        if not done and seq == 2:
            answers.append((time.monotonic(), seq, 429))
            second.set()
            return web.Response(status=429, headers={"Retry-After": str(wait)}, text="slow down")
        if not done and seq == 1:
            try:
                await asyncio.wait_for(second.wait(), 1.0)
            except TimeoutError:  # batch 2 was not sealed yet when this session began
                return web.Response(status=503, text="not yet")
            done = True
            answers.append((time.monotonic(), seq, 503))
            return web.Response(status=503, text="busy")
        delivered[seq] = body.decode()
        return web.Response(status=200)

    server = ScriptedServer(handler)
    try:
        config = _http_config(
            tmp_path,
            key,
            f"http://127.0.0.1:{server.port}/ingest",
            400,
            window=4,
            backoff_initial="100ms",
            backoff_max="300ms",
        )
        daemon = daemon_factory(config)
        daemon.start()
        _wait("all delivered", _all_arrived(delivered, Path(f"{key}.pub"), 400))
        assert daemon.terminate() == 0
    finally:
        server.close()
    asked = next(t for t, seq, status in answers if status == 429)
    # the resend starts at the cursor: batch 1 (batches 3 and 4 may still arrive from the old session)
    after = [(t, seq) for t, seq in requests if t > max(t for t, _, _ in answers) and seq == 1]
    assert after, requests
    assert after[0][0] - asked >= wait, f"resent {after[0][0] - asked:.2f} s after Retry-After: {wait}"
    log = (tmp_path / "daemon.log").read_text()
    assert f"uplink platform: batch 2 asked to wait {wait} s (Retry-After)" in log
    assert verify_all(list(delivered.values()), Path(f"{key}.pub")).values["d1"] == list(range(400))


def test_a_secret_in_an_uplink_url_appears_in_no_log_status_or_metric(
    tmp_path: Path, key: Path, daemon_factory: Callable[[Path], Daemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`?api_key=${API_KEY}` on an http and an ngsi-ld uplink: the key is sent (the platform needs
    it), but the daemon's log, `citygw status`, `check` and the metrics show it as ***, even where
    the server echoes it (an error page, a Location, a timeout's message)."""
    monkeypatch.setenv("API_KEY", SECRET)
    script = ["echo", "timeout", "redirect"]  # the first three requests to each uplink
    scripts = {"/ingest": list(script), "/ngsi-ld/v1/entityOperations/upsert": list(script)}
    keys: list[str | None] = []
    delivered: dict[int, str] = {}

    async def handler(request: web.Request, body: bytes) -> web.StreamResponse:
        keys.append(request.query.get("api_key"))
        steps = scripts[request.path]
        if steps:
            step = steps.pop(0)
            if step == "echo":
                return web.Response(status=503, text=f"no capacity for {request.url} (api_key={SECRET})")
            if step == "timeout":
                await asyncio.sleep(3)  # the uplinks' timeout is 1 s
                return web.Response(status=200)
            return web.Response(status=307, headers={"Location": f"{request.url}&moved=1"})
        if request.path == "/ingest":
            delivered[_seq(request)] = body.decode()
        return web.Response(status=204 if request.path != "/ingest" else 200)

    server = ScriptedServer(handler)
    metrics = free_port()
    try:
        base = f"http://127.0.0.1:{server.port}"
        config = _http_config(tmp_path, key, base + "/ingest?api_key=${API_KEY}", 300)
        data = json.loads(config.read_text())
        data["uplinks"]["cb"] = {
            "type": "ngsi-ld",
            "url": base + "/?api_key=${API_KEY}",
            "timeout": "1s",
            "window": 1,
            "backoff_initial": "100ms",
            "backoff_max": "300ms",
        }
        data["gateway"]["location"] = {"latitude": 13.7563, "longitude": 100.5018}
        data["metrics"] = {"listen": f"127.0.0.1:{metrics}"}
        data["log"] = {"level": "debug"}
        config.write_text(json.dumps(data))
        outputs: dict[str, str] = {}
        done = citygw("check", "-c", str(config))
        assert done.returncode == 0, done.stderr
        outputs["check"] = done.stdout + done.stderr
        daemon = daemon_factory(config)
        daemon.start()
        _wait("all delivered", _all_arrived(delivered, Path(f"{key}.pub"), 300))
        with contextlib.suppress(AssertionError):  # asserted below, after what matters most
            _wait("both scripts played", lambda: not any(scripts.values()), timeout=15)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as response:
            outputs["metrics"] = response.read().decode()
        for args in (("--json",), ()):
            done = citygw("status", "-c", str(config), *args)
            assert done.returncode == 0, done.stderr
            outputs[f"status {args}"] = done.stdout + done.stderr
        assert daemon.terminate() == 0
        outputs["run (debug log)"] = (tmp_path / "daemon.log").read_text()
    finally:
        server.close()
    for what, text in outputs.items():
        assert SECRET not in text, f"the api key appears in {what}"
    assert not any(scripts.values()), scripts
    assert keys and all(k == SECRET for k in keys), "every request carries the key"
    log = outputs["run (debug log)"]
    assert f"uplink platform: POST {base}/ingest?api_key=***: TimeoutError" in log
    assert f"uplink cb: POST {base}/ngsi-ld/v1/entityOperations/upsert?options=***&api_key=***: " in log
    assert f"HTTP 307 redirect to {base}/ngsi-ld/v1/entityOperations/upsert?options=***&api_key=***" in log
    assert "HTTP 503 no capacity for" in log


def test_check_refuses_a_token_or_user_that_cannot_be_a_header_value(tmp_path: Path, key: Path) -> None:
    """A bearer_token_file of two lines passed `check`, then the uplink crash-looped on a header
    error: `check` refuses it at the file key's line, without showing the token."""
    config = _http_config(tmp_path, key, "http://127.0.0.1:1/ingest", 10)
    data = json.loads(config.read_text())
    token_file = tmp_path / "token"
    data["uplinks"]["platform"]["bearer_token_file"] = str(token_file)
    config.write_text(json.dumps(data, indent=2))
    line = next(n for n, text in enumerate(config.read_text().splitlines(), 1) if "bearer_token_file" in text)

    token_file.write_text(f"{TOKEN}\n")  # one line and its newline: fine
    done = citygw("check", "-c", str(config))
    assert done.returncode == 0, done.stderr

    for content, reason in (
        (f"{TOKEN}\nsecond-line\n", "the token has 2 lines"),
        (f"Bearer {TOKEN}\n", "the token holds a space at position 7"),
        (f"{TOKEN}\u00e9\n", "the token holds the character U+00E9"),
    ):
        token_file.write_text(content)
        for command in ("check", "run") if "2 lines" in reason else ("check",):
            done = citygw(command, "-c", str(config))
            assert done.returncode == 78, (command, done.stderr)
            assert f"{config}:{line}: uplinks.platform.bearer_token_file: {reason}" in done.stderr
            assert "one line of visible ASCII characters" in done.stderr
            assert TOKEN not in done.stderr + done.stdout

    data["uplinks"]["platform"].pop("bearer_token_file")
    data["uplinks"]["platform"].update(username="gw:7", password="pw-NEVER-SHOWN")
    data["uplinks"]["extra"] = {"type": "http", "url": f"ftp://h/in?api_key={SECRET}"}
    config.write_text(json.dumps(data, indent=2))
    done = citygw("check", "-c", str(config))
    assert done.returncode == 78
    assert "uplinks.platform.username: the user name holds a ':'" in done.stderr
    assert "'ftp://h/in?api_key=***' is not an http:// or https:// url" in done.stderr
    assert SECRET not in done.stderr and "NEVER-SHOWN" not in done.stderr


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("https://p.example/in?api_key=s3cret&flag", "https://p.example/in?api_key=***&flag"),
        ("https://u:pw@p.example:8443/in#frag", "https://***@p.example:8443/in"),
        ("/moved?token=abc", "/moved?token=***"),
        ("mqtt://localhost:99999", "mqtt://localhost:99999"),  # malformed, nothing to hide
        ("mqtt://u:pw@localhost:99999", "mqtt://***@localhost:99999/***"),
        ("https://p.example/in", "https://p.example/in"),
    ],
)
def test_redact_url_keeps_what_tells_uplinks_apart_and_masks_the_rest(given: str, shown: str) -> None:
    assert redact.url(given) == shown


def test_redact_text_masks_urls_and_remembered_secrets_keeping_punctuation() -> None:
    redact.remember(["pa55/word+1", None, "no"])
    text = "POST https://h/in?k=v1: refused (k=v1), token pa55%2Fword%2B1 and pa55/word+1; no."
    assert redact.text(text) == "POST https://h/in?k=***: refused (k=v1), token *** and ***; no."
