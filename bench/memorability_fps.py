"""Crop pipeline frames/s against decode-only frames/s on the same clip, and ResMem frames/s, in one process.

    python bench/memorability_fps.py [--clip PATH] [--saliency spectral_residual] [--repeats 21]
                                     [--resmem-frames 8] [--threads N] [--out FILE]

Decode-only = OpenCV reading every frame. Pipeline = decode + saliency on every frame + one crop's
boxes + cutting and resizing every frame (writing the video is left out: its codec cost is not the
cropping's). Arms alternate, `--repeats` times each, and the medians are compared (target: pipeline
>= 0.5 x decode with spectral residual at 640x272). ResMem: batches of 227x227 frames on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.videos import iter_frames  # noqa: E402
from models.memorability.cropping import DynamicPositionCropper, DynamicSizeCropper, FixedCropper, apply_crop  # noqa: E402
from models.memorability.saliency import FineGrainedSaliency, MotionSaliency, SpectralResidualSaliency  # noqa: E402

SALIENCY = {"spectral_residual": SpectralResidualSaliency, "fine_grained": FineGrainedSaliency, "motion": MotionSaliency}
CROPPERS = {"fixed": FixedCropper, "dynamic_position": DynamicPositionCropper, "dynamic_size": DynamicSizeCropper}


def decode_only(clip: Path) -> tuple[int, float]:
    start = time.perf_counter()
    count = sum(1 for _ in iter_frames(clip))
    return count, time.perf_counter() - start


def pipeline(clip: Path, saliency_name: str, crop_name: str) -> tuple[int, float]:
    """Decode, saliency per frame, boxes, crop + resize every frame."""
    start = time.perf_counter()
    saliency, cropper = SALIENCY[saliency_name](), CROPPERS[crop_name](0.75)
    saliency.reset()
    frames, maps = [], []
    for _, frame in iter_frames(clip):
        frames.append(frame)
        maps.append(saliency(frame))
    height, width = frames[0].shape[:2]
    boxes = cropper.boxes(np.stack(maps), width, height)
    size = cropper.output_size(width, height)
    for frame, box in zip(frames, boxes):
        apply_crop(frame, box, size)
    return len(frames), time.perf_counter() - start


def resmem_fps(frames: int, batch: int = 8) -> dict[str, float]:
    import torch

    from models.memorability.predictors import ResMemPredictor

    predictor = ResMemPredictor(batch_size=batch)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (272, 640, 3), dtype=np.uint8) for _ in range(frames)]
    predictor.predict(images[:1])  # warm-up
    start = time.perf_counter()
    predictor.predict(images)
    seconds = time.perf_counter() - start
    return {
        "frames": frames,
        "batch_size": batch,
        "seconds": seconds,
        "frames_per_s": frames / seconds,
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_clip = (
        Path(os.environ.get("FIVEFOLD_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
        / "video/clips/bikes.mp4"
    )
    parser.add_argument("--clip", type=Path, default=default_clip)
    parser.add_argument("--saliency", default="spectral_residual", choices=sorted(SALIENCY))
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--resmem-frames", type=int, default=8, help="0 skips the ResMem measurement")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        import cv2
        import torch

        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)

    decode_times, crop_times = [], {name: [] for name in CROPPERS}
    frames = 0
    for _ in range(args.repeats):  # interleaved, so load changes hit every arm alike
        frames, seconds = decode_only(args.clip)
        decode_times.append(seconds)
        for name in CROPPERS:
            crop_times[name].append(pipeline(args.clip, args.saliency, name)[1])
    decode_fps = frames / statistics.median(decode_times)
    result = {
        "clip": str(args.clip),
        "frames": frames,
        "saliency": args.saliency,
        "repeats": args.repeats,
        "decode_fps": decode_fps,
        "pipeline": {},
    }
    print(f"{args.clip.name}: {frames} frames, decode-only {decode_fps:.1f} frames/s (median of {args.repeats})")
    for name, times in crop_times.items():
        fps = frames / statistics.median(times)
        result["pipeline"][name] = {"fps": fps, "ratio_to_decode": fps / decode_fps}
        print(f"  crop {name:17s} {fps:7.1f} frames/s  = {fps / decode_fps:.2f} x decode (target >= 0.5)")
    if args.resmem_frames > 0:
        result["resmem"] = resmem_fps(args.resmem_frames)
        print(
            f"ResMem on CPU: {result['resmem']['frames_per_s']:.2f} frames/s "
            f"({args.resmem_frames} frames, batch {result['resmem']['batch_size']}, {result['resmem']['torch_threads']} threads)"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
