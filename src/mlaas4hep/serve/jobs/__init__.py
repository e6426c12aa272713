"""Training as a service: ``mlaas4hep serve --jobs`` takes trainings over HTTP and serves what they train.

A physicist submits a training (a configuration and a model file, or
MLaaS4HEP's folder) to ``POST /jobs``, follows it (``GET /jobs/{id}``, its
log), and finds the model served by the server once the job succeeds::

    mlaas4hep client submit train.yaml --model my_model.py
    mlaas4hep client job 20261206-081500-1a2b3c4d --follow

The parts, each small:

* :mod:`.store`: the jobs' state on disk (they survive a restart);
* :mod:`.runner`: where jobs run (processes on this machine, a Dask cluster;
  a Kubernetes ``Job`` template is in ``deploy/k8s/``), never in the server:
  the model file is user code, run only by :mod:`mlaas4hep.train.job` in the
  job's own process;
* :mod:`.manager`: the queue, quotas, and installing the trained bundle;
* :mod:`.routes`: the HTTP API; callers are identified by
  :mod:`mlaas4hep.serve.identity` (the server's token, or OIDC access tokens).

See ``docs/jobs.md``.
"""
