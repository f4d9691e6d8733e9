"""Training throughput (utterances/s) of CMATH against the symmetric SDT-style fusion, in one process.

    python bench/erc_throughput.py [--steps 30] [--threads 1] [--hidden 256] [--out FILE]

IEMOCAP-sized synthetic data: dialogues of 20-110 utterances (IEMOCAP: 7,433 utterances in 151
dialogues, up to 110), batch 16 dialogues, three modalities with IEMOCAP's SDT feature sizes (text
1024, audio 1582, visual 342). Steps of the two arms are interleaved one by one on the same batches
and each is timed; the median utterances/s per arm and the CMATH / symmetric ratio are printed
(and written as JSON with --out). CMATH's asymmetric attention has 2 cross-modal blocks where the
symmetric model has 6, but CMATH adds reconstruction decoders, a variational head and distillation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.conversations import collate_dialogues, synthetic_corpus  # noqa: E402
from models.erc.losses import weighted_total  # noqa: E402
from models.erc.network import CMATH  # noqa: E402

DIMS = {"text": 1024, "audio": 1582, "visual": 342}


def arm(hidden: int, **switches) -> tuple[CMATH, torch.optim.Optimizer]:
    torch.manual_seed(0)
    net = CMATH(DIMS, num_classes=6, num_speakers=2, hidden=hidden, heads=4, **switches).train()
    return net, torch.optim.AdamW(net.parameters(), lr=1e-4)


def step(net: CMATH, optimizer: torch.optim.Optimizer, batch: dict) -> float:
    start = time.perf_counter()
    terms = net.loss_terms(net(batch["features"], batch["mask"], batch["speakers"]), batch["labels"], batch["mask"])
    optimizer.zero_grad()
    weighted_total(terms, net.loss_weights).backward()
    optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    corpus = synthetic_corpus(num_dialogues=(16 * 4, 1, 1), length=(20, 110), dims=DIMS, num_classes=6, seed=0)
    batches = [collate_dialogues(corpus.splits["train"][i : i + 16]) for i in range(0, 64, 16)]
    arms = {"cmath": arm(args.hidden), "symmetric": arm(args.hidden, symmetric=True, reconstruction=False, variational=False)}
    rates: dict[str, list[float]] = {name: [] for name in arms}
    for i in range(args.steps + 2):
        batch = batches[i % len(batches)]
        for name, (net, optimizer) in arms.items():
            seconds = step(net, optimizer, batch)
            if i >= 2:  # warm-up steps are not timed
                rates[name].append(int(batch["mask"].sum()) / seconds)
    result = {name: statistics.median(values) for name, values in rates.items()}
    result["ratio_cmath_over_symmetric"] = result["cmath"] / result["symmetric"]
    result.update(steps=args.steps, threads=args.threads, hidden=args.hidden)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
