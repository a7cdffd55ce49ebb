"""The benchmarks `python -m bench` runs: module, arguments, share of the budget."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE_CFG = {"batch": 128, "width": 128, "layers": 2}  # bench.scaling.BASE


@dataclass
class Bench:
    """One benchmark: module, arguments (full / quick), share of the budget."""

    name: str
    title: str
    full: list[str]
    quick: list[str]
    share: float
    doc: str = ""
    json_flag: str = "--json"
    extra: list[str] = field(default_factory=list)


BENCHES = [
    Bench(
        "agent_overhead",
        "Agent overhead per configuration and per instrument (issues 3 and 7)",
        ["--models", "mlp,cnn,transformer", "--memory", "--repeats", "5"],
        ["--models", "mlp,cnn,transformer", "--repeats", "1", "--block-s", "0.05"],
        0.6,
        "benchmarks-agent.md",
    ),
    Bench(
        "real_overhead",
        "Agent overhead on ResNet-18, GPT-2, ViT and a conv-heavy CNN (issue 18)",
        ["--models", "convnet,gpt2,vit,resnet18", "--repeats", "3", "--steps", "30"],
        ["--models", "convnet,gpt2", "--repeats", "1", "--steps", "12"],
        0.3,
        "benchmarks-agent.md",
    ),
    Bench(
        "transport",
        "Transport: step time against healthy, dead and broken servers (issue 4)",
        ["--rounds", "3"],
        ["--rounds", "1", "--steps", "300", "--warmup", "50"],
        0.25,
        "benchmarks-transport.md",
    ),
    Bench(
        "ingest",
        "Server: ingest throughput, ack latency, memory (issue 5)",
        # 0e328c1: the server before the ingest fast paths, measured alongside.
        ["--baseline", "0e328c1"],
        ["--frames", "200", "--no-memory", "--repeats", "1"],
        0.12,
        "benchmarks-server.md",
    ),
    Bench(
        "dashboard_latency",
        "Agent send → browser drawn (issue 6)",
        ["--steps", "300"],
        ["--steps", "120", "--warmup", "20"],
        0.05,
    ),
    Bench(
        "dashboard",
        "Dashboard responsiveness: a long run and 20 runs (issue 6)",
        ["--steps", "1000000", "--runs", "20"],
        [
            "--steps",
            "100000",
            "--runs",
            "5",
            "--run-steps",
            "2000",
            "--seconds",
            "5",
            "--iters",
            "5",
        ],
        0.15,
        "benchmarks-dashboard.md",
        json_flag="",  # prints its JSON last on stdout
    ),
    Bench(
        "scaling",
        "Scaling study: agent cost vs batch, width, depth; server memory",
        ["--plots", "docs/img"],
        [
            "--quick",
            "--repeats",
            "1",
            "--max-steps",
            "10000",
            "--max-runs",
            "8",
            "--run-steps",
            "500",
            "--plots",
            "docs/img",
        ],
        0.2,
    ),
]
