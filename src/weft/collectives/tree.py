"""Double binary trees (as in NCCL): two balanced binary trees over the ranks,
built so that most interior nodes of one are leaves of the other; each tree
carries half the data, so every rank sends and receives about equally."""

from __future__ import annotations

from weft.collectives.schedule import Schedule, from_trees


def binary_tree(order: list[int]) -> dict[int, int]:
    """Balanced binary tree, in-order over `order`: parent map child -> parent."""
    parent: dict[int, int] = {}

    def build(lo: int, hi: int, up: int | None) -> None:
        if lo >= hi:
            return
        mid = (lo + hi) // 2
        if up is not None:
            parent[order[mid]] = up
        build(lo, mid, order[mid])
        build(mid + 1, hi, order[mid])

    build(0, len(order), None)
    return parent


def double_binary_trees(n: int) -> list[tuple[dict[int, int], float]]:
    if n == 1:
        return [({}, 1.0)]
    t1 = binary_tree(list(range(n)))
    # The second tree is the first shifted by one rank, or mirrored, whichever
    # turns more of the first tree's leaves into interior nodes.
    inner = set(t1.values())
    t2 = min((binary_tree([(i + 1) % n for i in range(n)]), binary_tree(list(reversed(range(n))))),
             key=lambda t: len(inner & set(t.values())))
    return [(t1, 0.5), (t2, 0.5)]


def dbtree(collective: str, n: int, root: int = 0) -> Schedule:
    trees = double_binary_trees(n)
    r = root if collective in ("broadcast", "reduce") else None
    return from_trees(collective, n, trees, "dbtree", root=r)
