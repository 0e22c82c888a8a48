"""`citygw receive` and `citygw verify` as a platform meets them (issue 16 items 2-5, issue 17 item 7).

Payloads of wire contract v2 are built by hand per docs/integrator.md ("Contract versions") and
sealed with the gateway's own :class:`Signer`; the receiver runs as a real subprocess over HTTP
and over a real mosquitto.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from citygw.demo.broker import LocalBroker
from citygw.reading import Record
from citygw.receiver.endpoint import Receiver
from citygw.receiver.verify import ChainVerifier, Outcome, Refusal, verify_main
from citygw.wire.keyring import Keyring
from citygw.wire.signing import Signer, chain_hash, generate_key, public_key_path

REPO = Path(__file__).resolve().parent.parent
T0 = 1_790_000_000.0


# -- contract v2 payloads, sealed by the real signer ---------------------------------------------


def new_chain_id() -> str:
    return base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode("ascii")


def senml(gateway: str, seq: int, count: int = 2) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = [
        {"bn": f"{gateway}/meter-1/", "bt": T0 + seq * 10, "n": "voltage", "u": "V", "v": 230.0 + seq}
    ]
    records += [{"n": "voltage", "u": "V", "v": 230.0 + seq + i / 10, "t": float(i)} for i in range(1, count)]
    return records


def batch(
    gateway: str,
    chain: str,
    seq: int,
    prev: str | None,
    *,
    created: float | None = None,
    reset: dict[str, Any] | None = None,
) -> bytes:
    body: dict[str, Any] = {
        "v": 2,
        "gateway": gateway,
        "chain": chain,
        "seq": seq,
        "prev": prev,
        "created": T0 + seq * 10 + 5 if created is None else created,
        "senml": senml(gateway, seq),
    }
    if reset is not None:
        body["reset"] = reset
    return json.dumps(body, separators=(",", ":")).encode()


def gap(
    gateway: str, chain: str, first: int, last: int, prev: str | None, last_hash: str, reason: str
) -> bytes:
    body = {
        "v": 2,
        "gateway": gateway,
        "chain": chain,
        "gap": {
            "from": first,
            "to": last,
            "batches": last - first + 1,
            "readings": 2 * (last - first + 1),
            "reason": reason,
        },
        "prev": prev,
        "last": last_hash,
        "created": T0 + 1,
    }
    return json.dumps(body, separators=(",", ":")).encode()


class Box:
    """One box's stream: a signer, a gateway id, the current chain and its head."""

    def __init__(self, signer: Signer, gateway: str) -> None:
        self.signer = signer
        self.gateway = gateway
        self.chain = new_chain_id()
        self.seq = 0
        self.head: str | None = None
        self.created = T0

    def next(self, **extra: Any) -> str:
        self.seq += 1
        self.created += 10
        token = self.signer.sign(
            batch(self.gateway, self.chain, self.seq, self.head, created=self.created, **extra)
        )
        self.head = chain_hash(token)
        return token

    def take(self, n: int) -> list[str]:
        return [self.next() for _ in range(n)]

    def reset(self, reason: str = "corrupt", *, announce: bool = True) -> str:
        """A new buffer: a new chain from seq 1; its first batch names the old chain if ``announce``."""
        old, old_seq = self.chain, self.seq
        self.chain, self.seq, self.head = new_chain_id(), 0, None
        return self.next(reset={"chain": old, "seq": old_seq, "reason": reason} if announce else None)


