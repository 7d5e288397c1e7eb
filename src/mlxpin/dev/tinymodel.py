"""Generate a tiny random-weight model directory that `mlx_lm` can load, offline.

Why: tests, demos and benchmarks need a *real* model directory for `mlx_lm.load` and
`mlx_lm.server` (a real server on the Linux CPU), but nothing may come from the Hub.
`generate(out_dir)` writes, in well under a second, a ~300 KB llama or qwen2 checkpoint:

    config.json              hidden 64, 2 layers, 4 heads, vocab = the tokenizer's (512), bf16
    generation_config.json   eos = <|im_end|> and <|endoftext|>
    model.safetensors        bf16 weights drawn from numpy's ``default_rng(seed)``
    special_tokens_map.json
    tokenizer.json           a byte-level BPE (NFC, Qwen2's pre-tokenizer split) trained
                             in-process on a fixed built-in corpus, with the ChatML special
                             tokens <|endoftext|> <|im_start|> <|im_end|> (ids 0, 1, 2)
    tokenizer_config.json    ChatML ``chat_template``, ``tokenizer_class`` PreTrainedTokenizerFast

Reproducible: the same arguments give byte-identical files, in any process. The safetensors
file is serialised here (sorted keys, padded JSON header, bf16 by round-to-nearest-even), not
by a library, and every JSON file is written with sorted keys, indent 2 and a final newline.
The BPE trainer of `tokenizers` is deterministic on its own (checked across processes, hash
seeds and thread counts); only its vocabulary and merges are kept, and `tokenizer.json` is
rebuilt from them in a fixed layout, so its bytes do not follow the library's field order.

Readable output: the weights are random, except that the (untied) ``lm_head`` maps each
whole-word token of the corpus to the next one of a seeded cycle through those words. Greedy
decoding thus produces a deterministic stream of words ("per message the an you ...") that
never hits an end-of-sequence token, instead of one token repeated. Plumbing, not prose.

Usage: ``python -m mlxpin.dev.tinymodel OUT_DIR [--kind KIND] [--arch llama|qwen2]
[--seed N] [--sharded]``, KIND one of chat, vision, embedding, rerank, transcription,
adapter; the kinds for mlx-vlm -- vision (Qwen2-VL), embedding and rerank (Qwen3),
transcription (Parakeet-CTC) -- and the LoRA adapter for the llama chat model (for
`mlx_lm fuse`) live in `tinymodel_<kind>` and reuse the writers here.
numpy and tokenizers are imported lazily: importing this module is cheap.
"""

from __future__ import annotations

import functools
import json
import re
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, get_args

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

Arch = Literal["llama", "qwen2"]
ARCHS: Final[tuple[str, ...]] = get_args(Arch)
Kind = Literal[
    "chat", "vision", "embedding", "rerank", "transcription", "adapter"
]  # the others: tinymodel_<kind>
KINDS: Final[tuple[str, ...]] = get_args(Kind)

HIDDEN_SIZE: Final = 64
NUM_LAYERS: Final = 2
NUM_HEADS: Final = 4
NUM_KV_HEADS: Final = 4  # plain multi-head: shards over 1, 2 or 4 ranks
INTERMEDIATE_SIZE: Final = 128
MAX_POSITIONS: Final = 2048
VOCAB_SIZE: Final = 512

ENDOFTEXT: Final = "<|endoftext|>"
IM_START: Final = "<|im_start|>"
IM_END: Final = "<|im_end|>"
SPECIAL_TOKENS: Final = (ENDOFTEXT, IM_START, IM_END)  # ids 0, 1, 2

CHAT_TEMPLATE: Final = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_INIT_STD: Final = 0.02  # attention, MLP, biases and the unused lm_head rows
_LM_HEAD_SCALE: Final = 0.25  # the chosen next token gets a logit of about 16

