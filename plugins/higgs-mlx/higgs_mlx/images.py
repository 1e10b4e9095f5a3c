"""Images for local vision models: find them in a request, fetch and decode them, safely.

Every ``ImageBlock`` of a chat request (user turns, assistant turns, inside tool results) is loaded in
conversation order: inline base64 (Anthropic ``base64`` sources, OpenAI data URLs), or an ``http(s)`` URL
fetched with a size limit and a timeout. URLs that resolve to private, loopback, link-local or otherwise
non-public addresses are refused unless the operator allows them (``[vision] allow_private_urls = true``);
the check runs in the connector's resolver, so a DNS answer that changes between check and connect
(rebinding) is caught too, and redirects are followed by hand so every hop is checked.

Decoding uses Pillow: PNG, JPEG, WebP and GIF (first frame), EXIF orientation applied, converted to RGB.
Anything wrong with one image is a 400 ``invalid_image`` that names the image and where it was
(``messages[1].content[0]``), never a 500.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import ipaddress
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from higgs.errors import ConfigError, InvalidRequestError
from higgs.messages import ChatRequest, ImageBlock, ToolResultBlock
from pydantic import BaseModel, ConfigDict, Field, ValidationError

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["FORMATS", "ImageRef", "ImageSettings", "collect_images", "decode_image", "load_images"]

#: Pillow format names accepted.
FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF"})
_MAX_REDIRECTS = 3


class ImageSettings(BaseModel):
    """``[vision]``: how local vision models get their images.

    Attributes:
        allow_private_urls: fetch image URLs that resolve to private, loopback or link-local addresses
            (off by default: a request must not make the server probe its own network).
        max_bytes: largest image accepted, inline or fetched (bytes).
        fetch_timeout: seconds for a whole URL fetch (connect + download).
        max_images: most images in one request.
        max_pixels: largest decoded image (width x height); bigger is refused (decompression bombs).
    """

    model_config = ConfigDict(extra="forbid")

    allow_private_urls: bool = False
    max_bytes: int = Field(20 * 1024 * 1024, ge=1)
    fetch_timeout: float = Field(10.0, gt=0)
    max_images: int = Field(16, ge=1)
    max_pixels: int = Field(64_000_000, ge=1)

    @classmethod
    def from_settings(cls, settings: Any) -> ImageSettings:
        """The ``[vision]`` table of the higgs settings (``HiggsSettings.vision``), validated."""
        section = getattr(settings, "vision", None)
        if isinstance(section, BaseModel):
            table = section.model_dump(include=set(cls.model_fields))
        else:  # a plain table (older kernels kept [vision] as an unknown key)
            extra = getattr(settings, "model_extra", None) or {}
            table = extra.get("vision") or {}
        try:
            return cls.model_validate(table)
        except ValidationError as err:
            raise ConfigError(f"[vision]: {err}") from err


@dataclass(frozen=True)
class ImageRef:
    """An image block and a human label for where it sits in the request."""

    block: ImageBlock
    where: str


def collect_images(request: ChatRequest) -> list[ImageRef]:
    """Every image of the conversation in the order the chat template renders them."""
    refs: list[ImageRef] = []
    for i, message in enumerate(request.messages):
        for j, block in enumerate(message.content):
            if isinstance(block, ImageBlock):
                refs.append(ImageRef(block, f"messages[{i}].content[{j}]"))
            elif isinstance(block, ToolResultBlock):
                for k, inner in enumerate(block.content):
                    if isinstance(inner, ImageBlock):
                        refs.append(ImageRef(inner, f"messages[{i}].content[{j}].content[{k}]"))
    return refs


def _bad(ref: ImageRef, index: int, reason: str) -> InvalidRequestError:
    return InvalidRequestError(f"Image {index + 1} ({ref.where}) cannot be used: {reason}", param=ref.where,
                               code="invalid_image")


def decode_image(data: bytes, *, max_pixels: int) -> Image:
    """Decode image bytes into an RGB Pillow image (first frame of an animation).

    Raises:
        ValueError: not an image, a format other than PNG/JPEG/WebP/GIF, too large, or truncated.
    """
    import warnings

    from PIL import Image as PILImage
    from PIL import ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            image = PILImage.open(io.BytesIO(data))
            if image.format not in FORMATS:
                raise ValueError(f"format {image.format} is not supported (use PNG, JPEG, WebP or GIF)")
            width, height = image.size
            if width * height > max_pixels:
                raise ValueError(f"{width}x{height} pixels is more than the {max_pixels} allowed")
            image.seek(0)
            image.load()
            upright = ImageOps.exif_transpose(image) or image
            return upright.convert("RGB")
    except UnidentifiedImageError as err:
        raise ValueError("the data is not a PNG, JPEG, WebP or GIF image") from err
    except (PILImage.DecompressionBombWarning, PILImage.DecompressionBombError) as err:
        raise ValueError(f"the image is too large: {err}") from err
    except ValueError:
        raise
    except (OSError, SyntaxError, EOFError) as err:  # truncated or corrupt data
        raise ValueError(f"the image data is broken ({err})") from err


def _inline_bytes(ref: ImageRef, index: int, data: str, limit: int) -> bytes:
    if len(data) * 3 // 4 > limit:
        raise _bad(ref, index, f"it is larger than {limit} bytes")
    try:
        return base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError) as err:
        raise _bad(ref, index, "the base64 data is invalid") from err


def _parse_data_url(url: str) -> str | None:
    """The base64 payload of a ``data:...;base64,`` URL, else None."""
    head, sep, payload = url.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        return None
    return payload


def is_public_address(address: str) -> bool:
    """Whether an IP address is a global unicast address (not private, loopback, link-local, ...)."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return bool(ip.is_global) and not ip.is_multicast


