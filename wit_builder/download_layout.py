"""The layout of a `wit download` output folder that the planner (:mod:`wit_builder.download`) and
the workers (:mod:`wit_builder.download_worker`) share: the work folder, shard names and the
error kinds every failed row is given."""
from __future__ import annotations

import re

__all__ = ["WORK", "shard_name", "error_kind", "one_line_error"]

OOM_SHARD_COUNT = 5  # shard ids have 5 digits: 00000.tar
WORK = "_wit"   # IMAGES/_wit: plan, policy, logs, partial files, summary


def shard_name(shard_id: int) -> str:
    return f"{shard_id:0{OOM_SHARD_COUNT}d}"


_KINDS = (
    ("ssrf guard", "ssrf_blocked"),
    ("x-robots-tag", "opted_out"),
    ("content type", "content_type"),
    ("too many bytes", "too_many_bytes"),
    ("decompression bomb", "too_many_pixels"),
    ("image area too large", "too_many_pixels"),
    ("too slow", "too_slow"),            # the request's deadline (--max-seconds) passed
    ("body took longer", "too_slow"),    # the same, as older runs worded it
    ("empty body", "empty_body"),
    ("headers too large", "headers_too_large"),
    ("incompleteread", "truncated"),     # the connection ended before Content-Length bytes
    ("timed out", "timeout"),
    ("unknown url type", "bad_scheme"),
    ("image decoding error", "decode_error"),
    ("image too small", "too_small"),
    ("aspect ratio too large", "aspect_ratio"),
    ("connection refused", "connection_refused"),
    ("connection reset", "connection_reset"),
    ("remote end closed", "connection_reset"),
    ("name or service not known", "dns"),
    ("nodename nor servname", "dns"),
    ("temporary failure in name resolution", "dns"),
    ("certificate", "tls"),
    ("ssl", "tls"),
    ("hash mismatch", "hash_mismatch"),
)


def error_kind(status: str | None, message: str | None) -> str | None:
    """A short, stable category for an img2dataset error message (None on success)."""
    if status == "success":
        return None
    text = (message or "").lower()
    match = re.match(r"http error (\d{3}):", text)
    if match:  # the rest is the server's own reason phrase: don't read kinds into it
        if match.group(1).startswith("3"):  # urllib's words about a redirect it refused
            if "is not allowed" in text and "redirection to url" in text:
                return "bad_scheme"
            if "infinite loop" in text:
                return "redirect_loop"
        return f"http_{match.group(1)}"
    for needle, kind in _KINDS:
        if needle in text:
            return kind
    return "other" if text else "unknown"


def one_line_error(message: str | None) -> str | None:
    """``message`` on one line; OpenCV's multi-line assertion text (img2dataset's resizer hands it
    on as is) becomes a short sentence."""
    if not message:
        return message
    text = message.strip()
    if text.startswith("OpenCV("):
        if "!buf.empty()" in text:
            return "empty body: 0 bytes, nothing to decode"
        text = "image decoding error (OpenCV: " + text.split(" error: ", 1)[-1].strip() + ")"
    return re.sub(r"\s*[\r\n]+\s*", " ", text)
