"""BLE benchmark: adverts decoded per second, the way the bus routes them (no radio).

A crowded street mixes configured sensors (BTHome plaintext and encrypted, RuuviTag, pvvx) with many
phones that only feed the presence counter. This replays such a mix through the real
:class:`~citygw.drivers.ble.router.Router` (allowlist, decoder, de-duplication, readings, presence hashing),
each advert a new measurement so none is skipped as a duplicate, and prints one JSON line:

  decoded_per_s         sensor adverts through their decoder alone, per second (target >= 100,000)
  routed_per_s          adverts of the mix through the whole router, per second (target >= 100,000)
  sensor_routed_per_s   sensor adverts through the router (readings made), per second
  readings_per_s        readings made per second
  target_met            both targets met

The mix has ``--phones-per-sensor`` phone adverts (presence counting only) per sensor advert: in
a street, phones and wearables outnumber the sensors' adverts many times over.

Usage: python bench/ble.py [--adverts N] [--phones-per-sensor K]
"""

from __future__ import annotations

import argparse
import json
import time

from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from citygw.config.ble import BleDevice
from citygw.drivers.ble import bthome, pvvx, ruuvi
from citygw.drivers.ble.common import Advert
from citygw.drivers.ble.router import Router

KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
SENSORS = {
    "bthome": "A4:C1:38:00:00:01",
    "bthome-enc": "A4:C1:38:00:00:02",
    "ruuvi": "CB:B8:33:4C:88:4F",
    "pvvx": "A4:C1:38:00:00:03",
}


def sensor_adverts(n: int) -> list[Advert]:
    """``n`` adverts per sensor, every one a new packet (new packet id, counter or sequence)."""
    out: list[Advert] = []
    mac = bytes.fromhex(SENSORS["bthome-enc"].replace(":", ""))
    cipher = AESCCM(KEY, tag_length=4)
    for i in range(n):
        plain = bytes.fromhex(f"40 00{i % 256:02x} 01 5f 02 ca 09 03 bf 13".replace(" ", ""))
        out.append(Advert(SENSORS["bthome"], -60, {bthome.UUID: plain}, {}, 0.0))
        counter = i.to_bytes(4, "little")
        sealed = cipher.encrypt(bthome.nonce(mac, 0x41, counter), bytes.fromhex("02CA0903BF13"), None)
        out.append(
            Advert(
                SENSORS["bthome-enc"],
                -61,
                {bthome.UUID: b"\x41" + sealed[:-4] + counter + sealed[-4:]},
                {},
                0.0,
            )
        )
        raw = bytearray.fromhex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F")
        raw[16:18] = (i % 65535).to_bytes(2, "big")
        out.append(Advert(SENSORS["ruuvi"], -70, {}, {ruuvi.COMPANY_ID: bytes(raw)}, 0.0))
        thermo = bytes.fromhex(f"ED5E0B38C1A429090014860B57{i % 256:02x}05")
        out.append(Advert(SENSORS["pvvx"], -65, {pvvx.UUID: thermo}, {}, 0.0))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adverts", type=int, default=200_000, help="adverts to route (default 200000)")
    parser.add_argument(
        "--phones-per-sensor", type=int, default=3, help="phone adverts per sensor advert (3)"
    )
    args = parser.parse_args()
    configs: dict[str, dict[str, str]] = {
        "bthome": {"format": "bthome", "address": SENSORS["bthome"]},
        "bthome-enc": {"format": "bthome", "address": SENSORS["bthome-enc"], "bindkey": KEY.hex()},
        "ruuvi": {"format": "ruuvi", "address": SENSORS["ruuvi"]},
        "pvvx": {"format": "xiaomi-pvvx", "address": SENSORS["pvvx"]},
        "footfall": {"type": "presence"},
    }
    devices = {name: BleDevice.model_validate({"bus": "air", **keys}) for name, keys in configs.items()}
    per = args.phones_per_sensor + 1
    sensors = sensor_adverts(max(1, args.adverts // per // len(SENSORS)))
    phones = [
        Advert(
            f"5D:{i >> 16 & 255:02X}:{i >> 8 & 255:02X}:{i & 255:02X}:00:01",
            -70,
            {},
            {0x004C: b"\x10\x05"},
            0.0,
        )
        for i in range(len(sensors) * args.phones_per_sensor)
    ]
    mix: list[Advert] = []
    for i, advert in enumerate(sensors):
        mix.append(advert)
        mix.extend(phones[i * args.phones_per_sensor : (i + 1) * args.phones_per_sensor])

    router = Router(devices)
    decoders = [(route.extract, route.decode) for route in router.routes.values()]
    by_address = {address: i for i, address in enumerate(router.routes)}
    jobs = [(decoders[by_address[a.address]], a) for a in sensors]
    started = time.perf_counter()
    for (extract, decode), advert in jobs:
        data = extract(advert)
        assert data is not None
        decode(data)
    decoded_s = time.perf_counter() - started

    now = time.time()
    router.start(now)
    readings = 0
    sensor_s = 0.0
    started = time.perf_counter()
    for advert in mix:
        outcome = router.sensor(advert, now)
        if outcome is not None:
            readings += len(outcome.readings)
        router.presence(advert, now)
    routed_s = time.perf_counter() - started
    started = time.perf_counter()
    for advert in sensors:
        router.routes[advert.address].last_key = None
        router.sensor(advert, now)
    sensor_s = time.perf_counter() - started
    decoded, routed = len(sensors) / decoded_s, len(mix) / routed_s
    print(
        json.dumps(
            {
                "adverts": len(mix),
                "phones_per_sensor_advert": args.phones_per_sensor,
                "decoded_per_s": round(decoded),
                "routed_per_s": round(routed),
                "sensor_routed_per_s": round(len(sensors) / sensor_s),
                "readings_per_s": round(readings / routed_s),
                "target_met": decoded >= 100_000 and routed >= 100_000,
            }
        )
    )


if __name__ == "__main__":
    main()
