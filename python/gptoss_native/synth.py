"""Random-weight gpt-oss checkpoints in the exact Hugging Face layout and real shapes.

For tests and benchmarks: the real weights cannot be downloaded everywhere, but their
format and shapes can be reproduced exactly. Tensors are generated and written one
chunk at a time (never the whole model in memory), deterministically from the seed.
Magnitudes are chosen so activations stay finite: bf16 matrices N(0, 0.02), MXFP4
codes uniform with E8M0 scale bytes in 118..122 (|w| <= 6 * 2^-5).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .bf16 import from_float32

__all__ = ["PRESETS", "synth", "preset_config"]

_CHUNK_VALUES = 1 << 24  # values per generated chunk (64 MB of f32)


def _base_config(**over) -> dict:
    layers = over["num_hidden_layers"]
    cfg = {
        "architectures": ["GptOssForCausalLM"],
        "attention_bias": True,
        "attention_dropout": 0.0,
        "eos_token_id": 200002,
        "experts_per_token": over["num_experts_per_tok"],
        "head_dim": 64,
        "hidden_act": "silu",
        "hidden_size": 2880,
        "initial_context_length": 4096,
        "initializer_range": 0.02,
        "intermediate_size": 2880,
        "layer_types": ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)],
        "max_position_embeddings": 131072,
        "model_type": "gpt_oss",
        "num_attention_heads": 64,
        "num_experts_per_tok": 4,
        "num_hidden_layers": layers,
        "num_key_value_heads": 8,
        "num_local_experts": 32,
        "output_router_logits": False,
        "pad_token_id": 199999,
        "quantization_config": {
            "modules_to_not_convert": [
                "model.layers.*.self_attn",
                "model.layers.*.mlp.router",
                "model.embed_tokens",
                "lm_head",
            ],
            "quant_method": "mxfp4",
        },
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "factor": 32.0,
            "original_max_position_embeddings": 4096,
            "rope_type": "yarn",
            "truncate": False,
        },
        "rope_theta": 150000,
        "router_aux_loss_coef": 0.9,
        "sliding_window": 128,
        "swiglu_limit": 7.0,
        "tie_word_embeddings": False,
        "use_cache": True,
        "vocab_size": 201088,
    }
    cfg.update(over)
    return cfg


@dataclass(frozen=True)
class Preset:
    config: dict
    #: bytes per shard file (the real repositories shard at about 4-5 GB)
    shard_bytes: int


PRESETS: dict[str, Preset] = {
    # The real vocabulary with tiny dims: runs anywhere in seconds, uses any o200k_harmony tokenizer.
    "tiny": Preset(
        _base_config(
            num_hidden_layers=2,
            hidden_size=64,
            intermediate_size=64,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            num_local_experts=8,
            num_experts_per_tok=4,
            sliding_window=16,
            max_position_embeddings=131072,
        ),
        shard_bytes=32 << 20,
    ),
    "20b": Preset(_base_config(num_hidden_layers=24, num_local_experts=32, num_experts_per_tok=4), 4_700_000_000),
    "120b": Preset(_base_config(num_hidden_layers=36, num_local_experts=128, num_experts_per_tok=4), 4_700_000_000),
}


def preset_config(preset: str) -> dict:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return json.loads(json.dumps(PRESETS[preset].config))


@dataclass
class _Spec:
    name: str
    dtype: str  # safetensors dtype
    shape: tuple[int, ...]
    kind: str  # "normal", "norm", "codes", "scales", "zeros"
    std: float = 0.02

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * (2 if self.dtype == "BF16" else 1)


def _specs(c: dict, repeating: bool = False) -> list[_Spec]:
    H, I, E = c["hidden_size"], c["intermediate_size"], c["num_local_experts"]
    hd, nh, nkv, V = c["head_dim"], c["num_attention_heads"], c["num_key_value_heads"], c["vocab_size"]
    s = [_Spec("model.embed_tokens.weight", "BF16", (V, H), "normal")]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        s += [
            _Spec(p + "input_layernorm.weight", "BF16", (H,), "norm"),
            _Spec(p + "self_attn.q_proj.weight", "BF16", (nh * hd, H), "normal"),
            _Spec(p + "self_attn.q_proj.bias", "BF16", (nh * hd,), "normal"),
            _Spec(p + "self_attn.k_proj.weight", "BF16", (nkv * hd, H), "normal"),
            _Spec(p + "self_attn.k_proj.bias", "BF16", (nkv * hd,), "normal"),
            _Spec(p + "self_attn.v_proj.weight", "BF16", (nkv * hd, H), "normal"),
            _Spec(p + "self_attn.v_proj.bias", "BF16", (nkv * hd,), "normal"),
            _Spec(p + "self_attn.o_proj.weight", "BF16", (H, nh * hd), "zeros" if repeating else "normal"),
            _Spec(p + "self_attn.o_proj.bias", "BF16", (H,), "zeros" if repeating else "normal"),
            _Spec(p + "self_attn.sinks", "BF16", (nh,), "normal", std=1.0),
            _Spec(p + "post_attention_layernorm.weight", "BF16", (H,), "norm"),
            _Spec(p + "mlp.router.weight", "BF16", (E, H), "normal"),
            _Spec(p + "mlp.router.bias", "BF16", (E,), "normal"),
            _Spec(p + "mlp.experts.gate_up_proj_blocks", "U8", (E, 2 * I, H // 32, 16), "codes"),
            _Spec(p + "mlp.experts.gate_up_proj_scales", "U8", (E, 2 * I, H // 32), "scales"),
            _Spec(p + "mlp.experts.gate_up_proj_bias", "BF16", (E, 2 * I), "normal"),
            _Spec(p + "mlp.experts.down_proj_blocks", "U8", (E, H, I // 32, 16), "codes"),
            _Spec(p + "mlp.experts.down_proj_scales", "U8", (E, H, I // 32), "scales"),
            _Spec(p + "mlp.experts.down_proj_bias", "BF16", (E, H), "normal"),
        ]
    s += [
        _Spec("model.norm.weight", "BF16", (H,), "norm"),
        _Spec("lm_head.weight", "BF16", (V, H), "normal"),
    ]
    return s


def _chunks(spec: _Spec, seed: int) -> Iterator[bytes]:
    """The tensor's bytes, generated chunk by chunk from its own seeded stream."""
    rng = np.random.default_rng([seed, zlib.crc32(spec.name.encode())])
    total = int(np.prod(spec.shape, dtype=np.int64))
    done = 0
    while done < total:
        n = min(_CHUNK_VALUES, total - done)
        if spec.kind == "zeros":
            yield bytes(n * (2 if spec.dtype == "BF16" else 1))
        elif spec.kind == "codes":
            yield rng.bytes(n)
        elif spec.kind == "scales":
            yield rng.integers(118, 123, size=n, dtype=np.uint8).tobytes()
        else:
            v = rng.standard_normal(n, dtype=np.float32)
            v *= np.float32(spec.std if spec.kind == "normal" else 0.05)
            if spec.kind == "norm":
                v += np.float32(1.0)
            yield from_float32(v).astype("<u2").tobytes()
        done += n


