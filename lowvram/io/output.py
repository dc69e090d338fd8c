"""Write results without losing or clobbering anything.

- A run reserves its output name before it loads anything, with a claim file (`.lowvram-claim-<hash of the
  name>`) made by a hard link, which fails when the name exists: two runs never get the same name, and a file
  or link already at a name is never replaced (the next free name is taken: name-1.mp4, ...).
- The video and its sidecar are written under scratch names (lowvram.io.scratch: exclusive, unpredictable,
  never through a link) and published with no-clobber links, sidecar first and video last, in a shielded block
  (a second Ctrl-C waits for it). The sidecar records the video's sha256, so a pair can be checked.
- A claim whose owner died is swept at the next start, with a sidecar it published without its video: a video
  and its sidecar appear together or not at all.
- Everything that can fail for lack of room or rights is checked before the model loads (`check_output_folder`);
  what still fails at the write stage is a `WriteFailed` (exit code 4): the run keeps its latents for --resume.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import stat
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

from lowvram.errors import UserError
from lowvram.io import critical, scratch

DEFAULT_OUT_DIR = "outputs"
CLAIM_PREFIX = ".lowvram-claim-"
CLAIM_MAX_BYTES = 4096
# A claim is written whole before it appears (a hard link); only the no-link fallback shows an empty one for an
# instant. An unreadable claim older than this is left over from a crash.
CLAIM_GRACE_S = 60.0
SIDECAR_MAX_BYTES = 64 << 20
# Space a run needs in its output folder, reserved before loading: the mp4 (raw 4:2:0 size bounds what
# libx264 writes), the latents file kept on a cancel or failure, and the sidecar.
VIDEO_BYTES_PER_PIXEL = 1.5
LATENT_CHANNELS, LATENT_SCALE = 16, 8  # Wan2.1's VAE: the largest latents per pixel of the models we run
RESUME_LATENT_COPIES = 6  # latents, the sampler's history (two model outputs, last sample), the I2V condition
TEXT_EMBED_BYTES = 2 * 512 * 4096 * 4  # prompt and negative prompt embeddings, float32
SIDECAR_BYTES = 1 << 20
SIDECAR_BYTES_PER_STEP = 4096
# File systems without hard links (FAT, exFAT, some network shares) answer link() with one of these.
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV, errno.EMLINK}


class WriteFailed(UserError):
    """The result could not be written (disk full, no permission, a folder gone). Exit code 4: the run itself
    finished; its latents are kept so that `--resume` writes the video without denoising again."""

    exit_code = 4

    def __init__(self, what: str, folder: Path, cause: BaseException, latents_path: Optional[Path] = None):
        self.what, self.folder, self.cause, self.latents_path = what, folder, cause, latents_path
        reason = _reason(cause)
        keep = (
            f" The latents are kept in {latents_path}: free some space (or fix the folder) and finish with "
            f"`lowvram generate --resume {shlex.quote(str(latents_path))}` (add --out OTHER.mp4 to write elsewhere)."
            if latents_path
            else " The latents could not be kept either; free some space and run again."
        )
        self.summary = f"could not write {what} in {folder}: {reason}"
        super().__init__(f"{self.summary}.{keep}")

    def with_latents(self, path: Optional[Path]) -> "WriteFailed":
        return WriteFailed(self.what, self.folder, self.cause, path)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    text = str(exc).strip().splitlines()
    for line in text:  # imageio-ffmpeg puts ffmpeg's own complaint after its command line
        if "No space left" in line or "Permission denied" in line:
            return line.strip()
    return (text[0][:200] if text else type(exc).__name__).rstrip(". ")


def slugify(text: str, limit: int = 40) -> str:
    slug = re.sub(r"[^a-zA-Z0-9]+", "-", text.lower()).strip("-")
    return (slug[:limit].rstrip("-")) or "video"


def sidecar_path(video: Path) -> Path:
    return video.with_suffix(".json")


def _taken(video: Path) -> bool:
    """A name is taken by anything there, a dangling link included (lexists, not exists)."""
    return os.path.lexists(video) or os.path.lexists(sidecar_path(video))


def _numbered(path: Path, n: int) -> Path:
    return path if n == 0 else path.with_name(f"{path.stem}-{n}{path.suffix}")


# ---------------------------------------------------------------------------------------------- publishing


def publish_file(tmp: Path, final: Path) -> None:
    """Give the complete file `tmp` the name `final`, unless something is there (FileExistsError).

    link() fails when the name exists, a dangling link included, so nothing is ever replaced. On a file
    system without hard links: a check, then a rename (safe against other lowvram runs: they hold claims).
    """
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        if os.path.lexists(final):
            raise FileExistsError(errno.EEXIST, "File exists", str(final)) from None
        os.rename(tmp, final)
        return
    os.unlink(tmp)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


def _claim_path(video: Path) -> Path:
    return video.with_name(CLAIM_PREFIX + hashlib.sha256(video.name.encode("utf-8", "surrogateescape")).hexdigest()[:24])


def _make_claim(video: Path, run_id: str) -> Optional[Path]:
    """Claim `video`'s name for this process; None when another run holds it."""
    claim = _claim_path(video)
    body = json.dumps({"owner": scratch.owner_tag(), "run_id": run_id, "video": video.name, "sidecar": sidecar_path(video).name})
    with scratch.scratch_file(video.parent, "claim") as tmp:
        tmp.write_text(body)
        try:
            os.link(tmp, claim)
            return claim
        except FileExistsError:
            return None
        except OSError as exc:
            if exc.errno not in _NO_LINKS:
                raise
    try:  # no hard links here: create it exclusively and fill it (the sweeper waits CLAIM_GRACE_S for the content)
        fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except FileExistsError:
        return None
    with os.fdopen(fd, "w") as fh:
        fh.write(body)
    return claim


