"""An agent loop over the gateway: ask the model, run the tools it calls, send back the results,
until it answers in words. The gateway records the whole exchange as one conversation."""

import json
import os

from openai import OpenAI

client = OpenAI(
    base_url=os.environ.get("GWPROXY_BASE_URL", "http://localhost:8080") + "/v1",
    api_key=os.environ["GWPROXY_API_KEY"],
)


def get_time(city: str = "UTC") -> str:
    return json.dumps({"city": city, "time": "12:00"})


def add(a: float = 0, b: float = 0) -> str:
    return json.dumps({"sum": a + b})


TOOLS = {"get_time": get_time, "add": add}
SPECS = [
    {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}}},
]  # fmt: skip

messages = [
    {"role": "system", "content": "You are a helpful agent. Use tools when they help."},
    {"role": "user", "content": "What time is it in Lisbon?"},
]
for step in range(1, 6):
    reply = client.chat.completions.create(model="current", messages=messages, tools=SPECS, max_tokens=64)
    message = reply.choices[0].message
    messages.append(message.model_dump(exclude_none=True))
    if not message.tool_calls:
        print(f"step {step}: answer: {message.content}")
        break
    for call in message.tool_calls:
        result = TOOLS[call.function.name](**json.loads(call.function.arguments or "{}"))
        print(f"step {step}: {call.function.name}({call.function.arguments}) -> {result}")
        messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
else:
    raise SystemExit("no answer after 5 steps")
