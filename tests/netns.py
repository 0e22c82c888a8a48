"""A network namespace joined to this one by a veth pair, whose link can be cut silently.

``cut()`` puts a zero-length packet queue on both ends of the pair: every packet is dropped
where it would be sent, nothing answers (no RST, no ICMP), exactly a cable cut or a dead
cellular link somewhere upstream. ``restore()`` removes the queues. Needs root (``ip``, ``tc``).
"""

from __future__ import annotations

import os
import subprocess
from types import TracebackType


class NetnsError(Exception):
    pass


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _tc(*args: str, netns: str | None = None) -> None:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    done = subprocess.run([*prefix, "tc", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NetnsError(f"tc {' '.join(args)}: {done.stderr.strip()}")


class VethNamespace:
    """Namespace ``name`` holding ``inner_ip``; this namespace holds ``outer_ip`` (a /30)."""

    def __init__(self, tag: str | None = None) -> None:
        tag = tag or str(os.getpid() % 100_000)
        self.name = f"citygw-{tag}"
        self.outer_if, self.inner_if = f"cgw{tag}o", f"cgw{tag}i"  # at most 15 characters
        # a /30 of its own in 10.231.0.0/16 (16,384 of them): test workers' pids are close together,
        # so two workers never share one (pid % 250 could: two veths on one subnet, routes crossed)
        block = int(tag) % 16_384
        third, fourth = divmod(block * 4, 256)
        self.outer_ip, self.inner_ip = f"10.231.{third}.{fourth + 1}", f"10.231.{third}.{fourth + 2}"
        self._made = False

    @property
    def prefix(self) -> list[str]:
        """Run a command inside the namespace: ``[*ns.prefix, cmd, ...]``."""
        return ["ip", "netns", "exec", self.name]

    def create(self) -> None:
        self.close()  # leftovers of an earlier run that was killed
        _ip("netns", "add", self.name)
        self._made = True
        _ip("link", "add", self.outer_if, "type", "veth", "peer", "name", self.inner_if)
        _ip("link", "set", self.inner_if, "netns", self.name)
        _ip("addr", "add", f"{self.outer_ip}/30", "dev", self.outer_if)
        _ip("link", "set", self.outer_if, "up")
        _ip("netns", "exec", self.name, "ip", "addr", "add", f"{self.inner_ip}/30", "dev", self.inner_if)
        _ip("netns", "exec", self.name, "ip", "link", "set", self.inner_if, "up")
        _ip("netns", "exec", self.name, "ip", "link", "set", "lo", "up")

    def cut(self) -> None:
        _tc("qdisc", "replace", "dev", self.outer_if, "root", "pfifo", "limit", "0")
        _tc("qdisc", "replace", "dev", self.inner_if, "root", "pfifo", "limit", "0", netns=self.name)

    def restore(self) -> None:
        _tc("qdisc", "del", "dev", self.outer_if, "root")
        _tc("qdisc", "del", "dev", self.inner_if, "root", netns=self.name)

    def close(self) -> None:
        subprocess.run(["ip", "link", "del", self.outer_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
        self._made = False

    def __enter__(self) -> VethNamespace:
        self.create()
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.close()
