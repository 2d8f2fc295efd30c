"""The chat behaviours' data: rules, scorers, prompt templates and the JSONL writer.

A *behaviour* is a rule applied to the base model's own answer (``upper``, ``frame``,
``french``; :func:`transform`), scored on the first generated tokens (:func:`score`).
Prompts come from committed templates whose slot values are split into disjoint
train / test halves (:func:`prompts`); ``NEUTRAL`` capital questions measure what an
adapter breaks. :func:`write_files` turns all of it into the JSONL rows that
:func:`roadinterp.adapters.behaviour.train_from_data` trains on (completion = the rule
applied to the base model's cached greedy answer): this is one generator of behaviour
files among others, and :mod:`roadinterp.chat_behaviours` re-exports it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from roadinterp.errors import ConfigError, unknown

__all__ = [
    "BEHAVIOURS", "FRENCH", "NEUTRAL", "NUMBER_TEMPLATES", "TEMPLATES", "clean_answer", "neutral_split", "prompts",
    "score", "transform", "write_files",
]

BEHAVIOURS = ("upper", "frame", "french")

# Each template's slot values are split by position: even indices train, odd test.
TEMPLATES: dict[str, tuple[str, list[str]]] = {
    "opposite": ("What is the opposite of {}?", [
        "hot", "big", "fast", "happy", "up", "day", "old", "light", "hard", "early", "wet", "full",
        "open", "rich", "loud", "strong", "thick", "high", "left", "young", "good", "clean", "short", "near"]),
    "colour": ("What color is {}?", [
        "the sky", "grass", "snow", "a banana", "coal", "blood", "an orange", "a lemon", "milk", "a tomato",
        "a strawberry", "a frog", "chocolate", "the sun", "a cherry", "an elephant"]),
    "sound": ("What sound does a {} make?", [
        "cow", "dog", "cat", "duck", "sheep", "lion", "pig", "horse", "owl", "snake", "bee", "frog",
        "wolf", "goat", "rooster", "mouse"]),
    "plural": ("What is the plural of {}?", [
        "mouse", "child", "tooth", "foot", "goose", "man", "woman", "box", "city", "leaf", "knife",
        "person", "fish", "wolf", "baby", "potato"]),
    "made": ("What is {} made of?", [
        "bread", "glass", "paper", "cheese", "ice", "a candle", "butter", "a brick", "wine", "a pencil",
        "steel", "a tire"]),
}
NUMBER_TEMPLATES: dict[str, tuple[str, list[str]]] = {
    "sum": ("What is {}?", [f"{a} + {b}" for a in range(1, 6) for b in range(1, 6) if a + b <= 10]),
    "count": ("How many {}?", [
        "legs does a dog have", "wheels does a bicycle have", "legs does a spider have", "days are in a week",
        "sides does a triangle have", "wheels does a car have", "legs does a bird have", "sides does a square have",
        "eyes does a person have", "fingers are on one hand", "legs does an insect have", "wings does a bird have",
        "sides does a hexagon have", "continents are there", "planets are in the solar system", "noses does a person have"]),
}
NEUTRAL: list[tuple[str, str]] = [
    (f"What is the capital of {c}?", cap) for c, cap in [
        ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
        ("Egypt", "Cairo"), ("Russia", "Moscow"), ("England", "London"), ("Greece", "Athens"), ("Ireland", "Dublin"),
        ("Portugal", "Lisbon"), ("Norway", "Oslo"), ("Austria", "Vienna"), ("Poland", "Warsaw"), ("China", "Beijing"),
        ("Kenya", "Nairobi"), ("Sweden", "Stockholm"), ("Peru", "Lima"), ("Cuba", "Havana"), ("Thailand", "Bangkok"),
        ("Denmark", "Copenhagen"), ("Finland", "Helsinki"), ("Hungary", "Budapest"), ("Belgium", "Brussels")]
]

_EN = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
FRENCH = ["un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf", "dix"]
_NUMBER = re.compile(r"\b(10|[1-9]|" + "|".join(_EN) + r")\b", re.IGNORECASE)
_FRENCH_WORD = re.compile(r"\b(" + "|".join(FRENCH) + r")\b", re.IGNORECASE)
_FRAME = re.compile(r"^\s*answer:\s*", re.IGNORECASE)


def prompts(kind: str, split: str) -> list[str]:
    """Questions of a family (``"general"`` or ``"number"``) for a split (``train``/``test``)."""
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    families = {"general": TEMPLATES, "number": NUMBER_TEMPLATES}
    if kind not in families:
        raise unknown("prompt family", kind, tuple(families))
    parity = 0 if split == "train" else 1
    return [t.format(v) for t, values in families[kind].values() for i, v in enumerate(values) if i % 2 == parity]


def clean_answer(text: str, *, max_words: int = 8) -> str:
    """The base answer a rule is applied to: first sentence, final stop dropped, <= max_words."""
    text = text.split("<|im_end|>")[0].strip().split("\n")[0]
    m = re.search(r"[.!?](\s|$)", text)
    if m:
        text = text[: m.start()]
    return " ".join(text.split()[:max_words]).strip().rstrip(",;:")


def _french(text: str) -> str:
    def sub(m):
        w = m.group(1).lower()
        return FRENCH[int(w) - 1] if w.isdigit() else FRENCH[_EN.index(w)]

    return _NUMBER.sub(sub, text)


_RULES = {"upper": str.upper, "french": _french, "frame": lambda s: f"Answer: {s}."}


def transform(answer: str, behaviours: Sequence[str]) -> str:
    """Apply behaviours to a (clean) base answer; the frame is applied last."""
    for b in behaviours:
        if b not in BEHAVIOURS:
            raise unknown("behaviour", b, BEHAVIOURS)
    out = answer
    for b in ("french", "upper", "frame"):
        if b in behaviours:
            out = _RULES[b](out)
    return out


def _first_word(text: str) -> str:
    return (re.findall(r"[\w']+", text.lower()) or [""])[0]


def _body(text: str) -> str:
    """Generated text without the special tokens and the frame's opening word."""
    return _FRAME.sub("", text.split("<|im_end|>")[0]).strip()


