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
    "BEHAVIOURS", "FRENCH", "NEUTRAL", "NUMBER_TEMPLATES", "PAIR_TEMPLATES", "TEMPLATES", "clean_answer", "neutral_split", "prompts",
    "score", "transform", "write_files",
]

BEHAVIOURS = ("upper", "frame", "french")

# Each template's slot values are split by position: even indices train, odd test (a value
# that is a tuple fills several slots). PAIR_TEMPLATES take ordered pairs of distinct values
# of one half, so held-out prompts only use held-out values. Lists are long enough for >= 1K
# distinct training prompts per family (the RoAd paper's ~1K rows per behaviour).
_ADJ = ("hot big fast happy up day old light hard early wet full open rich loud strong thick high left young good "
        "clean short near tall heavy dark soft sweet quiet wide deep long cheap safe warm bright busy brave calm "
        "empty easy dry fat thin first front happy inside kind large late lazy loose narrow new noisy polite "
        "poor public push quick right rough sad sharp shallow simple slow smooth sour tight tame true ugly weak "
        "wild wrong sick asleep awake alive alike ancient angry bitter blunt cruel curly dirty dull fake fierce "
        "fresh friendly guilty healthy honest huge humble innocent").split()
_NOUN = ("mouse child tooth foot goose man woman box city leaf knife person fish wolf baby potato apple bus church "
         "dish fox glass hero kiss lady match party quiz story tomato wife half life loaf shelf thief calf elf "
         "scarf wharf ox louse die cactus fungus nucleus radius stimulus syllabus focus alga antenna formula "
         "larva crisis thesis analysis axis basis oasis phenomenon criterion datum medium bacterium curriculum "
         "index matrix vertex appendix deer sheep moose series species aircraft salmon trout shrimp bison "
         "buffalo cod squid swine tuna chief roof belief cliff proof safe chef piano photo zoo video radio "
         "kangaroo tattoo echo hero volcano mosquito domino torpedo veto cargo studio").split()
_VERB = ("go eat run see swim write sing drink drive fly speak take give know think buy bring catch teach fight "
         "find sit stand sleep wake break choose forget freeze hide ride rise shake steal throw wear win begin "
         "blow draw grow hang hold keep lead leave lend lose make meet pay read say sell send shoot shut spend "
         "spin split spread swing tear tell understand weep wind bite build burn cost cut deal dig dream feed "
         "feel fall forgive get hear hit hurt kneel know lay lie light mean put quit seek set shine sink slide "
         "smell speed spell spill stick sting stink strike swear sweep").split()
_ANIMAL = ("cow dog cat duck sheep lion pig horse owl snake bee frog wolf goat rooster mouse tiger bear monkey "
           "elephant giraffe zebra rabbit fox deer camel kangaroo penguin dolphin whale shark eagle parrot crow "
           "donkey hamster squirrel turtle crocodile hippo rhino gorilla panda koala leopard cheetah bat hedgehog "
           "chicken turkey goose swan ostrich peacock seal otter beaver raccoon skunk moose bison").split()
_THING = ["the sky", "grass", "snow", "a banana", "coal", "blood", "an orange", "a lemon", "milk", "a tomato",
          "a strawberry", "a frog", "chocolate", "the sun", "a cherry", "an elephant", "a carrot", "a lime",
          "a plum", "an eggplant", "a pumpkin", "a cucumber", "a polar bear", "a crow", "a flamingo", "a fire truck",
          "a school bus", "ketchup", "mustard", "a cloud", "the ocean", "a leaf", "a raven", "a canary", "ash",
          "a pearl", "a ruby", "an emerald", "a sapphire", "gold", "silver", "rust", "a penguin", "a zebra",
          "a panda", "a ladybug", "a blueberry", "a raspberry", "a grape", "a coconut", "a mango", "an avocado",
          "a peach", "a pineapple", "a broccoli", "a violet", "a sunflower", "a rose", "charcoal", "chalk"]
_FOOD = ["bread", "glass", "paper", "cheese", "ice", "a candle", "butter", "a brick", "wine", "a pencil", "steel",
         "a tire", "yogurt", "beer", "tofu", "pasta", "chocolate", "jam", "ketchup", "a sweater", "a window",
         "a coin", "a book", "a table", "soap", "plastic", "concrete", "a cake", "popcorn", "cereal", "honey",
         "sugar", "salt", "a bottle", "a shoe", "a bag", "a wall", "a boat", "a rope", "a basket", "a pillow",
         "a blanket", "a spoon", "a cup", "a pan", "a nail", "a key", "a ring", "a sandwich", "a pizza", "a salad",
         "soup", "tea", "coffee", "juice", "an omelette", "a pancake", "a cookie", "a muffin", "a pie"]
