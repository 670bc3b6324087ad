"""Bounded candidate set of space-sharing pairs for the packed policies.

Only pairs with a measured (non-zero) pair throughput are considered; each
job keeps its ``max_partners`` best partner job types by normalised combined
throughput, and only pairs whose combined normalised throughput beats running
either job alone (> 1) are kept, so the LP grows linearly with the job count.
"""

from __future__ import annotations

import numpy as np

from weft.cluster.model import Job


def candidate_pairs(jobs: list[Job], prob, table, types, max_partners: int = 4):
    k = len(types)
    by_key: dict = {}
    for i, j in enumerate(jobs):
        by_key.setdefault(j.key, []).append(i)
    iso = {key: np.maximum(table.row(key, types), 1e-9) for key in by_key}
    # Score each (key, partner key) type pair once: best gain over types.
    scored: dict = {}
    for ka in by_key:
        cands = []
        for kb in table.partners(ka):
            if kb not in by_key or kb < ka:
                continue
            tp = table.pair_row(ka, kb, types)
            back = table.pair_row(kb, ka, types)
            if back is not None:
                tp = np.stack([np.minimum(tp[:, 0], back[:, 1]), np.minimum(tp[:, 1], back[:, 0])], 1)
            gain = (tp[:, 0] / iso[ka] + tp[:, 1] / iso[kb]).max()
            if gain > 1.0 + 1e-6:
                cands.append((gain, kb, tp))
        cands.sort(key=lambda c: -c[0])
        scored[ka] = cands[:max_partners]
    pairs, tps = [], []
    rng = np.random.default_rng(0)
    for ka, cands in scored.items():
        for _, kb, tp in cands:
            a_jobs, b_jobs = by_key[ka], by_key[kb]
            # Pair jobs of the two types one-to-one (rotated so each job has a partner).
            m = max(len(a_jobs), len(b_jobs)) if ka != kb else len(a_jobs) // 2
            off = int(rng.integers(max(len(b_jobs), 1)))
            for r in range(min(m, max_partners * max(len(a_jobs), 1))):
                if ka == kb:
                    a, b = a_jobs[2 * r], a_jobs[2 * r + 1]
                else:
                    a, b = a_jobs[r % len(a_jobs)], b_jobs[(r + off) % len(b_jobs)]
                pairs.append((a, b))
                tps.append(tp)
    if not pairs:
        return np.zeros((0, 2), int), np.zeros((0, k, 2))
    return np.array(pairs, int), np.array(tps)
