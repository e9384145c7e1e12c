"""The neutral request pool: everyday open questions, instructions and short writing tasks that
ask for no sentiment, language, format, axis topic or step-by-step reasoning, so that an axis's
instruction alone decides the behaviour.

The requests are generated from the templates and topics below (``TOPIC_TEMPLATES`` x ``TOPICS``
plus ``ACTIVITY_TEMPLATES`` x ``ACTIVITIES``). They are this project's own text and ship under
its licence (MIT). Topics avoid the axes' own subjects (cooking and food, sports, the sea and
ships, feelings, countries whose language is an axis).

Each request belongs to one split, key / align / dev / eval, by the sha256 of its normalised
text (NFKC, case-folded, words only), so no request is in two splits and a request keeps its
split when the pool grows. Requests equal after normalisation are kept once. Within a split the
requests are in fingerprint order, so any prefix mixes templates and topics.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Mapping
from types import MappingProxyType

from unlock_lens.errors import UnlockLensError

#: share of the fingerprint space each split takes, in order
SPLIT_FRACTIONS: Mapping[str, float] = MappingProxyType({"key": 0.4, "align": 0.3, "dev": 0.1, "eval": 0.2})

TOPIC_TEMPLATES: tuple[str, ...] = (
    "Tell me about {}.",
    "Describe {}.",
    "What do you think about {}?",
    "Write a short note about {}.",
    "Explain {} to me.",
    "What should I know about {}?",
)
TOPICS: tuple[str, ...] = (
    "public libraries", "houseplants", "the moon", "volcanoes", "the water cycle", "time zones",
    "electric cars", "solar panels", "wind turbines", "the night sky", "photography", "museums",
    "bridges", "tunnels", "castles", "mountains", "deserts", "rivers", "forests", "snow",
    "thunderstorms", "rainbows", "clouds", "the postal service", "the printing press",
    "the internet", "passwords", "smartphones", "video calls", "remote work", "email",
    "public transport", "trains", "airports", "train stations", "hotels", "umbrellas", "clocks",
    "calendars", "maps", "the metric system", "recycling", "batteries", "elevators", "glass",
    "concrete", "owls", "honeybees", "butterflies", "elephants", "trees", "moss", "fossils",
    "dinosaurs", "the solar system", "satellites", "telescopes", "microscopes", "magnets",
    "electricity", "light bulbs", "radio", "television", "newspapers", "podcasts", "audiobooks",
    "handwriting", "typewriters", "keyboards", "spreadsheets", "budgeting", "insurance",
    "furniture", "traffic lights", "city parks", "city planning", "neighbours", "volunteering",
    "dogs", "cats", "architecture", "sleep", "morning routines", "paper", "pencils", "the wheel",
    "earthquakes", "glaciers", "caves", "the history of writing", "weather forecasts", "compasses",
    "coins", "postage stamps", "office chairs", "apartment buildings", "wildflowers", "frogs",
    "ants", "the seasons",
)
ACTIVITY_TEMPLATES: tuple[str, ...] = (
    "Give me advice on {}.",
    "What matters most when {}?",
    "Talk to me about {}.",
)
ACTIVITIES: tuple[str, ...] = (
    "moving to a new city", "saving money", "keeping a journal", "organising a desk",
    "preparing for a job interview", "learning to drive", "watering houseplants",
    "writing a cover letter", "choosing a laptop", "getting enough sleep", "managing my time",
    "studying for exams", "planning a trip", "taking photographs", "keeping a tidy home",
    "meeting new people", "working from home", "reading more books", "renting an apartment",
    "buying a used car", "painting a room", "preparing a presentation", "writing emails",
    "choosing a pet", "decorating a small flat", "keeping copies of my files", "starting a new job",
    "looking after a dog", "planning a monthly budget", "sorting old photos",
)


def normalise_request(text: str) -> str:
    """NFKC, case-folded, words only, one space apart: what the fingerprint sees."""
    return " ".join(re.findall(r"\w+", unicodedata.normalize("NFKC", text).casefold()))


def request_fingerprint(text: str) -> str:
    """sha256 hex digest of the normalised request."""
    return hashlib.sha256(normalise_request(text).encode("utf-8")).hexdigest()


def split_of(request: str) -> str:
    """The split (``key``, ``align``, ``dev``, ``eval``) a request belongs to, by its fingerprint."""
    position = int(request_fingerprint(request)[:15], 16) / 16**15  # uniform in [0, 1)
    edge = 0.0
    for split, fraction in SPLIT_FRACTIONS.items():
        edge += fraction
        if position < edge:
            return split
    return split  # the float sum may fall a hair under 1: the last split takes the rest


def request_pool() -> list[str]:
    """Every neutral request, duplicates (after normalisation) removed, in fingerprint order."""
    generated = [t.format(x) for t in TOPIC_TEMPLATES for x in TOPICS]
    generated += [t.format(x) for t in ACTIVITY_TEMPLATES for x in ACTIVITIES]
    unique = {request_fingerprint(r): r for r in reversed(generated)}  # the first spelling wins
    return [unique[f] for f in sorted(unique)]


def neutral_requests(split: str) -> list[str]:
    """The neutral requests of one split (``key``, ``align``, ``dev`` or ``eval``)."""
    if split not in SPLIT_FRACTIONS:
        raise UnlockLensError(f"unknown request split {split!r}; choose one of {list(SPLIT_FRACTIONS)}")
    return [r for r in request_pool() if split_of(r) == split]
