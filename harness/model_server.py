"""The model process of the trusted evaluation (untrusted side): ``python -m harness.model_server``.

It imports train.py, builds the model from ``model_dir/config.json`` with train.py's ``build_model``, loads
``model_dir/model.pt`` and answers input rows with float32 logits over the socket until told to quit. Every
reply is checked by the trusted side; nothing this process says is believed (train.py's code runs here and
may replace any of it). Run in the runner's sandbox, it holds no targets and no path to validation data.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import sys
import traceback
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from harness import wire

MAX_ROWS_BYTES = 1 << 28  # the largest batch of input rows a request may carry


def import_train(train_py: Path) -> Any:
    """train.py as a fresh module; its ``import prepare`` finds the prepare.py next to it (the runner's copy)."""
    name = f"_swarm_train_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, train_py)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {train_py}")
    module = importlib.util.module_from_spec(spec)
    here = str(train_py.resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def serve(train_py: Path, model_dir: Path, sock_path: str, device: str | None = None) -> int:
    import torch

    sock = wire.connect(sock_path, timeout=None)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        config = json.loads((model_dir / "config.json").read_text())
        state = torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True)
        module = import_train(train_py)
        if not callable(getattr(module, "build_model", None)):
            raise RuntimeError("train.py defines no build_model(config) function")
        model = module.build_model(config)
        model.load_state_dict(state, strict=True)
        model.to(dev).eval()
        n_params = sum(p.numel() for p in model.parameters())
    except Exception as e:
        traceback.print_exc()
        wire.send(sock, b"E", {"error": f"building the model failed: {type(e).__name__}: {e}"})
        return 1
    wire.send(sock, b"H", {"num_params": int(n_params)})
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()
    while True:
        kind, head, payload = wire.recv(sock, MAX_ROWS_BYTES)
        if kind == b"Q":
            return 0
        rows, cols = int(head["rows"]), int(head["cols"])
        x = torch.from_numpy(np.frombuffer(payload, dtype=np.int32).reshape(rows, cols).astype(np.int64)).to(dev)
        try:
            with torch.no_grad(), autocast:
                out = model(x)
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"model(idx) returned {type(out).__name__}, expected a logits tensor")
            if out.dim() != 3 or tuple(out.shape[:2]) != (rows, cols):
                raise ValueError(f"model(idx) returned shape {tuple(out.shape)}, expected ({rows}, {cols}, vocab)")
            logits = out.detach().float().cpu().contiguous().numpy()
        except Exception as e:
            traceback.print_exc()
            wire.send(sock, b"E", {"error": f"model forward failed: {type(e).__name__}: {e}"})
            return 1
        wire.send(sock, b"L", {"rows": rows, "cols": cols, "vocab": int(logits.shape[-1]), "dtype": "float32"},
                  logits.data)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.model_server", description=__doc__)
    p.add_argument("--train-py", required=True)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--socket", required=True)
    p.add_argument("--device", default=None)
    a = p.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        return serve(Path(a.train_py), Path(a.model_dir), a.socket, a.device)
    except (wire.WireError, OSError) as e:
        print(f"model server: the trusted side went away: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
