"""``infermesh keys`` and ``infermesh db``: in-process with CliRunner, then as real processes."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from infermesh.accounts import AccountService
from infermesh.cli.db import db_app
from infermesh.cli.keys import keys_app
from infermesh.store import Database, head_revision
from tests.support.postgres import require_postgres, temporary_postgres_database
from tests.support.processes import infermesh


def invoke(app: typer.Typer, *args: str) -> tuple[int, str, str]:
    """Run a sub-app in-process; (exit code, stdout, stderr)."""
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


async def _authenticate(data_dir: Path, raw_key: str) -> str | None:
    db = Database(f"sqlite+aiosqlite:///{data_dir / 'infermesh.db'}")
    try:
        principal = await AccountService(db).authenticate(raw_key)
    finally:
        await db.dispose()
    return principal.account_name if principal else None


def test_create_json_prints_only_the_key(tmp_path: Path, clean_env: dict[str, str]) -> None:
    code, out, err = invoke(
        keys_app, "create", "--account", "alice", "--json", "--data-dir", str(tmp_path)
    )
    assert code == 0, err
    created = json.loads(out)
    assert set(created) == {"key", "account", "id"}
    assert created["key"].startswith("sk-im-") and created["account"] == "alice"
    assert asyncio.run(_authenticate(tmp_path, created["key"])) == "alice"


def test_create_shows_the_key_once_in_a_panel(tmp_path: Path, clean_env: dict[str, str]) -> None:
    code, out, _ = invoke(
        keys_app, "create", "--account", "bob", "--name", "ci", "--data-dir", str(tmp_path)
    )
    assert code == 0
    assert "sk-im-" in out and "will not be shown again" in out
    code, out, _ = invoke(keys_app, "list", "--data-dir", str(tmp_path))
    assert code == 0 and "bob" in out and "ci" in out and "active" in out


def test_list_revoke_rotate(tmp_path: Path, clean_env: dict[str, str]) -> None:
    data = ["--data-dir", str(tmp_path)]
    created = json.loads(invoke(keys_app, "create", "--account", "carol", "--json", *data)[1])
    code, out, _ = invoke(keys_app, "rotate", created["id"], "--json", *data)
    assert code == 0
    rotated = json.loads(out)
    assert rotated["replaces"] == created["id"] and rotated["key"] != created["key"]
    listed = json.loads(invoke(keys_app, "list", "--account", "carol", "--json", *data)[1])
    status = {row["id"]: row["revoked_at"] is not None for row in listed}
    assert status == {created["id"]: True, rotated["id"]: False}
    assert all(created["key"] not in json.dumps(row) for row in listed)
    code, out, _ = invoke(keys_app, "revoke", rotated["id"], *data)
    assert code == 0 and rotated["id"] in out
    assert asyncio.run(_authenticate(tmp_path, rotated["key"])) is None


def test_unknown_or_revoked_ids_exit_1(tmp_path: Path, clean_env: dict[str, str]) -> None:
    data = ["--data-dir", str(tmp_path)]
    for command in ("revoke", "rotate"):
        code, out, err = invoke(keys_app, command, "key_0123456789abcdef", *data)
        assert code == 1 and out == ""
        assert "No API key" in err and "Traceback" not in err
    created = json.loads(invoke(keys_app, "create", "--account", "d", "--json", *data)[1])
    invoke(keys_app, "revoke", created["id"], *data)
    code, _, err = invoke(keys_app, "rotate", created["id"], *data)
    assert code == 1 and "revoked" in err


def test_db_upgrade_and_current(tmp_path: Path, clean_env: dict[str, str]) -> None:
    data = ["--data-dir", str(tmp_path / "fresh")]
    code, out, _ = invoke(db_app, "current", *data)
    assert code == 0 and "Not initialised" in out
    for _ in range(2):
        code, out, _ = invoke(db_app, "upgrade", *data)
        assert code == 0 and head_revision() in out
    code, out, _ = invoke(db_app, "current", *data)
    assert code == 0 and f"{head_revision()} (head)" in out


def test_unreachable_database_exits_1(clean_env: dict[str, str]) -> None:
    code, _, err = invoke(keys_app, "list", "--database-url", "postgresql://nobody@127.0.0.1:1/x")
    assert code == 1 and "Error" in err and "Traceback" not in err


def test_the_real_command_line(tmp_path: Path, clean_env: dict[str, str]) -> None:
    data = ["--data-dir", str(tmp_path)]
    run = infermesh("keys", "create", "--account", "erin", "--json", *data, env=clean_env)
    assert run.returncode == 0, run.stderr
    created = json.loads(run.stdout)
    assert created["key"].startswith("sk-im-") and created["account"] == "erin"

    listing = infermesh("keys", "list", *data, env=clean_env)
    assert listing.returncode == 0 and created["id"] in listing.stdout
    assert created["key"] not in listing.stdout

    assert infermesh("keys", "revoke", created["id"], *data, env=clean_env).returncode == 0
    listing = infermesh("keys", "list", *data, env=clean_env)
    assert "revoked" in listing.stdout

    other = json.loads(
        infermesh("keys", "create", "--account", "erin", "--json", *data, env=clean_env).stdout
    )
    rotated = infermesh("keys", "rotate", other["id"], *data, env=clean_env)
    assert rotated.returncode == 0 and "sk-im-" in rotated.stdout
    assert other["key"] not in rotated.stdout

    unknown = infermesh("keys", "revoke", "key_ffffffffffffffff", *data, env=clean_env)
    assert unknown.returncode == 1
    assert "No API key" in unknown.stderr and "Traceback" not in unknown.stderr


@pytest.mark.postgres
async def test_the_real_command_line_on_postgres(clean_env: dict[str, str]) -> None:
    require_postgres()
    async with temporary_postgres_database() as url:
        plain_url = url.replace("postgresql+asyncpg://", "postgresql://")
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "infermesh",
            "keys",
            "create",
            "--account",
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
            principal = await AccountService(db).authenticate(created["key"])
        finally:
            await db.dispose()
        assert principal is not None and principal.account_name == "pg"
