"""The official ``openai`` SDK's ``client.responses`` against higgs serving a (scripted) local model."""

from __future__ import annotations

import aiohttp
import openai
import pytest

from higgs.messages import ErrorInfo, TextBlock, ThinkingBlock, ToolUseBlock


def client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="test-key", max_retries=0)


async def test_create_plain_text(gateway, local):
    async with gateway() as url:
        response = await client(url).responses.create(model="local-model", input="Say hi",
                                                      instructions="Be brief.", max_output_tokens=50,
                                                      temperature=0.2, top_p=0.9)
    assert response.status == "completed"
    assert response.output_text == "Hello from the local model."
    assert response.id.startswith("resp_")
    assert response.usage.input_tokens == 11 and response.usage.output_tokens == 7
    assert response.usage.total_tokens == 18
    assert response.usage.output_tokens_details.reasoning_tokens == 2
    seen = local.requests[-1]
    assert seen.system_text() == "Be brief."
    assert [m.role for m in seen.messages] == ["user"] and seen.messages[0].text() == "Say hi"
    assert seen.max_tokens == 50 and seen.sampling.temperature == 0.2 and seen.sampling.top_p == 0.9


async def test_stream_events_in_documented_order(gateway, local):
    local.blocks = [ThinkingBlock(thinking="Let me think."), TextBlock(text="Hello there friend")]
    async with gateway() as url:
        stream = await client(url).responses.create(model="local-model", input="hi", stream=True)
        events = [event async for event in stream]
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert kinds.index("response.reasoning_summary_text.delta") < kinds.index("response.output_text.delta")
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "Hello there friend"
    done = [e for e in events if e.type == "response.output_item.done"]
    assert [d.item.type for d in done] == ["reasoning", "message"]
    final = events[-1].response
    assert final.output_text == "Hello there friend"
    assert final.output[0].summary[0].text == "Let me think."
    assert final.usage.input_tokens == 11


async def test_stream_helper_accumulates(gateway, local):
    local.blocks = [TextBlock(text="one two three")]
    async with gateway() as url:
        async with client(url).responses.stream(model="local-model", input="count") as stream:
            deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
            final = await stream.get_final_response()
    assert "".join(deltas) == "one two three"
    assert final.output_text == "one two three"


