"""Getting diffusers pipelines from the Hugging Face hub: what is cached, what a download needs, the download.

Everything goes through huggingface_hub into its usual cache (HF_HOME / HF_HUB_CACHE), so other
tools share the files and `--model NAME` finds them. A download:
1. lists the files it needs and their sizes (the hub's file list; nothing downloaded yet),
2. checks the free disk where the cache is (exit 2 with the numbers when it does not fit),
3. downloads with a progress line (bytes, speed, time left) that lowvram prints itself, so it shows
   even while the libraries' own progress bars are off,
4. keeps every finished file: an interrupted download, run again, fetches only what is missing
   (a dropped connection inside a run resumes from the last 10 MB huggingface_hub wrote; a file cut
   off by Ctrl-C restarts, and its partial copy is removed).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from lowvram.errors import UserError

# The files a pipeline needs: configs, safetensors weights, tokenizer files (never pickle weights).
PIPELINE_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*", "spiece*"]
WEIGHT_COMPONENTS = ("transformer", "transformer_2", "text_encoder", "vae", "image_encoder")
PROGRESS_EVERY_S = 2.0


def cache_root() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def repo_cache_folder(repo_id: str) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return cache_root() / repo_folder_name(repo_id=repo_id, repo_type="model")


def ignore_patterns(skip: tuple[str, ...]) -> Optional[list[str]]:
    """Leave out the weights of `skip` components (their configs still come: the planner reads them)."""
    return [f"{c}/*.safetensors" for c in skip] or None


def _hub_error(repo_id: str, exc: Exception) -> UserError:
    return UserError(
        f"{repo_id}: could not reach it on the Hugging Face hub ({type(exc).__name__}: {exc}). "
        "Check the name, your network (and HF_TOKEN for gated models), or download it yourself and pass the local folder."
    )


# --- What is here ------------------------------------------------------------------------------------------


def cached_snapshot(repo_id: str) -> Optional[Path]:
    """The newest cached snapshot folder of a repo that has its model_index.json; never downloads."""
    refs = repo_cache_folder(repo_id) / "refs" / "main"
    snapshots = repo_cache_folder(repo_id) / "snapshots"
    folder = None
    if refs.is_file():
        folder = snapshots / refs.read_text().strip()
    elif snapshots.is_dir():
        candidates = sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
        folder = candidates[0] if candidates else None
    if folder is not None and (folder / "model_index.json").is_file():
        return folder
    return None


def missing_parts(folder: Path, skip: tuple[str, ...] = ()) -> list[str]:
    """The components of a pipeline folder whose files are not all there ("text_encoder (2 of 5 shards)")."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, json.JSONDecodeError):
        return ["model_index.json"]
    missing = []
    for name, entry in index.items():
        if name.startswith("_") or not (isinstance(entry, list) and entry and entry[0]):
            continue
        sub = folder / name
        if not sub.is_dir() or not any(sub.iterdir()):
            missing.append(name)
            continue
        if name not in WEIGHT_COMPONENTS or name in skip:
            continue
        shard_lists = list(sub.glob("*.safetensors.index.json"))
        if shard_lists:
            shards = set(json.loads(shard_lists[0].read_text()).get("weight_map", {}).values())
            absent = [s for s in shards if not (sub / s).is_file()]
            if absent:
                missing.append(f"{name} ({len(absent)} of {len(shards)} weight files)")
        elif not any(sub.glob("*.safetensors")):
            missing.append(f"{name} (weights)")
    return missing


def fetch_configs(repo_id: str) -> Path:
    """The repo's small *.json files (configs), downloaded if needed: what the planner reads for an unknown hub id."""
    cached = cached_snapshot(repo_id)
    if cached is not None:
        return cached
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=["*.json"], tqdm_class=_Silent.make()))
    except Exception as exc:  # network, auth, missing repo, offline mode: all user-fixable
        raise _hub_error(repo_id, exc) from exc
    if not (folder / "model_index.json").is_file():
        raise UserError(f"{repo_id}: has no model_index.json; it is not a diffusers pipeline. Use a diffusers Wan checkpoint.")
    return folder


