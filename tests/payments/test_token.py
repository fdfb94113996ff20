"""The TestUSDC token on eth-tester and on anvil: what the deposit tests build on.

A user tops up by signing an EIP-2612 permit (or, later, an EIP-3009 authorization)
off-chain; a relayer with gas submits it and moves the funds to the treasury.
"""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import TransactionNotFound

from tests.payments.chain import (
    BASE_CHAIN_ID,
    MAINNET_NAME,
    SEPOLIA_NAME,
    TokenDomain,
    deploy_token,
    events,
    mine,
    mint,
    new_authorization_nonce,
    resign,
    revert,
    reverts,
    sign_authorization,
    sign_cancel_authorization,
    sign_permit,
    snapshot,
    transact,
)

TEN_USDC = 10 * 10**6
SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
ZERO_ADDRESS = "0x" + "00" * 20


@pytest.fixture
def token(w3: Web3) -> Contract:
    return deploy_token(w3)


@pytest.fixture
def owner(token: Contract) -> LocalAccount:
    """A user's wallet holding 10 USDC and no ETH: it only ever signs."""
    account: LocalAccount = Account.create()
    mint(token, account.address, TEN_USDC)
    return account


def relayer(w3: Web3) -> str:
    return w3.eth.accounts[1]


def now(w3: Web3) -> int:
    timestamp: int = w3.eth.get_block("latest")["timestamp"]
    return timestamp


def test_token_is_usdc_like(w3: Web3, token: Contract) -> None:
    assert token.functions.decimals().call() == 6
    assert token.functions.version().call() == "2"
    assert token.functions.name().call() == MAINNET_NAME
    assert token.functions.symbol().call() == "USDC"
    assert token.functions.minter().call() == w3.eth.accounts[0]


@pytest.mark.parametrize("name", [MAINNET_NAME, SEPOLIA_NAME])
def test_domain_separator_is_eip712_of_name_version_chain_and_address(w3: Web3, name: str) -> None:
    token = deploy_token(w3, name=name, symbol="USDC")
    domain = TokenDomain(name=name, chain_id=w3.eth.chain_id, verifying_contract=token.address)
    expected = domain.separator()

    assert token.functions.DOMAIN_SEPARATOR().call() == expected
    empty_permit = domain.typed_data("Permit", [], {})
    assert encode_typed_data(full_message=empty_permit).header == expected
    assert TokenDomain.of(token) == domain


def test_only_the_deployer_mints(w3: Web3, token: Contract) -> None:
    holder = Account.create().address
    receipt = mint(token, holder, TEN_USDC)

    (event,) = events(token, "Transfer", receipt)
    assert (event["args"]["from"], event["args"]["to"], event["args"]["value"]) == (
        ZERO_ADDRESS,
        holder,
        TEN_USDC,
    )
    assert token.functions.balanceOf(holder).call() == TEN_USDC
    assert token.functions.totalSupply().call() == TEN_USDC
    with reverts("caller is not the minter"):
        transact(token.functions.mint(holder, 1), sender=w3.eth.accounts[1])


def test_permit_lets_a_relayer_move_funds_to_the_treasury(
    w3: Web3, token: Contract, owner: LocalAccount
) -> None:
    treasury = Account.create().address
    permit = sign_permit(
        owner,
        TokenDomain.of(token),
        spender=relayer(w3),
        value=TEN_USDC,
        nonce=token.functions.nonces(owner.address).call(),
        deadline=now(w3) + 3600,
    )
    transact(token.functions.permit(*permit.arguments), sender=relayer(w3))
    assert token.functions.allowance(owner.address, relayer(w3)).call() == TEN_USDC
    assert token.functions.nonces(owner.address).call() == 1

    moved = token.functions.transferFrom(owner.address, treasury, TEN_USDC)
    receipt = transact(moved, sender=relayer(w3))

    (event,) = events(token, "Transfer", receipt)
    assert (event["args"]["from"], event["args"]["to"], event["args"]["value"]) == (
        owner.address,
        treasury,
        TEN_USDC,
    )
    assert token.functions.balanceOf(treasury).call() == TEN_USDC
    assert token.functions.balanceOf(owner.address).call() == 0
    assert token.functions.allowance(owner.address, relayer(w3)).call() == 0

    with reverts("invalid signature"):  # replayed: the nonce has moved on
        transact(token.functions.permit(*permit.arguments), sender=relayer(w3))


