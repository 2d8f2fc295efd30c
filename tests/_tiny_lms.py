"""Tiny random decoder LMs of four architectures, written as GGUF files and as HF directories.

The GGUF side inverts what transformers' GGUF loader does to each architecture's tensors
(``transformers.modeling_gguf_pytorch_utils``): llama's q/k rows are permuted the way
llama.cpp's converter permutes them, Gemma's RMSNorm weights are stored as ``w + 1``, GPT-2's
Conv1D weights are stored transposed. Names come from ``gguf.get_tensor_name_map``. Each file
carries a byte-level BPE tokenizer (256 byte tokens, a few merges, an end-of-text token), so
``AutoTokenizer.from_pretrained(gguf_file=...)`` reads it back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

ARCHS = ("llama", "qwen2", "gemma3", "gpt2")
_MERGES = ["Ġ t", "Ġ a", "h e", "i n"]


def _tokens() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte = [c for _, c in sorted(bytes_to_unicode().items())]
    merged = ["".join(m.split(" ")) for m in _MERGES]
    return [*byte, *merged, "<|endoftext|>"]


VOCAB = len(_tokens())  # 261


def config(arch: str):
    """A tiny HF config of ``arch`` (vocab ``VOCAB``, width 32; gemma3 has six layers, so both its
    sliding-window layers and its global layer are there, with a window shorter than the prompts)."""
    import transformers as T

    common = dict(vocab_size=VOCAB, bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1, pad_token_id=None)
    if arch == "llama":
        return T.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True, **common)
    if arch == "qwen2":
        return T.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True, **common)
    if arch == "gemma3":
        return T.Gemma3TextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=4,
                                  num_key_value_heads=2, head_dim=8, max_position_embeddings=64, sliding_window=4,
                                  tie_word_embeddings=True, **common)
    if arch == "gpt2":
        return T.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=1024,  # GGUF: n_ctx only; wpe stays 1024
                            n_inner=None, vocab_size=VOCAB,
                            bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1)
    raise ValueError(arch)


def build(arch: str, seed: int = 0) -> torch.nn.Module:
    """The random model (weights spread a little wider than HF's init, so logits differ across tokens)."""
    import transformers as T

    cls = {"llama": T.LlamaForCausalLM, "qwen2": T.Qwen2ForCausalLM, "gemma3": T.Gemma3ForCausalLM,
           "gpt2": T.GPT2LMHeadModel}[arch]
    torch.manual_seed(seed)
    model = cls(config(arch))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
            else:
                p.normal_(0, 0.2)
    return model.eval()


def save_dir(model: torch.nn.Module, path: Path) -> Path:
    """``model`` and the byte-level tokenizer as an HF directory (safetensors)."""
    model.save_pretrained(str(path), safe_serialization=True)
    tokenizer().save_pretrained(str(path))
    return path


def tokenizer():
    from transformers.tokenization_utils_tokenizers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    toks = _tokens()
    bpe = models.BPE(vocab={t: i for i, t in enumerate(toks)}, merges=[tuple(m.split(" ")) for m in _MERGES])
    tk = Tokenizer(bpe)
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k permutation (convert_hf_to_gguf.LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model: torch.nn.Module, path: Path) -> Path:
    """``model`` as an f32 GGUF file transformers' loader reads back to the same weights."""
    import gguf

    cfg = model.config
    arch = {"gemma3_text": "gemma3"}.get(cfg.model_type, cfg.model_type)
    n_layers = cfg.num_hidden_layers
    names = gguf.get_tensor_name_map(next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch), n_layers)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_block_count(n_layers)
    w.add_context_length(cfg.max_position_embeddings if arch != "gpt2" else cfg.n_positions)
    w.add_embedding_length(cfg.hidden_size)
    ff = cfg.intermediate_size if arch != "gpt2" else 4 * cfg.n_embd
    w.add_feed_forward_length(ff)
    w.add_head_count(cfg.num_attention_heads)
    if arch == "gpt2":
        w.add_layer_norm_eps(cfg.layer_norm_epsilon)
    else:
        w.add_head_count_kv(cfg.num_key_value_heads)
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        rope = cfg.rope_parameters
        rope = rope.get("full_attention", rope)  # gemma3: one entry per attention kind
        w.add_rope_freq_base(float(rope["rope_theta"]))
        w.add_vocab_size(cfg.vocab_size)
    if arch == "llama":
        w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    if arch == "gemma3":
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_sliding_window(cfg.sliding_window)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    toks = _tokens()
    w.add_token_list(toks)
    w.add_token_types([1] * (len(toks) - 1) + [3])
    w.add_token_merges(_MERGES)
    w.add_bos_token_id(len(toks) - 1)
    w.add_eos_token_id(len(toks) - 1)
    for hf_name, t in model.state_dict().items():
        if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        stem, suffix = hf_name.rsplit(".", 1)
        name = names.get_name(stem)
        if name is None:
            raise ValueError(f"no GGUF name for {hf_name}")
        a = t.detach().float().numpy().copy()
        if arch == "llama" and name.endswith(("attn_q", "attn_k")):
            a = _permute(a, cfg.num_attention_heads if name.endswith("attn_q") else cfg.num_key_value_heads)
        if arch == "gemma3" and "norm" in name and suffix == "weight":
            a = a + 1
        if arch == "gpt2" and name.endswith(("attn_qkv", "ffn_down", "ffn_up", "attn_output")) and suffix == "weight":
            a = a.T.copy()
        w.add_tensor(f"{name}.{suffix}", a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
