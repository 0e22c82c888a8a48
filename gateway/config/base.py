"""The building blocks of the config models: the section base class and the value types.

Every section model derives from :class:`Section` (unknown keys refused, missing keys explained);
value types (ids, paths, urls, quantity names, bounded numbers) carry their own checks and
messages, so a driver's config module (``citygw.config.<bus type>``) is a few declarations.
"""

from __future__ import annotations

import difflib
import enum
import errno
import os
import re
import stat
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn, Self
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ModelWrapValidatorHandler,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import (
    ErrorDetails,
    InitErrorDetails,
    PydanticCustomError,
)
from pydantic_core.core_schema import ErrorType

from citygw import redact
from citygw.config.units import describe, format_duration
from citygw.vocabulary import QUANTITIES

DEFAULT_BUFFER_PATH = Path("/var/lib/citygw/buffer.db")
DEFAULT_TOPIC = "city/{gateway}/batches"
DEFAULT_STATUS_TOPIC = "city/{gateway}/status"

_KNOWN_ERROR_TYPES = frozenset(typing.get_args(ErrorType))
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ID_RULE = "use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
_UPLINK_ID_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_UPLINK_ID_RULE = "use 1 to 32 lowercase letters, digits, '_' or '-', starting with a letter or digit"
URL_EXAMPLE = "e.g. mqtts://broker.example.city:8883"


def _close_key(key: str, allowed: list[str]) -> list[str]:
    """The allowed key a misspelt one was meant to be: one it shortens or lengthens (baud ->
    baudrate, logging -> log), else a close spelling (intervall -> interval); a cutoff of 0.7 keeps
    false friends such as options -> location (0.67) out of the advice."""
    related = [k for k in allowed if k.startswith(key) or key.startswith(k)]
    return related[:1] or difflib.get_close_matches(key, allowed, n=1, cutoff=0.7)


@dataclass(frozen=True, slots=True)
class LoadContext:
    """Validation context for a config read from a file: pass as ``context=`` to ``model_validate``."""

    base_dir: Path  # relative paths in the file are relative to this directory
    check_files: bool = True  # check that the files named exist, are readable and private where needed


def problem(kind: str, message: str) -> PydanticCustomError:
    """A validation error of type ``citygw_<kind>`` (never one of pydantic's own error types, which
    :func:`_rebuilt` must tell apart) whose message is ``message`` verbatim, braces and all."""
    return PydanticCustomError(f"citygw_{kind}", "{message}", {"message": message})


def located(title: str, loc: tuple[str | int, ...], kind: str, message: str, value: Any) -> NoReturn:
    """Raise an error placed at ``loc`` below the value being validated."""
    raise ValidationError.from_exception_data(
        title, [InitErrorDetails(type=problem(kind, message), loc=loc, input=value)]
    )


def _rebuilt(error: ErrorDetails) -> InitErrorDetails:
    if error["type"] in _KNOWN_ERROR_TYPES:
        details = InitErrorDetails(type=error["type"], loc=error["loc"], input=error["input"])
        if "ctx" in error:
            details["ctx"] = error["ctx"]
        return details
    custom = PydanticCustomError(error["type"], "{message}", {"message": error["msg"]})
    return InitErrorDetails(type=custom, loc=error["loc"], input=error["input"])


