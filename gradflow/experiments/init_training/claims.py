"""The papers' claims and the verdicts the measurements give them.

A run is summarised per (optimiser, init, depth) by a :class:`Cell`; a configuration *trains*
when more than half of its seeds reach the target test accuracy (so that the median steps to
target is finite). Each claim function returns one row of the claims table: a dict with
``claim``, ``source``, ``optimizer``, ``measured`` (the numbers), ``holds`` ("yes", "no" or
"partly") and ``reason`` (one line).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

__all__ = [
    "Cell",
    "trains",
    "yilmaz_poli_claim",
    "kumar_claim",
    "critical_claim",
    "claims_table",
    "CLAIM_DEPTHS",
]

# The depths Yilmaz & Poli (2022) name: "networks with 10 and 15 hidden layers".
CLAIM_DEPTHS = (10, 15)

YP, KUMAR, CRITICAL = "yilmaz_poli", "kumar", "critical"
BASELINES = ("glorot", "gaussian")


class Cell(NamedTuple):
    """One (optimiser, init, depth): steps to target and final test accuracy over its seeds.

    Attributes:
      reached: seeds that reached the target test accuracy; n: seeds.
      median_steps: median steps to target, +inf when half or more never reached it.
      mean_accuracy, low, high: mean final test accuracy and its 95 % t-interval.
      chi1: median empirical χ₁ at initialisation (NaN if not measured).
    """

    reached: int
    n: int
    median_steps: float
    mean_accuracy: float
    low: float
    high: float
    chi1: float = math.nan


Cells = Mapping[tuple[str, str, int], Cell]  # (optimizer, init key, depth) -> Cell


def trains(cell: Cell) -> bool:
    """More than half of the seeds reached the target (the median steps to it is finite)."""
    return 2 * cell.reached > cell.n


def _steps(x: float) -> str:
    return f"{x:.0f} steps" if math.isfinite(x) else "not reached"


def _describe(label: str, c: Cell) -> str:
    return (
        f"{label} {c.reached}/{c.n} seeds reach the target, median {_steps(c.median_steps)}, "
        f"accuracy {c.mean_accuracy:.3f} [{c.low:.3f}, {c.high:.3f}]"
    )


def _depths(cells: Cells, optimizer: str, init: str) -> list[int]:
    return sorted(d for (o, i, d) in cells if o == optimizer and i == init)


def yilmaz_poli_claim(cells: Cells, optimizer: str, target: float) -> dict:
    """Yilmaz & Poli 2022: logistic MLPs of 10 and 15 hidden layers train "very efficiently and
    effectively" with their init (mean −8/N), compared with the other inits.

    At each claimed depth (10 and 15, or every depth of the run if neither was run):
    *effective* = YP trains and its mean accuracy's interval reaches the best other init's mean;
    *efficient* = its median steps to target is no more than any other init's. "yes": both at
    every claimed depth; "partly": effective at one or more; "no": effective at none.
    """
    depths = [d for d in CLAIM_DEPTHS if (optimizer, YP, d) in cells]
    depths = depths or _depths(cells, optimizer, YP)
    inits = sorted({i for (o, i, _) in cells if o == optimizer and i != YP})
    effective, efficient, parts = [], [], []
    for d in depths:
        yp = cells[optimizer, YP, d]
        others = {i: cells[optimizer, i, d] for i in inits if (optimizer, i, d) in cells}
        best = max(others.items(), key=lambda kv: kv[1].mean_accuracy, default=None)
        fastest = min(others.items(), key=lambda kv: kv[1].median_steps, default=None)
        eff = trains(yp) and (best is None or yp.high >= best[1].mean_accuracy)
        fast = fastest is None or yp.median_steps <= fastest[1].median_steps
        effective.append(eff)
        efficient.append(eff and fast)
        text = f"depth {d}: {_describe('YP', yp)}"
        if best is not None:
            text += f"; best other {best[0]} {best[1].mean_accuracy:.3f}"
            text += (
                f", fastest other {fastest[0]} {_steps(fastest[1].median_steps)}"
                if math.isfinite(fastest[1].median_steps)
                else ", no other init reaches the target"
            )
        parts.append(text)
    if depths and all(efficient):
        holds, reason = "yes", "YP trains, as accurately and as fast as any other init"
    elif any(effective):
        ok = [d for d, e in zip(depths, effective) if e]
        slow = [d for d, e, f in zip(depths, effective, efficient) if e and not f]
        reason = f"YP trains at depth(s) {ok}"
        reason += f" but another init is faster at {slow}" if slow else ""
        reason += "; not at the others" if len(ok) < len(depths) else ""
        holds = "partly"
    else:
        holds = "no"
        reason = f"YP does not train to {target:g} test accuracy (or trails another init)"
    return {
        "claim": "10- and 15-hidden-layer logistic MLPs train very efficiently and effectively "
        "with the Yilmaz–Poli init (mean −8/N), vs the other inits",
        "source": "Yilmaz & Poli 2022, Neural Networks 153:87–103 (abstract)",
        "optimizer": optimizer,
        "measured": "; ".join(parts),
        "holds": holds,
        "reason": reason,
    }


def kumar_claim(cells: Cells, optimizer: str, target: float) -> dict:
    """Kumar 2017: his variance-preserving init (3.6/√N for the logistic function) makes deep
    sigmoid nets trainable where Glorot's and N(0, 1/N) do not.

    Per depth: *separates* = Kumar trains and neither baseline does; *worse* = Kumar fails where
    a baseline trains. "yes": some depth separates and none is worse; "no": Kumar never trains,
    or is worse somewhere; "partly": Kumar trains but no depth separates it from the baselines.
    """
    depths = _depths(cells, optimizer, KUMAR)
    sep, worse, k_trains, parts = [], [], [], []
    for d in depths:
        k = cells[optimizer, KUMAR, d]
        base = [cells[optimizer, b, d] for b in BASELINES if (optimizer, b, d) in cells]
        base_trains = any(trains(b) for b in base)
        k_trains.append(trains(k))
        sep.append(trains(k) and not base_trains)
        worse.append(not trains(k) and base_trains)
        names = ", ".join(
            f"{b} {cells[optimizer, b, d].reached}/{cells[optimizer, b, d].n}"
            for b in BASELINES
            if (optimizer, b, d) in cells
        )
        parts.append(f"depth {d}: {_describe('Kumar', k)}; reached by {names}")
    if any(worse) or not any(k_trains):
        holds = "no"
        reason = (
            f"Kumar fails where a baseline trains (depth {[d for d, w in zip(depths, worse) if w]})"
            if any(worse)
            else f"Kumar's init does not reach {target:g} test accuracy at any depth"
        )
    elif any(sep):
        holds = "yes"
        reason = f"only Kumar trains at depth(s) {[d for d, s in zip(depths, sep) if s]}"
    else:
        holds = "partly"
        ok = [d for d, t in zip(depths, k_trains) if t]
        reason = f"Kumar trains at depth(s) {ok}, but so do Glorot/N(0, 1/N): no advantage"
    return {
        "claim": "Kumar's variance-preserving init (3.6/√N) makes deep sigmoid nets trainable "
        "where Glorot and N(0, 1/N) do not",
        "source": "Kumar 2017, arXiv:1704.08863, §3 and experiments",
        "optimizer": optimizer,
        "measured": "; ".join(parts),
        "holds": holds,
        "reason": reason,
    }


def critical_claim(cells: Cells, optimizer: str, target: float) -> dict:
    """The edge of chaos: χ₁ = 1 at initialisation keeps deep nets trainable.

    "yes": the critical init trains at every depth; "partly": at some; "no": at none.
    """
    depths = _depths(cells, optimizer, CRITICAL)
    ok = [d for d in depths if trains(cells[optimizer, CRITICAL, d])]
    parts = [
        f"depth {d}: {_describe('critical', cells[optimizer, CRITICAL, d])}, "
        f"measured χ₁ {cells[optimizer, CRITICAL, d].chi1:.2f}"
        for d in depths
    ]
    if depths and len(ok) == len(depths):
        holds, reason = "yes", f"the critical init trains at every depth up to {max(depths)}"
    elif ok:
        holds, reason = "partly", f"the critical init trains at depth(s) {ok} only"
    else:
        holds, reason = "no", f"the critical init reaches {target:g} test accuracy at no depth"
    return {
        "claim": "χ₁ = 1 at initialisation (edge of chaos) ⇒ deep nets are trainable",
        "source": "Poole et al. 2016 (arXiv:1606.05340); Schoenholz et al. 2017 (arXiv:1611.01232)",
        "optimizer": optimizer,
        "measured": "; ".join(parts),
        "holds": holds,
        "reason": reason,
    }


def claims_table(cells: Cells, optimizers: Sequence[str], target: float) -> list[dict]:
    """Every claim's row for every optimiser (rows in claim order, then optimiser order)."""
    return [
        fn(cells, o, target)
        for fn in (yilmaz_poli_claim, kumar_claim, critical_claim)
        for o in optimizers
    ]
