"""One rank of the DDP test (``tests/train/test_ddp.py`` launches it with torchrun).

``python -m torch.distributed.run --nproc-per-node 2 ... ddp_worker.py CONFIG.json BASE REPORT``

Runs three trainings through :func:`mlaas4hep.train.train` in ``BASE``: ``full``
(uninterrupted), ``part`` stopped by a callback after epoch 0, then ``part``
again with ``resume=True``. Into ``REPORT`` (outside ``BASE``) each rank writes
what the test compares, so nothing here is part of the library:

* ``ids-full-e{epoch}-r{rank}-{k}.npy``: the event ids of every chunk the rank
  read in the full run (a :class:`Dataset` subclass records them);
* ``weights-{run}-r{rank}.safetensors``: the rank's final weights;
* ``writes-r{rank}.json``: every file or directory the rank created, opened for
  writing, renamed or removed under ``BASE`` (Python audit events);
* ``result-r{rank}.json``: metrics and counts, idle steps included.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np


def main(config_path: str, base: str, report: str) -> None:
    base_dir, rep = Path(base).resolve(), Path(report)
    rank = int(os.environ["RANK"])
    writes: list[str] = []

    def audit(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            if isinstance(path, int):
                return
            if mode is not None:
                if not any(c in str(mode) for c in "wax+"):
                    return
            elif not flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                return
        elif event not in ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree", "shutil.move"):
            return
        for a in args:
            if isinstance(a, (str, os.PathLike)) and str(Path(os.fsdecode(a)).resolve()).startswith(
                str(base_dir)
            ):
                writes.append(f"{event} {os.fsdecode(a)}")
                return

    sys.addaudithook(audit)

    from safetensors.numpy import save_file

    from mlaas4hep.io import Dataset
    from mlaas4hep.train import split_config, train
    from mlaas4hep.train.torch_backend import TorchBackend

    idle = {"n": 0}
    step = TorchBackend.idle_step

    def counting_idle_step(self):
        idle["n"] += 1
        step(self)

    TorchBackend.idle_step = counting_idle_step

    class Recording(Dataset):
        """Saves the event ids of every chunk this rank reads."""

        def chunks(self, epoch=0, rank=0, world=1, shuffle=None):
            for k, chunk in enumerate(super().chunks(epoch, rank, world, shuffle)):
                np.save(rep / f"ids-full-e{epoch}-r{rank}-{k}.npy", np.asarray(chunk.event_id, np.int64))
                yield chunk

    cfg = json.loads(Path(config_path).read_text())
    dcfg, _ = split_config(cfg)
    results = {}

    def weights(name: str, result) -> None:
        sd = {k: v.detach().cpu().numpy() for k, v in result.model.state_dict().items()}
        save_file(sd, str(rep / f"weights-{name}-r{rank}.safetensors"))

    full = train(cfg, base_dir / "full", dataset=Recording(dcfg, show_progress=False), show_progress=False)
    weights("full", full)
    results["full"] = {
        "metrics": full.metrics,
        "n_val_local": len(full.source.val),
        "rank": full.rank,
        "world_size": full.world_size,
        "idle_steps": idle["n"],
        "bundle_path": str(full.bundle_path),
    }
    # the full run writes the plots (only rank 0: test_only_rank0_writes); the resumed one is
    # compared by its weights and losses, so it skips them (rank 1 waits for rank 0's at the end)
    no_plots = {"plots": False}
    part = train(
        cfg,
        base_dir / "part",
        show_progress=False,
        callbacks=[lambda rec: rec["epoch"] == 0],
        overrides=no_plots,
    )
    results["part"] = {"interrupted": part.interrupted, "epochs": len(part.history)}
    resumed = train(cfg, base_dir / "part", resume=True, show_progress=False, overrides=no_plots)
    weights("resumed", resumed)
    results["resumed"] = {"metrics": resumed.metrics, "interrupted": resumed.interrupted}
    (rep / f"result-r{rank}.json").write_text(json.dumps(results, default=str))
    (rep / f"writes-r{rank}.json").write_text(json.dumps(writes))


if __name__ == "__main__":
    main(*sys.argv[1:4])
