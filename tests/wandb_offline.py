"""Read back what an offline W&B run wrote, so tests assert on the logged data itself, not on "no exception".

wandb ≥ 0.19 has no Python reader of its own (the old `wandb.sdk.internal.datastore` went with the Python
backend) and `wandb.Api` needs the server. An offline run's `run-<id>.wandb` file is a LevelDB-style log: a
7-byte header (`:W&B`, magic 0xBEE1, version), then 32 KiB blocks of chunks — crc32 (of the chunk type byte,
then the data), uint16 length, uint8 type (FULL, FIRST, MIDDLE, LAST) — whose payloads are serialized
`wandb_internal_pb2.Record` protobufs. Tables are written beside it under files/, referenced from the summary.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

_HEADER = struct.Struct("<4sHB")
_CHUNK = struct.Struct("<IHB")
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[pb.Record]:
    data = path.read_bytes()
    if len(data) < _HEADER.size:
        return
    ident, magic, _version = _HEADER.unpack_from(data)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path}: not a W&B transaction log")
    position, payload = _HEADER.size, b""
    while position < len(data):
        left = _BLOCK - position % _BLOCK
        if left < _CHUNK.size:  # a block's tail too short for a chunk header is padding
            position += left
            continue
        if position + _CHUNK.size > len(data):  # a chunk header still being flushed
            return
        checksum, length, kind = _CHUNK.unpack_from(data, position)
        if kind == 0 and length == 0:  # zero padding up to the end of the block
            position += left
            continue
        if position + _CHUNK.size + length > len(data):  # a chunk still being flushed
            return
        chunk = data[position + _CHUNK.size:position + _CHUNK.size + length]
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != checksum:
            raise ValueError(f"{path}: bad checksum at byte {position}")
        position += _CHUNK.size + length
        payload = chunk if kind in (_FULL, _FIRST) else payload + chunk
        if kind in (_FULL, _LAST):
            record = pb.Record()
            record.ParseFromString(payload)
            yield record


def _path(item: Any) -> list[str]:
    return list(item.nested_key) if item.nested_key else [item.key]


def _set(tree: dict[str, Any], path: list[str], value: Any) -> None:
    for label in path[:-1]:
        tree = tree.setdefault(label, {})
    tree[path[-1]] = value


@dataclass
class OfflineRun:
    folder: Path
    run: pb.RunRecord | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # one dict per logged step, keys as logged
    summary: dict[str, Any] = field(default_factory=dict)  # the final summary, nested as W&B stores it
    metrics: dict[str, pb.MetricRecord] = field(default_factory=dict)  # define_metric, by metric name
    artifacts: list[pb.ArtifactRecord] = field(default_factory=list)
    exit_code: int | None = None

    @property
    def run_id(self) -> str:
        assert self.run is not None
        return self.run.run_id

    def table(self, key: str) -> list[dict[str, Any]]:
        """A logged wandb.Table (from the summary's last reference to it) as a list of row dicts."""
        reference = self.summary[key]
        content = json.loads((self.folder / "files" / reference["path"]).read_text())
        return [dict(zip(content["columns"], row)) for row in content["data"]]

    def artifact_files(self, name: str) -> set[str]:
        (artifact,) = (a for a in self.artifacts if a.name == name)
        return {entry.path for entry in artifact.manifest.contents}


def _finished_log(folder: Path, timeout_s: float) -> list[pb.Record]:
    """The run's records once its exit record is on disk: wandb-core writes the log from its own process and
    `run.finish()` can return before the last buffered block is flushed."""
    deadline = time.monotonic() + timeout_s
    while True:
        logs = list(folder.glob("run-*.wandb"))
        found = list(records(logs[0])) if len(logs) == 1 else []
        if any(record.WhichOneof("record_type") == "exit" for record in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def read_run(folder: Path, timeout_s: float = 30.0) -> OfflineRun:
    run = OfflineRun(folder)
    for record in _finished_log(folder, timeout_s):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run = record.run
        elif kind == "history":
            run.history.append({"/".join(_path(item)): json.loads(item.value_json) for item in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                _set(run.summary, _path(item), json.loads(item.value_json))
        elif kind == "metric":
            run.metrics[record.metric.name or record.metric.glob_name] = record.metric
        elif kind == "artifact":
            run.artifacts.append(record.artifact)
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run


def read_runs(wandb_dir: Path) -> list[OfflineRun]:
    """Every offline run under a `wandb/` folder, oldest first (a re-run adds a folder, resuming the same id)."""
    return [read_run(folder) for folder in sorted(wandb_dir.glob("offline-run-*"))]
