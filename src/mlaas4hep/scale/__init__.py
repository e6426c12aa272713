"""Scale-out: running the streaming passes on a Dask cluster.

* :mod:`mlaas4hep.scale.dask` connects to a Dask scheduler (an address, a
  scheduler file, a Dask Gateway cluster, or a private ``LocalCluster``) and
  wraps the client as an executor for :func:`mlaas4hep.io.executor.ordered_map`.
* :mod:`mlaas4hep.scale.reduce` holds the tasks of the specs pass as a
  tree-reduce of per-unit statistics.

Nothing here is imported unless ``executor: dask`` (or a scheduler) is asked for,
so the streaming layer does not need ``distributed`` installed. PyTorch DDP
(torchrun) is training code: :mod:`mlaas4hep.train.ddp`.
"""
