"""The study's tables: records aggregated over seeds, as rows, Markdown and CSV."""

from __future__ import annotations

import csv
import io

import numpy as np

from gradflow.experiments.mitigations.measure import nanmedian
from gradflow.experiments.mitigations.settings import Config

__all__ = ["mlp_table", "rnn_table", "mlp_markdown", "rnn_markdown", "to_csv"]


def mlp_table(records: list[dict], cfg: Config) -> list[dict]:
    """One row per (method, optimiser, clipping), aggregated over seeds."""
    rows, keys = [], []
    for r in records:
        k = (r["method"], r["optimizer"], r["clipping"])
        if k not in keys:
            keys.append(k)
    for k in keys:
        rs = [r for r in records if (r["method"], r["optimizer"], r["clipping"]) == k]
        acc = np.array([r["final_accuracy"] for r in rs])
        st = np.array([r["steps_to_target"] for r in rs])
        rows.append(
            {
                "method": k[0],
                "optimizer": k[1],
                "clipping": k[2],
                "seeds": len(rs),
                "final_accuracy_mean": float(acc.mean()),
                "final_accuracy_min": float(acc.min()),
                "final_accuracy_max": float(acc.max()),
                "reached_target": int(np.isfinite(st).sum()),
                "median_steps_to_target": float(np.median(st[np.isfinite(st)]))
                if np.isfinite(st).any()
                else float("nan"),
                "log10_first_over_last_start": float(
                    nanmedian([r["log10_first_over_last_start"] for r in rs])
                ),
                "log10_first_over_last_end": float(
                    nanmedian([r["log10_first_over_last_end"] for r in rs])
                ),
                "diverged": int(sum(r["diverged"] for r in rs)),
                # per-layer gradient norms at the start (initialisation, or after pre-training)
                # and at the end of training, first (input) layer
                "log10_grad_input_start": _median_of(rs, "log10_grad_input_start"),
                "log10_grad_input_end": _median_of(rs, "log10_grad_input_end"),
                # every seed's accuracy, so figures can show the spread (";"-joined in the CSV)
                "final_accuracy_seeds": [float(a) for a in acc],
            }
        )
    return rows


def _median_of(rs: list[dict], key: str) -> float:
    """Median over seeds of a record field (NaN if no record has it: hand-made or older ones)."""
    return float(nanmedian([r.get(key, float("nan")) for r in rs]))


def rnn_table(records: list[dict]) -> list[dict]:
    """One row per (task, model, variant, length): success rate and median test error over seeds."""
    rows, keys = [], []
    for r in records:
        k = (r["task"], r["model"], r["variant"], r["length"])
        if k not in keys:
            keys.append(k)
    for k in keys:
        rs = [r for r in records if (r["task"], r["model"], r["variant"], r["length"]) == k]
        rows.append(
            {
                "task": k[0],
                "model": k[1],
                "variant": k[2],
                "length": k[3],
                "seeds": len(rs),
                "success_rate": float(np.mean([r["success"] for r in rs])),
                "median_test_error": float(np.median([r["test_error"] for r in rs])),
                "diverged": int(sum(r["diverged"] for r in rs)),
            }
        )
    return rows


def _fmt(x, digits=2):
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return "—" if not np.isfinite(x) else f"{x:.{digits}f}"
    return str(x)


def mlp_markdown(rows: list[dict], cfg: Config, dataset: str) -> str:
    head = (
        f"Deep MLPs (depth {cfg.depth}, width {cfg.width}) on `{dataset}`, {cfg.steps} steps of "
        f"batch {cfg.batch}, {cfg.seeds} seeds; clipping at global norm {cfg.clip_norm:g}; target "
        f"accuracy {cfg.target_accuracy:g}. Ratio = log10 ‖∂L/∂θ_1‖/‖∂L/∂θ_{cfg.depth}‖ (first vs "
        "last hidden layer) at the first step and at the end; log10 ‖∂L/∂θ_1‖ is the input "
        "layer's own gradient norm (medians over seeds; — where it underflowed to 0). The start of "
        f"the pre-trained net is after greedy layer-wise pre-training ({cfg.pretrain_method}s, "
        f"{cfg.pretrain_steps} Adam steps per level); gradient amplification multiplies the "
        f"gradients of a random {cfg.amp_fraction:g} of the input and hidden layers, drawn anew "
        f"every epoch, by {cfg.amp_factor:g} during the first {cfg.amp_until:g} of training.\n\n"
        "| method | optimiser | clip | test accuracy (mean [min, max]) | reached target | median "
        "steps to target | log10 ratio, start | log10 ratio, end | diverged | log10 ‖∂L/∂θ_1‖, "
        "start | log10 ‖∂L/∂θ_1‖, end |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['method']} | {r['optimizer']} | {_fmt(r['clipping'])} | "
        f"{r['final_accuracy_mean']:.3f} "
        f"[{r['final_accuracy_min']:.3f}, {r['final_accuracy_max']:.3f}] | "
        f"{r['reached_target']}/{r['seeds']} | {_fmt(r['median_steps_to_target'], 0)} | "
        f"{_fmt(r['log10_first_over_last_start'], 1)} | "
        f"{_fmt(r['log10_first_over_last_end'], 1)} | "
        f"{r['diverged']}/{r['seeds']} | "
        f"{_fmt(r.get('log10_grad_input_start', float('nan')), 1)} | "
        f"{_fmt(r.get('log10_grad_input_end', float('nan')), 1)} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def rnn_markdown(rows: list[dict], cfg: Config) -> str:
    lengths = sorted({r["length"] for r in rows})
    head = (
        f"Recurrent nets (width {cfg.rnn_width}), {cfg.rnn_steps} SGD steps (momentum "
        f"{cfg.momentum:g}, lr {cfg.rnn_learning_rate:g}) of batch {cfg.rnn_batch}, "
        f"{cfg.rnn_seeds} seeds. SGD-C clips at {cfg.rnn_clip_norm:g}; SGD-CR adds Pascanu's Ω "
        f"with α = {cfg.alpha:g}. Success rate (test error below the task's threshold), median "
        "test error in brackets, (d) marks diverged runs.\n\n"
        "| task | model | method | " + " | ".join(f"T = {T}" for T in lengths) + " |\n"
        "|---|---|---|" + "---|" * len(lengths) + "\n"
    )
    lines = []
    seen = []
    for r in rows:
        k = (r["task"], r["model"], r["variant"])
        if k in seen:
            continue
        seen.append(k)
        cells = []
        for T in lengths:
            m = [x for x in rows if (x["task"], x["model"], x["variant"], x["length"]) == k + (T,)]
            if not m:
                cells.append("")
                continue
            x = m[0]
            d = f" ({x['diverged']}d)" if x["diverged"] else ""
            cells.append(f"{x['success_rate']:.2f} [{x['median_test_error']:.3g}]{d}")
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def _csv_cell(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list):
        return ";".join(_csv_cell(x) for x in v)
    return v


def to_csv(rows: list[dict]) -> str:
    """``rows`` (dicts with the same keys) as CSV text, floats to 6 significant digits."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    for r in rows:
        w.writerow({k: _csv_cell(v) for k, v in r.items()})
    return buf.getvalue()
