"""``infermesh workers``: in-process with CliRunner, then as real processes."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from typer.testing import CliRunner

from infermesh.accounts.workers import WorkerScope, WorkerTokenService
from infermesh.cli.workers import workers_app
from infermesh.store import Database
from tests.support.postgres import require_postgres, temporary_postgres_database
from tests.support.processes import infermesh

T = TypeVar("T")

VIEW_FIELDS = {
    "id", "name", "operator", "prefix", "status", "node_id", "models", "max_connections",
    "max_slots", "allowed_models", "jobs_served", "jobs_failed", "created_at", "revoked_at",
    "last_seen_at",
}  # fmt: skip


def invoke(*args: str) -> tuple[int, str, str]:
    """Run ``infermesh workers ARGS`` in-process; (exit code, stdout, stderr)."""
    result = CliRunner().invoke(workers_app, list(args))
    return result.exit_code, result.stdout, result.stderr


def with_workers(data_dir: Path, action: Callable[[WorkerTokenService], Awaitable[T]]) -> T:
    """Run ``action`` on the worker service of the SQLite database in ``data_dir``."""

    async def run() -> T:
        db = Database(f"sqlite+aiosqlite:///{data_dir / 'infermesh.db'}")
        try:
            return await action(WorkerTokenService(db))
        finally:
            await db.dispose()

    return asyncio.run(run())


def create_json(data_dir: Path, *options: str) -> dict[str, Any]:
    code, out, err = invoke("token", "create", "--json", "--data-dir", str(data_dir), *options)
    assert code == 0, err
    created: dict[str, Any] = json.loads(out)
    return created


def test_token_create_json(tmp_path: Path, clean_env: dict[str, str]) -> None:
    created = create_json(tmp_path, "--name", "rig-1", "--operator", "gpu-co")
    assert set(created) == {"token", *VIEW_FIELDS}
    assert (created["max_connections"], created["max_slots"]) == (2, 64)
    assert created["allowed_models"] is None
    assert created["token"].startswith("wt-im-")
    assert (created["name"], created["operator"]) == ("rig-1", "gpu-co")
    identity = with_workers(tmp_path, lambda service: service.authenticate(created["token"]))
    assert identity is not None and identity.worker_id == created["id"]
    assert identity.operator_name == "gpu-co"


def test_token_create_shows_the_token_once(tmp_path: Path, clean_env: dict[str, str]) -> None:
    code, out, _ = invoke("token", "create", "--name", "rig-1", "--data-dir", str(tmp_path))
    assert code == 0
    assert "wt-im-" in out and "will not be shown again" in out and "default" in out
    assert "up to 2 connections · 64 job slots each · models: any" in out


def test_token_create_needs_a_valid_name(tmp_path: Path, clean_env: dict[str, str]) -> None:
    code, _, _ = invoke("token", "create", "--data-dir", str(tmp_path))
    assert code == 2
    code, out, err = invoke("token", "create", "--name", " ", "--data-dir", str(tmp_path))
    assert code == 1 and out == "" and "worker name" in err


def test_list(tmp_path: Path, clean_env: dict[str, str]) -> None:
    data = ["--data-dir", str(tmp_path)]
    code, out, _ = invoke("list", *data)
    assert code == 0 and "No workers." in out
    online = create_json(tmp_path, "--name", "rig-online", "--operator", "gpu-co")
    offline = create_json(tmp_path, "--name", "rig-offline")

    async def serve(service: WorkerTokenService) -> None:
        await service.mark_connected(online["id"], node_id="node-1", models=["tiny", "big"])
        await service.add_served(online["id"], served=7, failed=2)

    with_workers(tmp_path, serve)
    code, out, _ = invoke("list", *data)
    assert code == 0
    for shown in ("rig-online", "rig-offline", "gpu-co", "online", "offline", "tiny, big"):
        assert shown in out
    assert online["token"] not in out and online["token"][12:] not in out
    code, out, _ = invoke("list", "--json", *data)
    rows = {row["id"]: row for row in json.loads(out)}
    assert rows[online["id"]]["status"] == "online"
    assert rows[online["id"]]["models"] == ["tiny", "big"]
    assert (rows[online["id"]]["jobs_served"], rows[online["id"]]["jobs_failed"]) == (7, 2)
    assert rows[offline["id"]]["status"] == "offline"
    assert rows[offline["id"]]["operator"] == "default"
    assert all(online["token"][12:] not in json.dumps(row) for row in rows.values())


def test_revoke(tmp_path: Path, clean_env: dict[str, str]) -> None:
    data = ["--data-dir", str(tmp_path)]
    created = create_json(tmp_path, "--name", "rig-1")
    code, out, _ = invoke("revoke", created["id"], *data)
    assert code == 0 and created["id"] in out and "disconnects it" in out
    listed = json.loads(invoke("list", "--json", *data)[1])
    assert [row["status"] for row in listed] == ["revoked"]
    assert with_workers(tmp_path, lambda service: service.authenticate(created["token"])) is None
    code, out, err = invoke("revoke", "wrk_0123456789abcdef", *data)
    assert code == 1 and out == ""
    assert "No worker" in err and "Traceback" not in err


def test_the_real_command_line(tmp_path: Path, clean_env: dict[str, str]) -> None:
    data = ["--data-dir", str(tmp_path)]
    run = infermesh("workers", "token", "create", "--name", "rig-1", "--json", *data, env=clean_env)
    assert run.returncode == 0, run.stderr
    created = json.loads(run.stdout)
    assert set(created) == {"token", *VIEW_FIELDS}
    assert created["token"].startswith("wt-im-") and created["operator"] == "default"

    listing = infermesh("workers", "list", "--json", *data, env=clean_env)
    assert listing.returncode == 0, listing.stderr
    assert [(row["id"], row["status"]) for row in json.loads(listing.stdout)] == [
        (created["id"], "offline")
    ]
    assert created["token"] not in listing.stdout

    revoked = infermesh("workers", "revoke", created["id"], *data, env=clean_env)
    assert revoked.returncode == 0, revoked.stderr
    assert created["id"] in revoked.stdout
    listing = infermesh("workers", "list", *data, env=clean_env)
    assert listing.returncode == 0 and "revoked" in listing.stdout

    unknown = infermesh("workers", "revoke", "wrk_ffffffffffffffff", *data, env=clean_env)
    assert unknown.returncode == 1
    assert "No worker" in unknown.stderr and "Traceback" not in unknown.stderr


@pytest.mark.postgres
async def test_the_real_command_line_on_postgres(clean_env: dict[str, str]) -> None:
    require_postgres()
    async with temporary_postgres_database() as url:
        plain_url = url.replace("postgresql+asyncpg://", "postgresql://")
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "infermesh",
            "workers",
            "token",
            "create",
            "--name",
            "pg-rig",
            "--operator",
            "pg",
            "--json",
            "--database-url",
            plain_url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=clean_env,
        )
        stdout, stderr = await process.communicate()
        assert process.returncode == 0, stderr.decode()
        created = json.loads(stdout)
        db = Database(url)
        try:
            identity = await WorkerTokenService(db).authenticate(created["token"])
        finally:
            await db.dispose()
        assert identity is not None and identity.operator_name == "pg"


def test_token_scope_round_trips(tmp_path: Path, clean_env: dict[str, str]) -> None:
    data = ["--data-dir", str(tmp_path)]
    scope = ["--max-connections", "3", "--max-slots", "16", "--models", " raw, tiny,,raw "]
    created = create_json(tmp_path, "--name", "scoped", *scope)
    shown = {"max_connections": 3, "max_slots": 16, "allowed_models": ["raw", "tiny"]}
    assert {field: created[field] for field in shown} == shown
    identity = with_workers(tmp_path, lambda service: service.authenticate(created["token"]))
    assert identity is not None
    assert identity.scope == WorkerScope(3, 16, ("raw", "tiny"))

    view = {field: value for field, value in created.items() if field != "token"}
    assert json.loads(invoke("list", "--json", *data)[1]) == [view]
    code, out, _ = invoke("show", created["id"], "--json", *data)
    assert code == 0 and json.loads(out) == view
    code, out, _ = invoke("show", created["id"], *data)
    assert code == 0
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert (rows["max_connections"], rows["max_slots"]) == (["3"], ["16"])
    assert rows["allowed_models"] == ["raw,", "tiny"] and rows["models"] == ["-"]
    assert created["token"][12:] not in out
    code, out, _ = invoke("list", *data)
    assert code == 0 and "raw, tiny" in out and "16" in out


def test_the_default_scope_shows_as_any(tmp_path: Path, clean_env: dict[str, str]) -> None:
    data = ["--data-dir", str(tmp_path)]
    created = create_json(tmp_path, "--name", "open")
    code, out, _ = invoke("show", created["id"], *data)
    assert code == 0
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert (rows["allowed_models"], rows["max_slots"], rows["status"]) == (
        ["any"],
        ["64"],
        ["offline"],
    )
    code, out, _ = invoke("list", *data)
    assert code == 0 and "any" in out


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--max-connections", "0"], "max_connections"),
        (["--max-slots", "0"], "max_slots"),
        (["--max-slots", "1000001"], "max_slots"),
        (["--models", " , "], "allowed_models"),
    ],
)
def test_token_create_refuses_a_bad_scope(
    tmp_path: Path, clean_env: dict[str, str], options: list[str], message: str
) -> None:
    args = ["token", "create", "--name", "rig-1", "--data-dir", str(tmp_path), *options]
    code, out, err = invoke(*args)
    assert code == 1 and out == "" and message in err
    assert json.loads(invoke("list", "--json", "--data-dir", str(tmp_path))[1]) == []


def test_show_an_unknown_worker(tmp_path: Path, clean_env: dict[str, str]) -> None:
    code, out, err = invoke("show", "wrk_0123456789abcdef", "--data-dir", str(tmp_path))
    assert code == 1 and out == "" and "No worker" in err
