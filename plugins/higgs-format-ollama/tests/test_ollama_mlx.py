"""The ``ollama`` client against a real local model: a tiny random-weight llama served by higgs-mlx.

Ollama's answers must equal the Chat Completions answer for the same greedy request, streamed and not.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("higgs_mlx")
pytest.importorskip("mlx_lm")

import higgs_format_ollama
import higgs_mlx
import ollama
import openai
from higgs_mlx.testing import build_tiny_model

from higgs.hookspecs import hookimpl
from higgs.specs import ArchitectureSpec
from higgs.testing import build_app, serve_in_thread

MESSAGES = [{"role": "user", "content": "hello there"}]


class LlamaArch:
    @hookimpl
    def higgs_architectures(self) -> list[ArchitectureSpec]:
        return [ArchitectureSpec(name="llama", model_types=("llama",), module="mlx_lm.models.llama")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = build_tiny_model("llama", tmp_path_factory.mktemp("models") / "tiny", seed=1)
    app = build_app({"models": [{"path": str(model), "name": "tiny"}]},
                    plugins=[("mlx", higgs_mlx), ("arch-llama", LlamaArch()), ("ollama-format", higgs_format_ollama)])
    with serve_in_thread(app, timeout=120) as url:
        yield url


def test_chat_and_generate_match_chat_completions(server):
    reference = openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0).chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=12, temperature=0)
    expected = reference.choices[0].message.content
    client = ollama.Client(host=server)
    options = {"num_predict": 12, "temperature": 0}
    full = client.chat(model="tiny", messages=MESSAGES, options=options, stream=False)
    streamed = list(client.chat(model="tiny", messages=MESSAGES, options=options, stream=True))
    generated = client.generate(model="tiny:latest", prompt="hello there", options=options)
    assert full.message.content == expected
    assert full.prompt_eval_count == reference.usage.prompt_tokens
    assert full.eval_count == reference.usage.completion_tokens
    assert full.done_reason == ("length" if reference.choices[0].finish_reason == "length" else "stop")
    assert "".join(p.message.content for p in streamed) == expected and streamed[-1].done
    assert generated.response == expected
    assert [m.model for m in client.list().models] == ["tiny"]


def test_format_schema_is_constrained(server):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    response = ollama.Client(host=server).chat(model="tiny", messages=MESSAGES, format=schema,
                                                options={"num_predict": 40, "temperature": 0})
    assert isinstance(json.loads(response.message.content)["ok"], bool)