def make_key(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.key"
    generate_key(path)
    return path


def add_gateway(keys: Path, gateway: str, key: Path) -> None:
    folder = keys / gateway
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(public_key_path(key), folder / f"{key.stem}.pub")


@pytest.fixture
def fleet(tmp_path: Path) -> tuple[Path, Box, Box]:
    """A keys directory with gw1 and gw2, each with its own key; a box for each."""
    keys = tmp_path / "keys"
    k1, k2 = make_key(tmp_path, "gw1"), make_key(tmp_path, "gw2")
    add_gateway(keys, "gw1", k1)
    add_gateway(keys, "gw2", k2)
    return keys, Box(Signer.from_file(k1), "gw1"), Box(Signer.from_file(k2), "gw2")


# -- citygw receive as a subprocess --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ReceiveProcess:
    def __init__(self, tmp_path: Path, keys: Path, *extra: str) -> None:
        self.port = free_port()
        self.log = tmp_path / "receive.log"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "citygw",
                "receive",
                "--keys",
                str(keys),
                "--db",
                str(tmp_path / "received.db"),
                "--http",
                f"127.0.0.1:{self.port}",
                "--json",
                *extra,
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=self.log.open("ab"),
        )
        self.wait_for(lambda: self.report() is not None, "the receiver to answer")

    def wait_for(self, condition: Callable[[], object], what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"receiver exited: {self.log.read_text()}"
            if condition():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; log:\n{self.log.read_text()}")

    def post(self, token: str) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/batches",
            data=token.encode("ascii", errors="replace"),
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def report(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/report", timeout=10) as answer:
                return json.loads(answer.read())  # type: ignore[no-any-return]
        except OSError:
            return None

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM")

    def stop(self) -> tuple[int, dict[str, Any]]:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=20)
        return self.proc.returncode, json.loads(out)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def receive(tmp_path: Path) -> Iterator[Callable[..., ReceiveProcess]]:
    made: list[ReceiveProcess] = []

    def start(keys: Path, *extra: str) -> ReceiveProcess:
        process = ReceiveProcess(tmp_path, keys, *extra)
        made.append(process)
        return process

    yield start
    for process in made:
        process.close()


def stored_seqs(db: Path, gateway: str) -> list[tuple[str, int]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT chain, seq FROM batches WHERE gateway = ? ORDER BY chain, seq", (gateway,)
        ).fetchall()


# -- item 3: keys bound to gateways --------------------------------------------------------------


def test_http_refuses_a_forged_gateway_and_picks_up_a_new_box_without_restart(
    tmp_path: Path, fleet: tuple[Path, Box, Box], receive: Callable[..., ReceiveProcess]
) -> None:
    keys, box1, box2 = fleet
    server = receive(keys)
    genuine = box1.take(3)
    impostor = Box(box2.signer, "gw1")  # box 2's key signing as gw1
    impostor.chain, impostor.seq, impostor.head = box1.chain, 3, box1.head
    forged = impostor.next()

    assert [server.post(t)[0] for t in genuine[:2]] == [200, 200]
    status, answer = server.post(forged)
    assert status == 403 and answer["outcome"] == "bad", answer
    assert "is not a key of gateway gw1" in answer["reason"]
    assert server.post(genuine[2])[0] == 200
    assert stored_seqs(tmp_path / "received.db", "gw1") == [(box1.chain, 1), (box1.chain, 2), (box1.chain, 3)]

    # a third box: its folder appears while the receiver runs
    k3 = make_key(tmp_path, "gw3")
    box3 = Box(Signer.from_file(k3), "gw3")
    first = box3.next()
    assert server.post(first)[0] == 400  # not yet known: refused, the box parks it
    add_gateway(keys, "gw3", k3)
    server.wait_for(lambda: server.post(first)[0] == 200, "gw3's folder to be picked up")

    code, report = server.stop()
    refused = report["totals"]["refused"]
    assert refused["not_bound"] == 1 and refused["unknown_kid"] >= 1 and len(refused) == 2, refused
    assert report["gateways"]["gw1"]["batches"] == 3
    assert report["gateways"]["gw3"]["batches"] == 1
    assert code == 1  # something was refused
    assert "refused a batch from gateway gw1 (not_bound)" in server.log.read_text()


def test_verify_keys_dir_refuses_a_forged_gateway(
    tmp_path: Path, fleet: tuple[Path, Box, Box], capsys: pytest.CaptureFixture[str]
) -> None:
    keys, box1, box2 = fleet
    tokens = box1.take(2) + box2.take(1)
    impostor = Box(box2.signer, "gw1")
    tokens.append(impostor.next())
    path = tmp_path / "batches.jws"
    path.write_text("\n".join(tokens) + "\n")

    assert verify_main([], [path], keys_dir=keys) == 1

    out, err = capsys.readouterr()
    assert err.splitlines()[0].startswith("line 4: seq ?: key ")
    assert "is not a key of gateway gw1 (it is gw2's)" in err
    assert out.endswith("verified 3 batches (6 readings), 0 duplicates, 1 bad\n")


def test_a_rotation_is_two_keys_in_one_folder_and_a_removed_key_is_revoked(
    tmp_path: Path, fleet: tuple[Path, Box, Box]
) -> None:
    keys, box1, _ = fleet
    clock = [0.0]
    keyring = Keyring(keys, clock=lambda: clock[0])
    verifier = ChainVerifier(keyring)
    new = make_key(tmp_path, "gw1-new")
    add_gateway(keys, "gw1", new)
    assert verifier.verify(box1.next()).ok
    box1.signer = Signer.from_file(new)
    assert verifier.verify(box1.next()).ok  # the new key is found at once (an unknown kid looks again)
    (keys / "gw1" / "gw1-new.pub").unlink()
    clock[0] += 10  # the directory is looked at again every few seconds
    result = verifier.verify(box1.next())
    assert (result.outcome, result.refusal) == (Outcome.BAD, Refusal.UNKNOWN_KID)


# -- item 4: verify before parsing, bound what a peer controls ------------------------------------


def hostile_tokens(box: Box) -> list[str]:
    """What an attacker without the key (and one with it) can send."""
    brackets = b"[" * 100_000
    header = base64.urlsafe_b64encode(json.dumps({"alg": "EdDSA", "kid": box.signer.kid}).encode()).rstrip(
        b"="
    )
    payload = base64.urlsafe_b64encode(brackets).rstrip(b"=")
    return [
        brackets.decode(),  # an unsigned payload of 100,000 [
        f"{header.decode()}.{payload.decode()}.{'A' * 86}",  # the same, dressed as a JWS of a known kid
        f"{'W' * 100_000}.e30.AAAA",  # a huge protected header
        "x.y.z",
    ]


def test_verify_reports_each_hostile_line_and_goes_on(
    tmp_path: Path, fleet: tuple[Path, Box, Box], capsys: pytest.CaptureFixture[str]
) -> None:
    keys, box1, _ = fleet
    good = box1.take(3)
    path = tmp_path / "batches.jws"
    path.write_text("\n".join([good[0], *hostile_tokens(box1), good[1], good[2]]) + "\n")

    assert verify_main([], [path], keys_dir=keys) == 1

    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert [line.split(":")[0] for line in lines] == ["line 2", "line 3", "line 4", "line 5"], err
    assert "bad signature" in lines[1] and "protected header over" in lines[2]
    assert out == "verified 3 batches (6 readings), 0 duplicates, 4 bad\n"


def test_a_signed_payload_nested_too_deeply_is_malformed_not_a_crash(fleet: tuple[Path, Box, Box]) -> None:
    keys, box1, _ = fleet
    result = ChainVerifier(Keyring(keys)).verify(box1.signer.sign(b"[" * 100_000))
    assert (result.outcome, result.refusal, result.reason) == (
        Outcome.BAD,
        Refusal.MALFORMED,
        "payload is nested too deeply",
    )


def test_http_answers_hostile_payloads_4xx_and_stores_what_follows(
    fleet: tuple[Path, Box, Box], receive: Callable[..., ReceiveProcess]
) -> None:
    keys, box1, _ = fleet
    server = receive(keys)
    nested = box1.signer.sign(b"[" * 100_000)  # signed by the box's own key, still refused
    answers = [server.post(token) for token in [*hostile_tokens(box1), nested]]

    assert [status for status, _ in answers] == [400] * 5, answers
    assert [server.post(t)[0] for t in box1.take(2)] == [200, 200]
    report = server.report()
    assert report is not None and report["gateways"]["gw1"]["batches"] == 2
    assert report["totals"]["refused"] == {"not_jws": 3, "bad_signature": 1, "malformed": 1}


def test_verify_and_receive_need_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from citygw.commands.cli import main

    assert main(["verify", str(tmp_path / "batches.jws")]) == 2
    assert "give --keys DIR" in capsys.readouterr().err
    code = main(
        [
            "receive",
            "--keys",
            str(tmp_path / "absent"),
            "--db",
            str(tmp_path / "r.db"),
            "--http",
            "127.0.0.1:1",
        ]
    )
    assert code == 2
    assert "keys directory" in capsys.readouterr().err


def publish(port: int, topic: str, payloads: list[bytes]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-publisher")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for payload in payloads:
            client.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def test_mqtt_drops_and_counts_hostile_payloads_while_genuine_batches_flow(
    tmp_path: Path, fleet: tuple[Path, Box, Box], broker: LocalBroker, receive: Callable[..., ReceiveProcess]
) -> None:
    keys, box1, box2 = fleet
    server = receive(keys, "--mqtt", f"mqtt://127.0.0.1:{broker.port}")
    server.wait_for(lambda: "receiving from" in server.log.read_text(), "the MQTT subscription")
    impostor = Box(box2.signer, "gw1")
    first = box1.take(2)
    # a gap record the box's own key signed, naming 30 million seqs (it cost /report 2 GiB before)
    huge_gap = box1.signer.sign(gap("gw1", box1.chain, 3, 30_000_002, box1.head, "a" * 64, "max_age"))
    box1.seq, box1.head = 30_000_002, "a" * 64
    rest = box1.take(2)
    hostile = [*hostile_tokens(box1), impostor.next()]
    payloads = [t.encode() for t in [first[0], *hostile, first[1], huge_gap, *hostile, *rest]]

    publish(broker.port, "city/gw1/batches", payloads)

    def arrived() -> bool:
        report = server.report()
        return report is not None and report["totals"]["stored"] == 4 and report["totals"]["gap_records"] == 1

    server.wait_for(arrived, "the genuine batches behind the hostile ones")
    started = time.monotonic()
    report = server.report()
    assert report is not None and time.monotonic() - started < 5
    assert report["totals"]["refused"] == {"not_jws": 6, "bad_signature": 2, "not_bound": 2}
    gw1 = report["gateways"]["gw1"]
    assert gw1["missing"] == [] and gw1["broken_links"] == []
    assert gw1["gaps"] == [{"from": 3, "to": 30_000_002, "readings": 60_000_000, "reason": "max_age"}]
    assert server.peak_rss_mib() < 300, "a gap record's range must never be spelled out seq by seq"
    text = server.log.read_text()
    assert "refused a batch (not_jws)" in text and "refused a batch (bad_signature)" in text
    assert server.proc.poll() is None


# -- item 2: a box whose buffer is lost starts a new chain ----------------------------------------


def test_a_new_chain_is_stored_with_nothing_refused_and_the_reset_reported(
    tmp_path: Path, fleet: tuple[Path, Box, Box], receive: Callable[..., ReceiveProcess]
) -> None:
    keys, box1, _ = fleet
    server = receive(keys)
    old = box1.take(5)
    old_chain = box1.chain
    for token in old[:3]:  # 4 and 5 were sealed but never delivered: the buffer was lost
        assert server.post(token)[0] == 200
    new = [box1.reset("corrupt"), *box1.take(3)]  # a new buffer: seq 1 again, in a new chain

    assert [server.post(t)[0] for t in new] == [200] * 4  # nothing parked: no 409 for seq 1..3

    report = server.report()
    assert report is not None
    gw1 = report["gateways"]["gw1"]
    assert (
        gw1["chain"] == box1.chain and gw1["missing"] == [] and (gw1["first_seq"], gw1["last_seq"]) == (1, 4)
    )
    assert gw1["resets"] == [
        {
            "old_chain": old_chain,
            "new_chain": box1.chain,
            "old_last_seq": 5,
            "reason": "corrupt",
            "announced": True,
            "lost_batches": 2,
            "lost": [[4, 5]],
        }
    ]
    assert gw1["clones"] == []
    assert gw1["batches"] == 7
    assert f"new chain {box1.chain} follows chain {old_chain}" in server.log.read_text()
    code, final = server.stop()
    assert code == 0 and final["totals"]["new_chains"] == 1


def test_an_unannounced_new_chain_reports_the_old_chains_holes_as_lost(
    fleet: tuple[Path, Box, Box], tmp_path: Path
) -> None:
    keys, box1, _ = fleet
    receiver = Receiver(tmp_path / "r.db", Keyring(keys))
    old = box1.take(4)
    old_chain = box1.chain
    for token in (old[0], old[1], old[3]):
        assert receiver.accept(token).outcome == "stored"
    assert receiver.report()["gateways"]["gw1"]["missing"] == [[3, 3]]  # may still come
    assert receiver.accept(box1.reset(announce=False)).outcome == "stored"
    receiver.close()

    reopened = Receiver(tmp_path / "r.db", Keyring(keys))  # the state is rebuilt from the file
    gw1 = reopened.report()["gateways"]["gw1"]
    reopened.close()
    assert gw1["missing"] == []
    assert gw1["resets"][0]["old_chain"] == old_chain and gw1["resets"][0]["announced"] is False
    assert gw1["resets"][0]["lost"] == [[3, 3]]


def test_verify_accepts_a_reset_and_reports_what_it_lost(
    tmp_path: Path, fleet: tuple[Path, Box, Box], capsys: pytest.CaptureFixture[str]
) -> None:
    keys, box1, _ = fleet
    tokens = box1.take(3)[:2]
    old_chain = box1.chain
    tokens += [box1.reset("corrupt"), *box1.take(2)]
    path = tmp_path / "batches.jws"
    path.write_text("\n".join(tokens) + "\n")

    assert verify_main([], [path], keys_dir=keys) == 0

    out, err = capsys.readouterr()
    assert err == ""
    assert out.splitlines()[0] == (
        f"gateway gw1: box reset (corrupt): chain {box1.chain} replaces {old_chain}, which ended at seq 3; "
        "1 batches lost in the reset (seqs 3)"
    )


def test_batches_in_todays_format_still_verify_beside_v2(fleet: tuple[Path, Box, Box]) -> None:
    keys, box1, _ = fleet
    v1 = json.dumps({"gateway": "gw1", "seq": 1, "prev": None, "created": T0, "senml": senml("gw1", 1)})
    verifier = ChainVerifier(Keyring(keys))
    result = verifier.verify(box1.signer.sign(v1.encode()))
    assert result.ok and result.chain == ""
    assert verifier.verify(box1.next()).ok


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"v": 3}, "v: contract version 3 is not supported"),
        ({"chain": "short"}, "chain: not a chain id"),
        ({"v": None}, "v: contract version None is not supported"),
        ({"reset": {"chain": "A" * 22, "seq": 1}}, "reset: needs exactly the fields chain, reason, seq"),
    ],
)
def test_malformed_v2_payloads(fleet: tuple[Path, Box, Box], change: dict[str, Any], reason: str) -> None:
    keys, box1, _ = fleet
    body = {**json.loads(batch("gw1", box1.chain, 1, None)), **change}
    result = ChainVerifier(Keyring(keys)).verify(box1.signer.sign(json.dumps(body).encode()))
    assert result.outcome is Outcome.BAD and result.reason.startswith(reason), result.reason


