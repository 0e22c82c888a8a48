"""The ``metrics`` section: where the daemon serves its Prometheus metrics (gateway.metrics)."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Self

from pydantic import AfterValidator, ConfigDict, Field, WithJsonSchema, model_validator

from citygw.config.base import Section, located, problem

DEFAULT_LISTEN = "127.0.0.1:9108"
_LISTEN_RULE = "write host:port, e.g. 127.0.0.1:9108 or [::1]:9108"


def split_listen(value: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as (host, port); ValueError saying what is wrong."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"{value!r} is not an address to listen on; {_LISTEN_RULE}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{value!r}: put an IPv6 address in brackets, e.g. [::1]:9108")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"{value!r} has port {port}; a port is a number from 1 to 65535")
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listen(value: Any) -> Any:
    if not isinstance(value, str):
        raise problem("listen", f"expected text; {_LISTEN_RULE}")
    try:
        split_listen(value)
    except ValueError as exc:
        raise problem("listen", str(exc)) from None
    return value


Listen = Annotated[
    str,
    AfterValidator(_listen),
    WithJsonSchema({"type": "string", "pattern": r"^(\[[0-9A-Fa-f:.]+\]|[^:\s\[\]]+):[0-9]{1,5}$"}),
]


class MetricsSettings(Section):
    """Prometheus metrics over plain HTTP; loopback only unless ``allow_remote``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=True, description="serve /metrics (Prometheus text format)")
    listen: Listen = Field(
        default=DEFAULT_LISTEN, description="host:port to serve metrics on, loopback by default"
    )
    allow_remote: bool = Field(
        default=False,
        description="allow a listen address other than loopback (metrics are served without "
        "authentication or TLS: put a proxy with both in front instead when you can)",
    )

    @model_validator(mode="after")
    def _loopback_only(self) -> Self:
        host, _ = split_listen(self.listen)
        if not self.allow_remote and not is_loopback(host):
            located(
                "metrics",
                ("listen",),
                "listen_remote",
                f"{self.listen!r} is not a loopback address; metrics have no authentication or TLS and "
                "would tell anyone on the network about this box: listen on 127.0.0.1 or [::1] and "
                "scrape through an SSH tunnel or an authenticating proxy, or set allow_remote: true",
                self.listen,
            )
        return self

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]
