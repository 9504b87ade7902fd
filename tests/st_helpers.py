"""Reading and writing raw safetensors files in tests (any dtype, bf16 included)."""

from __future__ import annotations

import json
import struct
from pathlib import Path


def read_raw(path: Path) -> dict[str, tuple[str, list[int], bytes]]:
    data = Path(path).read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        a, b = e["data_offsets"]
        out[name] = (e["dtype"], e["shape"], data[8 + n + a : 8 + n + b])
    return out


def write_raw(path: Path, tensors: dict[str, tuple[str, list[int], bytes]], header_override: dict | None = None) -> None:
    header: dict = {"__metadata__": {"format": "pt"}}
    off = 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        off += len(raw)
    if header_override:
        for k, v in header_override.items():
            header[k] = v
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(h)) + h + b"".join(t[2] for t in tensors.values()))
