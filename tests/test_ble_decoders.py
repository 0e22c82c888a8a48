"""BLE decoders on the literal example payloads of their specs, each with the whole expected result.

Payloads are what bleak hands over: service data without its UUID, manufacturer data without its
company id. BTHome examples are from bthome.io/format ("Sensor data", "Binary sensor data", "Events")
with the device information byte 0x40 (v2, plaintext) put in front; the encrypted one is
bthome.io/encryption's. Ruuvi vectors are docs.ruuvi.com "Data format 5 (RAWv2)", "Test vectors"
(the minimum vector as corrected in ruuvi-sensor-protocols issue #30).
"""

from __future__ import annotations

import math

import pytest

from citygw.drivers.ble import bthome, pvvx, ruuvi
from citygw.drivers.ble.cli import decode_bthome, decode_pvvx, decode_ruuvi
from citygw.drivers.ble.common import Decoded, normalise_address
from citygw.errors import DecodeError, Reason
from citygw.reading import Measurement
from citygw.vocabulary import QUANTITIES

M = Measurement
SPEC_KEY = "231d39c1d7cc1ab1aee224cd096db932"
SPEC_MAC = "54:48:E6:8F:80:A5"


def plain(objects: str) -> bytes:
    return bytes.fromhex("40" + objects)


# --- BTHome v2 ---------------------------------------------------------------------------------


def test_bthome_format_page_example_advert() -> None:
    """bthome.io/format, "Advertising payload": 020106 0B09... 0A16 D2FC 4002C40903BF13."""
    decoded = bthome.decode(bytes.fromhex("4002C40903BF13"))
    assert decoded == Decoded([M("temperature", 25.0, "Cel"), M("relativeHumidity", 50.55, "%RH")], None)


SENSOR_EXAMPLES = [  # bthome.io/format, "Sensor data": object bytes -> result, in canonical units
    ("0161", M("batteryLevel", 97, "%EL")),
    ("02CA09", M("temperature", 25.06, "Cel")),
    ("03BF13", M("relativeHumidity", 50.55, "%RH")),
    ("04138A01", M("atmosphericPressure", 100883, "Pa")),  # 1008.83 hPa
    ("05138A14", M("illuminance", 13460.67, "lx")),
    ("065E1F", M("mass", 80.3, "kg")),
    ("073E1D", M("mass", 7486 * 45359237 / 10**10, "kg")),  # 74.86 lb
    ("08CA06", M("dewPoint", 17.38, "Cel")),
    ("0960", M("count", 96, "count")),
    ("0A138A14", M("activeEnergyImport", 1346067, "Wh")),  # 1346.067 kWh
    ("0B021B00", M("activePower", 69.14, "W")),
    ("0C020C", M("voltage", 3.074, "V")),
    ("0D120C", M("pm25", 3090, "ug/m3")),
    ("0E021C", M("pm10", 7170, "ug/m3")),
    ("12E204", M("co2", 1250, "ppm")),
    ("133301", M("volatileOrganicCompoundsTotal", 307, "ug/m3")),
    ("14020C", M("soilMoisture", 0.3074, "/")),  # 30.74 %
    ("2E23", M("relativeHumidity", 35, "%RH")),
    ("2F23", M("soilMoisture", 0.35, "/")),  # 35 %
    ("3D0960", M("count", 24585, "count")),
    ("3E2A2C0960", M("count", 1611213866, "count")),
    ("3F020C", M("rotation", 3074 * math.pi / 1800, "rad")),  # 307.4 deg
    ("400C00", M("distance", 0.012, "m")),  # 12 mm
    ("414E00", M("distance", 7.8, "m")),
    ("424E3400", M("duration", 13.39, "s")),
    ("434E34", M("current", 13.39, "A")),
    ("444E34", M("speed", 482.04, "km/h")),  # 133.90 m/s
    ("451101", M("temperature", 27.3, "Cel")),
    ("4632", M("uvIndex", 5.0, "")),
    ("478756", M("volume", 2.2151, "m3")),  # 2215.1 l
    ("48DC87", M("volume", 0.03478, "m3")),  # 34780 mL
    ("49DC87", M("flowRate", 34780 / 3_600_000, "m3/s")),  # 34.780 m3/h
    ("4A020C", M("voltage", 307.4, "V")),
    ("4B138A14", M("gasVolume", 1346.067, "m3")),
    ("4C41018A01", M("gasVolume", 25821.505, "m3")),
    ("4D12138A14", M("activeEnergyImport", 344593170, "Wh")),  # 344593.170 kWh
    ("4E87562A01", M("volume", 19.551879, "m3")),  # 19551.879 l
    ("4F87562A01", M("waterVolume", 19.551879, "m3")),
    ("518756", M("acceleration", 22.151, "m/s2")),
    ("528756", M("angularVelocity", 22151 * math.pi / 180_000, "1/s")),  # 22.151 deg/s
    ("530C48656C6C6F20576F726C6421", M("text", "Hello World!", "")),
    ("540C48656C6C6F20576F726C6421", M("rawData", "48656c6c6f20576f726c6421", "")),
    ("5587562A01", M("volumeStorage", 19.551879, "m3")),
    ("56E803", M("conductivity", 0.1, "S/m")),  # 1000 uS/cm
    ("57EA", M("temperature", -22, "Cel")),
    ("58EA", M("temperature", -7.7, "Cel")),
    ("59EA", M("count", -22, "count")),
    ("5AEAEA", M("count", -5398, "count")),
    ("5BEA0234EA", M("count", -365690134, "count")),
    ("5C02FBFFFF", M("activePower", -12.78, "W")),
    ("5D02EA", M("current", -5.63, "A")),
    ("5E9F8C", M("direction", 35999 * math.pi / 18_000, "rad")),  # 359.99 deg
]
# objects whose row on bthome.io/format gives no example: bytes made from the row's type and factor
CONSTRUCTED = [
    ("5FA00F", M("precipitation", 400.0, "mm")),  # uint16, factor 0.1 mm
    ("6001", M("channel", 1, "")),
    ("615E01", M("rotationalSpeed", 350 / 60, "1/s")),  # 350 rpm
    ("6287000000", M("speed", 0.000486, "km/h")),  # sint32, factor 0.000001 m/s
    ("63A0860100", M("acceleration", 0.1, "m/s2")),  # sint32, factor 0.000001 m/s2
    ("6403", M("lightLevel", 3, "")),
]


