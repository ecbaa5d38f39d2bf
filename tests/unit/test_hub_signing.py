"""The central hub's request signatures: the canonical string, the HMAC, and the hub's checks
(unknown system, bad signature, the ±300 s timestamp window). Pure: no server.

The client's signing (``adapters.central_hub``) and the hub's verification
(``deploy.peers.central_hub``) are written separately, as two parties would; these tests pin
both to the specification and to each other."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from adapters import central_hub as client
from deploy.peers import central_hub as hub

SECRET = "s3cr3t-of-the-h57-gateway"
SYSTEMS = {"lienthong-h57": SECRET, "vpcp": "another-secret"}
NOW = 1_780_000_000.0
BODY = b'<?xml version="1.0"?><edXML/>'
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_canonical_request_is_method_target_timestamp_and_body_hash() -> None:
    expected = (
        "POST\n/sendEdoc\n1780000000\n" + hashlib.sha256(BODY).hexdigest()
    ).encode()
    assert client.canonical_request("post", "/sendEdoc", "1780000000", BODY) == expected
    assert hub.canonical_request("POST", "/sendEdoc", "1780000000", BODY) == expected


def test_a_get_signs_the_query_and_the_empty_body() -> None:
    text = client.canonical_request("GET", "/getEdoc?docId=ab%2Fcd", "1780000000", b"")
    assert text == f"GET\n/getEdoc?docId=ab%2Fcd\n1780000000\n{EMPTY_SHA256}".encode()


def test_signature_is_hex_hmac_sha256_of_the_canonical_request() -> None:
    message = f"POST\n/sendEdoc\n1780000000\n{hashlib.sha256(BODY).hexdigest()}".encode()
    expected = hmac.new(SECRET.encode(), message, hashlib.sha256).hexdigest()
    assert client.sign(SECRET, "POST", "/sendEdoc", "1780000000", BODY) == expected
    assert len(expected) == 64


def test_signed_headers_carry_system_whole_second_timestamp_and_signature() -> None:
    headers = client.signed_headers("lienthong-h57", SECRET, "POST", "/sendEdoc", BODY, NOW + 0.9)
    assert headers["X-Lienthong-System"] == "lienthong-h57"
    assert headers["X-Lienthong-Timestamp"] == "1780000000"
    assert headers["X-Lienthong-Signature"] == client.sign(
        SECRET, "POST", "/sendEdoc", "1780000000", BODY
    )


def _verify(headers: dict[str, str], *, body: bytes = BODY, target: str = "/sendEdoc",
            method: str = "POST", now: float = NOW) -> str:
    return hub.authenticate(SYSTEMS, method=method, target=target, headers=headers, body=body,
                            now=now)


def _headers(at: float = NOW, secret: str = SECRET, system: str = "lienthong-h57"
             ) -> dict[str, str]:
    return client.signed_headers(system, secret, "POST", "/sendEdoc", BODY, at)


def test_the_hub_accepts_what_the_client_signs() -> None:
    assert _verify(_headers()) == "lienthong-h57"


@pytest.mark.parametrize("skew", [-300, -1, 0, 1, 300])
def test_timestamps_within_300_seconds_either_way_are_accepted(skew: int) -> None:
    assert _verify(_headers(at=NOW + skew)) == "lienthong-h57"


@pytest.mark.parametrize("skew", [-301, 301, -86_400])
def test_timestamps_outside_the_window_are_refused(skew: int) -> None:
    with pytest.raises(hub.HubRefusal) as caught:
        _verify(_headers(at=NOW + skew))
    assert caught.value.status == 401
    assert "300 s" in caught.value.error


@pytest.mark.parametrize("stamp", ["", "soon", "-5", "1780000000.5", "9" * 20])
def test_malformed_timestamps_are_refused(stamp: str) -> None:
    headers = _headers() | {"X-Lienthong-Timestamp": stamp}
    with pytest.raises(hub.HubRefusal) as caught:
        _verify(headers)
    assert caught.value.status == 401


def test_a_wrong_secret_is_a_bad_signature_and_the_secret_is_never_in_the_answer() -> None:
    with pytest.raises(hub.HubRefusal) as caught:
        _verify(_headers(secret="not-the-secret"))
    assert (caught.value.status, caught.value.error) == (401, "bad signature")
    assert SECRET not in caught.value.error and "not-the-secret" not in caught.value.error


def test_an_unknown_system_is_refused() -> None:
    with pytest.raises(hub.HubRefusal) as caught:
        _verify(_headers(system="stranger"))
    assert caught.value.status == 401
    assert "unknown system" in caught.value.error


def test_another_systems_secret_does_not_sign_for_this_one() -> None:
    with pytest.raises(hub.HubRefusal, match="bad signature"):
        _verify(_headers(secret=SYSTEMS["vpcp"]))


@pytest.mark.parametrize(
    ("what", "change"),
    [
        ("body", {"body": BODY + b" "}),
        ("target", {"target": "/sendEdoc?x=1"}),
        ("method", {"method": "PUT"}),
    ],
)
def test_changing_what_was_signed_breaks_the_signature(what: str, change: dict[str, str]
                                                       ) -> None:
    with pytest.raises(hub.HubRefusal, match="bad signature"):
        _verify(_headers(), **change)  # type: ignore[arg-type]


def test_missing_headers_are_named() -> None:
    with pytest.raises(hub.HubRefusal) as caught:
        _verify({"X-Lienthong-System": "lienthong-h57"})
    assert caught.value.status == 401
    assert "X-Lienthong-Timestamp" in caught.value.error
    assert "X-Lienthong-Signature" in caught.value.error


def test_the_signature_may_be_sent_in_upper_case_hex() -> None:
    headers = _headers()
    headers["X-Lienthong-Signature"] = headers["X-Lienthong-Signature"].upper()
    assert _verify(headers) == "lienthong-h57"
