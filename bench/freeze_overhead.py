"""Freeze-SGD's per-step overhead against plain (Fluid) training, measured in one process.

    python bench/freeze_overhead.py [--batch-sizes 32 256] [--steps 1000] [--threads N] [--out FILE]

Both arms train the same SmallCNN (conv16-conv32-fc128, Fashion-MNIST sized inputs) with Adam on
the same random batches; the Freeze arm projects onto a sign template after every step. Steps of
the two arms are interleaved one by one and each is timed; the ratio of the arms' median step times
is printed (target <= 1.10) and written as JSON when --out is given.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.polarity.freeze_sgd import SignConstraint  # noqa: E402
from models.polarity.networks import SmallCNN  # noqa: E402
from models.polarity.sign_templates import align_to_template, random_template  # noqa: E402


def make_arm(freeze: bool, reset: str) -> tuple[SmallCNN, torch.optim.Optimizer]:
    torch.manual_seed(0)
    net = SmallCNN(in_channels=1, num_classes=10, image_size=28)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    if freeze:
        template = random_template(net)
        align_to_template(net, template)
        SignConstraint(template, reset=reset, seed=0).attach(optimizer, net)
    return net, optimizer


def one_step(net: SmallCNN, optimizer: torch.optim.Optimizer, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Seconds for one training step (forward, backward, optimiser step and, for Freeze, projection)."""
    x, y = batch
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(net(x), y).backward()
    optimizer.step()
    return time.perf_counter() - start


def measure(batch_size: int, steps: int, reset: str) -> dict[str, float]:
    """Median step time of each arm, the arms interleaved step by step (alternating which goes first),
    so a slow spell of the machine hits both; medians ignore the spikes a shared machine produces."""
    generator = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(batch_size, 1, 28, 28, generator=generator), torch.randint(0, 10, (batch_size,), generator=generator))
        for _ in range(16)
    ]
    fluid, freeze = make_arm(False, reset), make_arm(True, reset)
    times: dict[str, list[float]] = {"fluid": [], "freeze": []}
    for step in range(steps + 20):
        order = [("fluid", fluid), ("freeze", freeze)]
        for name, arm in order if step % 2 == 0 else order[::-1]:
            elapsed = one_step(*arm, batches[step % len(batches)])
            if step >= 20:  # warm-up
                times[name].append(elapsed)
    fluid_ms, freeze_ms = (statistics.median(times[k]) * 1e3 for k in ("fluid", "freeze"))
    fluid_q, freeze_q = (statistics.quantiles(times[k], n=4) for k in ("fluid", "freeze"))
    return {
        "fluid_step_ms": fluid_ms,
        "freeze_step_ms": freeze_ms,
        "ratio": freeze_ms / fluid_ms,
        "fluid_step_ms_iqr": [q * 1e3 for q in (fluid_q[0], fluid_q[2])],
        "freeze_step_ms_iqr": [q * 1e3 for q in (freeze_q[0], freeze_q[2])],
        "steps": steps,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--steps", type=int, default=1000, help="timed steps per arm")
    parser.add_argument("--reset", default="posRand")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    print(f"Freeze-SGD ({args.reset}) vs Fluid, SmallCNN, Adam, {torch.get_num_threads()} threads")
    print("| batch | Fluid ms/step, median [IQR] | Freeze ms/step, median [IQR] | Freeze / Fluid |\n|---|---|---|---|")
    for batch_size in args.batch_sizes:
        row = measure(batch_size, args.steps if batch_size <= 64 else max(100, args.steps // 8), args.reset)
        results[f"batch{batch_size}"] = row
        fluid_iqr, freeze_iqr = row["fluid_step_ms_iqr"], row["freeze_step_ms_iqr"]
        print(
            f"| {batch_size} | {row['fluid_step_ms']:.3f} [{fluid_iqr[0]:.3f}, {fluid_iqr[1]:.3f}] | "
            f"{row['freeze_step_ms']:.3f} [{freeze_iqr[0]:.3f}, {freeze_iqr[1]:.3f}] | {row['ratio']:.3f} |"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
