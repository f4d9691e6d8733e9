"""Freeze-SGD's per-step overhead against plain (Fluid) training, measured in one process.

    python bench/freeze_overhead.py [--batch-sizes 32 256] [--steps 200] [--repeats 5] [--out FILE]

Both arms train the same SmallCNN (conv16-conv32-fc128, Fashion-MNIST sized inputs) with Adam on
the same random batches; the Freeze arm projects onto a sign template after every step. The arms
alternate within each repeat so machine noise hits both; the ratio of their median step times is
printed (target <= 1.10) and written as JSON when --out is given.
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


def time_steps(net: SmallCNN, optimizer: torch.optim.Optimizer, batches: list, steps: int) -> float:
    """Seconds per training step (forward, backward, optimiser step and, for Freeze, projection)."""
    start = time.perf_counter()
    for i in range(steps):
        x, y = batches[i % len(batches)]
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def measure(batch_size: int, steps: int, repeats: int, reset: str) -> dict[str, float]:
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(batch_size, 1, 28, 28, generator=generator), torch.randint(0, 10, (batch_size,), generator=generator))
               for _ in range(16)]
    fluid, freeze = make_arm(False, reset), make_arm(True, reset)
    time_steps(*fluid, batches, 20), time_steps(*freeze, batches, 20)  # warm-up
    fluid_times, freeze_times = [], []
    for _ in range(repeats):
        fluid_times.append(time_steps(*fluid, batches, steps))
        freeze_times.append(time_steps(*freeze, batches, steps))
    fluid_ms, freeze_ms = statistics.median(fluid_times) * 1e3, statistics.median(freeze_times) * 1e3
    return {"fluid_step_ms": fluid_ms, "freeze_step_ms": freeze_ms, "ratio": freeze_ms / fluid_ms}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reset", default="posRand")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    print(f"Freeze-SGD ({args.reset}) vs Fluid, SmallCNN, Adam, {torch.get_num_threads()} threads")
    print("| batch | Fluid ms/step | Freeze ms/step | ratio |\n|---|---|---|---|")
    for batch_size in args.batch_sizes:
        row = measure(batch_size, args.steps, args.repeats, args.reset)
        results[f"batch{batch_size}"] = row
        print(f"| {batch_size} | {row['fluid_step_ms']:.3f} | {row['freeze_step_ms']:.3f} | {row['ratio']:.3f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
