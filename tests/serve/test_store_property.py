"""Random interleavings of repository operations from several processes, with the store's
invariants checked after every step (issue 24): in process on one directory, and against two
real servers sharing it. Fixed seeds, a bounded number of steps."""

from __future__ import annotations

import json
import multiprocessing
import random
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from mlaas4hep import bundle
from mlaas4hep.bundle_archive import pack_directory
from mlaas4hep.serve import errors
from mlaas4hep.serve.repository import Repository

from .conftest import ServerProcess
from .store_helpers import bundle_files, small_bundle
from .test_store import leftovers

NAMES = ("a", "b")
OPS = ("upload", "upload", "upload-auto", "delete", "delete", "load", "unload", "index", "resolve")


def _token(repo: Repository, name: str, v: int) -> str:
    """Which upload a version is (each upload carries its own token in bundle.json's description)."""
    return str(repo.spec(name, v).meta.get("description"))


def _check(
    repo: Repository, root: Path, mine: dict[str, dict[int, str]], deleted: list[tuple[str, int, str]]
) -> list[str]:
    """The invariants, as this process sees the directory now."""
    bad = []
    repo.sync()
    if repo.broken:  # a version half installed or half deleted would show here
        bad.append(f"half-states visible: {repo.broken}")
    for name, vs in mine.items():
        for v, token in vs.items():
            try:
                repo.resolve(name, v)
                if _token(repo, name, v) != token:
                    bad.append(f"acknowledged {name}/{v} was replaced by another upload")
            except errors.ModelNotFound as err:
                bad.append(f"acknowledged {name}/{v} is lost: {err}")
            if not (root / name / str(v) / "bundle.json").is_file():
                bad.append(f"acknowledged {name}/{v} has no directory")
    for name, v, token in deleted:
        try:
            repo.resolve(name, v)
            if _token(repo, name, v) == token:  # the number may be taken again, by a new upload
                bad.append(f"deleted {name}/{v} is resolved")
        except errors.ModelNotFound:
            pass
    listed = repo.index()
    for e in listed:
        if e["state"] == "UNAVAILABLE" and e["reason"] != "unloaded":
            bad.append(f"the index lists a broken entry: {e}")
        elif int(e["version"]) not in repo.versions(e["name"]):
            bad.append(f"the index lists {e} that resolve refuses")
    return bad


def _loadable(repo: Repository, name: str, v: int) -> str | None:
    try:
        p = repo.predictor(name, v)
    except errors.ModelUnloaded:  # another process unloaded the model: the files must still load
        p = bundle.load(repo.path(name, v))
    y = p.predict(np.zeros((2, 4), np.float32))
    return None if y.shape == (2, 1) else f"{name}/{v} answers {y.shape}"


def _worker(root: str, files: dict, seed: int, idx: int, nprocs: int, steps: int, out) -> None:
    rng = random.Random(seed * 1000 + idx)
    repo = Repository(root)
    mine: dict[str, dict[int, str]] = {n: {} for n in NAMES}
    deleted: list[tuple[str, int, str]] = []
    problems: list[str] = []
    k = dict.fromkeys(NAMES, 0)
    counts: dict[str, int] = {}
    meta = json.loads(files["bundle.json"])
    for step in range(steps):
        op, name = rng.choice(OPS), rng.choice(NAMES)
        counts[op] = counts.get(op, 0) + 1
        token = f"process {idx} step {step}"
        upload = {**files, "bundle.json": json.dumps({**meta, "description": token}).encode()}
        try:
            if op == "upload":
                v = idx + 1 + nprocs * k[name]
                k[name] += 1
                repo.install(upload, name, v)
                mine[name][v] = token
            elif op == "upload-auto":
                _, v = repo.install(upload, name)
                mine[name][v] = token
            elif op == "delete" and mine[name]:
                v = rng.choice(sorted(mine[name]))
                repo.delete(name, v)
                deleted.append((name, v, mine[name].pop(v)))
            elif op in ("load", "unload"):
                getattr(repo, op)(name)
            elif op == "index":
                repo.rescan()
            elif op == "resolve" and mine[name]:
                v = rng.choice(sorted(mine[name]))
                problems += [p for p in [_loadable(repo, name, v)] if p]
        except (errors.ModelNotFound, errors.VersionConflict):
            pass  # another process deleted the model, or took the number first: a refusal, not a fault
        except Exception as err:
            problems.append(f"step {step} {op} {name}: {type(err).__name__}: {err}")
        problems += [f"after step {step} ({op} {name}): {b}" for b in _check(repo, Path(root), mine, deleted)]
    out.put((idx, {n: sorted(v) for n, v in mine.items()}, deleted, problems, counts))


