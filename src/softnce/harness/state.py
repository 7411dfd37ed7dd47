"""Run state helpers: seeding and RNG state, atomic writes, provenance (commit, versions), the
learning-rate schedule and config comparison."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import platform
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from softnce.harness.config import RUNTIME_ONLY_KEYS, TrainConfig
from softnce.harness.mixing import (
    numpy_state_from_dict,
    numpy_state_to_dict,
)


# ----------------------------------------------------------------------------- helpers
def move_to(obj: Any, device: torch.device) -> Any:
    """Move tensors (in tuples / lists / dicts) or objects with ``.to`` to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (list, tuple)):
        moved = [move_to(o, device) for o in obj]
        return type(obj)(moved) if isinstance(obj, list) else tuple(moved)
    if isinstance(obj, dict):
        return {k: move_to(v, device) for k, v in obj.items()}
    if hasattr(obj, "to") and callable(obj.to):
        return obj.to(device)
    return obj


def _batch_len(labels: torch.Tensor) -> int:
    return int(labels.shape[0])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python / numpy / torch / CUDA RNG states as tensors and plain python."""
    version, internal, gauss = random.getstate()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": numpy_state_to_dict(np.random.get_state()),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(numpy_state_from_dict(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


#: Temporary files this process created and has not yet renamed (removed on interruption).
_OWN_TMP: set[str] = set()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_MODE = 0o666 & ~_umask()


def _mkstemp(path: Path) -> tuple[int, str]:
    """A new, exclusively created (``O_EXCL``) temporary file beside ``path`` with a unique name
    (``<name>.<random>.tmp``): never follows a pre-existing file or symlink. Its mode is the
    usual ``0666 & ~umask`` (mkstemp's own is 0600)."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    _OWN_TMP.add(name)
    try:
        os.fchmod(fd, _MODE)
    except OSError:
        pass
    return fd, name


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a fresh temporary file in ``path``'s folder, fsync, ``os.replace``:
    ``path`` is either its old or its new content, never half-written. On any error (including
    an interruption) the temporary file is removed."""
    path = Path(path)
    fd, tmp = _mkstemp(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        _OWN_TMP.discard(tmp)
    _fsync_dir(path.parent)


def remove_own_tmp_files() -> None:
    """Remove the temporary files this process left (called when a run is interrupted)."""
    for name in list(_OWN_TMP):
        with contextlib.suppress(OSError):
            os.unlink(name)
        _OWN_TMP.discard(name)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checksum_path(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + ".sha256")


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` atomically (:func:`atomic_write_bytes`), with the sha256 of the saved bytes
    in ``<path>.sha256`` (JSON ``{"sha256": new, "previous": old}``).

    The sidecar is written *before* the rename and lists the previous file's hash too, so a
    process killed between the two writes leaves a checkpoint that still verifies; after the
    rename it is rewritten with the new hash only. :func:`verify_checksum` checks it on load.
    """
    path = Path(path)
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    new = hashlib.sha256(data).hexdigest()
    side = checksum_path(path)
    old = None
    if path.is_file():
        try:
            old = sha256_file(path)
        except OSError:
            old = None
    atomic_write_bytes(side, (json.dumps({"sha256": new, "previous": old}) + "\n").encode())
    atomic_write_bytes(path, data)
    atomic_write_bytes(side, (json.dumps({"sha256": new}) + "\n").encode())


def verify_checksum(path: Path) -> bool | None:
    """True if ``path`` matches its ``.sha256`` sidecar, None if there is no sidecar (a file
    from an older softnce); raises ``ValueError`` naming the file on a mismatch or a bad
    sidecar."""
    path = Path(path)
    side = checksum_path(path)
    if not side.is_file():
        return None
    try:
        meta = json.loads(side.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"checksum file {side} is unreadable or corrupt ({e})") from e
    if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str):
        raise ValueError(f"checksum file {side} is corrupt (expected {{\"sha256\": ...}})")
    actual = sha256_file(path)
    if actual not in (meta.get("sha256"), meta.get("previous")):
        raise ValueError(f"{path} is corrupt: its sha256 {actual[:16]}... does not match the "
                         f"one recorded in {side.name} ({meta['sha256'][:16]}...)")
    return True


