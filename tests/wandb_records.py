"""Read an offline W&B run file (<run>/wandb/offline-run-*/run-*.wandb) without the W&B service.

The file is a LevelDB-style log: a 7-byte header, then 32 KiB blocks of chunks (crc32 u32, length
u16, type u8: 1 full, 2 first, 3 middle, 4 last) holding serialised `wandb_internal_pb2.Record`s.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

from wandb.proto import wandb_internal_pb2

HEADER, BLOCK, CHUNK_HEADER = 7, 32768, 7


def _chunks(raw: bytes) -> Iterator[bytes]:
    position, pending = HEADER, b""
    while position + CHUNK_HEADER <= len(raw):
        left_in_block = BLOCK - position % BLOCK
        if left_in_block < CHUNK_HEADER:
            position += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", raw[position : position + CHUNK_HEADER])
        data = raw[position + CHUNK_HEADER : position + CHUNK_HEADER + length]
        position += CHUNK_HEADER + length
        if kind == 1:
            yield data
        elif kind == 2:
            pending = data
        elif kind == 3:
            pending += data
        elif kind == 4:
            yield pending + data


def summary_config_group(run_file: Path) -> tuple[dict, dict, str]:
    """The run's final summary {key: value}, its config {key: value} and its W&B group."""
    summary, config, group = {}, {}, ""
    for data in _chunks(run_file.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            group = record.run.run_group
        elif kind == "summary":
            for item in record.summary.update:
                key = item.key or "/".join(item.nested_key)
                summary[key] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return summary, config, group