def test_expired_permit_reverts(w3: Web3, token: Contract, owner: LocalAccount) -> None:
    permit = sign_permit(
        owner,
        TokenDomain.of(token),
        spender=relayer(w3),
        value=TEN_USDC,
        nonce=0,
        deadline=now(w3) - 1,
    )
    with reverts("permit is expired"):
        transact(token.functions.permit(*permit.arguments), sender=relayer(w3))


def test_permit_signed_by_someone_else_reverts(
    w3: Web3, token: Contract, owner: LocalAccount
) -> None:
    genuine = sign_permit(
        owner,
        TokenDomain.of(token),
        spender=relayer(w3),
        value=TEN_USDC,
        nonce=0,
        deadline=now(w3) + 3600,
    )
    forged = resign(genuine, Account.create())

    with reverts("invalid signature"):
        transact(token.functions.permit(*forged.arguments), sender=relayer(w3))
    assert token.functions.nonces(owner.address).call() == 0


def test_non_canonical_and_null_signatures_revert(
    w3: Web3, token: Contract, owner: LocalAccount
) -> None:
    permit = sign_permit(
        owner,
        TokenDomain.of(token),
        spender=relayer(w3),
        value=TEN_USDC,
        nonce=0,
        deadline=now(w3) + 3600,
    )
    fields = permit.arguments[:4]

    def submit(v: int, r: bytes, s: bytes, *, owner_fields: tuple[object, ...] = fields) -> None:
        transact(token.functions.permit(*owner_fields, v, r, s), sender=relayer(w3))

    # The twin signature (v flipped, s -> n - s) recovers the same owner: refused (EIP-2).
    twin = (55 - permit.v, permit.r, (SECP256K1_ORDER - int.from_bytes(permit.s, "big")))
    signable = encode_typed_data(full_message=permit.typed_data)
    assert Account.recover_message(signable, vrs=twin) == owner.address
    with reverts("invalid signature 's' value"):
        submit(twin[0], twin[1], twin[2].to_bytes(32, "big"))
    with reverts("invalid signature 'v' value"):
        submit(permit.v - 27, permit.r, permit.s)
    # ecrecover returns address(0) for garbage, which must not pass for address(0)'s permit.
    null_fields = (ZERO_ADDRESS, relayer(w3), TEN_USDC, now(w3) + 3600)
    with reverts("invalid signature"):
        submit(27, b"\0" * 32, b"\0" * 32, owner_fields=null_fields)
    submit(permit.v, permit.r, permit.s)
    assert token.functions.allowance(owner.address, relayer(w3)).call() == TEN_USDC


def test_transfer_with_authorization_moves_funds_once(
    w3: Web3, token: Contract, owner: LocalAccount
) -> None:
    treasury = Account.create().address
    nonce = new_authorization_nonce()
    authorization = sign_authorization(
        owner,
        TokenDomain.of(token),
        to=treasury,
        value=TEN_USDC,
        valid_after=0,
        valid_before=now(w3) + 3600,
        nonce=nonce,
    )
    call = token.functions.transferWithAuthorization(*authorization.arguments)
    receipt = transact(call, sender=relayer(w3))

    (used,) = events(token, "AuthorizationUsed", receipt)
    assert (used["args"]["authorizer"], used["args"]["nonce"]) == (owner.address, nonce)
    (moved,) = events(token, "Transfer", receipt)
    assert (moved["args"]["from"], moved["args"]["to"]) == (owner.address, treasury)
    assert token.functions.balanceOf(treasury).call() == TEN_USDC
    assert token.functions.authorizationState(owner.address, nonce).call() is True

    with reverts("authorization is used or canceled"):
        transact(call, sender=relayer(w3))


