"""The Jobs and Workers pages over real HTTP, checked against the real API.

Jobs: an account sees its own async jobs only (another account's job id is not found),
filtered by status and paged, a job's result escaped, and cancels a job with the
session's CSRF token only. Workers: an operator sees its own worker tokens only,
creates one (shown once, with the command line, on the POST's answer), sees a worker
connected with it online with its models and slots and its earnings grow as it serves,
and revokes it (the worker endpoint then refuses the token); another operator's worker
id is not found and left alone.

One gateway: the scripted engine serves "scripted" in-process; "raw" (priced) is served
only by raw WebSocket workers; "unserved" by nobody, so its jobs wait in the queue.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from infermesh.catalog.spec import ModelSpec
from infermesh.gateway.dashboard.pages.jobs import PAGE_SIZE
from infermesh.protocol.wire import PROTOCOL_VERSION
from tests.dashboard.test_sessions import assert_no_inline_script, browser, page_csrf, sign_in
from tests.fakes.engine import run_engine
from tests.gateway.conftest import engine_specs
from tests.mesh.helpers import HEARTBEAT, RawWorker, job_done, priced_raw_model, raw_worker
from tests.support.gateway import RunningGateway, create_key, start_gateway
from tests.support.waiting import wait_until

ASYNC = {"Prefer": "respond-async"}
JOBS = "/dashboard/jobs"
WORKERS = "/dashboard/workers"
NEW_TOKEN = re.compile(r'id="new-token">(wt-im-[A-Za-z0-9_-]+)<')
JOB_LINK = re.compile(r'href="/dashboard/jobs/(job_[0-9a-f]+)"')
HOSTILE = "<script>alert('x')</script> & <b>bold</b>"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    specs = [
        *[spec for spec in engine_specs_of() if spec.id == "scripted"],
        priced_raw_model(),
        ModelSpec(id="unserved", tier="frontier", description="served by nobody"),
    ]
    with (
        run_engine(models=["scripted-1"], api_key="upstream-secret") as engine,
        start_gateway(
            tmp_path_factory.mktemp("dashboard-jobs-workers"),
            specs=[_on(spec, engine.base_url) for spec in specs],
            secrets={"SCRIPTED_ENGINE_KEY": "upstream-secret"},
            wait_for=["scripted"],
            **HEARTBEAT,
        ) as running,
    ):
        yield running


def engine_specs_of() -> list[ModelSpec]:
    return engine_specs("http://engine.invalid")


def _on(spec: ModelSpec, engine_url: str) -> ModelSpec:
    """``spec`` served by the scripted engine at ``engine_url`` (if it is served at all)."""
    if spec.serve is None:
        return spec
    serve = spec.serve.model_copy(update={"upstream_url": engine_url})
    return spec.model_copy(update={"serve": serve})


@dataclass
class Account:
    """An account of its own, its key, and a browser signed in with it."""

    gateway: RunningGateway
    name: str
    key: str
    page: httpx.Client

    def api(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.key}"}
        return httpx.Client(base_url=self.gateway.base_url, headers=headers, timeout=60)

    def enqueue(self, model: str, text: str = "hello async") -> str:
        body = {"model": model, "messages": [{"role": "user", "content": text}]}
        with self.api() as http:
            answer = http.post("/v1/chat/completions", json=body, headers=ASYNC)
        assert answer.status_code == 202, answer.text
        job_id: str = answer.json()["id"]
        return job_id

    def job(self, job_id: str) -> dict[str, Any]:
        with self.api() as http:
            answer = http.get(f"/v1/results/{job_id}")
        assert answer.status_code == 200, answer.text
        job: dict[str, Any] = answer.json()
        return job

    def wait(self, job_id: str, status: str) -> None:
        wait_until(lambda: self.job(job_id)["status"] == status, timeout=30, what=status)

    def csrf(self, path: str = JOBS) -> str:
        return page_csrf(self.page, path)


@pytest.fixture
def account(gateway: RunningGateway) -> Iterator[Account]:
    name = f"dash-{uuid.uuid4().hex[:10]}"
    key = asyncio.run(create_key(gateway.settings, name))
    with browser(gateway) as client:
        assert sign_in(client, key).status_code == 303
        yield Account(gateway, name, key, client)


other = account


# Jobs


def test_jobs_are_listed_for_their_account_only(account: Account, other: Account) -> None:
    mine = account.enqueue("scripted")
    theirs = other.enqueue("scripted")
    page = account.page.get(JOBS)
    assert page.status_code == 200
    assert_no_inline_script(page.text)
    assert set(JOB_LINK.findall(page.text)) == {mine}
    for path in (f"{JOBS}/{theirs}", f"{JOBS}/job_0000000000000000", f"{JOBS}/not a job id"):
        assert account.page.get(path).status_code == 404
    cancelled = account.page.post(f"{JOBS}/{theirs}/cancel", data={"csrf": account.csrf()})
    assert cancelled.status_code == 404
    assert other.job(theirs)["status"] != "cancelled"


def test_a_result_is_shown_pretty_printed_and_escaped(account: Account) -> None:
    job_id = account.enqueue("scripted", HOSTILE)
    account.wait(job_id, "complete")
    page = account.page.get(f"{JOBS}/{job_id}")
    assert page.status_code == 200
    assert "<script>alert" not in page.text and "<b>bold" not in page.text
    answer = re.search(r'<pre id="answer">(.*?)</pre>', page.text, re.S)
    result = re.search(r'<pre id="result-json">(.*?)</pre>', page.text, re.S)
    assert answer is not None and result is not None
    assert "&lt;script&gt;" in answer.group(1)
    assert html.unescape(answer.group(1)) == f"echo: {HOSTILE}"
    parsed = json.loads(html.unescape(result.group(1)))
    assert parsed == account.job(job_id)["result"]
    assert '\n  "object": "chat.completion",' in html.unescape(result.group(1))
    assert_no_inline_script(page.text)


def test_jobs_are_filtered_by_status_and_paged(account: Account) -> None:
    done = account.enqueue("scripted")
    waiting = [account.enqueue("unserved") for _ in range(PAGE_SIZE)]
    account.wait(done, "complete")
    complete = account.page.get(JOBS, params={"status": "complete"}).text
    assert set(JOB_LINK.findall(complete)) == {done}

    first = account.page.get(JOBS).text
    shown = list(dict.fromkeys(JOB_LINK.findall(first)))
    assert shown == waiting[::-1]  # newest first, one page
    following = re.search(r'<a href="([^"]+)" rel="next">', first)
    assert following is not None
    second = account.page.get(html.unescape(following.group(1))).text
    assert set(JOB_LINK.findall(second)) == {done}
    assert 'rel="next"' not in second and "First page" in second

    assert account.page.get(JOBS, params={"status": "bogus"}).status_code == 400
    assert account.page.get(JOBS, params={"after": "job_missing"}).status_code == 404


def test_cancelling_a_job_needs_the_csrf_token(account: Account) -> None:
    job_id = account.enqueue("unserved")
    path = f"{JOBS}/{job_id}/cancel"
    assert account.page.post(path).status_code == 403
    assert account.page.post(path, data={"csrf": "forged"}).status_code == 403
    assert account.job(job_id)["status"] in ("queued", "processing")

    answer = account.page.post(path, data={"csrf": account.csrf()})
    assert answer.status_code == 303
    assert answer.headers["location"].startswith(f"{JOBS}/{job_id}?notice=")
    account.wait(job_id, "cancelled")
    assert ">cancelled<" in account.page.get(f"{JOBS}/{job_id}").text

    again = account.page.post(path, data={"csrf": account.csrf()})
    assert again.status_code == 303 and "already%20ended" in again.headers["location"]


# Workers


def create_token(operator: Account, name: str) -> tuple[httpx.Response, str]:
    answer = operator.page.post(WORKERS, data={"csrf": operator.csrf(WORKERS), "name": name})
    assert answer.status_code == 200, answer.text
    match = NEW_TOKEN.search(answer.text)
    assert match is not None
    return answer, match.group(1)


def worker_ids(operator: Account) -> list[str]:
    return re.findall(r'<tr id="worker-(wrk_[0-9a-f]+)">', operator.page.get(WORKERS).text)


def row_of(operator: Account, worker_id: str) -> str:
    page = operator.page.get(WORKERS).text
    row = re.search(rf'<tr id="worker-{worker_id}">(.*?)</tr>', page, re.S)
    assert row is not None, page
    return row.group(1)


def test_an_account_without_tokens_is_shown_how_to_become_an_operator(account: Account) -> None:
    page = account.page.get(WORKERS)
    assert page.status_code == 200
    assert "Become an operator" in page.text and "Create worker token" in page.text
    assert 'id="workers"' not in page.text
    assert_no_inline_script(page.text)


def test_a_created_token_is_shown_once_with_the_command_line(account: Account) -> None:
    assert account.page.post(WORKERS, data={"name": "no csrf"}).status_code == 403
    answer, token = create_token(account, "gpu <box> 1")
    assert answer.headers["cache-control"] == "no-store"
    base = account.gateway.base_url
    assert f"infermesh worker --gateway {base} --token {token}" in answer.text
    assert "gpu &lt;box&gt; 1" in answer.text
    assert_no_inline_script(answer.text)

    page = account.page.get(WORKERS).text
    assert token not in page and token[:12] in page  # its prefix only
    assert "gpu &lt;box&gt; 1" in page and "offline" in page
    assert len(worker_ids(account)) == 1


def test_an_operator_sees_and_revokes_only_its_own_workers(
    account: Account, other: Account
) -> None:
    create_token(account, "mine")
    _, theirs_token = create_token(other, "theirs")
    (mine,) = worker_ids(account)
    (theirs,) = worker_ids(other)
    page = account.page.get(WORKERS).text
    assert theirs not in page and "theirs" not in page

    forged = account.page.post(f"{WORKERS}/{theirs}/revoke", data={"csrf": "forged"})
    assert forged.status_code == 403
    refused = account.page.post(f"{WORKERS}/{theirs}/revoke", data={"csrf": account.csrf()})
    assert refused.status_code == 404
    assert ">offline<" in row_of(other, theirs)
    assert account.page.post(f"{WORKERS}/{mine}/revoke").status_code == 403
    assert ">offline<" in row_of(account, mine)
    assert asyncio.run(_welcomed(other.gateway, theirs_token))


async def _welcomed(gateway: RunningGateway, token: str) -> bool:
    """Whether the worker endpoint welcomes ``token`` (False: it refused it)."""
    hello = {
        "type": "hello",
        "protocol_version": PROTOCOL_VERSION,
        "worker_version": "dashboard-test",
        "models": [{"id": "raw", "concurrency": 1}],
    }
    async with raw_worker(gateway, token) as websocket:
        with suppress(ConnectionClosed):  # a refused token may be closed on before
            await websocket.send(json.dumps(hello))
        answer = json.loads(await websocket.recv())
    if answer["type"] == "refused":
        assert answer["code"] == "unauthorized", answer
    return bool(answer["type"] == "welcome")


async def test_a_connected_worker_shows_online_earns_and_is_revoked(account: Account) -> None:
    _, token = await asyncio.to_thread(create_token, account, "live")
    (worker_id,) = await asyncio.to_thread(worker_ids, account)
    async with raw_worker(account.gateway, token) as websocket:
        worker = RawWorker(websocket)
        welcome = await worker.hello("raw", concurrency=3)
        beating = asyncio.create_task(worker.heartbeat())
        try:
            row = await asyncio.to_thread(row_of, account, worker_id)
            assert ">online<" in row and welcome["node_id"] in row and "this gateway" in row
            assert "<code>raw</code> (3 slots)" in row and "$0.00" in row

            await _serve_one(account, worker)
            row = await _eventually_earned(account, worker_id)
            assert "$0.000016" in row  # 80% of 10 + 2 * 5 micro-USD

            answer = await asyncio.to_thread(
                account.page.post,
                f"{WORKERS}/{worker_id}/revoke",
                data={"csrf": await asyncio.to_thread(account.csrf, WORKERS)},
            )
            assert answer.status_code == 303
            code, _ = await worker.closed()  # the gateway disconnects it
            assert code == 1008
        finally:
            beating.cancel()
    assert ">revoked<" in await asyncio.to_thread(row_of, account, worker_id)
    assert not await _welcomed(account.gateway, token)


async def _serve_one(account: Account, worker: RawWorker) -> None:
    """A request of another account to "raw", answered by ``worker``."""
    customer = await create_key(account.gateway.settings, f"customer-{uuid.uuid4().hex[:8]}")
    client = account.gateway.client(api_key=customer)
    answer = asyncio.create_task(
        asyncio.to_thread(
            client.chat.completions.create,
            model="raw",
            messages=[{"role": "user", "content": "earn me something"}],
        )
    )
    job = await worker.next_job()
    await worker.send({"type": "chunk", "job_id": job["id"], "chunk": {"content": "done"}})
    await worker.send(job_done(job, prompt=10, completion=5))
    assert (await answer).choices[0].message.content == "done"


async def _eventually_earned(account: Account, worker_id: str) -> str:
    """The worker's row once it shows earnings (written a moment after the request)."""
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        row = await asyncio.to_thread(row_of, account, worker_id)
        if "$0.00<" not in row:
            return row
        assert asyncio.get_running_loop().time() < deadline, row
        await asyncio.sleep(0.05)


def test_a_signed_out_browser_is_sent_to_sign_in(
    gateway: RunningGateway,
) -> None:
    with browser(gateway) as client:
        for path in (JOBS, WORKERS):
            answer = client.get(path)
            assert answer.status_code == 303 and "/dashboard/sign-in" in answer.headers["location"]
