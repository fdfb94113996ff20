"""``POST /v1/credits/topup`` and ``GET /v1/credits/deposits``: USDC top-ups by
transaction hash (an API key is needed; payments must be configured)."""

from __future__ import annotations

from fastapi import APIRouter

from infermesh.errors import ServiceUnavailable
from infermesh.gateway.deps import PrincipalDep, ServicesDep
from infermesh.gateway.state import Services
from infermesh.payments.deposits import DepositService
from infermesh.payments.records import DepositRecord
from infermesh.payments.views import deposit_list
from infermesh.protocol.payments import DepositList, TopupRequest

router = APIRouter()


@router.post("/v1/credits/topup")
async def topup(body: TopupRequest, principal: PrincipalDep, services: ServicesDep) -> DepositList:
    """Claim a USDC transfer to the treasury, sent from the caller's wallet, by its
    transaction hash; it is credited once it has enough confirmations."""
    deposits = _deposits(services)
    records = await deposits.claim(principal.account_id, body.tx_hash)
    return _list(services, deposits, records)


@router.get("/v1/credits/deposits")
async def list_deposits(principal: PrincipalDep, services: ServicesDep) -> DepositList:
    """The caller's deposits, newest transaction first."""
    deposits = _deposits(services)
    return _list(services, deposits, await deposits.list(principal.account_id))


def _deposits(services: Services) -> DepositService:
    if services.deposits is None:
        raise ServiceUnavailable(
            "USDC top-ups are not enabled on this gateway: its operator must set "
            "INFERMESH_PAYMENTS_RPC_URL, INFERMESH_PAYMENTS_USDC_ADDRESS and "
            "INFERMESH_PAYMENTS_TREASURY.",
            code="payments_disabled",
        )
    return services.deposits


def _list(
    services: Services, deposits: DepositService, records: list[DepositRecord]
) -> DepositList:
    return deposit_list(
        records,
        required_confirmations=deposits.options.confirmations,
        unit=services.billing.unit,
    )
