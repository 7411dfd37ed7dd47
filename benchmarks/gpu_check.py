"""One command that checks the CUDA path and measures it; tested on CPU with ``--device cpu --quick``.

Run from the repository root on a machine with a GPU (about 5-8 minutes on one H200)::

    .venv/bin/python benchmarks/gpu_check.py --output-dir gpu-check

It writes ``gpu_check.json`` and prints a table. Sections:

1. ``exactness``: every loss and negatives mode on the device against the float64 CPU
   computation of the same function (values and gradients), in float32 and under autocast
   bf16 / fp16 (on CUDA), with the tolerance of the compute dtype;
2. ``bench_losses``: ``benchmarks/bench_losses.py --device <device>`` (its ratios against the
   N x M x C form, soft-target CE and the GEMM floor, and peak memory) in a subprocess;
3. ``vit_step``: a ViT-B/16 forward + backward at batch 128 (``--quick``: a miniature ViT at
   batch 8) with each of the four losses, and the loss's share of the step (target < 2%);
4. ``torchrun``: a one-process ``torchrun`` of ``softnce train`` for a few steps (NCCL on CUDA,
   gloo on CPU);
5. ``compile``: ``torch.compile`` of the loss, equal to eager;
6. ``no_sync``: on CUDA, a training step with ``validate_args=False`` under
   ``torch.cuda.set_sync_debug_mode("error")`` (any host synchronisation raises); and the
   synchronisations of one ``validate_args=True`` call counted in "warn" mode: one for dense
   targets or ``SoftTargets`` with a noise vector (all checks in one read), two with integer
   labels.
Every section records ``ok`` and its numbers; a failing section does not stop the others.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}


def _targets(n: int, c: int, device: torch.device, seed: int = 0) -> Any:
    from softnce import SoftTargets

    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    return SoftTargets.mix(y, y.flip(0), 0.7, c, smoothing=0.1).to(device), y.to(device)


def _losses(c: int, prior: torch.Tensor) -> dict[str, Any]:
    from softnce import InfoNCE, SoftTargetCrossEntropy, SoftTargetInfoNCE

    out: dict[str, Any] = {"soft-ce": lambda: SoftTargetCrossEntropy()}
    for neg in ("batch", "queue", "sampled", "simplex"):
        kw: dict[str, Any] = {"negatives": neg, "queue_size": 64, "num_negatives": 32}
        if neg != "simplex":
            kw["noise_probs"] = prior
        out[f"soft-infonce/{neg}"] = (lambda kw=kw: SoftTargetInfoNCE(**kw))
        out[f"infonce/{neg}"] = (lambda kw=kw: InfoNCE(**kw))
    return out


def exactness(device: torch.device, quick: bool) -> dict[str, Any]:
    n, c = (16, 10) if quick else (256, 1000)
    soft, hard = _targets(n, c, device)
    prior = torch.softmax(torch.randn(c, generator=torch.Generator().manual_seed(1)), 0)
    rows = {}
    dtypes = [None] + ([torch.bfloat16, torch.float16] if device.type == "cuda" else [])
    for name, make in _losses(c, prior).items():
        for amp in dtypes:
            z0 = torch.randn(n, c, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
            t = hard if name.startswith("infonce") else soft
            # same random negatives on both sides: reseed before each call
            torch.manual_seed(3)
            ref_fn = make().double()
            z_ref = z0.clone().requires_grad_(True)
            ref = ref_fn(z_ref, t.to("cpu"))  # labels, or SoftTargets promoted with the logits
            ref.backward()
            torch.manual_seed(3)
            fn = make().to(device)
            z = z0.float().to(device).requires_grad_(True)
            ctx = torch.autocast(device.type, dtype=amp) if amp else torch.autocast(
                device.type, enabled=False)
            with ctx:
                val = fn(z, t)
            val.backward()
            tol = TOL[amp or torch.float32]
            err_v = abs(float(val.detach()) - float(ref.detach())) / max(1.0, abs(float(ref.detach())))
            err_g = float((z.grad.double().cpu() - z_ref.grad).abs().max())
            key = f"{name}/{'fp32' if amp is None else str(amp).split('.')[-1]}"
            rows[key] = {"value_err": err_v, "grad_err": err_g, "tol": tol,
                         "ok": err_v <= tol and err_g <= tol * max(1.0, float(
                             z_ref.grad.abs().max()))}
    return {"ok": all(r["ok"] for r in rows.values()), "cases": rows}


def bench(device: torch.device, quick: bool) -> dict[str, Any]:
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_losses.py"), "--device", device.type]
    cmd += ["--quick"] if quick else []
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    return {"ok": r.returncode == 0, "wall_s": time.perf_counter() - t0,
            "output": r.stdout[-6000:], "stderr": r.stderr[-2000:] if r.returncode else ""}


def vit_step(device: torch.device, quick: bool) -> dict[str, Any]:
    import timm

    from softnce import InfoNCE, SoftTargetCrossEntropy, SoftTargetInfoNCE

    c = 1000
    if quick:
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=c,
                                  img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
        n, size = 8, 32
    else:
        model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=c)
        n, size = 128, 224
    model = model.to(device)
    x = torch.randn(n, 3, size, size, device=device)
    soft, hard = _targets(n, c, device)
    prior = torch.full((c,), 1.0 / c, device=device)
    nce = InfoNCE(noise_probs=prior, validate_args=False)
    sce = SoftTargetCrossEntropy()
    snce = SoftTargetInfoNCE(noise_probs=prior, validate_args=False)
    losses = {"nll": (lambda z: F.cross_entropy(z, hard)), "infonce": (lambda z: nce(z, hard)),
              "soft-ce": (lambda z: sce(z, soft)), "soft-infonce": (lambda z: snce(z, soft))}
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if device.type == "cuda" else \
        torch.autocast(device.type, enabled=False)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    out = {}
    reps = 2 if quick else 10
    for name, fn in losses.items():
        step_t, loss_t = [], []
        for i in range(reps + 1):
            model.zero_grad(set_to_none=True)
            sync()
            t0 = time.perf_counter()
            with amp:
                z = model(x)
            sync()
            t1 = time.perf_counter()
            zl = z.detach().float().requires_grad_(True)
            loss = fn(zl)
            loss.backward()
            sync()
            t2 = time.perf_counter()
            z.backward(zl.grad.to(z.dtype))
            sync()
            t3 = time.perf_counter()
            if i:  # first repeat is warm-up
                step_t.append(t3 - t0)
                loss_t.append(t2 - t1)
        med = sorted(step_t)[len(step_t) // 2]
        med_loss = sorted(loss_t)[len(loss_t) // 2]
        out[name] = {"step_ms": 1e3 * med, "loss_ms": 1e3 * med_loss, "share": med_loss / med}
    ok = all(v["share"] < 0.02 for v in out.values()) if not quick else True
    return {"ok": ok, "batch": n, "input": size, "losses": out}


def torchrun(device: torch.device, quick: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
               "-m", "softnce", "train", "--dataset", "digits", "--loss", "soft-infonce",
               "--epochs", "1", "--max-steps", "5", "--device", device.type, "--quiet",
               "--output-dir", str(Path(d) / "run")]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=d)
        summary = Path(d) / "run" / "summary.json"
        ok = r.returncode == 0 and summary.is_file()
        return {"ok": ok, "wall_s": time.perf_counter() - t0,
                "backend": "nccl" if device.type == "cuda" else "gloo",
                "stderr": "" if ok else r.stderr[-3000:]}


def compile_check(device: torch.device, quick: bool) -> dict[str, Any]:
    from softnce import soft_target_infonce

    n, c = (16, 10) if quick else (512, 1000)
    soft, _ = _targets(n, c, device)
    dense = soft.to_dense()
    z = torch.randn(n, c, device=device)
    backend = "aot_eager" if device.type == "cpu" and quick else "inductor"
    fn = torch.compile(lambda a, y: soft_target_infonce(a, y, validate_args=False),
                       backend=backend)
    eager = soft_target_infonce(z, dense)
    compiled = fn(z, dense)
    err = float((compiled - eager).abs())
    return {"ok": err < 1e-4, "backend": backend, "abs_err": err}


def no_sync(device: torch.device, quick: bool) -> dict[str, Any]:
    if device.type != "cuda":
        return {"ok": True, "skipped": "needs CUDA (torch.cuda.set_sync_debug_mode)"}
    from softnce import SoftTargetInfoNCE

    n, c = 64, 100
    soft, _ = _targets(n, c, device)
    model = torch.nn.Linear(32, c).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True, capturable=True)
    loss_fn = SoftTargetInfoNCE(noise_probs=torch.full((c,), 1.0 / c, device=device),
                                validate_args=False).to(device)
    x = torch.randn(n, 32, device=device)
    opt.zero_grad()
    loss_fn(model(x), soft).backward()  # warm-up outside the check
    opt.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.zero_grad()
        loss_fn(model(x), soft).backward()
        opt.step()
        ok, err = True, ""
    except RuntimeError as e:
        ok, err = False, str(e)[:500]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = checked_syncs(device, soft)
    expected = {"dense+noise": 1, "SoftTargets+noise": 1, "labels+noise": 2}
    return {"ok": ok and syncs == expected, "error": err, "checked_syncs": syncs,
            "expected_syncs": expected}


def checked_syncs(device: torch.device, soft: Any) -> dict[str, int]:
    """Synchronisations of one ``validate_args=True`` call (sync debug mode "warn", counted):
    the value checks promise one host read per call, plus one for integer labels (their range,
    read before they index anything)."""
    import warnings

    from softnce import soft_target_infonce

    n, c = len(soft), soft.num_classes
    z = torch.randn(n, c, device=device)
    q = torch.full((c,), 1.0 / c, device=device)
    cases = {"dense+noise": soft.to_dense(), "SoftTargets+noise": soft,
             "labels+noise": torch.randint(0, c, (n,), device=device)}
    out = {}
    for name, t in cases.items():
        soft_target_infonce(z, t, q)  # warm-up: SoftTargets validate once, lazy init
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                soft_target_infonce(z, t, q)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        out[name] = sum("synchroniz" in str(w.message) for w in caught)
    return out


SECTIONS = {"exactness": exactness, "bench_losses": bench, "vit_step": vit_step,
            "torchrun": torchrun, "compile": compile_check, "no_sync": no_sync}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small sizes (the CPU test)")
    p.add_argument("--output-dir", default="gpu-check")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma list of {', '.join(SECTIONS)}")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    names = [s.strip() for s in a.sections.split(",") if s.strip()]
    bad = [s for s in names if s not in SECTIONS]
    if bad:
        p.error(f"unknown section(s) {', '.join(bad)}; valid: {', '.join(SECTIONS)}")
    info = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "torch": torch.__version__,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "quick": a.quick, "command": " ".join(["python benchmarks/gpu_check.py",
                                                   *(argv if argv is not None else sys.argv[1:])])}
    results: dict[str, Any] = {}
    for name in names:
        t0 = time.perf_counter()
        try:
            results[name] = SECTIONS[name](device, a.quick)
        except Exception as e:  # a broken section is a result, not a crash of the check
            results[name] = {"ok": False, "error": f"{type(e).__name__}: {e}",
                             "traceback": traceback.format_exc()[-3000:]}
        results[name]["seconds"] = time.perf_counter() - t0
        print(f"{name:<13} {'ok' if results[name]['ok'] else 'FAILED':<7} "
              f"{results[name]['seconds']:7.1f} s", flush=True)
    out = Path(a.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "gpu_check.json"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"info": info, "results": results}, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    if "vit_step" in results and "losses" in results["vit_step"]:
        for k, v in results["vit_step"]["losses"].items():
            print(f"  vit step {k:<13} {v['step_ms']:8.1f} ms, loss {v['loss_ms']:6.2f} ms "
                  f"({100 * v['share']:.2f}%)")
    print(f"wrote {path}")
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
