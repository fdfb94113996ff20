"""Sign-In with Ethereum (EIP-4361): the message, a strict parser of its ABNF, the checks
a gateway makes on one, and who signed it (EIP-191 ``personal_sign``).

Pure: no I/O; the current time is passed in. Every refusal is a :class:`SignInRefused`
(401) whose code says why.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_keys.exceptions import BadSignature
from eth_utils.address import to_checksum_address
from eth_utils.exceptions import ValidationError

from infermesh.errors import Unauthorized

MAX_MESSAGE_BYTES = 4096
"""The largest message accepted (UTF-8 bytes); a real one is well under 1 KiB."""
CLOCK_SKEW = timedelta(seconds=60)
"""How far the signer's clock may be from ours (for ``Issued At`` and ``Not Before``)."""
VERSION = "1"

# RFC 3986 character classes (for use inside [...]).
_UNRESERVED = r"A-Za-z0-9\-._~"
_SUB_DELIMS = r"!$&'()*+,;="
_GEN_DELIMS = r":/?#\[\]@"
_PCT = r"%[0-9A-Fa-f]{2}"
_SCHEME = r"[A-Za-z][A-Za-z0-9+.\-]*"
_USERINFO = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}:]|{_PCT})*"
_HOST = rf"(?:\[[0-9A-Fa-f:.]+\]|(?:[{_UNRESERVED}{_SUB_DELIMS}]|{_PCT})+)"
_AUTHORITY = rf"(?:{_USERINFO}@)?{_HOST}(?::[0-9]*)?"
_URI = re.compile(rf"{_SCHEME}:(?:[{_UNRESERVED}{_GEN_DELIMS}{_SUB_DELIMS}]|{_PCT})*")
_HEADER = re.compile(
    rf"(?:({_SCHEME})://)?({_AUTHORITY}) wants you to sign in with your Ethereum account:"
)
_ADDRESS = re.compile(r"0x[0-9A-Fa-f]{40}")
_STATEMENT = re.compile(rf"[{_UNRESERVED}{_GEN_DELIMS}{_SUB_DELIMS} ]*")
_CHAIN_ID = re.compile(r"[0-9]{1,78}")
_NONCE = re.compile(r"[A-Za-z0-9]{8,}")
_REQUEST_ID = re.compile(rf"(?:[{_UNRESERVED}{_SUB_DELIMS}:@]|{_PCT})*")
_DATE_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?"
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_SIGNATURE = re.compile(r"0x[0-9A-Fa-f]{130}")


class SignInRefused(Unauthorized):
    """A wallet sign-in was refused (401); subclasses' codes say why."""

    code = "wallet_sign_in_refused"


class InvalidSiweMessage(SignInRefused):
    """The message is not an EIP-4361 message."""

    code = "invalid_siwe_message"


class SiweMessageTooLarge(SignInRefused):
    code = "siwe_message_too_large"


class WrongDomain(SignInRefused):
    code = "wrong_domain"


class WrongChain(SignInRefused):
    code = "wrong_chain"


class MessageExpired(SignInRefused):
    """Past its ``Expiration Time``, or issued longer ago than a nonce lives."""

    code = "message_expired"


class MessageNotYetValid(SignInRefused):
    """Before its ``Not Before``, or issued in the future."""

    code = "message_not_yet_valid"


class InvalidSignature(SignInRefused):
    """The signature is not a 65-byte recoverable signature."""

    code = "invalid_signature"


class SignatureMismatch(SignInRefused):
    """The signature is not the message's address signing this very message."""

    code = "signature_mismatch"


@dataclass(frozen=True, slots=True)
class SiweMessage:
    """An EIP-4361 message. ``address`` is EIP-55 checksummed; ``resources`` is None when
    the message has no ``Resources:`` line."""

    domain: str
    address: str
    uri: str
    chain_id: int
    nonce: str
    issued_at: datetime
    version: str = VERSION
    scheme: str | None = None
    statement: str | None = None
    expiration_time: datetime | None = None
    not_before: datetime | None = None
    request_id: str | None = None
    resources: tuple[str, ...] | None = None

    def to_text(self) -> str:
        """The message as a wallet shows and signs it (times in UTC, ``Z``)."""
        scheme = f"{self.scheme}://" if self.scheme else ""
        lines = [f"{scheme}{self.domain} wants you to sign in with your Ethereum account:"]
        lines += [self.address, ""]
        lines += [""] if self.statement is None else [self.statement, ""]
        lines += [
            f"URI: {self.uri}",
            f"Version: {self.version}",
            f"Chain ID: {self.chain_id}",
            f"Nonce: {self.nonce}",
            f"Issued At: {format_time(self.issued_at)}",
        ]
        if self.expiration_time is not None:
            lines.append(f"Expiration Time: {format_time(self.expiration_time)}")
        if self.not_before is not None:
            lines.append(f"Not Before: {format_time(self.not_before)}")
        if self.request_id is not None:
            lines.append(f"Request ID: {self.request_id}")
        if self.resources is not None:
            lines += ["Resources:", *(f"- {resource}" for resource in self.resources)]
        return "\n".join(lines)


