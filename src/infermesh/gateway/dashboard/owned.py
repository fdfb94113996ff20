"""Records a page finds among the viewer's own only: another account's is answered as
one that does not exist (404), so that a page never tells whether an id is taken."""

from __future__ import annotations

from infermesh.accounts.records import KeyRecord
from infermesh.errors import NotFound
from infermesh.gateway.state import Services


async def account_key(
    services: Services, account_id: int, key_id: str, *, missing: str
) -> KeyRecord:
    """The key ``key_id`` if it is the account ``account_id``'s; :class:`NotFound` with
    the message ``missing`` otherwise."""
    try:
        key = await services.accounts.get_key(key_id)
    except NotFound:
        key = None
    if key is None or key.account_id != account_id:
        raise NotFound(missing, param="key_id")
    return key
