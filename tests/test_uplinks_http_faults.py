"""HTTP uplinks against servers that misbehave: redirects, endless bodies, Retry-After in the window,
and secrets in the url or the token file. The daemon runs as a subprocess, posting to a scripted
aiohttp server on loopback; what counts is what the buffer file and the server saw.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from .support import Daemon, verify_all
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


def test_a_redirect_is_never_a_delivery_nor_followed_and_the_batch_waits_for_the_right_url(
    tmp_path: Path, key: Path, daemon_factory: Callable[[Path], Daemon]
) -> None:
    """Each of 301, 302, 303, 307 and 308 (twice each, to the same server's /moved, which would
    answer 200 to anything): no request ever reaches /moved (neither aiohttp's body-less GET for
    301-303 nor its re-POST for 307/308), nothing is acked or pruned while redirected, each code is
    logged once with its Location (query values masked), and everything arrives once the url answers."""
    script = list(REDIRECTS)
    answered: list[int] = []
    delivered: dict[int, str] = {}  # seq -> the JWS of the POST that got the 2xx
    seen: list[tuple[str, str]] = []  # (method, path) of every request

    async def handler(request: web.Request, body: bytes) -> web.StreamResponse:
        seen.append((request.method, request.path))
        if request.path != "/ingest":
            return web.Response(status=200, text="the redirect target: anything lands here")
        if script:
            status = script.pop(0)
            answered.append(status)
            location = f"http://127.0.0.1:{request.url.port}/moved?token=hunter2-{status}"
            return web.Response(status=status, headers={"Location": location}, text="moved")
        assert request.method == "POST" and body
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
        daemon = daemon_factory(config)
        daemon.start()
        _wait(
            "every redirect answered (or one followed)",
            lambda: len(answered) == len(REDIRECTS) or any(path != "/ingest" for _, path in seen),
        )
        assert set(seen) == {("POST", "/ingest")}, f"a redirect was followed: {seen}"
        # the batch at the cursor was redirected ten times: not acked, nothing pruned
        cursor, last, held = _buffer(tmp_path)
        assert cursor == 0 and held >= 1 and last >= 1
        assert not delivered
        _wait("all delivered after the redirects", _all_arrived(delivered, Path(f"{key}.pub"), 300))
        assert daemon.terminate() == 0
    finally:
        server.close()
    # /moved never saw anything: no body-less GET taken for a delivery, no re-POST to another place
    assert set(seen) == {("POST", "/ingest")}, seen
    assert verify_all(list(delivered.values()), Path(f"{key}.pub")).values["d1"] == list(range(300))
    log = (tmp_path / "daemon.log").read_text()
    for status in (301, 302, 303, 307, 308):
        line = f"HTTP {status} redirect to http://127.0.0.1:{server.port}/moved?token=*** not followed"
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
    after = [(t, seq) for t, seq in requests if t > max(t for t, _, _ in answers)]
    assert after, requests
    assert after[0][0] - asked >= wait, f"resent {after[0][0] - asked:.2f} s after Retry-After: {wait}"
    log = (tmp_path / "daemon.log").read_text()
    assert f"uplink platform: batch 2 asked to wait {wait} s (Retry-After)" in log
    assert verify_all(list(delivered.values()), Path(f"{key}.pub")).values["d1"] == list(range(400))
