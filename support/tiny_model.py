"""A tiny random Qwen3-architecture model and a byte-level BPE tokenizer trained locally (seconds).

Used by the tests instead of a downloaded model. The larger init std (0.2) lets LoRA learn quickly.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "Rate the answer to the question on each criterion below, using the context as the only source of truth.",
    "conciseness interpretability completeness clarity accuracy relevance coherence consistency fluency",
    "anger disgust fear joy neutral sadness surprise emotion text dialogue summary context question answer",
    "-2 -1 0 1 2 3 4 5 6 7 8 9 10 score label criterion integer from to very poor excellent",
    "The museum opens at 9am and closes at 6pm. Water boils at 100 degrees Celsius at sea level.",
    "Reply with exactly these lines, in this order: One of: Criteria: Answer: Question: Context:",
]


def build_tiny_model(path: Path, seed: int = 0) -> Path:
    """Write a tiny Qwen3 causal LM and its tokenizer to ``path`` (if not there yet) and return it."""
    if (path / "config.json").is_file():
        return path
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    path.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None, unk_token=None
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)

    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=8192,
        initializer_range=0.2,
        tie_word_embeddings=True,
        pad_token_id=fast.pad_token_id,
        eos_token_id=fast.eos_token_id,
        bos_token_id=None,
    )
    model = Qwen3ForCausalLM(config)
    model.save_pretrained(path)
    return path
