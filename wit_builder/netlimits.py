"""The limits on an image response that `wit download` enforces after the SSRF guard let the
connection through: content type, size, wall-clock time while the body arrives, and the pixel
count its header declares (a decompression bomb is refused before it is decoded)."""
from __future__ import annotations

import io
import time
import urllib.request
import warnings

__all__ = ["LimitExceeded", "check_image_header", "LimitsProcessor"]


class LimitExceeded(ValueError):
    """The response broke a size, type, time or pixel limit."""


def check_image_header(data: bytes, max_pixels: int) -> None:
    """Refuse an image whose header declares more than ``max_pixels`` pixels (no decoding)."""
    from PIL import Image, UnidentifiedImageError
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
    except Image.DecompressionBombError as exc:
        raise LimitExceeded(f"decompression bomb: {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return  # not something Pillow can parse; the decoder downstream decides
    if width * height > max_pixels:
        raise LimitExceeded(f"decompression bomb: {width}x{height} = {width * height} pixels "
                            f"> max {max_pixels}")


class LimitsProcessor(urllib.request.BaseHandler):
    """Rewrites the User-Agent on requests; checks type/size/time/pixels on 2xx responses."""

    handler_order = 1100  # after HTTPErrorProcessor: only final (non-redirect) answers get here

    def __init__(self, policy):  # a wit_builder.netsafety.NetPolicy
        self.policy = policy

    def http_request(self, req):
        req.add_header("User-Agent", self.policy.user_agent)
        req.unredirected_hdrs.pop("User-agent", None)  # urllib's default would win otherwise
        return req

    https_request = http_request

    def http_response(self, req, resp):
        if getattr(resp, "_wit_limited", False) or not 200 <= resp.status < 300:
            return resp
        policy = self.policy
        ctype = resp.headers.get("Content-Type")
        if not policy.content_type_allowed(ctype):
            resp.close()
            raise LimitExceeded(f"content type {ctype!r} not allowed")
        length = resp.headers.get("Content-Length")
        if length and length.strip().isdigit() and int(length) > policy.max_bytes:
            resp.close()
            raise LimitExceeded(f"too many bytes: Content-Length {int(length)} > max {policy.max_bytes}")
        original_read = resp.read
        started = time.monotonic()

        def read(amt=None):
            limit = policy.max_bytes
            want = None if amt is None or amt < 0 else amt
            out = bytearray()
            while want is None or len(out) < want:
                chunk = original_read(65536 if want is None else min(65536, want - len(out)))
                if not chunk:
                    break
                out += chunk
                resp._wit_bytes += len(chunk)
                if resp._wit_bytes > limit:
                    raise LimitExceeded(f"too many bytes: more than max {limit}")
                if policy.max_seconds is not None and time.monotonic() - started > policy.max_seconds:
                    raise LimitExceeded(f"body took longer than {policy.max_seconds}s")
            data = bytes(out)
            if amt is None:
                check_image_header(data, policy.max_pixels)
            return data

        resp._wit_bytes = 0
        resp.read = read
        resp._wit_limited = True
        return resp

    https_response = http_response