async def test_function_tool_call_round_trip(gateway, local):
    local.blocks = [ToolUseBlock(id="call_1", name="get_weather", input={"city": "Paris"})]
    local.stop_reason = "tool_use"
    tools = [{"type": "function", "name": "get_weather", "description": "Weather for a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    async with gateway() as url:
        api = client(url)
        first = await api.responses.create(model="local-model", input="Weather in Paris?", tools=tools,
                                           tool_choice="required")
        call = first.output[0]
        assert call.type == "function_call" and call.name == "get_weather" and call.call_id == "call_1"
        assert call.arguments == '{"city":"Paris"}'
        local.blocks, local.stop_reason = [TextBlock(text="It is sunny.")], "end_turn"
        second = await api.responses.create(model="local-model", tools=tools, input=[
            {"role": "user", "content": "Weather in Paris?"},
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21C"},
        ])
    assert second.output_text == "It is sunny."
    first_seen, seen = local.requests
    assert first_seen.tool_choice.type == "any" and first_seen.tools[0].name == "get_weather"
    assert [m.role for m in seen.messages] == ["user", "assistant", "user"]
    assert seen.messages[1].content[0].input == {"city": "Paris"}
    assert seen.messages[2].content[0].tool_use_id == "call_1"
    assert seen.messages[2].content[0].content[0].text == "sunny, 21C"


async def test_streamed_function_call_arguments(gateway, local):
    local.blocks = [ToolUseBlock(id="call_9", name="lookup", input={"query": "higgs boson", "limit": 3})]
    local.stop_reason = "tool_use"
    tools = [{"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}]
    async with gateway() as url:
        stream = await client(url).responses.create(model="local-model", input="go", tools=tools, stream=True)
        events = [e async for e in stream]
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert deltas == '{"query": "higgs boson", "limit": 3}'
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert done.arguments == deltas
    item = events[-1].response.output[0]
    assert item.type == "function_call" and item.call_id == "call_9" and item.status == "completed"


async def test_json_schema_reaches_provider(gateway, local):
    local.blocks = [TextBlock(text='{"name":"Ada","age":36}')]
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    async with gateway() as url:
        response = await client(url).responses.create(
            model="local-model", input="Who?", reasoning={"effort": "low"},
            text={"format": {"type": "json_schema", "name": "person", "schema": schema, "strict": True}})
    assert response.output_text == '{"name":"Ada","age":36}'
    assert response.text.format.type == "json_schema"
    seen = local.requests[-1]
    assert seen.response_format.type == "json_schema" and seen.response_format.json_schema == schema
    assert seen.response_format.name == "person" and seen.response_format.strict is True
    assert seen.reasoning.effort == "low"


async def test_max_tokens_is_incomplete(gateway, local):
    local.stop_reason = "max_tokens"
    async with gateway() as url:
        response = await client(url).responses.create(model="local-model", input="long story")
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"


async def test_previous_response_id_multi_turn(gateway, local):
    async with gateway() as url:
        api = client(url)
        first = await api.responses.create(model="local-model", input="My name is Ada.", instructions="Be nice.")
        local.blocks = [TextBlock(text="Your name is Ada.")]
        second = await api.responses.create(model="local-model", input="What is my name?",
                                            previous_response_id=first.id)
        fetched = await api.responses.retrieve(second.id)
        assert fetched.output_text == "Your name is Ada."
        seen = local.requests[-1]
        assert [(m.role, m.text()) for m in seen.messages] == [
            ("user", "My name is Ada."), ("assistant", "Hello from the local model."), ("user", "What is my name?")]
        assert seen.system_text() == ""  # instructions do not carry over (as OpenAI documents)
        # a streamed turn is stored too
        stream = await api.responses.create(model="local-model", input="And again?", previous_response_id=second.id,
                                            stream=True)
        final = [e async for e in stream][-1].response
        third = await api.responses.create(model="local-model", input="last", previous_response_id=final.id)
        assert [m.role for m in local.requests[-1].messages] == ["user", "assistant"] * 3 + ["user"]
        await api.responses.delete(third.id)
        with pytest.raises(openai.NotFoundError):
            await api.responses.retrieve(third.id)


async def test_unknown_previous_response_id_is_404(gateway, local):
    async with gateway() as url:
        with pytest.raises(openai.NotFoundError) as caught:
            await client(url).responses.create(model="local-model", input="hi", previous_response_id="resp_nope")
    body = caught.value.body
    assert body["code"] == "previous_response_not_found" and body["param"] == "previous_response_id"
    assert "resp_nope" in body["message"]
    assert local.requests == []


async def test_store_false_is_not_kept(gateway, local):
    async with gateway() as url:
        api = client(url)
        first = await api.responses.create(model="local-model", input="secret", store=False)
        with pytest.raises(openai.NotFoundError):
            await api.responses.create(model="local-model", input="again", previous_response_id=first.id)


async def test_store_size_is_configurable(gateway, local):
    async with gateway({"plugins": {"responses-format": {"store_size": 2}}}) as url:
        api = client(url)
        ids = [(await api.responses.create(model="local-model", input=f"turn {i}")).id for i in range(3)]
        with pytest.raises(openai.NotFoundError):
            await api.responses.retrieve(ids[0])
        assert (await api.responses.retrieve(ids[2])).id == ids[2]


@pytest.mark.parametrize(("body", "param"), [
    ({"input": "hi"}, "model"),
    ({"model": "local-model"}, "input"),
    ({"model": "local-model", "input": 5}, "input"),
    ({"model": "local-model", "input": [{"type": "nonsense"}]}, "input[0].type"),
    ({"model": "local-model", "input": "hi", "tools": [{"type": "function"}]}, "tools[0].name"),
    ({"model": "local-model", "input": "hi", "text": {"format": {"type": "json_schema"}}}, "text.format.schema"),
    ({"model": "local-model", "input": "hi", "reasoning": {"effort": "extreme"}}, "reasoning.effort"),
    ({"model": "local-model", "input": "hi", "max_output_tokens": -1}, "max_output_tokens"),
])
async def test_bad_input_is_a_responses_error(gateway, body, param):
    async with gateway() as url, aiohttp.ClientSession() as http:
        async with http.post(url + "/v1/responses", json=body) as response:
            assert response.status == 400
            error = (await response.json())["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


async def test_malformed_json_and_unknown_model(gateway):
    async with gateway() as url, aiohttp.ClientSession() as http:
        async with http.post(url + "/v1/responses", data=b"{oops") as response:
            assert response.status == 400
            assert "JSON" in (await response.json())["error"]["message"]
        async with http.post(url + "/v1/responses", json={"model": "nope", "input": "hi"}) as response:
            assert response.status == 404
            assert (await response.json())["error"]["code"] == "model_not_found"


async def test_midstream_failure_ends_with_error_and_failed(gateway, local):
    local.blocks = [TextBlock(text="partial answer here")]
    local.fail_midstream = ErrorInfo(status=500, kind="api_error", message="engine crashed", code="engine_error")
    async with gateway() as url:
        stream = await client(url).responses.create(model="local-model", input="hi", stream=True)
        events = [e async for e in stream]
    kinds = [e.type for e in events]
    assert kinds[-2:] == ["error", "response.failed"]
    assert events[-2].message == "engine crashed" and events[-2].code == "engine_error"
    failed = events[-1].response
    assert failed.status == "failed" and failed.error.message == "engine crashed"
    assert [e.sequence_number for e in events] == list(range(len(events)))


async def test_hosted_tools_are_dropped_with_their_choice(gateway, local):
    async with gateway() as url:
        await client(url).responses.create(model="local-model", input="news?", tool_choice="auto",
                                           tools=[{"type": "web_search"}])
    seen = local.requests[-1]
    assert seen.tools == [] and seen.tool_choice is None


async def test_documented_input_shapes(gateway, local):
    png = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUg=="
    async with gateway() as url:
        await client(url).responses.create(model="local-model", input=[
            {"role": "system", "content": "Top rule."},
            {"role": "user", "content": [{"type": "input_text", "text": "what is in this image?"},
                                         {"type": "input_image", "image_url": png, "detail": "low"},
                                         {"type": "input_image", "image_url": "https://example.com/cat.jpg"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "A cat."}]},
            {"type": "message", "role": "developer", "content": "Answer in French."},
            {"type": "web_search_call", "id": "ws_1", "status": "completed",
             "action": {"type": "search", "query": "cats"}},
            {"role": "user", "content": "Encore?"},
        ])
    seen = local.requests[-1]
    assert seen.system_text() == "Top rule.\n\nAnswer in French."
    user = seen.messages[0].content
    assert user[1].media_type == "image/png" and user[1].data == "iVBORw0KGgoAAAANSUhEUg==" and user[1].detail == "low"
    assert user[2].url == "https://example.com/cat.jpg"
    assert [(m.role, m.text()) for m in seen.messages[1:]] == [("assistant", "A cat."), ("user", "Encore?")]


async def test_input_tokens_endpoint(gateway, local):
    async with gateway() as url, aiohttp.ClientSession() as http:
        body = {"model": "local-model", "instructions": "be brief", "input": "one two three"}
        async with http.post(url + "/v1/responses/input_tokens", json=body) as response:
            assert response.status == 200
            counted = await response.json()
    assert counted == {"object": "response.input_tokens", "input_tokens": 5}
    assert local.requests[-1].system_text() == "be brief"


async def test_input_items_of_a_stored_response(gateway, local):
    async with gateway() as url:
        api = client(url)
        response = await api.responses.create(model="local-model", input=[
            {"role": "user", "content": "first"}, {"role": "assistant", "content": "reply"},
            {"type": "message", "role": "user", "id": "msg_mine", "content": [{"type": "input_text", "text": "last"}]}])
        newest_first = [item async for item in api.responses.input_items.list(response.id)]
        page = await api.responses.input_items.list(response.id, order="asc", limit=2)
        rest = await api.responses.input_items.list(response.id, order="asc", after=page.data[-1].id)
        plain = await api.responses.create(model="local-model", input="just text")
        single = await api.responses.input_items.list(plain.id)
    assert [i.content[0].text for i in newest_first] == ["last", "reply", "first"]
    assert newest_first[0].id == "msg_mine" and all(i.id for i in newest_first)
    assert [i.content[0].text for i in page.data] == ["first", "reply"] and page.has_more
    assert [i.id for i in rest.data] == ["msg_mine"] and not rest.has_more
    assert single.data[0].role == "user" and single.data[0].content[0].text == "just text"