def test_random_interleavings_from_several_processes_keep_the_invariants(tmp_path):
    root = tmp_path / "repo"
    files = bundle_files(small_bundle(tmp_path / "b"))
    Repository(root)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    nprocs, steps = 3, 40
    procs = [
        ctx.Process(target=_worker, args=(str(root), files, 24, i, nprocs, steps, out)) for i in range(nprocs)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    problems = [f"process {r[0]}: {p}" for r in results for p in r[3]]
    assert problems == [], problems[:10]
    kept = {n: sorted(v for r in results for v in r[1][n]) for n in NAMES}
    ops = {op: sum(r[4].get(op, 0) for r in results) for op in OPS}
    print(f"\n{nprocs} processes x {steps} steps: {ops}; kept {kept}")
    assert ops["upload"] + ops["upload-auto"] >= 20 and ops["delete"] >= 10
    repo = Repository(root)  # after a clean close: exactly what was acknowledged, nothing else
    assert {n: repo.versions(n) for n in NAMES} == kept
    assert repo.broken == [] and leftovers(root) == []
    for name in repo.names():
        for v in repo.versions(name):
            assert _loadable(repo, name, v) is None


def test_random_interleavings_against_two_servers_on_one_directory(tmp_path):
    """Two servers (replicas) share a directory; two operators each drive one, at random; after
    every step both replicas must agree within 2 s: acknowledged versions served, deleted ones gone."""
    data = pack_directory(small_bundle(tmp_path / "b"))
    repo = tmp_path / "repo"
    servers = [ServerProcess(repo).start(), ServerProcess(repo).start()]
    problems: list[str] = []
    delays: list[float] = []
    acked: dict[str, set[int]] = {n: set() for n in NAMES}
    deleted: set[tuple[str, int]] = set()
    lock = threading.Lock()

    def agree(check, what: str) -> None:
        t = time.monotonic()
        while True:
            asked = time.monotonic()  # what counts: how stale the answer is, not how slow the request
            if all(check(s) for s in servers):
                break
            if asked - t > 2.0:
                problems.append(f"not every replica {what} within 2 s")
                return
            time.sleep(0.02)
        delays.append(asked - t)

    def served(s: ServerProcess, name: str, v: int) -> bool:
        return httpx.get(s.url + f"/v2/models/{name}/versions/{v}", timeout=30).status_code == 200

    def operator(i: int) -> None:
        rng = random.Random(2400 + i)
        own = servers[i]
        with httpx.Client(timeout=60, headers=own.admin) as c:
            for step in range(25):
                op, name = (
                    rng.choice(("upload", "upload", "delete", "unload", "load", "index")),
                    rng.choice(NAMES),
                )
                if op == "upload":
                    v = i + 1 + 2 * step
                    r = c.post(own.url + f"/upload?name={name}&version={v}", content=data)
                    if r.status_code != 200:
                        problems.append(f"upload {name}/{v}: {r.status_code} {r.text}")
                        continue
                    with lock:
                        acked[name].add(v)
                    agree(lambda s, n=name, v=v: served(s, n, v), f"serves {name}/{v}")
                elif op == "delete":
                    with lock:
                        mine = sorted(v for v in acked[name] if v % 2 == (i + 1) % 2)
                    if not mine:
                        continue
                    v = rng.choice(mine)
                    r = c.delete(own.url + f"/delete/{name}?version={v}")
                    if r.status_code != 200:
                        problems.append(f"delete {name}/{v}: {r.status_code} {r.text}")
                        continue
                    with lock:
                        acked[name].discard(v)
                        deleted.add((name, v))
                    agree(lambda s, n=name, v=v: not served(s, n, v), f"forgets {name}/{v}")
                elif op in ("load", "unload"):
                    r = c.post(own.url + f"/v2/repository/models/{name}/{op}")
                    if r.status_code not in (200, 404):
                        problems.append(f"{op} {name}: {r.status_code} {r.text}")
                else:
                    for s in servers:
                        r = c.post(s.url + "/v2/repository/index")
                        if r.status_code != 200:
                            problems.append(f"index: {r.status_code} {r.text}")
                        elif any(e["state"] == "UNAVAILABLE" and e["reason"] != "unloaded" for e in r.json()):
                            problems.append(f"index shows a half state: {r.json()}")

    try:
        threads = [threading.Thread(target=operator, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(240)
        with lock:
            for name, vs in acked.items():
                for v in vs:
                    if not all(served(s, name, v) for s in servers):
                        problems.append(f"acknowledged {name}/{v} is not served by every replica")
            for name, v in deleted:
                if any(served(s, name, v) for s in servers):
                    problems.append(f"deleted {name}/{v} is still served")
    finally:
        for s in servers:
            s.stop()
    print(f"\n2 replicas: {len(delays)} changes seen by both, slowest after {max(delays, default=0):.3f} s")
    assert problems == [], problems[:10]
    assert len(delays) >= 15
    assert leftovers(repo) == []
    final = Repository(repo)
    assert {n: set(final.versions(n)) for n in NAMES} == acked
