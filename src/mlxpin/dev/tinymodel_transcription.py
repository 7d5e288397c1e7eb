"""A tiny random-weight Parakeet-CTC speech-to-text model that `mlx_vlm --stt-model` serves.

mlx-vlm hands ``/v1/audio/transcriptions`` to mlx-audio, whose Parakeet family reads a
NeMo-style ``config.json`` (the vocabulary included: no tokenizer files) and MLX-layout
weights. CTC because its greedy decoding is one pass, bounded by the audio's length:

    config.json         parakeet, EncDecCTCModelBPE: 16 mel features, a 1-layer conformer
                        (d_model 32, 2 heads, depthwise-striding subsampling by 4), and a
                        CTC head over a few corpus words
    model.safetensors   bf16, drawn from numpy's ``default_rng(seed)``

The weights are random: audio transcribes to a reproducible string of the vocabulary's
words (not one that depends much on what was said).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from mlxpin.dev import tinymodel as core

FEATURES: Final = 16  # mel bins
D_MODEL: Final = 32
HEADS: Final = 2
FF_EXPANSION: Final = 2
CONV_KERNEL: Final = 3
SUB_CHANNELS: Final = 8
SUBSAMPLING: Final = 4  # two stride-2 stages: 16 mel bins -> 4
VOCABULARY: Final = ("<unk>", "▁the", "▁model", "▁server", "▁answers", "▁a", "▁request", "s", ".")


def generate(out_dir: Path, *, seed: int = 0, sharded: bool = False) -> tuple[Path, ...]:
    """Write the tiny transcription model into ``out_dir``; return the paths, sorted."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, not {seed}")
    if sharded:
        raise ValueError("the transcription kind has a single weight file")
    import numpy as np

    tensors = core.random_tensors(
        shapes(),
        np.random.default_rng(seed),
        ones=lambda name: (
            name.endswith("running_var") or ("norm" in name and name.endswith(".weight"))
        ),
        unit="decoder.decoder_layers.0.weight",
    )
    files = {
        "config.json": core.json_bytes(_config()),
        "model.safetensors": core.safetensors_bytes(tensors),
    }
    return core.write_files(out_dir, files)


def _config() -> dict[str, Any]:
    return {
        "model_type": "parakeet",
        "target": "nemo.collections.asr.models.ctc_bpe_models.EncDecCTCModelBPE",
        "sample_rate": 16000,
        "preprocessor": {
            "dither": 0.0,
            "features": FEATURES,
            "n_fft": 512,
            "normalize": "per_feature",
            "sample_rate": 16000,
            "window": "hann",
            "window_size": 0.025,
            "window_stride": 0.01,
        },
        "encoder": {
            "conv_kernel_size": CONV_KERNEL,
            "d_model": D_MODEL,
            "feat_in": FEATURES,
            "ff_expansion_factor": FF_EXPANSION,
            "n_heads": HEADS,
            "n_layers": 1,
            "pos_emb_max_len": 5000,
            "self_attention_model": "rel_pos",
            "subsampling": "dw_striding",
            "subsampling_conv_channels": SUB_CHANNELS,
            "subsampling_factor": SUBSAMPLING,
        },
        "decoder": {"feat_in": D_MODEL, "num_classes": -1, "vocabulary": list(VOCABULARY)},
        "decoding": {"greedy": {}},
    }


def shapes() -> dict[str, tuple[int, ...]]:
    """Parameter shapes in MLX layout (convolutions channels-last), as mlx-audio builds them."""
    d, c, ff, k = D_MODEL, SUB_CHANNELS, D_MODEL * FF_EXPANSION, CONV_KERNEL
    sub = "encoder.pre_encode."
    shapes: dict[str, tuple[int, ...]] = {
        sub + "conv.0.weight": (c, 3, 3, 1),
        sub + "conv.0.bias": (c,),
        sub + "conv.2.weight": (c, 3, 3, 1),  # depthwise
        sub + "conv.2.bias": (c,),
        sub + "conv.3.weight": (c, 1, 1, c),  # pointwise
        sub + "conv.3.bias": (c,),
        sub + "out.weight": (d, c * FEATURES // SUBSAMPLING),
        sub + "out.bias": (d,),
        "decoder.decoder_layers.0.weight": (len(VOCABULARY) + 1, 1, d),  # + the CTC blank
        "decoder.decoder_layers.0.bias": (len(VOCABULARY) + 1,),
    }
    layer = "encoder.layers.0."
    with_bias: dict[str, tuple[int, ...]] = {f"feed_forward{i}.linear1": (ff, d) for i in (1, 2)}
    with_bias |= {f"feed_forward{i}.linear2": (d, ff) for i in (1, 2)}
    with_bias |= {f"self_attn.linear_{p}": (d, d) for p in ("q", "k", "v", "out")}
    with_bias |= {
        "conv.pointwise_conv1": (2 * d, 1, d),
        "conv.depthwise_conv": (d, k, 1),
        "conv.pointwise_conv2": (d, 1, d),
    }
    for name, shape in with_bias.items():
        shapes |= {layer + name + ".weight": shape, layer + name + ".bias": (shape[0],)}
    norms = ("feed_forward1", "self_att", "conv", "feed_forward2", "out")
    for norm in norms:
        shapes |= {layer + f"norm_{norm}.weight": (d,), layer + f"norm_{norm}.bias": (d,)}
    bn = layer + "conv.batch_norm."
    shapes |= {bn + p: (d,) for p in ("weight", "bias", "running_mean", "running_var")}
    shapes |= {
        layer + "self_attn.linear_pos.weight": (d, d),
        layer + "self_attn.pos_bias_u": (HEADS, d // HEADS),
        layer + "self_attn.pos_bias_v": (HEADS, d // HEADS),
    }
    return shapes
