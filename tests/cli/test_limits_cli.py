"""``infermesh limits show`` and ``infermesh limits set``, run as the real command line.

They cover the tier table (built-in defaults and INFERMESH_TIER_LIMITS), setting a
tier's, an account's and a key's limits (numbers, "unlimited", "default" to inherit
again) with the source of each limit in force, the note on a key limit above its
account's, the refusals (bad values, unknown subjects, no or two subjects), the same on
PostgreSQL, and a running gateway refusing a request because of a limit the command set.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.fakes.engine import ScriptedEngine, run_engine
from tests.gateway.conftest import engine_specs
from tests.support.gateway import create_key, start_gateway
from tests.support.postgres import require_postgres, temporary_postgres_database
from tests.support.processes import infermesh

FREE_DEFAULTS = {
    "requests_per_minute": 20,
    "tokens_per_minute": 40_000,
    "tokens_per_day": 100_000,
    "concurrent_requests": 2,
}
WHOLE_NUMBER_RULE = 'must be a whole number from 1 to 1000000000000 or "unlimited"'


class Cli:
    """The ``infermesh`` command on one database (a data dir or a URL)."""

    def __init__(self, env: dict[str, str], *database: str) -> None:
        self.env = env
        self.database = list(database)

    def run(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return infermesh(*args, *self.database, env={**self.env, **(env or {})})

    def text(self, *args: str, env: dict[str, str] | None = None) -> str:
        result = self.run(*args, env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def json(self, *args: str, env: dict[str, str] | None = None) -> Any:
        return json.loads(self.text(*args, "--json", env=env))

    def refused(self, *args: str, message: str) -> None:
        """Run a command that must fail with exit 1 and a one-line ``message`` on stderr."""
        result = self.run(*args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert result.stdout == "", args
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert result.stderr.count("\n") == 1, result.stderr

    def refuse_all(self, cases: list[tuple[list[str], str]]) -> None:
        """:meth:`refused` for each (args, message), two processes at a time."""
        with ThreadPoolExecutor(max_workers=2) as pool:
            runs = [pool.submit(self.refused, *args, message=message) for args, message in cases]
            for run in runs:
                run.result()

    def new_key(self, account: str) -> str:
        """A new key of ``account`` (created in the free tier if new); its id."""
        key_id: str = self.json("keys", "create", "--account", account)["id"]
        return key_id


@pytest.fixture
def cli(tmp_path: Path, clean_env: dict[str, str]) -> Cli:
    return Cli(clean_env, "--data-dir", str(tmp_path))


def values(limits: dict[str, Any]) -> dict[str, int | None]:
    """The limit values of a JSON ``limits`` object (None: unlimited)."""
    return {name: entry.get("limit") for name, entry in limits.items()}


def sources(limits: dict[str, Any]) -> dict[str, str]:
    return {name: entry["source"] for name, entry in limits.items()}


def table_rows(text: str) -> dict[str, list[str]]:
    """The rows of a printed table, by their first cell."""
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():
        cells = line.split()
        if len(cells) > 1:
            rows.setdefault(cells[0], cells[1:])
    return rows


def test_show_lists_every_tier_with_the_defaults(cli: Cli) -> None:
    text = cli.text("limits", "show")
    rows = table_rows(text)
    assert rows["free"] == ["20", "40,000", "100,000", "2"]
    assert rows["standard"] == ["60", "200,000", "5,000,000", "8"]
    assert rows["pro"] == ["600", "2,000,000", "unlimited", "32"]
    assert "Account and key settings override these" in text

    shown = cli.json("limits", "show")
    assert [view["subject"] for view in shown] == ["free", "standard", "pro"]
    free = shown[0]
    assert (free["object"], free["scope"], free["tier"], free["set"]) == (
        "limit_settings",
        "tier",
        "free",
        {},
    )
    assert values(free["limits"]) == FREE_DEFAULTS
    assert set(sources(free["limits"]).values()) == {"tier"}
    assert free["limits"]["tokens_per_day"]["window_seconds"] == 86400
    assert "window_seconds" not in free["limits"]["concurrent_requests"]
    assert values(shown[2]["limits"])["tokens_per_day"] is None


def test_the_environment_changes_the_tiers(cli: Cli) -> None:
    configured = {
        "free": {"requests_per_minute": 3, "tokens_per_day": "unlimited"},
        "gold": {"tokens_per_day": 7},
    }
    env = {"INFERMESH_TIER_LIMITS": json.dumps(configured)}
    rows = table_rows(cli.text("limits", "show", env=env))
    assert rows["free"] == ["3", "40,000", "unlimited", "2"]
    assert rows["standard"] == ["60", "200,000", "5,000,000", "8"]
    assert rows["gold"] == ["unlimited", "unlimited", "7", "unlimited"]

    gold = cli.json("limits", "show", "--tier", "gold", env=env)
    assert values(gold["limits"]) == {
        "requests_per_minute": None,
        "tokens_per_minute": None,
        "tokens_per_day": 7,
        "concurrent_requests": None,
    }
    assert gold["set"] == {}

    broken = cli.run("limits", "show", env={"INFERMESH_TIER_LIMITS": '{"free": {"rpm": 3}}'})
    assert broken.returncode == 1 and "Traceback" not in broken.stderr
    assert "INFERMESH_TIER_LIMITS: tier 'free': unknown limit 'rpm'" in broken.stderr


def test_a_tier_setting_applies_to_its_accounts_until_cleared(cli: Cli) -> None:
    cli.new_key("bob")
    text = cli.text("limits", "set", "--tier", "free", "--rpm", "5", "--tpd", "unlimited")
    assert table_rows(text)["requests_per_minute"] == ["5", "5", "tier"]
    assert table_rows(text)["tokens_per_day"] == ["unlimited", "unlimited", "tier"]
    assert "Running gateways apply it within 5 s (INFERMESH_LIMITS_CACHE_TTL)." in text

    bob = cli.json("limits", "show", "--account", "bob")
    assert (bob["scope"], bob["subject"], bob["tier"], bob["set"]) == ("account", "bob", "free", {})
    assert values(bob["limits"]) == {
        **FREE_DEFAULTS,
        "requests_per_minute": 5,
        "tokens_per_day": None,
    }
    assert set(sources(bob["limits"]).values()) == {"tier"}

    cleared = cli.json("limits", "set", "--tier", "free", "--rpm", "default", "--tpd", "default")
    assert cleared["set"] == {} and values(cleared["limits"]) == FREE_DEFAULTS


def test_an_account_setting_replaces_its_tier_s(cli: Cli) -> None:
    cli.new_key("bob")
    changed = cli.json(
        "limits", "set", "--account", "bob", "--requests-per-minute", "7", "--tpd", "unlimited"
    )
    assert (changed["scope"], changed["subject"], changed["account"]) == ("account", "bob", "bob")
    assert changed["set"] == {"requests_per_minute": 7, "tokens_per_day": "unlimited"}
    assert values(changed["limits"]) == {
        **FREE_DEFAULTS,
        "requests_per_minute": 7,
        "tokens_per_day": None,
    }
    assert sources(changed["limits"]) == {
        "requests_per_minute": "account",
        "tokens_per_minute": "tier",
        "tokens_per_day": "account",
        "concurrent_requests": "tier",
    }

    text = cli.text("limits", "show", "--account", "bob")
    assert "account bob · tier free" in text
    rows = table_rows(text)
    assert rows["requests_per_minute"] == ["7", "7", "account"]
    assert rows["tokens_per_minute"] == ["-", "40,000", "tier"]
    assert rows["tokens_per_day"] == ["unlimited", "unlimited", "account"]

    cleared = cli.json("limits", "set", "--account", "bob", "--tokens-per-day", "default")
    assert cleared["set"] == {"requests_per_minute": 7}
    assert cleared["limits"]["tokens_per_day"] == {
        "limit": 100_000,
        "source": "tier",
        "window_seconds": 86400,
    }


def test_a_key_setting_narrows_its_account_s(cli: Cli) -> None:
    key_id = cli.new_key("bob")
    changed = cli.json(
        "limits",
        "set",
        "--key",
        key_id,
        "--tokens-per-minute",
        "1000",
        "--concurrent-requests",
        "1",
    )
    assert (changed["scope"], changed["subject"]) == ("key", key_id)
    assert (changed["account"], changed["tier"]) == ("bob", "free")
    assert changed["set"] == {"tokens_per_minute": 1000, "concurrent_requests": 1}
    assert values(changed["limits"]) == {"tokens_per_minute": 1000, "concurrent_requests": 1}
    assert set(sources(changed["limits"]).values()) == {"key"}
    assert values(changed["account_limits"]) == FREE_DEFAULTS
    assert set(sources(changed["account_limits"]).values()) == {"tier"}

    text = cli.text("limits", "show", "--key", key_id)
    assert f"key {key_id} · account bob · tier free" in text
    rows = table_rows(text)
    assert rows["tokens_per_minute"] == ["1,000", "40,000", "tier"]
    assert rows["requests_per_minute"] == ["-", "20", "tier"]
    assert "Note:" not in text


def test_a_key_limit_above_its_account_s_gets_a_note(cli: Cli) -> None:
    key_id = cli.new_key("bob")
    text = cli.text(
        "limits",
        "set",
        "--key",
        key_id,
        "--rpm",
        "100",
        "--tpm",
        "10",
        "--concurrency",
        "unlimited",
    )
    notes = [line for line in text.splitlines() if line.startswith("Note:")]
    assert notes == [
        "Note: this key's requests_per_minute (100) is above its account's (20); the account's "
        "limit still applies.",
        "Note: this key's concurrent_requests (unlimited) is above its account's (2); the "
        "account's limit still applies.",
    ]
    shown = cli.json("limits", "show", "--key", key_id)
    assert shown["set"] == {
        "requests_per_minute": 100,
        "tokens_per_minute": 10,
        "concurrent_requests": "unlimited",
    }
    assert shown["limits"]["concurrent_requests"] == {"limit": None, "source": "key"}


def test_bad_values_are_refused_and_set_nothing(cli: Cli) -> None:
    set_rpm = ["limits", "set", "--tier", "free", "--rpm"]
    cli.refuse_all(
        [
            ([*set_rpm, "0"], f"'requests_per_minute' {WHOLE_NUMBER_RULE} (got 0)"),
            ([*set_rpm, "-3"], f"'requests_per_minute' {WHOLE_NUMBER_RULE} (got -3)"),
            ([*set_rpm, "1.5"], f"'requests_per_minute' {WHOLE_NUMBER_RULE} (got '1.5')"),
            (
                ["limits", "set", "--tier", "free", "--tpd", "lots"],
                f"'tokens_per_day' {WHOLE_NUMBER_RULE} (got 'lots')",
            ),
            ([*set_rpm, "1000000000001"], "(got 1000000000001)"),
            (["limits", "set", "--tier", "free"], "Name at least one limit to set"),
        ]
    )
    assert cli.json("limits", "show", "--tier", "free")["set"] == {}


def test_unknown_subjects_and_not_one_subject_are_refused(cli: Cli) -> None:
    one_subject = "Name exactly one of --tier, --account or --key."
    cli.refuse_all(
        [
            (["limits", "set", "--account", "ghost", "--rpm", "1"], "No account named 'ghost'"),
            (["limits", "set", "--key", "key_nope", "--rpm", "1"], "key_nope"),
            (["limits", "set", "--tier", "gold", "--rpm", "1"], "Unknown tier 'gold'"),
            (["limits", "set", "--rpm", "1"], one_subject),
            (["limits", "set", "--tier", "free", "--account", "bob", "--rpm", "1"], one_subject),
            (["limits", "show", "--tier", "free", "--key", "key_x"], one_subject),
        ]
    )
    shown = cli.json("limits", "show")
    assert [(view["subject"], view["set"]) for view in shown] == [
        ("free", {}),
        ("standard", {}),
        ("pro", {}),
    ]


@pytest.mark.postgres
async def test_limits_on_postgres(clean_env: dict[str, str]) -> None:
    require_postgres()
    async with temporary_postgres_database() as url:
        cli = Cli(clean_env, "--database-url", url)
        key_id = await asyncio.to_thread(cli.new_key, "pg")
        await asyncio.to_thread(cli.json, "limits", "set", "--account", "pg", "--tpm", "500")
        shown = await asyncio.to_thread(
            cli.json, "limits", "set", "--key", key_id, "--tpm", "unlimited"
        )
        assert shown["set"] == {"tokens_per_minute": "unlimited"}
        assert shown["account_limits"]["tokens_per_minute"] == {
            "limit": 500,
            "source": "account",
            "window_seconds": 60,
        }
        await asyncio.to_thread(
            cli.refused, "limits", "show", "--account", "nobody", message="No account named"
        )


@pytest.fixture(scope="module")
def engine() -> Iterator[ScriptedEngine]:
    with run_engine(models=["scripted-1"], api_key="upstream-secret") as running:
        yield running


def test_a_running_gateway_applies_a_limit_the_command_set(
    cli: Cli, tmp_path: Path, engine: ScriptedEngine
) -> None:
    with start_gateway(
        tmp_path,
        specs=engine_specs(engine.base_url),
        secrets={"SCRIPTED_ENGINE_KEY": "upstream-secret"},
        wait_for=["scripted"],
        limits_cache_ttl=0,
    ) as gateway:
        key = asyncio.run(create_key(gateway.settings, account="metered", tier="pro"))
        client = gateway.client(api_key=key)
        with gateway.http() as http:
            before = http.get("/v1/limits", headers={"Authorization": f"Bearer {key}"}).json()
        assert before["account_limits"]["requests_per_minute"]["limit"] == 600

        cli.json("limits", "set", "--account", "metered", "--rpm", "1")

        messages: list[Any] = [{"role": "user", "content": "hello"}]
        served = len(engine.requests)
        first = client.chat.completions.with_raw_response.create(
            model="scripted", messages=messages
        )
        assert first.headers["x-ratelimit-limit-requests"] == "1"
        assert first.headers["x-ratelimit-remaining-requests"] == "0"
        assert first.parse().choices[0].message.content == "echo: hello"

        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model="scripted", messages=messages)
        assert (refused.value.code, refused.value.param) == (
            "rate_limit_exceeded",
            "requests_per_minute",
        )
        body = refused.value.body
        assert isinstance(body, dict) and "account 'metered'" in body["message"]
        assert int(refused.value.response.headers["retry-after"]) >= 1
        assert len(engine.requests) == served + 1
        # Another account (the gateway's own key, tier pro) is not held to it.
        other = gateway.client().chat.completions.create(model="scripted", messages=messages)
        assert other.choices[0].message.content == "echo: hello"
