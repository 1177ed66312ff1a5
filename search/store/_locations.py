"""Where checkpoints live: a local folder, or a URL every node of a cluster can reach.

A location is a string: an absolute local path, or a URL of any filesystem pyarrow knows
(``s3://bucket/prefix``, ``gs://...``, ``hdfs://...``, ``file:///shared/folder``; S3 options
such as ``?endpoint_override=host:9000&scheme=http`` ride in the query and stay on every path
made from it). The driver and the trials read and write checkpoints only through these
functions, so one code path serves a laptop and a cluster without a shared disk.

pyarrow's filesystems rather than Ray's checkpoint persistence: the study keeps its own
checkpoint records (retention, retries, forks, ``pretrained: study:NAME``), which Tune's
``storage_path`` layout does not know, and pyarrow ships with Ray already.
"""

from __future__ import annotations

import contextlib
import functools
import posixpath
import shutil
import uuid
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.fs as pafs


def is_url(location: str) -> bool:
    """A URL (checkpoints reach trials through the filesystem API, never as a local folder)."""
    return "://" in location


def join(location: str, *names: str) -> str:
    """``location/names...``, keeping a URL's query (its filesystem options) at the end; in a
    URL each name is percent-encoded, so a study named ``a#1`` or ``b?c`` stays one folder."""
    if not is_url(location):
        return str(Path(location, *names))
    parts = urlsplit(location)
    path = posixpath.join(parts.path.rstrip("/") or "/", *(quote(n, safe="") for n in names))
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def split(location: str) -> tuple[str, str]:
    """(the folder, the file name) of a file's location; a URL's folder keeps its query."""
    if not is_url(location):
        path = Path(location)
        return str(path.parent), path.name
    parts = urlsplit(location)
    folder, name = posixpath.split(parts.path)
    # The name as written, not encoded: join() encodes it again.
    return urlunsplit((parts.scheme, parts.netloc, folder, parts.query, "")), unquote(name)


@functools.lru_cache(maxsize=16)
def _filesystem(scheme: str, netloc: str, query: str) -> pafs.FileSystem:
    return pafs.FileSystem.from_uri(urlunsplit((scheme, netloc, "/", query, "")))[0]


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path in it). Raises ValueError (pyarrow's ArrowInvalid) for a URL whose
    scheme or options pyarrow does not understand."""
    if not is_url(location):
        return pafs.LocalFileSystem(), str(Path(location).resolve())
    parts = urlsplit(location)
    return _filesystem(parts.scheme, parts.netloc, parts.query), _path_in(location)


@functools.lru_cache(maxsize=1024)
def _path_in(location: str) -> str:
    """The path pyarrow gives a URL (built with a filesystem object, so each location is
    parsed once: an S3 filesystem looks up credentials and its region when built)."""
    return pafs.FileSystem.from_uri(location)[1]


def exists(location: str) -> bool:
    filesystem, path = resolve(location)
    return filesystem.get_file_info(path).type == pafs.FileType.File


def delete_files(folder: str, names: tuple[str, ...]) -> None:
    filesystem, path = resolve(folder)
    for name in names:
        target = posixpath.join(path, name) if is_url(folder) else str(Path(path, name))
        if filesystem.get_file_info(target).type == pafs.FileType.File:
            filesystem.delete_file(target)


def delete_folder(folder: str) -> None:
    filesystem, path = resolve(folder)
    if filesystem.get_file_info(path).type == pafs.FileType.Directory:
        filesystem.delete_dir(path)


def copy_files(source: str, target: str, names: tuple[str, ...]) -> bool:
    """Copy the ``names`` that ``source`` holds into ``target``; False if it held none.
    Each copy is seen whole or not at all: an object store stores an object when its stream
    closes; a local file is written under a temporary name, then renamed."""
    copied = False
    for name in names:
        if not exists(join(source, name)):
            continue
        filesystem, path = resolve(join(target, name))
        # Its own temporary name: two attempts of one trial may briefly overlap.
        written = f"{path}.{uuid.uuid4().hex[:8]}.partial"
        filesystem.create_dir(posixpath.dirname(path), recursive=True)
        try:
            with (
                open_input(join(source, name)) as reader,
                filesystem.open_output_stream(written) as out,
            ):
                shutil.copyfileobj(reader, out, 1 << 20)
        except BaseException:
            # Closing the stream stored what was written so far (object stores commit on
            # close, even on an error): remove it, the previous copy stays as it was.
            with contextlib.suppress(OSError):
                filesystem.delete_file(written)
            raise
        filesystem.move(written, path)
        copied = True
    return copied


def open_input(location: str) -> pa.NativeFile:
    filesystem, path = resolve(location)
    return filesystem.open_input_stream(path)


def open_output(location: str) -> pa.NativeFile:
    filesystem, path = resolve(location)
    filesystem.create_dir(posixpath.dirname(path), recursive=True)
    return filesystem.open_output_stream(path)


def download(folder: str, local: Path, names: tuple[str, ...]) -> bool:
    """The ``names`` of ``folder`` into the local folder ``local``; False if none was there."""
    local.mkdir(parents=True, exist_ok=True)
    return copy_files(folder, str(local), names)


def upload(local: Path, folder: str, names: tuple[str, ...]) -> None:
    copy_files(str(local), folder, names)


def folder_size(folder: str) -> tuple[int, int]:
    """(number of files, bytes) under ``folder``."""
    filesystem, path = resolve(folder)
    if filesystem.get_file_info(path).type != pafs.FileType.Directory:
        return 0, 0
    files = [
        info
        for info in filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
        if info.type == pafs.FileType.File
    ]
    return len(files), sum(info.size for info in files)


def probe(location: str) -> None:
    """Write, read back and delete a small file under ``location``; raises OSError or
    ValueError saying why it cannot be used."""
    marker = join(location, f".resnet-hpo-probe-{uuid.uuid4().hex}")  # drivers may start together
    filesystem, path = resolve(marker)
    try:
        with open_output(marker) as out:
            out.write(b"ok")
        with open_input(marker) as reader:
            if reader.read() != b"ok":
                raise OSError(f"{location}: a file written there reads back differently")
    finally:
        with contextlib.suppress(OSError):
            filesystem.delete_file(path)


def rotate(folder: str, latest: str, previous: str) -> None:
    """Copy ``latest`` over ``previous`` inside ``folder`` (server-side on object stores),
    so the generation before an upload stays as a fallback."""
    filesystem, path = resolve(join(folder, latest))
    if filesystem.get_file_info(path).type == pafs.FileType.File:
        filesystem.copy_file(path, resolve(join(folder, previous))[1])
