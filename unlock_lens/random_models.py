"""Tiny random-initialised causal LMs saved as Hugging Face directories, built offline.

For tests, notebooks and benchmarks: a real ``transformers`` architecture (Qwen2, Qwen3,
Llama, Gemma3, GPT-2) with random weights and a byte-level BPE tokenizer trained on a few lines of
math text, so it boots through exactly the same ``load_model`` path as a hub checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

ARCHITECTURES = ("qwen2", "llama", "gemma3", "gpt2", "qwen3")

_CORPUS = [
    "Question: Tom has 3 apples and buys 5 more. How many apples does he have now?",
    "Answer: Let's think step by step. 3 + 5 = 8. The final answer is 8.",
    "Solve the following math problem. End with 'The final answer is' and the number.",
    "There are 12 birds on a tree, 4 fly away. 12 - 4 = 8, so 8 birds are left.",
    "A train travels 60 miles per hour for 2 hours: 60 * 2 = 120 miles in total.",
    "If x / 4 = 6 then x = 24. Each box holds 7 pens; 3 boxes hold 21 pens.",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 + - * / = ( ) . , ? ! % $",
]


def build_tokenizer(
    vocab_size: int = 512, *, add_bos: bool = True, chat_template: str | None = None
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained offline on a small math corpus (BOS ``<s>``).

    ``add_bos=False``: ``tokenizer(text)`` adds no BOS (as SmolLM2's and Qwen's do not);
    ``chat_template``: a Jinja chat template to save with it (default: none, a base model).
    """
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        add_bos_token=add_bos,
    )
    fast.padding_side = "left"
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def _config(arch: str, vocab: int, d_model: int, n_layers: int, n_heads: int, n_ctx: int):
    common = dict(vocab_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    d_mlp = 2 * d_model
    if arch == "qwen2":
        return transformers.Qwen2Config(
            hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layers,
            num_attention_heads=n_heads, num_key_value_heads=max(1, n_heads // 2),
            max_position_embeddings=n_ctx, tie_word_embeddings=True, **common,
        )
    if arch == "qwen3":
        return transformers.Qwen3Config(
            hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layers,
            num_attention_heads=n_heads, num_key_value_heads=max(1, n_heads // 2),
            head_dim=d_model // n_heads, max_position_embeddings=n_ctx, tie_word_embeddings=True,
            **common,
        )
    if arch == "llama":
        return transformers.LlamaConfig(
            hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layers,
            num_attention_heads=n_heads, num_key_value_heads=n_heads,
            max_position_embeddings=n_ctx, tie_word_embeddings=False, **common,
        )
    if arch == "gemma3":
        return transformers.Gemma3TextConfig(
            hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layers,
            num_attention_heads=n_heads, num_key_value_heads=1, head_dim=d_model // n_heads,
            max_position_embeddings=n_ctx, sliding_window=64, **common,
        )
    if arch == "gpt2":
        return transformers.GPT2Config(
            n_embd=d_model, n_layer=n_layers, n_head=n_heads, n_positions=n_ctx, **common
        )
    raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")


def build_random_model(
    path: str | Path,
    arch: str = "qwen2",
    *,
    d_model: int = 64,
    n_layers: int = 3,
    n_heads: int = 4,
    n_ctx: int = 512,
    seed: int = 0,
    add_bos: bool = True,
    chat_template: str | None = None,
    vocab_size: int = 512,
) -> Path:
    """Build a random ``arch`` model with an offline tokenizer and save it to ``path``
    (``vocab_size``, ``add_bos``, ``chat_template``: see :func:`build_tokenizer`)."""
    path = Path(path)
    tokenizer = build_tokenizer(vocab_size, add_bos=add_bos, chat_template=chat_template)
    config = _config(arch, len(tokenizer), d_model, n_layers, n_heads, n_ctx)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
