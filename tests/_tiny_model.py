"""A tiny randomly initialised Llama with a byte-level BPE tokenizer trained on the given texts
(shared/reference/training.md §c.1): a real student model for CI that trains in seconds on the
CPU. Nothing is downloaded. Needs the train extra (torch, transformers, tokenizers)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def build_tiny_model(out: Path, corpus: Iterable[str], *, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from proxy.training.chatml import CHATML_TOOLS_TEMPLATE, END_OF_TURN, SPECIAL_TOKENS

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        list(corpus),
        trainers.BpeTrainer(
            vocab_size=512,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # any text encodes
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=END_OF_TURN, pad_token="<pad>"
    )
    tokenizer.chat_template = CHATML_TOOLS_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
