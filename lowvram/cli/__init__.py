"""The `lowvram` command line. Each subcommand lives in its own module with `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

# Subcommand modules, imported lazily so `lowvram --help` stays fast.
SUBCOMMANDS = ("generate", "probe", "plan", "calibrate", "profile", "tui", "bench", "models", "download", "worker")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lowvram",
        description="Run Wan2.1 and Wan2.2 video models on consumer GPUs: probe the machine, plan how to fit the model, generate.",
    )
    parser.add_argument("--version", action="version", version=f"lowvram {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"lowvram.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"lowvram.cli.{name}":
                continue  # not built yet
            raise
        module.register(sub)
    return parser


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("lowvram")
    except metadata.PackageNotFoundError:
        return "unknown"


# Pinned host memory through malloc + cudaHostRegister on several threads instead of cudaHostAlloc: page-locking
# a streamed expert at its phase start ran at ~1 GB/s with cudaHostAlloc (bench wan22 run 12, H200).
ALLOC_CONF = "expandable_segments:True,pinned_use_cuda_host_register:True,pinned_num_register_threads:8"


def use_expandable_segments() -> None:
    """Ask torch's CUDA allocator for expandable segments unless the user configured it (read at the first
    CUDA allocation, so this must run before any). With streamed weights the default allocator fragments:
    the 14B at 720p with 19 blocks resident ran out of memory under a 24 GiB cap at 21.0 GiB allocated;
    with expandable segments it ran at 22.3 GiB allocated, 24.0 reserved (bench, docs/benchmarks.md)."""
    import os

    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", ALLOC_CONF)


def _say(text: str) -> None:
    """The last word on stderr; a terminal that is gone (closed window) does not change the exit code."""
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    from lowvram.errors import CancelledError, UserError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse printed usage + the problem; --help and --version exit 0
        return exc.code if isinstance(exc.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if args.command != "bench":  # the benchmark measures upstream recipes with torch's default allocator
        use_expandable_segments()
    import contextlib

    from lowvram.cli.interrupt import stop_like_ctrl_c

    try:
        with stop_like_ctrl_c() if args.command != "tui" else contextlib.nullcontext():  # the TUI owns its terminal
            return int(args.func(args) or 0)
    except UserError as exc:
        _say(f"error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except CancelledError:  # stopped at a step boundary (Ctrl-C, SIGTERM, SIGHUP); it said where the latents are
        _say("cancelled")
        return 130
    except BrokenPipeError:  # the reader went away (`lowvram plan | head`): stop quietly, as a SIGPIPE would
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # or the flush at exit fails again
        return 141


if __name__ == "__main__":
    sys.exit(main())
