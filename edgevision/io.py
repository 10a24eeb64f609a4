"""One atomic writer for every file edgevision writes, and one translation of I/O failures.

Every user-visible file (weights, checkpoints, exports, logs, results, plots, sample data,
downloads) is written to a temporary file in the destination's directory, flushed to disk
(fsync) and renamed onto the destination with :func:`os.replace`. Readers never see a
half-written file, and when the write fails (disk full, permission, ...) an existing
destination is left exactly as it was and the temporary file is removed.

The written file gets the permissions a plain ``open(path, "w")`` would give it
(``0o666 & ~umask``), not the ``0o600`` of :func:`tempfile.mkstemp`, so weights written by a
training job can be read by a serving process under another uid, like the logs beside them.

Failures are raised as :class:`WriteError` (an :class:`OSError` keeping the original
``errno``) with a one-line message that names the path and says what happened::

    disk full while writing runs/exp/last.pth
    permission denied writing /srv/models/emo_1m.safetensors

API: :func:`atomic_write` (``write_fn(tmp_path)`` writes the file), :func:`atomic_write_text`,
:func:`atomic_write_bytes`, :func:`atomic_torch_save`, :func:`save_figure`,
:func:`translate_os_error`, :class:`WriteError`, and :func:`as_path`, the one check of a path
argument (read or written): a ``TypeError`` naming the argument for a non-path, a
``ValueError`` for an empty string (``Path("")`` is the current folder).
"""

from __future__ import annotations

import errno as _errno
import io
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "WriteError",
    "as_path",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "current_umask",
    "file_mode",
    "save_figure",
    "translate_os_error",
]

# errno -> message template ({path} is the destination). Several errnos share a meaning.
_MESSAGES = {
    code: text
    for code, text in [
        (getattr(_errno, name, None), text)
        for name, text in [
            ("ENOSPC", "disk full while writing {path}"),
            ("EDQUOT", "disk quota exceeded while writing {path}"),
            ("EFBIG", "file too large for the file system while writing {path}"),
            ("EACCES", "permission denied writing {path}"),
            ("EPERM", "permission denied writing {path}"),
            ("EROFS", "read-only file system: cannot write {path}"),
            ("ENAMETOOLONG", "file name too long: {path}"),
            ("EISDIR", "{path} is a directory; expected a file path"),
            ("ENOTDIR", "a parent of {path} is a file, not a directory"),
            ("EEXIST", "cannot create the directory for {path}: a file with that name exists"),
            ("ENOENT", "cannot write {path}: its directory does not exist"),
            ("EIO", "input/output error while writing {path}"),
            ("ELOOP", "too many levels of symbolic links in {path}"),
        ]
    ]
    if code is not None
}


class WriteError(OSError):
    """A file could not be written. One line naming the path; ``errno`` is the original one.

    An :class:`OSError`, so ``except OSError`` still catches it; the command line prints it as
    one line with a non-zero exit code.
    """

    def __init__(self, errno: int | None, message: str, path: str | os.PathLike | None = None):
        super().__init__(errno, message)
        self.message = message
        self.filename = None if path is None else os.fspath(path)

    def __str__(self) -> str:  # one line, without OSError's "[Errno N] ...: 'path'" decoration
        return self.message

    def __reduce__(self):
        return (type(self), (self.errno, self.message, self.filename))


