"""``infermesh payments``: the configured USDC network, the node as it answers now (with
the treasury's USDC and the relayer's gas money), and the newest deposits of all accounts."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import SecretStr
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from infermesh.cli.credits import usd_text
from infermesh.cli.db import run_with_database
from infermesh.cli.options import DatabaseUrl, DataDir, JsonOutput, make_settings
from infermesh.config import Settings
from infermesh.payments.history import recent_deposits
from infermesh.payments.networks import resolve_network
from infermesh.payments.records import DepositRecord

if TYPE_CHECKING:
    from infermesh.payments.chain import Web3Chain

# The chain's modules (web3, eth-account) are imported where they are used: they take a
# second to import, which every other command would pay for.

UNREACHABLE = "unreachable"
Limit = Annotated[int, typer.Option("--limit", min=1, max=500, help="How many deposits.")]


def _configured(settings: Settings) -> dict[str, object]:
    network = resolve_network(settings)
    return {
        "enabled": settings.payments_enabled,
        "network": network.name,
        "chain_id": network.chain_id,
        "usdc_address": network.usdc_address,
        "usdc_name": network.usdc_name,
        "usdc_version": network.usdc_version,
        "treasury": settings.payments_treasury,
        "confirmations": settings.payments_confirmations,
        "min_deposit": settings.payments_min_deposit,
        "relayer": _address_of(settings.payments_relayer_key),
        "payout_minimum": settings.payments_payout_minimum,
        "payouts_enabled": settings.payments_treasury_key is not None,
    }


def _address_of(key: SecretStr | None) -> str | None:
    """The address of a configured key (never the key); "invalid" if it is not one."""
    if key is None:
        return None
    from infermesh.payments.outbox import Signer

    try:
        address: str = Signer(key.get_secret_value().strip()).address
        return address
    except Exception:  # eth-account's errors for a malformed key vary
        return "invalid key"


async def _read_node(settings: Settings) -> dict[str, object]:
    from infermesh.payments.chain import ChainUnavailable, Web3Chain
    from infermesh.payments.token_domain import TokenDomain, domain_mismatch

    network = resolve_network(settings)
    assert settings.payments_rpc_url is not None and network.usdc_address is not None
    chain = Web3Chain(settings.payments_rpc_url, timeout=5.0)
    try:
        node_chain_id = await chain.chain_id()
        head = await chain.block_number()
        domain = TokenDomain(
            network.usdc_name, network.usdc_version, network.chain_id, network.usdc_address
        )
        matches = await domain_mismatch(chain, domain) is None
        treasury_usdc = await _usdc_of(chain, network.usdc_address, settings.payments_treasury)
        relayer = _address_of(settings.payments_relayer_key)
        relayer_wei = await chain.balance(relayer) if relayer and relayer[:2] == "0x" else None
    except ChainUnavailable:
        return {
            "head_block": UNREACHABLE,
            "node_chain_id": UNREACHABLE,
            "domain_matches": None,
            "treasury_usdc_micro": UNREACHABLE,
            "relayer_eth_wei": UNREACHABLE,
        }
    finally:
        await chain.close()
    return {
        "head_block": head,
        "node_chain_id": node_chain_id,
        "domain_matches": matches,
        "treasury_usdc_micro": treasury_usdc,
        "relayer_eth_wei": relayer_wei,
    }


async def _usdc_of(chain: Web3Chain, usdc: str, holder: str | None) -> int | None:
    """The USDC ``holder`` has (None when the token cannot say, e.g. a wrong address)."""
    from infermesh.payments.chain import ChainUnavailable
    from infermesh.payments.usdc import read_uint

    if holder is None:
        return None
    try:
        return await read_uint(chain, usdc, "balanceOf(address)", holder)
    except ChainUnavailable:
        return None


def _live(settings: Settings) -> dict[str, object]:
    """What the node says now; "unreachable" fields when it does not answer."""
    if not settings.payments_enabled:
        return {
            "head_block": None,
            "node_chain_id": None,
            "domain_matches": None,
            "treasury_usdc_micro": None,
            "relayer_eth_wei": None,
        }
    return asyncio.run(_read_node(settings))


def _deposit_view(account: str, record: DepositRecord) -> dict[str, object]:
    return {
        "account": account,
        "tx_hash": record.tx_hash,
        "log_index": record.log_index,
        "amount_micro_usd": record.amount,
        "status": record.status,
        "confirmations": record.confirmations,
        "error": record.error,
        "created_at": record.created_at.isoformat(),
    }


def _short(tx_hash: str) -> str:
    return f"{tx_hash[:10]}…{tx_hash[-6:]}"


def _summary_table(summary: dict[str, object]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_header=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value")
    for field, value in summary.items():
        table.add_row(field, Text("-" if value is None else str(value)))
    return table


def _deposit_table(deposits: list[dict[str, object]]) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("account", "tx hash", "amount", "status", "confirmations", "created"):
        table.add_column(column, justify="right" if column == "confirmations" else "left")
    for view in deposits:
        table.add_row(
            Text(str(view["account"])),
            _short(str(view["tx_hash"])),
            usd_text(int(str(view["amount_micro_usd"]))),
            str(view["status"]),
            str(view["confirmations"]),
            str(view["created_at"])[:16].replace("T", " "),
        )
    return table


def payments(
    limit: Limit = 20,
    as_json: JsonOutput = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Show the USDC top-up configuration, the node's head and chain id (when payments
    are on), and the newest deposits of all accounts."""
    settings = make_settings(data_dir=data_dir, database_url=database_url)
    summary = {**_configured(settings), **_live(settings)}
    records = run_with_database(settings, lambda db: recent_deposits(db, limit=limit))
    deposits = [_deposit_view(account, record) for account, record in records]
    if as_json:
        typer.echo(json.dumps({**summary, "deposits": deposits}))
        return
    console = Console()
    console.print(_summary_table(summary))
    console.print(_deposit_table(deposits) if deposits else "No deposits.")
