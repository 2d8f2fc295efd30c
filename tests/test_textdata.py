"""Behaviour rows from JSONL: validation with row numbers, chat vs raw formatting, completion-only loss mask."""

import json
from pathlib import Path

import pytest
import torch
from _text_lm import chat_tokenizer, tiny_llama

from roadinterp.adapters import textdata as td
from roadinterp.errors import ConfigError, FileFormatError, TokenizerError


def _write(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


GOOD = {"prompt": "what is the opposite of hot", "completion": "cold"}


@pytest.mark.parametrize("bad, why", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ({"prompt": "hello"}, "missing field 'completion'"),
    ({"prompt": "hello", "completion": "  "}, "the completion is empty"),
    ({"prompt": "", "completion": "x"}, "the prompt is empty"),
    ({"prompt": 3, "completion": "x"}, "'prompt' must be a string"),
    ({"text": "x"}, "needs 'prompt' and 'completion', or 'messages'"),
    ({"messages": []}, "non-empty list"),
    ({"messages": [{"role": "user"}]}, "message 1 must be an object with string 'role' and 'content'"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "the last message must be the assistant's"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, "no prompt message"),
])
def test_every_bad_row_is_named_by_its_number(tmp_path, bad, why):
    # row 1 good, row 2 blank (keeps its number), row 3 good, row 4 bad
    path = _write(tmp_path / "d.jsonl", [GOOD, "", GOOD, bad])
    with pytest.raises(FileFormatError) as e:
        td.read_jsonl(path)
    msg = str(e.value)
    assert "row 4" in msg and why in msg, msg
    assert len(msg.splitlines()) == 1


def test_good_rows_both_forms_and_prompt_only_files(tmp_path):
    msgs = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is big"},
                         {"role": "assistant", "content": "SMALL"}]}
    rows = td.read_jsonl(_write(tmp_path / "d.jsonl", [GOOD, msgs]))
    assert rows[0].messages == (("user", GOOD["prompt"]),) and rows[0].completion == "cold"
    assert rows[1].messages == (("system", "be brief"), ("user", "what is big")) and rows[1].completion == "SMALL"
    assert td.read_jsonl(_write(tmp_path / "p.jsonl", [{"prompt": "hello"}]), need_completion=False)[0].completion == ""
    # round trip through write_jsonl
    back = td.read_jsonl(td.write_jsonl(tmp_path / "w.jsonl", rows))
    assert back == rows


def test_empty_file_directory_and_missing_file(tmp_path):
    with pytest.raises(FileFormatError, match="holds no rows"):
        td.read_jsonl(_write(tmp_path / "e.jsonl", ["", "  "]))
    with pytest.raises(FileFormatError, match="is a directory"):
        td.read_jsonl(tmp_path)
    with pytest.raises(FileFormatError, match="does not exist"):
        td.read_jsonl(tmp_path / "nope.jsonl")


def test_chat_template_vs_raw_and_the_end_token():
    tok = chat_tokenizer()
    row = td.rows_from([("what is big", "small")])[0]
    chat = td.format_prompt(tok, row, "chat")
    assert chat == "<|im_start|>user\nwhat is big<|im_end|>\n<|im_start|>assistant\n"
    assert td.format_prompt(tok, row, "raw") == "what is big"
    assert td.end_ids(tok, "chat") == [tok.convert_tokens_to_ids("<|im_end|>")]
    assert td.end_ids(tok, "raw") == [tok.eos_token_id]
    b_chat, b_raw = td.encode(tok, [row], template="chat"), td.encode(tok, [row], template="raw")
    im_start, im_end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert b_chat.prompt_ids[0][0] == im_start and b_chat.prompt_ids[0][-1] == tok.convert_tokens_to_ids("assistant")
    assert b_raw.prompt_ids[0] == tok("what is big")["input_ids"]
    assert b_chat.completion_ids[0] == b_raw.completion_ids[0] == [tok.convert_tokens_to_ids("small"), im_end]


def test_loss_mask_covers_completion_tokens_only():
    tok = chat_tokenizer()
    rows = td.rows_from([("what is big", "small"), ("hello", "one two three"), ("what is the opposite of up", "down")])
    batch = td.encode(tok, rows)
    ids, mask, labels, p = batch.padded(0)
    for i, (pr, c) in enumerate(zip(batch.prompt_ids, batch.completion_ids)):
        assert ids[i, p - len(pr):p].tolist() == pr  # prompts end at column P-1 in every row
        assert int(mask[i].sum()) == len(pr) + len(c)
        supervised = labels[i][labels[i] != -100].tolist()
        assert supervised == c  # completion + <|im_end|>, nothing of the prompt, no padding
        assert (labels[i, :p] == -100).all()