# The tokenizer's training text. Changing one character changes tokenizer.json (and the
# vocabulary the weights index), so treat it as frozen.
_CORPUS: Final = """\
The server loads one model and answers chat completion requests over HTTP.
A client sends a list of messages; each message has a role and some content.
The system message sets the rules, the user asks a question, and the assistant answers.
We pin every model to an exact revision, write a lock file, and verify each file by its hash.
When the network is down the launcher still starts, because all weights are already on disk.
A small model with random weights is enough to test the plumbing: the tokens are nonsense,
but the server starts, streams tokens, stops at the token limit, and shuts down cleanly.
Please write a short poem about the sea, the wind, the rain and the mountains.
What is the capital of France? Paris is the capital and the largest city of France.
How many tokens per second does the machine produce with a batch of four prompts?
The quick brown fox jumps over the lazy dog while the cat sleeps near the window.
Numbers and dates: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024-05-17 12:30 3.14159 1e-5 0x1f.
Code looks like this: def main(argv): return 0 if argv else 1; print("hello, world")
{"model": "default_model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
Errors happen: the port is in use, the disk is full, the lock is stale, the hash differs.
Retry later, or read the hint that explains the next step and the exact command to run.
Accents and scripts: café, naïve, über, façade, jalapeño, Ærø, smørrebrød, Ελληνικά,
Русский текст, 日本語のテキスト, 中文文本, 한국어, हिन्दी, العربية, emoji 🙂 🚀 ✓ — “quotes”.
Good morning! Good evening. Thank you very much; you are welcome. Yes, no, maybe, perhaps.
Tensor parallel inference splits every layer across ranks; pipeline parallel splits layers.
Memory, latency, throughput, quantization, attention, embedding, vocabulary, temperature.
"""

