"""A tiny chat LM for the text-data tests: a word-level tokenizer with a ChatML template and a random Llama."""

import torch

WORDS = ("hello world what is the opposite of hot cold big small up down yes no red green blue one two three "
         "four five six seven eight nine ten a b c d e f g h").split()
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def chat_tokenizer(*, template: bool = True):
    """Word-level tokenizer: <pad>=0, <|im_end|>=1 (also EOS), <|im_start|>=2, <unk>=3, then roles and WORDS."""
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<|im_end|>": 1, "<|im_start|>": 2, "<unk>": 3}
    for w in ("user", "assistant", "system", *WORDS):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    out = tf.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<|im_end|>",
                                     additional_special_tokens=["<|im_start|>"])
    if template:
        out.chat_template = CHATML
    return out


def tiny_llama(vocab: int = 64, *, context: int = 64, layers: int = 3, seed: int = 0):
    import transformers as tf

    torch.manual_seed(seed)
    cfg = tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=context,
                         pad_token_id=0, eos_token_id=1, bos_token_id=2,
                         initializer_range=0.4)  # large weights: logits a rotation can move
    model = tf.LlamaForCausalLM(cfg).eval()
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 1
    return model
