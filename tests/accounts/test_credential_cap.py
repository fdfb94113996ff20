"""An account holds at most MAX_LIVE_PER_ACCOUNT unrevoked API keys and worker tokens:
a signed-in browser cannot make the database store without bound; revoking frees room."""

from __future__ import annotations

import pytest

from infermesh.accounts import service as accounts
from infermesh.accounts.service import AccountService
from infermesh.accounts.workers import WorkerTokenService
from infermesh.errors import InvalidRequest
from infermesh.store import Database


@pytest.fixture
def small_cap(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(accounts, "MAX_LIVE_PER_ACCOUNT", 3)
    return 3


async def test_keys_and_worker_tokens_are_capped_per_account(
    database: Database, small_cap: int
) -> None:
    keys, workers = AccountService(database), WorkerTokenService(database)
    made = [await keys.create_key("capped") for _ in range(small_cap)]
    with pytest.raises(InvalidRequest) as refused:
        await keys.create_key("capped")
    assert refused.value.code == "too_many_live_credentials"
    await keys.create_key("someone-else")  # the cap is per account
    await keys.revoke_key(made[0].record.id)
    await keys.create_key("capped")  # a revoked key frees its room

    tokens = [await workers.create(f"rig-{i}", operator="op") for i in range(small_cap)]
    with pytest.raises(InvalidRequest):
        await workers.create("one-too-many", operator="op")
    await workers.revoke(tokens[0].record.id)
    await workers.create("in-its-place", operator="op")