def format_time(moment: datetime) -> str:
    """``moment`` as an RFC 3339 date-time in UTC: ``2025-01-02T03:04:05Z`` (with
    milli- or microseconds when it has them)."""
    utc = moment.astimezone(UTC)
    timespec = "seconds"
    if utc.microsecond:
        timespec = "milliseconds" if utc.microsecond % 1000 == 0 else "microseconds"
    return utc.isoformat(timespec=timespec).replace("+00:00", "Z")


class _Lines:
    """The message's lines, taken one by one; every surprise is an InvalidSiweMessage."""

    def __init__(self, text: str) -> None:
        self._lines = text.split("\n")
        self._at = 0

    def peek(self) -> str | None:
        return self._lines[self._at] if self._at < len(self._lines) else None

    def next(self, what: str) -> str:
        line = self.peek()
        if line is None:
            raise InvalidSiweMessage(f"The message ends where {what} should be.")
        self._at += 1
        return line

    def blank(self, where: str) -> None:
        if self.next(f"a blank line {where}") != "":
            raise InvalidSiweMessage(f"Line {self._at} must be blank ({where}).")

    def field(self, tag: str) -> str:
        line = self.next(f"'{tag}: …'")
        if not line.startswith(f"{tag}: "):
            raise InvalidSiweMessage(f"Line {self._at} must be '{tag}: …'.")
        return line[len(tag) + 2 :]

    def optional(self, tag: str) -> str | None:
        line = self.peek()
        return self.field(tag) if line is not None and line.startswith(f"{tag}: ") else None

    def end(self) -> None:
        if self.peek() is not None:
            raise InvalidSiweMessage(f"Line {self._at + 1} is not part of an EIP-4361 message.")


def parse_message(text: str) -> SiweMessage:
    """``text`` as an EIP-4361 message, exactly as its ABNF has it (LF line ends, fields
    in order, no trailing line end); else :class:`InvalidSiweMessage` (or
    :class:`SiweMessageTooLarge` over :data:`MAX_MESSAGE_BYTES`)."""
    if len(text) > MAX_MESSAGE_BYTES or len(text.encode()) > MAX_MESSAGE_BYTES:
        raise SiweMessageTooLarge(
            f"The sign-in message is larger than {MAX_MESSAGE_BYTES} bytes.", param="message"
        )
    lines = _Lines(text)
    scheme, domain = _header(lines.next("the header"))
    address = _address(lines.next("the address"))
    lines.blank("after the address")
    statement = _statement(lines)
    uri = _matched(_URI, lines.field("URI"), "URI")
    version = lines.field("Version")
    if version != VERSION:
        raise InvalidSiweMessage(f"Unsupported EIP-4361 version; only '{VERSION}' exists.")
    message = SiweMessage(
        domain=domain,
        address=address,
        uri=uri,
        chain_id=int(_matched(_CHAIN_ID, lines.field("Chain ID"), "Chain ID")),
        nonce=_matched(_NONCE, lines.field("Nonce"), "Nonce"),
        issued_at=_time(lines.field("Issued At"), "Issued At"),
        scheme=scheme,
        statement=statement,
        expiration_time=_optional_time(lines, "Expiration Time"),
        not_before=_optional_time(lines, "Not Before"),
        request_id=_optional_request_id(lines),
        resources=_resources(lines),
    )
    lines.end()
    return message


def _header(line: str) -> tuple[str | None, str]:
    match = _HEADER.fullmatch(line)
    if match is None:
        raise InvalidSiweMessage(
            "Line 1 must be '<domain> wants you to sign in with your Ethereum account:'."
        )
    return match.group(1), match.group(2)


def _address(line: str) -> str:
    if _ADDRESS.fullmatch(line) is None:
        raise InvalidSiweMessage("Line 2 must be an address: '0x' and 40 hex digits.")
    if to_checksum_address(line) != line:
        raise InvalidSiweMessage("The address must be written with its EIP-55 checksum.")
    return line


