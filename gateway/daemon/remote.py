"""Remote configuration: signed config documents, applied as a reload, rolled back when unhealthy.

A document (:mod:`citygw.config.document`) arrives on the MQTT config topic (retained, every MQTT
uplink subscribes) or from ``remote.config_url`` (polled, conditional GET). The box:

1. verifies the signature against ``gateway.operator_keys`` and that it names this gateway;
2. refuses a version not higher than the highest it has taken or tried (no replay, no downgrade;
   kept in ``remote-config.json`` in the state directory, so it survives restarts);
3. validates the YAML like ``citygw check`` (written first as ``<config>.incoming``) and refuses a
   document that changes ``gateway.id``, the key files, the operator keys or a restart-only key,
   names a new path outside the config, state or credentials directory, or carries a secret inline;
4. keeps the file in effect as ``<config>.previous``, writes a pending marker
   (``remote-config.pending``), replaces the config file atomically and applies it as a reload;
5. keeps it when, for ``remote.grace``, no bus task failed and every uplink is connected at the end;
   otherwise restores ``<config>.previous`` and applies it again (rolled back).

A daemon that dies in the middle (kill -9, a crash the new config causes) finds the pending marker
at its next start (:func:`recover_at_start`) and restores the previous file before it loads
anything: the box ends in the previous config or the new one confirmed, never without one.

Every outcome is a log line and readings of the reserved device ``gateway`` in the signed stream:
``config/applied``, ``config/refused`` or ``config/rolledBack`` with the document's version as value,
and ``config/refusedReason`` / ``config/rolledBackReason`` with the reason as a string (``vs``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from citygw.config.document import ConfigDocument, DocumentRefused, digest, verify_document
from citygw.drivers.health import DeviceState
from citygw.errors import CitygwError, ConfigError, KeyFileError
from citygw.logs import EventLog
from citygw.reading import Reading
from citygw.uplinks.base import UplinkState

if TYPE_CHECKING:
    from citygw.config import Config
    from citygw.daemon.running import RunningGateway

log = EventLog(__name__)

DEVICE = "gateway"  # the reserved device id of the box's own readings
STATE_FILE = "remote-config.json"
PENDING_FILE = "remote-config.pending"
HANDLED_KEPT = 32  # digests of documents handled, so a retained one arriving again is quiet
WATCH_STEP = 0.25  # seconds between looks at the health of a config on trial


def state_dir(config: Config) -> Path:
    return config.buffer_path().parent


def previous_path(config_path: Path) -> Path:
    return config_path.with_name(config_path.name + ".previous")


def file_digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


# -- the state that survives restarts -----------------------------------------------------------


@dataclass(slots=True)
class RemoteState:
    """``remote-config.json``: what the box took, tried and still has to report."""

    version: int = 0  # the version of the remote config in effect (0: none taken yet)
    sha256: str = ""  # of the config file that version wrote
    highest: int = 0  # the highest version taken or tried (rolled back): older ones are refused
    handled: list[str] = field(default_factory=list)  # digests of documents handled
    unsent: list[dict[str, Any]] = field(default_factory=list)  # outcomes found at start, for the stream

    @classmethod
    def load(cls, directory: Path) -> RemoteState:
        try:
            data = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls()
        if not isinstance(data, dict):
            return cls()
        return cls(
            version=int(data.get("version", 0)),
            sha256=str(data.get("sha256", "")),
            highest=int(data.get("highest", 0)),
            handled=[str(d) for d in data.get("handled", [])][-HANDLED_KEPT:],
            unsent=[o for o in data.get("unsent", []) if isinstance(o, dict)],
        )

    def save(self, directory: Path) -> None:
        data = {
            "version": self.version,
            "sha256": self.sha256,
            "highest": self.highest,
            "handled": self.handled[-HANDLED_KEPT:],
            "unsent": self.unsent,
        }
        write_atomically(directory / STATE_FILE, json.dumps(data, indent=1).encode())

    def remember(self, token_digest: str) -> None:
        if token_digest not in self.handled:
            self.handled.append(token_digest)
            del self.handled[:-HANDLED_KEPT]


def write_atomically(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """``path`` holds ``data`` whole or keeps what it held: a synced temporary file renamed over it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if mode is None:
            with contextlib.suppress(OSError):
                mode = path.stat().st_mode & 0o777
        if mode is not None:
            os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            os.fsync(directory)
    finally:
        os.close(directory)


def version_in_effect(config: Config) -> str:
    """The config version in effect: the remote document's version when the file is the one it
    wrote, else ``file-`` and the start of the file's SHA-256 (a person edited it on the box)."""
    here = file_digest(config.source)
    state = RemoteState.load(state_dir(config))
    if state.version and state.sha256 == here:
        return str(state.version)
    return f"file-{here[:12]}"


