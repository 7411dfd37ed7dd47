r"""Time and memory per training step against the number of classes C (CPU).

Compares, for a linear head ``z = h W^T + b`` on features ``h`` (N, D):

* ``ce``: soft-target cross-entropy on the full logits (``F.linear`` + ``log_softmax``);
* ``dense``: soft-target InfoNCE on the full logits (``softnce.soft_target_infonce``);
* ``embedded``: :func:`softnce.embedded.soft_target_infonce_embedded` (no (N, C) logits);
* ``embedded-sparse``: the same with ``sparse_grad=True`` (sparse gradient of ``W``).

Targets: ``hard`` (one-hot labels), ``mixup`` (two labels, lam = 0.7, no smoothing) and
``smooth`` (label smoothing 0.1: a uniform part, which needs the mean row of W, O(C D)).

One step = forward of the head + loss + backward w.r.t. h, W and b (fresh gradients each step,
as after ``zero_grad(set_to_none=True)``); the optimiser update is not included. Each case runs
in its own subprocess. "step MiB" is the peak resident memory of one extra step above the
resident memory before it (parameters, inputs and the torch runtime excluded), measured by
resetting the kernel's high-water mark through ``/proc/self/clear_refs`` after switching glibc
to serve every allocation of 64 KiB or more by ``mmap`` (so freed tensors leave the resident set
at once and the high-water mark follows the live tensors); "total MiB" is the process's peak
resident memory. Cases whose estimated memory exceeds ``--max-gib`` are skipped;
for those, ``ce`` and ``dense`` are measured once more at ``--small-n`` rows (a lower bound on
their time at N rows, since their cost grows linearly with N).

Usage::

    python benchmarks/bench_extreme.py                      # N=1024, D=256, C=1e3..1e6
    python benchmarks/bench_extreme.py --quick              # C=1e3, 1e4 only
    python benchmarks/bench_extreme.py --plot docs/img/extreme_time_memory.png --json out.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

PATHS = ("ce", "dense", "embedded", "embedded-sparse")
TARGETS = ("hard", "mixup", "smooth")


# --------------------------------------------------------------------------- one case (child)
def _proc_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _malloc_mmap_everything() -> bool:
    """glibc: serve allocations >= 64 KiB by mmap (unmapped on free) and trim the heap."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(-3, 65536) == 1 and libc.mallopt(-1, 0) == 1  # MMAP_, TRIM_THRESHOLD
        libc.malloc_trim(0)
        return ok
    except (OSError, AttributeError):
        return False


def _make_targets(kind: str, n: int, c: int, seed: int):
    import torch

    from softnce import SoftTargets

    gen = torch.Generator().manual_seed(seed)
    a = torch.randint(c, (n,), generator=gen)
    if kind == "hard":
        return a
    if kind == "mixup":
        return SoftTargets.mix(a, torch.randint(c, (n,), generator=gen), 0.7, c)
    if kind == "smooth":
        return SoftTargets.label_smoothing(a, c, 0.1)
    raise ValueError(f"unknown targets {kind!r}; expected one of {TARGETS}")


