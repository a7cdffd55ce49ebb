"""Histogram of all per-sample gradient elements (B·D values), summed over tensors.

Also home of the counting machinery both gradient histograms share: a bin rule
applied in float32 exactly as Cockpit's ``histc`` does, and exact counts of the
rank-one per-sample gradients of 2-D ``nn.Linear`` weights without building
their B·out·in values (``outer_counts``), and of chunks of built values that
span few bins by comparisons with the bins' exact thresholds (``span_counts``).
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Callable, Sequence
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor
from typing_extensions import override

from glasscockpit.agent.engine.stats import Outer, Sampled, Scaled, Sparse
from glasscockpit.agent.instruments.base import Cost, Instrument, Reading, count_into
from glasscockpit.agent.lifecycle.needs import Need
from glasscockpit.agent.lifecycle.schedules import Schedule
from glasscockpit.agent.lifecycle.step import StepView
from glasscockpit.protocol import Kind, PanelSpec

#: A bin rule: overwrites a float tensor and returns its bins (int32), monotone
#: non-decreasing in the value, within ``[0, bins)`` for non-NaN values, with
#: −inf in bin 0 and +inf in bin ``bins − 1``.
Rule = Callable[[Tensor], Tensor]


def histc_bins(y: Tensor, lo: float, hi: float, n: int) -> Tensor:
    """``torch.histc``'s bin of each value (int32), overwriting ``y``; NaN → ``n``.

    ``(y - lo) * n / (hi - lo)`` truncated, with values beyond the range (and
    ``y == hi``) in the edge bins; clamp keeps NaN, which ``nan_to_num_`` sends
    to ``n``. In place, and counted through ``bincount`` of int32 indices: several
    times faster than ``histc`` on CPU.
    """
    pos = y.sub_(lo).mul_(n).div_(hi - lo).clamp_(0, n - 0.5)
    return pos.nan_to_num_(nan=n).to(torch.int32)


# -- exact counts of rank-one per-sample gradients ------------------------------------
def _key(x: Tensor) -> Tensor:
    """Order-preserving int64 key of float32 values (−0 just below +0)."""
    b = x.view(torch.int32).to(torch.int64)
    return torch.where(b >= 0, b, -(2**31) - 1 - b)


def _from_key(k: Tensor) -> Tensor:
    """Inverse of ``_key``."""
    b = torch.where(k >= 0, k, -(2**31) - 1 - k)
    return b.to(torch.int32).view(torch.float32)


def thresholds(rule: Rule, bins: int) -> Tensor:
    """``V_k``, the smallest float32 value with ``rule(V_k) ≥ k``, for k = 1..bins−1.

    Bisection over the ordered float32 bit patterns (33 rounds, all k at once):
    whatever rounding the rule's arithmetic does, ``rule(y) ≥ k ⟺ y ≥ V_k``.
    """
    k = torch.arange(1, bins, dtype=torch.int32)
    inf = torch.tensor([float("inf")])
    lo = _key(-inf).expand(bins - 1).clone()  # rule(−inf) = 0 < k
    hi = _key(inf).expand(bins - 1).clone()  # rule(+inf) = bins − 1 ≥ k
    while bool((hi - lo > 1).any()):
        mid = lo + (hi - lo) // 2
        up = rule(_from_key(mid).clone()) >= k
        hi, lo = torch.where(up, mid, hi), torch.where(up, lo, mid)
    return _from_key(hi)


def _sort_rows(v: Tensor) -> Tensor:
    """Rows sorted ascending; numpy's SIMD sort is ~20× torch's on CPU."""
    if v.device.type == "cpu":
        return torch.from_numpy(np.sort(v.numpy(), axis=1))
    return torch.sort(v, dim=1).values


def outer_fast(outer: Outer) -> bool:
    """Whether ``outer_counts`` serves these factors: finite float32 on the CPU.

    On an accelerator, binning the built values is cheap and avoids the host
    synchronisations the variable-length search needs. (A sum that overflows
    only sends finite factors to the slower, equally exact path.)
    """
    u, v = outer.u, outer.v
    return (
        u.device.type == "cpu"
        and u.dtype == v.dtype == torch.float32
        and math.isfinite(float(u.sum()) + float(v.sum()))
    )


def outer_counts(
    outers: Sequence[Outer], rule: Rule, edges: Tensor, bins: int
) -> Tensor:
    """Counts ``[bins]`` (int64) of ``rule(fl32(u_ni · v_nj))`` over all n, i, j.

    Exactly the counts of binning the built per-sample gradients, without
    building them. For one row ``a = u_ni`` the products ``a · v_nj`` are
    monotone in ``v_nj``, so with ``v_n`` sorted the elements of bin ``k`` are a
    contiguous run; only bin edges inside ``[a·min v_n, a·max v_n]`` need a
    search (typically 1–2 per row instead of ``in`` values). The search compares
    the float32 product itself with ``V_k = edges[k - 1]``: ``rule(y) ≥ k ⟺
    y ≥ V_k``, so no rounding question arises. All factor pairs (layers) are
    searched together: the work is a few dozen small tensor operations, whose
    fixed cost would otherwise dominate small layers.

    Args:
        outers: finite float32 factors on the CPU (``outer_fast``).
        rule: the bin rule; must send every finite value to ``[0, bins)`` and
            treat −0 as +0.
        edges: ``thresholds(rule, bins)``.
        bins: number of bins.
    """
    widths = [o.v.shape[1] for o in outers]
    # Sorted rows padded to a power of two with +inf, so that the search needs
    # no bounds: u·inf is never below an edge for u > 0 and always for u < 0.
    size = 1 << (max(widths) - 1).bit_length()
    seqs = outers[0].v.new_full((sum(o.v.shape[0] for o in outers), size), math.inf)
    index = torch.int32 if seqs.numel() < 2**31 else torch.int64
    # Row r = (layer, sample n, output i): its factor, sorted sequence, width.
    u = torch.cat([o.u.reshape(-1) for o in outers])
    seq, width, first = [], [], 0
    for o, w in zip(outers, widths, strict=True):
        n, out = o.u.shape
        seqs[first : first + n, :w] = _sort_rows(o.v)
        start = torch.arange(first * size, (first + n) * size, size, dtype=index)
        seq.append(start[:, None].expand(n, out).reshape(-1))
        width.append(torch.full((n * out,), w, dtype=index))
        first += n
    seqs = seqs.reshape(-1)
    base, last = torch.cat(seq), torch.cat(width) - 1
    lo = rule(seqs.index_select(0, base).mul_(u))  # at min v_n
    hi = rule(seqs.index_select(0, base + last).mul_(u))  # at max v_n
    kmin, kmax = torch.minimum(lo, hi), torch.maximum(lo, hi)
    lookups = kmax - kmin
    # A row spanning many bins costs more to search than to build: with many
    # lookups (gradients far beyond the range), such rows are built, which also
    # bounds the lookups' memory by the values counted.
    counts = torch.zeros(bins, dtype=torch.int64)
    if int(lookups.sum()) > LOOKUPS:
        heavy = lookups * (size.bit_length() + 4) > last + 1
        table = seqs.view(-1, size)
        for w in sorted(set(widths)):
            rows = (heavy & (last == w - 1)).nonzero().squeeze(1)
            step = max(1, BUILT // w)
            for part in (rows[i : i + step] for i in range(0, rows.numel(), step)):
                built = table.index_select(0, base[part] // size)[:, :w]
                count_into(counts, rule(built * u[part, None]))
        lookups = lookups.masked_fill(heavy, 0)
        kmax = kmin + lookups
        last = last.masked_fill(heavy, -1)  # counted: no width left for kmax
    counts += torch.bincount(kmax, weights=last.double() + 1, minlength=bins).to(
        torch.int64
    )
    # Lookups in groups of rows holding at most about LOOKUPS of them.
    end = torch.cumsum(lookups, 0, dtype=torch.int64)
    total = int(end[-1])
    marks = torch.tensor(range(LOOKUPS, total, LOOKUPS), dtype=torch.int64)
    cuts = torch.searchsorted(end, marks).tolist()
    for r0, r1 in zip([0, *cuts], [*cuts, end.numel()], strict=True):
        _search(
            counts,
            seqs,
            size,
            edges,
            (u[r0:r1], base[r0:r1], last[r0:r1], kmin[r0:r1], lookups[r0:r1]),
        )
    return counts


#: Lookups searched at a time by ``outer_counts`` (about 40 bytes each).
LOOKUPS = 2**18
#: Values built at a time for rows that span many bins.
BUILT = 2**18


def _search(
    counts: Tensor,
    seqs: Tensor,
    size: int,
    edges: Tensor,
    rows: tuple[Tensor, Tensor, Tensor, Tensor, Tensor],
) -> None:
    """Add the counts of rows ``(u, base, last, kmin, lookups)`` found by search.

    One lookup per edge k in (kmin, kmax] of each row r, for p_k = #{j: bin <
    k}: row r puts p_{k+1} − p_k in bin k (p_kmin = 0, p_{kmax+1} = width; the
    caller counted the width in kmax).
    """
    u, base, last, kmin, lookups = rows
    end = torch.cumsum(lookups, 0, dtype=torch.int32)
    total = int(end[-1]) if end.numel() else 0
    if total == 0:
        return
    # The row of each lookup: the number of rows ending at or before it
    # (2–3× faster than repeat_interleave).
    r = torch.zeros(total + 1, dtype=torch.int32).index_add_(
        0, end, torch.ones_like(end)
    )
    r = torch.cumsum(r[:-1], 0, dtype=torch.int32)
    k = kmin.index_select(0, r).to(torch.int64)
    k += torch.arange(1, total + 1) - (end - lookups).index_select(0, r)
    ur, edge = u.index_select(0, r), edges.index_select(0, k - 1)
    base = base.index_select(0, r)
    neg = ur < 0  # bins fall along the sorted row
    # Binary lifting to the last position where the predicate ``bin < k``
    # (``bin ≥ k`` for u < 0) holds; position 0 satisfies it. The comparison
    # is the sign bit of ``u·v − V_k`` (exact for floats), flipped for u < 0:
    # bool tensors, torch.where and int64 arithmetic are several times slower.
    q = base.clone()
    xor = -neg.to(base.dtype)  # 0, or −1 to flip the predicate
    step = size // 2
    while step:
        diff = seqs.index_select(0, q + step).mul_(ur).sub_(edge)
        q.sub_(((diff.view(torch.int32) >> 31) ^ xor).to(base.dtype), alpha=step)
        step //= 2
    at = (q - base).to(torch.int64)  # the predicate holds on [0, at]
    span = last.index_select(0, r).to(torch.int64) - 1 - 2 * at
    p = at + 1 + neg * span  # width − 1 − at for u < 0
    counts.index_add_(0, k - 1, p)
    counts.index_add_(0, k, -p)


#: Bins a chunk of values may span for ``span_counts`` to count it: one
#: compare-and-count pass per interior edge costs ~0.1 ns a value, binning every
#: value (``histc_bins`` + ``count_into``) ~2.5 ns.
MAX_SPAN = 16


def span_counts(
    counts: list[int], values: Tensor, edges: list[float], max_span: int = MAX_SPAN
) -> bool:
    """Add the bins of float32 CPU ``values`` to ``counts`` by comparisons, if cheap.

    Per-sample gradient elements are mostly far smaller than a bin, so a chunk
    usually spans 1–3 bins. With ``k0`` and ``k1`` the bins of its least and
    greatest value, #{bin ≥ k} = #{y ≥ V_k} for the interior edges k in
    ``(k0, k1]``: one numpy pass each (several times faster than torch's
    comparisons), no index per value. Exact for any rule, since ``rule(y) ≥ k ⟺
    y ≥ V_k``: the number of edges at or below a value is its bin (so a search
    of the edges bins the extremes), and −0 compares equal to +0 as the rule
    treats them. The edges are float32 values held as Python floats: compared
    with float32 values, exactly.

    Args:
        counts: ``[bins]``, added to in place.
        values: float32 on the CPU, any shape.
        edges: ``thresholds(rule, bins)`` as Python floats.
        max_span: most bins the chunk may span.

    Returns:
        False, counting nothing, for a chunk holding a NaN or spanning more than
        ``max_span`` bins: the caller bins it value by value.
    """
    a = values.detach().numpy().reshape(-1)
    if a.size == 0:
        return True
    least, most = float(a.min()), float(a.max())  # NaN if any value is NaN
    if math.isnan(least) or math.isnan(most):
        return False
    k0, k1 = bisect.bisect_right(edges, least), bisect.bisect_right(edges, most)
    if k1 - k0 > max_span:
        return False
    below = a.size  # values in bins ≥ k0
    for k in range(k0 + 1, k1 + 1):
        above = int(np.count_nonzero(a >= edges[k - 1]))
        counts[k - 1] += below - above
        below = above
    counts[k1] += below
    return True


class GradHist1d(Instrument):
    """Counts of ``g_n`` entries in ``bins`` equal bins over ``range``.

    Out-of-range values are clamped into the edge bins (as Cockpit does), so the
    counts always add up to ``B·D``. Weights of ``nn.Linear`` layers on 2-D inputs
    are counted from their rank-one factors (``outer_counts``), exactly and
    without building their per-sample gradients; embedding weights from their
    nonzero rows and a count of exact zeros. Other values, on the CPU, chunk by
    chunk by comparisons where a chunk spans few bins (``span_counts``), read in
    place where the step keeps them for other statistics (``Scaled``).

    Args:
        bins: number of bins (Cockpit: 100).
        range: ``(low, high)`` of the bins (Cockpit: ``(-2, 2)``).
        chunk: per-sample values binned at a time (small enough to stay in cache).
        sample: per layer, at most about this many per-sample values are built
            (convolutions and other layers without a closed form; 2-D Linear
            and embedding layers are counted exactly): beyond it, the values of
            a random run of ``m`` of the ``B`` samples, counted ``B / m`` times
            each (unbiased), and the reading's note names the sampled layers.
            None counts every value.
        seed: seed of the private generator of the sampled samples.
    """

    name = "grad_hist_1d"
    needs: ClassVar[frozenset[Need]] = frozenset({Need.BATCH_GRAD})
    cost = Cost.EXPENSIVE
    kind = Kind.HISTOGRAM
    preset = "economy"
    summed = ("counts", "nan")
    panel = PanelSpec(
        title="Per-sample gradient elements",
        y_label="count",
        log_y=True,
        group="gradients",
        help="Distribution of every per-sample gradient entry: a spike at 0 warns "
        "of vanishing gradients, full edge bins of exploding ones.",
    )

    def __init__(
        self,
        schedule: Schedule | None = None,
        label: str | None = None,
        *,
        bins: int = 100,
        range: tuple[float, float] = (-2.0, 2.0),  # noqa: A002 - numpy's name
        chunk: int = 2**18,
        sample: int | None = 2**20,
        seed: int = 0,
    ) -> None:
        super().__init__(schedule, label)
        self.sample = sample
        self._generator = torch.Generator().manual_seed(seed)
        if bins < 1 or not range[0] < range[1]:
            raise ValueError(f"Need bins >= 1 and low < high, got {bins}, {range}")
        self.bins, self.range = bins, (float(range[0]), float(range[1]))
        self.chunk = chunk
        self._rule: Rule = functools.partial(
            histc_bins, lo=self.range[0], hi=self.range[1], n=bins
        )
        self._edges: Tensor | None = None
        self._scaled_edges: dict[float, list[float]] = {}

    def _thresholds(self) -> Tensor:
        """``thresholds`` of the rule, computed once (33 bisection rounds)."""
        if self._edges is None:
            self._edges = thresholds(self._rule, self.bins)
        return self._edges

    def _host_edges(self, scale: float) -> list[float]:
        """Thresholds of ``y ↦ rule(fl(y · scale))`` as Python floats (cached).

        That rule is monotone too, so comparing kept values with its thresholds
        counts their scaled values without building them (``Scaled``).
        """
        if scale not in self._scaled_edges:
            if len(self._scaled_edges) > 8:  # batch sizes keep changing
                self._scaled_edges.clear()
            if scale == 1.0:
                edges = self._thresholds()
            else:
                lo, hi, n = *self.range, self.bins
                edges = thresholds(
                    lambda y: histc_bins(y.mul_(scale), lo, hi, n), self.bins
                )
            self._scaled_edges[scale] = edges.tolist()
        return self._scaled_edges[scale]

    @override
    def compute(self, step: StepView) -> Reading:
        """Returns {"counts": [bins], "edges": [bins + 1], "nan": NaN entries}.

        NaN entries are not binned (Cockpit bins them into arbitrary bins).
        """
        lo, hi, n = *self.range, self.bins
        counts: Tensor | None = None
        outers: list[Outer] = []
        spans = [0] * n  # counted by ``span_counts``

        def count(values: Tensor | Scaled) -> None:
            """Bin values into ``counts`` (or ``spans``), overwriting fresh ones."""
            assert counts is not None
            raw, scale = (
                (values.values, values.scale)
                if isinstance(values, Scaled)
                else (values, 1.0)
            )
            if (
                raw.device.type == "cpu"
                and raw.dtype == torch.float32
                and 0 < scale < math.inf
                and span_counts(spans, raw, self._host_edges(scale), MAX_SPAN)
            ):
                return
            fresh = values.built() if isinstance(values, Scaled) else values
            count_into(counts, histc_bins(fresh, lo, hi, n))

        grads = step.batch_grads_factored(
            self.chunk,
            sparse=True,
            views=True,
            sample=self.sample,
            generator=self._generator,
        )
        sampled: dict[str, float] = {}
        weighted: Tensor | None = None
        self.note = None
        for name, _, g in grads:
            if isinstance(g, Sampled):
                # Counted apart, then weighted: B / m per value.
                sampled[name] = g.weight
                part = g.values
                if weighted is None:
                    dev = (
                        part.values.device if isinstance(part, Scaled) else part.device
                    )
                    weighted = torch.zeros(n + 1, dtype=torch.float64, device=dev)
                own = torch.zeros(n + 1, dtype=torch.int64, device=weighted.device)
                raw = part.built() if isinstance(part, Scaled) else part
                count_into(own, histc_bins(raw, lo, hi, n))
                weighted += own.double() * g.weight
                continue
            dev = (
                g.u.device
                if isinstance(g, Outer)
                else g.values.device
                if isinstance(g, Sparse | Scaled)
                else g.device
            )
            if counts is None:  # bin n holds the NaNs
                counts = torch.zeros(n + 1, dtype=torch.int64, device=dev)
            if isinstance(g, Outer) and outer_fast(g):
                outers.append(g)  # counted together below
                continue
            if isinstance(g, Sparse):
                count(g.values)
                # The entries not in ``values`` are +0.0: all in zero's bin.
                zero = histc_bins(g.values.new_zeros(1), lo, hi, n).to(torch.int64)
                counts.index_add_(0, zero, counts.new_full((1,), g.zeros))
                continue
            for part in g.chunks(self.chunk) if isinstance(g, Outer) else [g]:
                count(part)
        if counts is None and weighted is not None:
            counts = torch.zeros(n + 1, dtype=torch.int64, device=weighted.device)
        if counts is None:
            return None
        if sampled:
            names = sorted(sampled)
            self.note = (
                f"estimate: per-sample gradients of {len(names)} layer tensors "
                f"({', '.join(names[:4])}{' ...' if len(names) > 4 else ''}) from a "
                "random run of samples, each counted B/m times "
                f"(B/m up to {max(sampled.values()):.3g}; unbiased counts)"
            )
        if outers:
            counts[:n] += outer_counts(outers, self._rule, self._thresholds(), n)
        if any(spans):
            counts[:n] += torch.tensor(spans, device=counts.device)
        edges = torch.linspace(lo, hi, n + 1, dtype=torch.float64)
        total = counts.double() if weighted is None else counts.double() + weighted
        return {
            "counts": total[:n],
            "edges": edges,  # on the host: no copy to the device and back
            "nan": total[n],
        }
