"""Measure a memory profile of one training step for each of Gavel's job types and write them,
binned, as a `weft.colocation/1` profiles file for `weft cluster simulate --colocation`.

    python examples/cluster/gavel/make_profiles.py \
        --throughputs shared/data/gavel/physical_cluster_throughputs.json \
        --out examples/cluster/gavel/profiles.json [--only 'ResNet-18'] [--threads 2]

Each job type (scale factor 1 keys of the throughput file, e.g. 'ResNet-50 (batch size 64)')
is profiled by `weft profile memory SPEC --batch B --timing unprofiled` in its own process,
one at a time, with torch limited to --threads threads; the spec is this folder's file for
the model family (resnet18.py, ..., cyclegan.py). The profile's 64-bin maxima, its peak,
batch and step time go into the output file, together with the conditions; the time axis is
`--timing unprofiled`'s: each phase (forward, backward, optimizer) of the profiled step put
on the median of unprofiled steps, so the step time is the unprofiled one. An existing
output file is updated: job types not profiled this time keep their entries, so the job
types can be measured in several runs. A job type whose profile fails (e.g. out of memory)
is reported and left out.

What the bytes are: c10's CPU allocator, every tensor storage of the step (parameters,
gradients, optimizer state, activations, the batch), counted from zero. They stand in for
the CUDA allocator's bytes of the same tensors on Gavel's GPUs; they leave out the CUDA
context, cuDNN/cuBLAS workspaces and the caching allocator's fragmentation, and CPU kernels
may keep different intermediates than GPU ones.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[2] / "src"
FAMILIES = {"ResNet-18": "resnet18.py", "ResNet-50": "resnet50.py",
            "Transformer": "transformer.py", "LM": "lm.py",
            "Recommendation": "recommendation.py", "A3C": "a3c.py", "CycleGAN": "cyclegan.py"}
FIXED_BATCH = {"A3C": 4, "CycleGAN": 1}  # A3C: its 4 workers; CycleGAN: batch 1
MEMORY = {"v100": "16GiB", "p100": "16GiB", "k80": "12GiB"}
LIMITS = ("CPU allocator bytes (c10, torch.profiler allocation events) of the step's tensors "
          "stand in for CUDA allocated bytes: no CUDA context, no cuDNN/cuBLAS workspace, no "
          "caching-allocator fragmentation; CPU kernels may keep other intermediates than GPU "
          "ones. Bins are each bin's maximum over the CPU step, laid by the simulator on the "
          "step time 1/throughput of each accelerator type.")


def job_types(throughputs: Path) -> list[str]:
    """Gavel's job types: the model names of the file's scale-factor-1 keys, in file order."""
    raw = json.loads(throughputs.read_text())
    names = []
    for per_type in raw.values():
        for key in per_type:
            m = re.fullmatch(r"\('(.+)', (\d+)\)", key)
            if m and m.group(2) == "1" and m.group(1) not in names:
                names.append(m.group(1))
    if not names:
        raise SystemExit(f"{throughputs}: no \"('<job type>', 1)\" keys")
    return names


def spec_and_batch(job_type: str, specs: dict[str, Path]) -> tuple[Path, int]:
    family, _, rest = job_type.partition(" (batch size ")
    if family not in specs:
        raise KeyError(f"job type {job_type!r}: no model spec for family {family!r}")
    if rest:
        return specs[family], int(rest.rstrip(")"))
    if family not in FIXED_BATCH:
        raise KeyError(f"job type {job_type!r}: no batch size in its name")
    return specs[family], FIXED_BATCH[family]


def profile_one(spec: Path, batch: int, threads: int, bins: int, timeout: float) -> dict:
    """Run `weft profile memory` in a child process; the binned profile and its facts."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join([str(SRC)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    with tempfile.TemporaryDirectory(prefix="gavel_prof_") as tmp:
        cmd = [sys.executable, "-m", "weft", "profile", "memory", str(spec), "--batch", str(batch),
               "--bins", str(bins), "--timing", "unprofiled", "--out", tmp]
        t0 = time.time()
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        wall = time.time() - t0
        if res.returncode != 0:
            tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"exit {res.returncode}: {' | '.join(tail)}")
        sys.path.insert(0, str(SRC))
        from weft.planner.memprofile import MemoryProfile

        prof = MemoryProfile.load(Path(tmp) / f"memory_b{batch}.json")
    return {"bins": [round(float(v)) for v in prof.bins(bins)],
            "peak_bytes": prof.peak, "baseline_bytes": prof.baseline, "batch_size": batch,
            "cpu_step_s": round(prof.period, 4), "wall_s": round(wall, 1),
            "spec": str(spec.relative_to(HERE) if spec.is_relative_to(HERE) else spec),
            "params": prof.meta.get("params"), "input_shape": prof.meta.get("input_shape")}


