"""How many cores, workers, replicas and how much network a workload needs, from our own measurements.

``mlaas4hep capacity`` turns a workload into resources with the per-core rates that this project
measured (``bench/RESULTS*.md``; the GPU and 16-core figures from the project brief), and prints
each figure beside its source, so that a facility can check it and replace it with its own
(``--decode-rate``, ``--train-rate``, ...). Two kinds of workload:

* **training**: ``--events N --epochs E --hours H``. Epoch 0 decodes the ROOT files (and writes
  the decoded cache), epochs 1.. read the cache; the network carries the compressed branches
  once. On CPUs every core decodes and trains in turn; with ``--gpus G`` the GPUs train and the
  cores decode, and the cores needed are those that keep epoch 0 within the budget::

      core-seconds = N / decode + N * E / train + N * (E - 1) / cache_read
      cores        = core-seconds / (H * 3600 * efficiency)

* **inference**: ``--infer-rate R`` events/s × ``--inferences-per-event k`` rows, sent as
  ``--rows-per-request`` rows per call (default ``k``: SONIC sends one call per event and model).
  Each call costs the server a fixed CPU time (the protocol's), each row the model's::

      cores    = (requests/s * cpu_per_request + rows/s / rows_per_core) / utilization
      replicas = cores / cores_per_node (one worker per core), plus one spare

  ``utilization`` is 0.7, or 0.5 when ``--latency-ms`` is below the p99 that we measured at
  saturation; a budget below the single-client median cannot be met by adding servers.

The model is linear: per-core rates times cores, one parallel efficiency. It is as good as the
figures, which come from a 2-core shared machine and one 16-core host, for the reference network
(MLP 111-256-256-128-1, float32). Another network changes the training and row rates.
"""

from __future__ import annotations

import argparse
import math
import textwrap
from dataclasses import asdict, dataclass
from typing import Any

from .errors import ConfigError
from .terminal import UsageError, count, json_or, positive_int


@dataclass(frozen=True)
class Figure:
    """A measured (or stated) quantity and where it comes from."""

    value: float
    unit: str
    source: str


