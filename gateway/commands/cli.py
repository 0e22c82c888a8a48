"""The ``citygw`` command line.

Exit codes: 0 ok, 1 runtime failure, 2 usage, 78 configuration (EX_CONFIG, so that systemd
does not restart-loop on a config a person has to fix), 141 stdout's reader went away
(``citygw schema | head``: 128 + SIGPIPE, as for any Unix tool; no traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from citygw import __version__
from citygw.errors import BufferOwnerError, CitygwError, ConfigError, KeyFileError
from citygw.logs import EventLog

if TYPE_CHECKING:
    from citygw.config import Config

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # the reader of stdout went away: as a Unix tool killed by SIGPIPE

DEFAULT_CONFIG = Path("/etc/citygw/config.yaml")

log = EventLog("citygw")


def _setup_logging(level: str = "info") -> None:
    from citygw.ops.logging_setup import setup

    setup(level)


def _config_path(args: argparse.Namespace) -> Path:
    return Path(args.config) if args.config else Path(os.environ.get("CITYGW_CONFIG", DEFAULT_CONFIG))


def _report_config_error(exc: ConfigError) -> int:
    for problem in exc.problems:
        sys.stderr.write(f"{problem}\n")
    sys.stderr.write(f"citygw: {len(exc.problems)} problem(s) in the config; nothing was started\n")
    return EXIT_CONFIG


def cmd_check(args: argparse.Namespace) -> int:
    from citygw.config import load_config
    from citygw.wire.signing import Signer

    path = _config_path(args)
    try:
        config = load_config(path)
        # root (a technician's sudo) may check a key that belongs to the service user
        Signer.from_file(config.gateway.key_file, check_owner=os.geteuid() != 0)
    except ConfigError as exc:
        return _report_config_error(exc)
    except KeyFileError as exc:
        sys.stderr.write(f"{path}: gateway.key_file: {exc}\n")
        return EXIT_CONFIG
    sys.stdout.write(
        f"{path}: ok: gateway {config.gateway.id}, {len(config.buses)} buses, "
        f"{len(config.devices)} devices, {len(config.uplinks)} uplinks\n"
    )
    return EXIT_OK


def _recover(path: Path, state_dir: Path) -> str | None:
    """A remote config left pending by a daemon that died: the previous one is restored."""
    from citygw.daemon.remote import recover_at_start

    try:
        return recover_at_start(path, state_dir)
    except OSError as exc:
        sys.stderr.write(f"citygw: cannot check for a pending remote config in {state_dir}: {exc}\n")
        return None


def cmd_run(args: argparse.Namespace) -> int:
    from citygw.config import default_buffer_path, load_config
    from citygw.daemon.gateway import Gateway

    # SIGHUP reloads once the daemon runs (gateway.daemon); until then it must not end the process
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    path = _config_path(args)
    recovered: str | None
    try:
        config = load_config(path)
    except ConfigError as exc:
        if _recover(path, default_buffer_path(os.environ).parent) is None:
            return _report_config_error(exc)
        try:
            config = load_config(path)
        except ConfigError as again:
            return _report_config_error(again)
        recovered = "a pending remote config was rolled back"
    else:
        recovered = _recover(path, config.buffer_path().parent)
        if recovered is not None:
            try:
                config = load_config(path)
            except ConfigError as exc:
                return _report_config_error(exc)
    _setup_logging(args.log_level or config.log.level)
    if recovered is not None:
        log.event("config_recovered", path=str(path)).warning("%s", recovered)
    try:
        gateway = Gateway(config)
    except KeyFileError as exc:
        log.event("config_invalid", path=str(path)).error("%s: gateway.key_file: %s", path, exc)
        return EXIT_CONFIG
    try:
        asyncio.run(gateway.run())
    except BufferOwnerError as exc:  # another gateway's buffer: a config matter, not a restart's
        log.event("config_invalid", path=path).error("%s: %s", path, exc)
        return EXIT_CONFIG
    except CitygwError as exc:  # a task's traceback (gateway.daemon.TaskFailed) is logged already
        log.event("failed").error("%s; exit %d", exc, EXIT_FAILURE)
        return EXIT_FAILURE
    except Exception:  # a bug outside the tasks: logged once, with its traceback, then exit 1
        log.event("crashed").error("stopped on an unexpected error (a bug)", exc_info=True)
        return EXIT_FAILURE
    return EXIT_OK


def cmd_keygen(args: argparse.Namespace) -> int:
    from citygw.wire.signing import generate_key

    try:
        kid = generate_key(Path(args.out), force=args.force)
    except KeyFileError as exc:
        sys.stderr.write(f"citygw keygen: {exc}\n")
        return EXIT_FAILURE
    sys.stdout.write(f"{kid}\n")
    sys.stderr.write(f"wrote {args.out} (private, 0600) and {args.out}.pub; key id above\n")
    return EXIT_OK


def cmd_config_sign(args: argparse.Namespace) -> int:
    from citygw.config.document import sign_document
    from citygw.wire.signing import Signer

    try:
        signer = Signer.from_file(Path(args.key))
    except KeyFileError as exc:
        sys.stderr.write(f"citygw config sign: {exc}\n")
        return EXIT_FAILURE
    if args.version < 1:
        sys.stderr.write(f"citygw config sign: --version must be a positive integer; got {args.version}\n")
        return EXIT_USAGE
    try:
        text = Path(args.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        sys.stderr.write(f"citygw config sign: cannot read {args.file}: {exc}\n")
        return EXIT_FAILURE
    sys.stdout.write(sign_document(signer, gateways=args.gateway, version=args.version, config=text) + "\n")
    sys.stderr.write(
        f"signed {args.file} as config version {args.version} for {', '.join(args.gateway)} "
        f"(operator key {signer.kid})\n"
    )
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from citygw.receiver.verify import verify_main

    inputs: list[Path | str] = [Path(p) if p != "-" else "-" for p in args.inputs] or ["-"]
    keys_dir = Path(args.keys) if args.keys else None
    if not args.key and keys_dir is None:
        sys.stderr.write("citygw verify: give --keys DIR (DIR/<gateway id>/*.pub) or --key FILE\n")
        return 2
    return verify_main([Path(k) for k in args.key or []], inputs, keys_dir=keys_dir)


def cmd_decode(args: argparse.Namespace) -> int:
    from citygw.commands.decode import decode_main

    return decode_main(args.format, args.data, bindkey=args.bindkey, address=args.address)


def _load_or_exit(args: argparse.Namespace) -> Config | int:
    from citygw.config import load_config

    try:
        return load_config(_config_path(args))
    except ConfigError as exc:
        return _report_config_error(exc)


def cmd_probe(args: argparse.Namespace) -> int:
    from citygw.commands.probe import probe_main

    config = _load_or_exit(args)
    if isinstance(config, int):
        return config
    _setup_logging(args.log_level or "warning")
    return probe_main(config, args.device, timeout=args.timeout)


def cmd_scan(args: argparse.Namespace) -> int:
    from citygw.commands.probe import scan_main

    config = _load_or_exit(args)
    if isinstance(config, int):
        return config
    _setup_logging(args.log_level or "warning")
    bus = config.buses.get(args.bus)
    ble = bus is not None and bus.type == "ble"
    if args.duration is not None:
        if bus is not None and not ble:
            sys.stderr.write(
                f"citygw scan: --duration is how long to listen on a BLE bus; bus {args.bus} is of type "
                f"{bus.type} (use --first and --last to scan fewer unit ids)\n"
            )
            return EXIT_USAGE
        if not args.duration > 0:
            sys.stderr.write(f"citygw scan: --duration must be more than 0 seconds; got {args.duration:g}\n")
            return EXIT_USAGE
    if ble:
        from citygw.drivers.ble.cli import SCAN_SECONDS
        from citygw.drivers.ble.cli import scan_main as ble_scan_main

        return ble_scan_main(config, args.bus, duration=args.duration or SCAN_SECONDS)
    return scan_main(config, args.bus, first=args.first, last=args.last)


def cmd_receive(args: argparse.Namespace) -> int:
    from citygw.receiver.endpoint import receive_main

    _setup_logging(args.log_level or "info")
    return receive_main(
        keys=[Path(k) for k in args.key or []],
        keys_dir=Path(args.keys) if args.keys else None,
        db=Path(args.db),
        http=args.http,
        mqtt=args.mqtt,
        topic=args.topic,
        duration=args.duration,
        as_json=args.json,
        status_topic=args.status_topic or None,
    )


def cmd_fleet(args: argparse.Namespace) -> int:
    from citygw.commands.fleet import fleet_main

    return fleet_main(args.url, as_json=args.json, timeout=args.timeout)


def cmd_resend(args: argparse.Namespace) -> int:
    from citygw.buffer import request_resend
    from citygw.daemon.lock import look

    config = _load_or_exit(args)
    if isinstance(config, int):
        return config
    if args.uplink is not None and args.uplink not in config.uplinks:
        sys.stderr.write(f"citygw resend: no uplink {args.uplink!r}; uplinks: {', '.join(config.uplinks)}\n")
        return EXIT_USAGE
    try:
        marked = request_resend(config.buffer_path(), uplink=args.uplink, seqs=args.seq)
    except CitygwError as exc:
        sys.stderr.write(f"citygw resend: {exc}\n")
        return EXIT_FAILURE
    for uplink, seq in marked:
        sys.stdout.write(f"{uplink} {seq}\n")
    when = "within 30 s" if look(config.buffer_path()).held else "when it starts (it is not running now)"
    sys.stderr.write(f"{len(marked)} parked batch(es) marked; the daemon resends them {when}\n")
    return EXIT_OK if marked else EXIT_FAILURE


def cmd_status(args: argparse.Namespace) -> int:
    from citygw.commands.status import status_main

    config = _load_or_exit(args)
    if isinstance(config, int):
        return config
    return status_main(config, as_json=args.json)


def cmd_schema(args: argparse.Namespace) -> int:
    from citygw.config.schema import schema_text

    sys.stdout.write(schema_text())
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from citygw.demo import Options, run_demo

    level = args.log_level or "warning"
    _setup_logging(level)
    if args.outage_for is not None and args.outage_at is None:
        sys.stderr.write("citygw demo: --outage-for needs --outage-at (when the outage starts)\n")
        return EXIT_USAGE
    for name in ("duration", "rate", "outage_at", "outage_for"):
        value = getattr(args, name)
        if value is not None and (value < 0 or (name in ("duration", "rate", "outage_for") and value == 0)):
            sys.stderr.write(f"citygw demo: --{name.replace('_', '-')} must be more than 0; got {value:g}\n")
            return EXIT_USAGE
    live = args.duration is None and sys.stdout.isatty() and not args.json
    return run_demo(
        Options(
            duration=args.duration,
            rate=args.rate,
            outage_at=args.outage_at,
            outage_for=args.outage_for if args.outage_for is not None else 10.0,
            live=live,
            as_json=args.json,
            log_level=level,
        )
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="citygw", description="Edge sensor gateway for smart cities.")
    parser.add_argument("--version", action="version", version=f"citygw {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", help=f"config file (default: $CITYGW_CONFIG or {DEFAULT_CONFIG})")

    p = sub.add_parser("run", help="run the gateway daemon")
    with_config(p)
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="overrides log.level")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="validate a config file without starting anything")
    with_config(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("keygen", help="create an Ed25519 signing key (FILE, 0600) and FILE.pub")
    p.add_argument("--out", required=True, help="private key file to write")
    p.add_argument("--force", action="store_true", help="overwrite an existing key")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("config", help="remote configuration: sign a config file for boxes")
    config_sub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    s = config_sub.add_parser("sign", help="print a signed config document (compact JWS) for gateway(s)")
    s.add_argument("--key", required=True, help="the operator's private key (citygw keygen)")
    s.add_argument("--gateway", action="append", required=True, help="a target gateway id (repeatable)")
    s.add_argument("--version", type=int, required=True, help="the config version, higher than the last")
    s.add_argument("file", help="the config file (YAML) to sign")
    s.set_defaults(func=cmd_config_sign)

    p = sub.add_parser("verify", help="verify signed batches (compact JWS, one per line)")
    p.add_argument("--keys", metavar="DIR", help="one folder per gateway id holding its public keys (*.pub)")
    p.add_argument("--key", action="append", help="a public key file valid for any gateway id (repeatable)")
    p.add_argument("inputs", nargs="*", help="files of batches; - or nothing for stdin")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("decode", help="decode one frame or advert (hex, or NMEA text) into readings")
    p.add_argument("format", help="pms5003, sds011, mhz19, nmea, bthome, ruuvi, ...")
    p.add_argument("data", help="the frame as hex (spaces allowed); for nmea the sentence text too")
    p.add_argument("--bindkey", help="BTHome encryption key (hex)")
    p.add_argument("--address", help="the advertiser's MAC address (for encrypted BTHome)")
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("probe", help="read one configured device once and print its readings")
    with_config(p)
    p.add_argument("device", help="a device id from the config")
    p.add_argument(
        "--timeout",
        type=float,
        help="seconds to wait: for an answer (Modbus; default the bus's timeout) or for the next "
        "frame or advert (serial, BLE; default 10)",
    )
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser(
        "scan", help="list the Modbus unit ids that answer on a configured bus, or the BLE sensors nearby"
    )
    with_config(p)
    p.add_argument("bus", help="a bus id from the config")
    p.add_argument("--first", type=int, default=1, help="first unit id to try (default 1)")
    p.add_argument("--last", type=int, default=247, help="last unit id to try (default 247)")
    p.add_argument("--duration", type=float, metavar="S", help="on a BLE bus: listen S seconds (default 10)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("receive", help="reference platform endpoint: verify, dedupe and store batches")
    p.add_argument("--keys", metavar="DIR", help="one folder per gateway id holding its public keys (*.pub)")
    p.add_argument("--key", action="append", help="a public key file valid for any gateway id (repeatable)")
    p.add_argument("--db", required=True, help="SQLite file to store batches and readings in")
    p.add_argument("--http", metavar="HOST:PORT", help="listen for POSTs (/batches) here")
    p.add_argument("--mqtt", metavar="URL", help="subscribe to a broker, e.g. mqtt://127.0.0.1:1883")
    p.add_argument("--topic", default="city/+/batches", help="MQTT topic filter (default city/+/batches)")
    p.add_argument(
        "--status-topic",
        default="city/+/status",
        help="MQTT topic filter of the gateways' liveness messages, for the fleet view "
        "(default city/+/status; '' for none)",
    )
    p.add_argument("--duration", type=float, help="stop after S seconds")
    p.add_argument("--json", action="store_true", help="print the report as JSON when stopping")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_receive)

    p = sub.add_parser(
        "fleet", help="the fleet as a `citygw receive` sees it: the boxes that need a person first"
    )
    p.add_argument(
        "--url", required=True, help="the receiver's HTTP address (its --http), e.g. http://127.0.0.1:8080"
    )
    p.add_argument("--json", action="store_true", help="print the receiver's /fleet JSON as it is")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the receiver (10)")
    p.set_defaults(func=cmd_fleet)

    p = sub.add_parser("resend", help="resend batches an uplink's destination refused (parked)")
    with_config(p)
    p.add_argument("--uplink", help="only this uplink's parked batches")
    p.add_argument("seq", nargs="*", type=int, help="only these seqs (default: all parked)")
    p.set_defaults(func=cmd_resend)

    p = sub.add_parser("status", help="buffer depth, per-uplink lag, per-device health (daemon up or not)")
    with_config(p)
    p.add_argument("--json", action="store_true", help="print JSON for scripts instead of tables")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("schema", help="print the JSON Schema of the config file (for editors)")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("demo", help="the gateway on simulated devices into a local broker, verified live")
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="S",
        help="run S seconds without the live view, then print a summary; exit 1 if a device "
        "delivered nothing or anything was lost or failed verification",
    )
    p.add_argument("--rate", type=float, default=200.0, help="synthetic readings per second (200)")
    p.add_argument("--outage-at", type=float, metavar="S", help="cut the uplink S seconds after the start")
    p.add_argument("--outage-for", type=float, metavar="S", help="for S seconds (10), then restore it")
    p.add_argument("--json", action="store_true", help="also print the summary as one JSON line")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_demo)
    return parser


def _stdout_gone() -> bool:
    """Whether stdout is a pipe (or socket) whose reader has gone away (poll says POLLERR)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        if not _stdout_gone():  # a socket of the command's own: not ours to hide
            raise
        # `citygw schema | head`: the reader has what it wanted; stop quietly, as cat or grep do.
        # What is still buffered goes to /dev/null, so that the interpreter's own flush at exit
        # does not print a second BrokenPipeError.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    return result


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
