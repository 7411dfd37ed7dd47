"""benchmarks/profile_checks.py runs end to end on a tiny size, restores the library after each
variant, and refuses bad arguments. No assertion on the times themselves."""

from __future__ import annotations

import torch

from _helpers import import_benchmark, run_benchmark


def test_profile_checks_tiny_run(tmp_path):
    r = run_benchmark("profile_checks", "--size", "8x5", "--rounds", "2", "--calls", "2",
                      "--threads", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    for piece in ("no target stats", "no noise stats", "no reads"):
        assert r.stdout.count(piece) == 2, r.stdout  # forward, and forward+backward
    assert "validate_args=True adds" in r.stdout and "--threads 1" in r.stdout


def test_variants_patch_what_the_loss_calls_and_restore_it():
    import softnce._scores as S
    import softnce.infonce as F
    from softnce import soft_target_infonce

    pc = import_benchmark("profile_checks")
    before = (S.simplex_row_stats, F._noise_check, S._all_finite)
    z = torch.zeros(3, 4)
    y = torch.full((3, 4), 0.25)
    y[0, 0] = -1.0  # bad targets: only the full checks notice
    q = torch.full((4,), 0.25)
    with pc.variant("no reads"):
        soft_target_infonce(z, y, q)  # no value check read: no error
        assert S._all_finite is not before[2]
    with pc.variant("no noise stats"):
        assert F._noise_check(q, q.log(), True) is None
    with pc.variant("no target stats"):
        assert [float(t) for t in S.simplex_row_stats(y)] == [1.0, 1.0, 0.0]
    assert (S.simplex_row_stats, F._noise_check, S._all_finite) == before
    try:
        soft_target_infonce(z, y, q)
    except ValueError as e:
        assert "non-negative" in str(e)
    else:
        raise AssertionError("the full checks must be back after the variants")


def test_profile_checks_rejects_bad_arguments(tmp_path):
    for args, msg in ((["--size", "8y5"], "--size must look like 256x100"),
                      (["--rounds", "0"], "--rounds and --calls must be >= 1"),
                      (["--threads", "0"], "--threads must be >= 1")):
        r = run_benchmark("profile_checks", *args, cwd=tmp_path, timeout=120)
        assert r.returncode == 2 and msg in r.stderr, r.stderr
