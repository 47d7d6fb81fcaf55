"""Where an input's bytes come from: a local file, a member of a tar shard, or an http(s)
URL. Decoding (`vl.extract.decode`) reads them through `open_input`; every way it can
fail is an `InputError` whose message is the reason recorded for the input.

URLs are fetched with urllib, as img2dataset users expect: a timeout per attempt,
`retries` more attempts after a timeout, a connection error, HTTP 408, 429 or 5xx
(waiting `BACKOFF_S` x 1, 2, 4, ... between them, or what a Retry-After header asks,
up to 30 s), no retry after another HTTP error (404, 403, ...), which is final. A
body that is not an image fails when decoded, with the Content-Type the server gave.
"""
from __future__ import annotations

import http.client
import io
import os
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import BinaryIO

from vl.extract.inputs import MediaInput
from vl.shared.media import file_error_reason, special_file_reason
from vl.shared.version import __version__

USER_AGENT = f"vl-extract/{__version__} (python-urllib; image features for research)"
BACKOFF_S = 1.0  # first wait before a retry; doubles each time
MAX_BACKOFF_S = 30.0
MAX_BODY_BYTES = 256 * 1024 * 1024  # a body larger than this is no image we want in memory
RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class InputError(Exception):
    """An input whose bytes cannot be read; the message is the reason."""


@dataclass(frozen=True)
class FetchSettings:
    timeout_s: float = 10.0
    retries: int = 2

    def longest_s(self) -> float:
        """The longest one URL can take, every attempt and wait included."""
        attempts = 1 + max(0, self.retries)
        return attempts * self.timeout_s + sum(min(BACKOFF_S * 2 ** a, MAX_BACKOFF_S) for a in range(attempts - 1))


@dataclass
class Fetched:
    body: bytes
    content_type: str


def open_input(item: MediaInput, fetch: FetchSettings = FetchSettings(),
               fetched: Fetched | InputError | None = None) -> tuple[BinaryIO, str]:
    """The input's bytes as an open binary file, and a note on what they are for messages
    ("" for files; the Content-Type for URLs). `fetched`: the URL's download, if already
    done (or how it failed). Raises InputError."""
    if item.error:
        raise InputError(item.error)
    if isinstance(fetched, InputError):
        raise fetched
    if item.is_url:
        got = fetched or fetch_url(item.path, fetch)
        return io.BytesIO(got.body), got.content_type
    if item.member:
        return io.BytesIO(read_member(item)), ""
    special = special_file_reason(item.path, "an image file")
    if special:
        raise InputError(special)
    try:
        return open(item.path, "rb"), ""
    except OSError as e:
        raise InputError(file_error_reason(e, "an image file") or f"cannot open: {e}") from None


def read_member(item: MediaInput) -> bytes:
    """A tar member's bytes, by one seek into its shard."""
    member = item.member
    try:
        with open(item.path, "rb") as f:
            f.seek(member.offset)
            data = f.read(member.size)
    except OSError as e:
        raise InputError(f"cannot read shard {item.path}: {file_error_reason(e, 'a tar shard') or e}") from None
    if len(data) < member.size:
        raise InputError(f"shard {item.path} ends inside member {member.name} (truncated shard)")
    return data


def fetch_url(url: str, settings: FetchSettings, sleep=time.sleep) -> Fetched:
    """GET `url` with retries (see the module docstring); raise InputError with the last reason."""
    attempts = 1 + max(0, settings.retries)
    for attempt in range(attempts):
        wait = BACKOFF_S * 2 ** attempt
        try:
            return _get_once(url, settings.timeout_s)
        except urllib.error.HTTPError as e:
            reason = f"HTTP {e.code} {e.reason}".rstrip()
            retry = e.code in RETRY_STATUS
            wait = _retry_after(e.headers.get("Retry-After") if e.headers else None, wait)
        except (TimeoutError, socket.timeout):
            reason, retry = f"timed out after {settings.timeout_s:g} s", True
        except urllib.error.URLError as e:
            inner = e.reason
            if isinstance(inner, (TimeoutError, socket.timeout)):
                reason = f"timed out after {settings.timeout_s:g} s"
            else:
                reason = f"cannot connect: {inner}"
            retry = True
        except (OSError, http.client.HTTPException, ValueError) as e:  # reset or cut short mid-body, bad URL, ...
            reason = f"download failed: {type(e).__name__}: {e}"
            retry = not isinstance(e, (ValueError, http.client.InvalidURL))
        if not retry or attempt == attempts - 1:
            tries = f" (after {attempt + 1} attempts)" if attempt else ""
            raise InputError(f"{reason}{tries}")
        sleep(min(wait, MAX_BACKOFF_S))
    raise AssertionError("unreachable")


def _get_once(url: str, timeout_s: float) -> Fetched:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.5"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        body = response.read(MAX_BODY_BYTES + 1)
        content_type = response.headers.get("Content-Type", "") or ""
    if len(body) > MAX_BODY_BYTES:
        raise InputError(f"body is over {MAX_BODY_BYTES // 2**20} MiB; not fetched")
    return Fetched(body, content_type.split(";")[0].strip())


def _retry_after(header: str | None, default: float) -> float:
    try:
        return max(0.0, float(header)) if header else default
    except ValueError:  # an HTTP date: use our own backoff
        return default


def input_size(f: BinaryIO) -> int:
    """Bytes in an open input (-1 if unknown)."""
    try:
        here = f.tell()
        size = f.seek(0, os.SEEK_END)
        f.seek(here)
        return size
    except OSError:
        return -1