class _PublicOnlyResolver:
    """An aiohttp resolver that refuses host names resolving to any non-public address."""

    def __init__(self) -> None:
        from aiohttp.resolver import DefaultResolver

        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> Any:
        hosts = await self._inner.resolve(host, port, family)
        blocked = [h["host"] for h in hosts if not is_public_address(h["host"])]
        if blocked:
            raise _PrivateAddressError(f"{host} resolves to a non-public address ({blocked[0]})")
        return hosts

    async def close(self) -> None:
        await self._inner.close()


class _PrivateAddressError(OSError):
    """A URL points at a private, loopback or link-local address."""


async def _fetch(ref: ImageRef, index: int, url: str, settings: ImageSettings) -> bytes:
    import aiohttp

    resolver: Any = None if settings.allow_private_urls else _PublicOnlyResolver()
    connector = aiohttp.TCPConnector(resolver=resolver, force_close=True)
    timeout = aiohttp.ClientTimeout(total=settings.fetch_timeout)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            for _ in range(_MAX_REDIRECTS + 1):
                parts = urlsplit(url)
                if parts.scheme not in ("http", "https") or not parts.hostname:
                    raise _bad(ref, index, "only http(s) URLs and base64 data can be fetched")
                host = parts.hostname
                if not settings.allow_private_urls and _is_ip(host) and not is_public_address(host):
                    raise _bad(ref, index, f"the URL points at a non-public address ({host}); an operator "
                                           "can allow this with [vision] allow_private_urls = true")
                async with session.get(url, allow_redirects=False) as response:
                    if response.status in (301, 302, 303, 307, 308) and "Location" in response.headers:
                        url = urljoin(url, response.headers["Location"])
                        continue
                    if response.status >= 400:
                        raise _bad(ref, index, f"fetching the URL failed with HTTP {response.status}")
                    declared = response.content_length
                    if declared is not None and declared > settings.max_bytes:
                        raise _bad(ref, index, f"it is larger than {settings.max_bytes} bytes")
                    body = bytearray()
                    async for piece in response.content.iter_chunked(64 * 1024):
                        body += piece
                        if len(body) > settings.max_bytes:
                            raise _bad(ref, index, f"it is larger than {settings.max_bytes} bytes")
                    return bytes(body)
            raise _bad(ref, index, f"the URL redirects more than {_MAX_REDIRECTS} times")
    except InvalidRequestError:
        raise
    except TimeoutError as err:
        raise _bad(ref, index, f"fetching the URL took longer than {settings.fetch_timeout:g} s") from err
    except aiohttp.ClientConnectorError as err:
        cause = err.os_error if isinstance(err.os_error, _PrivateAddressError) else None
        if cause is not None:
            raise _bad(ref, index, f"{cause}; an operator can allow this with [vision] "
                                   "allow_private_urls = true") from err
        raise _bad(ref, index, f"the URL cannot be reached ({err.os_error or err})") from err
    except (aiohttp.ClientError, OSError) as err:
        raise _bad(ref, index, f"fetching the URL failed ({type(err).__name__}: {err})") from err


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return False
    return True


async def _image_bytes(ref: ImageRef, index: int, settings: ImageSettings) -> bytes:
    block = ref.block
    if block.data is not None:
        return _inline_bytes(ref, index, block.data, settings.max_bytes)
    url = (block.url or "").strip()
    if not url:
        raise _bad(ref, index, "it has neither data nor a URL")
    if url.startswith("data:"):
        payload = _parse_data_url(url)
        if payload is None:
            raise _bad(ref, index, "only base64 data URLs are supported")
        return _inline_bytes(ref, index, payload, settings.max_bytes)
    return await _fetch(ref, index, url, settings)


async def load_images(refs: list[ImageRef], settings: ImageSettings) -> list[Image]:
    """Fetch (concurrently) and decode every image; the first problem is a 400 naming the image.

    Decoding runs in a worker thread, so the event loop never waits on Pillow.
    """
    if len(refs) > settings.max_images:
        raise InvalidRequestError(f"The request has {len(refs)} images; at most {settings.max_images} are "
                                  "allowed per request.", param="messages", code="too_many_images")
    raw = await asyncio.gather(*(_image_bytes(ref, i, settings) for i, ref in enumerate(refs)))

    def decode_all() -> list[Image]:
        images = []
        for i, (ref, data) in enumerate(zip(refs, raw, strict=True)):
            try:
                images.append(decode_image(data, max_pixels=settings.max_pixels))
            except ValueError as err:
                raise _bad(ref, i, str(err)) from err
        return images

    return await asyncio.to_thread(decode_all)
