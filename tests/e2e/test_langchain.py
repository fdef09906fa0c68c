"""LangChain's ChatOpenAI pointed at the gateway, as a LangChain app would be."""

from __future__ import annotations

from langchain_openai import ChatOpenAI

from tests.conftest import Gateway


def test_invoke_and_stream(gateway: Gateway) -> None:
    llm = ChatOpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, model="current", max_tokens=6, max_retries=0)  # type: ignore[arg-type]
    msg = llm.invoke("Hello there")
    assert isinstance(msg.content, str) and len(msg.content.split()) == 6
    assert msg.response_metadata["model_name"] == "sim-model"
    parts = list(llm.stream("Hello there"))
    text = "".join(str(p.content) for p in parts)
    assert len(text.split()) == 6


async def test_async_invoke(gateway: Gateway) -> None:
    llm = ChatOpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, model="sim-model", max_tokens=3, max_retries=0)  # type: ignore[arg-type]
    msg = await llm.ainvoke("Hi")
    assert msg.content
    chunks = [c async for c in llm.astream("Hi")]
    assert "".join(str(c.content) for c in chunks)