def run_case(path: str, targets: str, c: int, n: int, d: int, repeats: int, seed: int = 0,
             threads: int | None = None, micro: int = 0, min_time: float = 1.5) -> dict:
    """Time one path: a warm-up step, then at least ``repeats`` steps and, for cheap steps, more
    until ``min_time`` seconds (at most 25); then one step for memory. ``micro > 0`` runs a
    ``ce`` step as gradient accumulation over micro-batches of ``micro`` rows (the same
    gradient as one N-row step), for N that do not fit in memory at once."""
    import torch
    import torch.nn.functional as F

    from softnce import soft_target_cross_entropy, soft_target_infonce
    from softnce.embedded import soft_target_infonce_embedded

    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}; expected one of {PATHS}")
    if micro and path != "ce":
        raise ValueError("gradient accumulation (micro > 0) only applies to the ce path: "
                         "InfoNCE's in-batch candidates couple the rows of a batch")
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    w = (torch.randn(c, d) * d**-0.5).requires_grad_()
    b = torch.zeros(c, requires_grad=True)
    h = torch.randn(n, d, requires_grad=True)
    y = _make_targets(targets, n, c, seed + 1)

    def clear() -> None:
        for p in (w, b, h):
            p.grad = None

    def step(max_micro: int | None = None) -> float:
        clear()
        if micro:
            total = 0.0
            for i, s0 in enumerate(range(0, n, micro)):
                if max_micro is not None and i >= max_micro:
                    break
                part = soft_target_cross_entropy(F.linear(h[s0:s0 + micro], w, b),
                                                 y[s0:s0 + micro], reduction="sum") / n
                part.backward()
                total += float(part.detach())
            return total
        if path == "ce":
            loss = soft_target_cross_entropy(F.linear(h, w, b), y)
        elif path == "dense":
            loss = soft_target_infonce(F.linear(h, w, b), y)
        else:
            loss = soft_target_infonce_embedded(h, w, y, b, sparse_grad=path == "embedded-sparse")
        loss.backward()
        return float(loss.detach())

    t0 = time.perf_counter()
    step(max_micro=1)  # warm-up: one-time allocations, kernel and library loading
    warm = time.perf_counter() - t0
    times: list[float] = []
    loss = float("nan")
    while len(times) < repeats or (sum(times) < min_time and len(times) < 25):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    # Memory: one more step (two micro-batches when accumulating: the peak is reached from the
    # second on) with every allocation >= 64 KiB served by mmap and returned on free, so the
    # resident high-water mark follows the live tensors, not the allocator's cache. Gradients
    # are cleared first: they count as step memory.
    clear()
    mmap_all = _malloc_mmap_everything()
    rss0 = _proc_kib("VmRSS")
    peak_ok = _reset_peak()
    step(max_micro=2)
    hwm = _proc_kib("VmHWM")
    return {
        "path": path, "targets": targets, "C": c, "N": n, "D": d, "micro": micro,
        "ms_median": 1e3 * statistics.median(times), "ms_min": 1e3 * min(times),
        "ms_warmup": 1e3 * warm, "steps": len(times), "loss": loss,
        "step_mib": max(hwm - rss0, 0) / 1024 if peak_ok else None, "total_mib": hwm / 1024,
        "exact_mmap": mmap_all, "threads": torch.get_num_threads(),
    }


# ------------------------------------------------------------------------- orchestration
def estimate_gib(path: str, targets: str, c: int, n: int, d: int, micro: int = 0) -> float:
    """Rough peak memory of one case (float32): parameters, gradients and (N, C) activations."""
    params = 4 * (c * d + c + n * d)
    rows = micro or n
    if path in ("ce", "dense"):
        # logits, scaled copy, softmax, two gradients; grad W (twice while accumulating)
        act = 4 * rows * c * 5 + 4 * c * d * (2 if micro else 1)
    elif path == "embedded":
        act = 4 * c * d * (2 if targets == "smooth" else 1) + 4 * n * n * 4
    else:
        act = 4 * c * d * (2 if targets == "smooth" else 0) + 4 * n * n * 4 + 4 * n * 2 * d * 3
    return (params + act + 400 * 2**20) / 2**30  # + the torch runtime


def _child(args: argparse.Namespace, path: str, targets: str, c: int, n: int,
           micro: int = 0) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--case", path, targets, str(c), str(n),
           "--d", str(args.d), "--repeats", str(1 if micro else args.repeats),
           "--micro", str(micro)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"case {path}/{targets}/C={c} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cases() -> list[tuple[str, str]]:
    """(path, targets) pairs: the full-logit paths cost the same for hard and MixUp targets."""
    out = [("ce", "hard"), ("ce", "smooth"), ("dense", "hard"), ("dense", "smooth")]
    return out + [(p, t) for p in ("embedded", "embedded-sparse") for t in TARGETS]


def _fmt(v: float | None, digits: int = 1) -> str:
    if v is None:
        return "n/a"
    return f"{v:,.{digits}f}"


def _slopes(rows: list[dict], n0: int) -> dict[tuple[str, str], list[tuple]]:
    """Log-log slopes of time and step memory between consecutive C per (path, targets), over
    the cases that ran N rows at once (memory slope left out for accumulated steps)."""
    by: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if not r.get("skipped") and r["N"] == n0:
            by.setdefault((r["path"], r["targets"]), []).append(r)
    out = {}
    for key, rs in by.items():
        rs.sort(key=lambda r: r["C"])
        sl = []
        for a, b in zip(rs, rs[1:]):
            dc = math.log(b["C"] / a["C"])
            st = math.log(b["ms_median"] / a["ms_median"]) / dc
            sm = float("nan")
            if a["step_mib"] and b["step_mib"] and not (a.get("micro") or b.get("micro")):
                sm = math.log(b["step_mib"] / a["step_mib"]) / dc
            sl.append((a["C"], b["C"], st, sm, bool(b.get("micro"))))
        out[key] = sl
    return out