def _write(args, doc: dict, conditions: dict, profiles: dict) -> None:
    import torch

    from weft.atomic import write_text

    conditions.update({"machine": f"{platform.machine()} {os.cpu_count()} cores (shared), "
                                  f"{platform.node()}",
                       "torch": torch.__version__, "threads": args.threads, "device": "cpu",
                       "warmup_steps": 1, "bins": args.bins, "limits": LIMITS,
                       "timing": "unprofiled: each phase (forward, backward, optimizer) of the "
                                 "profiled step rescaled to the median of 3 unprofiled steps "
                                 "(weft profile memory --timing unprofiled)",
                       "source": "model facts from stanford-futuredata/gavel @ c4fa400, "
                                 "workloads/pytorch (see each spec's docstring)"})
    def order(name):  # families in FAMILIES' order, then by batch
        family = name.partition(" (")[0]
        return (list(FAMILIES).index(family) if family in FAMILIES else len(FAMILIES),
                profiles[name].get("batch_size", 0), name)

    ordered = {name: profiles[name] for name in sorted(profiles, key=order)}
    text = json.dumps({"format": "weft.colocation/1", "memory": doc.get("memory", MEMORY),
                       "conditions": conditions, "profiles": ordered}, indent=1)
    # one line per list of numbers (the bins): compact and still diff-able per job type
    text = re.sub(r"\[\s*([-\d.e+,\s]+?)\s*\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    write_text(args.out, text + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--throughputs", required=True, type=Path, help="Gavel throughput JSON")
    p.add_argument("--out", required=True, type=Path, help="weft.colocation/1 file to write/update")
    p.add_argument("--only", help="regular expression: profile only the job types it matches")
    p.add_argument("--threads", type=int, default=2, help="torch threads per profile (2)")
    p.add_argument("--bins", type=int, default=64, help="bins per profile (64)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per profile (1800)")
    p.add_argument("--spec", action="append", default=[], metavar="FAMILY=PATH",
                   help="use another model spec for a family (e.g. a tiny one in a test)")
    args = p.parse_args(argv)
    specs = {f: HERE / name for f, name in FAMILIES.items()}
    for item in args.spec:
        fam, _, path = item.partition("=")
        specs[fam] = Path(path).resolve()
    names = [n for n in job_types(args.throughputs) if not args.only or re.search(args.only, n)]
    sys.path.insert(0, str(SRC))
    doc = json.loads(args.out.read_text()) if args.out.exists() else {}
    profiles = dict(doc.get("profiles", {}))
    conditions = dict(doc.get("conditions", {}))
    failed = {}
    for name in names:
        try:
            spec, batch = spec_and_batch(name, specs)
        except KeyError as exc:
            failed[name] = str(exc)
            print(f"skip {exc}", flush=True)
            continue
        load0 = os.getloadavg()[0]
        try:
            entry = profile_one(spec, batch, args.threads, args.bins, args.timeout)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            failed[name] = str(exc)
            print(f"{name}: FAILED {exc}", flush=True)
            continue
        entry["measured_utc"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
        entry["load_average"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
        profiles[name] = entry
        conditions.get("not_measured", {}).pop(name, None)
        _write(args, doc, conditions, profiles)  # after each one: a later failure loses nothing
        print(f"{name}: peak {entry['peak_bytes'] / 2**30:.3f} GiB, CPU step {entry['cpu_step_s']} s, "
              f"{entry['wall_s']} s, load {entry['load_average']}", flush=True)
    if failed:
        conditions["not_measured"] = {**conditions.get("not_measured", {}), **failed}
    if not profiles:
        print("nothing profiled; nothing written", file=sys.stderr)
        return 1
    _write(args, doc, conditions, profiles)
    print(f"wrote {args.out} ({len(profiles)} job types)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
