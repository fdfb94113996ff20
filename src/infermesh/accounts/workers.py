"""The worker token service: GPU operators' workers, their tokens, and their state.

An operator creates a worker token (``infermesh workers token create``) and gives it to
an ``infermesh worker`` process, which presents it when it dials the gateway. The
gateway authenticates it here, records when the worker connects, is seen and leaves,
counts the jobs it served, and checks now and then whether its token was revoked. A
token carries a :class:`WorkerScope`: how many connections it may hold at once, how
many job slots one connection may announce, and which catalog models it may serve.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from infermesh.accounts.keys import display_prefix, hash_key
from infermesh.accounts.service import add_account, check_room, find_account
from infermesh.accounts.worker_records import (
    CreatedWorkerToken,
    WorkerIdentity,
    WorkerRecord,
    WorkerScope,
    WorkerStatus,
)
from infermesh.accounts.worker_tokens import (
    generate_worker_id,
    generate_worker_token,
    is_worker_token,
)
from infermesh.errors import InvalidRequest, NotFound
from infermesh.store import Account, Database, utcnow
from infermesh.store.tables import RegisteredWorker

__all__ = [
    "CreatedWorkerToken",
    "WorkerIdentity",
    "WorkerRecord",
    "WorkerScope",
    "WorkerStatus",
    "WorkerTokenService",
]

DEFAULT_OPERATOR = "default"
_MAX_NAME_LENGTH = 200
MAX_CONNECTIONS_LIMIT = 10_000
MAX_SLOTS_LIMIT = 1_000_000
MAX_ALLOWED_MODELS = 256


class WorkerTokenService:
    """Creates, lists and revokes worker tokens; authenticates them; tracks each worker.

    Raw tokens are returned once by :meth:`create` and never stored. ``clock`` gives
    the current UTC time (tests pass their own).
    """

    def __init__(self, db: Database, *, clock: Callable[[], datetime] = utcnow) -> None:
        self._db = db
        self._clock = clock

    async def create(
        self, name: str, *, operator: str = DEFAULT_OPERATOR, scope: WorkerScope | None = None
    ) -> CreatedWorkerToken:
        """A new worker of the account ``operator`` (created, tier "free", if missing),
        whose token allows ``scope`` (the defaults if None).

        The raw token is in the result only.
        """
        _check_name(name, what="A worker name", param="name")
        _check_name(operator, what="An operator account name", param="operator")
        checked = _checked_scope(scope or WorkerScope())
        async with self._db.session() as session, session.begin():
            owner = await self._operator(session, operator)
            owned = RegisteredWorker.operator_account_id == owner.id
            await check_room(session, RegisteredWorker, owned, "worker tokens")
            return await self._add_worker(session, owner, name, checked)

    async def list(self) -> list[WorkerRecord]:
        """Every worker (revoked ones too), oldest first."""
        query = _workers_query().order_by(RegisteredWorker.created_at, RegisteredWorker.id)
        async with self._db.session(read_only=True) as session:
            rows = (await session.execute(query)).all()
        return [_record(worker, owner) for worker, owner in rows]

    async def get(self, worker_id: str) -> WorkerRecord:
        """The worker ``worker_id``; :class:`NotFound` if there is none."""
        async with self._db.session(read_only=True) as session:
            worker, owner = await _worker_or_not_found(session, worker_id, lock=False)
        return _record(worker, owner)

    async def list_for_operator(self, operator_account_id: int) -> builtins.list[WorkerRecord]:
        """The workers of the operator account ``operator_account_id`` (revoked ones
        too), oldest first."""
        query = (
            _workers_query()
            .where(RegisteredWorker.operator_account_id == operator_account_id)
            .order_by(RegisteredWorker.created_at, RegisteredWorker.id)
        )
        async with self._db.session(read_only=True) as session:
            rows = (await session.execute(query)).all()
        return [_record(worker, owner) for worker, owner in rows]

    async def get_for_operator(self, operator_account_id: int, worker_id: str) -> WorkerRecord:
        """The worker ``worker_id`` of the operator ``operator_account_id``; :class:`NotFound`
        if there is none (another operator's worker is answered as one that does not exist)."""
        query = _workers_query().where(
            RegisteredWorker.id == worker_id,
            RegisteredWorker.operator_account_id == operator_account_id,
        )
        async with self._db.session(read_only=True) as session:
            row = (await session.execute(query)).one_or_none()
        if row is None:
            raise NotFound(f"You have no worker with id '{worker_id[:100]}'.", param="worker_id")
        worker, owner = row
        return _record(worker, owner)

    async def revoke(self, worker_id: str) -> WorkerRecord:
        """Revoke the token of ``worker_id`` and mark it offline (again: no change).

        A connected worker is disconnected by the gateway, which polls :meth:`is_revoked`.
        """
        async with self._db.session() as session, session.begin():
            worker, owner = await _worker_or_not_found(session, worker_id, lock=True)
            if worker.revoked_at is None:
                worker.revoked_at = self._clock()
            worker.online = False
        return _record(worker, owner)

    async def authenticate(self, raw_token: str) -> WorkerIdentity | None:
        """Which worker holds ``raw_token``; None if it is malformed, unknown or revoked.

        A user API key (``sk-im-…``) is malformed here. One indexed lookup by hash.
        """
        if not is_worker_token(raw_token):
            return None
        query = (
            select(RegisteredWorker, Account.id, Account.name)
            .join(Account, RegisteredWorker.operator_account_id == Account.id)
            .where(
                RegisteredWorker.token_hash == hash_key(raw_token),
                RegisteredWorker.revoked_at.is_(None),
            )
        )
        async with self._db.session(read_only=True) as session:
            row = (await session.execute(query)).one_or_none()
        if row is None:
            return None
        worker, account_id, account_name = row
        return WorkerIdentity(
            worker_id=worker.id,
            name=worker.name,
            operator_account_id=account_id,
            operator_name=account_name,
            scope=_scope(worker),
        )

    async def is_revoked(self, worker_id: str) -> bool:
        """Whether ``worker_id``'s token is revoked (or the worker no longer exists)."""
        query = select(RegisteredWorker.revoked_at).where(RegisteredWorker.id == worker_id)
        async with self._db.session(read_only=True) as session:
            row = (await session.execute(query)).one_or_none()
        return row is None or row.revoked_at is not None

    async def mark_connected(self, worker_id: str, *, node_id: str, models: Sequence[str]) -> None:
        """Record that ``worker_id`` connected as ``node_id`` serving ``models``.

        A revoked (or unknown) worker is left as it is: it never shows as online.
        """
        now = self._clock()
        await self._update(
            worker_id,
            RegisteredWorker.revoked_at.is_(None),
            online=True,
            last_connected_at=now,
            last_seen_at=now,
            node_id=node_id,
            models=list(models),
        )

    async def mark_seen(self, worker_id: str) -> None:
        """Record that ``worker_id`` was heard from just now."""
        await self._update(worker_id, last_seen_at=self._clock())

    async def mark_disconnected(self, worker_id: str) -> None:
        """Record that ``worker_id`` is no longer connected."""
        await self._update(worker_id, online=False)

    async def add_served(self, worker_id: str, *, served: int = 0, failed: int = 0) -> None:
        """Add to the jobs ``worker_id`` served and failed, atomically in the database."""
        if served < 0 or failed < 0:
            raise ValueError("job counts can only grow")
        if served == 0 and failed == 0:
            return
        await self._update(
            worker_id,
            jobs_served=RegisteredWorker.jobs_served + served,
            jobs_failed=RegisteredWorker.jobs_failed + failed,
        )

    async def mark_stale_offline(self, *, silent_for: timedelta) -> None:
        """Mark offline the workers not heard from for ``silent_for``: their gateway
        stopped without saying so. A worker connected to another gateway of the
        network is heard from more often than that, and stays online."""
        cutoff = self._clock() - silent_for
        statement = (
            update(RegisteredWorker)
            .where(
                RegisteredWorker.online.is_(True),
                or_(
                    RegisteredWorker.last_seen_at.is_(None),
                    RegisteredWorker.last_seen_at < cutoff,
                ),
            )
            .values(online=False)
        )
        async with self._db.session() as session, session.begin():
            await session.execute(statement)

    async def _update(self, worker_id: str, *conditions: Any, **values: Any) -> None:
        statement = (
            update(RegisteredWorker)
            .where(RegisteredWorker.id == worker_id, *conditions)
            .values(**values)
        )
        async with self._db.session() as session, session.begin():
            await session.execute(statement)

    async def _operator(self, session: AsyncSession, name: str) -> Account:
        """The account ``name``, inserted (tier "free") unless it, or a concurrent one, exists."""
        found = await find_account(session, name)
        if found is not None:
            return found
        return await add_account(session, name, tier="free", created_at=self._clock())

    async def _add_worker(
        self, session: AsyncSession, owner: Account, name: str, scope: WorkerScope
    ) -> CreatedWorkerToken:
        raw_token = generate_worker_token()
        worker = RegisteredWorker(
            id=generate_worker_id(),
            name=name,
            operator_account_id=owner.id,
            token_hash=hash_key(raw_token),
            prefix=display_prefix(raw_token),
            created_at=self._clock(),
            online=False,
            models=[],
            jobs_served=0,
            jobs_failed=0,
            max_connections=scope.max_connections,
            max_slots=scope.max_slots,
            allowed_models=None if scope.allowed_models is None else list(scope.allowed_models),
        )
        session.add(worker)
        await session.flush()
        return CreatedWorkerToken(token=raw_token, record=_record(worker, owner))


def _workers_query() -> Select[RegisteredWorker, Account]:
    return select(RegisteredWorker, Account).join(
        Account, RegisteredWorker.operator_account_id == Account.id
    )


async def _worker_or_not_found(
    session: AsyncSession, worker_id: str, *, lock: bool
) -> tuple[RegisteredWorker, Account]:
    query = _workers_query().where(RegisteredWorker.id == worker_id)
    if lock:
        query = query.with_for_update(of=RegisteredWorker)
    row = (await session.execute(query)).one_or_none()
    if row is None:
        raise NotFound(f"No worker with id '{worker_id}'.", param="worker_id")
    return row


def _check_name(name: str, *, what: str, param: str) -> None:
    if not name.strip() or len(name) > _MAX_NAME_LENGTH:
        raise InvalidRequest(f"{what} must have 1 to {_MAX_NAME_LENGTH} characters.", param=param)


def _check_limit(value: int, *, limit: int, param: str) -> None:
    if not 1 <= value <= limit:
        raise InvalidRequest(f"{param} must be from 1 to {limit:,}.", param=param)


def _checked_scope(scope: WorkerScope) -> WorkerScope:
    """``scope`` with its model list stripped and deduplicated; InvalidRequest if it is
    out of bounds (an empty model list too: None, not nothing, means any model)."""
    _check_limit(scope.max_connections, limit=MAX_CONNECTIONS_LIMIT, param="max_connections")
    _check_limit(scope.max_slots, limit=MAX_SLOTS_LIMIT, param="max_slots")
    if scope.allowed_models is None:
        return scope
    models = tuple(dict.fromkeys(model.strip() for model in scope.allowed_models))
    if not models or len(models) > MAX_ALLOWED_MODELS:
        raise InvalidRequest(
            f"allowed_models must list 1 to {MAX_ALLOWED_MODELS} models (or be omitted: any).",
            param="allowed_models",
        )
    for model in models:
        _check_name(model, what="A model id", param="allowed_models")
    return replace(scope, allowed_models=models)


def _scope(worker: RegisteredWorker) -> WorkerScope:
    allowed = worker.allowed_models
    return WorkerScope(
        max_connections=worker.max_connections,
        max_slots=worker.max_slots,
        allowed_models=None if allowed is None else tuple(allowed),
    )


def _record(worker: RegisteredWorker, owner: Account) -> WorkerRecord:
    return WorkerRecord(
        id=worker.id,
        name=worker.name,
        operator=owner.name,
        prefix=worker.prefix,
        created_at=worker.created_at,
        revoked_at=worker.revoked_at,
        online=worker.online,
        last_seen_at=worker.last_seen_at,
        node_id=worker.node_id,
        models=tuple(worker.models),
        jobs_served=worker.jobs_served,
        jobs_failed=worker.jobs_failed,
        scope=_scope(worker),
        last_connected_at=worker.last_connected_at,
    )
