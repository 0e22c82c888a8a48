"""The ``citygw`` command line.

Exit codes: 0 ok, 1 runtime failure, 2 usage, 78 configuration (EX_CONFIG, so that systemd
does not restart-loop on a config a person has to fix).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from gateway import __version__
from gateway.errors import CitygwError, ConfigError, KeyFileError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78

DEFAULT_CONFIG = Path("/etc/citygw/config.yaml")

log = logging.getLogger("citygw")


def _setup_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s"
        if os.environ.get("JOURNAL_STREAM")
        else "%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _config_path(args: argparse.Namespace) -> Path:
    return Path(args.config) if args.config else Path(os.environ.get("CITYGW_CONFIG", DEFAULT_CONFIG))


def _report_config_error(exc: ConfigError) -> int:
    for problem in exc.problems:
        sys.stderr.write(f"{problem}\n")
    sys.stderr.write(f"citygw: {len(exc.problems)} problem(s) in the config; nothing was started\n")
    return EXIT_CONFIG


def cmd_check(args: argparse.Namespace) -> int:
    from gateway.config import load_config
    from gateway.signing import Signer

    path = _config_path(args)
    try:
        config = load_config(path)
        Signer.from_file(config.gateway.key_file)
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


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.config import load_config
    from gateway.daemon import Gateway

    path = _config_path(args)
    try:
        config = load_config(path)
    except ConfigError as exc:
        return _report_config_error(exc)
    _setup_logging(args.log_level or config.log.level)
    try:
        gateway = Gateway(config)
    except KeyFileError as exc:
        log.error("%s: gateway.key_file: %s", path, exc)
        return EXIT_CONFIG
    try:
        asyncio.run(gateway.run())
    except CitygwError as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    return EXIT_OK


def cmd_keygen(args: argparse.Namespace) -> int:
    from gateway.signing import generate_key

    try:
        kid = generate_key(Path(args.out), force=args.force)
    except KeyFileError as exc:
        sys.stderr.write(f"citygw keygen: {exc}\n")
        return EXIT_FAILURE
    sys.stdout.write(f"{kid}\n")
    sys.stderr.write(f"wrote {args.out} (private, 0600) and {args.out}.pub; key id above\n")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from gateway.verify import verify_main

    inputs: list[Path | str] = [Path(p) if p != "-" else "-" for p in args.inputs] or ["-"]
    return verify_main([Path(k) for k in args.key], inputs)


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    _setup_logging(args.log_level or "warning")
    return run_demo(duration=args.duration, rate=args.rate)


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

    p = sub.add_parser("verify", help="verify signed batches (compact JWS, one per line)")
    p.add_argument("--key", action="append", required=True, help="public key file (repeatable, for rotation)")
    p.add_argument("inputs", nargs="*", help="files of batches; - or nothing for stdin")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("demo", help="the gateway on simulated devices into a local broker, verified live")
    p.add_argument("--duration", type=float, default=None, help="stop after S seconds and print a summary")
    p.add_argument("--rate", type=float, default=200.0, help="synthetic readings per second")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
