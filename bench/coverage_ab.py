"""Economy every step with and without issue 18's exact rules, side by side.

The same Hugging Face GPT-2 and timm ViT-tiny as ``bench/real_overhead.py``
(changing batches). "Before" builds its Cockpit with the engine as it was:
no matchers for other libraries' layers (``rules.MATCHERS`` empty: Hugging
Face's ``Conv1D`` and timm's ``LayerNorm`` go to the per-module ``torch.func``
fallback) and ties served by the whole-model re-run. "After" is the engine as
it is. Rows are interleaved with plain blocks (``agent_overhead.interleave``,
paired medians), so both see the same machine.

    python -m bench.coverage_ab [--models gpt2,vit] [--repeats 5]
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any

import torch

from bench.agent_overhead import Step, interleave
from bench.real_overhead import make
from glasscockpit.agent.engine import rules
from glasscockpit.agent.engine.hooks import HookEngine


def before(name: str) -> Step:
    """Economy every step with the engine's coverage before issue 18's rules."""
    matchers = list(rules.MATCHERS)
    tie_ids = HookEngine._tie_ids

    def old_ties(self: HookEngine, shared: set[int]) -> set[int]:
        return tie_ids(self, shared) if self._root_refusal is not None else set()

    rules.MATCHERS.clear()
    HookEngine._tie_ids = old_ties  # type: ignore[method-assign]
    try:
        step = make(name, "economy", True)  # the engine is built here
    finally:
        rules.MATCHERS.extend(matchers)
        HookEngine._tie_ids = tie_ids  # type: ignore[method-assign]
    return step


def engines(step: Any) -> str:
    """The engines serving the step's parameters, with their counts."""
    seen: dict[str, int] = {}
    for label in step.cockpit.engine.coverage.values():
        seen[label] = seen.get(label, 0) + 1
    return "; ".join(f"{k} ×{v}" for k, v in sorted(seen.items()))


def main(argv: list[str] | None = None) -> None:
    """Print one markdown table per model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gpt2,vit")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    for name in args.models.split(","):
        rows = {
            "plain": make(name, "plain", True),
            "economy, before (torch.func fallbacks)": before(name),
            "economy, after (exact rules)": make(name, "economy", True),
        }
        ratio: dict[str, float] = {}
        ms = interleave(
            {k: (s, [0]) for k, s in rows.items()}, args.repeats, 0.1, "cpu", ratio
        )
        print(f"\n### {name} (1 thread, {args.repeats} repeats, paired medians)\n")
        print("| configuration | ms/step | × plain |\n|---|---|---|")
        for label, v in ms.items():
            print(f"| {label} | {v:.1f} | {ratio[label]:.2f} |")
        for label, step in list(rows.items())[1:]:
            print(f"\n{label}: {engines(step)}")


if __name__ == "__main__":
    main()