def test_a_reset_only_on_seq_1_and_chain_only_with_v(fleet: tuple[Path, Box, Box]) -> None:
    keys, box1, _ = fleet
    verifier = ChainVerifier(Keyring(keys))
    reset = {"chain": new_chain_id(), "seq": 4, "reason": "corrupt"}
    second = json.loads(batch("gw1", box1.chain, 2, "a" * 64, reset=reset))
    assert verifier.verify(box1.signer.sign(json.dumps(second).encode())).reason.startswith(
        "reset: only seq 1"
    )
    v1 = json.loads(batch("gw1", box1.chain, 1, None))
    del v1["v"]
    assert verifier.verify(box1.signer.sign(json.dumps(v1).encode())).reason.startswith("chain without v")


# -- item 5: cloned boxes -------------------------------------------------------------------------


def test_a_cloned_gateway_id_is_reported_by_receive_and_verify(
    tmp_path: Path,
    fleet: tuple[Path, Box, Box],
    receive: Callable[..., ReceiveProcess],
    capsys: pytest.CaptureFixture[str],
) -> None:
    keys, box1, _ = fleet
    clone = Box(box1.signer, "gw1")  # the same image, key and id: a buffer of its own
    clone.created = box1.created
    tokens = []
    for _ in range(3):  # both run side by side: their chains interleave
        tokens += [box1.next(), clone.next()]
    server = receive(keys)
    assert [server.post(t)[0] for t in tokens] == [200] * 6  # stored, each chain on its own

    report = server.report()
    assert report is not None
    assert report["gateways"]["gw1"]["clones"] == [sorted([box1.chain, clone.chain])]
    assert "two boxes claim this gateway id" in server.log.read_text()
    code, _ = server.stop()
    assert code == 1

    path = tmp_path / "batches.jws"
    path.write_text("\n".join(tokens) + "\n")
    assert verify_main([], [path], keys_dir=keys) == 1
    _, err = capsys.readouterr()
    assert "interleave: two boxes claim this gateway id" in err


