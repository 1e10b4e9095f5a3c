"""higgs_mlx.images: inline and URL images, the private-address guard, limits and decoding."""

from __future__ import annotations

import asyncio
import base64
import io

import numpy as np
import pytest
from aiohttp import web
from higgs.errors import ConfigError, InvalidRequestError
from higgs.messages import ChatRequest, ImageBlock, Message, TextBlock, ToolResultBlock
from higgs_mlx.images import ImageRef, ImageSettings, collect_images, decode_image, is_public_address, load_images
from PIL import Image


def _png(size: tuple[int, int] = (40, 30), seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _ref(**block) -> ImageRef:
    return ImageRef(ImageBlock(**block), "messages[0].content[0]")


@pytest.fixture
async def image_server(aiohttp_server):
    png = _png()

    async def image(request: web.Request) -> web.Response:
        return web.Response(body=png, content_type="image/png")

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # no content-length: the limit must hold while streaming
        await response.prepare(request)
        for _ in range(64):
            await response.write(b"\0" * 65536)
        return response

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(body=png)

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    async def hop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/image.png")

    app = web.Application()
    app.router.add_get("/image.png", image)
    app.router.add_get("/big", big)
    app.router.add_get("/slow", slow)
    app.router.add_get("/loop", loop)
    app.router.add_get("/hop", hop)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/"), png


def test_collect_images_in_conversation_order():
    img = ImageBlock(data="AA==", media_type="image/png")
    request = ChatRequest(model="m", messages=[
        Message(role="user", content=[TextBlock(text="a"), img]),
        Message(role="assistant", content=[TextBlock(text="b")]),
        Message(role="user", content=[ToolResultBlock(tool_use_id="t", content=[img]), img]),
    ])
    assert [r.where for r in collect_images(request)] == [
        "messages[0].content[1]", "messages[2].content[0].content[0]", "messages[2].content[1]"]


def test_settings_from_the_vision_table():
    class Settings:
        model_extra = {"vision": {"allow_private_urls": True, "max_bytes": 10}}

    settings = ImageSettings.from_settings(Settings())
    assert settings.allow_private_urls and settings.max_bytes == 10
    Settings.model_extra = {"vision": {"max_byte": 10}}
    with pytest.raises(ConfigError, match="vision"):
        ImageSettings.from_settings(Settings())
    from higgs.settings_loader import build_settings

    settings, warnings = build_settings({"vision": {"fetch_timeout": 2.5, "max_byte": 1}}, "<test>")
    assert ImageSettings.from_settings(settings).fetch_timeout == 2.5
    assert warnings == ["<test>: unknown key 'vision.max_byte' (ignored)"]


@pytest.mark.parametrize("address, public", [
    ("8.8.8.8", True), ("127.0.0.1", False), ("10.1.2.3", False), ("192.168.0.1", False), ("169.254.169.254", False),
    ("::1", False), ("fe80::1", False), ("::ffff:127.0.0.1", False), ("2606:4700::1111", True), ("0.0.0.0", False),
])
def test_public_addresses(address, public):
    assert is_public_address(address) is public


async def test_inline_and_data_url():
    png = _png()
    b64 = base64.b64encode(png).decode()
    images = await load_images([_ref(data=b64, media_type="image/png"),
                                _ref(url=f"data:image/png;base64,{b64}")], ImageSettings())
    assert [im.size for im in images] == [(40, 30), (40, 30)]
    assert all(im.mode == "RGB" for im in images)


async def test_loopback_url_is_refused_by_default(image_server):
    base, _ = image_server
    with pytest.raises(InvalidRequestError, match="allow_private_urls") as err:
        await load_images([_ref(url=base + "/image.png")], ImageSettings())
    assert err.value.info.param == "messages[0].content[0]" and err.value.status == 400
    localhost = base.replace("127.0.0.1", "localhost")
    with pytest.raises(InvalidRequestError, match="non-public address"):
        await load_images([_ref(url=localhost + "/image.png")], ImageSettings())


async def test_url_fetch_when_allowed(image_server):
    base, png = image_server
    settings = ImageSettings(allow_private_urls=True)
    (image,) = await load_images([_ref(url=base + "/hop")], settings)
    assert np.array_equal(np.asarray(image), np.asarray(Image.open(io.BytesIO(png)).convert("RGB")))


@pytest.mark.parametrize("path, settings, message", [
    ("/big", {"max_bytes": 1_000_000}, "larger than 1000000 bytes"),
    ("/slow", {"fetch_timeout": 0.3}, "longer than 0.3 s"),
    ("/missing", {}, "HTTP 404"),
    ("/loop", {}, "redirects more than"),
])
async def test_url_limits(image_server, path, settings, message):
    base, _ = image_server
    with pytest.raises(InvalidRequestError, match=message):
        await load_images([_ref(url=base + path)], ImageSettings(allow_private_urls=True, **settings))


async def test_other_schemes_and_unreachable_hosts():
    with pytest.raises(InvalidRequestError, match="only http"):
        await load_images([_ref(url="file:///etc/passwd")], ImageSettings())
    with pytest.raises(InvalidRequestError, match=r"cannot be reached|failed"):
        await load_images([_ref(url="http://127.0.0.1:9/x.png")], ImageSettings(allow_private_urls=True,
                                                                                 fetch_timeout=2))


async def test_limits_on_count_and_pixels():
    b64 = base64.b64encode(_png()).decode()
    with pytest.raises(InvalidRequestError, match="at most 2"):
        await load_images([_ref(data=b64)] * 3, ImageSettings(max_images=2))
    with pytest.raises(InvalidRequestError, match="pixels"):
        await load_images([_ref(data=b64)], ImageSettings(max_pixels=100))
    with pytest.raises(InvalidRequestError, match="larger than"):
        await load_images([_ref(data=b64)], ImageSettings(max_bytes=50))


def test_gif_first_frame_and_formats():
    frames = [Image.new("RGB", (8, 8), color) for color in ((255, 0, 0), (0, 0, 255))]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:])
    image = decode_image(out.getvalue(), max_pixels=10**6)
    assert image.getpixel((0, 0)) == (255, 0, 0)
    for fmt in ("JPEG", "WEBP", "PNG"):
        buf = io.BytesIO()
        Image.new("RGBA", (5, 4), (0, 255, 0, 128)).convert("RGB" if fmt == "JPEG" else "RGBA").save(buf, format=fmt)
        decoded = decode_image(buf.getvalue(), max_pixels=10**6)
        assert decoded.size == (5, 4) and decoded.mode == "RGB"
    with pytest.raises(ValueError, match="not supported"):
        buf = io.BytesIO()
        Image.new("RGB", (4, 4)).save(buf, format="TIFF")
        decode_image(buf.getvalue(), max_pixels=10**6)