def as_path(value, arg: str = "path") -> Path:
    """``value`` as a :class:`Path`; TypeError (naming ``arg``) unless it is a str or
    os.PathLike, ValueError when it is empty (``Path("")`` would silently mean ``.``)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise TypeError(f"{arg} must be a path (str or os.PathLike); got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{arg} is an empty string; give a file path")
    return Path(value)


def translate_os_error(exc: BaseException, path: str | os.PathLike) -> WriteError:
    """The :class:`WriteError` for a failure while writing ``path`` (any exception type).

    An :class:`OSError` keeps its errno. A torch serializer error ("inline_container.cc ...
    file write failed", what ``torch.save`` raises when the disk fills) is recognised and
    mapped to ENOSPC when the file system is (nearly) full.
    """
    if isinstance(exc, WriteError):
        return exc
    path = os.fspath(path)
    code = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
    if code is None:
        code = _errno_from_text(exc, path)
    if code in _MESSAGES:
        return WriteError(code, _MESSAGES[code].format(path=path), path)
    detail = (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__).strip()
    detail = detail.splitlines()[0] if detail else type(exc).__name__
    return WriteError(code, f"could not write {path}: {detail}", path)


def _errno_from_text(exc: BaseException, path: str) -> int | None:
    """Guess the errno of a non-OSError write failure (torch's C++ writer loses it)."""
    text = str(exc)
    lowered = text.lower()
    m = re.search(r"\(os error (\d+)\)|\[errno (\d+)\]", lowered)  # Rust / Python wording
    if m:
        return int(m[1] or m[2])
    if "no space left" in lowered:
        return _errno.ENOSPC
    if "permission denied" in lowered:
        return _errno.EACCES
    if "read-only file system" in lowered:
        return _errno.EROFS
    if "inline_container" in lowered or "file write failed" in lowered or "write failed" in lowered:
        return _errno.ENOSPC if _nearly_full(path) else _errno.EIO
    return None


def _foreign_io_error(exc: BaseException) -> bool:
    """A writer's error that may hide an I/O failure: torch's plain RuntimeError (its C++
    serializer) or safetensors' SafetensorError. Subclasses (our own errors) are never read."""
    return type(exc) is RuntimeError or type(exc).__name__ == "SafetensorError"


def _nearly_full(path: str, margin: int = 1 << 20) -> bool:
    """True when the file system holding ``path`` has less than ``margin`` bytes free."""
    d = Path(path).parent
    while not d.exists() and d != d.parent:
        d = d.parent
    try:
        st = os.statvfs(d)
    except (OSError, AttributeError):
        return False
    return st.f_bavail * st.f_frsize < margin


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:  # read-only
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new regular file gets from ``open(path, "w")``: 0o666 minus the umask."""
    return 0o666 & ~current_umask()


# Failures of the write itself whichever file the error names.
_WRITE_ERRNOS = {getattr(_errno, n) for n in ("ENOSPC", "EDQUOT", "EFBIG", "EROFS", "EIO") if hasattr(_errno, n)}


def _about_this_write(exc: OSError, tmp: str, path: Path) -> bool:
    """True when ``exc`` is about writing ``path`` (not, say, about a file write_fn reads)."""
    names = {getattr(exc, "filename", None), getattr(exc, "filename2", None)} - {None}
    if not names or exc.errno in _WRITE_ERRNOS:
        return True
    return any(os.fspath(n) in (tmp, os.fspath(path)) for n in names)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not supported on every file system; the data itself is already synced
    finally:
        os.close(fd)


def _prepare(path: Path) -> None:
    """Create the destination's directory; refuse a directory where the file should go."""
    try:
        if path.is_dir():
            raise WriteError(_errno.EISDIR, _MESSAGES[_errno.EISDIR].format(path=path), path)
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as e:  # a component of the directory is a file
        raise WriteError(_errno.ENOTDIR, _MESSAGES[_errno.ENOTDIR].format(path=path), path) from e
    except WriteError:
        raise
    except OSError as e:  # e.g. ENAMETOOLONG from is_dir(), EACCES from mkdir()
        raise translate_os_error(e, path) from e


def atomic_write(path: str | os.PathLike, write_fn: Callable[[str], object], *, fsync: bool = True,
                 keep_suffix: bool = False) -> None:
    """Write ``path`` atomically: ``write_fn(tmp_path)`` writes a temporary file beside it.

    The temporary file is fsynced and renamed onto ``path`` (``os.replace``), with the mode a
    plain ``open()`` would give (``0o666 & ~umask``). On any failure the temporary file is
    removed, an existing ``path`` keeps its old contents, and the error is raised as a
    one-line :class:`WriteError` (errors that are not about the file, such as a
    ``KeyboardInterrupt`` or a ``TypeError`` from ``write_fn``, propagate unchanged).
    The temporary file is ``.<name>.<random>.tmp`` beside ``path`` (hidden, and no glob for
    the real suffix sees it); ``keep_suffix=True`` appends the destination's suffix
    (``.<name>.<random>.tmp.onnx``) for writers or readers that look at it.
    ``fsync=False`` skips the flush to disk (for many small files whose completeness another
    file records); the write is still all-or-nothing for readers.
    """
    path = as_path(path)
    _prepare(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                   suffix=".tmp" + (path.suffix if keep_suffix else ""))
    except OSError as e:
        raise translate_os_error(e, path) from e
    os.close(fd)
    try:
        try:
            write_fn(tmp)
            os.chmod(tmp, file_mode())
            if fsync:
                with open(tmp, "rb") as f:  # read-only handle: flush the data to disk
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            if not _about_this_write(e, tmp, path):
                raise  # e.g. write_fn could not read its own input: that error, unchanged
            raise translate_os_error(e, path) from e
        except Exception as e:  # C++/Rust writers (torch, safetensors) lose the OSError type
            if not _foreign_io_error(e) or _errno_from_text(e, os.fspath(path)) is None:
                raise  # not an I/O failure (the caller's own error, bad data): unchanged
            raise translate_os_error(e, path) from e
        if fsync:
            _fsync_dir(path.parent)  # make the rename itself durable
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass  # already renamed onto path
        except OSError:
            pass  # nothing better to do; the original error (if any) is more useful


def atomic_write_bytes(path: str | os.PathLike, data: bytes | bytearray | memoryview, *,
                       fsync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # the temporary file, renamed by atomic_write
            f.write(data)

    atomic_write(path, write, fsync=fsync)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` atomically, with a clear error when the disk is full.

    The object is serialized in memory and written by Python, so a full disk is an
    ``OSError(ENOSPC)`` ("disk full while writing PATH"). Writing through torch's own writer
    loses the errno: to a path it fails with "inline_container.cc ... file write failed", and
    to a Python file object whose write fails mid-way it was seen to report "unexpected pos
    896 vs 790" instead (torch 2.14).
    """
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getbuffer())


def save_figure(fig, path: str | os.PathLike, **kwargs) -> None:
    """``fig.savefig(path, **kwargs)`` atomically; the format comes from the suffix by default."""
    path = Path(path)
    fmt = kwargs.pop("format", None) or (path.suffix[1:].lower() or None)
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, **kwargs)
    atomic_write_bytes(path, buf.getbuffer())
