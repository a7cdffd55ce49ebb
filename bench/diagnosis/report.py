"""The zoo's table for docs/diagnosis.md, from the results of ``zoo.run_case``."""

from __future__ import annotations

import statistics
from collections import defaultdict

from bench.diagnosis.zoo import FAILURES, Result

BEGIN, END = "<!-- zoo:begin -->", "<!-- zoo:end -->"


def _steps(xs: list[int]) -> str:
    if not xs:
        return "–"
    if len(set(xs)) == 1:
        return str(xs[0])
    return f"{statistics.median(xs):g} ({min(xs)}–{max(xs)})"


def table(results: list[Result]) -> str:
    """Markdown: detection per failure class and architecture, false alarms."""
    by: dict[tuple[str, str], list[Result]] = defaultdict(list)
    for r in results:
        by[(r.case.failure, r.case.arch)].append(r)
    lines = [
        "| failure class | arch | detected | rule(s) that named it | detected at step "
        "| loss curve shows it at | lead (steps) | other diagnoses |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for failure in FAILURES:
        if failure == "healthy":
            continue
        for (f, arch), rs in by.items():
            if f != failure:
                continue
            hits = [r for r in rs if r.hit_step is not None]
            rules = sorted({k for r in hits for k in r.detected if k in r.case.expect})
            leads = []
            for r in hits:
                assert r.hit_step is not None
                end = r.loss_step if r.loss_step is not None else r.steps_run
                leads.append(end - r.hit_step)
            loss_steps = [r.loss_step for r in rs if r.loss_step is not None]
            never = sum(1 for r in rs if r.loss_step is None)
            shown = _steps(loss_steps) + (f", never in {never}" if never else "")
            others = sorted(
                {k for r in rs for k in r.detected if k not in r.case.expect}
            )
            named = ", ".join(rules) or "–"
            lines.append(
                f"| {failure} | {arch} | {len(hits)}/{len(rs)} | {named}"
                f" | {_steps([r.hit_step for r in hits if r.hit_step is not None])}"
                f" | {shown} | {_steps(leads)} | {', '.join(others) or '–'} |"
            )
    lines += [
        "",
        "| healthy runs | arch | runs | diagnoses per run | rules that fired |",
        "|---|---|---|---|---|",
    ]
    for (f, arch), rs in by.items():
        if f != "healthy":
            continue
        fired = sorted({k for r in rs for k in r.detected})
        per = statistics.fmean(len(r.detected) for r in rs)
        lines.append(
            f"| healthy | {arch} | {len(rs)} | {per:.2f} | {', '.join(fired) or '–'} |"
        )
    return "\n".join(lines)


def summary(results: list[Result]) -> tuple[int, int, int, int]:
    """(broken runs detected, broken runs, healthy runs with a diagnosis, healthy)."""
    broken = [r for r in results if r.case.failure != "healthy"]
    healthy = [r for r in results if r.case.failure == "healthy"]
    return (
        sum(1 for r in broken if r.hit_step is not None),
        len(broken),
        sum(1 for r in healthy if r.detected),
        len(healthy),
    )