#: The per-core figures, with their sources. Ratios and rates are per core unless said otherwise.
FIGURES: dict[str, Figure] = {
    "decode_zlib": Figure(
        1_500_000 / 16,
        "events/s per core",
        "plain uproot decode+pad, 37 NanoAOD-like branches (111 features), ZLIB, 16 processes on "
        "the 16-core H100 host: 1.5M ev/s (../shared/BRIEF.md §4; one process: 230k ev/s; "
        "ours on 2 cores: 373k ev/s, bench/RESULTS.md Streaming)",
    ),
    "decode_lz4": Figure(
        2_600_000 / 16,
        "events/s per core",
        "as decode_zlib with LZ4: 2.6M ev/s over 16 processes (../shared/BRIEF.md §4)",
    ),
    "decode_zstd": Figure(
        2_000_000 / 16,
        "events/s per core",
        "as decode_zlib with ZSTD: 2.0M ev/s over 16 processes (../shared/BRIEF.md §4)",
    ),
    "bytes_zlib": Figure(
        238e6 / 1_000_000,
        "bytes per event read",
        "1,000,000 NanoAOD-like events, 31 branches, ZLIB 4: 238 MB (bench/RESULTS.md Streaming); "
        "only the branches read cross the network",
    ),
    "bytes_lz4": Figure(
        238e6 / 1_000_000 * 63 / 48,
        "bytes per event read",
        "bytes_zlib x 63/48: the same TTree is 63 MB in LZ4, 48 MB in ZLIB 4 (bench/RESULTS.md Formats)",
    ),
    "bytes_zstd": Figure(
        238e6 / 1_000_000,
        "bytes per event read",
        "not measured: ZLIB's size (ZSTD compresses about as well)",
    ),
    "train_cpu": Figure(
        65_821 / 2,
        "events/s per core",
        "MLP 111-256-256-128-1, batch 1024, Adam, cached epochs: 65,821 ev/s on 2 cores "
        "(bench/RESULTS.md Training)",
    ),
    "train_gpu": Figure(
        5_200_000,
        "events/s per GPU",
        "same MLP on one H100, batch 8192, data on the GPU: 5.2M ev/s (../shared/BRIEF.md §4)",
    ),
    "cache_read": Figure(
        1_118_691,
        "events/s per core",
        "first cached epoch, shuffled (buffer 800k events), one process (bench/RESULTS.md Streaming; "
        "8,260,969 ev/s sequential)",
    ),
    "efficiency": Figure(
        0.79,
        "of linear scaling",
        "2 decoding processes gave 1.58x one (bench/RESULTS.md Streaming)",
    ),
    "request_grpc": Figure(
        480,
        "us of CPU per request",
        "our gRPC path: 340-480 us of server CPU per single-row call, mostly grpcio's own "
        "(bench/RESULTS-grpc-floor.md)",
    ),
    "request_http": Figure(
        120,
        "us of CPU per request",
        "our HTTP path (v2 JSON or binary tensors, batcher and onnxruntime included): "
        "100-120 us per single-row call (bench/RESULTS-grpc-floor.md)",
    ),
    "rows": Figure(
        224_300 / 2,
        "rows/s per core",
        "MLP 111-256-256-128-1 through the server in 10k-row binary batches: 224,300 rows/s on "
        "2 cores, 0.91x in-process onnxruntime (bench/RESULTS.md Serving)",
    ),
    "p50_grpc": Figure(0.61, "ms", "single row, one client, gRPC: p50 0.61 ms (bench/RESULTS-serve-grpc.md)"),
    "p50_http": Figure(0.38, "ms", "single row, one client, HTTP: p50 0.38 ms (bench/RESULTS.md Serving)"),
    "p99_grpc": Figure(
        42.5,
        "ms",
        "single row, 64 clients, perf_analyzer, gRPC, one worker: p99 42.5 ms at load 16 "
        "(bench/RESULTS-serve-grpc.md)",
    ),
    "p99_http": Figure(
        14.5,
        "ms",
        "single row, 64 clients, HTTP, one worker, batching on: p99 14.5 ms (bench/RESULTS.md Serving)",
    ),
    "request_overhead": Figure(
        100,
        "bytes per request and direction",
        "estimate, not measured: HTTP/2 frame and header bytes plus the tensor's name, type and shape",
    ),
}

UTILIZATION = 0.7  # of each core, with the latency budget at or above the measured p99
UTILIZATION_TIGHT = 0.5  # below it: more headroom against queueing


def _used(*names: str, **overrides: float | None) -> dict[str, dict[str, Any]]:
    """The figures a plan used, as JSON, with the user's overrides marked as such."""
    out = {}
    for n in names:
        f = FIGURES[n]
        given = overrides.get(n)
        out[n] = asdict(f) if given is None else {"value": given, "unit": f.unit, "source": "given"}
    return out


