"""A chat completion through the gateway with the OpenAI SDK, then the same streamed."""

import os

from openai import OpenAI

client = OpenAI(
    base_url=os.environ.get("GWPROXY_BASE_URL", "http://localhost:8080") + "/v1",
    api_key=os.environ["GWPROXY_API_KEY"],
)

reply = client.chat.completions.create(
    model="current",  # whatever model the gateway serves now
    messages=[{"role": "user", "content": "Say hello in three words."}],
    max_tokens=32,
)
print("reply:", reply.choices[0].message.content)
print("usage:", reply.usage.prompt_tokens, "prompt +", reply.usage.completion_tokens, "completion tokens")

print("streamed: ", end="")
for chunk in client.chat.completions.create(
    model="current", messages=[{"role": "user", "content": "Count to five."}], stream=True, max_tokens=32
):
    if chunk.choices:
        print(chunk.choices[0].delta.content or "", end="", flush=True)
print()
