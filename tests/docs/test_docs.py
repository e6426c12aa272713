"""The documentation is executable: every shell and Python block of README.md and docs/*.md runs.

One test per document (its blocks run in order, in a directory of their own; see
:mod:`tests.docs.harness` for the rules and the ``doc-test`` directives). The documents run
in the background, from the session's first test on (:mod:`tests.docs.pool`); each test
waits for its own document and reports it as if it had run it. On pytest-xdist's workers
(``make test``) there is no pool: each test runs its document, and the workers share them.
"""

from __future__ import annotations

import os
import sys
import textwrap
import threading

import pytest

from .harness import DOCUMENTS, ROOT, Block, BlockError, DocRun, extract, port_sets
from .pool import DocPool, run_document

#: Documents that run at the same time once the document tests are reached (one lane runs
#: them before): two keep both of CI's cores busy.
LANES = max(1, min(2, os.cpu_count() or 1))


@pytest.fixture(scope="module")
def document_runs(doc_pool: DocPool | None):
    """Each selected document's future result, on :data:`LANES` lanes from now on; None where
    there is no pool (on xdist's workers), and each test runs its document itself."""
    if doc_pool is None:
        return None
    doc_pool.open_lanes(LANES)
    return doc_pool.results


@pytest.mark.parametrize("doc", DOCUMENTS)
def test_document_runs(doc, document_runs, tmp_path):
    if document_runs is None:
        result = run_document(doc, tmp_path / "doc", port_sets(1)[0], threading.Event())
    else:
        result = document_runs[doc].result()
    wall, cpu = sum(t[2] for t in result.timings), sum(t[3] for t in result.timings)
    print(f"\n{doc}: {len(result.timings)} blocks in {wall:.1f} s ({cpu:.1f} s CPU)")
    for where, kind, t, c in result.timings:
        print(f"  {where:<22} {kind:<18} {t:6.1f} s {c:6.1f} s CPU")
    if result.error is not None:
        pytest.fail(result.error, pytrace=False)
    if result.known_failures:
        print("\n".join(result.known_failures), file=sys.stderr)
        pytest.xfail("blocks that fail only because of known src bugs:\n" + "\n".join(result.known_failures))


def test_every_document_has_runnable_blocks():
    """The harness finds the documents and their blocks (an extraction bug would run nothing)."""
    assert "README.md" in DOCUMENTS and "docs/serve.md" in DOCUMENTS
    for doc in DOCUMENTS:
        blocks = extract(ROOT / doc, name=doc)
        assert any(b.runs for b in blocks), f"{doc} has no block that runs"


def test_extraction_and_directives(tmp_path):
    md = tmp_path / "t.md"
    md.write_text(
        textwrap.dedent(
            """\
            text
            ```bash
            echo one
            ```
            1. a list item:
               <!-- doc-test: syntax-only (needs CERN network) -->
               ```bash
               xrdcp root://eospublic.cern.ch//eos/f.root .
               ```
            <!-- doc-test: file cfg.yaml -->

            ```yaml
            tree: Events
            ```
            ```console
            $ mlaas4hep serve --repo m \\
                --token-file t
            output line
            ```
            ```
            plain output
            ```
            """
        )
    )
    b = extract(md, "t.md")
    assert [(x.line, x.lang, x.directive) for x in b] == [
        (2, "bash", None),
        (7, "bash", "syntax-only"),
        (12, "yaml", "file"),
        (15, "console", None),
        (20, "", None),
    ]
    assert b[1].code == "xrdcp root://eospublic.cern.ch//eos/f.root .\n"
    assert b[1].arg == "(needs CERN network)" and b[2].arg == "cfg.yaml"
    assert b[3].commands() == "mlaas4hep serve --repo m \\\n    --token-file t\n"
    assert b[3].is_server() and not b[0].is_server()


def test_a_failing_block_fails_with_document_line_and_output(tmp_path):
    """Errors are not swallowed: a non-zero exit, a Python exception and an HTTP error all fail."""
    run = DocRun("t.md", tmp_path / "doc")
    try:
        cases = [
            (Block("t.md", 3, "bash", "true\nls no-such-file\ntrue\n"), "no-such-file"),
            (Block("t.md", 9, "python", "raise RuntimeError('boom')\n"), "RuntimeError: boom"),
            (Block("t.md", 12, "bash", "curl -s http://127.0.0.1:1/nothing\n"), "exited with status"),
            (Block("t.md", 15, "json", '{"a": 1,}\n'), "does not parse"),
            (Block("t.md", 18, "python", "def f(:\n", "syntax-only", "(x)"), "not valid Python"),
        ]
        for block, text in cases:
            with pytest.raises(BlockError) as err:
                run.run(block)
            assert f"t.md:{block.line}" in str(err.value) and text in str(err.value)
        p, g = run.ports[8083], run.ports[8001]
        assert run._ported("--port 8083 localhost:8083 --grpc-port=8001 h:8001 [0.8083]") == (
            f"--port {p} localhost:{p} --grpc-port={g} h:{g} [0.8083]"
        )
        run.run(Block("t.md", 21, "bash", "echo fine > ok.txt\n"))
        assert (tmp_path / "doc" / "ok.txt").read_text() == "fine\n"
    finally:
        run.close()


