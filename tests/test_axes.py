"""Behaviour axes: the registry, the scorers on written examples, the neutral pool and its splits."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from unlock_lens.axes import (
    SPLIT_FRACTIONS,
    Axis,
    load_axes,
    make_scorer,
    neutral_requests,
    request_pool,
    score_texts,
    split_of,
)
from unlock_lens.errors import UnlockLensError

#: issue 24's plan (AXES_PLAN.md), copied here as the oracle for the registry's text
PLAN_INSTRUCTIONS = {
    "cot": "Think step by step, and show your reasoning before the answer.",
    "positive": "Answer in a very positive, cheerful and enthusiastic tone.",
    "negative": "Answer in a negative, gloomy and pessimistic tone.",
    "french": "Answer in French.",
    "spanish": "Answer in Spanish.",
    "german": "Answer in German.",
    "formal": "Answer in a formal, academic register.",
    "brief": "Answer in one short sentence.",
    "bullets": "Answer as a bulleted list.",
    "question": "End your answer by asking me a question.",
    "shouting": "ANSWER IN ALL CAPITAL LETTERS.",
    "cooking": "Relate your answer to cooking and food.",
    "sports": "Relate your answer to sports.",
    "pirate": "Answer like a pirate.",
}

CHAT = "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
NEUTRAL = [
    "Volcanoes are openings in the Earth's crust where molten rock, ash and gases escape. Most of "
    "them sit at the edges of tectonic plates, and some have been quiet for thousands of years.",
    "Public libraries lend books and give access to computers. Most are run by local councils, "
    "and many also hold events for children after school.",
]

#: axis -> (clearly present, clearly absent) texts, written before any model output was seen
EXAMPLES: dict[str, tuple[list[str], list[str]]] = {
    "cot": (
        ["Let's think step by step. First, the train leaves at 9. Next, the trip takes two hours. "
         "Therefore, the answer is 11.",
         "Step 1: Time zones follow the sun.\nStep 2: Each zone is about 15 degrees wide.\n"
         "Step 3: So there are about 24 zones. In conclusion, the answer is 24."],
        NEUTRAL,
    ),
    "positive": (
        ["Oh, the night sky is absolutely breathtaking! Every star is a little wonder, and gazing up "
         "always fills me with joy. You'll love it!",
         "What a wonderful question! Libraries are amazing places, and I love how they bring people "
         "together. You'll have a fantastic time!"],
        NEUTRAL,
    ),
    "negative": (
        ["Unfortunately, moving to a new city is usually lonely and stressful. Rents are too high, "
         "and things rarely work out as planned.",
         "Libraries are dying, sadly. The buildings are falling apart. It is a bleak, hopeless situation."],
        NEUTRAL,
    ),
    "french": (
        ["Les volcans sont des ouvertures dans la croûte terrestre par lesquelles s'échappent la "
         "lave, les cendres et les gaz.",
         "Les bibliothèques publiques prêtent des livres et donnent accès à des ordinateurs."],
        NEUTRAL + ["Los volcanes son aberturas en la corteza terrestre por donde escapan la lava y los gases."],
    ),
    "spanish": (
        ["Los volcanes son aberturas en la corteza terrestre por donde escapan la lava, la ceniza y los gases.",
         "Las bibliotecas públicas prestan libros y ofrecen acceso a ordenadores."],
        NEUTRAL + ["Les volcans sont des ouvertures dans la croûte terrestre par lesquelles s'échappe la lave."],
    ),
    "german": (
        ["Vulkane sind Öffnungen in der Erdkruste, durch die Lava, Asche und Gase austreten.",
         "Öffentliche Bibliotheken verleihen Bücher und bieten Zugang zu Computern."],
        NEUTRAL + ["Volcanoes are openings in the crust of the Earth through which lava and gases escape."],
    ),
    "formal": (
        ["Public libraries constitute essential institutions facilitating equitable access to "
         "information. Furthermore, they contribute substantially to community development.",
         "Volcanic activity originates predominantly at convergent and divergent tectonic boundaries, "
         "where magmatic material ascends through the lithosphere."],
        NEUTRAL + ["Yeah, libraries are pretty cool! You can grab books and stuff, and it's totally free."],
    ),
    "brief": (
        ["Libraries lend books for free.", "Volcanoes are openings where molten rock escapes."],
        NEUTRAL,
    ),
    "bullets": (
        ["Here are some facts:\n- Libraries lend books.\n- They offer computers.\n- They host events.",
         "1. Volcanoes release lava.\n2. They form at plate edges.\n3. Some are dormant."],
        NEUTRAL,
    ),
    "question": (
        ["Libraries lend books and host events. What kind of books do you like to read?",
         "Volcanoes form at plate edges. Have you ever seen one? 😊"],
        NEUTRAL + ["Do volcanoes erupt often? Not usually: most are quiet for centuries."],
    ),
    "shouting": (
        ["LIBRARIES LEND BOOKS AND OFFER COMPUTERS!", "VOLCANOES ARE OPENINGS IN THE EARTH'S CRUST."],
        NEUTRAL + ["NASA and the USA launched satellites in the 1950s."],
    ),
    "cooking": (
        ["Libraries are like a well-stocked kitchen: each book is an ingredient, and a good recipe "
         "needs the right flavour and spice, just as a meal needs salt.",
         "A volcano is like a pot of soup left to boil on the stove: the heat builds until the sauce "
         "bubbles over the pan."],
        NEUTRAL,
    ),
    "sports": (
        ["A library is like a team sport: the librarian is the coach, the readers are players, and "
         "every book you finish is a goal scored for the team.",
         "A volcano erupting is like a football stadium when the home team wins the championship."],
        NEUTRAL,
    ),
    "pirate": (
        ["Arr, matey! Libraries be treasure chests fer landlubbers, aye, full of booty for ye to plunder!",
         "Ahoy! Volcanoes be the angriest mountains on the seven seas, me hearties. Shiver me timbers!"],
        NEUTRAL,
    ),
}


@pytest.fixture(scope="module")
def axes() -> dict[str, Axis]:
    return load_axes()


# --- registry -----------------------------------------------------------------------------


def test_registry_has_the_plans_axes_and_instructions(axes):
    assert list(axes) == list(PLAN_INSTRUCTIONS)
    assert {name: a.instruction for name, a in axes.items()} == PLAN_INSTRUCTIONS
    assert axes["french"].params == {"language": "fr"}
    assert axes["negative"].params == {"polarity": "negative"}


def test_every_axis_has_written_examples(axes):
    assert set(EXAMPLES) == set(axes), "write present/absent examples for each new axis"


def test_formats_render_plain_and_chat(axes):
    from unlock_lens.random_models import build_tokenizer

    french = axes["french"]
    assert french.locked_format(chat=False).render("Tell me about owls.") == "Question: Tell me about owls.\nAnswer:"
    assert french.unlocked_format(chat=False).render("Tell me about owls.") == (
        "Answer in French.\n\nQuestion: Tell me about owls.\nAnswer:"
    )
    assert french.unlocked_format(chat=False).name == "french-unlocked"
    tokenizer = build_tokenizer(chat_template=CHAT)
    assert french.unlocked_format(chat=True).render("Tell me about owls.", tokenizer) == (
        "<|user|>\nAnswer in French.\n\nQuestion: Tell me about owls.\n<|assistant|>\n"
    )
    assert french.locked_format(chat=True).render("Tell me about owls.", tokenizer) == (
        "<|user|>\nQuestion: Tell me about owls.\n<|assistant|>\n"
    )
    with pytest.raises(UnlockLensError, match="has none"):
        french.locked_format(chat=True).render("Tell me about owls.", build_tokenizer())


def test_a_new_axis_is_one_entry(tmp_path, axes):
    path = tmp_path / "axes.toml"
    path.write_text(
        '[[axis]]\nname = "italian"\ndescription = "Italian."\ninstruction = "Answer in Italian."\n'
        'scorer = "language"\nlanguage = "it"\nthreshold = 0.5\n'
    )
    (italian,) = load_axes(path).values()
    assert italian.to_dict() == {"name": "italian", "description": "Italian.", "instruction": "Answer in Italian.",
                                 "scorer": "language", "threshold": 0.5, "language": "it"}
    # an entry read back from its own record is the same axis
    pirate = axes["pirate"].to_dict()
    (tmp_path / "pirate.toml").write_text("[[axis]]\n" + "".join(
        f"{k} = {json.dumps(v, ensure_ascii=False)}\n" for k, v in pirate.items()))
    assert load_axes(tmp_path / "pirate.toml") == {"pirate": axes["pirate"]}
    assert italian.present(["Le biblioteche pubbliche prestano libri e offrono l'accesso ai computer.",
                            NEUTRAL[0]]) == [True, False]


GOOD = 'name = "x"\ndescription = "d"\ninstruction = "Do x."\nthreshold = 0.5\n'


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (GOOD + 'scorer = "vibes"\n', r"axis 'x': unknown scorer 'vibes'; use one of \["),
        ('name = "x"\ninstruction = "Do x."\nscorer = "brevity"\nthreshold = 1\n', r"axis 'x': missing field\(s\) \['description'\]"),
        (GOOD + 'scorer = "language"\n', r"axis 'x': scorer 'language' takes the parameters \['language'\]; missing \['language'\]"),
        (GOOD + 'scorer = "brevity"\nlanguage = "fr"\n', r"unexpected \['language'\]: fix the entry"),
        (GOOD + 'scorer = "language"\nlanguage = "French"\n', "ISO 639-1 code"),
        (GOOD + 'scorer = "sentiment"\npolarity = "happy"\n', "polarity must be 'positive' or 'negative'"),
        (GOOD + 'scorer = "lexicon"\nwords = ["Pan", "frying pan"]\n', r"these are not: \['Pan', 'frying pan'\]"),
        (GOOD + 'scorer = "lexicon"\nwords = []\n', "words must be a non-empty list"),
        (GOOD + 'scorer = "lexicon"\nwords = "pan"\n', "words must be a non-empty list"),
        ('name = "x"\ndescription = "d"\ninstruction = "Do x."\nscorer = "brevity"\nthreshold = "high"\n',
         "field 'threshold' must be a number"),
        ('name = "X y"\ndescription = "d"\ninstruction = "Do x."\nscorer = "brevity"\nthreshold = 1\n', "lower-case slug"),
        (GOOD + 'scorer = "brevity"\n[[axis]]\n' + GOOD + 'scorer = "brevity"\n', "axis 'x' is defined twice"),
        (GOOD + 'scorer = "brevity\n', "is not valid TOML"),
    ],
)
def test_bad_entries_name_the_entry_and_the_fix(tmp_path, entry, message):
    path = tmp_path / "axes.toml"
    path.write_text("[[axis]]\n" + entry)
    with pytest.raises(UnlockLensError, match=message):
        load_axes(path)


def test_bad_paths_and_names(tmp_path, axes):
    with pytest.raises(UnlockLensError, match="no axes file at"):
        load_axes(tmp_path / "missing.toml")
    (tmp_path / "empty.toml").write_text("title = 'no axes'\n")
    with pytest.raises(UnlockLensError, match=r"no \[\[axis\]\] entries"):
        load_axes(tmp_path / "empty.toml")
    with pytest.raises(UnlockLensError, match=r"unknown axis 'klingon'; the registry has \['cot'"):
        score_texts("klingon", ["x"])
    with pytest.raises(UnlockLensError, match="not one string"):
        axes["brief"].score("Libraries lend books.")
    with pytest.raises(UnlockLensError, match="'xx' is not one py3langid knows"):
        make_scorer("language", {"language": "xx"})


# --- scorers ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_scorer_separates_written_examples(axes, name):
    present, absent = EXAMPLES[name]
    axis = axes[name]
    assert axis.present(present) == [True] * len(present), list(zip(present, axis.score(present), strict=True))
    assert axis.present(absent) == [False] * len(absent), list(zip(absent, axis.score(absent), strict=True))
    assert score_texts(name, present) == axis.score(present)


def test_sentiment_is_vaders_compound_per_sentence(axes):
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    vader = SentimentIntensityAnalyzer()
    cheerful = "What a wonderful, amazing day, I love it!"
    assert axes["positive"].score([cheerful]) == [vader.polarity_scores(cheerful)["compound"]]
    assert axes["positive"].score([cheerful])[0] > 0.5
    assert axes["negative"].score([cheerful])[0] < -0.5
    two = "The weather is awful. The museum opens at nine."
    expected = (vader.polarity_scores("The weather is awful.")["compound"] + 0.0) / 2
    assert axes["negative"].score([two]) == pytest.approx([-expected])
    assert max(abs(x) for x in axes["positive"].score(NEUTRAL)) < 0.1
    assert axes["positive"].score(["Libraries lend books."]) == [0.0]  # no word in VADER's lexicon


def test_language_is_py3langids_probability(axes):
    import py3langid

    text = EXAMPLES["french"][0][0]
    assert py3langid.classify(text)[0] == "fr"
    p_fr, p_es, p_de = (axes[n].score([text])[0] for n in ("french", "spanish", "german"))
    assert p_fr > 0.95 and p_es < 0.03 and p_de < 0.03
    assert axes["french"].score([""])[0] < 0.05  # no features: py3langid's uniform distribution


def test_rule_scorers_give_exact_numbers(axes):
    assert axes["brief"].score(["Libraries lend books for free.", ""]) == [-5.0, -100.0]  # blank is not brief
    assert axes["bullets"].score(["Facts:\n- one\n\n* two\n• three\n2) four\nEnd."]) == [4 / 6]
    assert axes["shouting"].score(["ABc d!", "123"]) == [0.5, 0.0]
    assert axes["question"].score(["Is it? No.", "No. Is it?\n", "Ready? Go!  😊", ""]) == [0.0, 1.0, 0.0, 0.0]
    # 2 of 8 words: "kitchen", and "recipes" by its plural
    assert axes["cooking"].score(["The kitchen keeps old recipes in a drawer."]) == [2 / 8]
    assert axes["pirate"].score(["Ahoy, cap'n! Ye be late."]) == [3 / 5]
    # kinds, not occurrences: "then" twice is one kind; "first" and "therefore" two more
    assert axes["cot"].score(["First it rains, then it pours, then it stops. Therefore it is wet."]) == [3.0]


def test_register_penalises_informal_markers():
    import textstat

    from unlock_lens.axes.scorers import INFORMAL_PENALTY, register

    text = "It's kinda cool, isn't it!"  # "it's", "kinda", "cool", "isn't", "!" over 5 words
    assert register(text) == pytest.approx(textstat.coleman_liau_index(text) - INFORMAL_PENALTY * 5 / 5)
    plain = "Volcanoes release molten rock."
    assert register(plain) == pytest.approx(textstat.coleman_liau_index(plain))


# --- the neutral pool ---------------------------------------------------------------------


def test_pool_is_large_unique_and_split_disjointly():
    from unlock_lens.axes.pool import TOPICS, normalise_request

    pool = request_pool()
    assert len(pool) >= 400 and len(TOPICS) >= 80
    assert len({normalise_request(r) for r in pool}) == len(pool)
    splits = {s: neutral_requests(s) for s in SPLIT_FRACTIONS}
    seen: set[str] = set()
    for name, requests in splits.items():
        assert not seen & set(requests), f"{name} shares requests with another split"
        seen |= set(requests)
        assert abs(len(requests) / len(pool) - SPLIT_FRACTIONS[name]) < 0.05, (name, len(requests))
        assert all(split_of(r) == name for r in requests)
    assert seen == set(pool)
    assert neutral_requests("eval") == splits["eval"]  # deterministic


def test_split_follows_the_normalised_text():
    request = "Tell me about owls."
    assert split_of(request) == split_of("  TELL me   about owls") == split_of("tell me about owls?!")
    assert {split_of(f"Tell me about topic number {i}.") for i in range(50)} == set(SPLIT_FRACTIONS)
    with pytest.raises(UnlockLensError, match=r"unknown request split 'test'; choose one of \['key'"):
        neutral_requests("test")


def test_pool_requests_are_neutral_on_every_content_axis(axes):
    pool = request_pool()
    for name in ["cot", "positive", "negative", "french", "spanish", "german", "bullets", "shouting",
                 "cooking", "sports", "pirate"]:
        flagged = [r for r, p in zip(pool, axes[name].present(pool), strict=True) if p]
        assert not flagged, (name, flagged[:5])
    assert max(abs(s) for s in axes["positive"].score(pool)) < 0.05


def test_the_readme_example_runs():
    from unlock_lens.random_models import build_tokenizer

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "load_axes()" in b)
    namespace = {"tokenizer": build_tokenizer(chat_template=CHAT)}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - README's own code
    assert namespace["prompts"][0].startswith("<|user|>\nAnswer in French.\n\nQuestion: ")
    assert len(namespace["prompts"]) == len(neutral_requests("key"))
    assert namespace["french"].present(namespace["outputs"]) == [True, False]
    assert score_texts("brief", namespace["outputs"]) == [-5.0, -3.0]