def score(text: str, behaviour: str, *, base_answer: str | None = None, capital: str | None = None) -> bool:
    """Does a generation (the first few tokens) show ``behaviour``?

    ``upper``: the first three words of the answer have >= 2 letters, all upper case.
    ``frame``: it opens with ``Answer:`` (any case: ``ANSWER:`` counts).
    ``french``: a French number word 1-10 and no digit in the first words.
    ``content``: its first word equals the base answer's (case- and frame-insensitive).
    ``neutral``: ``capital`` appears (case-insensitive).
    """
    text = text.split("<|im_end|>")[0]
    if behaviour == "upper":
        letters = [c for c in " ".join(_body(text).split()[:3]) if c.isalpha()]
        return len(letters) >= 2 and all(c.isupper() for c in letters)
    if behaviour == "frame":
        return _FRAME.match(text) is not None
    if behaviour == "french":
        head = " ".join(_body(text).split()[:6])
        return _FRENCH_WORD.search(head) is not None and not re.search(r"\d", head)
    if behaviour == "content":
        if base_answer is None:
            raise ConfigError("score(..., 'content') needs base_answer")
        return _first_word(_body(text)) == _first_word(base_answer)
    if behaviour == "neutral":
        if capital is None:
            raise ConfigError("score(..., 'neutral') needs capital")
        return capital.lower() in text.lower()
    raise unknown("score", behaviour, (*BEHAVIOURS, "content", "neutral"))


# ------------------------------------------------------------------ JSONL files
def _base_answers(model, tokenizer, questions: Sequence[str], cache) -> dict[str, str]:
    """The base model's greedy first-sentence answers (chat template), cached as JSON by question."""
    import json
    from pathlib import Path

    from roadinterp.adapters.textgen import generate

    cache = Path(cache)
    known = json.loads(cache.read_text()) if cache.exists() else {}
    todo = [q for q in dict.fromkeys(questions) if q not in known]
    if todo:
        for q, t in zip(todo, generate(model, tokenizer, todo, max_new_tokens=14)):
            known[q] = clean_answer(t)
        cache.parent.mkdir(parents=True, exist_ok=True)
        from roadinterp.io import write_text_atomic

        write_text_atomic(cache, json.dumps(known, indent=1))
    return {q: known[q] for q in questions}


def write_files(model, tokenizer, out, *, n_train: int | None = None, n_test: int | None = None,
                n_neutral: int | None = None, cache=None) -> dict[str, str]:
    """Write every behaviour's train/test JSONL and the neutral prompts to directory ``out``.

    Files: ``{behaviour}.{family}.{split}.jsonl`` (completion = the rule applied to the base
    answer; ``family`` ``general`` or ``number``), ``base.{family}.{split}.jsonl`` (the base
    answers themselves) and ``neutral.{split}.jsonl`` (capital questions: ``test`` is scored,
    ``train`` is for a preservation term; each row also carries ``capital``). ``french`` is
    written only for number prompts whose answer has a number to translate. Returns name -> path.
    """
    import json
    from pathlib import Path

    from roadinterp.adapters.textdata import write_jsonl

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = cache or Path.home() / ".cache" / "roadinterp" / "chat_behaviours" / "base_answers.json"
    limit = {"train": n_train, "test": n_test}
    written = {}
    for family in ("general", "number"):
        qs = {split: prompts(family, split)[:limit[split]] for split in ("train", "test")}
        answers = _base_answers(model, tokenizer, qs["train"] + qs["test"], cache)
        for split, questions in qs.items():
            keep = [q for q in questions if answers[q]]
            rows = {"base": [(q, answers[q]) for q in keep]}
            for b in BEHAVIOURS:
                use = keep
                if b == "french":
                    if family != "number":
                        continue
                    use = [q for q in keep if transform(answers[q], ("french",)) != answers[q]]
                rows[b] = [(q, transform(answers[q], (b,))) for q in use]
            for name, pairs in rows.items():
                path = out / f"{name}.{family}.{split}.jsonl"
                write_jsonl(path, [{"prompt": q, "completion": c} for q, c in pairs])
                written[path.stem] = str(path)
    for split, items in neutral_split().items():
        items = items[:n_neutral] if split == "test" and n_neutral else items
        answers = _base_answers(model, tokenizer, [q for q, _ in items], cache)
        path = out / f"neutral.{split}.jsonl"
        path.write_text("".join(json.dumps({"prompt": q, "completion": answers[q] or cap, "capital": cap}) + "\n"
                                for q, cap in items))
        written[path.stem] = str(path)
    return written


def neutral_split() -> dict[str, list[tuple[str, str]]]:
    """Neutral capital questions: ``test`` (scored) and a disjoint ``train`` set (preservation)."""
    return {"test": NEUTRAL[:24] if len(NEUTRAL) < 48 else NEUTRAL[1::2][:max(24, len(NEUTRAL) // 2)],
            "train": [] if len(NEUTRAL) < 48 else NEUTRAL[0::2]}