@pytest.mark.parametrize(
    ("objects", "expected"),
    SENSOR_EXAMPLES + CONSTRUCTED,
    ids=[e[0][:2] for e in SENSOR_EXAMPLES + CONSTRUCTED],
)
def test_bthome_sensor_object_examples(objects: str, expected: Measurement) -> None:
    assert bthome.decode(plain(objects)) == Decoded([expected], None)


def test_bthome_binary_and_event_examples() -> None:
    """bthome.io/format, "Binary sensor data" (0 off, 1 on) and "Events" (button, dimmer)."""
    assert bthome.decode(plain("0F01 1000 1101 1A01 2101 2D00".replace(" ", ""))).measurements == [
        M("genericBoolean", True, ""),
        M("powerState", False, ""),
        M("opening", True, ""),
        M("door", True, ""),
        M("motion", True, ""),
        M("window", False, ""),
    ]
    assert bthome.decode(plain("3A01")).measurements == [M("buttonEvent", "press", "")]
    assert bthome.decode(plain("3A04")).measurements == [M("buttonEvent", "long_press", "")]
    assert bthome.decode(plain("3A00")).measurements == []  # "none": no event to report
    assert bthome.decode(plain("3C0103")).measurements == [M("dimmerSteps", -3, "count")]  # rotate left 3
    assert bthome.decode(plain("3C020A")).measurements == [M("dimmerSteps", 10, "count")]  # right 10


def test_bthome_packet_id_is_the_dedup_key_and_not_a_reading() -> None:
    """bthome.io/format, "Misc data": 0x00 packet id; device info objects are not readings."""
    decoded = bthome.decode(plain("0009 02CA09 505D396164 F00100 F2000102".replace(" ", "")))
    assert decoded == Decoded([M("temperature", 25.06, "Cel")], 9)


def test_bthome_encrypted_spec_example() -> None:
    """bthome.io/encryption: 02CA09 03BF13 under key 231d...b932, MAC 5448E68F80A5, counter 00112233."""
    key = bthome.Key(bytes.fromhex(SPEC_KEY), SPEC_MAC)
    assert bthome.nonce(key.mac, 0x41, bytes.fromhex("00112233")).hex() == "5448e68f80a5d2fc4100112233"
    decoded = bthome.decode(bytes.fromhex("41 A47266C95F73 00112233 78237214"), key)
    assert decoded == Decoded(
        [M("temperature", 25.06, "Cel"), M("relativeHumidity", 50.55, "%RH")], 0x33221100
    )


