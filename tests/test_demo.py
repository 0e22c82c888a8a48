"""``citygw demo``: the simulators speak the real protocols, and the whole demo runs as a subprocess.

The simulators' frames are checked with the gateway's own decoders; the demo itself runs as
``citygw demo --duration 20`` (the form scripts and CI use) and checks its own summary: every
simulated device delivered verified readings, no batch failed verification, nothing was lost.
The live view runs in a real pty, with a key press for an uplink outage and Ctrl-C to stop.
"""

from __future__ import annotations

import asyncio
import datetime
import fcntl
import io
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from typing import Any

import pytest
from rich.console import Console

from citygw.demo.devices import Fix, Pms5003, Route, Sdm630, nmea, nmea_sentences, pms5003_frame
from citygw.demo.link import Link
from citygw.demo.run import KEYS
from citygw.demo.view import DeviceRow, Snapshot, render
from citygw.drivers.serial.decoders import decode_nmea, decode_pms5003

from .support import REPO

DEVICES = {"meter-1", "air-1", "bus-gps", "thermo-1", "tag-1", "load-1"}  # config/demo.yaml


def values(measurements: list[Any]) -> dict[str, Any]:
    return {m.name: m.value for m in measurements}


# --- the simulators speak the protocols ----------------------------------------------------------


def test_pms5003_frames_are_the_datasheets() -> None:
    # PMS5003 datasheet appendix I: 42 4D, length 28, 13 words, checksum = sum of the bytes before it
    frame = pms5003_frame([12, 20, 25, 10, 18, 24, 2100, 640, 90, 11, 3, 1, 0x9700])
    body = "424d001c000c00140019000a0012001808340280005a000b000300019700"
    assert frame.hex() == body + "02d6"  # 0x42 + 0x4d + 0x1c + 0x0c + ... + 0x97 = 0x02d6
    assert values(decode_pms5003(frame)) == {"pm1": 10, "pm25": 18, "pm10": 24}
    for t in range(0, 600, 7):
        got = values(decode_pms5003(Pms5003().frames(float(t))[0]))
        assert 3 <= got["pm25"] <= 45 and got["pm1"] <= got["pm25"] <= got["pm10"]


def test_gps_sentences_decode_to_the_route() -> None:
    # NMEA 0183 §5.3: the checksum of the spec's example sentence
    assert nmea("GPVTG,054.7,T,034.4,M,005.5,N,010.2,K") == b"$GPVTG,054.7,T,034.4,M,005.5,N,010.2,K*48\r\n"
    when = datetime.datetime(2026, 11, 24, 16, 5, 9, 250000, tzinfo=datetime.UTC)
    fix = Fix(13.7381, 100.5417, 28.3, 172.5)
    rmc, vtg, gga, gsa = nmea_sentences(fix, when)
    assert rmc.startswith(b"$GPRMC,160509.25,A,1344.28600,N,10032.50200,E,15.281,172.50,241126,,,A*")
    got = values(decode_nmea(rmc))
    assert got["latitude"] == pytest.approx(13.7381) and got["longitude"] == pytest.approx(100.5417)
    assert got["speed"] == pytest.approx(28.3, abs=0.01)
    assert values(decode_nmea(vtg)) == {"speed": pytest.approx(28.3)}
    assert values(decode_nmea(gga))["satellites"] == 9
    assert decode_nmea(gsa) == []  # another sentence type: nothing, and no error

    route = Route()
    stops = [route.at(t) for t in range(0, int(route.period), 5)]
    assert min(f.speed for f in stops) == 0.0 and max(f.speed for f in stops) > 25  # drives and stops
    for f in stops:  # stays on the loop through Pathumwan
        assert 13.73 < f.latitude < 13.75 and 100.52 < f.longitude < 100.55
    again, first = route.at(route.period + 12.5), route.at(12.5)  # a loop
    assert (again.latitude, again.longitude) == pytest.approx((first.latitude, first.longitude))


def test_the_meter_is_consistent_and_counts_energy() -> None:
    meter = Sdm630()
    first = meter.values(0.0)
    later = meter.values(60.0)
    for v in (first, later):
        assert all(225 < v[f"voltage:{p}"] < 235 for p in ("l1", "l2", "l3"))
        total = v["activePower:l1"] + v["activePower:l2"] + v["activePower:l3"]
        assert v["activePower"] == pytest.approx(total) and 0.85 < v["powerFactor"] <= 1.0
        assert v["frequency"] == pytest.approx(50.0, abs=0.05)
    assert later["activeEnergyImport"] - first["activeEnergyImport"] == pytest.approx(
        later["activePower"] * 60 / 3600, rel=0.05
    )


async def test_the_link_drops_and_refuses_while_cut_then_relays_again() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(100):
            writer.write(data)
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    link = Link(server.sockets[0].getsockname()[1])
    await link.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        writer.write(b"ping")
        assert await reader.read(100) == b"ping"
        link.cut()
        assert await reader.read(100) == b""  # dropped
        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        assert await reader.read(100) == b""  # refused
        link.restore()
        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        writer.write(b"pong")
        assert await reader.read(100) == b"pong"
        writer.close()
        assert link.cuts == 1 and link.down_total > 0
    finally:
        await link.close()
        server.close()


# --- the demo ------------------------------------------------------------------------------------


