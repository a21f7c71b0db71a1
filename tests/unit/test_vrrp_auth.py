"""HMAC advert trailer (lvs-ha peers) and the VRRPv2 simple password."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ha.vrrp import auth as H
from ha.vrrp import packet as P
from ha.vrrp.packet import Advert, AuthType

ip = ipaddress.ip_address
SRC, SRC2, DST = ip("192.168.77.11"), ip("192.168.77.12"), P.MCAST_V4
KEY = H.HmacKey(1, bytes(range(32)))
KEY2 = H.HmacKey(2, b"\x42" * 32)
ADV = Advert(3, 77, 150, 1.0, (ip("192.168.77.100"),))


def signed(signer: H.Signer, wall: float, src: P.IPAddress = SRC, advert: Advert = ADV) -> bytes:
    msg = P.encode(advert, src, DST)
    return msg + signer.sign(msg, src, DST, wall)


def test_sign_verify_decode() -> None:
    payload = signed(H.Signer(KEY), 1000.0)
    assert len(payload) == 12 + H.TRAILER_LEN
    msg = H.Verifier([KEY]).verify(payload, SRC, DST)
    assert P.decode(msg, SRC, DST) == ADV
    # a plain RFC receiver still decodes it: the trailer is ignored
    assert P.decode(payload, SRC, DST) == ADV


def test_ipv6_and_v2() -> None:
    src6 = ip("fe80::1")
    adv6 = Advert(3, 77, 150, 1.0, (ip("fd77::100"),))
    msg = P.encode(adv6, src6, P.MCAST_V6)
    payload = msg + H.Signer(KEY).sign(msg, src6, P.MCAST_V6, 5.0)
    assert H.Verifier([KEY]).verify(payload, src6, P.MCAST_V6) == msg
    adv2 = Advert(2, 77, 150, 1.0, (ip("192.168.77.100"),))
    assert P.decode(H.Verifier([KEY]).verify(signed(H.Signer(KEY), 5.0, advert=adv2), SRC, DST), SRC, DST) == adv2


def test_replay_rejected_and_counter_monotonic() -> None:
    signer, verifier = H.Signer(KEY), H.Verifier([KEY])
    first = signed(signer, 1000.0)
    second = signed(signer, 1000.0)  # same wall time: the counter still increases
    verifier.verify(first, SRC, DST)
    verifier.verify(second, SRC, DST)
    with pytest.raises(H.Replay):
        verifier.verify(first, SRC, DST)
    with pytest.raises(H.Replay):
        verifier.verify(second, SRC, DST)
    # a restarted sender seeds from wall time, so it continues above the old counter
    restarted = H.Signer(KEY)
    verifier.verify(signed(restarted, 1001.0), SRC, DST)
    # counters are per source
    verifier.verify(signed(H.Signer(KEY), 10.0, src=SRC2), SRC2, DST)


def test_replay_is_a_bad_auth_protocol_error() -> None:
    assert issubclass(H.Replay, P.BadAuth) and issubclass(P.BadAuth, P.VrrpProtocolError)


def test_tampering_detected() -> None:
    payload = bytearray(signed(H.Signer(KEY), 1000.0))
    payload[2] = 254  # raise the priority, keep the trailer
    with pytest.raises(P.BadAuth, match="HMAC"):
        H.Verifier([KEY]).verify(bytes(payload), SRC, DST)
    good = signed(H.Signer(KEY), 1000.0)
    with pytest.raises(P.BadAuth):  # spoofed source address: the pseudo-header is covered
        H.Verifier([KEY]).verify(good, SRC2, DST)
    with pytest.raises(P.BadAuth, match="no lvs-ha HMAC trailer"):
        H.Verifier([KEY]).verify(P.encode(ADV, SRC, DST), SRC, DST)
    with pytest.raises(P.BadAuth, match="unknown key id"):
        H.Verifier([KEY2]).verify(good, SRC, DST)


def test_failed_verification_does_not_advance_counter() -> None:
    signer, verifier = H.Signer(KEY), H.Verifier([KEY])
    forged = bytearray(signed(signer, 2000.0))
    forged[-1] ^= 1
    with pytest.raises(P.BadAuth):
        verifier.verify(bytes(forged), SRC, DST)
    verifier.verify(signed(H.Signer(KEY), 1500.0), SRC, DST)  # still accepted: the forgery set no high-water mark


def test_key_rotation() -> None:
    verifier = H.Verifier([KEY, KEY2])
    verifier.verify(signed(H.Signer(KEY), 1.0), SRC, DST)
    verifier.verify(signed(H.Signer(KEY2), 2.0), SRC, DST)


def test_parse_key_file() -> None:
    keys = H.parse_key_file("# comment\n3 " + "ab" * 16 + "\n\n7 " + "cd" * 20 + "  # old key\n")
    assert [k.key_id for k in keys] == [3, 7]
    assert keys[0].secret == b"\xab" * 16
    assert H.parse_key_file("00" * 32)[0].key_id == 1
    assert "secret" not in repr(keys[0]) and "abab" not in repr(keys[0])
    for bad, msg in (
        ("", "no key"),
        ("1 abc", "line 1"),
        ("x " + "ab" * 16, "line 1"),
        ("1 abab", "at least"),
        ("1 " + "ab" * 16 + "\n1 " + "cd" * 16, "twice"),
        ("1 2 3", "line 1"),
    ):
        with pytest.raises(P.VrrpLocalError, match=msg):
            H.parse_key_file(bad)


@settings(max_examples=300)
@given(st.binary(max_size=120))
def test_verify_garbage_never_crashes(data: bytes) -> None:
    try:
        H.Verifier([KEY]).verify(data, SRC, DST)
    except P.VrrpProtocolError:
        pass


def test_v2_password() -> None:
    assert H.password_auth_data("kalab77") == b"kalab77\0"
    assert H.password_auth_data("averylongpassword") == b"averylon"
    ka = Advert(2, 77, 150, 1.0, (ip("192.168.77.100"),), AuthType.PASSWORD, b"kalab77\0")
    H.check_v2_auth(ka, "kalab77")
    with pytest.raises(P.BadAuth, match="wrong password"):
        H.check_v2_auth(ka, "other")
    with pytest.raises(P.BadAuth, match="auth type"):
        H.check_v2_auth(ka, None)
    plain = Advert(2, 77, 150, 1.0, (ip("192.168.77.100"),))
    H.check_v2_auth(plain, None)
    with pytest.raises(P.BadAuth):
        H.check_v2_auth(plain, "kalab77")
    H.check_v2_auth(ADV, "ignored for v3")


def test_v2_password_golden() -> None:
    from tests.unit.test_vrrp_packet import hex_frame

    frame = hex_frame("vrrp-v2-advert-authpass.hex.txt")
    hdr, adv = P.decode_frame(frame)
    H.check_v2_auth(adv, "kalab77")
    ours = Advert(2, 77, 150, 1.0, adv.addresses, AuthType.PASSWORD, H.password_auth_data("kalab77"))
    assert P.encode_frame(ours, hdr.src, frame[6:12], ident=hdr.ident) == frame


def test_authenticator_adapter() -> None:
    clock = iter([100.0, 100.0, 99.0])
    sender = H.HmacAuthenticator([KEY, KEY2], lambda: next(clock))
    receiver = H.HmacAuthenticator([KEY2, KEY], lambda: 0.0)
    msg = P.encode(ADV, SRC, DST)
    payloads = [sender.seal(msg, SRC, DST) for _ in range(3)]
    assert [receiver.check(p, SRC, DST) for p in payloads] == [msg] * 3  # a wall clock stepping back is absorbed
    with pytest.raises(H.Replay):
        receiver.check(payloads[1], SRC, DST)
    with pytest.raises(P.VrrpLocalError):
        H.HmacAuthenticator([], lambda: 0.0)
