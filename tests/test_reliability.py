"""Reliability of a run directory under faults: SIGKILL at random moments (mid-write included),
a full disk, two processes on one directory, corrupted or tampered run files, SIGINT/SIGTERM.

Every trial is a tiny digits run (2 epochs of 8 steps, checkpoints every 2 steps) trained in a
forked child of the test process (already warm: no interpreter or torch start-up per trial), so
the whole file takes well under a minute on 2 cores.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from softnce.cli import main
from softnce.harness import state
from softnce.harness.config import load_config
from softnce.harness.trainer import CHECKPOINT, KILL_ENV, train

pytestmark = pytest.mark.skipif(sys.platform == "win32" or not hasattr(os, "fork"),
                                reason="needs fork and POSIX signals")

BASE = dict(dataset="digits", epochs=2, batch_size=128, cpu_threads=1, quiet=True,
            ckpt_every_steps=2, smoothing=0.1, tensorboard=False)
CLI = ["--dataset", "digits", "--epochs", "2", "--batch-size", "128", "--quiet", "--set",
       "cpu_threads=1", "--set", "ckpt_every_steps=2", "--set", "smoothing=0.1", "--set",
       "tensorboard=false"]
NONTIME = ("epoch", "step", "train_loss", "lr", "top1", "top5", "ece", "mce", "ace", "nll",
           "brier", "n")
TRIALS = int(os.environ.get("SOFTNCE_FAULT_TRIALS", "20"))


def cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # usage errors exit through argparse
        return int(e.code)


def cfg(out: Path, **kw):
    return load_config(**{**BASE, "output_dir": str(out), **kw})


def metrics(out: Path) -> list[dict]:
    return [{k: r[k] for k in NONTIME if k in r}
            for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


def weights(out: Path) -> str:
    h = hashlib.sha256()
    sd = torch.load(out / CHECKPOINT, weights_only=True)["model"]
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, float]:
    """The uninterrupted run (and its wall time, to aim the random kills)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    train(cfg(out), log=lambda m: None)  # warm-up (imports, data cache)
    shutil.rmtree(out)
    t0 = time.perf_counter()
    s = train(cfg(out), log=lambda m: None)
    assert s["complete"] and s["steps"] == 16
    return out, time.perf_counter() - t0


