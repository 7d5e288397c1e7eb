"""A tiny random-weight Qwen3 reranker that `mlx_vlm --reranker-model` serves, offline.

mlx-vlm scores a qwen3 checkpoint as a *generative text* reranker, like Qwen3-Reranker:
each (query, document) pair is rendered with the chat template, and the relevance score is
``sigmoid(logit("yes") - logit("no"))`` at the last position, through the tied embeddings.

    chat_template.jinja      the ChatML template (mlx-vlm requires one; here is where
                             Qwen3-Reranker conversions keep it)
    config.json              the embedding kind's qwen3 (hidden 64, 2 layers, tied, bf16)
    generation_config.json   as the chat kind's
    model.safetensors        the embedding kind's tensors, over this kind's vocabulary
    special_tokens_map.json, tokenizer.json, tokenizer_config.json
                             the chat kind's BPE trained on the corpus plus the reranker's
                             prompt lines, so that "yes" and "no" are single tokens

The weights are random: the scores are in (0, 1) and reproducible, not meaningful.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from mlxpin.dev import tinymodel as core
from mlxpin.dev.tinymodel_embedding import qwen3_config, qwen3_weights

# mlx-vlm's reranker prompt (server/reranking.py) and its two answers, each on a line of its
# own so that the BPE learns "yes" and "no" without a leading space. Frozen, like the corpus.
RERANK_CORPUS: Final = """\
Judge whether the Document meets the requirements based on the Query and the Instruct provided.
Note that the answer can only be "yes" or "no".
Given a search query, retrieve relevant candidates that answer the query.
yes
no
"""
ANSWERS: Final = ("yes", "no")


def generate(out_dir: Path, *, seed: int = 0, sharded: bool = False) -> tuple[Path, ...]:
    """Write the tiny reranker into ``out_dir``; return the paths, sorted."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, not {seed}")
    tokenizer = core.tokenizer_json(RERANK_CORPUS)
    vocab: dict[str, int] = tokenizer["model"]["vocab"]
    missing = [answer for answer in ANSWERS if answer not in vocab]
    if missing:
        raise RuntimeError(f"the reranker tokenizer lacks the single tokens {missing}")
    weights = qwen3_weights(vocab, seed)
    tokenizer_config = {k: v for k, v in core.tokenizer_config().items() if k != "chat_template"}
    files: dict[str, bytes] = {
        "chat_template.jinja": (core.CHAT_TEMPLATE + "\n").encode(),
        "config.json": core.json_bytes(qwen3_config(len(vocab))),
        "generation_config.json": core.json_bytes(core.generation_config()),
        **(
            core.shards(weights)
            if sharded
            else {"model.safetensors": core.safetensors_bytes(weights)}
        ),
        "special_tokens_map.json": core.json_bytes(core.special_tokens_map()),
        "tokenizer.json": core.json_bytes(tokenizer),
        "tokenizer_config.json": core.json_bytes({**tokenizer_config, "padding_side": "left"}),
    }
    return core.write_files(out_dir, files)
