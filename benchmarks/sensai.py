"""sensAI class-parallel serving: the original classifier vs its decomposition, same run, CPU.

Trains a ResNet-style CNN on 32x32 augmented digits (weft.serve.testbed; nothing downloaded),
decomposes it into G class-group subnets, then measures single-input latency (p50, p99) and
throughput of:

    original in-process      all cores' intra-op threads, no IPC
    original, 1 worker       the same model served like the subnets (WorkerPool, W=1)
    class-parallel W=1       all subnets in one worker, one after another
    class-parallel W=2       subnets spread over 2 workers, cores // 2 threads each

each serving its members with batch norms folded (weft.serve.fold), single-input latency
measured interleaved (20 turns, the contenders' order rotating), plus parameters and FLOPs
per subnet vs the original and held-out accuracy of both. Targets
(full run only): p50(original, 1 worker) / p50(class-parallel, W=2) >= 1.5 and accuracy within
1 point. The trained model and bundle are cached under runs/bench-cache/ (--no-cache retrains).
On a GPU (when one is present) it also times the original vs the subnets on CUDA streams.

    python benchmarks/sensai.py [--quick] [--json out.json] [--no-cache] [--keep F]
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from _common import emit, figure, parser

import torch

from weft.args import fraction
from weft.serve import Bundle, DecomposeConfig, Ensemble, WorkerPool, decompose, evaluate
from weft.serve import decomposition as D
from weft.serve import testbed as tb
from weft.serve.workers import cpu_count

ROOT = Path(__file__).resolve().parents[1]


def _config(quick: bool) -> dict:
    if quick:
        return {"size": 16, "copies": 1, "test_copies": 1, "width": 8, "blocks": [1, 1, 1], "epochs": 3,
                "groups": 2, "keep": 0.4, "steps": 30, "requests": 60, "batch": 32}
    return {"size": 32, "copies": 3, "test_copies": 2, "width": 32, "blocks": [1, 1, 1], "epochs": 6,
            "groups": 2, "keep": 0.4, "steps": 300, "requests": 400, "batch": 64}


def _key(cfg: dict, fields: tuple, sources: dict) -> str:
    data = {k: cfg[k] for k in fields} | {"torch": torch.__version__} | {
        k: hashlib.sha256(Path(m.__file__).read_bytes()).hexdigest() for k, m in sources.items()}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def _prepare(cfg: dict, use_cache: bool, log) -> tuple[Path, Path, tuple]:
    """(original bundle dir, decomposed bundle dir, test set), trained or from the cache: the
    original under a key of its data and training, each decomposition of it under one more of
    the decomposition's settings (so another --keep reuses the trained original)."""
    okey = _key(cfg, ("size", "copies", "test_copies", "width", "blocks", "epochs"), {"testbed": tb})
    dkey = _key(cfg, ("groups", "keep", "steps"), {"decomposition": D})
    cache = ROOT / "runs" / "bench-cache" / f"sensai-{okey}"
    orig_dir, dec_dir = cache / "original", cache / f"decomposed-{dkey}"
    train, test = tb.digits32(cfg["copies"], cfg["test_copies"], size=cfg["size"])
    if not (use_cache and (orig_dir / "bundle.json").exists()):
        torch.manual_seed(0)
        t0 = time.perf_counter()
        model = tb.train(tb.resnet(10, cfg["width"], tuple(cfg["blocks"])), train, epochs=cfg["epochs"])
        log(f"trained the original ({len(train)} images, {cfg['epochs']} epochs) in {time.perf_counter() - t0:.0f} s")
        Bundle.from_model(model, (1, cfg["size"], cfg["size"])).save(orig_dir)
    else:
        log(f"cached model: {orig_dir}")
    if not (use_cache and (dec_dir / "bundle.json").exists()):
        model = Bundle.load(orig_dir).members[0].module  # the traced original, as saved
        t0 = time.perf_counter()
        bundle = decompose(model, train, test, DecomposeConfig(groups=cfg["groups"], keep=cfg["keep"], steps=cfg["steps"]))
        bundle.save(dec_dir)
        log(f"decomposed into {cfg['groups']} subnets in {time.perf_counter() - t0:.0f} s")
    else:
        log(f"cached decomposition: {dec_dir}")
    return orig_dir, dec_dir, test.tensors


