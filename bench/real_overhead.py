"""Agent overhead on models nobody here wrote (issue 18), with changing batches.

Models of ``bench/real_models.py`` (torchvision ResNet-18 with GroupNorm, batch
32; Hugging Face GPT-2, 2 layers, d 64, T 16, batch 4; timm ViT-tiny, 2 blocks,
32 px; the conv-heavy CNN conv16-conv32-linear(2048→10), batch 64), each step on
the next of 8 different batches. Two measurements per model:

* paired ratios to the plain step (``agent_overhead.interleave``: each row's
  block between two plain blocks, median over repeats) of economy with every
  step tracked, and economy without ``grad_hist_1d``;
* ``full`` with default schedules from a fresh Cockpit at step 0: the time of
  every step over the median plain step measured around it, so that the
  budget's first steps are seen (target: no step after the first two above 3×).

    python -m bench.real_overhead [--models resnet18,gpt2,vit,convnet]
        [--repeats 3] [--steps 40] [--json FILE] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch

from bench.agent_overhead import Step, interleave, sync
from bench.real_models import build, losses_of
from glasscockpit.agent import Cockpit, always
from glasscockpit.agent.instruments import PRESETS
from glasscockpit.protocol import Readings


def make(
    name: str, spec: str, every_step: bool, without: str = "", device: str = "cpu"
) -> Step:
    """A step of ``name`` on changing batches: plain, or with a preset."""
    model, data = build(name)
    model = model.to(device)
    data = [(x.to(device), y.to(device)) for x, y in data]
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    cockpit = None
    if spec != "plain":
        classes = [c for c in PRESETS[spec] if c.name != without]
        insts = [c(schedule=always) if every_step else c() for c in classes]
        cockpit = Cockpit(model, opt, server=None, run="bench", instruments=insts)

    def step(i: int) -> None:
        x, y = data[i % len(data)]
        opt.zero_grad()
        loss, losses = losses_of(model(x), y)
        if cockpit is None:
            loss.backward()
        else:
            with cockpit.step(i, loss=loss, losses=losses):
                loss.backward()
            for frame in cockpit.transport.drain():  # type: ignore[attr-defined]
                if isinstance(frame, Readings):
                    seen.setdefault(frame.step, set()).update(frame.values)
        opt.step()

    seen: dict[int, set[str]] = {}
    step.cockpit = cockpit  # type: ignore[attr-defined]
    step.seen = seen  # type: ignore[attr-defined]
    return step


def cockpit_step(name: str, spec: str) -> Step | None:
    """The original Cockpit's configuration, every step (BackPACK models only).

    It runs in this process after glasscockpit's rows, so under the same glibc
    heap thresholds (``agent/environment/heap.py``): its best allocator setting.
    """
    try:
        import backpack
        import cockpit
        from cockpit.utils.configuration import configuration
        from cockpit.utils.schedules import linear
    except ImportError:
        return None
    model, data = build(name)
    model = backpack.extend(model)
    lossfunc = backpack.extend(torch.nn.CrossEntropyLoss())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ck = cockpit.Cockpit(model.parameters(), quantities=configuration(spec, linear(1)))

    def step(i: int) -> None:
        x, y = data[i % len(data)]
        opt.zero_grad()
        out = model(x)
        loss = lossfunc(out, y)
        losses = torch.nn.functional.cross_entropy(out, y, reduction="none")
        info = {"batch_size": x.shape[0], "individual_losses": losses}
        with ck(i, info={**info, "loss": loss, "optimizer": opt}):
            loss.backward(create_graph=ck.create_graph(i))
        opt.step()
        ck.output.clear()
        for q in ck.quantities:
            q.output.clear()

    return step


def first_steps(name: str, steps: int, device: str = "cpu") -> dict[str, object]:
    """``full`` with default schedules from step 0: each step over plain steps."""
    plain = make(name, "plain", False, device=device)
    full = make(name, "full", False, device=device)
    for i in range(2):
        plain(i)
    ratios, times = [], []

    def timed(fn: Step, i: int) -> float:
        sync(device)
        t0 = time.perf_counter()
        fn(i)
        sync(device)
        return time.perf_counter() - t0

    for i in range(steps):
        before = timed(plain, 100 + i)
        own = timed(full, i)
        after = timed(plain, 200 + i)
        t0, t1, t2, t3 = 0.0, before, before + own, before + own + after
        ratios.append((t2 - t1) / ((t1 - t0 + t3 - t2) / 2))
        times.append((t2 - t1) * 1e3)
    later = ratios[2:]
    cockpit = full.cockpit  # type: ignore[attr-defined]
    # Which costly instruments read at each step (the cheap ones every step).
    cheap = {"loss", "grad_norm", "lr", "time", "distance", "update_size"}
    seen = full.seen  # type: ignore[attr-defined]
    keys = [sorted(seen.get(i, set()) - cheap) for i in range(steps)]
    return {
        "ratios": ratios,
        "ms": times,
        "max_after_2": max(later) if later else None,
        "worst_step": 2 + later.index(max(later)) if later else None,
        "disabled": dict(cockpit.disabled),
        "tracked": keys,
    }


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run, print a markdown table per model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="convnet,gpt2,vit,resnet18")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--block-s", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--json")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    results: dict[str, object] = {}
    for name in args.models.split(","):
        d = args.device
        rows = {
            "plain": make(name, "plain", True, device=d),
            "economy (every step)": make(name, "economy", True, device=d),
            "economy without grad_hist_1d (every step)": make(
                name, "economy", True, "grad_hist_1d", d
            ),
        }
        if name == "convnet" and d == "cpu":  # BackPACK: Sequential CNN only
            ck = cockpit_step(name, "economy")
            if ck is not None:
                rows["Cockpit economy (every step)"] = ck
        steps = {k: (fn, [0]) for k, fn in rows.items()}
        ratio: dict[str, float] = {}
        ms = interleave(steps, args.repeats, args.block_s, d, ratio)
        first = first_steps(name, args.steps, d)
        print(f"\n### {name} (1 thread, {args.repeats} repeats, paired medians)\n")
        print("| configuration | ms/step | × plain |")
        print("|---|---|---|")
        for label, v in ms.items():
            print(f"| {label} | {v:.1f} | {ratio[label]:.2f} |")
        worst = first["max_after_2"]
        print(
            f"| full (default schedules), worst step after the first two "
            f"(step {first['worst_step']}) | | {worst:.2f} |"
        )
        ratios = first["ratios"]
        assert isinstance(ratios, list)
        print(
            "\nfull, default schedules, steps 0-"
            f"{len(ratios) - 1} × plain: " + ", ".join(f"{r:.1f}" for r in ratios)
        )
        tracked = first["tracked"]
        assert isinstance(tracked, list)
        probes = [
            f"{i}: {' '.join(k)} ({ratios[i]:.1f}×)"
            for i, k in enumerate(tracked)
            if k and i < 16
        ]
        print("\ncostly instruments read at steps " + "; ".join(probes))
        results[name] = {"ms": ms, "ratio": ratio, "first_steps": first}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
