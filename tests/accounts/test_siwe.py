"""The EIP-4361 parser and checks: messages written in the EIP's exact format parse and
round-trip; bad ones are refused with a reason; the checks use the clock they are given."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from infermesh.accounts.siwe import (
    MAX_MESSAGE_BYTES,
    InvalidSignature,
    InvalidSiweMessage,
    MessageExpired,
    MessageNotYetValid,
    SignatureMismatch,
    SiweMessage,
    SiweMessageTooLarge,
    WrongChain,
    WrongDomain,
    check_message,
    check_signer,
    format_time,
    parse_message,
    parse_signature,
    recover_signer,
)

FULL = """\
service.example wants you to sign in with your Ethereum account:
0x8ba1f109551bD432803012645Ac136ddd64DBA72

Sign in to Example Service; I accept the terms at https://service.example/terms

URI: https://service.example/login
Version: 1
Chain ID: 8453
Nonce: Qm7rTz2kLp9XwY4a
Issued At: 2025-03-01T12:00:00Z
Expiration Time: 2025-03-01T12:10:00.500Z
Not Before: 2025-03-01T11:59:00Z
Request ID: req-8f2c:login@1
Resources:
- ipfs://bafybeiemxf5abjwjbikoz4mc3a3dla6ual3jsgpdr4cjr3oz3evfyavhwq/
- https://service.example/profile.json"""

MINIMAL = """\
localhost:8000 wants you to sign in with your Ethereum account:
0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed


URI: http://localhost:8000
Version: 1
Chain ID: 84532
Nonce: 12345678
Issued At: 2025-03-01T12:00:00.123456Z"""

WITH_SCHEME = """\
https://user@api.example.org:8443 wants you to sign in with your Ethereum account:
0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359

Hello.

URI: did:pkh:eip155:8453:0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359
Version: 1
Chain ID: 1
Nonce: abcdefgh
Issued At: 2025-03-01T12:00:00Z
Request ID:\x20
Resources:"""

EMPTY_STATEMENT = """\
[::1]:8000 wants you to sign in with your Ethereum account:
0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed



URI: http://[::1]:8000/login?next=%2Fkeys#top
Version: 1
Chain ID: 8453
Nonce: 00000000
Issued At: 2025-03-01T12:00:00Z"""

NOW = datetime(2025, 3, 1, 12, 0, 30, tzinfo=UTC)


@pytest.mark.parametrize("text", [FULL, MINIMAL, WITH_SCHEME, EMPTY_STATEMENT])
def test_messages_round_trip(text: str) -> None:
    message = parse_message(text)
    assert message.to_text() == text
    assert parse_message(message.to_text()) == message


def test_a_full_message_has_every_field() -> None:
    message = parse_message(FULL)
    assert message == SiweMessage(
        domain="service.example",
        address="0x8ba1f109551bD432803012645Ac136ddd64DBA72",
        statement="Sign in to Example Service; I accept the terms at https://service.example/terms",
        uri="https://service.example/login",
        version="1",
        chain_id=8453,
        nonce="Qm7rTz2kLp9XwY4a",
        issued_at=datetime(2025, 3, 1, 12, 0, tzinfo=UTC),
        expiration_time=datetime(2025, 3, 1, 12, 10, 0, 500_000, tzinfo=UTC),
        not_before=datetime(2025, 3, 1, 11, 59, tzinfo=UTC),
        request_id="req-8f2c:login@1",
        resources=(
            "ipfs://bafybeiemxf5abjwjbikoz4mc3a3dla6ual3jsgpdr4cjr3oz3evfyavhwq/",
            "https://service.example/profile.json",
        ),
    )


def test_optional_parts_are_told_apart_from_empty_ones() -> None:
    minimal = parse_message(MINIMAL)
    assert (minimal.scheme, minimal.statement, minimal.resources) == (None, None, None)
    assert (minimal.expiration_time, minimal.not_before, minimal.request_id) == (None,) * 3
    scheme = parse_message(WITH_SCHEME)
    assert (scheme.scheme, scheme.domain) == ("https", "user@api.example.org:8443")
    assert (scheme.request_id, scheme.resources) == ("", ())
    assert parse_message(EMPTY_STATEMENT).statement == ""


