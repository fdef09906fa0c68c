"""The OpenAI SDK with a tool: the model answers with a tool call (name and JSON arguments)."""

import json
import os

from openai import OpenAI

client = OpenAI(
    base_url=os.environ.get("GWPROXY_BASE_URL", "http://localhost:8080") + "/v1",
    api_key=os.environ["GWPROXY_API_KEY"],
)
weather = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
reply = client.chat.completions.create(
    model="current",
    messages=[{"role": "user", "content": "What's the weather in Oslo?"}],
    tools=[weather],
    tool_choice={"type": "function", "function": {"name": "get_weather"}},
)
call = reply.choices[0].message.tool_calls[0]
print("tool call:", call.function.name, json.loads(call.function.arguments))
