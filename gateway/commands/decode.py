"""``citygw decode FORMAT DATA``: one frame or advert in, its readings out as JSON lines.

A technician's and integrator's tool: paste the bytes a sensor sent (hex, spaces allowed; for NMEA
the sentence text too) and see what the gateway makes of them, or why it refuses them. Each reading
is printed as ``{"device": FORMAT, "name": ..., "value": ..., "unit": ...}``. Exit codes: 0 decoded
(a valid frame may carry no reading: an RMC without a fix), 1 the frame cannot be decoded (the
reason, e.g. checksum, short, header, on stderr), 2 unknown format or data that is not hex.

:data:`FORMATS` maps each format to a function ``(data text, options) -> measurements``; a new
format (the BLE adverts: bthome, ruuvi) is one entry.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from citygw.drivers.serial.decoders import Decoder, decode_mhz19, decode_nmea, decode_pms5003, decode_sds011
from citygw.errors import CitygwError
from citygw.reading import Value

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


@dataclass(frozen=True, slots=True)
class DecodeOptions:
    """What some formats need besides the bytes (encrypted BTHome: the key and the sender)."""

    bindkey: str | None = None
    address: str | None = None


class BadInput(CitygwError):
    """The data given is not in a form the format accepts (not hex, for instance)."""


FormatDecoder = Callable[[str, DecodeOptions], Sequence[tuple[str, Value, str]]]


def parse_hex(data: str) -> bytes:
    """Bytes from hex text: ``42 4d 00 1c``, ``424D001C``, ``0x42,0x4d`` or ``42:4d``."""
    text = data.replace("0x", "").replace("0X", "")
    for separator in ",:-":
        text = text.replace(separator, " ")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise BadInput(f"{data[:60]!r} is not hex bytes, e.g. 42 4d 00 1c ...") from None


def _binary(decode: Decoder) -> FormatDecoder:
    def run(data: str, options: DecodeOptions) -> Sequence[tuple[str, Value, str]]:
        return decode(parse_hex(data))

    return run


def _nmea(data: str, options: DecodeOptions) -> Sequence[tuple[str, Value, str]]:
    text = data.strip()
    frame = text.encode("ascii", "replace") if text.startswith("$") else parse_hex(text)
    return decode_nmea(frame)


def _ble(name: str) -> FormatDecoder:
    """A BLE advert: HEX is the bytes as bleak hands them over (service data without its UUID,
    manufacturer data without its company id); ``bthome`` also takes ``--bindkey`` and ``--address``."""

    def run(data: str, options: DecodeOptions) -> Sequence[tuple[str, Value, str]]:
        from citygw.drivers.ble import cli

        frame = parse_hex(data)
        try:
            if name == "bthome":
                return cli.decode_bthome(frame, bindkey=options.bindkey, address=options.address)
            return cli.decode_ruuvi(frame) if name == "ruuvi" else cli.decode_pvvx(frame)
        except ValueError as exc:  # a malformed --bindkey or --address
            raise BadInput(str(exc)) from None

    return run


FORMATS: Mapping[str, FormatDecoder] = {
    "pms5003": _binary(decode_pms5003),
    "pms7003": _binary(decode_pms5003),
    "pmsa003": _binary(decode_pms5003),
    "sds011": _binary(decode_sds011),
    "mhz19": _binary(decode_mhz19),
    "nmea": _nmea,
    "bthome": _ble("bthome"),
    "ruuvi": _ble("ruuvi"),
    "xiaomi-pvvx": _ble("xiaomi-pvvx"),
}


def decode_main(kind: str, data: str, *, bindkey: str | None, address: str | None) -> int:
    """Decode ``data`` as the format ``kind``, print its readings as JSON lines; the exit code."""
    decoder = FORMATS.get(kind.lower())
    if decoder is None:
        sys.stderr.write(f"citygw decode: unknown format {kind!r}; formats: {', '.join(FORMATS)}\n")
        return EXIT_USAGE
    try:
        measurements = decoder(data, DecodeOptions(bindkey=bindkey, address=address))
    except BadInput as exc:
        sys.stderr.write(f"citygw decode: {kind}: {exc}\n")
        return EXIT_USAGE
    except CitygwError as exc:
        sys.stderr.write(f"citygw decode: {kind}: {exc}\n")
        return EXIT_FAILURE
    for name, value, unit in measurements:
        line = {"device": kind.lower(), "name": name, "value": value, "unit": unit}
        sys.stdout.write(json.dumps(line) + "\n")
    if not measurements:
        sys.stderr.write(f"citygw decode: {kind}: a valid frame that carries no reading\n")
    return EXIT_OK