def _header(specs: list[_Spec]) -> bytes:
    meta: dict = {"__metadata__": {"format": "pt"}}
    off = 0
    for s in specs:
        meta[s.name] = {"dtype": s.dtype, "shape": list(s.shape), "data_offsets": [off, off + s.nbytes]}
        off += s.nbytes
    h = json.dumps(meta, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)  # keep the data section 8-byte aligned
    return struct.pack("<Q", len(h)) + h


def synth(
    out_dir: str | os.PathLike[str],
    preset: str = "tiny",
    *,
    seed: int = 0,
    tokenizer: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: bool | Callable[[int], None] = True,
    repeating: bool = False,
) -> Path:
    """Write a random-weight checkpoint of `preset` ("tiny", "20b", "120b") to `out_dir`.

    `repeating`: the attention output projections are zero, so each next token depends
    on the current token alone and greedy decoding continues any passage the model
    produced before: a stand-in, at the real shapes and cost, for a real model copying
    a repeated text (prompt-lookup benchmarks).

    `tokenizer`: a tokenizer.json to copy in (its tokenizer_config.json comes along), or
    an `o200k_base.tiktoken` file to build o200k_harmony's tokenizer.json from.
    Returns the folder. Refuses a non-empty folder unless `overwrite`.
    """
    cfg = preset_config(preset)
    out = Path(out_dir).expanduser()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True / --overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    specs = _specs(cfg, repeating)
    # Assign tensors to shards in order, starting a new shard past the size limit.
    shards: list[list[_Spec]] = [[]]
    size = 0
    for s in specs:
        if shards[-1] and size + s.nbytes > PRESETS[preset].shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(s)
        size += s.nbytes
    total = sum(s.nbytes for s in specs)
    names = [f"model-{i:05d}-of-{len(shards) - 1:05d}.safetensors" for i in range(len(shards))]

    bar = None
    if progress is True:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"synth {preset}")
        tick: Callable[[int], None] = bar.update
    elif callable(progress):
        tick = progress
    else:
        tick = lambda n: None  # noqa: E731
    try:
        weight_map = {}
        for name, shard in zip(names, shards):
            tmp = out / (name + ".partial")
            with open(tmp, "wb") as f:
                f.write(_header(shard))
                for s in shard:
                    for chunk in _chunks(s, seed):
                        f.write(chunk)
                        tick(len(chunk))
                    weight_map[s.name] = name
            tmp.replace(out / name)
    finally:
        if bar is not None:
            bar.close()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    gen = {"bos_token_id": 199998, "do_sample": True, "eos_token_id": [200002, 199999, 200012], "pad_token_id": 199999}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    if tokenizer is not None:
        install_tokenizer(tokenizer, out)
    return out


def install_tokenizer(source: str | os.PathLike[str], out: Path) -> None:
    """Copy a tokenizer.json (with its tokenizer_config.json) into `out`, or build one
    from an o200k_base `.tiktoken` file."""
    src = Path(source).expanduser()
    if src.is_dir():
        src = src / "tokenizer.json"
    if not src.is_file():
        raise FileNotFoundError(f"tokenizer {src} does not exist")
    if src.suffix == ".tiktoken":
        from .tokenizer import harmony_tokenizer_json_from_tiktoken

        (out / "tokenizer.json").write_text(harmony_tokenizer_json_from_tiktoken(src))
        return
    shutil.copyfile(src, out / "tokenizer.json")
    cfg = src.with_name("tokenizer_config.json")
    if cfg.is_file():
        shutil.copyfile(cfg, out / "tokenizer_config.json")