def test_a_server_block_runs_in_the_background_until_the_document_ends(tmp_path):
    """``mlaas4hep serve`` is started, waited for, reachable on the documented port's stand-in, and stopped."""
    run = DocRun("t.md", tmp_path / "doc")
    try:
        serve = Block(
            "t.md",
            3,
            "bash",
            "echo s3cret-token-0123456789 > token.txt\nmlaas4hep serve --repo models/ --token-file token.txt   # 127.0.0.1:8083\n",
        )
        assert serve.is_server()
        run.run(serve)
        ((_, proc, _),) = run.servers
        run.run(Block("t.md", 9, "bash", "curl -s localhost:8083/v2/health/live\nmlaas4hep client status\n"))
        # an HTTP error answer fails the block, with the server's message (curl -s alone exits 0)
        bad = '{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [0.5]}]}'
        with pytest.raises(BlockError) as err:
            run.run(Block("t.md", 12, "bash", f"curl -s localhost:8083/v2/models/tth/infer -d '{bad}'\n"))
        assert "t.md:12" in str(err.value) and "status 22" in str(err.value) and '"error"' in str(err.value)
    finally:
        logs = run.close()
    assert proc.poll() is not None, "the server outlived its document"
    assert "t.md:3" in logs[0]


@pytest.mark.parametrize("doc", DOCUMENTS)
def test_every_documented_option_exists(doc):
    """Every option of every `mlaas4hep` command a document shows (run or not) is one the parser has."""
    from mlaas4hep.cli import build_parser

    from .options import commands, unknown_options

    parser = build_parser()
    found = commands(ROOT / doc, doc)
    bad = [f"{where}: {opt}" for where, words in found for opt in unknown_options(parser, words)]
    assert not bad, "options the command line does not have:\n" + "\n".join(bad)


def test_the_option_check_finds_what_argparse_refuses(tmp_path):
    from mlaas4hep.cli import build_parser

    from .options import commands, unknown_options

    doc = tmp_path / "doc.md"
    doc.write_text(
        textwrap.dedent("""\
            Run `mlaas4hep train c.yaml --shceduler tcp://x:8786` or:

            <!-- doc-test: syntax-only (a cluster) -->
            ```bash
            MLAAS4HEP_PROGRESS=0 mlaas4hep stream c.yaml --epochs 2 \\
                --scheduler tcp://x:8786 | tail -1
            mlaas4hep -vv client --url http://h:8083 predict-root tth f.root --stop 5 --csv
            mlaas4hep client predict tth --valeus 1,2
            ```

            ```
            mlaas4hep train CONFIG [--out DIR] [--device cpu|cuda|auto] [--epoch N]
            ```
            """)
    )
    found = commands(doc, "doc.md")
    assert found[0][1] == ["stream", "c.yaml", "--epochs", "2", "--scheduler", "tcp://x:8786"]
    parser = build_parser()
    bad = {where: unknown_options(parser, words) for where, words in found}
    assert bad == {
        "doc.md:4 (+1)": [],
        "doc.md:4 (+2)": [],
        "doc.md:4 (+3)": ["--valeus (mlaas4hep client predict)"],
        "doc.md:11 (+1)": ["--epoch (mlaas4hep train)"],
        "doc.md:1": ["--shceduler (mlaas4hep train)"],
    }


def test_the_readme_demo_transcript_has_the_demos_steps():
    """The README shows what `mlaas4hep demo` prints: its steps, all of them, in order."""
    from mlaas4hep.demo.run import STEPS

    from .options import step_pattern, transcript_steps

    shown = transcript_steps((ROOT / "README.md").read_text())
    assert [(n, total) for n, total, _ in shown] == [(i, len(STEPS)) for i in range(1, len(STEPS) + 1)]
    for (n, _, title), template in zip(shown, STEPS):
        assert step_pattern(template).match(title), f"README step {n}: {title!r} is not {template!r}"
