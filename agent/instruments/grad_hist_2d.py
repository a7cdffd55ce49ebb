"""Joint histogram of per-sample gradient elements and their parameter values.

Weights of ``nn.Linear`` layers on 2-D inputs are counted from their rank-one
factors where the rows allow it (``outer_counts_2d``), exactly as if built.
"""

from __future__ import annotations

import functools
import math
from typing import ClassVar

import torch
from torch import Tensor
from typing_extensions import override

from glasscockpit.agent.engine.stats import Outer, Sampled, Scaled, Sparse
from glasscockpit.agent.instruments.base import Cost, Instrument, Reading, count_into
from glasscockpit.agent.instruments.grad_hist_1d import Rule, outer_fast
from glasscockpit.agent.lifecycle.needs import Need
from glasscockpit.agent.lifecycle.schedules import Schedule
from glasscockpit.agent.lifecycle.step import StepView
from glasscockpit.protocol import Kind, PanelSpec


def centre_bins(x: Tensor, n: int, lo: float, hi: float, nan: int) -> Tensor:
    """Bin index (int32), overwriting ``x``; NaN gets index ``nan``.

    Values are clamped to the edge bins' centres (Cockpit's rule), so
    ``floor((x - lo) / w)`` needs no upper check; clamping keeps NaN.
    """
    w = (hi - lo) / n
    pos = x.clamp_(lo + w / 2, hi - w / 2).sub_(lo).div_(w)
    return pos.nan_to_num_(nan=nan).to(torch.int32)