# -- at start: a pending config that was never confirmed -----------------------------------------


def recover_at_start(config_path: Path, directory: Path) -> str | None:
    """Restore ``<config>.previous`` when a remote config was pending (the daemon died before
    confirming it); returns what happened, for the log, or None when nothing was pending."""
    marker = directory / PENDING_FILE
    try:
        pending = json.loads(marker.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        pending = {}
    version = int(pending.get("version", 0)) if isinstance(pending, dict) else 0
    state = RemoteState.load(directory)
    if version and state.version >= version:  # confirmed; the marker outlived it by a crash
        marker.unlink()
        return None
    previous = previous_path(config_path)
    if previous.exists():
        write_atomically(config_path, previous.read_bytes())
    reason = "the daemon stopped before the new config was confirmed; the previous config is restored"
    state.highest = max(state.highest, version)
    state.unsent.append({"outcome": "rolledBack", "version": version, "reason": reason, "time": time.time()})
    state.save(directory)
    marker.unlink()
    return f"config version {version}: {reason}"


# -- checks a remote document must pass beyond the config's own validation ------------------------


def _paths(value: Any) -> list[Path]:
    if isinstance(value, Path):
        return [value]
    if isinstance(value, BaseModel):
        return [
            p for name in type(value).model_fields if name != "source" for p in _paths(getattr(value, name))
        ]
    if isinstance(value, dict):
        return [p for v in value.values() for p in _paths(v)]
    if isinstance(value, list | tuple):
        return [p for v in value for p in _paths(v)]
    return []


def _inline_secrets(text: str) -> list[str]:
    from ruamel.yaml import YAML

    from citygw.config.source import SECRET_FILES

    found: list[str] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in SECRET_FILES.values():
                    found.append(f"{where}{key}")
                walk(value, f"{where}{key}.")
        elif isinstance(node, list):
            for index, item in enumerate(node):
                walk(item, f"{where}{index}.")

    with contextlib.suppress(Exception):  # the loader reports what is wrong with the YAML itself
        walk(YAML(typ="safe", pure=True).load(text), "")
    return found


def screen(current: Config, new: Config, text: str) -> str | None:
    """Why ``new`` (from a remote document) may not replace ``current``, or None."""
    for key in ("id", "key_file", "operator_keys"):
        if getattr(current.gateway, key) != getattr(new.gateway, key):
            return f"it changes gateway.{key}, which only a person at the box may change"
    from citygw.daemon.reload import plan_reload

    restart = plan_reload(current, new).needs_restart
    if restart:
        return f"it changes what only a restart can change: {'; '.join(restart)}"
    secrets = _inline_secrets(text)
    if secrets:
        return f"it carries a secret inline ({', '.join(secrets)}); secrets stay in files on the box (*_file)"
    allowed = [Path(os.path.realpath(current.source.parent)), Path(os.path.realpath(state_dir(current)))]
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        allowed.append(Path(os.path.realpath(credentials)))
    kept = set(_paths(current))  # what the box names already (its key file) stays where it is
    for path in _paths(new):
        real = Path(os.path.realpath(path))
        if path not in kept and not any(real.is_relative_to(root) for root in allowed):
            return f"it names {path}, outside the box's config and state directories"
    return None


# -- the daemon's side -------------------------------------------------------------------------


class RemoteConfig:
    """Takes signed config documents for one running :class:`~citygw.daemon.gateway.Gateway`."""

    def __init__(self, gateway: RunningGateway) -> None:
        self.gateway = gateway
        self._offers: asyncio.Queue[tuple[str, str]] = asyncio.Queue(maxsize=8)
        self.dropped = 0  # offers that found the queue full (a flood of documents)

    @property
    def directory(self) -> Path:
        return state_dir(self.gateway.config)

    def offer(self, token: str, source: str) -> None:
        """A document arrived (from the MQTT uplink's message loop: never blocks)."""
        try:
            self._offers.put_nowait((token, source))
        except asyncio.QueueFull:
            self.dropped += 1

    async def run(self) -> None:
        """Report outcomes found at start, poll ``config_url`` if set, handle documents in turn."""
        await self._send_unsent()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._poll(), name="remote-config-poll")
            while True:
                token, source = await self._offers.get()
                await self.handle(token, source)

    async def _send_unsent(self) -> None:
        state = RemoteState.load(self.directory)
        if not state.unsent:
            return
        for outcome in state.unsent:
            log.event("config_rolled_back", reason=str(outcome.get("reason"))).error(
                "config version %s was rolled back: %s", outcome.get("version"), outcome.get("reason")
            )
            await self._record(
                str(outcome.get("outcome", "rolledBack")),
                int(outcome.get("version", 0)),
                str(outcome.get("reason", "")),
                when=float(outcome.get("time", time.time())),
            )
        state.unsent = []
        state.save(self.directory)

    async def _record(
        self, outcome: str, version: int, reason: str = "", *, when: float | None = None
    ) -> None:
        """The outcome as readings of the reserved device ``gateway`` (signed, in the stream)."""
        at = time.time() if when is None else when
        readings = [Reading(DEVICE, f"config/{outcome}", version, "", at)]
        if reason:
            readings.append(Reading(DEVICE, f"config/{outcome}Reason", reason[:500], "", at))
        await self.gateway.pipeline.put(readings)

    async def _refuse(self, version: int, reason: str, source: str) -> None:
        log.event("config_refused", reason=reason).warning(
            "config document from %s (version %d) refused: %s", source, version, reason
        )
        await self._record("refused", version, reason)

    async def handle(self, token: str, source: str) -> None:
        """One document, to its outcome (applied, refused or rolled back)."""
        config = self.gateway.config
        if not config.gateway.operator_keys:
            return  # remote configuration is off; the uplink does not subscribe either
        state = RemoteState.load(self.directory)
        token_digest = digest(token)
        if token_digest in state.handled:  # a retained document arriving again at a reconnect
            return
        state.remember(token_digest)
        state.save(self.directory)
        try:
            document = self._verify(token)
            if config.gateway.id not in document.gateways:
                raise DocumentRefused(
                    f"it is for {', '.join(document.gateways)}, not {config.gateway.id}",
                    version=document.version,
                )
            if document.version <= state.highest:
                raise DocumentRefused(
                    f"version {document.version} is not higher than {state.highest}, the highest "
                    "taken or tried (no replay, no downgrade)",
                    version=document.version,
                )
        except DocumentRefused as refused:
            await self._refuse(refused.version, refused.reason, source)
            return
        await self._take(document, source)

    def _verify(self, token: str) -> ConfigDocument:
        from citygw.wire.signing import load_public_keys

        try:
            keys = load_public_keys(self.gateway.config.gateway.operator_keys)
        except KeyFileError as exc:
            raise DocumentRefused(f"the operator keys cannot be read: {exc}") from None
        return verify_document(token, keys)

    async def _take(self, document: ConfigDocument, source: str) -> None:
        from citygw.config import load_config
        from citygw.daemon.reload import ReloadRefused

        gateway = self.gateway
        current = gateway.config
        path = current.source
        incoming = path.with_name(path.name + ".incoming")
        version = document.version
        state = RemoteState.load(self.directory)
        state.highest = max(state.highest, version)
        state.save(self.directory)
        if not os.access(path.parent, os.W_OK):
            closed = (
                f"the config directory {path.parent} is not writable by the service (to take remote "
                "configuration: ConfigurationDirectoryMode=0770, docs/operations.md)"
            )
            await self._refuse(version, closed, source)
            return
        new: Config
        try:
            write_atomically(incoming, document.config.encode("utf-8"), mode=0o640)
            try:
                new = await asyncio.to_thread(load_config, incoming)
            except ConfigError as exc:
                shown = "; ".join(str(p).replace(str(incoming), "config") for p in exc.problems[:5])
                await self._refuse(version, f"the config is not valid: {shown}", source)
                return
            why = screen(current, new, document.config)
            if why is not None:
                await self._refuse(version, why, source)
                return
            # the previous config stays beside the new one; the marker makes a crash roll back
            write_atomically(previous_path(path), path.read_bytes())
            marker = {"version": version, "config": str(path), "since": time.time()}
            write_atomically(self.directory / PENDING_FILE, json.dumps(marker).encode())
            write_atomically(path, document.config.encode("utf-8"))
        except OSError as exc:  # a full or read-only disk: the config in effect stays
            with contextlib.suppress(FileNotFoundError):
                (self.directory / PENDING_FILE).unlink()
            await self._refuse(version, f"the config cannot be written: {exc}", source)
            return
        finally:
            with contextlib.suppress(FileNotFoundError):
                incoming.unlink()
        log.event("config_trying", path=str(path)).info(
            "config version %d from %s (key %s) written to %s; trying it for %.0f s",
            version,
            source,
            document.kid[:12],
            path,
            new.remote.grace,
        )
        new = new.model_copy(update={"source": path})
        baseline = dict(gateway.bus_failures)
        working = {name for name, h in gateway.health.items() if h.state is DeviceState.OK}
        try:
            plan = await gateway.apply(new)
        except ReloadRefused as exc:
            await self._roll_back(version, f"it cannot be applied without a restart: {exc}")
            return
        gateway.config_version = str(version)
        changed = {b: b in plan.buses_start for b in [*plan.buses_start, *plan.buses_restart]}
        reason = await self._trial(baseline, new.remote.grace, changed, working)
        if reason is not None:
            await self._roll_back(version, reason)
            return
        state = RemoteState.load(self.directory)
        state.version, state.sha256 = version, file_digest(path)
        state.save(self.directory)
        with contextlib.suppress(FileNotFoundError):
            (self.directory / PENDING_FILE).unlink()
        log.event("config_applied", path=str(path)).info(
            "config version %d applied and healthy after %.0f s", version, new.remote.grace
        )
        await self._record("applied", version)

    async def _trial(
        self, baseline: dict[str, int], grace: float, changed: dict[str, bool], working: set[str]
    ) -> str | None:
        """Why the config in effect is not healthy within ``grace`` seconds, or None.

        Unhealthy: a bus task failed; at the end, an uplink is not connected (an HTTP uplink that
        has not sent anything yet counts as up), or a bus the change started or restarted (in
        ``changed``, True for a new one) has every device failing where it is new or one of its
        devices worked before (``working``)."""
        deadline = time.monotonic() + grace
        while True:
            failed = [b for b, n in self.gateway.bus_failures.items() if n > baseline.get(b, 0)]
            if failed:
                return f"bus {', '.join(sorted(failed))} failed to run"
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(WATCH_STEP)
        down = [
            u.name
            for u in self.gateway.uplinks
            if u.status.state is not UplinkState.CONNECTED
            and (u.config.type == "mqtt" or u.status.state is UplinkState.DISCONNECTED)
        ]
        if down:
            return f"uplink {', '.join(down)} not connected within the grace period of {grace:g} s"
        config = self.gateway.config
        for bus, new in sorted(changed.items()):
            devices = [name for name, d in config.devices.items() if d.bus == bus]
            health = [self.gateway.health[name] for name in devices if name in self.gateway.health]
            if (
                health
                and all(h.state is DeviceState.FAILING for h in health)
                and (new or any(name in working for name in devices))
            ):
                return f"bus {bus} cannot start: every device on it is failing ({', '.join(devices)})"
        return None

    async def _roll_back(self, version: int, reason: str) -> None:
        from citygw.config import load_config

        gateway = self.gateway
        path = gateway.config.source
        previous = previous_path(path)
        write_atomically(path, previous.read_bytes())
        with contextlib.suppress(FileNotFoundError):
            (self.directory / PENDING_FILE).unlink()
        log.event("config_rolled_back", reason=reason).error(
            "config version %d rolled back to the previous config: %s", version, reason
        )
        try:
            restored = await asyncio.to_thread(load_config, path)
            await gateway.apply(restored)
        except CitygwError as exc:  # the previous file is back on disk: a restart takes it
            raise RollbackFailed(f"the previous config cannot be applied again: {exc}") from exc
        gateway.config_version = version_in_effect(restored)
        await self._record("rolledBack", version, reason)

    async def _poll(self) -> None:
        """GET ``remote.config_url`` every ``poll_interval`` (If-None-Match: nothing new, 304).

        aiohttp is imported once a url is in effect (a reload may add one), not before: its client
        is ~8 MiB of resident memory that a box without ``config_url`` never needs."""
        etag: str | None = None
        last_error = ""
        while True:
            config = self.gateway.config
            url = config.remote.url_for(config.gateway.id)
            if url is None or not config.gateway.operator_keys:
                await asyncio.sleep(5.0)
                continue
            import aiohttp

            headers = {"If-None-Match": etag} if etag else {}
            try:
                timeout = aiohttp.ClientTimeout(total=30)
                async with (
                    aiohttp.ClientSession(timeout=timeout) as session,
                    session.get(url, headers=headers) as response,
                ):
                    if response.status == 200:
                        text = await response.text()
                        etag = response.headers.get("ETag")
                        if text.strip():
                            self.offer(text, f"GET {url}")
                    elif response.status not in (304, 404):
                        raise aiohttp.ClientResponseError(
                            response.request_info, (), status=response.status, message=response.reason or ""
                        )
                last_error = ""
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                error = f"{type(exc).__name__}: {exc}"
                if error != last_error:
                    log.event("config_poll_failed", reason=error).warning(
                        "remote config: cannot fetch %s: %s; trying again every %.0f s",
                        url,
                        error,
                        config.remote.poll_interval,
                    )
                last_error = error
            await asyncio.sleep(config.remote.poll_interval)


class RollbackFailed(CitygwError):
    """The previous config is back on disk but could not be applied in place (the daemon ends; the
    service manager starts it again on the restored file)."""