# --- Downloading -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DownloadPlan:
    repo_id: str
    files: tuple[tuple[str, int], ...]  # (path in the repo, bytes) still to download
    total_bytes: int  # every file the pipeline needs, downloaded or not
    download_bytes: int  # what is still missing
    target: Path  # where the files go
    free_bytes: int

    def describe(self) -> str:
        have = self.total_bytes - self.download_bytes
        return (
            f"{self.repo_id}: {gib(self.download_bytes)} to download in {len(self.files)} files"
            + (f" ({gib(have)} already here)" if have else "")
            + f", into {self.target} ({gib(self.free_bytes)} free)"
        )


def gib(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB" if n >= 1024**3 / 10 else f"{n / 1024**2:.1f} MiB"


def free_bytes(path: Path) -> int:
    """Free space on the disk that holds `path` (or its nearest existing parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def plan_download(repo_id: str, skip: tuple[str, ...] = ()) -> DownloadPlan:
    """Which files a download needs and their sizes, from the hub's file list (no weights fetched)."""
    from huggingface_hub import snapshot_download

    try:
        infos = snapshot_download(repo_id, allow_patterns=PIPELINE_PATTERNS, ignore_patterns=ignore_patterns(skip), dry_run=True,
                                  tqdm_class=_Silent.make())
    except Exception as exc:
        raise _hub_error(repo_id, exc) from exc
    if not any(i.filename == "model_index.json" for i in infos):
        raise UserError(f"{repo_id}: has no model_index.json; it is not a diffusers pipeline. Use a diffusers Wan checkpoint.")
    todo = tuple((i.filename, int(i.file_size or 0)) for i in infos if i.will_download)
    return DownloadPlan(
        repo_id=repo_id,
        files=todo,
        total_bytes=sum(int(i.file_size or 0) for i in infos),
        download_bytes=sum(size for _, size in todo),
        target=cache_root(),
        free_bytes=free_bytes(cache_root()),
    )


def check_disk(plan: DownloadPlan) -> None:
    if plan.download_bytes > plan.free_bytes:
        short = plan.download_bytes - plan.free_bytes
        raise UserError(
            f"{plan.repo_id}: needs {gib(plan.download_bytes)} of disk at {plan.target} but only {gib(plan.free_bytes)} is free "
            f"({gib(short)} short). Free some space, or put the cache on a bigger disk (HF_HOME=/big/disk/huggingface), "
            "then run the command again. Nothing was downloaded."
        )


class _Silent:
    """A tqdm stand-in for huggingface_hub: lowvram prints its own progress line (see ProgressLine)."""

    @staticmethod
    def make():
        from tqdm.auto import tqdm

        class Silent(tqdm):
            def __init__(self, *args, **kwargs):
                kwargs.pop("name", None)
                kwargs["disable"] = True
                super().__init__(*args, **kwargs)

        return Silent


class ProgressLine:
    """'downloading: 12.3 of 57.2 GiB (21%), 95 MB/s, about 8 min left', on one line of a terminal, or a
    line every few seconds into a log."""

    def __init__(self, total: int, stream=None, every_s: float = PROGRESS_EVERY_S) -> None:
        self.total = max(total, 1)
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.t0 = time.monotonic()
        self.last = 0.0
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def __call__(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < (0.5 if self.tty else self.every_s):
            return
        self.last = now
        elapsed = max(now - self.t0, 1e-6)
        rate = done / elapsed
        left = (self.total - done) / rate if rate > 0 else float("inf")
        eta = "done" if final else (f"about {_duration(left)} left" if rate > 0 else "starting")
        line = f"downloading: {gib(done)} of {gib(self.total)} ({100 * min(done, self.total) / self.total:.0f}%), {rate / 1e6:.1f} MB/s, {eta}"
        if self.tty:
            self.stream.write("\r" + line.ljust(79) + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _blob_bytes(folder: Path) -> int:
    """Bytes under the repo's blobs/ folder, finished and in-flight (*.incomplete) files alike."""
    blobs = folder / "blobs"
    if not blobs.is_dir():
        return 0
    total = 0
    for p in blobs.iterdir():
        try:
            total += p.stat().st_size
        except OSError:  # renamed while we looked
            continue
    return total


def _remove_incomplete(folder: Path, before: set[str]) -> None:
    """Partial files this download started: the library cannot reuse them (their names are unique)."""
    blobs = folder / "blobs"
    if blobs.is_dir():
        for p in blobs.glob("*.incomplete"):
            if p.name not in before:
                p.unlink(missing_ok=True)


# The download itself runs in a child process: huggingface_hub downloads in a thread pool that Python joins
# at exit, so after Ctrl-C a download in this process would go on (or hang on a stalled connection) until it
# ends. A child can be stopped at once; lowvram then removes the partial file it leaves.
_CHILD = """
import json, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
from huggingface_hub import snapshot_download
a = json.loads(sys.argv[1])
print(snapshot_download(a["repo"], allow_patterns=a["allow"], ignore_patterns=a["ignore"]))
"""


def download(repo_id: str, skip: tuple[str, ...] = (), say: Callable[[str], None] = print, stream=None,
             plan: Optional[DownloadPlan] = None) -> Path:
    """Download a pipeline (without the weights of `skip` components) into the hub cache; its snapshot folder."""
    import os
    import subprocess
    import tempfile

    plan = plan or plan_download(repo_id, skip)
    check_disk(plan)
    if not plan.files:
        say(f"{repo_id}: already downloaded ({gib(plan.total_bytes)})")
        return _snapshot_folder(repo_id, skip)
    say(f"downloading {plan.describe()}")
    folder = repo_cache_folder(repo_id)
    start = _blob_bytes(folder)
    before = {p.name for p in (folder / "blobs").glob("*.incomplete")} if (folder / "blobs").is_dir() else set()
    args = json.dumps({"repo": repo_id, "allow": PIPELINE_PATTERNS, "ignore": ignore_patterns(skip)})
    env = dict(os.environ, HF_HUB_DISABLE_PROGRESS_BARS="1")
    progress = ProgressLine(plan.download_bytes, stream)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen([sys.executable, "-c", _CHILD, args], stdout=out, stderr=err, text=True, env=env)
        try:
            while child.poll() is None:
                try:
                    child.wait(timeout=0.25)
                except subprocess.TimeoutExpired:
                    pass
                progress(max(0, _blob_bytes(folder) - start))
        except BaseException:  # Ctrl-C (or any error here): stop the download now, leave no partial file behind
            child.kill()
            child.wait()
            _remove_incomplete(folder, before)
            raise
        out.seek(0)
        err.seek(0)
        if child.returncode != 0:
            _remove_incomplete(folder, before)
            lines = [ln for ln in err.read().strip().splitlines() if ln.strip()]
            raise UserError(
                f"{repo_id}: the download stopped ({lines[-1] if lines else f'exit code {child.returncode}'}). "
                "Run the command again to continue: finished files are kept."
            )
        path = Path(out.read().strip().splitlines()[-1])
    progress(plan.download_bytes, final=True)
    return path


def _snapshot_folder(repo_id: str, skip: tuple[str, ...]) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=PIPELINE_PATTERNS, ignore_patterns=ignore_patterns(skip), tqdm_class=_Silent.make()))
    except Exception as exc:
        raise _hub_error(repo_id, exc) from exc


def ensure_pipeline(repo_id: str, skip: tuple[str, ...] = (), say: Callable[[str], None] = print) -> Path:
    """The local snapshot of a hub pipeline: the cached one when it is complete (no network), else downloaded."""
    cached = cached_snapshot(repo_id)
    if cached is not None and not missing_parts(cached, skip):
        return cached
    return download(repo_id, skip, say=say)
