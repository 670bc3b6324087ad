"""`weft serve decompose MODEL --data SPEC --out DIR` and `weft serve run SOURCE`."""

from __future__ import annotations

import importlib
from pathlib import Path

from weft.args import fraction, nonneg_float, nonneg_int, port, positive_float, positive_int
from weft.serve.errors import ServeError


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="class-parallel decomposition and serving (sensAI)")
    sub = p.add_subparsers(dest="serve_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda a: p.print_help() or 0)

    d = sub.add_parser("decompose", help="split a trained classifier into pruned class-group subnets")
    d.add_argument("model", help="a whole nn.Module saved with torch.save(model, path) (unpickled: trusted files only)")
    d.add_argument("--data", required=True,
                   help="training data: a .pt file {'x', 'y'[, 'x_test', 'y_test']} of tensors, or "
                        "MODULE:FUNCTION returning (train, test) TensorDatasets, e.g. weft.serve.testbed:digits")
    d.add_argument("--out", required=True, help="bundle folder to write (replaced atomically)")
    d.add_argument("--groups", type=positive_int, help="number of subnets (default: one per class)")
    d.add_argument("--grouping", default="kmeans", choices=["kmeans", "confusion"])
    d.add_argument("--criterion", default="apoz", choices=["apoz", "magnitude"])
    d.add_argument("--keep", type=fraction, default=0.5, help="fraction of each channel group kept (default 0.5)")
    d.add_argument("--steps", type=nonneg_int, default=300, help="fine-tuning steps per subnet (default 300)")
    d.add_argument("--fade", type=nonneg_float, default=0.4,
                   help="fraction of the steps spent fading out the channels to be removed (default 0.4)")
    d.add_argument("--batch-size", type=positive_int, default=64)
    d.add_argument("--lr", type=positive_float, default=6e-3)
    d.add_argument("--distill", type=nonneg_float, default=0.0, help="weight of the original's probabilities (default 0: labels only)")
    d.add_argument("--distill-temperature", type=positive_float, default=2.0)
    d.add_argument("--calib-fraction", type=fraction, default=0.15)
    d.add_argument("--seed", type=nonneg_int, default=0)
    d.add_argument("--freeze-unsupported", action="store_true",
                   help="keep the channels an unsupported layer touches instead of stopping")
    d.add_argument("--quiet", action="store_true", help="no per-subnet progress lines")
    d.set_defaults(func=_decompose)

    r = sub.add_parser("run", help="serve a bundle (or an original model) over HTTP")
    r.add_argument("source", help="a bundle folder, or a model .pt served whole as the baseline")
    r.add_argument("--input-shape", help="one input's shape, e.g. 1,32,32 (needed for a model .pt)")
    r.add_argument("--workers", type=positive_int, default=1, help="worker processes (default 1)")
    r.add_argument("--threads", type=positive_int, help="intra-op threads per worker (default cores // workers)")
    r.add_argument("--in-process", action="store_true", help="run every subnet in the server process")
    r.add_argument("--eager", action="store_true",
                   help="serve the modules as saved (default: batch norms folded into the "
                        "convolutions, where that gives the same answers)")
    r.add_argument("--host", default="127.0.0.1")
    r.add_argument("--port", type=port, default=8000)
    r.add_argument("--max-batch", type=positive_int, default=32)
    r.add_argument("--max-delay-ms", type=nonneg_float, default=0.0,
                   help="how long a request waits for others to batch with (default 0: batches form only "
                        "from requests that queued while the predictor was busy)")
    r.add_argument("--queue", type=positive_int, default=256, help="requests that may wait; more get 503 (default 256)")
    r.add_argument("--request-timeout", type=positive_float, default=30.0)
    r.add_argument("--access-log", action="store_true")
    r.set_defaults(func=_run)


def load_model(path: str):
    import torch
    from torch import nn

    p = Path(path)
    if not p.is_file():
        raise ServeError(f"{path}: no such model file")
    try:
        model = torch.load(p, weights_only=False, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - unpickling raises anything; reported with the file
        raise ServeError(f"{path}: cannot be loaded: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ServeError(f"{path}: holds a {type(model).__name__}, not an nn.Module "
                         "(save the whole model with torch.save(model, path))")
    return model.eval()


def load_data(spec: str):
    """(train, test or None) from a .pt file of tensors or a MODULE:FUNCTION."""
    import torch
    from torch.utils.data import TensorDataset

    if Path(spec).is_file():
        try:
            obj = torch.load(spec, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - reported with the file
            raise ServeError(f"--data {spec}: cannot be loaded: {type(exc).__name__}: {exc}") from None
        if not isinstance(obj, dict) or not {"x", "y"} <= set(obj):
            raise ServeError(f"--data {spec}: expected a dict with tensors 'x' and 'y' "
                             f"(and optionally 'x_test', 'y_test'), got {type(obj).__name__}")
        for key in ("x", "y", "x_test", "y_test"):
            if key in obj and not isinstance(obj[key], torch.Tensor):
                raise ServeError(f"--data {spec}: field {key!r} is a {type(obj[key]).__name__}, expected a tensor")
        test = TensorDataset(obj["x_test"], obj["y_test"]) if "x_test" in obj and "y_test" in obj else None
        return TensorDataset(obj["x"], obj["y"]), test
    if ":" not in spec:
        raise ServeError(f"--data {spec}: no such file, and not MODULE:FUNCTION")
    mod_name, fn_name = spec.split(":", 1)
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise ServeError(f"--data {spec}: {type(exc).__name__}: {exc}") from None
    out = fn()
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise ServeError(f"--data {spec}: returned {type(out).__name__}, expected (train, test) datasets")
    return out[0], out[1]


def _decompose(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from weft.serve.decomposition import DecomposeConfig, decompose

    cfg = DecomposeConfig(groups=args.groups, grouping=args.grouping, criterion=args.criterion, keep=args.keep,
                          steps=args.steps, fade=args.fade, batch_size=args.batch_size, lr=args.lr, distill=args.distill,
                          distill_temperature=args.distill_temperature, calib_fraction=args.calib_fraction, seed=args.seed,
                          on_unsupported="freeze" if args.freeze_unsupported else "error")
    cfg.check()
    out = Path(args.out)
    if out.exists() and not (out / "bundle.json").exists() and (not out.is_dir() or any(out.iterdir())):
        raise ServeError(f"--out {out}: exists and is not a weft bundle; refusing to replace it")
    model = load_model(args.model)
    train, test = load_data(args.data)
    console = Console()
    bundle = decompose(model, train, test, cfg,
                       log=None if args.quiet else lambda s: console.print(s, highlight=False))
    bundle.provenance["source"] = {"model": str(Path(args.model).resolve()), "data": args.data}
    bundle.save(out)
    orig = bundle.provenance["original"]
    t = Table(title=f"{len(bundle.members)} subnets written to {out}")
    for col in ("subnet", "classes", "params", "MFLOPs", "kept channels", "temperature"):
        t.add_column(col)
    t.add_row("original", f"all {bundle.num_classes}", f"{orig['params']:,}", f"{orig['flops'] / 1e6:.2f}", "100%", "")
    for m in bundle.members:
        t.add_row(m.name, ",".join(map(str, m.classes)), f"{m.info['params']:,} ({m.info['params'] / orig['params']:.0%})",
                  f"{m.info['flops'] / 1e6:.2f} ({m.info['flops'] / orig['flops']:.0%})", f"{m.info['kept_ratio']:.0%}",
                  f"{m.temperature:.3f}")
    console.print(t)
    if "test" in bundle.provenance:
        r = bundle.provenance["test"]
        console.print(f"held-out accuracy ({r['samples']} samples): original {r['original_accuracy']:.4f}, "
                      f"decomposed {r['ensemble_accuracy']:.4f}")
    return 0


def _predictor(args):
    from weft.serve.bundle import Bundle, verify
    from weft.serve.ensemble import Ensemble
    from weft.serve.workers import WorkerPool

    src = Path(args.source)
    if src.is_dir():
        verify(src)
        bundle = src
    else:
        if not args.input_shape:
            raise ServeError(f"{src}: serving a model file needs --input-shape (e.g. 1,32,32)")
        try:
            shape = tuple(int(s) for s in args.input_shape.split(","))
        except ValueError:
            raise ServeError(f"--input-shape {args.input_shape!r}: expected integers separated by commas") from None
        if not shape or min(shape) < 1:
            raise ServeError(f"--input-shape {args.input_shape!r}: expected positive integers")
        bundle = Bundle.from_model(load_model(str(src)), shape)
    if args.in_process:
        return Ensemble(bundle if isinstance(bundle, Bundle) else Bundle.load(bundle),
                        fold=not args.eager)
    return WorkerPool(bundle, args.workers, args.threads, fold=not args.eager)


def _run(args) -> int:
    import asyncio
    import signal

    from weft.serve.http import InferenceServer, ServerConfig

    cfg = ServerConfig(max_batch=args.max_batch, max_delay=args.max_delay_ms / 1000, queue_size=args.queue,
                       request_timeout=args.request_timeout)
    cfg.check()
    if args.workers < 1 or (args.threads is not None and args.threads < 1):
        raise ServeError(f"--workers {args.workers} --threads {args.threads}: expected positive integers")
    predictor = _predictor(args)
    try:
        server = InferenceServer(predictor, cfg, predictor.bundle.class_names)
        where = "in process" if args.in_process else f"on {args.workers} worker(s)"

        async def main():
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await server.serve(args.host, args.port, stop, lambda url: print(
                f"serving {len(predictor.bundle.members)} subnet(s) {where} at {url} "
                "(POST /predict, GET /health, GET /metrics; Ctrl-C to stop)", flush=True), args.access_log)

        try:
            asyncio.run(main())
        except OSError as exc:
            raise ServeError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    finally:
        predictor.close()
    print("stopped", flush=True)
    return 0