def _read_claim(path: Path) -> Optional[dict]:
    """A claim's content; None for anything but a small regular file. The name is predictable: a FIFO planted
    there must not hang the run (open without O_NONBLOCK waits for a writer), a link to /dev/zero must not fill
    the RAM."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size > CLAIM_MAX_BYTES:
                return None
            raw = os.read(fd, CLAIM_MAX_BYTES + 1)
        finally:
            os.close(fd)
        data = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("owner"), str) else None


def sweep_outputs(folder: Path) -> list[Path]:
    """Remove what crashed runs left in an output folder: scratch files, their claims, and a sidecar that a
    crash published without its video. Returns what was removed."""
    removed = scratch.sweep(folder)
    try:
        claims = [Path(e.path) for e in os.scandir(folder) if e.name.startswith(CLAIM_PREFIX)]
    except OSError:
        return removed
    for claim in claims:
        data = _read_claim(claim)
        if data is None:
            try:
                fresh = time.time() - os.lstat(claim).st_mtime < CLAIM_GRACE_S
            except OSError:
                continue
            if fresh:
                continue
        elif scratch.owner_alive(data["owner"]):
            continue
        else:
            _drop_orphan_sidecar(folder, data, removed)
        scratch.remove(claim)
        removed.append(claim)
    return removed


def _drop_orphan_sidecar(folder: Path, claim: dict, removed: list) -> None:
    """A dead run's sidecar published without its video (killed between the two links) goes too."""
    video, side = claim.get("video"), claim.get("sidecar")
    if not isinstance(video, str) or not isinstance(side, str) or "/" in video + side:
        return
    side_path = folder / side
    if os.path.lexists(folder / video) or os.path.islink(side_path) or not side_path.is_file():
        return
    try:
        if side_path.stat().st_size > SIDECAR_MAX_BYTES:
            return
        if json.loads(side_path.read_text()).get("run_id") != claim.get("run_id"):
            return  # not the dead run's own sidecar
    except (OSError, ValueError, AttributeError, RecursionError):
        return
    scratch.remove(side_path)
    removed.append(side_path)


# ---------------------------------------------------------------------------------------------- the reservation


