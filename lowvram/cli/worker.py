"""`lowvram worker RUN_DIR`: one process of a context-parallel run (started by `lowvram generate`; not for people)."""

from __future__ import annotations


def register(sub) -> None:
    # no help: left out of `lowvram --help` (it is started by `lowvram generate`)
    p = sub.add_parser("worker", description="One process of a context-parallel run (started by `lowvram generate`).")
    p.add_argument("run_dir", help="the run folder lowvram.parallel.launch wrote")
    p.add_argument("--one-gpu", action="store_true", help="finish the run on one GPU after an out-of-memory")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from lowvram.parallel.worker import run as run_worker

    return run_worker(Path(args.run_dir), one_gpu=args.one_gpu)
