"""The documents run in the background: one lane from the session's first test, two from the
first document test on.

The documents are independent of each other (each in its own directory, with its own
``$HOME`` and ports, all chosen at once), and most of their time is Python processes starting
(torch, uproot, matplotlib: one core each) and servers waited for. So a lane starts running
them, longest first, as soon as the session starts (``tests/conftest.py``), while the tests
before ``tests/docs`` run; a second lane opens when the document tests are reached
(``tests/docs/test_docs.py``), and each of those waits for its own document's
:class:`DocResult` and reports it as if it had run it.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from .harness import ROOT, Block, BlockError, DocRun, extract, port_sets

#: Blocks that fail today only because of a bug in src/ that another branch fixes:
#: document -> [(text that identifies the block, why)]. A listed block that fails
#: makes its document xfail (the rest of the document still runs); one that passes
#: changes nothing. Remove an entry once its fix is merged.
KNOWN_BUGS: dict[str, list[tuple[str, str]]] = {}

#: A known-bug block that hangs is stopped after this many seconds (the others get harness.BLOCK_TIMEOUT_S).
KNOWN_BUG_TIMEOUT_S = 180

#: The longest documents start first (CI's durations), so that no lane is left with one at the end.
LONGEST_FIRST = [
    "docs/train.md",
    "docs/predict.md",
    "docs/jobs.md",
    "docs/serve.md",
    "docs/ddp.md",
    "docs/scale.md",
]


def known_bug(block: Block) -> str | None:
    """Why ``block`` is expected to fail (:data:`KNOWN_BUGS`), or None."""
    for text, why in KNOWN_BUGS.get(block.doc, []):
        if text in block.code:
            return why
    return None


@dataclass
class DocResult:
    """What running one document gave: the first unexpected failure, the known-bug failures,
    and each block's (where, what was done, wall seconds, CPU seconds)."""

    error: str | None = None
    known_failures: list[str] = field(default_factory=list)
    timings: list[tuple[str, str, float, float]] = field(default_factory=list)


def run_document(doc: str, workdir: Path, ports: dict[int, int], stop: threading.Event) -> DocResult:
    """Run one document's blocks in order, until ``stop`` is set (which stops the running block too)."""
    blocks = extract(ROOT / doc, name=doc)
    run = DocRun(doc, workdir, ports=ports, stop=stop)
    result = DocResult(timings=run.timings)
    try:
        for block in blocks:
            if stop.is_set():
                result.error = f"{doc}: not run to its end (the test session stopped)"
                break
            why = known_bug(block)
            try:
                run.run(block, timeout=KNOWN_BUG_TIMEOUT_S if why else None)
            except BlockError as err:
                if why is None:
                    raise
                result.known_failures.append(f"{block.where} ({why}):\n{err}")
    except BlockError as err:
        logs = run.close()
        result.error = str(err) + ("\n" + "\n".join(logs) if logs else "")
    finally:
        run.close()
    return result


class DocPool:
    """Runs ``docs`` (longest first) on lanes that :meth:`open_lanes` starts; ``results[doc]``
    is each document's future :class:`DocResult`."""

    def __init__(self, docs: list[str], base: Path) -> None:
        self.queue = sorted(
            dict.fromkeys(docs),
            key=lambda d: LONGEST_FIRST.index(d) if d in LONGEST_FIRST else len(LONGEST_FIRST),
        )
        self.results: dict[str, Future[DocResult]] = {d: Future() for d in self.queue}
        self.ports = dict(zip(self.queue, port_sets(len(self.queue))))
        self.base = base
        self.stop = threading.Event()
        self.lanes: list[threading.Thread] = []
        self.lock = threading.Lock()

    def open_lanes(self, n: int) -> None:
        """Run on ``n`` lanes from now on (never fewer than are running)."""
        with self.lock:
            while len(self.lanes) < n and self.queue:
                lane = threading.Thread(target=self._lane, name=f"doc-lane-{len(self.lanes)}", daemon=True)
                self.lanes.append(lane)
                lane.start()

    def _lane(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                if not self.queue:
                    return
                doc = self.queue.pop(0)
            future = self.results[doc]
            if not future.set_running_or_notify_cancel():
                continue
            workdir = self.base / doc.replace("/", "-").replace(".", "-") / "doc"
            try:
                future.set_result(run_document(doc, workdir, self.ports[doc], self.stop))
            except BaseException as err:  # the test of the document reports it
                future.set_exception(err)

    def close(self) -> None:
        """Stop: the running blocks are stopped, the documents not started never start."""
        self.stop.set()
        for future in self.results.values():
            future.cancel()
        for lane in self.lanes:
            lane.join()


def selected_documents(items: list) -> list[str]:
    """The documents whose ``test_document_runs`` the session runs."""
    return [
        item.callspec.params["doc"]
        for item in items
        if getattr(item, "originalname", None) == "test_document_runs" and hasattr(item, "callspec")
    ]
