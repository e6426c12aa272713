"""What a model repository's directory holds, read in one scan: models, versions, broken entries.

A repository directory (:mod:`.repository`) holds ``{name}/{version}/`` bundle
directories, or is itself one bundle (KServe's ``/mnt/models``). :func:`scan`
lists them and checks each: a model name must be a name (:func:`check_name`),
a version a canonical integer from 1 to 2**63-1 (:func:`parse_version`), and
its ``bundle.json`` must pass the schema (:mod:`mlaas4hep.bundle_schema`). What
fails is not served but reported, with the reason, in :attr:`Inventory.broken`.

A scan takes no lock: a version another process deletes between the listing
and the check is simply gone, never broken. Each ``bundle.json`` is parsed
again only when its identity changes (inode, mtime, size: the ``sigs`` cache
the caller keeps between scans), and each version is identified by its
directory's inode, so a version deleted and uploaded again is never mistaken
for the old one.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import bundle, bundle_schema
from ..bundle import BundleError
from .errors import InvalidRequest

MAX_VERSION = bundle_schema.MAX_VERSION
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
#: A version as written in a URL, a JSON field or a gRPC message: canonical decimal, no sign, no padding.
VERSION_RE = re.compile(r"[1-9][0-9]{0,18}")

Key = tuple[str, int]
#: ``bundle.json``'s identity (inode, mtime, size) and its parsed content, per version.
Sigs = dict[Key, tuple[tuple[int, int, int], dict[str, Any]]]


def check_name(name: str) -> str:
    """A model name: letters, digits, ``_ . -``; no path separators."""
    if not isinstance(name, str) or not NAME_RE.match(name) or name in (".", ".."):
        raise InvalidRequest(f"invalid model name {name!r}: use letters, digits, '_', '.', '-' (at most 100)")
    return name


def parse_version(version: Any) -> int | None:
    """``None``/``""``/``"latest"`` mean the latest version; otherwise an integer 1 <= v < 2**63.

    A string must be the version's canonical decimal form (``"1"``, never
    ``" 1"``, ``"+1"``, ``"01"`` or a full-width ``"１"``): one version has one
    name, in a URL, a JSON body or a gRPC message alike.
    """
    if version is None or version == "" or version == "latest":
        return None
    msg = (
        f"invalid model version {str(version)[:40]!r}: versions are integers from 1 to 2**63-1, "
        "written in decimal digits without sign, spaces or leading zeros"
    )
    if isinstance(version, bool) or not isinstance(version, (int, str)):
        raise InvalidRequest(msg)
    if isinstance(version, str):
        if not (version.isascii() and VERSION_RE.fullmatch(version)):
            raise InvalidRequest(msg)
        version = int(version)
    v = int(version)
    if not 1 <= v <= MAX_VERSION:
        raise InvalidRequest(msg)
    return v


def is_version_dir(name: str) -> bool:
    """Whether a directory entry is meant as a version (digits), valid or not."""
    return name.isascii() and name.isdigit()


def listdir(path: Path) -> list[str]:
    """Sorted entry names of ``path``; none when it is gone or not a directory."""
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []


@dataclass
class Inventory:
    """One scan's result."""

    index: dict[str, list[int]] = field(default_factory=dict)  # model -> its served versions, sorted
    stamps: dict[Key, int] = field(default_factory=dict)  # version -> its directory's inode
    metas: dict[Key, dict[str, Any]] = field(default_factory=dict)  # version -> its bundle.json
    #: Version directories that are not served, with the reason: ``{"name", "version", "error"}``.
    broken: list[dict[str, Any]] = field(default_factory=list)


def scan(root: Path, single: bool, sigs: Sigs) -> Inventory:
    """The models and versions under ``root`` (``single``: ``root`` is one bundle); ``sigs`` is
    the cache of parsed ``bundle.json`` files, updated in place."""
    found = Inventory()
    if single:
        _scan_single(root, found)
        return found
    for name in listdir(root):
        if not NAME_RE.match(name):
            continue
        vs = []
        for vname in listdir(root / name):
            if not is_version_dir(vname):
                continue
            vdir = root / name / vname
            key = (name, int(vname))
            try:
                reason = _check_version_dir(name, vdir, found.metas, sigs)
                if reason is None:
                    found.stamps[key] = vdir.stat().st_ino
                    vs.append(key[1])
                    continue
            except FileNotFoundError:  # deleted since the listing, by a transaction of another process
                found.metas.pop(key, None)
                continue
            found.broken.append({"name": name, "version": vname, "error": reason})
        if vs:
            found.index[name] = sorted(vs)
    return found


def _scan_single(root: Path, found: Inventory) -> None:
    """The one bundle of a KServe-style directory: named and versioned by its ``bundle.json``."""
    try:
        meta = bundle.read_meta(root, "bundle.json")
        name = check_name(str(meta.get("name", "")))
        v = meta.get("version", 1)
        version = v if isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_VERSION else 1
        found.stamps[(name, version)] = root.stat().st_ino
    except (BundleError, InvalidRequest, OSError) as err:
        found.broken.append({"name": root.name, "version": "1", "error": str(err)})
        return
    found.index[name] = [version]
    found.metas[(name, version)] = meta


def _check_version_dir(name: str, vdir: Path, metas: dict[Key, dict[str, Any]], sigs: Sigs) -> str | None:
    """Why the version directory ``vdir`` cannot be served (None: it can); fills ``metas``.

    Raises :class:`FileNotFoundError` when ``vdir`` was deleted since it was
    listed: that is a change seen in the middle, not a broken entry.
    """
    if len(vdir.name) > 19 or not 1 <= int(vdir.name) <= MAX_VERSION or vdir.name != str(int(vdir.name)):
        return "the version must be an integer from 1 to 2**63-1, written without leading zeros"
    f = vdir / "bundle.json"
    try:
        st = f.stat()
    except OSError:
        if not os.path.lexists(vdir):
            raise FileNotFoundError(vdir) from None
        return "no bundle.json" if vdir.is_dir() else "not a directory"
    sig = (st.st_ino, st.st_mtime_ns, st.st_size)
    key = (name, int(vdir.name))
    cached = sigs.get(key)
    if cached is not None and cached[0] == sig:
        meta = cached[1]
    else:
        try:
            meta = bundle.read_meta(vdir, f"{name}/{vdir.name}")
        except BundleError as err:
            if not os.path.lexists(vdir):
                raise FileNotFoundError(vdir) from None
            return str(err)
        sigs[key] = (sig, meta)
    metas[key] = meta
    return None