def training(
    events: float,
    epochs: int,
    hours: float,
    *,
    compression: str = "zlib",
    features: int = 111,
    gpus: int = 0,
    cores_per_node: int = 16,
    decode_rate: float | None = None,
    train_rate: float | None = None,
) -> dict[str, Any]:
    """The cores, nodes, network and cache disk that train on ``events`` for ``epochs`` in ``hours``."""
    if events <= 0 or epochs < 1 or hours <= 0 or gpus < 0 or cores_per_node < 1:
        raise ConfigError("events, epochs, hours and cores per node must be positive, gpus >= 0")
    dec_name, bytes_name = f"decode_{compression}", f"bytes_{compression}"
    train_name = "train_gpu" if gpus else "train_cpu"
    decode = decode_rate or FIGURES[dec_name].value
    train = train_rate or FIGURES[train_name].value
    cache = FIGURES["cache_read"].value
    eff = FIGURES["efficiency"].value
    budget = hours * 3600
    if gpus == 0:
        core_seconds = events / decode + events * epochs / train + events * (epochs - 1) / cache
        cores = math.ceil(core_seconds / (budget * eff))
        # epoch 0 on those cores: decoding and training share them
        epoch0_s = events * (1 / decode + 1 / train) / (cores * eff)
        gpu_s = 0.0
    else:
        gpu_s = events * epochs / (gpus * train)
        later_s = events * (epochs - 1) / (gpus * train)
        if later_s >= budget:
            raise ConfigError(
                f"{_n(gpus, 'GPU')} need {later_s / 3600:.1f} h for epochs 1-{epochs - 1} alone "
                f"at {train:,.0f} events/s each: more GPUs or more hours"
            )
        # the cores decode epoch 0 while the GPUs train on it, in what the later epochs leave
        cores = math.ceil(events / (decode * eff * (budget - later_s)))
        # and read the cache as fast as the GPUs train (a few cores at most)
        cores = max(cores, math.ceil(gpus * train / (cache * eff)))
        epoch0_s = max(events / (cores * decode * eff), events / (gpus * train))
        core_seconds = events / decode + events * (epochs - 1) / cache
    read_bytes = events * FIGURES[bytes_name].value
    return {
        "workload": {
            "events": events,
            "epochs": epochs,
            "hours": hours,
            "compression": compression,
            "gpus": gpus,
        },
        "cores": cores,
        "core_hours": core_seconds / 3600,
        "gpu_hours": gpu_s / 3600,
        "nodes": math.ceil(cores / cores_per_node),
        "cores_per_node": cores_per_node,
        "workers_per_node": math.ceil(cores / math.ceil(cores / cores_per_node)),
        "epoch0_hours": epoch0_s / 3600,
        "read_bytes": read_bytes,
        "network_gbit_s_epoch0": read_bytes * 8 / epoch0_s / 1e9,
        "network_gbit_s_average": read_bytes * 8 / budget / 1e9,
        "cache_bytes": events * features * 4,
        "figures": _used(
            dec_name,
            bytes_name,
            train_name,
            "cache_read",
            "efficiency",
            **{dec_name: decode_rate, train_name: train_rate},
        ),
    }


def inference(
    rate: float,
    per_event: int = 1,
    *,
    latency_ms: float | None = None,
    rows_per_request: int | None = None,
    protocol: str = "grpc",
    features: int = 111,
    outputs: int = 1,
    cores_per_node: int = 16,
    row_rate: float | None = None,
) -> dict[str, Any]:
    """The cores, replicas and network that serve ``rate`` events/s of ``per_event`` rows each."""
    if rate <= 0 or per_event < 1 or cores_per_node < 1 or (rows_per_request or 1) < 1:
        raise ConfigError("the rate, inferences per event and cores per node must be positive")
    per_request = rows_per_request or per_event
    rows_s = rate * per_event
    requests_s = rows_s / per_request
    req_name = f"request_{protocol}"
    cpu_request = FIGURES[req_name].value * 1e-6
    rows_core = row_rate or FIGURES["rows"].value
    p50, p99 = FIGURES[f"p50_{protocol}"].value, FIGURES[f"p99_{protocol}"].value
    utilization, note = UTILIZATION, "budget at or above the measured p99 at saturation"
    if latency_ms is not None:
        if latency_ms < p50:
            raise ConfigError(
                f"a {latency_ms:g} ms budget is below the {p50:g} ms that one {protocol} call takes "
                "with no load at all (p50, one client): more servers cannot meet it"
            )
        if latency_ms < p99:
            utilization, note = (
                UTILIZATION_TIGHT,
                f"budget below the measured p99 ({p99:g} ms): more headroom",
            )
    busy = requests_s * cpu_request + rows_s / rows_core
    cores = math.ceil(busy / utilization)
    replicas = math.ceil(cores / cores_per_node)
    in_b = requests_s * (per_request * features * 4 + FIGURES["request_overhead"].value)
    out_b = requests_s * (per_request * outputs * 4 + FIGURES["request_overhead"].value)
    return {
        "workload": {
            "events_per_s": rate,
            "inferences_per_event": per_event,
            "rows_per_request": per_request,
            "latency_ms": latency_ms,
            "protocol": protocol,
        },
        "requests_per_s": requests_s,
        "rows_per_s": rows_s,
        "busy_cores": busy,
        "utilization": utilization,
        "utilization_why": note,
        "cores": cores,
        "replicas": replicas,
        "replicas_with_spare": replicas + 1,
        "workers_per_replica": math.ceil(cores / replicas),
        "network_gbit_s_in": in_b * 8 / 1e9,
        "network_gbit_s_out": out_b * 8 / 1e9,
        "figures": _used(
            req_name, "rows", f"p50_{protocol}", f"p99_{protocol}", "request_overhead", rows=row_rate
        ),
    }


