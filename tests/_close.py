"""How a distributed run's parameters are compared with a single-process reference.

Per parameter tensor, the relative distance ||p - p_ref|| / ||p_ref|| must be at most
`rel` (1e-4, what issue 15 asks of a plan). An element-wise absolute bound is too tight for
Adam: where a gradient entry is a near-cancellation, its rounding (which depends on the
order of the reduction and on the CPU's kernels) is divided by a small sqrt(v), so a
single element can move by ~1e-5 after 10 steps even between two single-process runs
that only split the batch differently. A lost, repeated or mis-scaled sample moves whole
tensors by ~1e-3 relative and still fails.
"""

from __future__ import annotations


def assert_params_close(state: dict, ref: dict, what: str = "", only=None, rel: float = 1e-4):
    assert state.keys() == ref.keys(), (what, sorted(set(state) ^ set(ref)))
    for k, v in ref.items():
        if only is not None and k not in only:
            continue
        err = float((state[k].double() - v.double()).norm() / v.double().norm().clamp_min(1e-12))
        assert err <= rel, f"{what}: {k} differs from the single-process run by {err:.2e} (relative)"
