"""weft.demo: the demo job and what it trains on (top layer, beside the CLI).

- `weft.demo.data`: scikit-learn's handwritten digits as torch datasets;
- `weft.demo.models`: small ordinary models for them (`digits_mlp`, `digits_cnn`);
- `weft.demo.run`: `weft demo`, data-parallel training on local ranks;
- `weft.demo.cli`: the `weft demo` command (`--adaptive`: the adaptive-training demo).

Lower layers (adapt, parallel, planner, cluster, ...) never import this package
statically; they name its models by spec string (e.g. "weft.demo.models:digits_mlp").
"""