def outer_counts_2d(
    outer: Outer, rule: Rule, theta_bins: Tensor, bins: tuple[int, int], rows: int
) -> Tensor:
    """Flat joint counts ``[2·ng·nt + 1]`` of a rank-one weight, as if built.

    Rows ``(n, i)`` of products ``u_ni · v_nj`` (monotone in ``v_nj``) fall into
    three kinds, told apart by their extreme products:

    - all in one gradient bin: the row adds the parameter-bin histogram of
      weight row ``i`` to that bin (one matrix product for all such rows);
    - split by the sign of ``v_nj`` between the bins below and above zero (the
      common case of small gradients): which entries ``j`` fall below depends
      on the sample only, so ``Σ_n [row (n, i) split] [v_nj < 0]`` for every
      entry ``(i, j)`` is one matrix product, binned by parameter bin;
    - the rest, built and binned value by value, ``rows`` rows at a time.

    Args:
        outer: finite float32 factors on the CPU (``outer_fast``).
        rule: the gradient bin rule (``[0, ng)`` for finite values).
        theta_bins: ``[out, in]`` parameter bins, ``ng·nt`` for NaN.
        bins: ``(ng, nt)``.
        rows: rows of ``in`` values handled at a time (bounds the memory).
    """
    (ng, nt), (u, v) = bins, (outer.u, outer.v)
    n, out = u.shape
    counts = torch.zeros(2 * ng * nt + 1, dtype=torch.int64)
    vmin, vmax = v.aminmax(dim=1)
    k1, k2 = rule(u * vmin[:, None]), rule(u * vmax[:, None])
    # Parameter bins with NaN as nt, and the bins of each weight row.
    local = theta_bins.clamp(max=nt)
    hist = torch.bincount(
        (local + (torch.arange(out) * (nt + 1))[:, None]).reshape(-1),
        minlength=out * (nt + 1),
    ).reshape(out, nt + 1)

    def add(k: int, joint: Tensor) -> None:
        """Add float (integral) ``[kk, nt + 1]`` counts to gradient bins k, k+1...

        The last column (NaN parameters) goes to the NaN count.
        """
        joint = joint.round().to(torch.int64)
        counts[k * nt : (k + joint.shape[0]) * nt] += joint[:, :nt].reshape(-1)
        counts[-1] += joint[:, nt].sum()

    single = k1 == k2
    row = torch.arange(out)
    which = (k1[single].to(torch.int64) * out + row.expand(n, out)[single]).reshape(-1)
    times = torch.bincount(which, minlength=ng * out).reshape(ng, out)
    joint = times.double() @ hist.double()  # [ng, nt + 1], exact below 2⁵³
    add(0, joint)
    # Split rows: the bins of 0 and just below it (k0 ≥ 1), with every product
    # of a negative v (u > 0) or positive v (u < 0) in the lower one.
    k0 = int(rule(torch.zeros(1)))
    split = torch.zeros_like(single)
    if k0 >= 1:
        neg_max = v.masked_fill(v >= 0, -math.inf).amax(1)  # −inf: none
        pos_min = v.masked_fill(v <= 0, math.inf).amin(1)
        lo, hi = torch.minimum(k1, k2), torch.maximum(k1, k2)
        span = (lo == k0 - 1) & (hi == k0)
        up = span & (u > 0) & (rule(u * neg_max[:, None]) == k0 - 1)
        down = span & (u < 0) & (rule(u * pos_min[:, None]) == k0 - 1)
        split = up | down
        if bool(split.any()):
            neg, pos = (v < 0).float(), (v > 0).float()
            ones = split.sum(0, dtype=torch.float32)
            both = (nt + 1) * torch.arange(2, dtype=torch.int32)[:, None, None]
            for i0 in range(0, out, rows):  # bounded memory
                below = up[:, i0 : i0 + rows].T.float() @ neg
                below += down[:, i0 : i0 + rows].T.float() @ pos
                above = ones[i0 : i0 + rows, None] - below
                flat = (local[i0 : i0 + rows] + both).reshape(-1)
                weight = torch.cat([below, above]).reshape(-1).double()
                joint = torch.bincount(flat, weight, minlength=2 * (nt + 1))
                add(k0 - 1, joint.reshape(2, nt + 1))
    multi = (~(single | split)).reshape(-1).nonzero().squeeze(1)
    for s in range(0, multi.numel(), rows):
        r = multi[s : s + rows]
        i = r % out
        scale = u.reshape(-1).index_select(0, r)[:, None]
        built = v.index_select(0, r // out).mul_(scale)
        flat = torch.add(theta_bins.index_select(0, i), rule(built), alpha=nt)
        count_into(counts, flat)
    return counts


class GradHist2d(Instrument):
    """Counts of pairs ``(g_nk, θ_k)`` over all samples ``n`` and entries ``k``.

    Each coordinate is clamped to its edge bins' centres (Cockpit's rule), so
    every pair without a NaN is counted.

    Args:
        bins: ``(gradient bins, parameter bins)`` (Cockpit: ``(40, 50)``).
        range: ``((g low, g high), (θ low, θ high))`` (Cockpit: ``((-1, 1), (-2, 2))``).
        chunk: per-sample values binned at a time (small enough to stay in cache).
        sample: per layer, at most about this many per-sample values are built,
            as in ``GradHist1d`` (a random run of samples, counted B/m times, the
            note names the layers); None counts every value.
        seed: seed of the private generator of the sampled samples.
    """

    name = "grad_hist_2d"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.BATCH_GRAD})
    cost = Cost.EXPENSIVE
    kind = Kind.HEATMAP
    preset = "full"
    summed = ("counts", "nan")
    panel = PanelSpec(
        title="Gradient vs parameter",
        y_label="gradient element",
        group="gradients",
        help="Rows: per-sample gradient value, columns: parameter value; e.g. large "
        "gradients only on near-zero weights, or saturated weights with none.",
    )

    def __init__(
        self,
        schedule: Schedule | None = None,
        label: str | None = None,
        *,
        bins: tuple[int, int] = (40, 50),
        range: tuple[tuple[float, float], tuple[float, float]] = (  # noqa: A002
            (-1.0, 1.0),
            (-2.0, 2.0),
        ),
        chunk: int = 2**18,
        sample: int | None = 2**20,
        seed: int = 0,
    ) -> None:
        super().__init__(schedule, label)
        self.bins, self.range, self.chunk = bins, range, chunk
        self.sample = sample
        self._generator = torch.Generator().manual_seed(seed)
        (ng, _), ((glo, ghi), _) = bins, range
        self._rule: Rule = functools.partial(centre_bins, n=ng, lo=glo, hi=ghi, nan=ng)

    @override
    def compute(self, step: StepView) -> Reading:
        """Returns {"counts": [g bins, θ bins], "y_edges", "x_edges", "nan"}.

        Pairs with a NaN are not binned; "nan" counts them.
        """
        (ng, nt), ((glo, ghi), (tlo, thi)) = self.bins, self.range
        counts: Tensor | None = None
        weighted: Tensor | None = None
        sampled: dict[str, float] = {}
        theta_bins: tuple[str, Tensor] | None = None
        self.note = None
        grads = step.batch_grads_factored(
            self.chunk, sparse=False, sample=self.sample, generator=self._generator
        )
        for name, theta, g in grads:
            # A NaN in g or θ puts the pair at flat index ≥ ng·nt.
            if counts is None:
                counts = torch.zeros(
                    2 * ng * nt + 1, dtype=torch.int64, device=theta.device
                )
            if theta_bins is None or theta_bins[0] != name:  # once per tensor
                tb = centre_bins(theta.clone(), nt, tlo, thi, nan=ng * nt)
                theta_bins = name, tb
            tb = theta_bins[1]
            if isinstance(g, Sampled):  # some samples, each counted B/m times
                sampled[name] = g.weight
                own = torch.zeros_like(counts)
                values = g.values.built() if isinstance(g.values, Scaled) else g.values
                count_into(own, torch.add(tb, self._rule(values), alpha=nt))
                part_w = own.double() * g.weight
                weighted = part_w if weighted is None else weighted + part_w
                continue
            assert not isinstance(g, Sparse | Scaled)  # not asked for
            if isinstance(g, Outer) and outer_fast(g):
                rows = max(1, self.chunk // g.v.shape[1])
                counts += outer_counts_2d(g, self._rule, tb, self.bins, rows)
                continue
            for part in g.chunks(self.chunk) if isinstance(g, Outer) else [g]:
                count_into(counts, torch.add(tb, self._rule(part), alpha=nt))
        if counts is None:
            return None
        total = counts.double() if weighted is None else counts.double() + weighted
        if sampled:
            names = sorted(sampled)
            self.note = (
                f"estimate: per-sample gradients of {len(names)} layer tensors "
                f"({', '.join(names[:4])}{' ...' if len(names) > 4 else ''}) from a "
                "random run of samples, each counted B/m times "
                f"(B/m up to {max(sampled.values()):.3g}; unbiased counts)"
            )
        dev = counts.device
        return {
            "nan": total[ng * nt :].sum(),
            "counts": total[: ng * nt].reshape(ng, nt),
            "y_edges": torch.linspace(
                glo, ghi, ng + 1, dtype=torch.float64, device=dev
            ),
            "x_edges": torch.linspace(
                tlo, thi, nt + 1, dtype=torch.float64, device=dev
            ),
        }
