"""deploy/'s Dockerfiles: the CPU image (gateway and CPU worker) and the CUDA worker image,
read as text (no Docker daemon needed): hadolint's basics, torch from PyTorch's own wheel index
before the project, the entry point, the health check and a build context that sends
only what the images copy. hadolint itself runs where it is installed."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.deploy.readers import DEPLOY, DOCKERFILES, ROOT, exec_form, instructions


def _readme_torch_version() -> str:
    """The torch the README's first command pins: the images install the same one."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"pip install torch==(\S+) -e \. && infermesh serve", readme)
    assert match, "the README's first command changed"
    return match.group(1)


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_entrypoint_is_infermesh_and_the_user_is_not_root(dockerfile: str) -> None:
    assert exec_form(instructions(dockerfile, "ENTRYPOINT")[-1]) == ["infermesh"]
    every = instructions(dockerfile)
    last_from = max(index for index, item in enumerate(every) if item.keyword == "FROM")
    users = [item.arguments for item in every[last_from:] if item.keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_base_images_are_tagged(dockerfile: str) -> None:
    args = dict(item.arguments.partition("=")[::2] for item in instructions(dockerfile, "ARG"))
    for item in instructions(dockerfile, "FROM"):
        image = re.sub(r"\$\{(\w+)\}", lambda match: args[match[1]], item.arguments.split()[0])
        assert ":" in image and not image.endswith(":latest"), f"untagged base {image}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_basics(dockerfile: str) -> None:
    assert instructions(dockerfile, "ADD") == []  # COPY for local files
    for item in instructions(dockerfile, "WORKDIR"):
        assert item.arguments.startswith("/")
    for item in instructions(dockerfile, "COPY"):
        if not item.arguments.startswith("--from"):
            for source in item.arguments.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the build context"
    for item in instructions(dockerfile, "RUN"):
        assert not re.search(r"(^|&&\s*)cd ", item.arguments), "use WORKDIR, not cd"
        if "pip install" in item.arguments:
            assert "--no-cache-dir" in item.arguments
        if "apt-get install" in item.arguments:
            assert "--no-install-recommends" in item.arguments
            assert "rm -rf /var/lib/apt/lists/*" in item.arguments


@pytest.mark.parametrize(
    ("dockerfile", "index"),
    [
        ("Dockerfile", "https://download.pytorch.org/whl/cpu"),
        ("Dockerfile.cuda", "${TORCH_INDEX_URL}"),
    ],
)
def test_torch_comes_from_its_own_index_before_the_project(dockerfile: str, index: str) -> None:
    runs = [
        item.arguments
        for item in instructions(dockerfile, "RUN")
        if "pip install" in item.arguments
    ]
    torch = next(i for i, run in enumerate(runs) if "torch==" in run)
    project = next(i for i, run in enumerate(runs) if run.endswith("pip install --no-cache-dir ."))
    assert torch < project, "pip would fetch torch from PyPI for the project first"
    assert f"--index-url {index} torch=={_readme_torch_version()}" in runs[torch]
    if dockerfile == "Dockerfile.cuda":
        (default,) = [
            item.arguments.split("=", 1)[1]
            for item in instructions(dockerfile, "ARG")
            if item.arguments.startswith("TORCH_INDEX_URL=")
        ]
        assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", default)


def test_gateway_image_health_check_and_default_command() -> None:
    (check,) = instructions("Dockerfile", "HEALTHCHECK")
    assert "/health" in " ".join(exec_form(check))
    assert exec_form(instructions("Dockerfile", "CMD")[-1])[:2] == ["serve", "--no-worker"]
    assert [item.arguments for item in instructions("Dockerfile.cuda", "HEALTHCHECK")] == ["NONE"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_build_context_sends_only_what_the_image_copies(dockerfile: str) -> None:
    lines = (DEPLOY / f"{dockerfile}.dockerignore").read_text().splitlines()
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert patterns[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!src/"} <= set(patterns)


def test_hadolint_if_installed() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed: test_hadolint_basics checks the basics")
    for dockerfile in DOCKERFILES:
        # DL3008: apt package versions are Ubuntu's, not pinned by hand.
        subprocess.run([hadolint, "--ignore", "DL3008", str(DEPLOY / dockerfile)], check=True)
