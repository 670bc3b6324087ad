"""sensAI end to end on an ordinary model: train, decompose, serve in 2 worker processes, query
over HTTP. Run: python examples/sensai_digits.py  (about a minute on 2 cores)

The same with the command line:
    weft serve decompose model.pt --data weft.serve.testbed:digits --groups 2 --out bundle/
    weft serve run bundle/ --workers 2 --port 8000
    curl -s localhost:8000/predict -d '{"input": [[[0, 0, 5, ...]]]}'
"""

import json
import tempfile
import urllib.request
from pathlib import Path

import torch

from weft.serve import DecomposeConfig, Ensemble, WorkerPool, decompose, evaluate
from weft.serve import testbed as tb
from weft.serve.http import BackgroundServer, InferenceServer


def main() -> None:
    torch.manual_seed(0)
    train, test = tb.digits()                           # sklearn's bundled 8x8 digits
    model = tb.train(tb.digits_resnet(), train, epochs=6)  # any fx-traceable classifier
    bundle = decompose(model, train, test, DecomposeConfig(groups=2, keep=0.5, steps=300), log=print)
    folder = Path(tempfile.mkdtemp()) / "bundle"
    bundle.save(folder)

    x, y = test.tensors
    print(f"original {tb.accuracy(model, test):.2%}, decomposed {evaluate(Ensemble(bundle), x, y):.2%}")
    with WorkerPool(folder, workers=2) as pool, BackgroundServer(InferenceServer(pool)) as server:
        print(f"one input through 2 workers: label {pool.predict(x[0]).item()} (true {y[0].item()})")
        req = urllib.request.Request(server.url + "/predict", data=json.dumps({"inputs": x[:5].tolist()}).encode())
        print("HTTP:", json.loads(urllib.request.urlopen(req, timeout=30).read()), "true", y[:5].tolist())


if __name__ == "__main__":
    main()