# Qwen2's pre-tokenizer split (a GPT-4 style regex), which transformers' Qwen2Tokenizer
# imposes on any qwen2 checkpoint: using it for both archs keeps `tokenizers`, the llama load
# and the qwen2 load of tokenizer.json in agreement.
PRETOKENIZE_REGEX: Final = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def generate(
    out_dir: Path, *, arch: Arch = "llama", seed: int = 0, sharded: bool = False
) -> tuple[Path, ...]:
    """Write the tiny model into ``out_dir`` (created if needed); return the paths, sorted.

    With ``sharded``, the weights are split the way large checkpoints are: one
    ``model-0000K-of-0000N.safetensors`` per layer plus one for the embeddings, final norm
    and head, and a ``model.safetensors.index.json`` weight map (mlx_lm's pipeline mode
    needs it to give each rank only its layers' files). The tensors are the same.

    Only the files listed in the module docstring are (over)written, each atomically
    (`mlxpin.util.atomic.write_atomic`: a full disk raises `DiskError`).
    """
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, not {arch!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, not {seed}")
    tokenizer = tokenizer_json()
    vocab: dict[str, int] = tokenizer["model"]["vocab"]
    config = chat_config(arch, len(vocab))
    weights = chat_weights(arch, vocab, seed)
    files: dict[str, bytes] = {
        "config.json": json_bytes(config),
        "generation_config.json": json_bytes(generation_config()),
        **(shards(weights) if sharded else {"model.safetensors": safetensors_bytes(weights)}),
        "special_tokens_map.json": json_bytes(special_tokens_map()),
        "tokenizer.json": json_bytes(tokenizer),
        "tokenizer_config.json": json_bytes(tokenizer_config()),
    }
    return write_files(out_dir, files)


def write_files(out_dir: Path, files: Mapping[str, bytes]) -> tuple[Path, ...]:
    """Write each file (a relative path) atomically under ``out_dir``; return them, sorted."""
    from mlxpin.util.atomic import write_atomic

    out_dir = Path(out_dir)
    for name, data in files.items():
        (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out_dir / name, data)
    return tuple(sorted(out_dir / name for name in files))


# --- tokenizer ---------------------------------------------------------------------------


def added_token(token: str, token_id: int) -> dict[str, Any]:
    """A special token as `tokenizer.json` lists it."""
    return {
        "id": token_id,
        "content": token,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": True,
    }


def tokenizer_json(extra_corpus: str = "") -> dict[str, Any]:
    """Train the byte-level BPE on the corpus (plus ``extra_corpus``, for a kind that needs
    more whole-word tokens); return tokenizer.json in a fixed layout."""
    from tokenizers import Tokenizer, pre_tokenizers, trainers

    tokenizer = Tokenizer.from_str(json.dumps(tokenizer_document({}, [])))
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        show_progress=False,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(
        (_CORPUS + extra_corpus).splitlines(keepends=True), trainer=trainer
    )
    trained = json.loads(tokenizer.to_str())["model"]
    vocab = {str(token): int(i) for token, i in trained["vocab"].items()}
    if sorted(vocab.values()) != list(range(VOCAB_SIZE)):
        raise RuntimeError(f"BPE training gave {len(vocab)} tokens, expected {VOCAB_SIZE}")
    # Older `tokenizers` write a merge as "a b", newer ones as ["a", "b"]; byte-level
    # tokens never contain a space, so both read back the same.
    merges = [
        m.split(" ") if isinstance(m, str) else [str(x) for x in m] for m in trained["merges"]
    ]
    return tokenizer_document(vocab, merges)


def tokenizer_document(vocab: dict[str, int], merges: list[list[str]]) -> dict[str, Any]:
    """tokenizer.json: NFC, Qwen2 split + byte-level BPE, the special tokens if in ``vocab``."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            added_token(token, vocab[token]) for token in SPECIAL_TOKENS if token in vocab
        ],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": PRETOKENIZE_REGEX},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {**byte_level, "use_regex": False},
            ],
        },
        "post_processor": {**byte_level, "trim_offsets": False, "use_regex": False},
        "decoder": {**byte_level, "use_regex": False},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges,
        },
    }


def special_tokens_map() -> dict[str, Any]:
    return {
        "additional_special_tokens": [IM_START, IM_END],
        "bos_token": ENDOFTEXT,
        "eos_token": IM_END,
        "pad_token": ENDOFTEXT,
    }


def tokenizer_config() -> dict[str, Any]:
    return {
        **special_tokens_map(),
        "added_tokens_decoder": {
            str(i): {
                "content": token,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for i, token in enumerate(SPECIAL_TOKENS)
        },
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MAX_POSITIONS,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


# --- config ------------------------------------------------------------------------------


def chat_config(arch: Arch, vocab_size: int) -> dict[str, Any]:
    common: dict[str, Any] = {
        "attention_dropout": 0.0,
        "bos_token_id": SPECIAL_TOKENS.index(ENDOFTEXT),
        "dtype": "bfloat16",
        "eos_token_id": SPECIAL_TOKENS.index(IM_END),
        "hidden_act": "silu",
        "hidden_size": HIDDEN_SIZE,
        "initializer_range": _INIT_STD,
        "intermediate_size": INTERMEDIATE_SIZE,
        "max_position_embeddings": MAX_POSITIONS,
        "model_type": arch,
        "num_attention_heads": NUM_HEADS,
        "num_hidden_layers": NUM_LAYERS,
        "num_key_value_heads": NUM_KV_HEADS,
        # Untied on purpose: lm_head carries the next-word map (see the module docstring).
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": vocab_size,
    }
    if arch == "llama":
        return {
            **common,
            "architectures": ["LlamaForCausalLM"],
            "attention_bias": False,
            "head_dim": HIDDEN_SIZE // NUM_HEADS,
            "mlp_bias": False,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
        }
    return {
        **common,
        "architectures": ["Qwen2ForCausalLM"],
        "max_window_layers": NUM_LAYERS,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "sliding_window": MAX_POSITIONS,
        "use_sliding_window": False,
    }


def generation_config() -> dict[str, Any]:
    return {
        "bos_token_id": SPECIAL_TOKENS.index(ENDOFTEXT),
        "eos_token_id": [SPECIAL_TOKENS.index(IM_END), SPECIAL_TOKENS.index(ENDOFTEXT)],
        "pad_token_id": SPECIAL_TOKENS.index(ENDOFTEXT),
    }


# --- weights -----------------------------------------------------------------------------


def chat_weights(arch: Arch, vocab: Mapping[str, int], seed: int) -> dict[str, npt.NDArray[Any]]:
    """float32 tensors by name, drawn in sorted-name order from ``default_rng(seed)``."""
    import numpy as np

    h, inter, vocab_size = HIDDEN_SIZE, INTERMEDIATE_SIZE, len(vocab)
    kv = NUM_KV_HEADS * (HIDDEN_SIZE // NUM_HEADS)
    shapes: dict[str, tuple[int, ...]] = {
        "lm_head.weight": (vocab_size, h),
        "model.embed_tokens.weight": (vocab_size, h),
        "model.norm.weight": (h,),
    }
    for i in range(NUM_LAYERS):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (h, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (inter, h),
            p + "mlp.up_proj.weight": (inter, h),
            p + "mlp.down_proj.weight": (h, inter),
        }
        if arch == "qwen2":
            shapes |= {
                p + "self_attn.q_proj.bias": (h,),
                p + "self_attn.k_proj.bias": (kv,),
                p + "self_attn.v_proj.bias": (kv,),
            }

    rng = np.random.default_rng(seed)
    tensors = random_tensors(shapes, rng, ones=lambda name: name.endswith("norm.weight"))

    # With small layer weights the final hidden state is close to the last token's embedding,
    # so lm_head row `nxt` = that of its predecessor makes greedy decoding walk the cycle.
    embed, lm_head = tensors["model.embed_tokens.weight"], tensors["lm_head.weight"]
    cycle = _word_cycle(vocab, rng)
    for prev, nxt in zip(cycle, cycle[1:] + cycle[:1], strict=True):
        lm_head[nxt] = embed[prev] * np.float32(_LM_HEAD_SCALE)
    return tensors


def random_tensors(
    shapes: Mapping[str, tuple[int, ...]],
    rng: np.random.Generator,
    *,
    ones: Callable[[str], bool],
    unit: str = "model.embed_tokens.weight",
) -> dict[str, npt.NDArray[Any]]:
    """float32 tensors drawn in sorted-name order: ``ones(name)`` ones (norm scales, no draw),
    ``unit`` (the embeddings) N(0, 1), everything else N(0, 0.02)."""
    import numpy as np

    tensors: dict[str, npt.NDArray[Any]] = {}
    for name in sorted(shapes):
        shape = shapes[name]
        if ones(name):
            tensors[name] = np.ones(shape, dtype=np.float32)
        else:
            std = 1.0 if name == unit else _INIT_STD
            tensors[name] = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
    return tensors


def _word_cycle(vocab: Mapping[str, int], rng: np.random.Generator) -> list[int]:
    """Ids of the tokens that are a whole corpus word with its leading space, in seeded order."""
    words = set(re.findall(r"\b[a-z]{2,}\b", _CORPUS))
    ids = sorted(i for token, i in vocab.items() if token[:1] == "Ġ" and token[1:] in words)
    return [ids[k] for k in rng.permutation(len(ids))]


def _bf16(array: npt.NDArray[Any]) -> bytes:
    """float32 → bfloat16 little-endian bytes: the upper 16 bits, rounded to nearest even."""
    import numpy as np

    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype("<u2").tobytes()


def safetensors_bytes(
    tensors: Mapping[str, npt.NDArray[Any]], *, dtype: Literal["BF16", "F32"] = "BF16"
) -> bytes:
    """The safetensors format: u64-le header length, JSON header (8-byte padded), raw data."""
    import numpy as np

    header: dict[str, Any] = {"__metadata__": {"format": "mlx"}}
    chunks: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        array = tensors[name]
        data = _bf16(array) if dtype == "BF16" else np.ascontiguousarray(array, "<f4").tobytes()
        header[name] = {
            "dtype": dtype,
            "shape": list(tensors[name].shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def shards(tensors: Mapping[str, npt.NDArray[Any]]) -> dict[str, bytes]:
    """One safetensors file per layer, one for everything else, and the index."""
    count = NUM_LAYERS + 1

    def file_of(name: str) -> str:
        match = re.search(r"model\.layers\.(\d+)\.", name)
        number = int(match.group(1)) + 1 if match else count
        return f"model-{number:05d}-of-{count:05d}.safetensors"

    groups: dict[str, dict[str, npt.NDArray[Any]]] = {}
    for name in sorted(tensors):
        groups.setdefault(file_of(name), {})[name] = tensors[name]
    out = {file: safetensors_bytes(group) for file, group in sorted(groups.items())}
    index = {
        "metadata": {"total_size": sum(t.size * 2 for t in tensors.values())},
        "weight_map": {name: file_of(name) for name in sorted(tensors)},
    }
    return {**out, "model.safetensors.index.json": json_bytes(index)}


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


# --- command line ------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m mlxpin.dev.tinymodel",
        description="Write a tiny random-weight model, offline and reproducibly: chat (for "
        "mlx_lm); for mlx-vlm vision (a Qwen2-VL), embedding or rerank (a Qwen3), "
        "transcription (a Parakeet-CTC, through mlx-audio); a LoRA adapter for the llama "
        "chat model (mlx_lm fuse).",
    )
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    parser.add_argument("--kind", choices=KINDS, default="chat")
    parser.add_argument("--arch", choices=ARCHS, help="chat only (default: llama)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sharded", action="store_true", help="one weight file per layer")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    if args.arch is not None and args.kind != "chat":
        parser.error("--arch applies to --kind chat only")
    if args.sharded and args.kind in ("transcription", "adapter"):
        parser.error(f"--sharded does not apply to --kind {args.kind}")
    if args.kind == "adapter":
        from mlxpin.dev.tinymodel_adapter import generate as generate_adapter

        paths = generate_adapter(args.out_dir, seed=args.seed)
    else:
        if args.kind == "vision":
            from mlxpin.dev.tinymodel_vision import generate as generate_kind
        elif args.kind == "embedding":
            from mlxpin.dev.tinymodel_embedding import generate as generate_kind
        elif args.kind == "rerank":
            from mlxpin.dev.tinymodel_rerank import generate as generate_kind
        elif args.kind == "transcription":
            from mlxpin.dev.tinymodel_transcription import generate as generate_kind
        else:
            generate_kind = functools.partial(generate, arch=args.arch or "llama")
        paths = generate_kind(args.out_dir, seed=args.seed, sharded=args.sharded)
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
