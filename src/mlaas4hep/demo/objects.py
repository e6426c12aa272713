"""The demo's object-level network: the jets as a set, against the flat network and the cuts.

The flat network (MLaaS4HEP's ttH MLP) sees each event as one vector: the first
six jets' variables, in file order, zero-padded. The object-level network
(:data:`MODEL_FILE`, a Deep Sets / Particle-Flow network) sees the same jets as
a *set* of up to ten objects with a mask (the dataset's ``inputs:`` groups,
:mod:`mlaas4hep.io.groups`), plus event-level features. It is trained the
same two ways, streamed and in memory, with the same seed and the same
validation split: the split hashes the event id (file, entry), so the
validation events are exactly those of the flat network and of the cuts, and
the comparison of :func:`compare` is on the same events.

The summary records what was measured, whatever it is: the AUCs, the signal
efficiency at the cuts' background efficiency, and whether the object-level
network beats the flat one (AUC) and the cuts (signal efficiency at their
background efficiency).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from .. import MODELS_DIR

#: The object-level network: a Deep Sets network over the jets (trains in seconds on a CPU).
MODEL_FILE = MODELS_DIR / "tth_deepsets.py"
#: Per-jet features of the ``jets`` group (a set of up to 10 jets, leading pt first).
JET_FEATURES = ["Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_btagDeepFlavB", "Jet_qgl"]
#: Event-level features of the ``event`` group.
EVENT_FEATURES = ["MET_pt", "nJet", "nMuon", "nElectron"]


def objects_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The flat network's train configuration, with ``inputs:`` groups and the object-level model."""
    out = copy.deepcopy(cfg)
    for key in ("branches", "jagged"):
        out.pop(key, None)
    out["inputs"] = {
        "jets": {"branches": list(JET_FEATURES), "length": 10, "sort_by": "Jet_pt"},
        "event": {"branches": list(EVENT_FEATURES)},
    }
    out["model"] = {"path": str(MODEL_FILE), "name": "tth-deepsets"}
    out["training"] = {**out["training"], "learning_rate": 2e-3}  # the rate the network was tuned at
    return out


def train_objects(cfg: dict[str, Any], out: Path, show_progress: bool | None) -> tuple[Any, Any]:
    """The object-level network trained streamed (``OUT/objects-stream``) and in memory."""
    from ..train import train

    ocfg = objects_config(cfg)
    stream = train(ocfg, out / "objects-stream", show_progress=show_progress)
    memory = train(ocfg, out / "objects-memory", in_memory=True, show_progress=show_progress)
    return stream, memory


def compare(stream: Any, memory: Any, flat: Any, cuts: dict[str, Any]) -> dict[str, Any]:
    """The ``objects`` entry of ``summary.json``: the object-level network against the flat one and the cuts.

    ``flat`` is the flat network's streamed result, ``cuts`` the cut-based
    working point; all are evaluated on the same validation events.
    """
    from .physics import mean_rate, working_points

    s, m, f = stream.metrics, memory.metrics, flat.metrics
    eff = {"stream": working_points(stream, cuts["fpr"]), "memory": working_points(memory, cuts["fpr"])}
    flat_eff = working_points(flat, cuts["fpr"])
    return {
        "model": MODEL_FILE.name,
        "input_shapes": {k: list(v) for k, v in stream.backend.um.input_shapes.items()},
        "auc_stream": float(s["val_auc"]),
        "auc_memory": float(m["val_auc"]),
        "auc_flat": float(f["val_auc"]),
        "n_val": int(s["n_val"]),
        "same_validation_events": int(s["n_val"]) == int(f["n_val"]) == int(cuts["n_val"]),
        "signal_efficiency": eff,
        # at the cuts' background efficiency: the flat network, the object-level one, the cuts
        "signal_efficiency_at_cuts": {
            "objects": eff["stream"]["cuts"],
            "flat": flat_eff["cuts"],
            "cuts": float(cuts["tpr"]),
        },
        "beats_flat": float(s["val_auc"]) > float(f["val_auc"]),
        "beats_cuts": eff["stream"]["cuts"] > float(cuts["tpr"]),
        "events_per_s_stream": mean_rate(s),
        "events_per_s_memory": mean_rate(m),
        "seconds": {"train_stream": float(s["seconds"]), "train_memory": float(m["seconds"])},
    }
