"""Config of the HTTP-based uplinks: plain HTTP(S) POST of the JWS, and FIWARE NGSI-LD."""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

from citygw import redact
from citygw.config.base import (
    ConfigPath,
    DeviceId,
    Int,
    ReadableFile,
    Section,
    cert_key_pair,
    not_below,
    problem,
    tls_only,
    within,
)
from citygw.config.units import Duration, duration_within

_HTTP_EXAMPLE = "e.g. https://platform.example.city/ingest"
_ENTITY_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
NGSI_LD_CORE_CONTEXT = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
SMART_DATA_MODELS_CONTEXT = (
    "https://raw.githubusercontent.com/smart-data-models/data-models/master/context.jsonld"
)


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    shown = redact.url(value)  # a secret in the url is not echoed
    if parts.scheme not in ("http", "https"):
        raise problem("url_scheme", f"{shown!r} is not an http:// or https:// url; {_HTTP_EXAMPLE}")
    if not parts.hostname:
        raise problem("url_host", f"{shown!r} names no host; {_HTTP_EXAMPLE}")
    if parts.username is not None or parts.password is not None:
        raise problem(
            "url_credentials", f"{shown!r} holds credentials; put them in username and password_file instead"
        )
    return value


HttpUrl = Annotated[str, AfterValidator(_http_url)]


def header_fault(value: str) -> str | None:
    """What keeps ``value`` from being a bearer token in an HTTP header (RFC 6750 §2.1, RFC 9110
    §5.5: one line of visible ASCII), or None. Never quotes the value: it may be a secret."""
    lines = value.splitlines()
    if len(lines) > 1:
        return f"has {len(lines)} lines"
    for index, char in enumerate(value, 1):
        if not "\x21" <= char <= "\x7e":
            what = "a space" if char == " " else f"the character U+{ord(char):04X}"
            return f"holds {what} at position {index} of {len(value)}"
    return None