def _statement(lines: _Lines) -> str | None:
    line = lines.next("the statement")
    if line == "" and (lines.peek() or "").startswith("URI: "):
        return None
    if _STATEMENT.fullmatch(line) is None:
        raise InvalidSiweMessage(
            "The statement may hold only printable ASCII URI characters and spaces."
        )
    lines.blank("after the statement")
    return line


def _matched(pattern: re.Pattern[str], value: str, field: str) -> str:
    if pattern.fullmatch(value) is None:
        raise InvalidSiweMessage(f"'{field}' is not valid.")
    return value


def _time(value: str, field: str) -> datetime:
    if _DATE_TIME.fullmatch(value) is None:
        raise InvalidSiweMessage(f"'{field}' must be an RFC 3339 date-time with a time zone.")
    try:
        return datetime.fromisoformat(value.upper())
    except ValueError:
        raise InvalidSiweMessage(f"'{field}' is not a real date and time.") from None


def _optional_time(lines: _Lines, field: str) -> datetime | None:
    value = lines.optional(field)
    return None if value is None else _time(value, field)


def _optional_request_id(lines: _Lines) -> str | None:
    value = lines.optional("Request ID")
    return None if value is None else _matched(_REQUEST_ID, value, "Request ID")


def _resources(lines: _Lines) -> tuple[str, ...] | None:
    if lines.peek() != "Resources:":
        return None
    lines.next("'Resources:'")
    resources: list[str] = []
    while (line := lines.peek()) is not None:
        if not line.startswith("- ") or _URI.fullmatch(line[2:]) is None:
            raise InvalidSiweMessage("Each line after 'Resources:' must be '- <URI>'.")
        resources.append(lines.next("a resource")[2:])
    return tuple(resources)


def check_message(
    message: SiweMessage,
    *,
    domain: str,
    chain_ids: Collection[int],
    now: datetime,
    max_age: timedelta,
    skew: timedelta = CLOCK_SKEW,
) -> None:
    """Refuse ``message`` unless it names ``domain`` (case-insensitively) and one of
    ``chain_ids``, was issued within ``max_age`` (± ``skew``) of ``now``, has not expired
    and is past its ``Not Before`` (± ``skew``)."""
    if message.domain.lower() != domain.lower():
        raise WrongDomain(
            f"The message is for the domain '{message.domain}'; this gateway is '{domain}'.",
            param="message",
        )
    if message.chain_id not in chain_ids:
        accepted = ", ".join(str(chain_id) for chain_id in chain_ids)
        raise WrongChain(
            f"Chain ID {message.chain_id} is not accepted here; use one of {accepted}.",
            param="message",
        )
    _check_times(message, now=now, max_age=max_age, skew=skew)


def _check_times(
    message: SiweMessage, *, now: datetime, max_age: timedelta, skew: timedelta
) -> None:
    if message.issued_at > now + skew:
        raise MessageNotYetValid("The message's 'Issued At' is in the future.", param="message")
    if message.issued_at < now - max_age - skew:
        raise MessageExpired(
            "The message was issued too long ago; get a new nonce and sign again.",
            param="message",
        )
    if message.expiration_time is not None and message.expiration_time <= now:
        raise MessageExpired("The message's 'Expiration Time' has passed.", param="message")
    if message.not_before is not None and message.not_before > now + skew:
        raise MessageNotYetValid(
            "The message is not valid before its 'Not Before' time.", param="message"
        )


def parse_signature(signature: str) -> bytes:
    """The 65 bytes of a ``0x``-prefixed hex signature; else :class:`InvalidSignature`."""
    if _SIGNATURE.fullmatch(signature) is None:
        raise InvalidSignature(
            "The signature must be '0x' and 130 hex digits (65 bytes).", param="signature"
        )
    return bytes.fromhex(signature[2:])


def recover_signer(text: str, signature: bytes) -> str:
    """The checksummed address whose key made ``signature`` over ``text`` (EIP-191
    ``personal_sign``). CPU-bound (milliseconds): call it off the event loop."""
    try:
        return str(Account.recover_message(encode_defunct(text=text), signature=signature))
    except (BadSignature, ValidationError, ValueError):
        raise InvalidSignature(
            "The signature is not a valid signature.", param="signature"
        ) from None


def check_signer(message: SiweMessage, signer: str) -> None:
    """Refuse unless ``signer`` (recovered from the signature) is the message's address."""
    if signer.lower() != message.address.lower():
        raise SignatureMismatch(
            "The signature was not made by the message's address over this message.",
            param="signature",
        )
