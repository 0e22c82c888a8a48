"""Which public keys may sign for which gateway: the platform's side of a box's identity.

A keys directory holds one folder per gateway id with that gateway's public keys::

    keys/
      bkk-pathumwan-0042/signing.key.pub
      bkk-pathumwan-0042/signing.key.new.pub     # a rotation: both are valid for this gateway
      bkk-silom-0007/signing.key.pub

A batch is accepted only when its ``kid`` is the thumbprint of a key in the folder of the gateway
its payload names. Adding a box is adding a folder; removing a key file revokes it. The directory
is looked at again (at most once per :data:`RESCAN_INTERVAL`, and at once when a kid is unknown,
at most once per :data:`MISS_INTERVAL`), so neither needs a restart.

Keys given one by one (``--key FILE``) are bound to no gateway: any of them may sign for any
gateway id. That suits checking one box's own file, not a fleet; the receiver warns about it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from joserfc.jwk import OKPKey

from citygw.errors import KeyFileError
from citygw.logs import EventLog
from citygw.wire.signing import load_public_keys

log = EventLog(__name__)

RESCAN_INTERVAL = 5.0  # seconds between looks at the directory for changes
MISS_INTERVAL = 1.0  # seconds between looks prompted by an unknown kid (a flood of them costs little)
MAX_GATEWAY_ID = 128  # characters of a gateway id (a folder name)


@dataclass(frozen=True, slots=True)
class Binding:
    """A verification key and the gateways it may sign for (``None``: any, for ``--key FILE``)."""

    key: OKPKey
    gateways: frozenset[str] | None

    def allows(self, gateway: str) -> bool:
        return self.gateways is None or gateway in self.gateways


class Keyring:
    """Keys by kid, each bound to the gateway folders it appears in; re-read when the folder changes."""

    def __init__(
        self,
        directory: Path | None = None,
        *,
        unbound: Mapping[str, OKPKey] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self._unbound = dict(unbound or {})
        self._clock = clock
        self._bindings: dict[str, Binding] = {}
        self._signature: object = None
        self._checked = -float("inf")
        self._missed = -float("inf")
        self._reported: set[str] = set()  # bad key files already logged (once each)
        if directory is not None:
            if not directory.is_dir():
                raise KeyFileError(f"keys directory {directory} does not exist or is not a directory")
            self._load()
        self._refresh_unbound()

    @classmethod
    def from_files(cls, paths: Iterable[Path]) -> Keyring:
        """Unbound keys from files (``--key FILE``): valid for any gateway id."""
        return cls(unbound=load_public_keys(paths))

    @property
    def bound(self) -> bool:
        """Whether every key is bound to gateways (no ``--key FILE`` given)."""
        return not self._unbound

    def __len__(self) -> int:
        return len(self._bindings)

    def lookup(self, kid: str) -> Binding | None:
        """The key named ``kid`` and the gateways it may sign for, or None if it is unknown."""
        now = self._clock()
        if self.directory is not None and now - self._checked >= RESCAN_INTERVAL:
            self._checked = now
            self._rescan()
        binding = self._bindings.get(kid)
        if binding is None and self.directory is not None and now - self._missed >= MISS_INTERVAL:
            self._missed = self._checked = now  # a box added a moment ago is found at once
            self._rescan()
            binding = self._bindings.get(kid)
        return binding

    def gateways(self) -> set[str]:
        """The gateway ids the keys directory holds keys for (looked at again as :meth:`lookup` does)."""
        now = self._clock()
        if self.directory is not None and now - self._checked >= RESCAN_INTERVAL:
            self._checked = now
            self._rescan()
        return {g for b in self._bindings.values() if b.gateways is not None for g in b.gateways}

    # -- the directory -----------------------------------------------------------------------------

    def _look(self) -> object:
        """A cheap fingerprint of the directory: names and mtimes of every folder and key file."""
        assert self.directory is not None
        seen: list[tuple[str, int, int]] = []
        try:
            with os.scandir(self.directory) as top:
                for folder in top:
                    if not folder.is_dir():
                        continue
                    seen.append((folder.name, folder.stat().st_mtime_ns, 0))
                    with os.scandir(folder.path) as files:
                        for entry in files:
                            if entry.name.endswith(".pub"):
                                st = entry.stat()
                                seen.append((f"{folder.name}/{entry.name}", st.st_mtime_ns, st.st_size))
        except OSError as exc:
            return ("error", str(exc))
        return tuple(sorted(seen))

    def _rescan(self) -> None:
        signature = self._look()
        if signature != self._signature:
            self._load(signature)

    def _load(self, signature: object = None) -> None:
        assert self.directory is not None
        self._signature = self._look() if signature is None else signature
        owners: dict[str, set[str]] = {}
        keys: dict[str, OKPKey] = {}
        try:
            folders = sorted(p for p in self.directory.iterdir() if p.is_dir())
        except OSError as exc:
            log.event("keys_unreadable", path=self.directory).error(
                "cannot read keys directory %s: %s; keeping the keys known so far", self.directory, exc
            )
            return
        for stray in sorted(self.directory.glob("*.pub")):
            if str(stray) not in self._reported:
                self._reported.add(str(stray))
                log.event("key_outside_folder", path=stray).warning(
                    "keys directory: %s is in no gateway's folder, so ignored: move it to %s/<gateway id>/",
                    stray,
                    self.directory,
                )
        for folder in folders:
            gateway = folder.name
            if len(gateway) > MAX_GATEWAY_ID or gateway.startswith("."):
                continue
            for path in sorted(folder.glob("*.pub")):
                try:
                    found = load_public_keys([path])
                except KeyFileError as exc:
                    if str(path) not in self._reported:
                        self._reported.add(str(path))
                        log.event("key_unreadable", path=path).error("keys directory: %s; skipped", exc)
                    continue
                for kid, key in found.items():
                    keys[kid] = key
                    owners.setdefault(kid, set()).add(gateway)
        before = {kid: b.gateways for kid, b in self._bindings.items() if b.gateways is not None}
        bindings = {kid: Binding(keys[kid], frozenset(gws)) for kid, gws in owners.items()}
        for kid, gateways in owners.items():
            if len(gateways) > 1 and before.get(kid) != frozenset(gateways):
                log.event("key_shared", reason="shared").warning(
                    "keys directory: key %s is in the folders of %s: it may sign for each of them",
                    kid,
                    ", ".join(sorted(gateways)),
                )
        if before:
            known = {g for gws in before.values() for g in gws}
            added = sorted({g for gws in owners.values() for g in gws} - known)
            if added:
                log.event("keys_added", path=self.directory).info(
                    "keys directory: now also accepting %s", ", ".join(added)
                )
        self._bindings = {**{k: Binding(v, None) for k, v in self._unbound.items()}, **bindings}

    def _refresh_unbound(self) -> None:
        for kid, key in self._unbound.items():
            self._bindings.setdefault(kid, Binding(key, None))
