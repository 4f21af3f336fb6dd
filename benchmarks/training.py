"""Training benchmark: DP-SGD throughput and peak memory against the same model without DP.

Two models, each trained for a fixed number of steps with the same optimizer (Adam) and
batch, without DP and with DP-SGD through Opacus 1.6 in its per-sample-gradient modes:

- ``mixture``: the baseline generator's model (:mod:`learned.baseline`) on ACTG 320's
  schema, 805 rows, full batch (as it trains by default). Its layer is not one Opacus has
  a grad sampler for, so ``hooks`` computes its per-sample gradients with torch.func;
  ``ghost`` (ghost clipping, Li et al., ICLR 2022; Bu et al., 2023) is tried too;
- ``mlp``: an MLP of MLP size (64 -> 512 -> 512 -> 2, 0.3 M parameters) on random data,
  batch 256: ``hooks`` (Opacus's default: per-sample gradients from module hooks) against
  ``ghost`` (per-sample gradient norms without per-sample gradients, then a second
  backward pass).

Each (model, mode, device) runs in a fresh process, so its peak memory is its own: peak
resident set size on CPU (it includes the interpreter and torch, about the same for every
mode; the ``*_rss_mb`` figures), and ``torch.cuda.max_memory_allocated`` on CUDA. CUDA is
measured when a GPU is present; otherwise the JSON says so.

    python benchmarks/training.py [--steps 30] [--threads 1]

Writes ``benchmarks/results/training.json`` (flat keys such as
``mlp_ghost_cpu_samples_per_second``, ``mlp_ghost_cpu_slowdown``: DP time over non-DP
time).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODES = ("none", "hooks", "ghost")


class NegLogLik:
    """The mixture's loss as a criterion (what ghost clipping's two-pass backward wraps):
    the negative of the per-row log-likelihood the model returns."""

    reduction = "mean"

    def __call__(self, output, target):  # noqa: ANN001, ANN204
        return -output if self.reduction == "none" else -output.mean()


def _setup(model: str, device: str):  # noqa: ANN202
    import numpy as np
    import torch
    from torch import nn

    if model == "mlp":
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(8192, 64, generator=gen)
        y = (x[:, :8].sum(1) > 0).long()
        net = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                            nn.Linear(512, 2))
        return net.to(device), x, y, 256, nn.CrossEntropyLoss()
    import fidelity

    from learned.baseline import MixtureGenerator

    table = fidelity.load_table()
    order = np.random.default_rng(0).permutation(len(table))[:805]
    codes = fidelity.SCHEMA.encode(table.iloc[order])
    gen = MixtureGenerator(fidelity.SCHEMA, fidelity.CARECOURSE)
    x = gen._onehot(codes)
    return gen._new_model().to(device), x, torch.zeros(len(x)), len(x), NegLogLik()


def measure(model: str, mode: str, device: str, steps: int, threads: int) -> dict:
    """Train ``model`` for ``steps`` steps in ``mode`` on ``device``; samples per second
    and peak memory. Runs in its own process."""
    import sys
    import warnings

    import torch
    from torch.utils.data import DataLoader, TensorDataset

    sys.path.insert(0, str(HERE))
    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net, x, y, batch, criterion = _setup(model, device)
    x, y = x.to(device), y.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True, drop_last=True)
    loss_fn = criterion
    if mode != "none":
        from opacus import PrivacyEngine

        engine = PrivacyEngine(accountant="rdp")
        out = engine.make_private(module=net, optimizer=opt, data_loader=loader,
                                  criterion=criterion, noise_multiplier=1.0,
                                  max_grad_norm=1.0, grad_sample_mode=mode,
                                  poisson_sampling=False)
        if mode == "ghost":
            net, opt, loss_fn, loader = out
        else:
            net, opt, loader = out

    def batches():
        while True:
            yield from loader

    it = batches()
    seen = 0
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(steps + 3):
        if i == 3:  # the first steps warm up allocators and Opacus's hooks
            if device == "cuda":
                torch.cuda.synchronize()
            t0, seen = time.perf_counter(), 0
        xb, yb = next(it)
        opt.zero_grad()
        loss = loss_fn(net(xb), yb)
        loss.backward()
        opt.step()
        seen += len(xb)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    out_ = {"samples_per_second": seen / seconds,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device == "cuda":
        out_["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out_


def _child(queue, *args) -> None:  # noqa: ANN001
    try:
        queue.put(measure(*args))
    except Exception as e:  # reported in the JSON: a mode that does not apply to a model
        queue.put({"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})


def run_isolated(*args) -> dict:  # noqa: ANN002
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, *args))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    import torch
    from tqdm import tqdm

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "training.json")
    args = ap.parse_args()
    import opacus

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    figures: dict[str, float | int | str] = {
        "torch": torch.__version__, "opacus": opacus.__version__,
        "machine": f"{platform.machine()}, {mp.cpu_count()} cores (shared)",
        "threads": args.threads, "steps": args.steps,
        "cuda": (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                 else "not available on this machine: CUDA figures not measured"),
        "mlp_batch": 256, "mixture_batch": 805}
    jobs = [(m, mode, d) for d in devices for m in ("mixture", "mlp") for mode in MODES]
    for model, mode, device in tqdm(jobs, desc="training", unit="run"):
        r = run_isolated(model, mode, device, args.steps, args.threads)
        key = f"{model}_{mode}_{device}"
        if "error" in r:
            figures[f"{key}_error"] = r["error"]
            continue
        for k, v in r.items():
            figures[f"{key}_{k}"] = round(v, 1)
    for device in devices:
        for model in ("mixture", "mlp"):
            base = figures.get(f"{model}_none_{device}_samples_per_second")
            for mode in MODES[1:]:
                rate = figures.get(f"{model}_{mode}_{device}_samples_per_second")
                if isinstance(base, float) and isinstance(rate, float):
                    figures[f"{model}_{mode}_{device}_slowdown"] = round(base / rate, 2)
    for k, v in figures.items():
        print(f"{k:42} {v}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(figures, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