class _HttpClient(Section):
    """What every HTTP-based uplink needs: auth, TLS, timeouts, window and backoff."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: HttpUrl = Field(description=f"where to send; {_HTTP_EXAMPLE}")
    bearer_token: SecretStr | None = Field(default=None, description="sent as Authorization: Bearer")
    bearer_token_file: ConfigPath | None = Field(
        default=None, description="a file holding the bearer token (read at load into bearer_token)"
    )
    username: str | None = Field(default=None, description="HTTP basic auth user")
    password: SecretStr | None = Field(
        default=None, description="HTTP basic auth password; prefer password_file"
    )
    password_file: ConfigPath | None = Field(
        default=None, description="a file holding the password (read at load into password)"
    )
    ca_file: Annotated[ReadableFile | None, AfterValidator(tls_only("https"))] = Field(
        default=None, description="CA certificates (PEM) to verify the server"
    )
    cert_file: Annotated[ReadableFile | None, AfterValidator(tls_only("https"))] = Field(
        default=None, description="client certificate (PEM), with cert_key_file"
    )
    cert_key_file: Annotated[ReadableFile | None, AfterValidator(cert_key_pair)] = Field(
        default=None, validate_default=True, description="the client certificate's key (PEM), with cert_file"
    )
    timeout: Annotated[Duration, AfterValidator(duration_within(1, 600))] = Field(
        default=30.0, description="how long one request may take, 1s to 10m"
    )
    window: Annotated[Int, AfterValidator(within(1, 64))] = Field(
        default=4, description="requests in flight, 1 to 64"
    )
    backoff_initial: Annotated[Duration, AfterValidator(duration_within(0.1, 600))] = Field(
        default=1.0, description="the first retry delay, 100ms to 10m"
    )
    backoff_max: Annotated[
        Duration, AfterValidator(duration_within(None, 86400)), AfterValidator(not_below("backoff_initial"))
    ] = Field(
        default=300.0, validate_default=True, description="the longest retry delay, backoff_initial to 1d"
    )

    @field_validator("bearer_token")
    @classmethod
    def _bearer_token(cls, value: SecretStr | None) -> SecretStr | None:
        """Refuse at load what aiohttp would refuse at every request (a crash loop): the token is
        sent as one header line, ``Authorization: Bearer <token>`` (RFC 6750 §2.1)."""
        if value is not None:
            fault = header_fault(value.get_secret_value())
            if fault:
                raise problem(
                    "bearer_token",
                    f"the token {fault}; it is sent as one HTTP header line (Authorization: Bearer "
                    "<token>), so it must be one line of visible ASCII characters without spaces: "
                    "keep only the token in the file (a trailing newline is fine)",
                )
        return value

    @field_validator("username")
    @classmethod
    def _basic_user(cls, value: str | None) -> str | None:
        if value is not None and (":" in value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)):
            raise problem(
                "basic_auth",
                "the user name holds a ':' or a control character (a line break?); HTTP basic "
                "auth needs one line without ':' (RFC 7617 §2)",
            )
        return value

    @field_validator("password")
    @classmethod
    def _basic_pair(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is not None and not info.data.get("username"):
            raise problem("basic_auth", "a password needs a username (HTTP basic auth)")
        return value


class HttpUplink(_HttpClient):
    """Each batch POSTed as a compact JWS (Content-Type: application/jose)."""

    type: Literal["http"] = Field(description="the uplink type: http")
    gzip: bool = Field(default=False, description="compress the body (Content-Encoding: gzip)")


def _entity_type(value: str) -> str:
    if not _ENTITY_TYPE.fullmatch(value):
        raise problem("entity_type", f"{value!r} is not an entity type name; e.g. AirQualityObserved")
    return value


_TENANT = re.compile(r"[!-~]{1,255}")


def _tenant(value: str) -> str:
    """ETSI GS CIM 009 (NGSI-LD) names a tenant by a string (a URI until V1.7.1, so a URN such as
    urn:ngsi-ld:tenant:bkk suits every broker); it travels in the NGSILD-Tenant header, so it must
    be a header value: printable ASCII without spaces (RFC 9110 §5.5), at most 255 characters."""
    if not _TENANT.fullmatch(value):
        raise problem(
            "tenant",
            f"{value!r} is not a tenant name: 1 to 255 printable ASCII characters without spaces, "
            "e.g. city-bkk, bkk.city or urn:ngsi-ld:tenant:bkk",
        )
    return value


def _entity_id(value: str) -> str:
    if not value.startswith("urn:") or " " in value:
        raise problem(
            "entity_id", f"{value!r} is not a URN; NGSI-LD entity ids are URIs like urn:ngsi-ld:Type:id"
        )
    return value


_ATTRIBUTE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_GENERATED = frozenset({"id", "type", "location", "source", "dataProvider", "dateObserved", "phaseType"})
StaticValue = str | bool | int | float | tuple[str, ...]


def _attribute_name(value: str) -> str:
    if not _ATTRIBUTE.fullmatch(value):
        raise problem("attribute_name", f"{value!r} is not an attribute name; e.g. category, refParkingSite")
    if value in _GENERATED and value != "phaseType":
        raise problem("attribute_name", f"{value!r} is set by citygw; remove it")
    return value


class EntityMapping(Section):
    """How one device appears in the context broker."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Annotated[str, AfterValidator(_entity_type)] | None = Field(
        default=None, description="the Smart Data Models entity type; default from the device's quantities"
    )
    id: Annotated[str, AfterValidator(_entity_id)] | None = Field(
        default=None, description="the entity id; default urn:ngsi-ld:{type}:{gateway}:{device}"
    )
    attributes: dict[Annotated[str, AfterValidator(_attribute_name)], StaticValue] = Field(
        default_factory=dict,
        description="attributes sent as they are, e.g. a ParkingSpot's category: [onStreet] and "
        "refParkingSite: urn:ngsi-ld:ParkingSite:... (ref... names become Relationships)",
    )


class NgsiLdUplink(_HttpClient):
    """Readings as FIWARE Smart Data Models entities, by batch upsert to an NGSI-LD broker."""

    type: Literal["ngsi-ld"] = Field(description="the uplink type: ngsi-ld")
    tenant: Annotated[str, AfterValidator(_tenant)] | None = Field(
        default=None, description="sent as the NGSILD-Tenant header"
    )
    context: tuple[HttpUrl, ...] = Field(
        default=(SMART_DATA_MODELS_CONTEXT, NGSI_LD_CORE_CONTEXT), description="the JSON-LD @context"
    )
    entities: dict[DeviceId, EntityMapping] = Field(
        default_factory=dict, description="per device: entity type and id overrides"
    )