@pytest.mark.parametrize(
    ("data", "key", "reason"),
    [
        ("", None, Reason.SHORT),
        ("2002CA09", None, Reason.FORMAT),  # version 1 in the device info byte
        ("4002CA", None, Reason.SHORT),  # temperature cut short
        ("4053", None, Reason.SHORT),  # text without its length byte
        ("40530548", None, Reason.SHORT),  # text shorter than its length
        ("4053028080", None, Reason.VALUE),  # text that is not UTF-8
        ("403A09", None, Reason.VALUE),  # button event not in the spec
        ("41A47266C95F730011223378237214", None, Reason.NO_KEY),
        ("41A47266C95F730011223378237215", SPEC_KEY, Reason.DECRYPT),  # one MIC bit flipped
        ("41A47266C95F730011223478237214", SPEC_KEY, Reason.DECRYPT),  # counter changed
        ("4141", SPEC_KEY, Reason.SHORT),
        ("4002CA09", SPEC_KEY, Reason.PLAINTEXT),  # a device with a key sends plaintext: refused
    ],
)
def test_bthome_refusals(data: str, key: str | None, reason: Reason) -> None:
    with pytest.raises(DecodeError) as caught:
        bthome.decode(bytes.fromhex(data), bthome.Key(bytes.fromhex(key), SPEC_MAC) if key else None)
    assert caught.value.reason is reason


def test_bthome_wrong_address_fails_the_mic() -> None:
    key = bthome.Key(bytes.fromhex(SPEC_KEY), "54:48:E6:8F:80:A6")
    with pytest.raises(DecodeError, match="decrypt: the MIC does not match"):
        bthome.decode(bytes.fromhex("41A47266C95F730011223378237214"), key)


# bthome.io/format, "BTHome Device Information", bit 1 as the reference decoder bthome-ble reads it:
# the advertiser's MAC follows the info byte, least significant byte first, and (encrypted) takes
# the place of the advertised address in the nonce of bthome.io/encryption. Vectors built per the
# spec for a device C8:2B:96:A1:04:7E; the encrypted one under MAC_KEY with counter 10.
MAC_DEVICE = "C8:2B:96:A1:04:7E"
MAC_KEY = "5f3e8a0c71d24b96a0e1c3b5d7f90246"
MAC_PLAIN = "42 7E04A1962BC8 002A 015C 021C07 03101E"  # packet id 42, battery 92 %, 18.20 °C, 76.96 %
MAC_SEALED = "43 7E04A1962BC8 6107C013D89C 0A000000 D7DF4BE6"  # 021C07 03101E sealed
AIR = [M("temperature", 18.2, "Cel"), M("relativeHumidity", 76.96, "%RH")]


def test_bthome_advert_carrying_its_mac() -> None:
    decoded = bthome.decode(bytes.fromhex(MAC_PLAIN))
    assert decoded == Decoded([M("batteryLevel", 92, "%EL"), *AIR], 42, mac=bytes.fromhex("C82B96A1047E"))
    assert decoded.address == MAC_DEVICE
    assert bthome.included_address(bytes.fromhex(MAC_PLAIN)) == MAC_DEVICE
    assert bthome.decode(plain("021C07")).address is None  # bit 1 clear: no MAC, none reported


@pytest.mark.parametrize("configured", [MAC_DEVICE, "7A:3F:11:C0:55:02"], ids=["same", "random-advertised"])
def test_bthome_encrypted_advert_carrying_its_mac_uses_it_in_the_nonce(configured: str) -> None:
    """bthome.io/encryption nonce = MAC (6) + D2FC + info (0x43) + counter: the MAC is the one carried."""
    mac = bytes.fromhex(MAC_DEVICE.replace(":", ""))
    assert bthome.nonce(mac, 0x43, bytes.fromhex("0A000000")).hex() == "c82b96a1047ed2fc430a000000"
    decoded = bthome.decode(bytes.fromhex(MAC_SEALED), bthome.Key(bytes.fromhex(MAC_KEY), configured))
    assert decoded == Decoded(AIR, 10, mac=bytes.fromhex("C82B96A1047E"))
    assert decoded.address == MAC_DEVICE


@pytest.mark.parametrize(
    ("data", "key", "reason"),
    [
        ("42", None, Reason.SHORT),  # bit 1 and no MAC
        ("427E04A1962B", None, Reason.SHORT),  # five of the six MAC bytes
        ("427E04A1962BC8021C", None, Reason.SHORT),  # MAC, then a temperature cut short
        ("437E04A1962BC80A000000D7DF4B", MAC_KEY, Reason.SHORT),  # MAC, then less than counter + MIC
        ("437E04A1962BC96107C013D89C0A000000D7DF4BE6", MAC_KEY, Reason.DECRYPT),  # MAC changed: MIC fails
        ("437E04A1962BC86107C013D89C0A000000D7DF4BE6", None, Reason.NO_KEY),
        ("427E04A1962BC8021C07", MAC_KEY, Reason.PLAINTEXT),
    ],
)
def test_bthome_mac_carrying_refusals(data: str, key: str | None, reason: Reason) -> None:
    with pytest.raises(DecodeError) as caught:
        bthome.decode(bytes.fromhex(data), bthome.Key(bytes.fromhex(key), MAC_DEVICE) if key else None)
    assert caught.value.reason is reason
    assert bthome.included_address(bytes.fromhex(data)[:6]) is None  # no whole MAC: none carried


