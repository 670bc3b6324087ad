"""What `weft train --plan` shows and writes: a rich progress bar on rank 0 (loss, tokens/s or
samples/s, peak memory per rank) and the run folder (report.json, loss.png)."""

from __future__ import annotations

import time

from weft.units import fmt_bytes


def ranks(n: int) -> str:
    return f"{n} rank" + "s" * (n != 1)


def _mib(values) -> str:
    return " ".join(f"{v / 2**20:.0f}" for v in values) + " MiB"


class Progress:
    """A progress bar (rich) that rank 0 updates after every step; hidden with show=False.
    Rates count the whole global batch: tokens when the inputs are integer ids of 2+ dims
    (a language model's windows), else samples."""

    def __init__(self, cfg, world: int, model, show: bool):
        self.cfg, self.world, self.show = cfg, world, show
        self.unit, self.per_step = "samples", float(cfg.global_batch)
        self._first: float | None = None
        self._steps_after_first = 0
        self._t_last = time.perf_counter()
        self.title = cfg.plan.get("name") or "train"
        self.mem_kind = "cuda" if model.device.type == "cuda" else "rss"
        self._bar = None

    def __enter__(self):
        if self.show:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
            )
            from rich.progress import Progress as Bar

            self._bar = Bar(TextColumn("[bold]{task.description}"), BarColumn(bar_width=20),
                            MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
                            TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[mem]}"),
                            TimeElapsedColumn(), transient=False)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.title, total=None, loss=float("nan"),
                                            rate="", mem="")
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def steady_rate(self) -> float | None:
        """Units per second after the first step (start-up and warm-up excluded)."""
        if self._first is None or self._steps_after_first == 0:
            return None
        return self._steps_after_first * self.per_step / (self._t_last - self._first)

    def update(self, step: int, total: int, loss: float, x, memory) -> None:
        now = time.perf_counter()
        if self._first is None:
            x0 = x[0] if isinstance(x, (tuple, list)) else x
            if not x0.is_floating_point() and x0.dim() >= 2:
                self.unit, self.per_step = "tokens", float(self.cfg.global_batch * x0[0].numel())
            self._first = now
        else:
            self._steps_after_first += 1
        self._t_last = now
        if self._bar is None:
            return
        rate = self.steady_rate()
        mem = (_mib(memory) if len(memory) <= 8 else
               f"{min(memory) / 2**20:.0f}-{max(memory) / 2**20:.0f} MiB")
        self._bar.update(self._task, completed=step, total=total, loss=loss,
                         rate="" if rate is None else f"{rate:,.0f} {self.unit}/s",
                         mem=f"{self.mem_kind} {mem}")


def write_report(cfg, r0: dict, out, backend: str) -> dict:
    """`<out>/<timestamp>/report.json` and `loss.png` from rank 0's result; prints a summary."""
    from rich.console import Console

    from weft.runs import plot_loss, run_dir, write_json

    losses = r0["losses"]
    rate = r0["rate"]
    report = {
        "plan": cfg.plan_path, "plan_data": cfg.plan, "model": cfg.spec, "world": cfg.world,
        "backend": backend, "device": r0["device"], "global_batch": cfg.global_batch,
        "lr": cfg.lr, "seed": cfg.seed, "resumed_from": cfg.resume, "checkpoint": cfg.save,
        "first_step": r0["start"], "steps": r0["steps"], "train_seconds": r0["seconds"],
        f"{r0['unit']}_per_step": r0["per_step"],
        f"{r0['unit']}_per_second": rate,  # after the first step (warm-up excluded)
        "final_loss": losses[-1] if losses else None, "losses": losses,
        "memory_per_rank_bytes": r0["memory"],
        "memory_kind": "cuda max_memory_allocated" if r0["device"].startswith("cuda")
        else "peak resident set size (ru_maxrss)",
    }
    folder = run_dir(out)  # made only now: a failed run leaves no empty folder
    if losses:
        steps = list(range(r0["start"] + 1, r0["start"] + len(losses) + 1))
        name = cfg.plan.get("name") or cfg.plan_path
        report["plot"] = str(plot_loss(folder / "loss.png", steps, losses,
                                       title=f"{name} on {ranks(cfg.world)}: final loss "
                                             f"{losses[-1]:.4f}"))
    write_json(folder / "report.json", report)
    con = Console()
    mem = ", ".join(fmt_bytes(v) for v in r0["memory"])
    con.print(f"{r0['steps']} steps of {cfg.global_batch} on {ranks(cfg.world)} in "
              f"{r0['seconds']:.1f} s"
              + (f": final loss {losses[-1]:.4f}" if losses else "")
              + (f", {rate:,.0f} {r0['unit']}/s" if rate else "")
              + f"; peak memory per rank {mem}")
    if cfg.save:
        con.print(f"checkpoint: {cfg.save}")
    con.print(f"report: {folder / 'report.json'}"
              + (f"   loss plot: {report['plot']}" if "plot" in report else ""))
    report["dir"] = str(folder)
    return report