def run_demo(*args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "citygw", "demo", *args, "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return done, summary


def test_demo_for_20_seconds_delivers_every_device_verified() -> None:
    done, summary = run_demo("--duration", "20")
    assert done.returncode == 0, done.stdout + done.stderr
    assert set(summary["devices"]) == DEVICES and summary["silent_devices"] == []
    assert all(n > 0 for n in summary["devices"].values()), summary["devices"]
    assert summary["batches_verified"] >= 10 and summary["bad"] == 0
    assert summary["readings_verified"] == summary["readings_accepted"] > 0
    assert summary["lost"] == 0 and summary["missing_seqs"] == [] and summary["broken_links"] == []
    assert "summary: 6 of 6 devices seen" in done.stdout
    assert "result: ok, nothing lost" in done.stdout
    assert "Traceback" not in done.stderr


def test_an_outage_fills_the_buffer_and_it_drains_after() -> None:
    done, summary = run_demo("--duration", "10", "--outage-at", "2", "--outage-for", "5", "--rate", "50")
    assert done.returncode == 0, done.stdout + done.stderr
    assert summary["outages"] == 1 and summary["outage_s"] == pytest.approx(5, abs=0.5)
    assert summary["peak_unacked_batches"] >= 3  # a batch a second was sealed and kept
    assert summary["lost"] == 0 and summary["bad"] == 0 and summary["silent_devices"] == []
    assert "link DOWN" in done.stdout  # the progress lines show it


def test_bad_options_are_usage_errors() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "citygw", "demo", "--outage-for", "5"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "--outage-for needs --outage-at" in done.stderr


def snapshot_of_the_demo(*, link_up: bool) -> Snapshot:
    """The view's input as the demo makes it during an outage: its six devices, long readings."""
    latest = "voltage:l1 231 V  current:l1 5.12 A  activePower 1180 W"
    rows = [
        DeviceRow(name, f"driver of {name}", "ok", 1234, 0, 0.4, 1200, latest) for name in sorted(DEVICES)
    ]
    return Snapshot(
        *("demo-gw", 12.3, 7000, 120, 55, 50, "connecting", 50, 6800, 5, 123456, link_up, 20.0),
        *(6, 900, 50, 6800, 3, 0, rows),
    )


HEADER = (
    "[bold]citygw demo[/]  gateway demo-gw, 6 simulated devices  ·  broker mqtt://127.0.0.1:45678  ·  "
    "metrics http://127.0.0.1:45679/metrics  ·  state in /tmp/citygw-demo-k2j3h4l5"
)


@pytest.mark.parametrize(("width", "height"), [(80, 24), (100, 30), (140, 40)])
def test_the_live_view_fits_the_terminal_with_the_buffer_panel(width: int, height: int) -> None:
    """80x24 is the default terminal: the buffer panel, what the `o` key shows, must be on it."""
    console = Console(width=width, height=height, file=io.StringIO(), record=True, color_system=None)
    console.print(render(snapshot_of_the_demo(link_up=False), header=HEADER, keys=KEYS))
    lines = console.export_text().rstrip("\n").split("\n")
    assert len(lines) <= height, "\n".join(lines)
    text = "\n".join(lines)
    for shown in ("buffer and uplink", "LINK DOWN: outage (20 s left)", "not delivered", "buffer file"):
        assert shown in text, text
    assert "platform: verified 50 batches, 6800 readings" in text, text
    assert all(name in text for name in DEVICES), text
    assert all(len(line) <= width for line in lines)
    if height >= 40:  # room for the full layout: each device's driver under its name
        assert "driver of meter-1" in text, text


@pytest.mark.parametrize(("columns", "lines"), [(140, 40), (80, 24)])
def test_the_live_view_in_a_terminal_with_an_outage_key_and_ctrl_c(columns: int, lines: int) -> None:
    pid, fd = pty.fork()
    if pid == 0:  # the child: citygw demo on a terminal of that size, as a person runs it
        os.chdir(REPO)
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
        os.environ.update(COLUMNS=str(columns), LINES=str(lines), TERM="xterm-256color")
        os.execv(sys.executable, [sys.executable, "-m", "citygw", "demo", "--rate", "50"])
    seen = bytearray()

    def read() -> bool:
        if select.select([fd], [], [], 0.1)[0]:
            try:
                seen.extend(os.read(fd, 65536))
            except OSError:  # the child is gone
                return False
        return True

    def wait_for(text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text.encode() not in seen:
            assert time.monotonic() < deadline, f"no {text!r} on the terminal:\n{clean(seen)[-3000:]}"
            if not read():
                break

    def watch(seconds: float) -> None:  # a terminal keeps reading what the program writes
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and read():
            pass

    try:
        wait_for("buffer and uplink", 30)  # the live view is up, its buffer panel on screen
        os.write(fd, b"o")  # uplink outage
        wait_for("LINK DOWN", 10)
        wait_for("buffer file", 10)  # the whole panel is on screen (rich crops what does not fit)
        wait_for("platform: verified", 10)
        watch(2)
        os.write(fd, b"\x03")  # Ctrl-C: the link comes back, what the buffer held is delivered
        wait_for("result:", 60)
        wait_for("\n", 5)
        _, status = os.waitpid(pid, 0)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(fd)
    text = clean(seen)
    assert os.waitstatus_to_exitcode(status) == 0, text[-3000:]
    assert "result: ok, nothing lost" in text and "uplink outages 1" in text
    assert "Traceback" not in text


def clean(data: bytes | bytearray) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", bytes(data).decode(errors="replace"))
