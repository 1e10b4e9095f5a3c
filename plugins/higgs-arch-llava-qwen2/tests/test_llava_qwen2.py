"""nanoLLaVA end to end: a tiny random-weight llava-qwen2 answers image + text through both APIs exactly as
mlx-vlm's own generation does on the same weights, image and prompt."""

from __future__ import annotations

import base64
import io
import subprocess
import sys

import anthropic
import numpy as np
import openai
import pytest
from higgs import hookimpl
from higgs.testing import build_app, serve_in_thread
from PIL import Image

import higgs_arch_llava_qwen2
from higgs_arch_llava_qwen2 import SPEC
from higgs_arch_llava_qwen2.testing import build_llava_qwen2

QUESTION = "Describe this image."
MAX_TOKENS = 12


def _png(seed: int, size: tuple[int, int] = (300, 200)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_llava_qwen2(tmp_path_factory.mktemp("models") / "tiny-llava", seed=1)


@pytest.fixture(scope="module")
def image() -> bytes:
    return _png(7)


@pytest.fixture(scope="module")
def vlm(model_dir):
    from mlx_vlm import load

    return (*load(str(model_dir)), model_dir)


def _vlm_greedy(vlm, prompt_text: str, images: list[bytes]) -> str:
    """mlx-vlm's own greedy generation (its chat formatting, processor and generate loop), its tokens
    detokenized the way higgs and mlx-lm stream text (mlx-vlm keeps the first token's leading space)."""
    from mlx_lm.tokenizer_utils import load as load_tokenizer
    from mlx_vlm import generate
    from mlx_vlm.prompt_utils import apply_chat_template

    model, processor, model_dir = vlm
    prompt = apply_chat_template(processor, model.config, prompt_text, num_images=len(images))
    pil = [Image.open(io.BytesIO(data)).convert("RGB") for data in images]
    result = generate(model, processor, prompt, image=pil or None, max_tokens=MAX_TOKENS, temperature=0.0,
                      verbose=False)
    assert len(result.token_ids) == MAX_TOKENS
    detok = load_tokenizer(model_dir).detokenizer
    for token in result.token_ids:
        detok.add_token(int(token))
    detok.finalize()
    return str(detok.text)


@pytest.fixture(scope="module")
def reference(vlm, image) -> str:
    return _vlm_greedy(vlm, QUESTION, [image])


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    import higgs_mlx
    from higgs.specs import ArchitectureSpec
    from higgs_mlx.testing import build_tiny_model

    text_model = build_tiny_model("qwen2", tmp_path_factory.mktemp("models") / "tiny-qwen2", seed=2)

    class TextArch:
        @hookimpl
        def higgs_architectures(self):
            return [ArchitectureSpec(name="qwen2", model_types=("qwen2",), module="mlx_lm.models.qwen2")]

    app = build_app({"models": [{"path": str(model_dir), "name": "nano"}, {"path": str(text_model), "name": "text"}]},
                    plugins=[("mlx", higgs_mlx), ("arch-llava-qwen2", higgs_arch_llava_qwen2),
                             ("test-arch-qwen2", TextArch())])
    with serve_in_thread(app, timeout=120) as url:
        yield url


@pytest.fixture
def oai(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)


@pytest.fixture
def claude(server):
    return anthropic.Anthropic(base_url=server, api_key="unused", max_retries=0)


def _oai_image(data: bytes, mime: str = "image/png") -> dict:
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{_b64(data)}"}}


def _claude_image(data: bytes, mime: str = "image/png") -> dict:
    return {"type": "image", "source": {"type": "base64", "media_type": mime, "data": _b64(data)}}


def test_registration_is_cheap():
    code = ("import sys, higgs_arch_llava_qwen2; "
            "bad = [m for m in ('mlx', 'mlx_lm', 'mlx_vlm', 'transformers', 'PIL') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert SPEC.model_types == ("llava-qwen2",) and SPEC.vision and SPEC.vision.endswith(":LlavaQwen2Vision")


def test_entry_point_registers_the_family():
    from importlib.metadata import entry_points

    plugin = {ep.name: ep for ep in entry_points(group="higgs")}["arch-llava-qwen2"].load()
    assert plugin is higgs_arch_llava_qwen2
    assert [spec.model_types for spec in plugin.higgs_architectures()] == [("llava-qwen2",)]


def test_openai_image_matches_mlx_vlm(oai, reference):
    messages = [{"role": "user", "content": [_oai_image(_png(7)), {"type": "text", "text": QUESTION}]}]
    reply = oai.chat.completions.create(model="nano", messages=messages, max_tokens=MAX_TOKENS, temperature=0)
    assert reply.choices[0].message.content == reference
    assert reply.usage.completion_tokens == MAX_TOKENS
    assert reply.usage.prompt_tokens > 729  # the image's 729 positions count as prompt tokens

    stream = oai.chat.completions.create(model="nano", messages=messages, max_tokens=MAX_TOKENS, temperature=0,
                                         stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == reference


def test_anthropic_image_matches_mlx_vlm(claude, reference):
    messages = [{"role": "user", "content": [_claude_image(_png(7)), {"type": "text", "text": QUESTION}]}]
    message = claude.messages.create(model="nano", max_tokens=MAX_TOKENS, messages=messages,
                                     extra_body={"temperature": 0})
    assert message.content[0].text == reference
    assert message.stop_reason == "max_tokens"
    with claude.messages.stream(model="nano", max_tokens=MAX_TOKENS, messages=messages,
                                extra_body={"temperature": 0}) as stream:
        assert "".join(stream.text_stream) == reference


def test_text_only_request_to_vision_model_matches_mlx_vlm(oai, vlm):
    expected = _vlm_greedy(vlm, QUESTION, [])
    reply = oai.chat.completions.create(model="nano", messages=[{"role": "user", "content": QUESTION}],
                                        max_tokens=MAX_TOKENS, temperature=0)
    assert reply.choices[0].message.content == expected


def test_several_images_in_several_turns(oai, reference):
    a, b = _png(7), _png(8, (64, 96))

    def ask(first: bytes, second: bytes) -> str:
        messages = [
            {"role": "user", "content": [_oai_image(first), {"type": "text", "text": "What is this?"}]},
            {"role": "assistant", "content": "A picture."},
            {"role": "user", "content": [{"type": "text", "text": "And this one?"}, _oai_image(second)]},
        ]
        reply = oai.chat.completions.create(model="nano", messages=messages, max_tokens=MAX_TOKENS, temperature=0)
        assert reply.usage.prompt_tokens > 2 * 729
        return str(reply.choices[0].message.content)

    ab, ba, aa = ask(a, b), ask(b, a), ask(a, a)
    assert ab == ask(a, b)  # deterministic
    assert len({ab, ba, aa}) == 3  # both images reach the model, in order


def test_jpeg_webp_gif_are_read(claude):
    pixels = Image.open(io.BytesIO(_png(7)))
    answers = set()
    for fmt, mime in (("JPEG", "image/jpeg"), ("WEBP", "image/webp"), ("GIF", "image/gif")):
        out = io.BytesIO()
        pixels.save(out, format=fmt)
        message = claude.messages.create(model="nano", max_tokens=4, extra_body={"temperature": 0}, messages=[
            {"role": "user", "content": [_claude_image(out.getvalue(), mime), {"type": "text", "text": QUESTION}]}])
        answers.add(message.content[0].text)
    assert answers and all(answers)


@pytest.mark.parametrize("data, reason", [
    (b"not base64 at all!", "base64"),
    (_png(7)[:300], "broken"),
    (b"hello, I am text", "not a PNG"),
])
def test_broken_image_is_a_400_naming_the_part(oai, claude, data, reason):
    payload = data.decode() if reason == "base64" else _b64(data)
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model="nano", max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{payload}"}}]}])
    assert "messages[0].content[1]" in str(err.value) and reason in str(err.value)
    with pytest.raises(anthropic.BadRequestError) as err2:
        claude.messages.create(model="nano", max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": payload}},
            {"type": "text", "text": "look"}]}])
    assert "messages[0].content[0]" in str(err2.value)


