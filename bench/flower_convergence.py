"""Flower's side of bench/convergence.py: its own FedAvg strategy in its own simulation engine.

    python -m bench.flower_convergence SPEC.json OUT.json

Run by bench.convergence in a fresh interpreter with `.cache/flwr-1.42` (flwr, `make flower`)
and `.cache/flwr-sim-1.42` (Ray and what Flower's simulation imports, `make flower-sim`) first
on PYTHONPATH. SPEC holds the data set's Setup, the seed, the TrainingConfig and the torch
thread count; the federation is rebuilt from them by the same function ours uses, so both
sides hold the same rows.

- ServerApp: `flwr.serverapp.strategy.FedAvg` with every node in every round, started from the
  same seeded model, `evaluate_fn` = ours' `score` (`cloud_trainer.release.evaluate.evaluate` on
  the held-out rows) before the first round and after each.
- ClientApp (one per device, `partition-id` = device index, run one after the other by one
  Ray actor holding every core, on the same torch thread count as ours):
  `local_update`, i.e. `train_local` from the received weights with the round's config and the
  seed of (round, device), and replies with the trained weights and `num-examples`, which is
  what Flower's FedAvg averages.

Writes OUT with the accuracy and loss of every evaluation, the number of replies aggregated and
the seconds from the strategy's start to its end.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.convergence import (
    Federation,
    Setup,
    federation,
    local_update,
    score,
    use_threads,
)
from bus.protocol import TrainingConfig
from models.params import Params, apply_delta, get_parameters

WEIGHT_KEY = "num-examples"  # FedAvg's default weighted_by_key


@functools.cache
def _federation(spec: str) -> Federation:
    """Built once per process: the ServerApp's, and each Ray actor's for its clients."""
    parsed = json.loads(spec)
    return federation(Setup(**parsed["setup"]), int(parsed["seed"]))


def _training(spec: str) -> TrainingConfig:
    return TrainingConfig.model_validate(json.loads(spec)["training"])


def _threads(spec: str) -> int:
    return int(json.loads(spec)["threads"])


def to_record(params: Params) -> Any:
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in params.items()})


def from_record(record: Any, template: Params) -> Params:
    """A record's arrays in the model's dtypes: Flower's FedAvg averages BatchNorm's int64
    counter into a float, which the model does not read (its momentum is set) but must hold."""
    return {
        name: np.asarray(record[name].numpy(), dtype=like.dtype).reshape(like.shape)
        for name, like in template.items()
    }


def client_app(spec: str) -> Any:
    from flwr.app import Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    def train(msg: Message, context: Context) -> Message:
        use_threads(_threads(spec))
        fed = _federation(spec)
        template = get_parameters(fed.initial_model())
        params = from_record(msg.content["arrays"], template)
        device = int(context.node_config["partition-id"])
        round_number = int(msg.content["config"]["server-round"])
        result = local_update(fed, params, device, round_number, _training(spec))
        content = RecordDict(
            {
                "arrays": to_record(apply_delta(params, result.delta)),
                "metrics": MetricRecord({WEIGHT_KEY: result.num_examples}),
            }
        )
        return Message(content, reply_to=msg)

    app.train()(train)
    return app


def server_app(spec: str, out: dict[str, Any]) -> Any:
    from flwr.app import ArrayRecord, Context, MetricRecord, RecordDict
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

    app = ServerApp()
    fed = _federation(spec)
    devices = len(fed.devices)
    template = get_parameters(fed.initial_model())
    replies: list[int] = []

    def train_metrics(records: list[RecordDict], key: str) -> MetricRecord:
        """Flower's own metric averaging, counting the replies each round aggregated."""
        replies.append(len(records))
        return aggregate_metricrecords(records, key)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        metrics = score(fed, from_record(arrays, template))
        out["accuracy"].append(metrics["accuracy"])
        out["loss"].append(metrics["loss"])
        return MetricRecord(metrics)

    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=devices,
            min_available_nodes=devices,
            weighted_by_key=WEIGHT_KEY,
            train_metrics_aggr_fn=train_metrics,
        )
        started = time.perf_counter()
        strategy.start(
            grid=grid,
            initial_arrays=to_record(template),
            num_rounds=fed.setup.rounds,
            evaluate_fn=evaluate_fn,
        )
        out["seconds"] = time.perf_counter() - started
        out["replies_per_round"] = list(replies)

    app.main()(main)
    return app


def simulate(spec: str) -> dict[str, Any]:
    """Flower's run of the federation `spec` describes; its figures."""
    from flwr.simulation import run_simulation

    threads = _threads(spec)
    use_threads(threads)
    fed = _federation(spec)
    devices = len(fed.devices)
    out: dict[str, Any] = {"accuracy": [], "loss": []}
    # One actor holding every core, as ours trains: clients one after the other, each on
    # `threads` torch threads (Ray also sets OMP_NUM_THREADS to the actor's CPUs).
    backend = {
        "client_resources": {"num_cpus": threads, "num_gpus": 0.0},
        "init_args": {"num_cpus": max(threads, os.cpu_count() or 1), "include_dashboard": False},
    }
    run_simulation(server_app(spec, out), client_app(spec), devices, backend_config=backend)
    replies = out.get("replies_per_round", [])
    if replies != [devices] * fed.setup.rounds:
        raise RuntimeError(f"Flower aggregated {replies} replies per round, expected {devices}")
    out["updates"] = sum(replies)
    out["flwr"] = importlib.metadata.version("flwr")
    out["ray"] = importlib.metadata.version("ray")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    spec_path, out_path = map(Path, sys.argv[1:] if argv is None else argv)
    result = simulate(spec_path.read_text())
    out_path.write_text(json.dumps(result) + "\n")


if __name__ == "__main__":
    # Ray pickles the apps' functions: imported under its own name rather than as __main__, this
    # module's functions travel by reference, so each actor keeps its federation between clients.
    from bench.flower_convergence import main as imported_main

    imported_main()