class Section(BaseModel):
    """Base of every config model: unknown and missing keys are explained in the model's own terms."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def yaml_keys(cls) -> list[str]:
        """The keys a YAML mapping for this model may hold, in declaration order."""
        return [name for name, field in cls.model_fields.items() if not field.exclude]

    @model_validator(mode="wrap")
    @classmethod
    def _explain_keys(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        try:
            return handler(data)
        except ValidationError as exc:
            errors = exc.errors()
            if not any(len(e["loc"]) == 1 and e["type"] in ("extra_forbidden", "missing") for e in errors):
                raise
            raise ValidationError.from_exception_data(
                cls.__name__, [cls._explained(e) for e in errors]
            ) from None

    @classmethod
    def _explained(cls, error: ErrorDetails) -> InitErrorDetails:
        if len(error["loc"]) != 1:
            return _rebuilt(error)
        key = str(error["loc"][0])
        if error["type"] == "extra_forbidden":
            close = _close_key(key, cls.yaml_keys())
            guess = f" (did you mean {close[0]!r}?)" if close else ""
            message = f"unknown key {key!r}{guess}; allowed here: {', '.join(cls.yaml_keys())}"
            return InitErrorDetails(
                type=problem("unknown_key", message), loc=error["loc"], input=error["input"]
            )
        if error["type"] == "missing":
            field = cls.model_fields.get(key)
            about = f"; {field.description}" if field is not None and field.description else ""
            message = f"required key {key!r} is missing{about}"
            return InitErrorDetails(
                type=problem("missing_key", message), loc=error["loc"], input=error["input"]
            )
        return _rebuilt(error)


# --- value types -------------------------------------------------------------------------------


def load_context(info: ValidationInfo) -> LoadContext | None:
    return info.context if isinstance(info.context, LoadContext) else None


def _reject_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise problem("number_type", f"expected a number; got {describe(value)}")
    return value


def _number(value: float | None) -> str:
    return str(int(value)) if value is not None and float(value).is_integer() else str(value)


def within(low: float | None, high: float | None, *, above: bool = False) -> Callable[[Any], Any]:
    """An after-validator bounding a number to ``low..high`` (``above``: strictly more than ``low``)."""

    def check(value: Any) -> Any:
        if (low is None or value > low or (value == low and not above)) and (high is None or value <= high):
            return value
        lowest = f"more than {_number(low)}" if above else f"at least {_number(low)}"
        if low is not None and high is not None:
            allowed = (
                f"{lowest} and at most {_number(high)}"
                if above
                else f"between {_number(low)} and {_number(high)}"
            )
        else:
            allowed = lowest if low is not None else f"at most {_number(high)}"
        raise problem("number_range", f"must be {allowed}; got {_number(value)}")

    return check


def not_below(other: str) -> Callable[[float, ValidationInfo], float]:
    """An after-validator: a duration at least the field ``other`` (declared before it), e.g. a
    ``backoff_max`` against its ``backoff_initial``."""

    def check(value: float, info: ValidationInfo) -> float:
        low = info.data.get(other)
        if low is not None and value < low:
            message = f"must be at least {other} ({format_duration(low)}); got {format_duration(value)}"
            raise problem("order", message)
        return value

    return check


def tls_only(scheme: str) -> Callable[[Path | None, ValidationInfo], Path | None]:
    """An after-validator for a TLS file setting: refused unless the ``url`` uses ``scheme``."""

    def check(value: Path | None, info: ValidationInfo) -> Path | None:
        url = info.data.get("url")
        if value is not None and url is not None and urlsplit(url).scheme != scheme:
            raise problem(
                "tls_setting",
                f"{info.field_name} is for TLS connections but the url is {redact.url(url)!r}; "
                f"use {scheme}:// or remove {info.field_name}",
            )
        return value

    return check


def cert_key_pair(value: Path | None, info: ValidationInfo) -> Path | None:
    """The after-validator of ``cert_key_file``: set together with ``cert_file`` (declared before it)."""
    if "cert_file" in info.data and (info.data["cert_file"] is None) != (value is None):
        given, other = ("cert_key_file", "cert_file") if value is not None else ("cert_file", "cert_key_file")
        raise problem(
            "cert_pair",
            f"{given} is set but {other} is not; a client certificate needs both cert_file "
            "and cert_key_file, or neither",
        )
    return value


Int = Annotated[int, BeforeValidator(_reject_bool)]
Float = Annotated[float, BeforeValidator(_reject_bool)]


def _id_check(pattern: re.Pattern[str], noun: str, rule: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            quote = "; put it in quotes so it stays text" if isinstance(value, int | float) else ""
            raise problem("id_type", f"a {noun} id must be text; got {describe(value)}{quote}")
        if not pattern.fullmatch(value):
            raise problem("id_pattern", f"{value!r} is not a valid {noun} id; {rule}")
        return value

    return check


def _id_schema(pattern: re.Pattern[str]) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "pattern": f"^{pattern.pattern}$"})


GatewayId = Annotated[str, PlainValidator(_id_check(_ID_RE, "gateway", _ID_RULE)), _id_schema(_ID_RE)]
UplinkId = Annotated[
    str, PlainValidator(_id_check(_UPLINK_ID_RE, "uplink", _UPLINK_ID_RULE)), _id_schema(_UPLINK_ID_RE)
]
BusId = Annotated[str, PlainValidator(_id_check(_ID_RE, "bus", _ID_RULE)), _id_schema(_ID_RE)]
DeviceId = Annotated[str, PlainValidator(_id_check(_ID_RE, "device", _ID_RULE)), _id_schema(_ID_RE)]


def _path_text(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise problem("path_empty", "a path cannot be empty; write the file's path")
    return value


def _resolved(value: Path, info: ValidationInfo) -> Path:
    context = load_context(info)
    if context is not None and not value.is_absolute():
        return context.base_dir / value
    return value


def _readable(value: Path, info: ValidationInfo) -> Path:
    context = load_context(info)
    if context is not None and context.check_files:
        try:
            with value.open("rb"):
                pass
        except OSError as exc:
            raise problem("file_unreadable", f"cannot read {value}: {exc.strerror}") from None
    return value


def _private_key(value: Path, info: ValidationInfo) -> Path:
    context = load_context(info)
    if context is None or not context.check_files:
        return value
    try:
        with value.open("rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            head = file.read(64)
    except OSError as exc:
        create = "; create one with `citygw keygen`" if exc.errno == errno.ENOENT else ""
        raise problem("file_unreadable", f"cannot read {value}: {exc.strerror}{create}") from None
    if head.lstrip().startswith((b"-----BEGIN PUBLIC KEY-----", b"ssh-ed25519 ")):
        private = value.with_name(value.name.removesuffix(".pub"))
        name = private if private != value else "the file `citygw keygen` was given (FILE, beside FILE.pub)"
        raise problem(
            "key_file_public",
            f"{value} is the public key, which the platform verifies with; key_file names the private "
            f"key that signs: {name}",
        )
    if mode & 0o077:
        raise problem(
            "key_file_mode",
            f"{value} is open to users other than its owner (mode {stat.S_IMODE(mode):04o}); "
            f"a signing key must be private: run chmod 600 {value}",
        )
    return value


ConfigPath = Annotated[Path, BeforeValidator(_path_text), AfterValidator(_resolved)]
"""A path; relative to the config file's directory when loaded from a file."""
ReadableFile = Annotated[ConfigPath, AfterValidator(_readable)]
"""A path to a file that must be readable when the config is loaded."""
PrivateKeyFile = Annotated[ConfigPath, AfterValidator(_private_key)]
"""A path to a readable file that no one but its owner may access (mode 0600 or 0400)."""


