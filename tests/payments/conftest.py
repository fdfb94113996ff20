"""Fixtures for payments: a Web3 on an in-process EVM, on anvil, or on each in turn."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from web3 import EthereumTesterProvider, Web3

from tests.payments.chain import Anvil, require_anvil, run_anvil


@pytest.fixture
def tester_w3() -> Web3:
    """A fresh in-process chain (eth-tester on py-evm) with ten unlocked, funded accounts."""
    return Web3(EthereumTesterProvider())


@pytest.fixture
def anvil() -> Iterator[Anvil]:
    """A fresh anvil node with Base's chain id (8453). Tests using it are marked
    ``@pytest.mark.anvil``; a missing binary fails them unless INFERMESH_SKIP_ANVIL=1."""
    binary = require_anvil()
    with run_anvil(binary=binary) as node:
        yield node


@pytest.fixture
def anvil_w3(anvil: Anvil) -> Web3:
    """A Web3 on a fresh anvil node, with its ten unlocked, funded dev accounts."""
    return anvil.w3


@pytest.fixture(params=["tester", pytest.param("anvil", marks=pytest.mark.anvil)])
def w3(request: pytest.FixtureRequest) -> Web3:
    """A Web3 on each backend in turn: eth-tester, then anvil."""
    chain: Web3 = request.getfixturevalue(f"{request.param}_w3")
    return chain