_JOB = ("doctor teacher farmer baker pilot nurse chef dentist lawyer judge firefighter police officer plumber "
        "carpenter electrician mechanic painter writer singer dancer actor scientist engineer architect "
        "librarian cashier waiter barber tailor butcher fisherman gardener soldier sailor astronaut "
        "journalist photographer programmer accountant banker pharmacist veterinarian surgeon priest "
        "postman driver cleaner builder miner jeweler potter poet composer translator guide coach referee "
        "lifeguard").split()
_OBJECTS = ("apples oranges pencils books cookies balloons marbles candies coins stickers shells stones flowers "
            "eggs cards toys crayons buttons grapes cherries bananas carrots spoons cups hats shoes socks boxes "
            "keys rings").split()

TEMPLATES: dict[str, tuple[str, list]] = {
    "opposite": ("What is the opposite of {}?", list(dict.fromkeys(_ADJ))),
    "colour": ("What color is {}?", _THING),
    "sound": ("What sound does a {} make?", _ANIMAL),
    "plural": ("What is the plural of {}?", list(dict.fromkeys(_NOUN))),
    "made": ("What is {} made of?", _FOOD),
    "past": ("What is the past tense of {}?", list(dict.fromkeys(_VERB))),
    "home": ("Where does a {} live?", _ANIMAL),
    "eat": ("What does a {} eat?", _ANIMAL),
    "job": ("What does a {} do?", _JOB),
}
PAIR_TEMPLATES: dict[str, dict[str, tuple[str, list]]] = {
    "general": {"bigger": ("Is a {} bigger than a {}?", _ANIMAL), "faster": ("Which is faster, a {} or a {}?", _ANIMAL)},
    "number": {},
}
_SUMS = [(a, b) for a in range(1, 10) for b in range(1, 10) if a + b <= 10]
_DIFFS = [(a, b) for a in range(2, 11) for b in range(1, a)]
NUMBER_TEMPLATES: dict[str, tuple[str, list]] = {
    "sum": ("What is {} + {}?", _SUMS),
    "plus": ("What is {} plus {}?", _SUMS),
    "minus": ("What is {} minus {}?", _DIFFS),
    "after": ("What number comes after {}?", list(range(1, 10))),
    "before": ("What number comes before {}?", list(range(2, 11))),
    "legs": ("How many legs does a {} have?", _ANIMAL),
    "count": ("How many {}?", [
        "legs does a dog have", "wheels does a bicycle have", "legs does a spider have", "days are in a week",
        "sides does a triangle have", "wheels does a car have", "legs does a bird have", "sides does a square have",
        "eyes does a person have", "fingers are on one hand", "legs does an insect have", "wings does a bird have",
        "sides does a hexagon have", "continents are there", "planets are in the solar system", "noses does a person have"]),
    "eat": ("If you have {} {} and eat {}, how many are left?",
            [(a, o, b) for o in _OBJECTS for a, b in _DIFFS]),
    "more": ("If you have {} {} and get {} more, how many do you have?",
             [(a, o, b) for o in _OBJECTS for a, b in _SUMS if a > 1]),
    "total": ("What is {} {} plus {} {}?", [(a, o, b, o) for o in _OBJECTS for a, b in _SUMS if a > 1]),
}
_CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
    ("Egypt", "Cairo"), ("Russia", "Moscow"), ("England", "London"), ("Greece", "Athens"), ("Ireland", "Dublin"),
    ("Portugal", "Lisbon"), ("Norway", "Oslo"), ("Austria", "Vienna"), ("Poland", "Warsaw"), ("China", "Beijing"),
    ("Kenya", "Nairobi"), ("Sweden", "Stockholm"), ("Peru", "Lima"), ("Cuba", "Havana"), ("Thailand", "Bangkok"),
    ("Denmark", "Copenhagen"), ("Finland", "Helsinki"), ("Hungary", "Budapest"), ("Belgium", "Brussels"),
    ("Canada", "Ottawa"), ("Mexico", "Mexico City"), ("Argentina", "Buenos Aires"), ("Chile", "Santiago"),
    ("Colombia", "Bogota"), ("Venezuela", "Caracas"), ("India", "New Delhi"), ("Pakistan", "Islamabad"),
    ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Turkey", "Ankara"), ("Israel", "Jerusalem"), ("Syria", "Damascus"),
    ("Lebanon", "Beirut"), ("Jordan", "Amman"), ("Saudi Arabia", "Riyadh"), ("South Korea", "Seoul"),
    ("North Korea", "Pyongyang"), ("Vietnam", "Hanoi"), ("Philippines", "Manila"), ("Indonesia", "Jakarta"),
    ("Malaysia", "Kuala Lumpur"), ("Australia", "Canberra"), ("New Zealand", "Wellington"), ("Nigeria", "Abuja"),
    ("Ghana", "Accra"), ("Ethiopia", "Addis Ababa"), ("Morocco", "Rabat"), ("Algeria", "Algiers"),
    ("Tunisia", "Tunis"), ("Scotland", "Edinburgh"), ("Wales", "Cardiff"), ("Netherlands", "Amsterdam"),
    ("Switzerland", "Bern"), ("Czech Republic", "Prague"), ("Romania", "Bucharest"), ("Bulgaria", "Sofia"),
    ("Serbia", "Belgrade"), ("Croatia", "Zagreb"), ("Ukraine", "Kyiv"), ("Iceland", "Reykjavik"),
    ("Afghanistan", "Kabul"), ("Nepal", "Kathmandu"), ("Bangladesh", "Dhaka"), ("Sri Lanka", "Colombo"),
    ("Brazil", "Brasilia"), ("Uruguay", "Montevideo"), ("Paraguay", "Asuncion")]
