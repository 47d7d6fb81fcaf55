"""Reading a large JSON release file one element at a time, without loading it whole.

Visual Genome's region_descriptions.json is one top-level array of 108k images holding
5.4M regions: `json.load` turns it into several GB of Python objects, while a converter
needs one image at a time. GQA's balanced questions files are one top-level object keyed
by question id; Karpathy's dataset_coco.json and VQA v2's official files are a top-level
object whose one big member is the array ({"images": [...]}, {"questions": [...]}, ...).
`iter_json_array`, `iter_json_object` and `iter_json_array_member` read such a file through a buffer
of `chunk_size` bytes, decode each element with `json.JSONDecoder.raw_decode` and forget
it once the caller has it; memory is the buffer plus the largest element. No dependency.

An element cut by the buffer's end (inside a string, a number, between tokens) is decoded
again once more text is read: a decode error, or a missing `,`/`]` after an element, that
lies in the last few characters of the buffer (or an unterminated string, which only the
buffer's end makes) means "read more", not "malformed". At the end of the file the same
error is a truncated file. Every error is one VLError naming the file, its line, the byte
offset and the element (its index, or its key), and what the file should be.
"""
from __future__ import annotations

import codecs
import json
import os
from pathlib import Path
from typing import Any, Iterator, NoReturn

from vl.shared.errors import VLError

CHUNK_SIZE = 1 << 20  # bytes read at a time
CUT_TAIL = 256  # a problem this close to the buffer's end may be a token cut by it: read more first
_WHITESPACE = " \t\n\r"
_STARTS = {"{": "a JSON object", "[": "a JSON list", '"': "a JSON string"}


def iter_json_array(path: str | os.PathLike, *, what: str, must_be: str = "a JSON list",
                    chunk_size: int | None = None) -> Iterator[Any]:
    """Each element of the file's top-level array, in order. `what` names the file for
    messages ("Visual Genome region_descriptions.json"); `must_be` says what it should be
    ("a JSON list of images")."""
    with _Reader(path, what, chunk_size) as r:
        r.open_container("[", must_be)
        index = 0
        while r.next_item("]", index):
            yield r.value(",]", f"element [{index}]")
            index += 1
        r.close_container()


def iter_json_object(path: str | os.PathLike, *, what: str, must_be: str = "a JSON object",
                     chunk_size: int | None = None) -> Iterator[tuple[str, Any]]:
    """(key, value) of each member of the file's top-level object, in file order. A key
    that repeats is yielded each time (`json.load` would keep only the last)."""
    with _Reader(path, what, chunk_size) as r:
        r.open_container("{", must_be)
        index = 0
        while r.next_item("}", index):
            key = r.member_key(index)
            yield key, r.value(",}", f"member {key!r}")
            index += 1
        r.close_container()


def iter_json_array_member(path: str | os.PathLike, key: str, *, what: str, must_be: str = "a JSON list",
                           others: dict[str, Any] | None = None, chunk_size: int | None = None) -> Iterator[Any]:
    """Each element of the array under `key` in the file's top-level object, in order. The
    other top-level members, before or after it, are decoded one at a time (a key inside
    them is not `key`) and dropped, or stored in `others` when it is given: read it once the
    iteration has ended, as a member after the array is only known then. `must_be` says
    what the array should be ("a JSON list of images"). Memory is the buffer plus the largest
    element or other member. No `key` is an error once the whole file is read; `key` twice,
    once the second is reached."""
    with _Reader(path, what, chunk_size) as r:
        r.open_container("{", f"a JSON object with {key!r}: {must_be}")
        index, found = 0, False
        while r.next_item("}", index):
            name = r.member_key(index)
            if name != key:
                value = r.value(",}", f"member {name!r}")
                if others is not None:
                    others[name] = value
            elif found:
                r.fail(f"member {key!r} appears a second time (json.load would keep only the last one)",
                       r.value_start)
            else:
                found = True
                yield from r.nested_array(key, must_be)
            index += 1
        r.close_container()
    if not found:
        raise VLError(f"{r.path}: has no member {key!r} ({must_be}); is this the {what}?")


def top_level_opener(path: str | os.PathLike, *, what: str) -> str:
    """The file's first character that is not whitespace: '[' for a top-level array, '{'
    for an object ('' for an empty file); read without decoding anything."""
    with _Reader(path, what, 64) as r:
        return r._skip_whitespace()


def _found(first: str) -> str:
    """What a JSON value starting with `first` is, for a message."""
    return _STARTS.get(first) or ("a JSON string, number or literal" if first in "-0123456789tfn"
                                  else f"text starting {first!r}")