def test_unsupported_format_is_a_400(oai):
    out = io.BytesIO()
    Image.open(io.BytesIO(_png(7))).save(out, format="BMP")
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model="nano", max_tokens=4, messages=[{"role": "user", "content": [
            _oai_image(out.getvalue(), "image/bmp")]}])
    assert "BMP" in str(err.value)


def test_image_to_text_only_model_is_a_400(oai, claude, image):
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model="text", max_tokens=4, messages=[{"role": "user", "content": [
            _oai_image(image), {"type": "text", "text": QUESTION}]}])
    assert "text-only" in str(err.value)
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model="text", max_tokens=4, messages=[{"role": "user", "content": [
            _claude_image(image), {"type": "text", "text": QUESTION}]}])


def test_image_marker_in_text_is_a_400(oai, image):
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model="nano", max_tokens=4, messages=[{"role": "user", "content": [
            _oai_image(image), {"type": "text", "text": "compare with <image> please"}]}])
    assert "<image>" in str(err.value)


def test_same_text_different_image_is_never_a_cache_hit(oai, vlm, reference):
    """Image A then image B with the same text: B's answer is mlx-vlm's for B (no reuse of A's KV-cache),
    and A again is A's answer."""
    other = _png(9)
    expected = _vlm_greedy(vlm, QUESTION, [other])
    assert expected != reference

    def ask(data: bytes) -> str:
        reply = oai.chat.completions.create(model="nano", max_tokens=MAX_TOKENS, temperature=0, messages=[
            {"role": "user", "content": [_oai_image(data), {"type": "text", "text": QUESTION}]}])
        return str(reply.choices[0].message.content)

    assert [ask(_png(7)), ask(other), ask(_png(7)), ask(other)] == [reference, expected, reference, expected]