def _n(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _si(x: float, unit: str) -> str:
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.1f} {prefix}{unit}"
    return f"{x:.0f} {unit}"


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as text: the answer first, then every figure with its source."""
    w = plan["workload"]
    lines = []
    if "epochs" in w:
        device = f"{_n(w['gpus'], 'GPU')} train, the cores decode" if w["gpus"] else "CPU only"
        lines += [
            f"training: {w['events']:,.0f} events x {_n(w['epochs'], 'epoch')} in {w['hours']:g} h "
            f"({w['compression'].upper()}, {device})",
            f"  cores:      {plan['cores']} ({plan['core_hours']:,.1f} core-hours"
            + (f", {plan['gpu_hours']:,.2f} GPU-hours)" if w["gpus"] else ")"),
            f"  nodes:      {plan['nodes']} of {plan['cores_per_node']} cores, "
            f"{plan['workers_per_node']} worker processes on each",
            f"  epoch 0:    {plan['epoch0_hours']:,.2f} h, reading {_si(plan['read_bytes'], 'B')}",
            f"  network:    {plan['network_gbit_s_epoch0']:.2f} Gbit/s during epoch 0 "
            f"({plan['network_gbit_s_average']:.3f} Gbit/s over the budget)",
            f"  cache disk: {_si(plan['cache_bytes'], 'B')} (float32 features, for epochs 1..)",
        ]
    else:
        lat = f", {w['latency_ms']:g} ms budget" if w["latency_ms"] is not None else ""
        lines += [
            f"inference: {w['events_per_s']:,.0f} events/s x {_n(w['inferences_per_event'], 'row')}, "
            f"{_n(w['rows_per_request'], 'row')} per {w['protocol']} request{lat}",
            f"  load:       {plan['requests_per_s']:,.0f} requests/s, {plan['rows_per_s']:,.0f} rows/s "
            f"= {plan['busy_cores']:,.1f} busy cores",
            f"  cores:      {plan['cores']} at {plan['utilization']:.0%} utilization ({plan['utilization_why']})",
            f"  replicas:   {plan['replicas']} with --workers {plan['workers_per_replica']} "
            f"(one per core; +1 spare for rolling updates and failures: {plan['replicas_with_spare']})",
            f"  network:    {plan['network_gbit_s_in']:.2f} Gbit/s in, {plan['network_gbit_s_out']:.2f} Gbit/s out",
        ]
    lines.append("figures (replace one with your own measurement: see --help):")
    for name, f in plan["figures"].items():
        v = f["value"]
        lines.append(f"  {name} = {v:,.0f} {f['unit']}" if v >= 1000 else f"  {name} = {v:g} {f['unit']}")
        lines.append(textwrap.fill(f["source"], 100, initial_indent=" " * 6, subsequent_indent=" " * 6))
    return "\n".join(lines)


# ------------------------------------------------------------------ command line
def _number(text: str) -> float:
    """argparse type: a number > 0, in any notation Python reads (1e9, 100000, 2.5)."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def cmd_capacity(args: argparse.Namespace) -> int:
    if (args.events is None) == (args.infer_rate is None):
        raise UsageError(
            "mlaas4hep capacity: give a training workload (--events N --epochs E --hours H) "
            "or an inference load (--infer-rate R [--inferences-per-event k] [--latency-ms L])"
        )
    training_only = ("epochs", "hours", "compression", "gpus", "decode_rate", "train_rate")
    inference_only = (
        "inferences_per_event",
        "latency_ms",
        "rows_per_request",
        "protocol",
        "outputs",
        "row_rate",
    )
    wrong, kind = (
        (inference_only, "an inference") if args.events is not None else (training_only, "a training")
    )
    given = [n for n in wrong if getattr(args, n) is not None]
    if given:
        option = "--" + given[0].replace("_", "-")
        needs = "--infer-rate" if kind == "an inference" else "--events"
        raise UsageError(
            f"mlaas4hep capacity: {option} is {kind} option: give {needs}, or leave {option} out"
        )
    defaults = {
        "epochs": 1,
        "compression": "zlib",
        "gpus": 0,
        "inferences_per_event": 1,
        "protocol": "grpc",
        "outputs": 1,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.events is not None:
        if args.hours is None:
            raise UsageError("mlaas4hep capacity: --events needs --hours (the time budget of the training)")
        plan = training(
            args.events,
            args.epochs,
            args.hours,
            compression=args.compression,
            features=args.features,
            gpus=args.gpus,
            cores_per_node=args.cores_per_node,
            decode_rate=args.decode_rate,
            train_rate=args.train_rate,
        )
    else:
        plan = inference(
            args.infer_rate,
            args.inferences_per_event,
            latency_ms=args.latency_ms,
            rows_per_request=args.rows_per_request,
            protocol=args.protocol,
            features=args.features,
            outputs=args.outputs,
            cores_per_node=args.cores_per_node,
            row_rate=args.row_rate,
        )
    return json_or(args.json, plan, lambda: print(format_plan(plan)))


def add_capacity_command(sub: Any) -> None:
    p = sub.add_parser(
        "capacity",
        help="cores, workers, replicas and network for a training or inference workload",
        description="Plan the resources of a workload from this project's measured per-core rates "
        "(bench/RESULTS*.md), printed with their sources: a training (--events, --epochs, --hours) "
        "or an inference load (--infer-rate, --inferences-per-event, --latency-ms). "
        "Replace a figure with your own measurement: --decode-rate, --train-rate, --row-rate.",
        epilog="examples:\n"
        "  mlaas4hep capacity --events 1e9 --epochs 10 --hours 24\n"
        "  mlaas4hep capacity --infer-rate 1e5 --inferences-per-event 10 --latency-ms 50",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t = p.add_argument_group("training")
    t.add_argument("--events", type=_number, metavar="N", help="events to train on (e.g. 1e9)")
    t.add_argument("--epochs", type=positive_int, metavar="E", help="passes over them (default 1)")
    t.add_argument("--hours", type=_number, metavar="H", help="time budget of the whole training")
    t.add_argument(
        "--compression",
        choices=["zlib", "lz4", "zstd"],
        help="the files' compression (default zlib, as CMS NanoAOD)",
    )
    t.add_argument("--gpus", type=count, metavar="G", help="GPUs that train (default 0: CPUs train)")
    t.add_argument("--decode-rate", type=_number, metavar="EV/S", help="your decode rate per core")
    t.add_argument("--train-rate", type=_number, metavar="EV/S", help="your training rate per core (per GPU)")
    i = p.add_argument_group("inference")
    i.add_argument("--infer-rate", type=_number, metavar="R", help="events per second to serve")
    i.add_argument(
        "--inferences-per-event", type=positive_int, metavar="K", help="rows per event (default 1)"
    )
    i.add_argument("--latency-ms", type=_number, metavar="L", help="latency budget per request")
    i.add_argument(
        "--rows-per-request",
        type=positive_int,
        metavar="N",
        help="rows per call (default: one call per event)",
    )
    i.add_argument("--protocol", choices=["grpc", "http"], help="default grpc (SONIC's)")
    i.add_argument("--outputs", type=positive_int, help="model outputs per row (default 1)")
    i.add_argument("--row-rate", type=_number, metavar="ROWS/S", help="your batched rows/s per core")
    p.add_argument("--features", type=positive_int, default=111, help="input features per row (default 111)")
    p.add_argument(
        "--cores-per-node",
        type=positive_int,
        default=16,
        metavar="C",
        help="cores of a node or pod (default 16)",
    )
    p.add_argument(
        "--json", action="store_true", help="print the plan and its figures as JSON (machine output)"
    )
    p.set_defaults(func=cmd_capacity)
