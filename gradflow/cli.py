"""The ``gradflow`` command: ``list``, ``figures`` and ``sweep`` (later issues add more)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

__all__ = ["main"]


def _cmd_list(args) -> int:
    from gradflow import experiments

    width = max(len(name) for name in experiments.names()) + 1
    for name in experiments.names():
        print(f"{name:{width}s} {experiments.get(name).DESCRIPTION}")
    return 0


def _cmd_figures(args) -> int:
    from gradflow import experiments, progress

    names = args.only or list(experiments.names())
    for name in names:  # validate all names before running anything
        experiments.get(name)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    # Experiments report their stages with gradflow.progress.stage(...): a live line on a
    # terminal, one plain line per stage on stderr otherwise, nothing with --quiet.
    with progress.display(len(names), quiet=args.quiet) as display:
        for name in names:
            t0 = time.perf_counter()
            with display.experiment(name):
                result = experiments.get(name).run(out, full=args.full)
            dt = time.perf_counter() - t0
            summary[name] = {"seconds": round(dt, 2), **(result or {})}
            print(f"[gradflow] {name}: {dt:.1f} s -> {out / name}", flush=True)
    from gradflow.experiments._io import save_json

    save_json(summary, out / "summary.json")
    return 0


def _cmd_verify(directory: str, quiet: bool) -> int:
    from gradflow.sweep import store

    check = store.verify(directory)
    state = "complete" if check.complete else "not finished"
    if check.holder is not None:
        h = check.holder
        state += f", being written by pid {h.pid} on {h.host!r} since {h.started}"
    problems = check.problems
    print(f"[gradflow] {directory}: {state}; {len(check.ok)}/{check.n_chunks} chunk(s) intact")
    for line in problems:
        print(f"[gradflow]   {line}")
    if problems and not quiet:
        print(
            "[gradflow]   run the same sweep in this directory to recompute them",
            file=sys.stderr,
        )
    return 1 if problems else 0


def _cmd_sweep(args) -> int:
    from gradflow import sweep

    if args.verify is not None:
        if args.config is not None or args.out is not None:
            raise ValueError("--verify DIR takes no CONFIG.toml and no --out")
        return _cmd_verify(args.verify, args.quiet)
    if args.config is None or args.out is None:
        raise ValueError("sweep needs CONFIG.toml and --out DIR (or --verify DIR)")
    config = Path(args.config)
    if not config.is_file():
        raise ValueError(f"CONFIG {config} is not a file")
    sw, run_opts = sweep.from_toml(config)
    if args.batch_size is not None:
        run_opts["batch_size"] = args.batch_size
    if args.memory_budget is not None:
        run_opts["memory_budget"] = args.memory_budget
    if args.vmap_size is not None:
        run_opts["vmap_size"] = args.vmap_size
    t0 = time.perf_counter()
    result = sweep.run(sw, args.out, quiet=args.quiet, **run_opts)
    dt = time.perf_counter() - t0
    session = result.manifest["sessions"][-1]
    if not args.quiet:
        print(
            f"[gradflow] sweep {config.name}: {sw.n_configs} configs, "
            f"{session['chunks_computed']} chunk(s) computed, {session['chunks_skipped']} "
            f"skipped, {dt:.1f} s -> {args.out}",
            flush=True,
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradflow", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", help="show the Python traceback of an error"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="list the experiments, one line each", parents=[common])
    p.set_defaults(func=_cmd_list)
    p = sub.add_parser(
        "figures",
        help="run experiments and write DIR/NAME/*.png plus their numbers",
        parents=[common],
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these experiments")
    p.add_argument("--full", action="store_true", help="paper-sized runs instead of CPU-sized")
    p.add_argument(
        "--quiet", action="store_true", help="no progress display on stderr (results still print)"
    )
    p.set_defaults(func=_cmd_figures)
    p = sub.add_parser(
        "sweep",
        help="run (or resume) the sweep described by a TOML file, chunk by chunk",
        parents=[common],
    )
    p.add_argument(
        "config", nargs="?", metavar="CONFIG.toml", help="sweep description (see examples/)"
    )
    p.add_argument("--out", help="results directory; rerun to resume")
    p.add_argument(
        "--verify",
        metavar="DIR",
        help="check a results directory (manifest, chunk checksums) without running anything; "
        "exit status 1 if anything is damaged or missing",
    )
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--batch-size", type=int, help="configurations vmapped per device per step")
    p.add_argument("--memory-budget", help="bytes per device per chunk, e.g. 512MB (default 1GiB)")
    p.add_argument("--vmap-size", type=int, help="configurations vmapped at once (default: all)")
    p.set_defaults(func=_cmd_sweep)
    return parser


def main(argv=None) -> int:
    """Runs the command; bad input (ValueError, TypeError, OSError such as an unwritable
    ``--out`` or a directory another run holds) is one ``gradflow: error: …`` line on stderr
    and exit status 2. ``--debug`` (or ``GRADFLOW_TRACEBACK=1``) shows the traceback instead."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError) as exc:  # bad names/arguments/paths: one line
        if args.debug or os.environ.get("GRADFLOW_TRACEBACK"):
            raise
        print(f"gradflow: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