@dataclass
class Reservation:
    """A run's output name, held by a claim file from before loading until the result is published (or the
    run ends). `release()` must be called at the end (generate() does, in `finally`)."""

    video: Path
    run_id: str
    note: Optional[str] = None
    claim: Optional[Path] = None
    _temps: list = field(default_factory=list)

    @property
    def sidecar(self) -> Path:
        return sidecar_path(self.video)

    @property
    def folder(self) -> Path:
        return self.video.parent

    def release(self) -> None:
        """Remove the scratch files and the claim (the name is free again unless it was published)."""
        for tmp in self._temps:
            scratch.remove(tmp)
        self._temps.clear()
        if self.claim is not None:
            scratch.remove(self.claim)
            self.claim = None

    def _move_on(self) -> None:
        """Something that is not a lowvram run took our name during the run: claim the next free one."""
        old = self.video
        fresh = _reserve(old, self.run_id, start=1)
        if self.claim is not None:
            scratch.remove(self.claim)
        self.video, self.claim = fresh.video, fresh.claim
        self.note = f"{old} appeared during the run; writing {self.video} instead (lowvram never overwrites a file)"

    def stage_video(self, frames: Any, fps: int) -> Path:
        """Encode the video under a scratch name (not visible as a result yet). Raises WriteFailed."""
        try:
            tmp = scratch.new_file(self.folder, "mp4")
            self._temps.append(tmp)
            encode_mp4(frames, tmp, fps)
            _fsync(tmp)
        except OSError as exc:  # imageio-ffmpeg reports ffmpeg's failures as OSError
            raise WriteFailed(f"the video {self.video.name}", self.folder, exc) from None
        return tmp

    def publish(self, video_tmp: Path, make_sidecar: Callable[[Path, Path], dict]) -> tuple[Path, Path]:
        """Publish the staged video with its sidecar (`make_sidecar(video, sidecar)` builds the sidecar's data
        for the final names). Returns (video, sidecar). Raises WriteFailed."""
        try:
            digest, size = _sha256(video_tmp)
            while True:
                data = dict(make_sidecar(self.video, self.sidecar), run_id=self.run_id)
                data["video_file"] = {"name": self.video.name, "sha256": digest, "bytes": size}
                side_tmp = scratch.new_file(self.folder, "json")
                self._temps.append(side_tmp)
                with open(side_tmp, "w") as fh:
                    json.dump(data, fh, indent=2, default=str)
                    fh.write("\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                if self._link_pair(video_tmp, side_tmp):
                    break
                self._move_on()
        except OSError as exc:
            raise WriteFailed(f"the video {self.video.name} and its sidecar", self.folder, exc) from None
        video, side = self.video, self.sidecar
        self.release()
        return video, side

    def _link_pair(self, video_tmp: Path, side_tmp: Path) -> bool:
        """Sidecar first, then the video; False when a name was taken meanwhile (nothing left published)."""
        with critical.shielded():
            try:
                publish_file(side_tmp, self.sidecar)
            except FileExistsError:
                return False
            try:
                publish_file(video_tmp, self.video)
            except BaseException as exc:
                scratch.remove(self.sidecar)  # together or not at all
                if isinstance(exc, FileExistsError):
                    return False
                raise
        return True


def _reserve(wanted: Path, run_id: str, start: int = 0) -> Reservation:
    for n in range(start, start + 100_000):
        candidate = _numbered(wanted, n)
        if _taken(candidate):
            continue
        claim = _make_claim(candidate, run_id)
        if claim is None:
            continue
        if _taken(candidate):  # appeared between the check and the claim
            scratch.remove(claim)
            continue
        return Reservation(video=candidate, run_id=run_id, claim=claim)
    raise UserError(f"{wanted}: 100000 numbered names beside it are taken; choose another --out name")


def output_folder(out: Optional[str]) -> Path:
    return Path(out).expanduser().parent if out is not None else Path(DEFAULT_OUT_DIR)


def reserve_output(out: Optional[str], prompt: str, seed: int) -> Reservation:
    """Reserve the run's output name (the default name from the prompt and seed, or --out), sweeping what
    crashed runs left in the folder first. The reservation's `note` says why the name differs from --out."""
    if out is None:
        folder = Path(DEFAULT_OUT_DIR)
        folder.mkdir(parents=True, exist_ok=True)
        wanted = folder / f"{slugify(prompt)}-seed{seed}.mp4"
    else:
        wanted = Path(out).expanduser()
    sweep_outputs(wanted.parent)
    try:
        reservation = _reserve(wanted, secrets.token_hex(8))
    except OSError as exc:
        raise UserError(f"cannot write in {wanted.parent} ({_reason(exc)}); choose another --out folder or fix its permissions") from None
    if reservation.video != wanted:  # the default name too: the same prompt and seed again
        reservation.note = f"{wanted} already exists; writing {reservation.video} instead (lowvram never overwrites a file)"
    return reservation


# ---------------------------------------------------------------------------------------------- checks before loading


def estimate_output_bytes(width: int, height: int, frames: int, steps: int) -> tuple[int, int]:
    """(video + sidecar, latents file) bytes a run may write in its output folder: upper bounds."""
    latent_frames = (frames - 1) // 4 + 1
    latents = 4 * LATENT_CHANNELS * latent_frames * (height // LATENT_SCALE) * (width // LATENT_SCALE)
    video = int(VIDEO_BYTES_PER_PIXEL * width * height * frames)
    return video + SIDECAR_BYTES + SIDECAR_BYTES_PER_STEP * steps, latents * RESUME_LATENT_COPIES + TEXT_EMBED_BYTES


def fmt_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def check_output_folder(out: Optional[str], width: int, height: int, frames: int, steps: int) -> None:
    """The output folder can be written (a real scratch file is made and removed) and has room for the video,
    its sidecar and the latents. Raises UserError naming the folder, the numbers and the fix."""
    folder = output_folder(out)
    existing = folder
    while not existing.exists() and existing != existing.parent:  # the default folder is made at the first run
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"the output folder {folder} is not a folder; choose another --out path")
    where = "--out folder" if out is not None else "output folder"
    try:
        probe = scratch.new_file(existing, "probe")
        scratch.remove(probe)
    except OSError as exc:
        raise UserError(
            f"the {where} {existing} cannot be written ({_reason(exc)}); choose another --out path or fix the folder's permissions"
        ) from None
    video, latents = estimate_output_bytes(width, height, frames, steps)
    free = shutil.disk_usage(existing).free
    if free < video + latents:
        raise UserError(
            f"the {where} {existing} has {fmt_bytes(free)} free; this run needs up to {fmt_bytes(video + latents)} there "
            f"(the video and its sidecar up to {fmt_bytes(video)}, the latents kept on a cancel up to {fmt_bytes(latents)}). "
            "Free some space or choose another --out folder."
        )


# ---------------------------------------------------------------------------------------------- encoding


def encode_mp4(frames: Any, path: Path, fps: int) -> None:
    """Frames (N,H,W,3 floats in [0,1] or uint8) -> an H.264 mp4 at `path` (an existing scratch file).
    ffmpeg's exit status is not reported by imageio-ffmpeg, so the result is checked: a complete mp4."""
    import imageio.v2 as imageio
    import numpy as np

    arr = np.asarray(frames)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    with imageio.get_writer(str(path), format="FFMPEG", mode="I", fps=fps, codec="libx264", macro_block_size=16) as writer:
        for frame in arr:
            writer.append_data(frame)
    check_mp4(path)


def check_mp4(path: Path) -> None:
    """The file is a complete mp4: its top-level boxes span it exactly and include ftyp, mdat and moov (ffmpeg
    writes moov last, so a write cut short by a full disk has none). Raises OSError otherwise."""
    size = os.path.getsize(path)
    seen, pos = set(), 0
    with open(path, "rb") as fh:
        while pos < size:
            fh.seek(pos)
            head = fh.read(16)
            if len(head) < 8:
                break
            box, kind = int.from_bytes(head[:4], "big"), head[4:8]
            if box == 1 and len(head) == 16:
                box = int.from_bytes(head[8:16], "big")
            elif box == 0:
                box = size - pos
            if box < 8:
                break
            seen.add(kind)
            pos += box
    if pos != size or not {b"ftyp", b"mdat", b"moov"} <= seen:
        raise OSError(errno.EIO, "ffmpeg did not finish the mp4 (is the disk full?)", str(path))


def write_json_atomic(data: Any, path: Path) -> None:
    """Write JSON to a scratch file, then rename it over `path` (for files meant to be replaced)."""
    with scratch.scratch_file(path.parent, "json") as tmp:
        with open(tmp, "w") as fh:
            json.dump(data, fh, indent=2, default=str)
            fh.write("\n")
        os.replace(tmp, path)


@contextmanager
def replacing(path: Union[str, Path], tmp: Union[str, Path]) -> Iterator[Union[str, Path]]:
    """Write `tmp` inside the block; it then replaces `path` in one rename. On failure it is removed, so
    no reader ever sees a half-written file and no partial file is left behind."""
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
