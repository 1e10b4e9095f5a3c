"""``client.responses`` against a real local model: a tiny random-weight llama served by higgs-mlx.

The Responses answer must equal the Chat Completions answer for the same greedy request (both formats
translate the same canonical request to the same engine call), streamed and not.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("higgs_mlx")
pytest.importorskip("mlx_lm")

import higgs_format_responses
import higgs_mlx
import openai
from higgs_mlx.testing import build_tiny_model

from higgs.hookspecs import hookimpl
from higgs.specs import ArchitectureSpec
from higgs.testing import build_app, serve_in_thread


class LlamaArch:
    @hookimpl
    def higgs_architectures(self) -> list[ArchitectureSpec]:
        return [ArchitectureSpec(name="llama", model_types=("llama",), module="mlx_lm.models.llama")]


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    model = build_tiny_model("llama", tmp_path_factory.mktemp("models") / "tiny", seed=1)
    app = build_app({"models": [{"path": str(model), "name": "tiny"}]},
                    plugins=[("mlx", higgs_mlx), ("arch-llama", LlamaArch()),
                             ("responses-format", higgs_format_responses)])
    with serve_in_thread(app, timeout=120) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def test_responses_match_chat_completions(api):
    chat = api.chat.completions.create(model="tiny", max_tokens=12, temperature=0,
                                       messages=[{"role": "system", "content": "Be brief."},
                                                 {"role": "user", "content": "hello there"}])
    response = api.responses.create(model="tiny", instructions="Be brief.", input="hello there",
                                    max_output_tokens=12, temperature=0)
    assert response.output_text == chat.choices[0].message.content
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert response.usage.output_tokens == chat.usage.completion_tokens
    assert response.status == ("incomplete" if chat.choices[0].finish_reason == "length" else "completed")
    stream = api.responses.create(model="tiny", instructions="Be brief.", input="hello there",
                                  max_output_tokens=12, temperature=0, stream=True)
    events = list(stream)
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == response.output_text
    assert events[-1].type in ("response.completed", "response.incomplete")


def test_json_schema_is_constrained(api):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    response = api.responses.create(model="tiny", input="answer", max_output_tokens=40, temperature=0,
                                    text={"format": {"type": "json_schema", "name": "r", "schema": schema,
                                                     "strict": True}})
    assert isinstance(json.loads(response.output_text)["ok"], bool)


def test_codex_traffic_on_the_local_engine(api):
    """A whole Codex-shaped turn (namespaced and custom tools, developer messages, echoed reasoning and
    calls) is accepted by the engine and streamed back in order."""
    from pathlib import Path

    codex = json.loads((Path(__file__).parent / "fixtures" / "codex_request.json").read_text())
    fields = {k: v for k, v in codex.items() if k != "client_metadata"}
    fields.update(model="tiny", max_output_tokens=8)
    events = list(api.responses.create(**fields, extra_body={"client_metadata": codex["client_metadata"]}))
    assert events[0].type == "response.created"
    assert events[-1].type in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.usage.input_tokens > 0
