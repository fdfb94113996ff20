#!/usr/bin/env python3
"""Fetch the dashboard's third-party browser files, at pinned versions, into
``src/infermesh/gateway/dashboard/static/vendor/`` (committed; the gateway never loads
anything from a CDN).

Each package's npm tarball is downloaded from the registry, checked against the sha512
integrity recorded here (``npm view <package>@<version> dist.integrity``), and the named
files are written out with the package's license. ``--check`` writes nothing and fails
when a committed file differs from the pinned tarball's.

To move to a new version: change ``version`` and ``integrity`` below, run this script,
look at the diff, and commit it.

    python scripts/vendor_assets.py            # (re)write the files
    python scripts/vendor_assets.py --check    # are the committed files those of the pins?
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import sys
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REGISTRY = "https://registry.npmjs.org"
ROOT = Path(__file__).resolve().parents[1]
VENDOR = ROOT / "src/infermesh/gateway/dashboard/static/vendor"
MAX_TARBALL_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True)
class Package:
    """An npm package to vendor: its pinned version and integrity, and which files of
    its tarball to keep under which names."""

    name: str
    version: str
    integrity: str
    files: dict[str, str]

    @property
    def tarball_url(self) -> str:
        base = self.name.rsplit("/", 1)[-1]
        return f"{REGISTRY}/{self.name}/-/{base}-{self.version}.tgz"


PACKAGES = [
    Package(
        name="uplot",
        version="1.6.32",
        integrity=(
            "sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw=="
        ),
        files={
            "package/dist/uPlot.iife.min.js": "uPlot.iife.min.js",
            "package/dist/uPlot.min.css": "uPlot.min.css",
            "package/LICENSE": "uPlot.LICENSE",
        },
    ),
]


def download(package: Package) -> bytes:
    """The package's tarball, checked against its recorded integrity."""
    with urllib.request.urlopen(package.tarball_url, timeout=60) as answer:
        tarball: bytes = answer.read(MAX_TARBALL_BYTES + 1)
    if len(tarball) > MAX_TARBALL_BYTES:
        raise SystemExit(f"{package.tarball_url}: larger than {MAX_TARBALL_BYTES} bytes")
    algorithm, _, expected = package.integrity.partition("-")
    if algorithm != "sha512":
        raise SystemExit(f"{package.name}: only sha512 integrity is accepted, not {algorithm}")
    actual = base64.b64encode(hashlib.sha512(tarball).digest()).decode()
    if actual != expected:
        raise SystemExit(
            f"{package.name}@{package.version}: the tarball's sha512 is {actual}, "
            f"not the recorded {expected}; nothing written"
        )
    return tarball


def extract(package: Package, tarball: bytes) -> dict[str, bytes]:
    """The package's chosen files, by the names they get in ``vendor/``."""
    chosen: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        for member_name, target in package.files.items():
            member = archive.getmember(member_name)
            handle = archive.extractfile(member) if member.isfile() else None
            if handle is None:
                raise SystemExit(f"{package.name}: {member_name} is not a file in the tarball")
            chosen[target] = handle.read()
    return chosen


def header(package: Package) -> bytes:
    return (
        f"Vendored by scripts/vendor_assets.py from {package.tarball_url}\n"
        f"({package.integrity}).\n\n"
    ).encode()


def vendored(package: Package) -> dict[str, bytes]:
    """Every file ``package`` puts in ``vendor/``, with the license marked as to where
    it came from."""
    files = extract(package, download(package))
    for target, content in files.items():
        if target.endswith("LICENSE"):
            files[target] = header(package) + content
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    check = parser.parse_args(argv).check
    stale: list[str] = []
    for package in PACKAGES:
        for target, content in vendored(package).items():
            path = VENDOR / target
            if check:
                if not path.is_file() or path.read_bytes() != content:
                    stale.append(target)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            print(f"{package.name}@{package.version}: {path.relative_to(ROOT)}")
    if stale:
        print(f"not the pinned versions' files: {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