def test_authorization_validity_window(w3: Web3, token: Contract, owner: LocalAccount) -> None:
    domain, treasury = TokenDomain.of(token), Account.create().address

    def submit(valid_after: int, valid_before: int) -> None:
        authorization = sign_authorization(
            owner,
            domain,
            to=treasury,
            value=1,
            valid_after=valid_after,
            valid_before=valid_before,
            nonce=new_authorization_nonce(),
        )
        call = token.functions.transferWithAuthorization(*authorization.arguments)
        transact(call, sender=relayer(w3))

    with reverts("authorization is not yet valid"):
        submit(now(w3) + 3600, now(w3) + 7200)
    with reverts("authorization is expired"):
        submit(0, now(w3) - 1)


def test_receive_with_authorization_only_by_the_payee(
    w3: Web3, token: Contract, owner: LocalAccount
) -> None:
    payee = w3.eth.accounts[2]
    authorization = sign_authorization(
        owner,
        TokenDomain.of(token),
        to=payee,
        value=TEN_USDC,
        valid_after=0,
        valid_before=now(w3) + 3600,
        nonce=new_authorization_nonce(),
        receive=True,
    )
    call = token.functions.receiveWithAuthorization(*authorization.arguments)

    with reverts("caller must be the payee"):
        transact(call, sender=relayer(w3))
    transact(call, sender=payee)
    assert token.functions.balanceOf(payee).call() == TEN_USDC


def test_canceled_authorization_cannot_be_used(
    w3: Web3, token: Contract, owner: LocalAccount
) -> None:
    domain, nonce = TokenDomain.of(token), new_authorization_nonce()
    cancel = sign_cancel_authorization(owner, domain, nonce=nonce)
    receipt = transact(token.functions.cancelAuthorization(*cancel.arguments), sender=relayer(w3))
    (event,) = events(token, "AuthorizationCanceled", receipt)
    assert event["args"]["nonce"] == nonce

    authorization = sign_authorization(
        owner,
        domain,
        to=relayer(w3),
        value=1,
        valid_after=0,
        valid_before=now(w3) + 3600,
        nonce=nonce,
    )
    with reverts("authorization is used or canceled"):
        call = token.functions.transferWithAuthorization(*authorization.arguments)
        transact(call, sender=relayer(w3))


@pytest.mark.anvil
def test_anvil_runs_with_base_chain_id(anvil_w3: Web3) -> None:
    assert anvil_w3.eth.chain_id == BASE_CHAIN_ID


@pytest.mark.anvil
def test_anvil_snapshot_and_revert_undo_a_transfer(anvil_w3: Web3) -> None:
    token = deploy_token(anvil_w3)
    holder, treasury = anvil_w3.eth.accounts[2], Account.create().address
    mint(token, holder, TEN_USDC)
    before = snapshot(anvil_w3)
    height = anvil_w3.eth.block_number

    receipt = transact(token.functions.transfer(treasury, TEN_USDC), sender=holder)
    assert token.functions.balanceOf(treasury).call() == TEN_USDC

    revert(anvil_w3, before)
    assert anvil_w3.eth.block_number == height
    assert token.functions.balanceOf(treasury).call() == 0
    assert token.functions.balanceOf(holder).call() == TEN_USDC
    with pytest.raises(TransactionNotFound):
        anvil_w3.eth.get_transaction_receipt(receipt["transactionHash"])


@pytest.mark.anvil
def test_anvil_mine_advances_blocks(anvil_w3: Web3) -> None:
    height = anvil_w3.eth.block_number
    mine(anvil_w3, 12)
    assert anvil_w3.eth.block_number == height + 12