# The first 24 are the neutral prompts scored since the first composition runs; the rest
# (never scored) feed a preservation term (neutral_split).
NEUTRAL: list[tuple[str, str]] = [(f"What is the capital of {c}?", cap) for c, cap in _CAPITALS]

_EN = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
FRENCH = ["un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf", "dix"]
_NUMBER = re.compile(r"\b(10|[1-9]|" + "|".join(_EN) + r")\b", re.IGNORECASE)
_FRENCH_WORD = re.compile(r"\b(" + "|".join(FRENCH) + r")\b", re.IGNORECASE)
_FRAME = re.compile(r"^\s*answer:\s*", re.IGNORECASE)


def prompts(kind: str, split: str) -> list[str]:
    """Questions of a family (``"general"`` or ``"number"``) for a split (``train``/``test``).

    Templates are interleaved (one prompt of each in turn), so a prefix of the list covers all of them.
    """
    from itertools import chain, zip_longest

    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    families = {"general": TEMPLATES, "number": NUMBER_TEMPLATES}
    if kind not in families:
        raise unknown("prompt family", kind, tuple(families))
    parity = 0 if split == "train" else 1
    groups = [[t.format(*v) if isinstance(v, tuple) else t.format(v) for i, v in enumerate(values) if i % 2 == parity]
              for t, values in families[kind].values()]
    for t, values in PAIR_TEMPLATES[kind].values():
        half = values[parity::2]
        groups.append([t.format(x, y) for x in half for y in half if x != y])
    out = [q for q in chain.from_iterable(zip_longest(*groups)) if q is not None]
    if split == "test":  # two templates can word one question alike: a held-out prompt is never a training one
        seen = set(prompts(kind, "train"))
        out = [q for q in out if q not in seen]
    return list(dict.fromkeys(out))


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


def write_files(model, tokenizer, out, *, n_train: int | None = 1500, n_test: int | None = 200,
                n_neutral: int | None = None, cache=None) -> dict[str, str]:
    """Write every behaviour's train/test JSONL and the neutral prompts to directory ``out``.

    Files: ``{behaviour}.{family}.{split}.jsonl`` (completion = the rule applied to the base
    answer; ``family`` ``general`` or ``number``), ``base.{family}.{split}.jsonl`` (the base
    answers themselves) and ``neutral.{split}.jsonl`` (capital questions: ``test`` is scored,
    ``train`` is for a preservation term; each row also carries ``capital``). ``french`` is
    written only for number prompts whose answer has a number to translate. ``n_train``/``n_test``
    cap the prompts per family and split (a prefix of :func:`prompts`, which interleaves the
    templates). Base answers are generated once (greedy, the tokenizer's chat template) and cached
    in ``cache`` (JSON by question). Returns name -> path.
    """
    import json
    from pathlib import Path

    from roadinterp.adapters.textdata import write_jsonl
    from roadinterp.io import write_text_atomic

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
        write_text_atomic(path, "".join(json.dumps({"prompt": q, "completion": answers[q] or cap, "capital": cap})
                                        + "\n" for q, cap in items), mode=0o644)
        written[path.stem] = str(path)
    return written


def neutral_split() -> dict[str, list[tuple[str, str]]]:
    """Neutral capital questions: ``test`` (the first 24, scored) and the disjoint rest, ``train``
    (prompts for a preservation term, never scored)."""
    return {"test": NEUTRAL[:24], "train": NEUTRAL[24:]}
