"""Codex-shaped traffic translated to OpenAI-chat and Anthropic upstreams: flat names up, namespaces back."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import openai
import pytest

from higgs.testing import parse_sse

CODEX = json.loads((Path(__file__).parent / "fixtures" / "codex_request.json").read_text())
FLAT = ["functions__shell", "functions__apply_patch", "mcp__github__search_issues"]


async def post_stream(url: str, body: dict) -> list[dict]:
    async with aiohttp.ClientSession() as http, http.post(url + "/v1/responses", json=body) as response:
        assert response.status == 200, await response.text()
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = await response.read()
    events = parse_sse(raw)
    for event in events:
        assert event.event == event.json()["type"]
    return [e.json() for e in events]


def tool_names(body: dict, fmt: str) -> list[str]:
    if fmt == "openai":
        return [t["function"]["name"] for t in body["tools"]]
    return [t["name"] for t in body["tools"]]


@pytest.mark.parametrize("fmt", ["openai", "anthropic"])
async def test_codex_request_reaches_upstream_flat(remote_config, gateway, upstream, fmt):
    upstream.call_tool = True
    upstream.arguments = {"command": ["cat", "README.md"]}
    async with gateway(remote_config(upstream, fmt)) as url:
        events = await post_stream(url, CODEX)
    sent = upstream.bodies[-1]
    assert tool_names(sent, fmt) == FLAT
    serialized = json.dumps(sent)
    # Codex-only fields never leak into another vendor's request.
    for key in ("client_metadata", "prompt_cache_key", "additional_tools", "namespace", "encrypted_content"):
        assert key not in serialized
    if fmt == "openai":
        system = sent["messages"][0]
        assert system["role"] == "system" and "You are Codex" in json.dumps(system)
        calls = [c for m in sent["messages"] if m["role"] == "assistant" for c in m.get("tool_calls") or []]
        assert [c["function"]["name"] for c in calls] == ["functions__shell", "functions__apply_patch"]
        patch_args = json.loads(calls[1]["function"]["arguments"])
        assert patch_args["input"].startswith("*** Begin Patch")
        tool_ids = [m["tool_call_id"] for m in sent["messages"] if m["role"] == "tool"]
        assert tool_ids == ["call_ls1", "call_patch1"]
        assert sent["parallel_tool_calls"] is False
    else:
        assert "You are Codex" in json.dumps(sent["system"])
        uses = [b for m in sent["messages"] for b in m["content"] if isinstance(b, dict) and b["type"] == "tool_use"]
        assert [u["name"] for u in uses] == ["functions__shell", "functions__apply_patch"]
    # The client gets the call back under the name and namespace it defined.
    done = [e for e in events if e["type"] == "response.output_item.done"]
    item = done[-1]["item"]
    assert item["type"] == "function_call" and item["name"] == "shell" and item["namespace"] == "functions"
    assert json.loads(item["arguments"]) == {"command": ["cat", "README.md"]}
    assert events[-1]["type"] == "response.completed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


async def test_custom_tool_call_comes_back_as_custom(remote_config, gateway, upstream):
    upstream.call_tool = True
    upstream.tool = "functions__apply_patch"
    patch = "*** Begin Patch\n*** Add File: hello.txt\n+hi\n*** End Patch\n"
    upstream.arguments = {"input": patch}
    async with gateway(remote_config(upstream, "anthropic")) as url:
        events = await post_stream(url, CODEX)
        body = {**CODEX, "stream": False}
        async with aiohttp.ClientSession() as http, http.post(url + "/v1/responses", json=body) as response:
            full = await response.json()
    item = [e for e in events if e["type"] == "response.output_item.done"][-1]["item"]
    assert item == {**item, "type": "custom_tool_call", "name": "apply_patch", "namespace": "functions",
                    "input": patch, "call_id": "toolu_up1", "status": "completed"}
    deltas = [e for e in events if e["type"] == "response.custom_tool_call_input.delta"]
    assert "".join(d["delta"] for d in deltas) == patch
    assert full["output"][0]["type"] == "custom_tool_call" and full["output"][0]["input"] == patch
    # The grammar reached the upstream model inside the flat tool's description.
    tool = next(t for t in upstream.bodies[-1]["tools"] if t["name"] == "functions__apply_patch")
    assert "lark grammar" in tool["description"] and "begin_patch" in tool["description"]
    assert tool["input_schema"]["required"] == ["input"]


async def test_sdk_sees_namespace_on_function_call(remote_config, gateway, upstream):
    upstream.call_tool = True
    upstream.tool = "mcp__github__search_issues"
    upstream.arguments = {"query": "is:open label:bug"}
    async with gateway(remote_config(upstream, "openai")) as url:
        api = openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        fields = {k: v for k, v in CODEX.items() if k != "client_metadata"}
        response = await api.responses.create(**{**fields, "stream": False},
                                              extra_body={"client_metadata": CODEX["client_metadata"]})
    call = response.output[0]
    assert call.type == "function_call" and call.name == "search_issues" and call.namespace == "mcp__github"
    assert json.loads(call.arguments) == {"query": "is:open label:bug"}


async def test_text_answer_through_translation_stream(remote_config, gateway, upstream):
    upstream.text = "Done: fixed the typo"
    async with gateway(remote_config(upstream, "openai")) as url:
        api = openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        stream = await api.responses.create(model="gpt-up", input="hi", stream=True)
        events = [e async for e in stream]
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Done: fixed the typo"
    assert events[-1].response.usage.input_tokens == 9 and events[-1].response.usage.output_tokens == 4


@pytest.mark.parametrize("fmt", ["openai", "anthropic"])
async def test_upstream_error_is_rendered_as_responses_error(remote_config, gateway, upstream, fmt):
    if fmt == "openai":
        upstream.error = (429, {"error": {"message": "Rate limit reached", "type": "rate_limit_error",
                                          "param": None, "code": "rate_limit_exceeded"}})
    else:
        upstream.error = (429, {"type": "error", "error": {"type": "rate_limit_error",
                                                           "message": "Rate limit reached"}})
    config = remote_config(upstream, fmt)
    config["provider"]["up"]["max_retries"] = 0
    async with gateway(config) as url:
        api = openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        with pytest.raises(openai.RateLimitError) as caught:
            await api.responses.create(model="m", input="hi")
    assert caught.value.body["type"] == "rate_limit_error" and "Rate limit reached" in caught.value.body["message"]