def _mqtt_url(value: str) -> str:
    parts = urlsplit(value)
    shown = redact.url(value)  # a password in the url is not echoed
    if parts.scheme not in ("mqtt", "mqtts"):
        raise problem(
            "url_scheme",
            f"{shown!r} is not an MQTT broker url; the scheme must be mqtt:// or mqtts:// (TLS), "
            f"{URL_EXAMPLE}",
        )
    try:
        port = parts.port
    except ValueError:
        port = 0
    if not parts.hostname:
        raise problem("url_host", f"{shown!r} names no broker host; write {URL_EXAMPLE}")
    if port == 0:
        raise problem("url_port", f"{shown!r} has an invalid port; a port is a number from 1 to 65535")
    if parts.username is not None or parts.password is not None:
        raise problem(
            "url_credentials",
            f"{shown!r} holds credentials; put them in username and password_file, not in the url",
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise problem(
            "url_path",
            f"{shown!r} has a path, query or fragment; a broker url is mqtt[s]://host[:port] "
            "and the topic goes in topic",
        )
    return value


def _topic(value: str) -> str:
    hint = f"write e.g. {DEFAULT_TOPIC}"
    if not value:
        raise problem("topic", f"the topic cannot be empty; {hint}")
    if "+" in value or "#" in value:
        raise problem(
            "topic", f"{value!r} contains an MQTT wildcard (+ or #), which cannot be published to; {hint}"
        )
    if value.startswith("$"):
        raise problem("topic", f"{value!r} starts with '$', which brokers reserve for themselves; {hint}")
    for name in re.findall(r"\{([^{}]*)\}", value):
        if name != "gateway":
            raise problem(
                "topic",
                f"{value!r} has the placeholder {{{name}}}; the only placeholder allowed is {{gateway}}",
            )
    if "{" in value.replace("{gateway}", "") or "}" in value.replace("{gateway}", ""):
        raise problem(
            "topic", f"{value!r} has an unmatched brace; the only placeholder allowed is {{gateway}}"
        )
    return value


def _quantity(value: str) -> str:
    if value in QUANTITIES:
        return value
    close = difflib.get_close_matches(value, QUANTITIES, n=1)
    guess = f" (did you mean {close[0]!r}?)" if close else ""
    raise problem(
        "quantity", f"unknown quantity {value!r}{guess}; the quantity names are: {', '.join(QUANTITIES)}"
    )


def distinct(value: tuple[str, ...]) -> tuple[str, ...]:
    if not value:
        raise problem("quantities_empty", "list at least one quantity, e.g. [temperature]")
    for index, name in enumerate(value):
        if name in value[:index]:
            raise problem(
                "quantities_repeated", f"{name!r} is listed more than once; list each quantity once"
            )
    return value


MqttUrl = Annotated[str, AfterValidator(_mqtt_url)]
Topic = Annotated[str, AfterValidator(_topic)]
QuantityName = Annotated[str, AfterValidator(_quantity)]


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class Synchronous(enum.StrEnum):
    """SQLite ``PRAGMA synchronous`` in WAL mode: NORMAL may lose the last commit on power loss."""

    NORMAL = "normal"
    FULL = "full"