def test_private_image_url_is_a_400_by_default(oai, claude, server):
    url = server + "/v1/models"  # the gateway itself, on loopback
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model="nano", max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTION}]}])
    assert "non-public address" in str(err.value) and "allow_private_urls" in str(err.value)
    with pytest.raises(anthropic.BadRequestError) as err2:
        claude.messages.create(model="nano", max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": url}}, {"type": "text", "text": QUESTION}]}])
    assert "messages[0].content[0]" in str(err2.value)


def test_count_tokens_includes_image_positions(oai, claude):
    content = [_claude_image(_png(7)), {"type": "text", "text": QUESTION}]
    counted = claude.messages.count_tokens(model="nano", messages=[{"role": "user", "content": content}])
    reply = oai.chat.completions.create(model="nano", max_tokens=2, temperature=0, messages=[
        {"role": "user", "content": [_oai_image(_png(7)), {"type": "text", "text": QUESTION}]}])
    assert counted.input_tokens == reply.usage.prompt_tokens > 729


def test_prefix_cache_hits_only_on_the_same_image(oai):
    """The engine's token-keyed prefix cache reuses an image's KV-cache for the same image (the image
    positions carry ids derived from its hash) and never for another image behind the same text."""
    def cached(data: bytes, text: str) -> tuple[int, int, str]:
        reply = oai.chat.completions.create(model="nano", max_tokens=4, temperature=0, messages=[
            {"role": "user", "content": [_oai_image(data), {"type": "text", "text": text}]}])
        details = reply.usage.prompt_tokens_details
        hit = (details.cached_tokens if details else 0) or 0
        return hit, reply.usage.prompt_tokens, reply.choices[0].message.content or ""

    text = "Tell me what is going on in this picture, in detail."
    _, _, cold = cached(_png(21), text)
    hit, total, again = cached(_png(21), text)
    assert hit == total and again == cold  # an exact repeat: the image and the text came from the cache
    part, total, _ = cached(_png(21), text + " Briefly.")
    assert 729 < part < total  # the image and the text up to the new words
    miss, _, _ = cached(_png(22), text)
    assert miss < 729  # at most the text before the image


def test_lone_surrogate_in_text_beside_an_image_is_not_a_500(server):
    """JSON may carry a lone surrogate (``\\ud800``) that UTF-8 tokenizers reject; SDKs cannot send one."""
    import json
    import urllib.request

    body = json.dumps({"model": "nano", "max_tokens": 2, "temperature": 0, "messages": [
        {"role": "user", "content": [_oai_image(_png(7)), {"type": "text", "text": "odd \ud800 text"}]}]},
        ensure_ascii=True).encode()
    request = urllib.request.Request(server + "/v1/chat/completions", data=body,
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        reply = json.loads(response.read())
    assert reply["usage"]["prompt_tokens"] > 729


def test_image_url_when_the_operator_allows_private_addresses(model_dir, reference):
    """``[vision] allow_private_urls = true``: an image URL on loopback is fetched and answers like inline data."""
    import higgs_mlx
    from aiohttp import web

    png = _png(7)

    async def image(request):
        return web.Response(body=png, content_type="image/png")

    images = web.Application()
    images.router.add_get("/cat.png", image)
    app = build_app({"models": [{"path": str(model_dir), "name": "nano"}], "vision": {"allow_private_urls": True}},
                    plugins=[("mlx", higgs_mlx), ("arch-llava-qwen2", higgs_arch_llava_qwen2)])
    with serve_in_thread(images) as image_url, serve_in_thread(app, timeout=120) as url:
        client = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0)
        source = {"type": "url", "url": image_url + "/cat.png"}
        message = client.messages.create(model="nano", max_tokens=MAX_TOKENS, extra_body={"temperature": 0},
                                         messages=[{"role": "user", "content": [
                                             {"type": "image", "source": source}, {"type": "text", "text": QUESTION}]}])
    assert message.content[0].text == reference


def test_concurrent_image_requests_batch_and_match_mlx_vlm(oai, vlm, reference):
    """Image requests running at once (prefilled one by one, decoded in the model's batch) each answer
    exactly as mlx-vlm does alone, beside a text-only request."""
    from concurrent.futures import ThreadPoolExecutor

    other = _png(9)
    expected = {7: reference, 9: _vlm_greedy(vlm, QUESTION, [other]), 0: _vlm_greedy(vlm, QUESTION, [])}
    images = {7: _png(7), 9: other}

    def ask(key: int) -> str:
        content = [_oai_image(images[key]), {"type": "text", "text": QUESTION}] if key else QUESTION
        reply = oai.chat.completions.create(model="nano", max_tokens=MAX_TOKENS, temperature=0,
                                            messages=[{"role": "user", "content": content}])
        return str(reply.choices[0].message.content)

    keys = [7, 9, 0, 9, 7]
    with ThreadPoolExecutor(len(keys)) as pool:
        answers = list(pool.map(ask, keys))
    assert answers == [expected[k] for k in keys]
