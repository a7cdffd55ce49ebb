"""Oscillating loss: swings larger than mini-batch noise explains, no net progress."""

from __future__ import annotations

import statistics

from glasscockpit.diagnosis.base import Finding, Rule, Thresholds
from glasscockpit.diagnosis.history import History, median


def lag1(xs: list[float]) -> float:
    """Lag-1 autocorrelation of ``xs`` (0 for a constant series)."""
    m = statistics.fmean(xs)
    dev = [x - m for x in xs]
    var = sum(d * d for d in dev)
    if var <= 0:
        return 0.0
    return sum(a * b for a, b in zip(dev, dev[1:], strict=False)) / var


class Oscillation(Rule):
    """Period-2 flip-flop or slow swings of the loss, beyond its noise.

    Over the newest ``blocks`` × ``block`` losses (all finite), with the level
    the larger of their median and the run's starting level:

    * period 2: lag-1 autocorrelation ≤ ``autocorr`` (independent noise has ~0)
      with a spread (standard deviation) ≥ ``swing`` × the level;
    * slow swings: block medians (which average out mini-batch noise) change
      direction ≥ ``flips`` times, each change ≥ ``swing`` × the level and ≥ 2 ×
      the blocks' own median absolute deviation;

    and in both cases the mean of the newer half is not ``gain`` below the older
    half's (no net progress).
    """

    name = "oscillation"
    title = "Oscillating loss"
    severity = "warning"
    needs = ("loss",)
    thresholds = {
        "block": 5.0,
        "blocks": 8.0,
        "swing": 0.2,
        "flips": 4.0,
        "autocorr": -0.5,
        "gain": 0.05,
    }
    explanation = (
        "The loss goes up and down again and again, by more than mini-batch "
        "noise explains, and makes no net progress: either it flips between two "
        "levels from step to step (strongly negative lag-1 autocorrelation, the "
        "period-2 oscillation of a step too large for the sharpest direction), "
        "or its block-averaged level swings by more than `swing` of itself. The "
        "iterates bounce between the walls of a valley instead of descending it "
        "(the non-monotone regime of Cohen et al. 2021), or momentum is too high."
    )
    remedies = (
        "Lower the learning rate or the momentum.",
        "Add warm-up or a decaying schedule.",
        "Clip the gradient norm.",
    )
    source = "Cohen et al. 2021 (non-monotone loss at the edge of stability)"

    def check(self, h: History, th: Thresholds) -> Finding | None:
        """Period-2 autocorrelation or large block-median flips."""
        b, k = int(th["block"]), int(th["blocks"])
        s = h.series("loss")
        vals = s.tail(b * k)
        if len(vals) < b * k or not all(
            v == v and abs(v) != float("inf") for v in vals
        ):
            return None
        # Swings are measured against the run's starting level: near a loss of 0
        # any noise is a large fraction of the current level.
        level = max(median(vals), median(s.head))
        if not level > 0:
            return None
        blocks = [vals[i * b : (i + 1) * b] for i in range(k)]
        meds = [median(x) for x in blocks]
        half = len(vals) // 2
        if statistics.fmean(vals[half:]) < (1 - th["gain"]) * statistics.fmean(
            vals[:half]
        ):
            return None  # net progress
        ev: dict[str, float] = {}
        r = lag1(vals)
        spread = statistics.pstdev(vals) / level
        if r <= th["autocorr"] and spread >= th["swing"]:
            ev = {"lag1_autocorr": r, "relative_spread": spread}
            text = f"loss flips every step (lag-1 autocorrelation {r:.2f})"
        else:
            mad = median(
                [
                    median([abs(v - m) for v in x])
                    for x, m in zip(blocks, meds, strict=True)
                ]
            )
            floor = max(th["swing"] * level, 2.0 * mad)
            diffs = [meds[i + 1] - meds[i] for i in range(k - 1)]
            big = [d for d in diffs if abs(d) >= floor]
            flips = sum(1 for x, y in zip(big, big[1:], strict=False) if x * y < 0)
            if flips < th["flips"]:
                return None
            ev = {"flips": float(flips), "swing": max(abs(d) for d in big) / level}
            text = (
                f"block-median loss changed direction {flips} times by ≥ "
                f"{floor / level:.0%} of its level"
            )
        return Finding(s.last_step, ev, summary=text, since=s.tail_steps(b * k)[0])
