"""Inline images: only ``data:`` URLs of real, size-limited images are accepted."""

from __future__ import annotations

import base64
import binascii
import re

from infermesh.errors import InvalidRequest

_DATA_URL = re.compile(r"^data:(?P<mime>image/[a-z0-9.+-]+);base64,(?P<data>.*)$", re.DOTALL)
_SIGNATURES: dict[str, tuple[bytes, ...]] = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/jpg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),
}


def check_image_url(url: str, *, param: str, max_bytes: int) -> None:
    """Refuse remote URLs (never fetched) and malformed or oversized inline images."""
    if url.startswith(("http://", "https://")):
        raise InvalidRequest(
            "Remote image URLs are not fetched. Send the image inline as a base64 "
            "data: URL (data:image/png;base64,...).",
            param=param,
            code="image_url_not_supported",
        )
    match = _DATA_URL.match(url)
    if match is None:
        raise InvalidRequest(
            "Images must be inline base64 data: URLs such as data:image/png;base64,...",
            param=param,
            code="invalid_image",
        )
    mime, encoded = match["mime"], match["data"]
    if mime not in _SIGNATURES:
        raise InvalidRequest(
            f"Unsupported image type '{mime}'. Use PNG, JPEG, GIF or WebP.",
            param=param,
            code="invalid_image",
        )
    if len(encoded) * 3 // 4 > max_bytes:
        raise InvalidRequest(
            f"The image is larger than the limit of {max_bytes} bytes.",
            param=param,
            code="image_too_large",
        )
    try:
        image = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(
            "The image is not valid base64.", param=param, code="invalid_image"
        ) from None
    if not image.startswith(_SIGNATURES[mime]) or (mime == "image/webp" and image[8:12] != b"WEBP"):
        raise InvalidRequest(
            f"The image data is not a valid {mime} image.", param=param, code="invalid_image"
        )
