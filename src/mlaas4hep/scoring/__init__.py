"""Scores of a trained bundle written back next to the data, without a server.

``mlaas4hep predict`` (and :func:`predict` in Python) streams ROOT files through
a bundle, applying the preprocessing the model was trained and is served with,
and writes one file per input: a ROOT **friend tree** (default) or Parquet,
holding ``entry``, the event identifiers (``run``, ``luminosityBlock``,
``event``) and the scores, one row per input entry in the input's order::

    $ mlaas4hep predict runs/tth/bundle data/ttH_0.root data/ttbar_0.root -o scores/

    >>> import mlaas4hep
    >>> outs = mlaas4hep.predict("runs/tth/bundle", ["data/ttH_0.root"], "scores/")
    >>> outs[0].path
    PosixPath('scores/ttH_0_scores.root')

and in ROOT::

    auto f = TFile::Open("data/ttH_0.root");
    auto t = f->Get<TTree>("Events");
    t->AddFriend("scores", "scores/ttH_0_scores.root");
    t->Draw("scores.score", "nJet >= 4");

Files are cut into chunks scored on worker processes, as training decodes
(``workers``), so memory stays bounded. This package uses the bundle and the io
layer only: no server is involved.

* ``predict.py``: checking the inputs, the parallel loop, :func:`predict`;
* ``writers.py``: the friend-tree and Parquet writers, the score columns' names;
* the ``mlaas4hep predict`` command is ``mlaas4hep/predictcli.py`` (outside this package,
  whose import loads the streaming layer: the command line registers every command).
"""

from .predict import Output, predict

__all__ = ["Output", "predict"]
