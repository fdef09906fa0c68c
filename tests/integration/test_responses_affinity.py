"""``/v1/responses`` state across several upstreams: vLLM keeps a stored response (and what it was
asked) in the memory of the server that made it, so a follow-up naming ``previous_response_id``,
a retrieval and a cancel must reach that server. Three simulators with vLLM's response store on
(two serve model A, one model B), the gateway in front, the OpenAI SDK as the client. A stored
response is its owner's alone: two gateway replicas on one database (SQLite and PostgreSQL) refuse
it to everyone else with vLLM's own 404."""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestServer
from openai import AsyncOpenAI, NotFoundError

from gwproxy.keys import UPSTREAM, USERS
from tests.conftest import start_app
from tests.integration.test_auth_http import bearer, call
from tests.integration.test_security import Site, _site
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


# -- whose a stored response is ------------------------------------------------------------------


@pytest.fixture
async def two_replicas(stores: list[Replica], db_url: str, engine: Any, tmp_path: Path) -> AsyncIterator[list[Site]]:
    """Two gateway replicas on one database (each engine), auth on, in front of the stores."""
    env = {"GWPROXY_UPSTREAMS": _upstreams(stores), "GWPROXY_RATELIMIT_ENABLED": "false"}
    sites = [await _site(stores[0].port, db_url, tmp_path / f"r{i}", **env) for i in range(2)]
    yield sites
    for s in sites:
        await s.server.close()


def _sdk(site: Site, key: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=site.url("/v1"), api_key=key, max_retries=0)


async def test_a_stored_response_is_its_owners_alone_on_every_replica(two_replicas: list[Site]) -> None:
    """Bob's response — made on one replica, streamed or not — is refused to Eve on both with
    vLLM's own 404 (retrieve, input items, cancel, delete, previous_response_id), and served to
    Bob on both."""
    one, two = two_replicas
    made = [
        await _sdk(one, one.bob_key).responses.create(model=A, input="bob's secret plan"),
        await _sdk(two, two.bob_key).responses.create(model=B, input="bob's other plan"),
    ]
    async with _sdk(one, one.bob_key).responses.stream(model=A, input="bob streams") as events:
        made.append(await events.get_final_response())
    for response in made:
        rid = response.id
        for site in (one, two):
            assert (await _sdk(site, site.bob_key).responses.retrieve(rid)).id == rid  # the owner, anywhere
            eve = bearer(site.eve_key)
            attempts = [
                ("GET", f"/v1/responses/{rid}", None),
                ("GET", f"/v1/responses/{rid}/input_items", None),
                ("POST", f"/v1/responses/{rid}/cancel", None),
                ("DELETE", f"/v1/responses/{rid}", None),
                ("POST", "/v1/responses", {"model": A, "input": "and then?", "previous_response_id": rid}),
            ]
            for method, path, body in attempts:
                status, answer, _ = await call(method, site.url(path), headers=eve, json=body)
                assert status == 404, (method, path, answer)
                assert answer["error"] == {
                    "message": f"Response with id '{rid}' not found.",
                    "type": "NotFoundError",
                    "param": "response_id",
                    "code": 404,
                }
        sdk = _sdk(two, two.bob_key)
        follow = await sdk.responses.create(model=response.model, input="go on", previous_response_id=rid)
        assert follow.previous_response_id == rid
    with pytest.raises(NotFoundError):  # the SDK's class for it
        await _sdk(two, two.eve_key).responses.retrieve(made[0].id)


async def test_a_response_the_gateway_never_relayed_is_refused_not_forwarded(
    stores: list[Replica], two_replicas: list[Site]
) -> None:
    """Made at vLLM directly (or before the gateway kept owners): nobody may name it through the
    gateway, the admin included — it has no owner to check against."""
    made = httpx.post(f"{stores[0].url}/v1/responses", json={"model": A, "input": "made directly"}).json()
    assert httpx.get(f"{stores[0].url}/v1/responses/{made['id']}").status_code == 200  # it exists upstream
    site = two_replicas[0]
    served = {u.name: u.requests for u in site.server.app[UPSTREAM].upstreams}
    for key in (site.admin_key, site.bob_key):
        status, answer, _ = await call("GET", site.url(f"/v1/responses/{made['id']}"), headers=bearer(key))
        assert status == 404 and answer["error"]["message"] == f"Response with id '{made['id']}' not found."
        status, _, _ = await call(
            "POST",
            site.url("/v1/responses"),
            headers=bearer(key),
            json={"model": A, "input": "x", "previous_response_id": made["id"]},
        )
        assert status == 404
    assert {u.name: u.requests for u in site.server.app[UPSTREAM].upstreams} == served  # nothing forwarded


async def test_response_ids_are_unguessable_whatever_the_client_sends(two_replicas: list[Site]) -> None:
    """Response ids are vLLM's random ones (0.32; older vLLM built them from the request id, which
    the gateway mints itself): two in a row are not neighbours, and an id a client chose never
    becomes one."""
    site = two_replicas[0]
    sdk = _sdk(site, site.bob_key)
    ids = [
        (await sdk.responses.create(model=A, input=f"n{i}", extra_headers={"X-Request-ID": "chosen"})).id
        for i in range(3)
    ]
    assert len(set(ids)) == 3
    for rid in ids:
        assert re.fullmatch(r"resp_[0-9a-f]{16,32}", rid) and "chosen" not in rid
    numbers = sorted(int(rid[5:], 16) for rid in ids)
    assert all(b - a > 2**32 for a, b in itertools.pairwise(numbers))  # no counter in any part of it