def _atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(Path(path), text.encode("utf-8"))


def _read_git_ref(git_dir: Path, ref: str) -> str | None:
    loose = git_dir / ref
    if loose.is_file():
        val = loose.read_text(encoding="ascii", errors="replace").strip()
        return val if re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", val) else None
    packed = git_dir / "packed-refs"
    if packed.is_file():
        for line in packed.read_text(encoding="ascii", errors="replace").splitlines():
            parts = line.strip().split(" ", 1)
            if len(parts) == 2 and parts[1] == ref and re.fullmatch(r"[0-9a-f]{40,64}", parts[0]):
                return parts[0]
    return None


def git_commit(package_dir: Path | None = None) -> str | None:
    """The commit of softnce's own source checkout, or None (installed wheel, other layout).

    Reads ``.git/HEAD`` and the ref it names (loose or in ``packed-refs``) directly: no ``git``
    process is run, so no repository-configured command (fsmonitor, hooks) executes and no
    ``index.lock`` is taken, and only a checkout whose layout is ``<root>/src/softnce`` with
    ``<root>/.git`` is considered (never the repository the user happens to run in). A
    worktree's ``.git`` file (``gitdir: ...``) is followed. There is no ``+dirty`` flag: telling
    modified files apart needs the index, i.e. git itself.
    """
    pkg = Path(package_dir) if package_dir is not None else Path(__file__).resolve().parents[1]
    if pkg.name != "softnce" or pkg.parent.name != "src":
        return None
    dot_git = pkg.parent.parent / ".git"
    try:
        if dot_git.is_file():
            line = dot_git.read_text(encoding="utf-8", errors="replace").strip()
            if not line.startswith("gitdir:"):
                return None
            git_dir = Path(line[len("gitdir:"):].strip())
            if not git_dir.is_absolute():
                git_dir = dot_git.parent / git_dir
        elif dot_git.is_dir():
            git_dir = dot_git
        else:
            return None
        head = (git_dir / "HEAD").read_text(encoding="ascii", errors="replace").strip()
        if re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", head):
            return head
        if not head.startswith("ref:"):
            return None
        ref = head[len("ref:"):].strip()
        if ".." in ref or not ref.startswith("refs/"):
            return None
        sha = _read_git_ref(git_dir, ref)
        if sha is None:  # a worktree: branch refs live in the common dir
            common = git_dir / "commondir"
            if common.is_file():
                cdir = Path(common.read_text(encoding="utf-8", errors="replace").strip())
                sha = _read_git_ref(cdir if cdir.is_absolute() else git_dir / cdir, ref)
        return sha
    except OSError:
        return None


def package_versions() -> dict[str, str | None]:
    import importlib.metadata as md

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("softnce", "torch", "timm", "numpy", "scikit-learn", "torchvision",
                 "torch-geometric", "mnist1d"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def lr_at(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Linear warm-up then cosine decay to ``min_lr`` (see the module docstring)."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = min(total, int(round(cfg.warmup_epochs * steps_per_epoch)))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    frac = (step - warm) / max(1, total - warm)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, frac)))



def _config_diff(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    now_plain = json.loads(json.dumps(now, default=str))
    keys = (set(saved) | set(now_plain)) - RUNTIME_ONLY_KEYS
    return sorted(k for k in keys if saved.get(k) != now_plain.get(k))



# ----------------------------------------------------------------------------- run lock
LOCK_NAME = ".lock"


class RunLockedError(RuntimeError):
    """Another live process holds the output directory's lock."""


class RunLock:
    """An exclusive ``fcntl.flock`` on ``<dir>/.lock`` (the holder's pid inside) for as long as a
    run trains. The kernel drops the lock when the holder dies, so a lock file left by a killed
    process never blocks ``--resume``; the file itself stays (removing it would race)."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no locking
            return self
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(self.path, flags, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.read(fd, 64).decode("ascii", "replace").strip() or "?"
            except OSError:
                holder = "?"
            os.close(fd)
            raise RunLockedError(
                f"output directory {str(self.path.parent)!r} is in use by another softnce "
                f"process (pid {holder}, lock {self.path.name}); wait for it to finish or use "
                f"another --output-dir") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
            self.fd = None