def test_a_late_batch_of_the_old_chain_is_not_a_clone(fleet: tuple[Path, Box, Box], tmp_path: Path) -> None:
    """A batch sealed before the reset that arrives after the new chain began (another uplink, a
    broker's queue) belongs to the old chain's tail, not to a second box."""
    keys, box1, _ = fleet
    old = box1.take(3)
    new = box1.reset("corrupt")
    verifier = ChainVerifier(Keyring(keys))
    assert all(verifier.verify(t).ok for t in [old[0], old[1], new, old[2]])
    problems, notes = verifier.findings()
    assert problems == [] and "0 batches lost in the reset" in notes[0]


# -- issue 17 item 7: a resend arrives out of order -----------------------------------------------


def test_verify_accepts_a_resent_batch_arriving_after_the_ones_behind_it(
    tmp_path: Path, fleet: tuple[Path, Box, Box], capsys: pytest.CaptureFixture[str]
) -> None:
    keys, box1, _ = fleet
    t = box1.take(6)
    path = tmp_path / "batches.jws"
    path.write_text("\n".join([t[0], t[1], t[3], t[4], t[5], t[2]]) + "\n")  # 3 parked, then resent

    assert verify_main([], [path], keys_dir=keys) == 0

    out, err = capsys.readouterr()
    assert err == "" and out == "verified 6 batches (12 readings), 0 duplicates, 0 bad\n"