def fork_run(fn) -> int:
    """Run ``fn()`` in a forked child (stdout/stderr to /dev/null); returns its pid."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            code = int(fn() or 0)
        except BaseException:
            code = 99
        finally:
            os._exit(code)
    return pid


def wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _kill_in_replace(n: int):
    """Child body: SIGKILL itself inside the n-th atomic write, after the temporary file is
    written and fsynced but before it is renamed into place."""
    def body() -> None:
        calls = [0]
        real = os.replace

        def replace(a, b):
            calls[0] += 1
            if calls[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(a, b)

        state.os.replace = replace
        return body.run()
    return body


def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(tmp_path, reference):
    """>= 20 trials: SIGKILL after a random optimiser step (KILL_ENV), at a random wall-clock
    moment from the parent, or inside a random atomic write (between fsync and rename); each
    resumed run ends with exactly the uninterrupted run's metrics and weights, and leaves no
    temporary file behind."""
    ref, seconds = reference
    want_metrics, want_weights = metrics(ref), weights(ref)
    rng = random.Random(1234)
    kinds = ["step", "delay", "write"]
    seen = {k: 0 for k in kinds}
    for trial in range(TRIALS):
        kind = kinds[trial % 3]
        out = tmp_path / f"t{trial}"
        c = cfg(out)
        if kind == "step":
            step = rng.randint(1, 15)

            def body(step=step, c=c):
                os.environ[KILL_ENV] = str(step)
                train(c, log=lambda m: None)
            pid = fork_run(body)
            rc = wait(pid)
            assert rc == -signal.SIGKILL, (trial, step, rc)
        elif kind == "delay":
            pid = fork_run(lambda c=c: train(c, log=lambda m: None))
            time.sleep(rng.uniform(0.0, seconds))
            os.kill(pid, signal.SIGKILL)
            wait(pid)
        else:
            body = _kill_in_replace(rng.randint(1, 30))
            body.run = lambda c=c: train(c, log=lambda m: None)
            rc = wait(fork_run(body))
            assert rc in (0, -signal.SIGKILL)
        seen[kind] += 1
        s = train(cfg(out, resume=True), log=lambda m: None)
        assert s["complete"], (trial, kind)
        assert metrics(out) == want_metrics, (trial, kind)
        assert weights(out) == want_weights, (trial, kind)
        assert not list(out.glob("*.tmp")), (trial, kind, list(out.glob("*.tmp")))
    assert sum(seen.values()) >= 20 or TRIALS < 20


def test_disk_full_mid_line_then_resume(tmp_path, reference, monkeypatch, capsys):
    """The second metrics line is cut off half-way by ENOSPC: the run stops with a clear error
    (exit 1), and --resume truncates the partial line and ends equal to the uninterrupted run."""
    import softnce.harness.evaluation as ev

    real_open = open
    appends = [0]

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.fh.close()

        def write(self, text):
            self.fh.write(text[: len(text) // 2])
            self.fh.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.fh.name))

    def fake_open(path, mode="r", *a, **kw):
        fh = real_open(path, mode, *a, **kw)
        if str(path).endswith("metrics.jsonl") and "a" in mode:
            appends[0] += 1
            if appends[0] == 2:
                return Full(fh)
        return fh

    out = tmp_path / "run"
    monkeypatch.setattr(ev, "open", fake_open, raising=False)
    rc = cli(["train", *CLI, "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and "No space left on device" in err and "Traceback" not in err, err
    assert not (out / "metrics.jsonl").read_bytes().endswith(b"\n")  # the half-written line
    monkeypatch.undo()
    assert cli(["train", *CLI, "--output-dir", str(out), "--resume"]) == 0
    assert metrics(out) == metrics(reference[0])
    assert weights(out) == weights(reference[0])


def test_second_process_on_the_same_output_dir_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    r, w = os.pipe()

    def holder():
        state.RunLock(out).acquire()
        os.write(w, b"x")
        time.sleep(60)

    pid = fork_run(holder)
    try:
        assert os.read(r, 1) == b"x"
        rc = cli(["train", *CLI, "--max-steps", "1", "--output-dir", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and "in use by another softnce process" in err, err
        assert f"pid {pid}" in err and "Traceback" not in err
    finally:
        os.kill(pid, signal.SIGKILL)
        wait(pid)
    # the holder died: its lock (file left behind) no longer blocks anything
    assert (out / ".lock").is_file()
    assert cli(["train", *CLI, "--max-steps", "1", "--output-dir", str(out), "--resume"]) == 0


def _flip(p: Path, at: float = 0.5) -> None:
    b = bytearray(p.read_bytes())
    b[int(len(b) * at)] ^= 0x10
    p.write_bytes(bytes(b))


def _ckpt_obj(p: Path, obj) -> None:
    state.atomic_save(obj, p)  # a valid checksum: the content itself is wrong


def _ckpt_missing_key(p: Path) -> None:
    ck = torch.load(p, weights_only=True)
    del ck["optimizer"]
    state.atomic_save(ck, p)


CORRUPT = [
    # (case, file, how, expected message part)
    ("config-empty", "config.json", lambda p: p.write_bytes(b""), "config.json is corrupt"),
    ("config-truncated", "config.json", lambda p: p.write_bytes(p.read_bytes()[:40]),
     "config.json is corrupt"),
    ("config-text", "config.json", lambda p: p.write_text("hello\n"), "config.json is corrupt"),
    ("config-list", "config.json", lambda p: p.write_text("[1, 2]\n"), "expected a JSON object"),
    ("config-not-utf8", "config.json", lambda p: p.write_bytes(b'{"a": "\xff"}'),
     "config.json is not UTF-8"),
    ("config-missing-key", "config.json",
     lambda p: p.write_text(json.dumps({k: v for k, v in json.loads(p.read_text()).items()
                                        if k != "lr"})), "differing: lr"),
    ("metrics-text-line", "metrics.jsonl",
     lambda p: p.write_text("garbage\n" + p.read_text()), "metrics.jsonl is corrupt: line 1"),
    ("metrics-list-line", "metrics.jsonl",
     lambda p: p.write_text("[1]\n" + p.read_text()), "metrics.jsonl is corrupt: line 1"),
    ("metrics-bit-flip", "metrics.jsonl", lambda p: _flip(p, 0.0), "metrics.jsonl is corrupt"),
    ("checkpoint-empty", CHECKPOINT, lambda p: p.write_bytes(b""), "checkpoint.pt is corrupt"),
    ("checkpoint-truncated", CHECKPOINT, lambda p: p.write_bytes(p.read_bytes()[:5000]),
     "checkpoint.pt is corrupt"),
    ("checkpoint-text", CHECKPOINT, lambda p: p.write_text("not a checkpoint"),
     "checkpoint.pt is corrupt"),
    ("checkpoint-bit-flip", CHECKPOINT, _flip, "does not match the one recorded"),
    ("checkpoint-truncated-no-checksum", CHECKPOINT,
     lambda p: (p.write_bytes(p.read_bytes()[:5000]), state.checksum_path(p).unlink()),
     "checkpoint.pt is corrupt or not a softnce checkpoint"),
    ("checkpoint-list", CHECKPOINT, lambda p: _ckpt_obj(p, [1, 2, 3]), "expected a dict"),
    ("checkpoint-missing-key", CHECKPOINT, _ckpt_missing_key, "missing optimizer"),
    ("checksum-file-text", CHECKPOINT + ".sha256", lambda p: p.write_text("zzz"),
     "checksum file"),
]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fin") / "run"
    train(cfg(out, epochs=2, max_steps=10), log=lambda m: None)
    return out


@pytest.mark.parametrize("case,name,how,needle", CORRUPT, ids=[c[0] for c in CORRUPT])
def test_corrupt_run_file_is_a_clear_error(tmp_path, capsys, finished, case, name, how, needle):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    how(out / name)
    rc = cli(["train", *CLI, "--set", "max_steps=10", "--output-dir", str(out), "--resume"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "softnce train: error:" in err and "Traceback" not in err, err
    assert needle in err, (needle, err)


def test_partial_last_metrics_line_is_repaired_on_resume(tmp_path, finished):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    p = out / "metrics.jsonl"
    good = p.read_bytes()
    p.write_bytes(good + b'{"epoch": 3, "st')
    train(cfg(out, epochs=2, max_steps=10, resume=True), log=lambda m: None)
    assert p.read_bytes() == good


def test_tmp_symlink_is_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "run"
    out.mkdir()
    for name in ("checkpoint.pt.tmp", "config.json.tmp", "metrics.jsonl.tmp"):
        (out / name).symlink_to(victim)
    (out / "other.json.tmp").symlink_to(victim)
    state.atomic_write_bytes(out / "other.json", b"{}")  # a fresh unique name, never the link
    assert victim.read_text() == "precious\n" and (out / "other.json").read_bytes() == b"{}"
    (out / "other.json").unlink()
    train(cfg(out, max_steps=3), log=lambda m: None)
    assert victim.read_text() == "precious\n"
    assert not any(p.is_symlink() for p in out.iterdir())  # stale tmp links unlinked, not followed
    assert not (out / CHECKPOINT).is_symlink() and (out / CHECKPOINT).stat().st_size > 0


def test_one_bit_flip_in_checkpoint_is_detected(tmp_path, finished):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    assert state.verify_checksum(out / CHECKPOINT)
    _flip(out / CHECKPOINT, 0.7)
    with pytest.raises(ValueError, match="sha256"):
        state.verify_checksum(out / CHECKPOINT)


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_sigterm_stop_cleanly_and_resume(tmp_path, reference, signum, code):
    out = tmp_path / "run"
    log = tmp_path / "stderr.txt"

    def body():
        fd = os.open(log, os.O_WRONLY | os.O_CREAT, 0o644)
        os.dup2(fd, 2)
        sys.stderr = os.fdopen(fd, "w", buffering=1)
        try:
            return main(["train", *CLI, "--output-dir", str(out)])
        finally:
            sys.stderr.flush()

    pid = fork_run(body)
    deadline = time.time() + 60
    while not (out / CHECKPOINT).exists() and time.time() < deadline:
        time.sleep(0.01)
    os.kill(pid, signum)
    rc = wait(pid)
    err = log.read_text()
    if rc == 0:  # finished before the signal landed (a very fast machine)
        pytest.skip("run finished before the signal")
    assert rc == code, (rc, err)
    assert "interrupted at step" in err and "continue with --resume" in err, err
    assert "Traceback" not in err, err
    step = int(err.split("interrupted at step ")[1].split(";")[0])
    ck = torch.load(out / CHECKPOINT, weights_only=True)
    assert ck["global_step"] == step and not ck["complete"]
    assert not list(out.glob("*.tmp"))
    assert cli(["train", *CLI, "--output-dir", str(out), "--resume"]) == 0
    assert metrics(out) == metrics(reference[0]) and weights(out) == weights(reference[0])


def test_resume_with_more_epochs_extends_a_finished_run(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--dataset", "digits", "--batch-size", "128", "--quiet", "--set",
            "cpu_threads=1", "--set", "tensorboard=false", "--set", "warmup_epochs=0",
            "--output-dir", str(out)]
    assert cli([*base, "--epochs", "1"]) == 0
    lr_end_1 = metrics(out)[-1]["lr"]
    assert cli([*base, "--epochs", "2", "--resume"]) == 0
    err = capsys.readouterr().err
    assert "extending the run from 1 to 2 epochs" in err and "learning rate jumps" in err
    recs = metrics(out)
    assert [r["epoch"] for r in recs] == [1, 2] and recs[-1]["step"] == 16
    assert json.loads((out / "config.json").read_text())["epochs"] == 2
    # the cosine restarts over the new total: the first lr of epoch 2 is far above the end of 1
    from softnce.harness.state import lr_at

    c2 = load_config(dataset="digits", epochs=2, batch_size=128, warmup_epochs=0)
    assert lr_at(8, c2, 8) > 10 * lr_end_1
    # fewer epochs, or any other difference, is still refused
    assert cli([*base, "--epochs", "1", "--resume"]) == 2
    assert cli([*base, "--epochs", "3", "--lr", "0.5", "--resume"]) == 2


def test_git_commit_reads_only_softnce_own_checkout(tmp_path, monkeypatch):
    """No git process; a directory that is not ``<root>/src/softnce`` gives None."""
    import subprocess

    def boom(*a, **k):
        raise AssertionError("git must not be run")

    monkeypatch.setattr(subprocess, "run", boom)
    monkeypatch.setattr(subprocess, "Popen", boom)
    root = tmp_path / "repo"
    pkg = root / "src" / "softnce"
    pkg.mkdir(parents=True)
    (root / ".git" / "refs" / "heads").mkdir(parents=True)
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    sha = "a" * 40
    (root / ".git" / "packed-refs").write_text(f"# pack-refs\n{sha} refs/heads/main\n")
    assert state.git_commit(pkg) == sha
    (root / ".git" / "refs" / "heads" / "main").write_text("b" * 40 + "\n")
    assert state.git_commit(pkg) == "b" * 40
    assert state.git_commit(tmp_path) is None  # not src/softnce
    other = tmp_path / "site-packages" / "softnce"
    other.mkdir(parents=True)
    assert state.git_commit(other) is None
