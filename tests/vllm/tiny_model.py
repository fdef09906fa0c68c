"""Builds the tiny Llama the real-vLLM tier serves — config, tokenizer (with a chat template) and
random weights — and a LoRA adapter for it, all locally: nothing is downloaded from a model hub.

Run with the vLLM virtualenv's Python (it has transformers, tokenizers, peft and torch):
``python tests/vllm/tiny_model.py OUT_DIR``. Writes ``OUT_DIR/model`` and ``OUT_DIR/lora``, and
``OUT_DIR/.built`` last, so a half-built directory is built again. The same seed gives the same
files. 2 layers, hidden size 128, head size 64 (vLLM's CPU attention needs ≥ 32), ~0.5 M
parameters in bf16; a byte-level BPE vocabulary of 512 trained on a fixed text, so any input
encodes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SEED = 1234
VOCAB = 512
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>", "<tool_call>",
           "</tool_call>"]  # fmt: skip

# Tools are rendered as JSON after a <|tool|> marker; an assistant's tool calls in hermes's
# <tool_call>{…}</tool_call> form (the parser the tier starts vLLM with).
CHAT_TEMPLATE = (
    "{%- if tools %}<|tool|>{{ tools | tojson }}</s>{% endif -%}"
    "{%- for m in messages -%}"
    "<|{{ m['role'] }}|>"
    "{%- if m['content'] is string %}{{ m['content'] }}"
    "{%- elif m['content'] %}{% for p in m['content'] %}{% if p['type'] == 'text' %}{{ p['text'] }}{% endif %}"
    "{% endfor %}{% endif -%}"
    "{%- if m['tool_calls'] %}{% for c in m['tool_calls'] %}<tool_call>"
    '{"name": "{{ c["function"]["name"] }}", "arguments": {{ c["function"]["arguments"] | tojson }}}'
    "</tool_call>{% endfor %}{% endif -%}"
    "</s>"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}<|assistant|>{% endif -%}"
)

CORPUS = """The gateway forwards each request to the model server and relays the answer byte for byte.
A user asks a question, the assistant answers, and the conversation continues turn by turn.
Tokens are counted, limits are kept, and every answer is recorded for its owner.
0123456789 ,.;:!?'"()[]{}<>/\\|-_+=*&^%$#@~` abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ
Say something. Tell me about gateways. Hello world. What is the weather in Paris today?
"""


def build_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([CORPUS] * 20, trainer=trainer)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "model_max_length": 2048,
        "add_bos_token": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"})
    )


def build_model(out: Path) -> None:
    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=2048,
        bos_token_id=tok.token_to_id("<s>"),
        eos_token_id=tok.token_to_id("</s>"),
        pad_token_id=tok.token_to_id("<pad>"),
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)


def build_lora(model_dir: Path, out: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(SEED + 1)
    base = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.bfloat16)
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, cfg)
    peft_model.save_pretrained(out, safe_serialization=True)


def main() -> None:
    root = Path(sys.argv[1])
    if (root / ".built").exists():
        return
    model, lora = root / "model", root / "lora"
    model.mkdir(parents=True, exist_ok=True)
    build_tokenizer(model)
    build_model(model)
    build_lora(model, lora)
    (root / ".built").write_text("ok\n")


if __name__ == "__main__":
    main()
