"""Agent overhead: ms per training step and ratio to a plain step, per configuration.

Models of issue 3: MLP 784-128-64-10 (ReLU, batch 128) and CNN
conv(3→16)-pool-conv(16→32)-pool-fc(2048→128)-fc(128→10) (ReLU, batch 64, 3×32×32),
cross-entropy, SGD; and (issue 7, ``--models transformer``) the transformer of
engines.md: 2 post-LN encoder layers, d_model 64, 4 heads, seq 32, batch 32,
vocabulary 256, token-mean cross-entropy (``TinyLM``). Rows: a plain step, each
preset and each instrument with every step tracked, each preset with its default
schedules (from step 1000 after 500 untimed steps, so that log-spaced cadences
and the overhead budget of ``agent/lifecycle/budget.py`` are in their steady
state), and the
original Cockpit's configurations
when ``cockpit-for-pytorch`` is importable. Configurations are interleaved
round-robin; each repeat times a block of steps; the table shows medians.
Peak memory (``--memory``) is the peak RSS of a fresh process running a few steps,
minus the plain step's.

    python -m bench.agent_overhead [--repeats 3] [--models mlp,cnn] [--memory]
        [--device cuda]

On CUDA (``--device cuda``) every timed block ends with a synchronisation, and the
memory column is the peak of ``torch.cuda.max_memory_allocated`` instead of RSS.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from glasscockpit.agent import Cockpit, always
from glasscockpit.agent.instruments import ALL, PRESETS

Step = Callable[[int], None]


class TinyLM(nn.Module):
    """The transformer of engines.md: 2 post-LN encoder layers (d 64, 4 heads, ff 256),
    token + position embeddings, causal mask, vocabulary 256.

    Returns logits as ``[B, V, T]`` so that ``F.cross_entropy(model(x), y)`` is the
    mean over all tokens; a sample is a sequence (docs/any-model.md).
    """

    def __init__(self, vocab: int = 256, d: int = 64, seq: int = 32) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(seq, d)
        layer = nn.TransformerEncoderLayer(d, 4, 256, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, vocab)
        mask = nn.Transformer.generate_square_subsequent_mask(seq)
        self.register_buffer("mask", mask)

    def forward(self, ids: Tensor) -> Tensor:
        t = ids.shape[1]
        pos = torch.arange(t, device=ids.device).expand_as(ids)
        h = self.enc(self.tok(ids) + self.pos(pos), mask=self.mask, is_causal=True)
        return self.head(h).transpose(1, 2)


def make_model(name: str, device: str = "cpu") -> tuple[nn.Module, Tensor, Tensor]:
    """Seeded model and one batch, on ``device``."""
    model, x, y = _make_model(name)
    return model.to(device), x.to(device), y.to(device)


def _make_model(name: str) -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)
    if name == "transformer":
        ids = torch.randint(0, 256, (32, 33))
        return TinyLM(), ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    if name == "mlp":
        model = nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, 128),
            nn.ReLU(),
            nn.Linear(128, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )
        return model, torch.randn(128, 784), torch.randint(0, 10, (128,))
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2048, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )
    return model, torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))


def plain(model_name: str, device: str = "cpu") -> Step:
    """A training step without any monitoring."""
    return plain_step(*make_model(model_name, device))


def plain_step(model: nn.Module, x: Tensor, y: Tensor) -> Step:
    """A training step of ``model`` on one batch, without any monitoring.

    The loss is computed as in ``ours_step`` (per-sample cross-entropies, then
    their mean, as the README's attach snippet does for Alpha): the rows differ
    only by the agent. (The unfused loss costs ~4 % of the MLP's 0.8 ms step.)
    """
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step(_: int) -> None:
        opt.zero_grad()
        token = F.cross_entropy(model(x), y, reduction="none")
        if token.dim() > 1:  # the sequence model's [B, T] token losses
            token.reshape(len(token), -1).mean(1)
        token.mean().backward()
        opt.step()

    return step


def ours(
    model_name: str,
    spec: str,
    every_step: bool,
    without: str = "",
    device: str = "cpu",
) -> Step:
    """A step with glasscockpit's agent (in-memory transport, readings dropped).

    ``without`` names an instrument left out of the preset.
    """
    return ours_step(*make_model(model_name, device), spec, every_step, without)


def ours_step(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    spec: str,
    every_step: bool,
    without: str = "",
) -> Step:
    """A step of ``model`` on one batch with the agent (see :func:`ours`)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    classes = PRESETS[spec] if spec in PRESETS else [c for c in ALL if c.name == spec]
    classes = [c for c in classes if c.name != without]
    insts = [c(schedule=always) if every_step else c() for c in classes]
    cockpit = Cockpit(model, opt, server=None, run="bench", instruments=insts)

    def step(i: int) -> None:
        opt.zero_grad()
        out = model(x)
        # One cross-entropy: per-sample losses for alpha (a sample of the
        # transformer is a sequence) and their mean as the loss (curvature reads
        # it as the mean reduction).
        token = F.cross_entropy(out, y, reduction="none")
        losses = token if token.dim() == 1 else token.reshape(len(token), -1).mean(1)
        loss = token.mean()
        with cockpit.step(i, loss=loss, losses=losses):
            loss.backward()
        opt.step()
        cockpit.transport.drain()  # type: ignore[attr-defined]

    step.cockpit = cockpit  # type: ignore[attr-defined]  # for disabled instruments
    return step


def original(model_name: str, spec: str, device: str = "cpu") -> Step | None:
    """A step with cockpit-for-pytorch's configuration, every step tracked."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import backpack
            import cockpit
            from cockpit.utils.configuration import configuration
            from cockpit.utils.schedules import linear
    except ImportError:
        return None
    if model_name == "transformer":  # BackPACK skips attention and LayerNorm
        return None
    model, x, y = make_model(model_name, device)
    model = backpack.extend(model)
    lossfunc = backpack.extend(nn.CrossEntropyLoss())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ck = cockpit.Cockpit(model.parameters(), quantities=configuration(spec, linear(1)))

    def step(i: int) -> None:
        opt.zero_grad()
        out = model(x)
        loss = lossfunc(out, y)
        losses = F.cross_entropy(out, y, reduction="none")
        info = {"batch_size": x.shape[0], "individual_losses": losses}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with ck(i, info={**info, "loss": loss, "optimizer": opt}):
                loss.backward(create_graph=ck.create_graph(i))
        opt.step()
        ck.output.clear()  # keep memory flat over repeats
        for q in ck.quantities:
            q.output.clear()

    return step


@dataclass
class Row:
    """One benchmarked configuration."""

    label: str
    make: Callable[[], Step | None]
    start: int = 0
    #: Untimed steps first (default schedules: until the budget measured costs).
    warmup: int = 0


def rows(model_name: str, device: str = "cpu") -> list[Row]:
    """Every configuration of the table, in display order."""
    d = device
    out = [Row("plain", lambda: plain(model_name, d))]
    for p in PRESETS:
        out.append(
            Row(f"{p} (every step)", lambda p=p: ours(model_name, p, True, device=d))
        )
    # Histograms bin all B·D per-sample values; the rest needs only reductions.
    out.append(
        Row(
            "economy without grad_hist_1d (every step)",
            lambda: ours(model_name, "economy", True, "grad_hist_1d", d),
        )
    )
    for p in PRESETS:
        out.append(
            Row(
                f"{p} (default schedules)",
                lambda p=p: ours(model_name, p, False, device=d),
                1000,
                500,
            )
        )
    for p in PRESETS:
        out.append(
            Row(f"Cockpit {p} (every step)", lambda p=p: original(model_name, p, d))
        )
    for c in ALL:
        out.append(
            Row(f"  {c.name}", lambda c=c: ours(model_name, c.name, True, device=d))
        )
    return out


def bench(
    model_name: str,
    repeats: int,
    block_s: float,
    device: str = "cpu",
    disabled: dict[str, dict[str, str]] | None = None,
    ratios: dict[str, float] | None = None,
) -> dict[str, float]:
    """Median ms per step for every row, interleaved round-robin.

    ``disabled`` receives, per row, the instruments that failed and were disabled
    (their cost is then missing from the row); ``ratios`` the paired ratios to
    the plain step (``interleave``).
    """
    steps: dict[str, tuple[Step, list[int]]] = {}
    for row in rows(model_name, device):
        fn = row.make()
        if fn is not None:
            for i in range(row.warmup):
                fn(row.start + i)
            steps[row.label] = (fn, [row.start + row.warmup])
    ms = interleave(steps, repeats, block_s, device, ratios)
    if disabled is not None:
        for label, (fn, _) in steps.items():
            cockpit = getattr(fn, "cockpit", None)
            if cockpit is not None and cockpit.disabled:
                disabled[label] = dict(cockpit.disabled)
    return ms


def sync(device: str) -> None:
    """Wait for queued kernels, so that a timed block holds its own work only."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def interleave(
    steps: dict[str, tuple[Step, list[int]]],
    repeats: int,
    block_s: float,
    device: str = "cpu",
    ratios: dict[str, float] | None = None,
) -> dict[str, float]:
    """Median ms per step of each named step function, timed round-robin.

    Each value is ``(step function, [next step index])``; one warm-up step each.
    Every block starts with one untimed step: the row before it (a full
    configuration, Cockpit) may have evicted the caches and returned hundreds
    of MiB to the system, which a run repeating one configuration never sees.

    With ``ratios`` (and a ``"plain"`` row), every other row's block sits between
    two plain blocks, and ``ratios`` receives per row the median over repeats of
    its time over the mean of those two: the machine's speed drifts by tens of
    percent within minutes here, and a ratio of neighbours cancels the drift that
    a ratio of two medians taken minutes apart keeps.
    """
    times: dict[str, list[float]] = {k: [] for k in steps}
    paired: dict[str, list[float]] = {k: [] for k in steps}
    for fn, counter in steps.values():  # warm-up
        fn(counter[0])
        counter[0] += 1
    sync(device)

    def block(k: str) -> float:
        fn, counter = steps[k]
        gc.collect()
        fn(counter[0])  # untimed: back in this row's steady state
        counter[0] += 1
        sync(device)
        n, t0 = 0, time.perf_counter()
        while n < 1 or (time.perf_counter() - t0 < block_s and n < 200):
            fn(counter[0])
            counter[0] += 1
            n += 1
        sync(device)
        ms = (time.perf_counter() - t0) / n * 1e3
        times[k].append(ms)
        return ms

    base = "plain" if ratios is not None and "plain" in steps else None
    for _ in range(repeats):
        before = block(base) if base else 0.0
        for k in steps:
            if k == base:
                continue
            ms = block(k)
            if base:
                after = block(base)
                paired[k].append(ms / ((before + after) / 2))
                before = after
    if ratios is not None and base:
        ratios.update({k: statistics.median(v) for k, v in paired.items() if v})
        ratios[base] = 1.0
    return {k: statistics.median(v) for k, v in times.items()}


def peak_rss_mib(
    model_name: str, label: str, steps: int = 3, device: str = "cpu"
) -> float:
    """Peak RSS (``VmHWM``, MiB) of a fresh process running a few steps of one row.

    ``ru_maxrss`` would not do: Linux carries the parent's peak across ``exec``.
    On CUDA: the peak of ``torch.cuda.max_memory_allocated`` instead.
    """
    if device.startswith("cuda"):
        peak = (
            "torch.cuda.synchronize();"
            f"print(torch.cuda.max_memory_allocated({device!r}) // 1024 if fn else -1)"
        )
    else:
        peak = (
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')];"
            "print(hwm[0].split()[1] if fn else -1)"
        )
    code = (
        "import torch; torch.set_num_threads(1);"
        "from bench.agent_overhead import rows;"
        f"r = {{x.label: x for x in rows({model_name!r}, {device!r})}}[{label!r}];"
        "fn = r.make();"
        f"[fn(r.start + i) for i in range({steps})] if fn else None;" + peak
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    kib = int(out.stdout.strip().splitlines()[-1])
    return kib / 1024 if kib >= 0 else float("nan")


MEMORY_ROWS = (
    "plain",
    "economy (every step)",
    "business (every step)",
    "full (every step)",
    "Cockpit economy (every step)",
    "Cockpit business (every step)",
    "Cockpit full (every step)",
)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run, print a markdown table per model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--block-s", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory", action="store_true", help="also peak RSS")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results: dict[str, object] = {"device": args.device}
    if args.device.startswith("cuda"):
        results["device_name"] = torch.cuda.get_device_name(args.device)
    for model_name in args.models.split(","):
        off: dict[str, dict[str, str]] = {}
        ratio: dict[str, float] = {}
        ms = bench(model_name, args.repeats, args.block_s, args.device, off, ratio)
        mem = {}
        if args.memory:
            for label in MEMORY_ROWS:
                if label in ms:
                    mem[label] = peak_rss_mib(model_name, label, device=args.device)
        print(
            f"\n### {model_name} (torch threads: {args.threads}, "
            f"repeats: {args.repeats}, device: {args.device}, medians)\n"
        )
        print("| configuration | ms/step | × plain | peak RSS − plain, MiB |")
        print("|---|---|---|---|")
        for label, v in ms.items():
            extra = f"{mem[label] - mem['plain']:+.0f}" if label in mem else ""
            print(f"| {label} | {v:.2f} | {ratio[label]:.2f} | {extra} |")
        for label, why in off.items():
            print(f"{label}: disabled {', '.join(why)}")
        results[model_name] = {
            "ms": ms,
            "ratio": ratio,
            "peak_rss_mib": mem,
            "disabled": off,
        }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
