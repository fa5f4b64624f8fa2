"""The embedded demo task: short sentences about one of four topics, generated in-process.

In distribution (`demo`): templates and words from a fixed pool, with 10% of sentences mixing two
topics (their label drawn between the two) so that some uncertainty is irreducible.
Shifted (`demo` with subtask `shifted`): the same four labels, but held-out words, other templates and
more mixing -- the model is right less often there, which is where calibration matters.
"""
from __future__ import annotations

import random

DEMO_LABELS = ("sports", "food", "weather", "technology")
SIZES = {"train": 800, "validation": 200, "test": 400}
DATA_SEED = 1234

WORDS = {
    "sports": ["football", "the goalkeeper", "the marathon", "tennis", "the referee", "basketball", "the striker",
               "the league", "the coach", "swimming", "the tournament", "the team", "the stadium", "the final score",
               "the transfer window", "the match", "golf", "the olympics", "the relay race", "the defender"],
    "food": ["the pasta", "the soup", "the chef", "dessert", "the bakery", "the salad", "breakfast", "the pizza",
             "the recipe", "the cheese", "the restaurant", "the bread", "the sauce", "the dinner party", "the vegetables",
             "the cake", "the grill", "the seafood", "the farmers market", "the coffee"],
    "weather": ["the rain", "the storm", "the forecast", "snow", "the wind", "the clouds", "the heatwave", "fog",
                "the thunder", "the temperature", "the sunshine", "the frost", "the flood warning", "the hurricane",
                "the cold front", "the drought", "the rainbow", "the ice on the roads", "the weather report", "the lightning"],
    "technology": ["the laptop", "the software", "the smartphone", "the server", "the app", "the processor",
                   "the network", "the robot", "the database", "the website", "the chip", "the update", "the battery life",
                   "the operating system", "the password", "the printer", "the data center", "the startup", "the code", "the screen"],
}
HELD_OUT = {
    "sports": ["the umpire", "cricket", "the sprinter", "the penalty kick", "the playoffs", "rugby", "the cyclist",
               "the championship belt", "the skier", "the boxing ring"],
    "food": ["the omelette", "the spices", "the barbecue", "the noodles", "the pastry", "the curry", "the menu",
             "the sushi", "the picnic basket", "the butcher"],
    "weather": ["the hailstorm", "the drizzle", "the humidity", "the blizzard", "the monsoon", "the breeze", "the tornado",
                "the overcast sky", "the sleet", "the barometer"],
    "technology": ["the compiler", "the router", "the algorithm", "the tablet", "the firmware", "the keyboard",
                   "the cloud storage", "the hard drive", "the bluetooth speaker", "the browser"],
}
OPENERS = ["", "Yesterday ", "This morning ", "Apparently ", "Last week ", "Once again "]
TEMPLATES = ["{o}{a} was the main topic.", "{o}everyone was talking about {a}.", "{o}I read a long article about {a}.",
             "{o}they could not stop thinking about {a}.", "{o}{a} changed a lot.", "{o}my friend asked me about {a}.",
             "{o}the news mentioned {a}.", "{o}we argued about {a}."]
SHIFTED_TEMPLATES = ["Honestly, nobody expected {a} to matter this much.", "My grandmother keeps complaining about {a}.",
                     "In the old days {a} was different.", "What do you think of {a}?", "A documentary about {a} won an award.",
                     "The podcast spent an hour on {a}."]
MIX_TEMPLATES = ["{a} and {b} were in the news.", "We discussed {a} while dealing with {b}.", "{a} was affected by {b}."]


def _sentence(rng: random.Random, words: dict, templates: list[str], mix_rate: float) -> tuple[str, int]:
    label = rng.randrange(len(DEMO_LABELS))
    a = rng.choice(words[DEMO_LABELS[label]])
    if rng.random() < mix_rate:
        other = rng.choice([i for i in range(len(DEMO_LABELS)) if i != label])
        b = rng.choice(words[DEMO_LABELS[other]])
        text = rng.choice(MIX_TEMPLATES).format(a=a, b=b)
        label = rng.choice([label, other])
    else:
        text = rng.choice(templates).format(a=a, o=rng.choice(OPENERS))
    return text[0].upper() + text[1:], label


def demo_rows(split: str, shifted: bool = False) -> list[dict]:
    """Rows `{"sentence", "label", "idx"}` of one split; the same on every call (fixed seed)."""
    rng = random.Random(f"{DATA_SEED}-{split}-{shifted}")
    if shifted and split == "test":
        words, templates, mix = HELD_OUT, SHIFTED_TEMPLATES, 0.25
    else:
        words, templates, mix = WORDS, TEMPLATES, 0.10
    rows = []
    for i in range(SIZES[split]):
        text, label = _sentence(rng, words, templates, mix)
        rows.append({"sentence": text, "label": label, "idx": i})
    return rows


def demo_datasetdict(shifted: bool = False):
    """The task as a `datasets.DatasetDict` (the layout `save_to_disk` writes for offline use)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
    features = Features({"sentence": Value("string"), "label": ClassLabel(names=list(DEMO_LABELS)), "idx": Value("int32")})
    return DatasetDict({s: Dataset.from_list(demo_rows(s, shifted), features=features) for s in SIZES})
