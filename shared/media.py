"""Finding media files by media id, the one rule every stage uses.

A media id names a file under a media root either by its file name without extension
(`COCO_val2014_000000000042` -> `val2014/COCO_val2014_000000000042.jpg`, as COCO, GQA,
NLVR2 and the VALUE videos are named) or by its path relative to the root without
extension (`train/12/dev-1-2-img0`).
"""
from __future__ import annotations

import os
import re
import stat
from collections import defaultdict
from pathlib import Path
from typing import Iterator

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")


def media_id_problem(media_id: str) -> str | None:
    """Why `media_id` cannot name a file inside a media root, or None: an absolute path, a
    `..` part (anywhere: `a/../../b` too) or a NUL would let a manifest (or an official file
    a converter passed on) read files outside the root it names. A symlink inside the root
    that points elsewhere is the root owner's choice and stays allowed."""
    parts = media_id.replace("\\", "/").split("/")
    if media_id.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", media_id) or media_id.startswith("~"):
        return "is an absolute path"
    if ".." in parts:
        return "climbs out of the media root ('..')"
    if "\0" in media_id:
        return "holds a NUL character"
    return None


def walk_media_files(root: str | os.PathLike, extensions: tuple[str, ...]) -> Iterator[Path]:
    """Every file under `root` whose name ends with one of `extensions` (not hidden), in
    sorted order, following symlinks to folders (media trees are often assembled from
    links) but entering each folder once, by its own path before any link's: a link to a
    folder it is already inside (a cycle) or one seen by another path is skipped, so the
    walk always ends."""
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []  # a folder reached again through a link: its files are listed already
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames.sort(key=lambda d: (os.path.islink(os.path.join(dirpath, d)), d))  # real folders before links
        for name in sorted(filenames):
            if name.lower().endswith(extensions) and not name.startswith("."):
                yield Path(dirpath) / name


def index_media_files(root: str | os.PathLike, extensions: tuple[str, ...]) -> dict[str, list[Path]]:
    """Map every media id under `root` (stem, and relative path without extension) to the
    files it names; more than one file for an id means the id is ambiguous."""
    root = Path(root)
    by_key: dict[str, list[Path]] = defaultdict(list)
    for p in walk_media_files(root, extensions):
        by_key[p.stem].append(p)
        rel = p.relative_to(root).with_suffix("").as_posix()
        if rel != p.stem:
            by_key[rel].append(p)
    return dict(by_key)


_SPECIAL_FILES = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                  (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def special_file_reason(path: str | os.PathLike, what: str) -> str | None:
    """Why `path` (links followed) cannot be read as `what`, when it is not a regular file:
    opening a FIFO blocks until someone writes to it, and a device like /dev/zero never
    ends; None for a regular file, a folder or a missing path (those have their own reason)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    for test, kind in _SPECIAL_FILES:
        if test(mode):
            return f"is {kind}, not {what}"
    return None


def file_error_reason(error: BaseException, what: str) -> str | None:
    """The reason to report for a media file that could not be opened, when `error` is about
    the file itself rather than its content: "file not found", "is a folder, not <what>",
    "permission denied"; None otherwise (the caller names the decoding problem). `what`:
    "an image file", "a video file". One wording for image and video decoding alike."""
    if isinstance(error, FileNotFoundError):
        return "file not found"
    if isinstance(error, IsADirectoryError):
        return f"is a folder, not {what}"
    if isinstance(error, PermissionError):
        return "permission denied"
    return None
