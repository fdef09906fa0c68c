"""LangChain's ChatOpenAI pointed at the gateway: one invoke, then a stream."""

import os

from langchain_openai import ChatOpenAI

llm = ChatOpenAI(
    base_url=os.environ.get("GWPROXY_BASE_URL", "http://localhost:8080") + "/v1",
    api_key=os.environ["GWPROXY_API_KEY"],
    model="current",
    max_tokens=32,
)
print("invoke:", llm.invoke("Name a colour.").content)
print("stream: ", end="")
for part in llm.stream("Name three fruits."):
    print(part.content, end="", flush=True)
print()