def _how(r: dict) -> str:
    if r.get("micro"):
        return f"{r['N']} ({r['N'] // r['micro']} x {r['micro']} accumulated)"
    return str(r["N"])


def report(rows: list[dict], meta: dict) -> str:
    n0 = meta["N"]
    lines = [f"Per training step (head forward + loss + backward w.r.t. h, W, b), N={n0}, "
             f"D={meta['D']}; median over >= {meta['repeats']} steps after one warm-up "
             f"(1 step for accumulated cases); {meta['threads']} CPU thread(s); {meta['date']}; "
             f"load average before the run {meta['load']}; torch {meta['torch']}.", "",
             "| C | path | targets | N | ms / step | step MiB | total MiB |",
             "|---:|---|---|---:|---:|---:|---:|"]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"| {r['C']:.0e} | {r['path']} | {r['targets']} | {r['N']} | "
                         f"skipped: {r['skipped']} | | |")
        else:
            lines.append(f"| {r['C']:.0e} | {r['path']} | {r['targets']} | {_how(r)} | "
                         f"{_fmt(r['ms_median'])} | {_fmt(r['step_mib'])} | "
                         f"{_fmt(r['total_mib'], 0)} |")
    lines += ["", "Speed-up of the embedded path over soft-target cross-entropy with a full "
              "linear head (same C and N; ce's cost does not depend on the targets, so its "
              "hard-label time is used where it only ran with hard labels):", "",
              "| C | targets | ce ms | embedded ms | x | embedded-sparse ms | x |",
              "|---:|---|---:|---:|---:|---:|---:|"]
    done = {(r["path"], r["targets"], r["C"], r["N"]): r for r in rows if not r.get("skipped")}
    for c in meta["sizes"]:
        for t in TARGETS:
            ce = done.get(("ce", t, c, n0)) or done.get(("ce", "hard", c, n0))
            e = done.get(("embedded", t, c, n0))
            s = done.get(("embedded-sparse", t, c, n0))
            if ce is None or e is None:
                continue
            ce_txt = _fmt(ce["ms_median"]) + (" (accumulated)" if ce.get("micro") else "")
            lines.append(f"| {c:.0e} | {t} | {ce_txt} | {_fmt(e['ms_median'])} | "
                         f"{ce['ms_median'] / e['ms_median']:.0f} | "
                         f"{_fmt(s['ms_median']) if s else 'n/a'} | "
                         f"{format(ce['ms_median'] / s['ms_median'], '.0f') if s else ''} |")
    lines += ["", "Growth with C (log-log slope between consecutive C: 1 = linear in C, "
              "0 = flat; memory slope omitted where ce was accumulated):", "",
              "| path | targets | C range | time slope | step-memory slope |",
              "|---|---|---|---:|---:|"]
    for (p, t), sl in _slopes(rows, n0).items():
        for a, b, st, sm, acc in sl:
            note = " (accumulated at the upper C)" if acc else ""
            sm_txt = "" if math.isnan(sm) else f"{sm:.2f}"
            lines.append(f"| {p} | {t} | {a:.0e}..{b:.0e}{note} | {st:.2f} | {sm_txt} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str, n0: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=80)
    style = {"ce": ("tab:red", "o"), "dense": ("tab:orange", "s"),
             "embedded": ("tab:blue", "^"), "embedded-sparse": ("tab:green", "v")}
    dash = {"hard": "-", "mixup": ":", "smooth": "--"}
    keys = sorted({(r["path"], r["targets"]) for r in rows if not r.get("skipped")},
                  key=lambda k: (PATHS.index(k[0]), TARGETS.index(k[1])))
    for p, t in keys:
        rs = sorted((r for r in rows if not r.get("skipped") and r["path"] == p
                     and r["targets"] == t and r["N"] == n0), key=lambda r: r["C"])
        color, marker = style[p]
        if rs:
            cs = [r["C"] for r in rs]
            ax_t.plot(cs, [r["ms_median"] for r in rs], dash[t], color=color, marker=marker,
                      ms=4, label=f"{p} / {t}")
            at_once = [r for r in rs if not r.get("micro")]
            ax_m.plot([r["C"] for r in at_once], [max(r["step_mib"] or 0.0, 0.1) for r in at_once],
                      dash[t], color=color, marker=marker, ms=4)
            for r in rs:
                if r.get("micro"):  # accumulated: time of an N-row step, memory of a micro-batch
                    ax_t.plot([r["C"]], [r["ms_median"]], marker="*", color=color, ms=10,
                              ls="none")
                    ax_m.plot([r["C"]], [r["step_mib"]], marker="*", mfc="none", color=color,
                              ms=10, ls="none")
        small = [r for r in rows if not r.get("skipped") and r["path"] == p and r["targets"] == t
                 and r["N"] != n0]
        for r in small:
            ax_t.plot([r["C"]], [r["ms_median"]], marker=marker, mfc="none", color=color, ms=7,
                      ls="none")
            ax_m.plot([r["C"]], [r["step_mib"]], marker=marker, mfc="none", color=color, ms=7,
                      ls="none")
    ax_t.set(xscale="log", yscale="log", xlabel="classes C", ylabel="ms per step",
             title=f"time per step (N={n0})")
    ax_m.set(xscale="log", yscale="log", xlabel="classes C", ylabel="MiB",
             title="peak step memory")
    fig.text(0.01, 0.01, f"hollow square: dense InfoNCE at a smaller N (N={n0} does not fit); "
             f"star: cross-entropy as accumulated micro-batches (memory of one micro-batch)",
             fontsize=6.5)
    for ax in (ax_t, ax_m):
        ax.grid(True, which="major", alpha=0.3)
    fig.legend(*ax_t.get_legend_handles_labels(), fontsize=7, loc="center right")
    fig.tight_layout(rect=(0, 0.04, 0.82, 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1e3,1e4,1e5,1e6", help="comma-separated C values")
    ap.add_argument("--n", type=int, default=1024, help="batch size N")
    ap.add_argument("--d", type=int, default=256, help="feature width D")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per case")
    ap.add_argument("--max-gib", type=float, default=8.0, help="skip cases estimated above this")
    ap.add_argument("--micro", type=int, default=128,
                    help="where N rows do not fit at once, run ce as gradient accumulation over "
                         "micro-batches of this many rows (0: do not run)")
    ap.add_argument("--small-n", type=int, default=128,
                    help="where N rows do not fit, run dense InfoNCE at this N (0: do not run)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--quick", action="store_true", help="only C = 1e3, 1e4")
    ap.add_argument("--plot", default=None, help="write the time/memory plot (PNG) here")
    ap.add_argument("--json", default=None, help="write all measurements here")
    ap.add_argument("--report-from", default=None, metavar="JSON",
                    help="print the report (and --plot) from a --json file of an earlier run")
    ap.add_argument("--case", nargs=4, metavar=("PATH", "TARGETS", "C", "N"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case:
        p, t, c, n = args.case
        print(json.dumps(run_case(p, t, int(c), int(n), args.d, args.repeats,
                                  threads=args.threads or None, micro=args.micro)))
        return 0
    if args.report_from:
        with open(args.report_from) as fh:
            saved = json.load(fh)
        print(report(saved["rows"], saved["meta"]))
        if args.plot:
            plot(saved["rows"], args.plot, saved["meta"]["N"])
        return 0
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    if args.quick:
        sizes = [c for c in sizes if c <= 10_000]
    import torch

    meta = {"N": args.n, "D": args.d, "repeats": args.repeats, "sizes": sizes,
            "threads": args.threads or torch.get_num_threads(),
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
            "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
            "command": " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])}
    rows = []
    for c in sizes:
        for p, t in _cases():
            est = estimate_gib(p, t, c, args.n, args.d)
            if est > args.max_gib:
                rows.append({"path": p, "targets": t, "C": c, "N": args.n,
                             "skipped": f"needs ~{est:.0f} GiB > {args.max_gib:g} at once"})
                print(f"C={c:.0e} {p}/{t}: skipped (estimated {est:.1f} GiB)", flush=True)
                if t != "hard":
                    continue
                if p == "ce" and args.micro and \
                        estimate_gib(p, t, c, args.n, args.d, args.micro) <= args.max_gib:
                    r = _child(args, p, t, c, args.n, micro=args.micro)
                elif p == "dense" and args.small_n and \
                        estimate_gib(p, t, c, args.small_n, args.d) <= args.max_gib:
                    r = _child(args, p, t, c, args.small_n)
                else:
                    continue
                rows.append(r)
                print(f"C={c:.0e} {p}/{t} N={r['N']} micro={r['micro']}: "
                      f"{r['ms_median']:.1f} ms", flush=True)
                continue
            r = _child(args, p, t, c, args.n)
            rows.append(r)
            print(f"C={c:.0e} {p}/{t}: {r['ms_median']:.1f} ms, step {r['step_mib']:.0f} MiB",
                  flush=True)
    text = report(rows, meta)
    print()
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=1)
    if args.plot:
        plot(rows, args.plot, args.n)
        print(f"\nplot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
