"""A tiny random-weight Qwen2-VL that `mlx_vlm` loads and serves (chat with images), offline.

The language half is the chat kind's qwen2 model (`tinymodel.chat_weights`: same tokenizer,
same readable word cycle) with four vision tokens appended to its vocabulary; the vision
tower (2 blocks, width 32, 14-pixel patches, 2x2 merge) is drawn from its own seeded stream.
Written in mlx-vlm's own layout (``language_model.*``, ``vision_tower.*``, the patch
convolution as out x T x H x W x C), like an mlx-community conversion:

    config.json                  qwen2_vl, flat text fields + ``vision_config``, mrope
    generation_config.json       as the chat kind's
    model.safetensors            bf16
    preprocessor_config.json     Qwen2-VL image/video settings, at most 16 image tokens
    special_tokens_map.json, tokenizer.json, tokenizer_config.json
                                 the chat tokenizer + <|vision_start|> <|vision_end|>
                                 <|image_pad|> <|video_pad|> (ids 512..515); a ChatML template
                                 that renders an image part as start, pad, end

Qwen2-VL because mlx-vlm ships a numpy image processor for it (no torch needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from mlxpin.dev import tinymodel as core

if TYPE_CHECKING:
    import numpy.typing as npt

VISION_START: Final = "<|vision_start|>"
VISION_END: Final = "<|vision_end|>"
IMAGE_PAD: Final = "<|image_pad|>"
VIDEO_PAD: Final = "<|video_pad|>"
VISION_TOKENS: Final = (VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)

DEPTH: Final = 2
EMBED_DIM: Final = 32
VISION_HEADS: Final = 2
MLP_RATIO: Final = 2  # an int: transformers 5 rejects a float mlp_ratio
PATCH: Final = 14
MERGE: Final = 2
TEMPORAL_PATCH: Final = 2
MIN_PIXELS: Final = (PATCH * MERGE) ** 2 * 4  # 56 x 56
MAX_PIXELS: Final = (PATCH * MERGE) ** 2 * 16  # at most 16 image tokens per image
# head_dim 16: rotary halves 8 = temporal 2 + height 3 + width 3.
MROPE_SECTION: Final = (2, 3, 3)

CHAT_TEMPLATE: Final = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' or part['type'] == 'image_url' %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'video' %}{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'text' %}{{- part['text'] }}"
    "{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def generate(out_dir: Path, *, seed: int = 0, sharded: bool = False) -> tuple[Path, ...]:
    """Write the tiny Qwen2-VL into ``out_dir``; return the paths, sorted (see the module)."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, not {seed}")
    tokenizer = core.tokenizer_json()
    vocab: dict[str, int] = tokenizer["model"]["vocab"]
    ids = {token: len(vocab) + i for i, token in enumerate(VISION_TOKENS)}
    tokenizer["added_tokens"] += [core.added_token(token, i) for token, i in ids.items()]
    weights = _weights(vocab, seed)
    special = core.special_tokens_map()
    special["additional_special_tokens"] += list(VISION_TOKENS)
    tokenizer_config = {**core.tokenizer_config(), **special, "chat_template": CHAT_TEMPLATE}
    tokenizer_config["added_tokens_decoder"] |= {
        str(i): {k: v for k, v in core.added_token(token, i).items() if k != "id"}
        for token, i in ids.items()
    }
    files: dict[str, bytes] = {
        "config.json": core.json_bytes(_config(len(vocab) + len(VISION_TOKENS), ids)),
        "generation_config.json": core.json_bytes(core.generation_config()),
        **(
            core.shards(weights)
            if sharded
            else {"model.safetensors": core.safetensors_bytes(weights)}
        ),
        "preprocessor_config.json": core.json_bytes(_preprocessor_config()),
        "special_tokens_map.json": core.json_bytes(special),
        "tokenizer.json": core.json_bytes(tokenizer),
        "tokenizer_config.json": core.json_bytes(tokenizer_config),
    }
    return core.write_files(out_dir, files)