# -- the receiver's file from before chains -------------------------------------------------------


def test_a_receiver_file_from_before_chains_is_carried_over(
    fleet: tuple[Path, Box, Box], tmp_path: Path
) -> None:
    keys = fleet[0]
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(
            """
            CREATE TABLE batches (gateway TEXT NOT NULL, seq INTEGER NOT NULL, hash TEXT NOT NULL, prev TEXT,
                readings INTEGER NOT NULL, received REAL NOT NULL, jws TEXT NOT NULL,
                PRIMARY KEY (gateway, seq)) WITHOUT ROWID;
            CREATE TABLE gaps (gateway TEXT NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL,
                batches INTEGER NOT NULL, readings INTEGER NOT NULL, reason TEXT NOT NULL, prev TEXT,
                last_hash TEXT NOT NULL, received REAL NOT NULL, PRIMARY KEY (gateway, first)) WITHOUT ROWID;
            CREATE TABLE readings (gateway TEXT NOT NULL, seq INTEGER NOT NULL, device TEXT NOT NULL,
                name TEXT NOT NULL, value, unit TEXT NOT NULL, time REAL NOT NULL);
            INSERT INTO batches VALUES ('gw1', 1, 'h1', NULL, 2, 1.0, 'x');
            INSERT INTO batches VALUES ('gw1', 3, 'h3', 'h2', 2, 2.0, 'y');
            INSERT INTO readings VALUES ('gw1', 1, 'meter-1', 'voltage', 230, 'V', 1.0);
            """
        )
    receiver = Receiver(db, Keyring(keys))
    report = receiver.report()["gateways"]["gw1"]
    receiver.close()
    assert report["chains"][0]["chain"] == "" and report["missing"] == [[2, 2]] and report["readings"] == 1