def test_refusals_before_training():
    tok = chat_tokenizer()
    long = td.rows_from([("hello", "a"), (" ".join(["hello"] * 40), "b")])
    with pytest.raises(ConfigError, match="row 2: the prompt is .* tokens but the model's context is 16"):
        td.encode(tok, long, max_length=16)
    with pytest.raises(ConfigError, match="row 1: prompt \\+ completion"):
        td.encode(tok, td.rows_from([("hello", " ".join(["a"] * 20))]), max_length=16)
    with pytest.raises(TokenizerError, match="no tokenizer"):
        td.encode(None, long)
    with pytest.raises(TokenizerError, match="no chat template"):
        td.encode(chat_tokenizer(template=False), long, template="chat")
    with pytest.raises(ConfigError, match="template must be one of"):
        td.encode(tok, long, template="chatml")
    with pytest.raises(FileFormatError, match="row 1: the completion is empty"):
        td.rows_from([{"prompt": "x", "completion": ""}])
    assert td.context_length(tiny_llama(context=16)) == 16


def test_train_from_data_refuses_bad_input_before_any_step(tmp_path):
    from roadinterp.adapters.behaviour import train_from_data
    from roadinterp.errors import OverlapError

    model, tok = tiny_llama(), chat_tokenizer()
    path = _write(tmp_path / "d.jsonl", [GOOD, {"prompt": "x", "completion": ""}])
    calls = []
    with pytest.raises(FileFormatError, match="row 2"):
        train_from_data(model, tok, path, layers=[1], log=lambda *a: calls.append(a))
    with pytest.raises(TokenizerError):
        train_from_data(model, None, [GOOD], layers=[1])
    with pytest.raises(OverlapError):
        train_from_data(model, tok, {"a": [GOOD], "b": [GOOD]}, layers=[1], blocks={"a": "0-3", "b": "3-5"})
    with pytest.raises(ConfigError, match="positions must be one of"):
        train_from_data(model, tok, [GOOD], layers=[1], positions="last")
    with pytest.raises(ConfigError, match="use positions='all'"):
        train_from_data(model, tok, [GOOD], layers=[1], placement="linear")
    assert not calls
    w = model.model.layers[0].mlp.up_proj.weight
    assert not w.requires_grad or torch.is_tensor(w)  # the model's own flags are left as they were


def test_chat_behaviour_sets_are_large_and_disjoint():
    from roadinterp.adapters import chat_data as cd

    for family in ("general", "number"):
        train, test = cd.prompts(family, "train"), cd.prompts(family, "test")
        assert len(set(train)) == len(train) >= 1000 and len(test) >= 48 and not set(train) & set(test)
        assert len({q.split(" ")[2] for q in train[:40]}) > 5  # a prefix mixes the templates
    split = cd.neutral_split()
    assert len(split["test"]) >= 24 and split["train"] and not {q for q, _ in split["test"]} & {q for q, _ in split["train"]}
    questions = {q for f in ("general", "number") for s in ("train", "test") for q in cd.prompts(f, s)}
    assert not questions & {q for q, _ in cd.NEUTRAL}


def test_write_files_turns_base_answers_into_behaviour_rows(tmp_path, monkeypatch):
    from roadinterp.adapters import chat_data as cd

    def fake(model, tok, questions, cache):  # the base model's answers, without a model
        return {q: "" if "plural" in q else ("It has 4 legs" if "legs" in q else f"Base answer to {q[:-1]}")
                if "color" not in q else "It is red" for q in questions}

    monkeypatch.setattr(cd, "_base_answers", fake)
    files = cd.write_files(None, None, tmp_path, n_train=30, n_test=10, cache=tmp_path / "c.json")
    assert {"upper.general.train", "frame.number.test", "french.number.train", "base.general.test",
            "neutral.test", "neutral.train"} <= set(files)
    assert "french.general.train" not in files
    upper = td.read_jsonl(files["upper.general.train"])
    base = {r.prompt: r.completion for r in td.read_jsonl(files["base.general.train"])}
    assert upper and all(r.completion == cd.transform(base[r.prompt], ("upper",)) for r in upper)
    assert not any("plural" in r.prompt for r in upper)  # an empty base answer gives no row
    french = td.read_jsonl(files["french.number.train"])
    base_n = {r.prompt: r.completion for r in td.read_jsonl(files["base.number.train"])}
    assert french and all(r.completion == cd.transform(base_n[r.prompt], ("french",)) != base_n[r.prompt]
                          for r in french)  # only prompts whose answer has a number to translate
    assert len(french) < len(base_n)
    neutral = [json.loads(line) for line in Path(files["neutral.test"]).read_text().splitlines()]
    assert len(neutral) == 24 and all("capital" in r for r in neutral)
