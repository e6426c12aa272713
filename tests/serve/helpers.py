"""Archive builders for upload tests (good and hostile)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path


def targz(members: list[tuple[str, bytes | None, bytes]]) -> bytes:
    """A .tar.gz from ``(name, content, kind)``; kind is b"file", b"dir", b"sym", b"hard", b"fifo"."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content, kind in members:
            info = tarfile.TarInfo(name)
            if kind == b"file":
                info.size = len(content or b"")
                tar.addfile(info, io.BytesIO(content or b""))
                continue
            info.type = {
                b"dir": tarfile.DIRTYPE,
                b"sym": tarfile.SYMTYPE,
                b"hard": tarfile.LNKTYPE,
                b"fifo": tarfile.FIFOTYPE,
            }[kind]
            if kind in (b"sym", b"hard"):
                info.linkname = (content or b"").decode()
            tar.addfile(info)
    return buf.getvalue()


def bundle_members(path: Path, prefix: str = "") -> list[tuple[str, bytes, bytes]]:
    return [(prefix + f.name, f.read_bytes(), b"file") for f in sorted(Path(path).iterdir()) if f.is_file()]
