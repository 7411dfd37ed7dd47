"""Small helpers shared by the test modules."""

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for gloo process groups)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(fn, args: tuple, nprocs: int, timeout: float) -> None:
    """Run ``fn(rank, *args)`` in ``nprocs`` processes and wait; a hang past ``timeout`` seconds
    kills them and fails the test.

    "fork" (where available) instead of "spawn": the children need not re-import torch, which
    halves the runtime on a small machine.
    """
    import time

    import pytest
    import torch.multiprocessing as mp

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    ctx = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method=method)
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"distributed workers did not finish within {timeout:g} s")


def run_benchmark(name: str, *args: str, cwd, timeout: float = 300):
    """``python benchmarks/<name>.py *args`` in ``cwd`` (a fresh process, output captured)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def import_benchmark(name: str):
    """The module ``benchmarks/<name>.py`` (imported once, without leaving its folder on
    ``sys.path``)."""
    import importlib
    import sys
    from pathlib import Path

    folder = str(Path(__file__).resolve().parents[1] / "benchmarks")
    sys.path.insert(0, folder)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(folder)
