"""``citygw fleet``: the fleet view of a running ``citygw receive`` (its ``/fleet``) as a table.

One row per gateway, the boxes that need a person first (:class:`citygw.receiver.fleet.Severity`): state,
last seen, uplink lag, chain, config version, failing devices and what is wrong, in words.
"""

from __future__ import annotations

import errno
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from citygw.commands.status import human_age

_STYLE = {
    "down": "bold red",
    "chain": "bold red",
    "stopped": "yellow",
    "never_seen": "yellow",
    "lagging": "yellow",
    "degraded": "cyan",
    "ok": "green",
}


def fetch_fleet(url: str, *, timeout: float) -> dict[str, Any]:
    """GET ``url``/fleet; OSError or ValueError saying what went wrong."""
    target = url.rstrip("/") + "/fleet"
    with urllib.request.urlopen(target, timeout=timeout) as answer:
        data: dict[str, Any] = json.loads(answer.read())
    if not isinstance(data.get("gateways"), list):
        raise ValueError(f"{target} did not answer with a fleet view")
    return data


def _chain(chain: dict[str, Any] | None) -> str:
    if chain is None:
        return "-"
    if chain["clones"]:
        state = "CLONED"
    elif chain["broken_links"]:
        state = f"BROKEN at {chain['broken_links'][0]}"
    elif chain["missing"]:
        state = f"{sum(b - a + 1 for a, b in chain['missing'])} missing"
    else:
        state = "ok"
    return f"{(chain['chain'] or 'v1')[:8]} #{chain['last_seq']} {state}"


def _seen(row: dict[str, Any]) -> str:
    age = row["last_seen_age"]
    return "never" if age is None else f"{human_age(age)} ago"


def render(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError(errno.EPIPE, "stdout's reader went away")

    console = _Console(width=None if sys.stdout.isatty() else 160, highlight=False)
    counts = ", ".join(f"{n} {state}" for state, n in data["counts"].items()) or "no gateway yet"
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(data["at"]))
    table = Table(title=f"fleet at {when}: {counts}", title_justify="left")
    for column in ("gateway", "state", "last seen", "lag", "chain", "config", "failing devices", "problem"):
        table.add_column(column, justify="right" if column == "lag" else "left")
    for row in data["gateways"]:
        lag = row["lag"]
        table.add_row(
            row["gateway"],
            f"[{_STYLE.get(row['severity'], '')}]{row['severity']}[/]",
            _seen(row),
            "-" if lag is None else human_age(lag),
            _chain(row["chain"]),
            row["config_version"] or "-",
            ", ".join(row["failing_devices"]) or "-",
            "; ".join(row["problems"]) or "-",
        )
    console.print(table)


def fleet_main(url: str, *, as_json: bool, timeout: float) -> int:
    if not url.startswith(("http://", "https://")):
        sys.stderr.write(f"citygw fleet: {url!r} is not an http:// or https:// url of a citygw receive\n")
        return 2
    try:
        data = fetch_fleet(url, timeout=timeout)
    except (OSError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        sys.stderr.write(f"citygw fleet: cannot read the fleet from {url}: {reason}\n")
        return 1
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        render(data)
    return 0