def _config(vocab_size: int, ids: dict[str, int]) -> dict[str, Any]:
    text = core.chat_config("qwen2", vocab_size)
    return {
        **text,
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "image_token_id": ids[IMAGE_PAD],
        "model_type": "qwen2_vl",
        "rope_scaling": {"mrope_section": list(MROPE_SECTION), "type": "mrope"},
        "video_token_id": ids[VIDEO_PAD],
        "vision_config": {
            "depth": DEPTH,
            "embed_dim": EMBED_DIM,
            "hidden_size": core.HIDDEN_SIZE,
            "in_channels": 3,
            "mlp_ratio": MLP_RATIO,
            "model_type": "qwen2_vl",
            "num_heads": VISION_HEADS,
            "patch_size": PATCH,
            "spatial_merge_size": MERGE,
            "spatial_patch_size": PATCH,
            "temporal_patch_size": TEMPORAL_PATCH,
        },
        "vision_end_token_id": ids[VISION_END],
        "vision_start_token_id": ids[VISION_START],
    }


def _preprocessor_config() -> dict[str, Any]:
    return {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_processor_type": "Qwen2VLImageProcessor",
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "max_pixels": MAX_PIXELS,
        "merge_size": MERGE,
        "min_pixels": MIN_PIXELS,
        "patch_size": PATCH,
        "processor_class": "Qwen2VLProcessor",
        "rescale_factor": 1 / 255,
        "temporal_patch_size": TEMPORAL_PATCH,
    }


def _weights(vocab: dict[str, int], seed: int) -> dict[str, npt.NDArray[Any]]:
    """The qwen2 chat weights (vision-token rows appended) under ``language_model.``, and
    the vision tower drawn from ``default_rng([seed, 1])``."""
    import numpy as np

    rng = np.random.default_rng([seed, 1])
    extra = len(VISION_TOKENS)
    text = core.chat_weights("qwen2", vocab, seed)
    for name in ("lm_head.weight", "model.embed_tokens.weight"):
        rows = core.random_tensors({name: (extra, core.HIDDEN_SIZE)}, rng, ones=lambda _: False)
        text[name] = np.concatenate([text[name], rows[name]])
    merged = EMBED_DIM * MERGE**2
    shapes: dict[str, tuple[int, ...]] = {
        "merger.ln_q.bias": (EMBED_DIM,),
        "merger.ln_q.weight": (EMBED_DIM,),
        "merger.mlp.0.bias": (merged,),
        "merger.mlp.0.weight": (merged, merged),
        "merger.mlp.2.bias": (core.HIDDEN_SIZE,),
        "merger.mlp.2.weight": (core.HIDDEN_SIZE, merged),
        "patch_embed.proj.weight": (EMBED_DIM, TEMPORAL_PATCH, PATCH, PATCH, 3),
    }
    width, hidden = EMBED_DIM, EMBED_DIM * MLP_RATIO
    for i in range(DEPTH):
        p = f"blocks.{i}."
        shapes |= {
            p + "attn.proj.bias": (width,),
            p + "attn.proj.weight": (width, width),
            p + "attn.qkv.bias": (3 * width,),
            p + "attn.qkv.weight": (3 * width, width),
            p + "mlp.fc1.bias": (hidden,),
            p + "mlp.fc1.weight": (hidden, width),
            p + "mlp.fc2.bias": (width,),
            p + "mlp.fc2.weight": (width, hidden),
            p + "norm1.bias": (width,),
            p + "norm1.weight": (width,),
            p + "norm2.bias": (width,),
            p + "norm2.weight": (width,),
        }
    layer_norm = ("norm1.weight", "norm2.weight", "ln_q.weight")
    vision = core.random_tensors(shapes, rng, ones=lambda name: name.endswith(layer_norm))
    return {
        **{f"language_model.{name}": t for name, t in text.items()},
        **{f"vision_tower.{name}": t for name, t in vision.items()},
    }