def test_bthome_unknown_object_keeps_what_came_before() -> None:
    """Objects come in ascending id order (bthome.io/format): an unknown id ends the readable part."""
    decoded = bthome.decode(plain("02CA09 EE0102".replace(" ", "")))
    assert decoded == Decoded([M("temperature", 25.06, "Cel")], None, unknown=0xEE)


def test_bthome_table_uses_vocabulary_names_and_units() -> None:
    for oid, obj in bthome.OBJECTS.items():
        if obj.name:
            assert obj.name in QUANTITIES, hex(oid)
            assert QUANTITIES[obj.name].unit == obj.unit, hex(oid)


# --- RuuviTag RAWv2 ----------------------------------------------------------------------------

# acceleration: the spec gives G; 1 G = 9.80665 m/s2 (0.004 G = 0.0392266 m/s2)


def test_ruuvi_valid_data_vector() -> None:
    decoded = ruuvi.decode(bytes.fromhex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F"))
    assert decoded == Decoded(
        [
            M("temperature", 24.3, "Cel"),
            M("relativeHumidity", 53.49, "%RH"),
            M("atmosphericPressure", 100044, "Pa"),
            M("accelerationX", 0.0392266, "m/s2"),  # 0.004 G
            M("accelerationY", -0.0392266, "m/s2"),
            M("accelerationZ", 10.1596894, "m/s2"),
            M("batteryVoltage", 2.977, "V"),
            M("movementCounter", 66, "count"),
        ],
        205,
        bytes.fromhex("CBB8334C884F"),
    )
    assert decoded.address == "CB:B8:33:4C:88:4F"


def test_ruuvi_maximum_values_vector() -> None:
    decoded = ruuvi.decode(bytes.fromhex("057FFFFFFEFFFE7FFF7FFF7FFFFFDEFEFFFECBB8334C884F"))
    assert decoded == Decoded(
        [
            M("temperature", 163.835, "Cel"),
            M("relativeHumidity", 163.835, "%RH"),
            M("atmosphericPressure", 115534, "Pa"),
            M("accelerationX", 321.33450055, "m/s2"),
            M("accelerationY", 321.33450055, "m/s2"),
            M("accelerationZ", 321.33450055, "m/s2"),
            M("batteryVoltage", 3.646, "V"),
            M("movementCounter", 254, "count"),
        ],
        65534,
        bytes.fromhex("CBB8334C884F"),
    )


def test_ruuvi_minimum_values_vector() -> None:
    decoded = ruuvi.decode(bytes.fromhex("058001000000008001800180010000000000CBB8334C884F"))
    assert decoded == Decoded(
        [
            M("temperature", -163.835, "Cel"),
            M("relativeHumidity", 0.0, "%RH"),
            M("atmosphericPressure", 50000, "Pa"),
            M("accelerationX", -321.33450055, "m/s2"),
            M("accelerationY", -321.33450055, "m/s2"),
            M("accelerationZ", -321.33450055, "m/s2"),
            M("batteryVoltage", 1.6, "V"),
            M("movementCounter", 0, "count"),
        ],
        0,
        bytes.fromhex("CBB8334C884F"),
    )


def test_ruuvi_invalid_values_vector_reports_nothing() -> None:
    """Every field "not available": no number is made up; the advert is refused as empty."""
    with pytest.raises(DecodeError) as caught:
        ruuvi.decode(bytes.fromhex("058000FFFFFFFF800080008000FFFFFFFFFFFFFFFFFFFFFF"))
    assert caught.value.reason is Reason.EMPTY


def test_ruuvi_some_fields_not_available_are_omitted() -> None:
    # the valid vector with humidity, acceleration Y and the movement counter set to "not available"
    decoded = ruuvi.decode(bytes.fromhex("0512FCFFFFC37C00048000040CAC36FF00CDCBB8334C884F"))
    assert [m.name for m in decoded.measurements] == [
        "temperature",
        "atmosphericPressure",
        "accelerationX",
        "accelerationZ",
        "batteryVoltage",
    ]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("0512FC", Reason.SHORT),
        ("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F00", Reason.LENGTH),
        ("0312FC5394C37C0004FFFC040CAC364200CDCBB8334C884F", Reason.FORMAT),
        ("03291A1ECE1EFC18F94202CA0B53", Reason.FORMAT),  # RAWv1 (format 3) valid-data vector
    ],
)
def test_ruuvi_refusals(data: str, reason: Reason) -> None:
    with pytest.raises(DecodeError) as caught:
        ruuvi.decode(bytes.fromhex(data))
    assert caught.value.reason is reason