# -- the whole path: a real daemon whose buffer is moved aside --------------------------------------


def _buffer_has_chains(tmp_path: Path, key: Path) -> bool:
    """Whether this build's buffer seals contract v2 payloads (a chain id in every batch)."""
    from citygw.buffer import BatchLimits, Buffer

    buf = Buffer(
        tmp_path / "probe.db",
        gateway="gw-test",
        signer=Signer.from_file(key),
        uplinks=["x"],
        limits=BatchLimits(),
    )
    buf.open()
    try:
        buf.commit([Record("dev", "co2", 400, "ppm", T0, 0)], seal_all=True)
        token = buf.fetch(0, 1)[0].jws
    finally:
        buf.close()
    part = token.split(".")[1]
    return "chain" in json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_a_buffer_moved_aside_starts_a_new_chain_that_receive_stores_with_nothing_parked(
    tmp_path: Path, key: Path, receive: Callable[..., ReceiveProcess], daemon_factory: Callable[[Path], Any]
) -> None:
    if not _buffer_has_chains(tmp_path, key):
        pytest.skip("this build's buffer does not seal contract v2 (chain ids) yet")
    from .support import write_config

    keys = tmp_path / "keys"
    add_gateway(keys, "gw-test", key)
    server = receive(keys)
    config = write_config(
        tmp_path / "c.yaml",
        key=key,
        port=1,
        devices={"d1": {"bus": "gen", "rate": 200, "count": 400, "values": "sequence"}},
        buffer={"batch": {"max_readings": 50, "max_age": "200ms"}},
    )
    data = json.loads(config.read_text())
    data["uplinks"] = {
        "platform": {"type": "http", "url": f"http://127.0.0.1:{server.port}/batches", "backoff_max": "1s"}
    }
    config.write_text(json.dumps(data))

    def readings() -> int:
        report = server.report()
        return 0 if report is None else sum(g["readings"] for g in report["gateways"].values())

    first = daemon_factory(config)
    first.start()
    server.wait_for(lambda: readings() == 400, "the first buffer's readings", timeout=60)
    assert first.terminate() == 0
    state = tmp_path / "state"
    aside = tmp_path / "aside"
    aside.mkdir()
    for path in state.glob("buffer.db*"):  # a damaged buffer moved aside: the box starts afresh
        path.rename(aside / path.name)
    second = daemon_factory(config)
    second.start()
    server.wait_for(lambda: readings() == 800, "the new chain's readings", timeout=60)
    assert second.terminate() == 0

    code, report = server.stop()
    gw = report["gateways"]["gw-test"]
    assert report["totals"]["bad"] == report["totals"]["conflicts"] == 0, report["totals"]
    assert len(gw["chains"]) == 2 and len(gw["resets"]) == 1 and gw["clones"] == []
    assert gw["missing"] == [] and gw["first_seq"] == 1
    assert code == 0