def test_times_with_offsets_are_read_as_the_instant_they_name() -> None:
    text = MINIMAL.replace("2025-03-01T12:00:00.123456Z", "2025-03-01t14:00:00.25+02:00")
    assert parse_message(text).issued_at == datetime(2025, 3, 1, 12, 0, 0, 250_000, tzinfo=UTC)
    moment = datetime(2025, 3, 1, 13, 0, tzinfo=timezone(timedelta(hours=1)))
    assert format_time(moment) == "2025-03-01T12:00:00Z"


def _replace(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


BAD = {
    "empty": "",
    "not a message": "hello world",
    "wrong header": _replace(MINIMAL, "wants you to sign in", "wants you to log in"),
    "no domain": _replace(MINIMAL, "localhost:8000 wants", " wants"),
    "bad checksum": _replace(MINIMAL, "0x5aAeb6053F3E", "0x5aAeB6053F3E"),
    "lowercase address": _replace(
        MINIMAL,
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed",
    ),
    "short address": _replace(
        MINIMAL,
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeA",
    ),
    "no blank after address": _replace(FULL, "DBA72\n\n", "DBA72\n"),
    "no blank after statement": _replace(FULL, "terms\n\nURI", "terms\nURI"),
    "missing URI": _replace(MINIMAL, "URI: http://localhost:8000\n", ""),
    "missing version": _replace(MINIMAL, "Version: 1\n", ""),
    "unknown version": _replace(MINIMAL, "Version: 1", "Version: 2"),
    "missing chain id": _replace(MINIMAL, "Chain ID: 84532\n", ""),
    "chain id not a number": _replace(MINIMAL, "Chain ID: 84532", "Chain ID: base"),
    "missing nonce": _replace(MINIMAL, "Nonce: 12345678\n", ""),
    "short nonce": _replace(MINIMAL, "Nonce: 12345678", "Nonce: 1234567"),
    "nonce with symbols": _replace(MINIMAL, "Nonce: 12345678", "Nonce: 1234-5678"),
    "missing issued at": _replace(MINIMAL, "\nIssued At: 2025-03-01T12:00:00.123456Z", ""),
    "date without zone": _replace(MINIMAL, "12:00:00.123456Z", "12:00:00.123456"),
    "impossible date": _replace(MINIMAL, "2025-03-01T12", "2025-02-30T12"),
    "hour 24": _replace(MINIMAL, "2025-03-01T12", "2025-03-01T24"),
    "date only": _replace(MINIMAL, "2025-03-01T12:00:00.123456Z", "2025-03-01"),
    "bad expiration": _replace(
        FULL, "Expiration Time: 2025-03-01T12:10:00.500Z", "Expiration Time: soon"
    ),
    "fields out of order": _replace(
        MINIMAL, "Chain ID: 84532\nNonce: 12345678", "Nonce: 12345678\nChain ID: 84532"
    ),
    "optional fields out of order": _replace(
        FULL,
        "Expiration Time: 2025-03-01T12:10:00.500Z\nNot Before: 2025-03-01T11:59:00Z",
        "Not Before: 2025-03-01T11:59:00Z\nExpiration Time: 2025-03-01T12:10:00.500Z",
    ),
    "unknown field": MINIMAL + "\nColor: blue",
    "trailing line end": MINIMAL + "\n",
    "CRLF line ends": MINIMAL.replace("\n", "\r\n"),
    "URI without scheme": _replace(MINIMAL, "URI: http://localhost:8000", "URI: /login"),
    "URI with a space": _replace(MINIMAL, "URI: http://localhost:8000", "URI: http://local host"),
    "statement not ASCII": _replace(
        FULL, "Sign in to Example Service", "Sign in to Exämple Service"
    ),
    "statement with a quote": _replace(FULL, "Sign in to Example Service", 'Sign in to "Example"'),
    "resource without dash": _replace(
        FULL, "- https://service.example/profile.json", "https://service.example/profile.json"
    ),
    "request id with a space": _replace(FULL, "req-8f2c:login@1", "req 8f2c"),
}


@pytest.mark.parametrize("text", list(BAD.values()), ids=list(BAD))
def test_bad_messages_are_refused(text: str) -> None:
    with pytest.raises(InvalidSiweMessage) as refused:
        parse_message(text)
    assert refused.value.status_code == 401
    assert refused.value.code == "invalid_siwe_message"
    assert refused.value.message


def test_an_oversized_message_is_refused_before_it_is_read() -> None:
    resources = "".join(f"\n- https://service.example/{i:04d}" for i in range(200))
    text = MINIMAL + "\nResources:" + resources
    assert len(text.encode()) > MAX_MESSAGE_BYTES
    with pytest.raises(SiweMessageTooLarge) as refused:
        parse_message(text)
    assert refused.value.code == "siwe_message_too_large"
    multibyte = "é" * (MAX_MESSAGE_BYTES // 2 + 1)  # fewer characters than bytes
    with pytest.raises(SiweMessageTooLarge):
        parse_message(multibyte)


def _check(text: str = FULL, *, now: datetime = NOW, **options: object) -> None:
    arguments: dict[str, object] = {
        "domain": "service.example",
        "chain_ids": (8453, 84532),
        "now": now,
        "max_age": timedelta(minutes=5),
    }
    arguments.update(options)
    check_message(parse_message(text), **arguments)  # type: ignore[arg-type]


def test_a_fresh_message_for_this_gateway_passes() -> None:
    _check()
    _check(domain="SERVICE.example")  # host names are case-insensitive


@pytest.mark.parametrize(
    ("options", "error", "code"),
    [
        ({"domain": "other.example"}, WrongDomain, "wrong_domain"),
        ({"chain_ids": (1,)}, WrongChain, "wrong_chain"),
        ({"now": NOW + timedelta(minutes=10)}, MessageExpired, "message_expired"),
        ({"now": NOW + timedelta(minutes=7)}, MessageExpired, "message_expired"),
        ({"now": NOW - timedelta(minutes=3)}, MessageNotYetValid, "message_not_yet_valid"),
    ],
)
def test_checks_refuse_with_their_own_code(
    options: dict[str, object], error: type[Exception], code: str
) -> None:
    with pytest.raises(error) as refused:
        _check(**options)
    assert getattr(refused.value, "code", None) == code


def test_issued_at_allows_a_small_clock_skew_only() -> None:
    issued = datetime(2025, 3, 1, 12, 0, 0, 123_456, tzinfo=UTC)
    _check(MINIMAL, domain="localhost:8000", now=issued - timedelta(seconds=30))
    _check(MINIMAL, domain="localhost:8000", now=issued + timedelta(minutes=5, seconds=30))
    with pytest.raises(MessageNotYetValid):
        _check(MINIMAL, domain="localhost:8000", now=issued - timedelta(minutes=2))
    with pytest.raises(MessageExpired):
        _check(MINIMAL, domain="localhost:8000", now=issued + timedelta(minutes=7))


def test_the_signer_is_recovered_from_a_personal_sign_signature() -> None:
    wallet = Account.create()
    text = MINIMAL.replace("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", wallet.address)
    signature = wallet.sign_message(encode_defunct(text=text)).signature.to_0x_hex()
    message = parse_message(text)
    assert recover_signer(text, parse_signature(signature)) == wallet.address
    check_signer(message, recover_signer(text, parse_signature(signature)))
    other = Account.create().sign_message(encode_defunct(text=text)).signature.to_0x_hex()
    with pytest.raises(SignatureMismatch):
        check_signer(message, recover_signer(text, parse_signature(other)))
    tampered = text.replace("Nonce: 12345678", "Nonce: 87654321")
    with pytest.raises(SignatureMismatch):
        check_signer(message, recover_signer(tampered, parse_signature(signature)))


@pytest.mark.parametrize(
    "signature",
    ["", "0x", "0x1234", "1" * 130, "0x" + "zz" * 65, "0x" + "00" * 64, "0x" + "00" * 66],
)
def test_malformed_signatures_are_refused(signature: str) -> None:
    with pytest.raises(InvalidSignature) as refused:
        parse_signature(signature)
    assert refused.value.code == "invalid_signature"


@pytest.mark.parametrize("raw", [b"\x00" * 65, b"\xff" * 65, b"\x01" * 64 + b"\x05"])
def test_unrecoverable_signatures_are_refused(raw: bytes) -> None:
    with pytest.raises(InvalidSignature):
        recover_signer(MINIMAL, raw)