def _stats(lat: list[float]) -> dict:
    lat = sorted(lat)
    return {"p50": lat[len(lat) // 2], "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))],
            "rps": len(lat) / sum(lat)}


def _latency(predictor, x: torch.Tensor, n: int) -> dict:
    return _stats(_timed(predictor, x, 0, n, warm=10))


def _timed(predictor, x: torch.Tensor, start: int, n: int, warm: int = 0) -> list[float]:
    for i in range(warm):
        predictor.predict(x[i])
    lat = []
    for i in range(start, start + n):
        t0 = time.perf_counter()
        predictor.predict(x[i % len(x)])
        lat.append(time.perf_counter() - t0)
    return lat


def _interleaved(predictors: dict, x: torch.Tensor, n: int, rounds: int) -> dict:
    """Single-input latency of every contender, measured in `rounds` turns of n / rounds
    requests each, the contenders' order rotating every turn: the machine's drift over the
    run (this VM's single-input times wander by up to 2x between minutes) falls on all of
    them alike instead of on whichever ran last."""
    names = list(predictors)
    lat: dict[str, list[float]] = {k: [] for k in names}
    for k in names:  # warm-up
        _timed(predictors[k], x, 0, 10)
    per = max(1, n // rounds)
    for r in range(rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            lat[k] += _timed(predictors[k], x, r * per, per)
    return {k: _stats(v) for k, v in lat.items()}


def _throughput(predictor, x: torch.Tensor, batch: int, seconds: float) -> float:
    predictor.predict(x[:batch])
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        predictor.predict(x[done % (len(x) - batch):][:batch])
        done += batch
    return done / (time.perf_counter() - t0)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--no-cache", action="store_true", help="retrain the model and redo the decomposition")
    p.add_argument("--keep", type=fraction, help="fraction of each channel group a subnet keeps "
                   f"(default {_config(False)['keep']}; --quick {_config(True)['keep']})")
    args = p.parse_args()
    cfg = _config(args.quick) | ({"keep": args.keep} if args.keep else {})
    cores = cpu_count()
    torch.set_num_threads(cores)
    print(f"conditions: {cores} cores, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f} at start; "
          f"ResNet width {cfg['width']} blocks {cfg['blocks']} on {cfg['size']}x{cfg['size']} digits; {cfg['groups']} subnets, keep "
          f"{cfg['keep']}, {cfg['steps']} fine-tuning steps; {cfg['requests']} single-input requests per contender")
    orig_dir, dec_dir, (xt, yt) = _prepare(cfg, not args.no_cache, print)
    original, bundle = Bundle.load(orig_dir), Bundle.load(dec_dir)
    figures = []
    o = original.members[0].info
    figures.append(figure("original params", o["params"], "params", better="lower"))
    figures.append(figure("original FLOPs", o["flops"] / 1e6, "MFLOP", better="lower"))
    for m in bundle.members:
        figures.append(figure(f"subnet {m.name} params / original", m.info["params"] / o["params"], "x", better="lower"))
        figures.append(figure(f"subnet {m.name} FLOPs / original", m.info["flops"] / o["flops"], "x", better="lower"))

    acc_o = evaluate(Ensemble(original), xt, yt)
    acc_d = evaluate(Ensemble(bundle), xt, yt)
    target = None if args.quick else 1.0
    figures += [figure("accuracy original", 100 * acc_o, "%"), figure("accuracy decomposed", 100 * acc_d, "%"),
                figure("accuracy drop", 100 * (acc_o - acc_d), "points", target, "lower")]

    preds = {"original in-process": Ensemble(original),
             "original, 1 worker": WorkerPool(orig_dir, 1, threads=cores),
             "class-parallel W=1": WorkerPool(dec_dir, 1, threads=cores),
             "class-parallel W=2": WorkerPool(dec_dir, 2, threads=max(1, cores // 2))}
    reference = Ensemble(bundle).predict(xt[:64])
    try:
        for name, pred in preds.items():
            if name.startswith("class-parallel"):
                assert torch.equal(pred.predict(xt[:64]), reference), f"{name} answers differ from in-process"
        results = _interleaved(preds, xt, cfg["requests"], 20)
        for name, pred in preds.items():
            results[name]["batch"] = _throughput(pred, xt, cfg["batch"], 0.5 if args.quick else 3.0)
    finally:
        for pred in preds.values():
            pred.close()
    for name, r in results.items():
        figures += [figure(f"{name} p50", 1e3 * r["p50"], "ms", better="lower"),
                    figure(f"{name} p99", 1e3 * r["p99"], "ms", better="lower"),
                    figure(f"{name} single-input throughput", r["rps"], "req/s"),
                    figure(f"{name} batch-{cfg['batch']} throughput", r["batch"], "inputs/s")]
    base, cp2 = results["original, 1 worker"], results["class-parallel W=2"]
    figures.append(figure("p50 speed-up W=2 vs original (1 worker)", base["p50"] / cp2["p50"], "x",
                          None if args.quick else 1.5))
    figures.append(figure("p50 speed-up W=2 vs original in-process",
                          results["original in-process"]["p50"] / cp2["p50"], "x"))
    figures.append(figure("p99 speed-up W=2 vs original (1 worker)", base["p99"] / cp2["p99"], "x"))

    if torch.cuda.is_available():
        figures += _gpu(original, bundle, xt, cfg["requests"])
    emit(figures, args.json, f"sensAI class-parallel serving ({'quick' if args.quick else 'full'}, CPU, {cores} cores)")


def _gpu(original, bundle, xt, n) -> list[dict]:
    out = {}  # each answer ends with a copy to the CPU, so the timing covers the GPU work
    for name, b in (("original", original), ("class-parallel streams", bundle)):
        out[name] = _latency(Ensemble(Bundle.load(b.path), device="cuda"), xt, n)
    return [figure(f"GPU {k} p50", 1e3 * v["p50"], "ms", better="lower") for k, v in out.items()] + [
        figure("GPU p50 speed-up streams vs original", out["original"]["p50"] / out["class-parallel streams"]["p50"], "x")]


if __name__ == "__main__":
    main()