def test_a_key_outside_any_gateway_folder_is_ignored_and_said_so(
    tmp_path: Path, fleet: tuple[Path, Box, Box], caplog: pytest.LogCaptureFixture
) -> None:
    keys, box1, _ = fleet
    stray = make_key(tmp_path, "stray")
    shutil.copy(public_key_path(stray), keys / "stray.pub")
    with caplog.at_level("WARNING", logger="citygw.wire.keyring"):
        keyring = Keyring(keys)
    assert "stray.pub is in no gateway's folder" in caplog.text
    stranger = Box(Signer.from_file(stray), "gw1")
    assert ChainVerifier(keyring).verify(stranger.next()).refusal is Refusal.UNKNOWN_KID
    assert ChainVerifier(keyring).verify(box1.next()).ok


def test_mqtt_receiver_connects_again_after_the_broker_restarts(
    fleet: tuple[Path, Box, Box], broker: LocalBroker, receive: Callable[..., ReceiveProcess]
) -> None:
    """Its persistent session on a persisting broker keeps what arrives while it reconnects."""
    keys, box1, _ = fleet
    server = receive(keys, "--mqtt", broker.url)
    server.wait_for(lambda: "receiving from" in server.log.read_text(), "the MQTT subscription")
    publish(broker.port, "city/gw1/batches", [t.encode() for t in box1.take(2)])
    server.wait_for(lambda: (server.report() or {}).get("totals", {}).get("stored") == 2, "the first batches")
    broker.stop()
    broker.start()
    publish(broker.port, "city/gw1/batches", [t.encode() for t in box1.take(2)])

    server.wait_for(lambda: (server.report() or {}).get("totals", {}).get("stored") == 4, "the batches after")
    assert "connecting again" in server.log.read_text()


def test_verify_reads_past_a_line_too_long_to_be_a_batch(
    tmp_path: Path, fleet: tuple[Path, Box, Box], capsys: pytest.CaptureFixture[str]
) -> None:
    keys, box1, _ = fleet
    good = box1.take(2)
    path = tmp_path / "batches.jws"
    path.write_text(f"{good[0]}\n{'A' * 17_000_000}\n{good[1]}\n")

    assert verify_main([], [path], keys_dir=keys) == 1

    out, err = capsys.readouterr()
    assert err.startswith("line 2: seq ?: larger than ")
    assert out == "verified 2 batches (4 readings), 0 duplicates, 1 bad\n"