# --- pvvx / atc1441 on 0x181A ------------------------------------------------------------------


def test_pvvx_custom_format() -> None:
    """pvvx/ATC_MiThermometer, "Custom format (all data little-endian)": MAC A4:C1:38:0B:5E:ED
    (sent low byte first), 23.45 Cel, 51.20 %RH, 2950 mV, 87 %, counter 0x2A, flags 0x05."""
    decoded = pvvx.decode(bytes.fromhex("ED5E0B38C1A4 2909 0014 860B 57 2A 05".replace(" ", "")))
    assert decoded == Decoded(
        [
            M("temperature", 23.45, "Cel"),
            M("relativeHumidity", 51.2, "%RH"),
            M("batteryLevel", 87, "%EL"),
            M("batteryVoltage", 2.95, "V"),
        ],
        0x2A,
        bytes.fromhex("A4C1380B5EED"),
    )
    assert decoded.address == "A4:C1:38:0B:5E:ED"


def test_atc1441_format() -> None:
    """atc1441/ATC_MiThermometer, "Advertising format of the custom firmware" (big-endian): MAC in
    order, -5.3 Cel, 48 %RH, 64 %, 2816 mV, frame counter 7."""
    decoded = pvvx.decode(bytes.fromhex("A4C1380B5EED FFCB 30 40 0B00 07".replace(" ", "")))
    assert decoded == Decoded(
        [
            M("temperature", -5.3, "Cel"),
            M("relativeHumidity", 48, "%RH"),
            M("batteryLevel", 64, "%EL"),
            M("batteryVoltage", 2.816, "V"),
        ],
        7,
        bytes.fromhex("A4C1380B5EED"),
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("A4C1380B5EED", Reason.SHORT),
        ("0102030405060708", Reason.ENCRYPTED),
        ("ED5E0B38C1A42909001486 0B652A05".replace(" ", ""), Reason.VALUE),  # battery 101 %
        ("ED5E0B38C1A42909001486 0B572A0500".replace(" ", ""), Reason.LENGTH),
    ],
)
def test_pvvx_refusals(data: str, reason: Reason) -> None:
    with pytest.raises(DecodeError) as caught:
        pvvx.decode(bytes.fromhex(data))
    assert caught.value.reason is reason


# --- the decode command's functions --------------------------------------------------------------


def test_cli_decoders() -> None:
    assert decode_bthome(
        bytes.fromhex("41A47266C95F730011223378237214"), bindkey=SPEC_KEY, address="54-48-e6-8f-80-a5"
    ) == [M("temperature", 25.06, "Cel"), M("relativeHumidity", 50.55, "%RH")]
    with pytest.raises(DecodeError, match="give --bindkey KEY --address MAC"):
        decode_bthome(bytes.fromhex("41A47266C95F730011223378237214"))
    with pytest.raises(ValueError, match="needs --address"):
        decode_bthome(bytes.fromhex("41A47266C95F730011223378237214"), bindkey=SPEC_KEY)
    with pytest.raises(DecodeError, match="empty"):
        decode_bthome(plain("0009"))
    # an advert carrying its MAC needs no --address
    assert decode_bthome(bytes.fromhex(MAC_SEALED.replace(" ", "")), bindkey=MAC_KEY) == AIR
    assert decode_ruuvi(bytes.fromhex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F"))[0] == M(
        "temperature", 24.3, "Cel"
    )
    assert decode_pvvx(bytes.fromhex("A4C1380B5EEDFFCB30400B0007"))[0] == M("temperature", -5.3, "Cel")


@pytest.mark.parametrize(
    "text", ["a4:c1:38:0b:5e:ed", "A4-C1-38-0B-5E-ED", "a4c1380b5eed", " A4:C1:38:0B:5E:ED "]
)
def test_addresses_are_normalised(text: str) -> None:
    assert normalise_address(text) == "A4:C1:38:0B:5E:ED"


@pytest.mark.parametrize("text", ["A4:C1:38:0B:5E", "A4:C1:38:0B:5E:EG", "", "A4C1380B5EED00"])
def test_bad_addresses_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a Bluetooth address"):
        normalise_address(text)
