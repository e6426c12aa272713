"""Unpacking uploaded bundle archives without trusting them.

An upload is a ``.tar`` (optionally gzip, bzip2 or xz compressed) of a bundle
directory's files. An archive comes from the network, so it is read member by
member and refused, before anything touches the disk, when

* a member is not a regular file (symbolic and hard links, devices, FIFOs);
* a name is absolute, contains ``..``, a backslash or a NUL, or is nested
  deeper than one top-level folder;
* a file has a suffix outside :data:`mlaas4hep.bundle.ALLOWED_SUFFIXES`
  (ONNX, JSON, text, safetensors, keras): no pickle, no Python;
* there are too many members, a member is too large, or the archive expands
  to more than ``max_total`` bytes (the sizes are counted while decompressing,
  so a "zip bomb" cannot fill the disk: the tar headers are not trusted).

Files may sit at the archive root (``tar -C bundle -czf b.tgz .``) or under a
single top-level folder (``tar -czf b.tgz bundle/``); either way they come out
flat. Nothing is ever extracted with :meth:`tarfile.TarFile.extractall`.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path, PurePosixPath

from .bundle import ALLOWED_SUFFIXES, BundleError

#: Default limits: what one bundle may hold.
MAX_MEMBERS = 64
MAX_MEMBER_BYTES = 512 * 1024 * 1024
MAX_TOTAL_BYTES = 1024 * 1024 * 1024
_CHUNK = 1 << 20


def read_archive(
    data: bytes,
    max_members: int = MAX_MEMBERS,
    max_member: int = MAX_MEMBER_BYTES,
    max_total: int = MAX_TOTAL_BYTES,
    suffixes: tuple[str, ...] = ALLOWED_SUFFIXES,
) -> dict[str, bytes]:
    """Check an archive and return its files as ``{file name: content}``.

    ``suffixes``: the file types it may hold (a bundle's by default; a training
    job's folder also holds its model file, ``.py``).

    Raises :class:`~mlaas4hep.bundle.BundleError` with the reason when the
    archive is unreadable or breaks one of the rules above.
    """
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")  # noqa: SIM115 (closed below)
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        raise BundleError(f"the upload is not a readable tar archive (.tar, .tar.gz): {err}") from None
    files: dict[str, bytes] = {}
    total = 0
    count = 0
    prefix: str | None = None
    try:
        with tar:
            for member in tar:
                count += 1
                if count > max_members:
                    raise BundleError(f"the archive holds more than {max_members} members")
                parts = _check_name(member.name)
                if member.isdir():
                    if len(parts) > 1:
                        raise BundleError(f"archive member {member.name!r}: nested folders are not allowed")
                    continue
                if not member.isfile():
                    kind = "link" if (member.issym() or member.islnk()) else "special file"
                    raise BundleError(
                        f"archive member {member.name!r} is a {kind}: only regular files are allowed"
                    )
                if len(parts) > 2:
                    raise BundleError(f"archive member {member.name!r}: nested folders are not allowed")
                if len(parts) == 2:
                    if prefix is None:
                        prefix = parts[0]
                    if parts[0] != prefix:
                        raise BundleError(
                            "the archive must hold one bundle: files at its root or in one folder"
                        )
                fname = parts[-1]
                if not fname.endswith(suffixes):
                    raise BundleError(
                        f"archive member {member.name!r} has a type a bundle may not hold "
                        f"(allowed: {', '.join(suffixes)})"
                    )
                if fname in files:
                    raise BundleError(f"archive member {fname!r} appears twice")
                if member.size > max_member:
                    raise BundleError(
                        f"archive member {member.name!r} is larger than the size limit ({max_member} bytes)"
                    )
                content = _read_member(tar, member, max_member, max_total - total)
                total += len(content)
                files[fname] = content
    except BundleError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError, UnicodeError) as err:
        raise BundleError(f"the archive is corrupt: {type(err).__name__}: {err}") from None
    if not files:
        raise BundleError("the archive holds no files")
    return files


def _check_name(name: str) -> list[str]:
    if not name or "\\" in name or "\x00" in name:
        raise BundleError(f"archive member name {name!r} is not allowed")
    if name.startswith("/") or PurePosixPath(name).is_absolute():
        raise BundleError(f"archive member {name!r} has an absolute path")
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise BundleError(f"archive member {name!r} points outside the bundle ('..')")
    if not parts:
        parts = ["."]
    return parts


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, max_member: int, budget: int) -> bytes:
    f = tar.extractfile(member)
    if f is None:  # pragma: no cover - isfile() members always have data
        raise BundleError(f"archive member {member.name!r} cannot be read")
    limit = min(max_member, budget)
    out = bytearray()
    while True:
        block = f.read(_CHUNK)
        if not block:
            break
        out += block
        if len(out) > limit:
            raise BundleError("the archive expands to more than the size limit")
    return bytes(out)


def pack_directory(path: str | Path) -> bytes:
    """A ``.tar.gz`` of a bundle directory's files at the archive root (what ``/upload`` takes)."""
    path = Path(path)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for f in sorted(path.iterdir()):
            if f.is_file() and f.name.endswith(ALLOWED_SUFFIXES):
                tar.add(f, arcname=f.name, recursive=False)
    return buf.getvalue()