class _Reader:
    """A buffered UTF-8 text window on a file: `buf[pos:]` is unread; what was dropped
    before `buf` is counted in bytes and lines, so errors can say where they are."""

    def __init__(self, path: str | os.PathLike, what: str, chunk_size: int | None):
        self.path, self.what, self.chunk_size = Path(path), what, chunk_size or CHUNK_SIZE
        if not self.path.is_file():
            raise VLError(f"{self.path}: no such file (expected the {what})")
        self.decoder = json.JSONDecoder()
        self.text = codecs.getincrementaldecoder("utf-8")()
        self.buf, self.pos = "", 0
        self.value_start = 0  # where the last value() began in `buf`
        self.dropped_bytes, self.dropped_lines, self.read_bytes = 0, 0, 0
        self.eof = False
        self.closer = "]"

    def __enter__(self) -> "_Reader":
        self.file = open(self.path, "rb")
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()

    # -- the buffer --------------------------------------------------------------------
    def _read_more(self, at_least: int = 0) -> bool:
        """Drop what is read (before `pos`), append at least `at_least` more bytes; False at the end."""
        if self.eof:
            return False
        dropped = self.buf[:self.pos]
        self.dropped_bytes += len(dropped) if dropped.isascii() else len(dropped.encode("utf-8"))
        self.dropped_lines += dropped.count("\n")
        self.buf, self.pos = self.buf[self.pos:], 0
        block = self.file.read(max(self.chunk_size, at_least))
        self.eof = not block
        try:
            self.buf += self.text.decode(block, final=self.eof)
        except UnicodeDecodeError as e:
            where = self.read_bytes + e.start
            self.read_bytes += len(block)
            raise VLError(f"{self.path}: byte {where}: not UTF-8 text ({e.reason}); is this the {self.what}?") from None
        self.read_bytes += len(block)
        return True

    def _skip_whitespace(self) -> str:
        """The next character that is not whitespace ('' at the end of the file); `pos` is on it."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in _WHITESPACE:
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._read_more():
                return ""

    # -- the structure -----------------------------------------------------------------
    def open_container(self, opener: str, must_be: str) -> None:
        first = self._skip_whitespace()
        if first != opener:
            found = "an empty file" if not first else _found(first)
            raise VLError(f"{self.path}: must be {must_be}, not {found}; is this the {self.what}?")
        self.pos += 1
        self.closer = "]" if opener == "[" else "}"

    def next_item(self, closer: str, index: int) -> bool:
        """Past the ',' before item `index` (value() left `pos` on it); False after the closer."""
        c = self._skip_whitespace()
        if c == closer:
            self.pos += 1
            return False
        if index > 0:  # c is the ',' value() checked
            self.pos += 1
            if self._skip_whitespace() == closer:
                after = f"element [{index - 1}]" if closer == "]" else f"member {index - 1}"
                self.fail(f"a ',' before the closing '{closer}' (after {after}): not valid JSON")
        elif not c:
            self.fail(f"ends before the first item (no closing '{closer}'): the file is truncated")
        return True

    def member_key(self, index: int) -> str:
        """The key of member `index` of an object; `pos` ends past its ':'."""
        key = self.value(":", f"member {index} (its key)")
        if not isinstance(key, str):
            self.fail(f"member {index}: a key must be a string (got {key!r:.40})", self.value_start)
        self.pos += 1  # the ':'
        return key

    def nested_array(self, key: str, must_be: str) -> Iterator[Any]:
        """The elements of the array that is the value of member `key` (`pos` on it); `pos`
        ends on the ',' or '}' after it."""
        first = self._skip_whitespace()
        if first != "[":
            found = _found(first) if first else "the end of the file"
            self.fail(f"member {key!r} must be {must_be}, not {found}")
        self.pos += 1
        self.closer = "]"
        index = 0
        while self.next_item("]", index):
            yield self.value(",]", f"{key}[{index}]")
            index += 1
        self.closer = "}"
        after = self._skip_whitespace()
        if not after:
            self.fail(f"the file ends after member {key!r} without the closing '}}': the file is truncated")
        if after not in ",}":
            self.fail(f"member {key!r}: not valid JSON (expected ',' or '}}' after it)")

    def value(self, delimiters: str, item: str) -> Any:
        """Decode the JSON value at `pos`, which one of `delimiters` must follow; `pos` ends on that delimiter."""
        self._skip_whitespace()
        while True:
            start, buf = self.pos, self.buf
            try:
                value, end = self.decoder.raw_decode(buf, start)
                after = end
                while after < len(buf) and buf[after] in _WHITESPACE:
                    after += 1
                if after < len(buf) and buf[after] in delimiters:
                    self.pos, self.value_start = after, start
                    return value
                problem, at, cut = f"expected {' or '.join(map(repr, delimiters))} after it", after, False
            except json.JSONDecodeError as e:
                problem, at, cut = e.msg, e.pos, e.msg.startswith("Unterminated string")
            if (cut or len(buf) - at <= CUT_TAIL) and self._read_more(at_least=2 * (len(buf) - start)):
                continue  # maybe cut by the buffer's end: decode it again with more text
            if self.eof and not cut and at >= len(buf) and problem.startswith("expected"):
                self.fail(f"the file ends after {item} without the closing '{self.closer}': the file is "
                          "truncated", at)
            if self.eof and (cut or at >= len(buf)):
                self.fail(f"{item}: the file ends inside it ({problem}): the file is truncated", at)
            self.fail(f"{item}: not valid JSON ({problem})", at)

    def close_container(self) -> None:
        if self._skip_whitespace():
            self.fail(f"text after the closing '{self.closer}': not valid JSON")

    def fail(self, problem: str, at: int | None = None) -> NoReturn:
        at = self.pos if at is None else min(at, len(self.buf))
        before = self.buf[:at]
        line = self.dropped_lines + before.count("\n") + 1
        byte = self.dropped_bytes + (len(before) if before.isascii() else len(before.encode("utf-8")))
        raise VLError(f"{self.path}:{line}: byte {byte}: {problem}; is this the {self.what}?")
