"""``/v1/responses`` state across several upstreams: vLLM keeps a stored response (and what it was
asked) in the memory of the server that made it, so a follow-up naming ``previous_response_id``,
a retrieval and a cancel must reach that server. Three simulators with vLLM's response store on
(two serve model A, one model B), the gateway in front, the OpenAI SDK as the client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from aiohttp.test_utils import TestServer
from openai import AsyncOpenAI, NotFoundError

from gwproxy.keys import UPSTREAM, USERS
from tests.conftest import start_app
from tests.integration.test_upstreams import A, B, Replica, _start, _upstreams


@pytest.fixture(scope="module")
def stores(log_dir: Path) -> Iterator[list[Replica]]:
    replicas = [
        _start(log_dir, "store-a1", A, "--responses-store"),
        _start(log_dir, "store-a2", A, "--responses-store"),
        _start(log_dir, "store-b", B, "--responses-store"),
    ]
    yield replicas
    for r in replicas:
        r.proc.stop()


@pytest.fixture
async def client(stores: list[Replica]) -> AsyncIterator[tuple[AsyncOpenAI, TestServer]]:
    server = await start_app(stores[0].port, GWPROXY_UPSTREAMS=_upstreams(stores), GWPROXY_RATELIMIT_ENABLED="false")
    users = server.app[USERS]
    user = await users.create_user("resp-user", "resp-password")
    key, _ = await users.create_key(user.id, "k")
    sdk = AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=key, max_retries=0)
    yield sdk, server
    await sdk.close()
    await server.close()


def test_the_simulator_keeps_responses_as_vllm_does(stores: list[Replica]) -> None:
    """With the store on: a response can be retrieved and continued where it was made, and
    nowhere else (vLLM's 404 naming the id)."""
    a1, a2 = stores[0].url, stores[1].url
    made = httpx.post(f"{a1}/v1/responses", json={"model": A, "input": "Remember: 42"}).json()
    assert httpx.get(f"{a1}/v1/responses/{made['id']}").json()["id"] == made["id"]
    follow = {"model": A, "input": "What was it?", "previous_response_id": made["id"]}
    later = httpx.post(f"{a1}/v1/responses", json=follow).json()
    assert later["previous_response_id"] == made["id"]
    assert later["usage"]["input_tokens"] > made["usage"]["input_tokens"]  # the history is in the prompt
    for r in (httpx.post(f"{a2}/v1/responses", json=follow), httpx.get(f"{a2}/v1/responses/{made['id']}")):
        assert r.status_code == 404
        assert r.json()["error"]["message"] == f"Response with id '{made['id']}' not found."
    bad = httpx.get(f"{a1}/v1/responses/nope")
    assert bad.status_code == 400 and "Expected an ID that begins with 'resp'" in bad.json()["error"]["message"]
    unstored = httpx.post(f"{a1}/v1/responses", json={"model": A, "input": "x", "store": False}).json()
    assert httpx.get(f"{a1}/v1/responses/{unstored['id']}").status_code == 404


async def test_a_chain_of_responses_stays_on_the_replica_that_holds_it(
    client: tuple[AsyncOpenAI, TestServer],
) -> None:
    sdk, server = client
    for stream in (False, True):
        previous = None
        for turn in range(8):  # spread by load alone, eight in a row on one replica would be luck
            kwargs = {"previous_response_id": previous} if previous else {}
            if stream:
                async with sdk.responses.stream(model=A, input=f"turn {turn}", **kwargs) as events:
                    response = await events.get_final_response()
            else:
                response = await sdk.responses.create(model=A, input=f"turn {turn}", **kwargs)
            assert response.previous_response_id == previous
            previous = response.id
    registry = server.app[UPSTREAM]
    assert {u.name: u.requests for u in registry.upstreams}["store-b"] == 0


async def test_a_response_is_retrieved_from_the_upstream_that_made_it(client: tuple[AsyncOpenAI, TestServer]) -> None:
    """Model B's only upstream made it; a retrieval names no model (it would go to A's replicas)."""
    sdk, _ = client
    made = await sdk.responses.create(model=B, input="kept on b")
    assert (await sdk.responses.retrieve(made.id)).id == made.id
    for_a = [await sdk.responses.create(model=A, input=f"kept on a {i}") for i in range(4)]
    for response in for_a:
        assert (await sdk.responses.retrieve(response.id)).model == A
    with pytest.raises(NotFoundError):  # unknown anywhere: vLLM's own 404, from a replica
        await sdk.responses.retrieve("resp_" + "0" * 32)
