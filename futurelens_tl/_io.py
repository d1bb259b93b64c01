"""The one atomic-write helper and the one sha256 helper of the package (a leaf: no imports).

Every file ``futurelens_tl`` writes (artifacts, checkpoints, HTML, PNG, CSV, JSON, the report)
goes through :func:`atomic_write`:

* the data goes to a temporary file **in the destination folder** with a unique name
  (``.<name>.<random>.fltmp``), so concurrent writers of one path never share a temp file and
  the final ``os.replace`` is atomic (same file system);
* the file is ``fsync``-ed before the rename and the folder after it, so a crash leaves either
  the old file or the complete new one, never a truncated file under the final name;
* the final file gets the normal mode for a new file under the process umask
  (``0o666 & ~umask``, typically ``0o644``), not the ``0o600`` of :func:`tempfile.mkstemp`;
* on any exception (full disk, ``KeyboardInterrupt``) the temp file is removed; temps left by a
  killed process (SIGKILL) are removed by the next write into the same folder once they are
  older than :data:`STALE_TEMP_SECONDS`, or on demand by :func:`clean_stale_temps`.

:func:`sha256_hex` is the one fingerprint helper: it hashes bytes, strings, JSON-able objects
(canonical ``sort_keys`` JSON) and array-likes with a ``numpy()``/``tobytes()`` (tensor bytes).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "STALE_TEMP_SECONDS",
    "TEMP_SUFFIX",
    "atomic_write",
    "clean_stale_temps",
    "dir_mode",
    "file_mode",
    "sha256_hex",
    "write_bytes",
    "write_text",
]

TEMP_SUFFIX = ".fltmp"
"""Suffix of every temporary file written by :func:`atomic_write`."""

STALE_TEMP_SECONDS = 3600.0
"""A temp file older than this is taken as left behind by a killed writer and removed."""

_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    with _UMASK_LOCK:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new regular file gets under the current umask (``0o666 & ~umask``).

    Examples:
        >>> file_mode() & 0o600 == 0o600
        True
    """
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """The mode a new folder gets under the current umask (``0o777 & ~umask``).

    Examples:
        >>> dir_mode() & 0o700 == 0o700
        True
    """
    return 0o777 & ~_umask()


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def clean_stale_temps(
    directory: str | os.PathLike[str], *, older_than: float | int = STALE_TEMP_SECONDS
) -> list[Path]:
    """Remove temp files of :func:`atomic_write` in ``directory`` older than ``older_than`` s.

    Args:
        directory: The folder to clean (not recursive).
        older_than: Minimum age in seconds (``0`` removes every temp, including one that a
            concurrent writer may still be filling: use only when nothing else writes there).

    Returns:
        The removed paths.

    Examples:
        >>> import tempfile
        >>> clean_stale_temps(tempfile.mkdtemp())
        []
    """
    removed: list[Path] = []
    now = time.time()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for e in entries:
        if not (e.name.startswith(".") and e.name.endswith(TEMP_SUFFIX)):
            continue
        try:
            if e.is_file(follow_symlinks=False) and now - e.stat().st_mtime >= older_than:
                os.unlink(e.path)
                removed.append(Path(e.path))
        except OSError:  # raced with another cleaner or the writer's own rename
            pass
    return removed


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[str], Any], *, mode: int | None = None
) -> Path:
    """Call ``write(tmp_path)``, then move the complete file onto ``path`` atomically.

    Args:
        path: Destination file; missing parent folders are created.
        write: Writes the whole file to the path it is given (``lambda tmp: torch.save(x, tmp)``,
            ``fig.savefig``, ``df.to_csv``...).
        mode: Permission bits of the final file (default :func:`file_mode`, the umask's
            normal mode).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        Whatever ``write`` raises; ``path`` is then left untouched and the temp file removed.

    Examples:
        >>> import tempfile, pathlib
        >>> p = atomic_write(pathlib.Path(tempfile.mkdtemp()) / "a.txt",
        ...                  lambda tmp: pathlib.Path(tmp).write_text("hi"))
        >>> p.read_text(), oct(p.stat().st_mode & 0o777) == oct(file_mode())
        ('hi', True)
    """
    final = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(final)
    os.makedirs(directory, exist_ok=True)
    clean_stale_temps(directory)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(final)}.", suffix=TEMP_SUFFIX,
                               dir=directory)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:  # the writer may have closed (or replaced) its handle
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode() if mode is None else mode)
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)
    return Path(final)


def write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`).

    Examples:
        >>> import tempfile, pathlib
        >>> write_text(pathlib.Path(tempfile.mkdtemp()) / "x.json", "{}").read_text()
        '{}'
    """
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding=encoding))


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def _feed(h: Any, part: Any) -> None:
    if isinstance(part, (bytes, bytearray, memoryview)):
        h.update(bytes(part))
    elif isinstance(part, str):
        h.update(part.encode("utf-8"))
    elif hasattr(part, "detach") and hasattr(part, "numpy"):  # torch tensor
        t = part.detach().cpu().contiguous()
        h.update(str(t.dtype).replace("torch.", "").encode() + str(tuple(t.shape)).encode())
        try:
            h.update(t.numpy().tobytes())
        except TypeError:  # bfloat16 has no numpy dtype: hash its bit pattern
            import torch

            h.update(t.view(torch.int16).numpy().tobytes())
    elif hasattr(part, "tobytes") and hasattr(part, "dtype"):  # numpy array
        h.update(str(part.dtype).encode() + str(tuple(part.shape)).encode())
        h.update(part.tobytes())
    elif part is None:
        h.update(b"none")
    else:
        h.update(json.dumps(part, sort_keys=True, default=str).encode("utf-8"))


def sha256_hex(*parts: Any, length: int | None = None) -> str:
    """sha256 of ``parts`` in order, as hex (first ``length`` digits when given).

    Args:
        *parts: ``bytes``, ``str`` (UTF-8), tensors / numpy arrays (dtype, shape and raw
            bytes), ``None``, or any JSON-able object (hashed as canonical ``sort_keys`` JSON).
        length: Keep only this many hex digits (``16`` for cache keys).

    Returns:
        The hex digest.

    Examples:
        >>> sha256_hex(b"abc") == hashlib.sha256(b"abc").hexdigest()
        True
        >>> sha256_hex({"b": 1, "a": 2}, length=8) == sha256_hex({"a": 2, "b": 1}, length=8)
        True
    """
    h = hashlib.sha256()
    for p in parts:
        _feed(h, p)
    d = h.hexdigest()
    return d if length is None else d[:length]
