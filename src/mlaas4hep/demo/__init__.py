"""``mlaas4hep demo``: the MLaaS4HEP ttH(bb) demonstration, end to end and offline.

1. generate ttH(bb) and tt̄ samples (NanoAOD layout);
2. optionally serve them from a local XRootD server and read them via ``root://``;
3. run the specs pass and train MLaaS4HEP's ttH network **streamed**;
4. train the same network **in memory** (the traditional method), same seed and split;
5. evaluate a **cut-based** selection (≥ 4 jets, ≥ 3 b-tags) at its working point;
6. train an **object-level** network (Deep Sets over the jets as a set, with
   their mask) streamed and in memory, and compare it with the flat network
   and the cuts on the same validation events (``objects.py``);
7. start the inference server, upload the bundle over HTTP and query it three
   ways (TFaaS ``/json``, v2 infer with raw branch values, ``predict_root``),
   checking the served scores against in-process ones;
8. print a summary and write ``summary.json`` and a self-contained ``report.html``.

``run.py`` holds the steps, ``report.py`` the plots and the HTML page.
"""

from .run import DemoError, add_demo_command, run_demo

__all__ = ["DemoError", "add_demo_command", "run_demo"]
