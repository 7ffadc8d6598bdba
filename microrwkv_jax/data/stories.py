"""A built-in corpus of TinyStories-like children's stories with a known entropy floor.

Stories come from a small probabilistic grammar: every story is a sequence of weighted choices
(a character, a place, an object, a feeling, one of several plot shapes, ...), and later
sentences refer back to earlier choices (names, pronouns, objects) deterministically. The
grammar is unambiguous: `parse` recovers the one sequence of choices that produces a text,
so the exact probability of every story is known, and with it the corpus's entropy floor

    floor = sum over stories of -log p(story)  /  bytes (or tokens) of those stories.

No causal model can beat the floor on held-out stories in expectation; one that does is
seeing the future (as the published architecture does).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np


# --- The grammar language: literals with {variables}, sequences, weighted choices ---------------

@dataclasses.dataclass(frozen=True)
class Lit:
    """Text, with {var} filled in from variables bound by earlier choices."""
    text: str


@dataclasses.dataclass(frozen=True)
class Seq:
    parts: tuple


@dataclasses.dataclass(frozen=True)
class Option:
    weight: float
    node: object
    binds: tuple = ()          # (variable, value) pairs bound when this option is taken


@dataclasses.dataclass(frozen=True)
class Choice:
    name: str
    options: tuple

    @property
    def probs(self):
        w = np.array([o.weight for o in self.options], np.float64)
        return w / w.sum()


def seq(*parts):
    return Seq(tuple(Lit(p) if isinstance(p, str) else p for p in parts))


def choice(name, *options):
    """options: (weight, text_or_node) or (weight, text_or_node, {var: value})."""
    built = []
    for opt in options:
        weight, node, binds = (opt + ({},))[:3] if len(opt) == 2 else opt
        built.append(Option(weight, Lit(node) if isinstance(node, str) else node, tuple(sorted(binds.items()))))
    return Choice(name, tuple(built))


def words(name, items, bind: Optional[str] = None, decay: float = 0.85):
    """A choice among words with Zipf-like weights; optionally bound to a variable."""
    return choice(name, *[(decay ** i, w, {bind: w} if bind else {}) for i, w in enumerate(items)])


# --- The story grammar ---------------------------------------------------------------------------

GIRL = {"she": "she", "She": "She", "her": "her", "Her": "Her", "hers": "her"}
BOY = {"she": "he", "She": "He", "her": "his", "Her": "His", "hers": "him"}
NAMES = choice("hero", *[(w, n, {"name": n, **g}) for w, n, g in [
    (1.0, "Lily", GIRL), (0.9, "Tom", BOY), (0.8, "Mia", GIRL), (0.7, "Ben", BOY), (0.6, "Sue", GIRL),
    (0.55, "Max", BOY), (0.5, "Anna", GIRL), (0.45, "Sam", BOY), (0.4, "Zoe", GIRL), (0.35, "Leo", BOY),
    (0.3, "Ella", GIRL), (0.25, "Jack", BOY)]])
KIND = words("kind", ["girl", "boy", "bunny", "puppy", "kitten", "bear", "duck", "mouse"], bind="kind")
ADJ = words("adjective", ["little", "happy", "small", "kind", "curious", "brave", "shy", "silly"])
PLACE = words("place", ["park", "garden", "forest", "beach", "farm", "river", "town", "hill"], bind="place")
OBJECT = words("object", ["ball", "kite", "doll", "hat", "book", "cup", "toy car", "blanket"], bind="object")
COLOR = words("color", ["red", "blue", "yellow", "green", "pink", "purple", "big", "shiny"], bind="color")
FRIEND = choice("friend", *[(w, f"{article} {animal}", {"friend": f"the {animal}", "Friend": f"The {animal}"})
                            for w, article, animal in [(1.0, "a", "bird"), (0.8, "a", "frog"), (0.7, "a", "dog"),
                                                       (0.6, "an", "old owl"), (0.5, "a", "squirrel"), (0.4, "a", "fox")]])
SAD = words("sad", ["sad", "upset", "worried", "scared", "lonely"])
GLAD = words("glad", ["happy", "glad", "proud", "excited", "thankful"])
FOOD = words("food", ["cake", "cookies", "soup", "bread", "pie", "apples"], bind="food")
WEATHER = words("weather", ["sunny", "rainy", "windy", "cold", "warm", "snowy"])
HIDE = words("hiding", ["a tree", "a rock", "the bed", "a bush", "a box", "the table"])
GAME = words("game", ["tag", "hide and seek", "catch", "house", "ball"])

OPENING = choice(
    "opening",
    (3, seq("Once upon a time, there was a ", ADJ, " ", KIND, " named ", NAMES, ".")),
    (2, seq("One day, a ", ADJ, " ", KIND, " named ", NAMES, " went to the ", PLACE, ".")),
    (1, seq("There was a ", KIND, " called ", NAMES, " who lived near the ", PLACE, ".")),
)

LOST = seq(
    " {name} had a ", COLOR, " ", OBJECT, ". {She} loved it very much. One day, {she} lost {her} {object}.",
    " {name} felt ", SAD, ". ",
    choice("helper",
           (2, seq("{She} asked ", FRIEND, " for help. They looked everywhere.")),
           (1, seq("{She} looked everywhere by {hers}self."))),
    " At last, {she} found the {object} under ", HIDE, ". {name} was so ", GLAD, "!",
)
FRIENDSHIP = seq(
    " {name} saw ", FRIEND, " at the ", PLACE, ". {Friend} looked ", SAD, ".",
    " {name} said, \"Do you want to play ", GAME, " with me?\"",
    choice("answer",
           (3, seq(" {Friend} said yes. They played all day and became best friends.")),
           (1, seq(" {Friend} said no. {name} shared {her} ", FOOD, ", and then they played together."))),
)
BAKING = seq(
    " It was a ", WEATHER, " day. {name} wanted to make ", FOOD, " with {her} ",
    words("parent", ["mom", "dad", "grandma", "grandpa"], bind="parent"), ".",
    " They mixed and baked and waited.",
    choice("outcome",
           (3, seq(" The {food} was yummy. {name} gave some to ", FRIEND, ".")),
           (1, seq(" Oops! The {food} was burnt. They laughed and tried again."))),
)
ADVENTURE = seq(
    " It was ", WEATHER, " outside. {name} went to the ", PLACE, " with {her} ", OBJECT, ".",
    " There {she} heard a strange sound. It was ", FRIEND, "!",
    choice("problem",
           (2, seq(" {Friend} was stuck in ", HIDE, ". {name} helped and {friend} was free.")),
           (1, seq(" {Friend} was lost. {name} showed the way home."))),
)
PLOT = choice("plot", (3, LOST), (3, FRIENDSHIP), (2, BAKING), (2, ADVENTURE))
ENDING = choice(
    "ending",
    (3, Lit(" The end.")),
    (2, seq(" {name} was ", GLAD, " and went home to sleep.")),
    (2, seq(" From that day on, {name} always remembered to be kind.")),
    (1, Lit(" And they all lived happily ever after.")),
)
STORY = seq(OPENING, PLOT, ENDING)


# --- Sampling and parsing ------------------------------------------------------------------------

def _fill(text: str, env: dict) -> str:
    return text.format(**env) if "{" in text else text


def sample_story(rng: np.random.Generator, grammar=STORY):
    """Returns (text, choices [(name, option index)], log-probability in nats)."""
    out, choices, logp = [], [], 0.0

    def walk(node, env):
        nonlocal logp
        if isinstance(node, Lit):
            out.append(_fill(node.text, env))
        elif isinstance(node, Seq):
            for part in node.parts:
                env = walk(part, env)
        else:
            probs = node.probs
            i = int(rng.choice(len(probs), p=probs))
            choices.append((node.name, i))
            logp += math.log(probs[i])
            option = node.options[i]
            env = walk(option.node, {**env, **dict(option.binds)})
        return env

    walk(grammar, {})
    return "".join(out), choices, logp


def parse(text: str, grammar=STORY):
    """All (choices, log-probability) whose derivation produces exactly `text`."""
    def walk(node, pos, env):
        """Yield (pos, env, choices, logp) for each way `node` matches text[pos:]."""
        if isinstance(node, Lit):
            s = _fill(node.text, env)
            if text.startswith(s, pos):
                yield pos + len(s), env, (), 0.0
        elif isinstance(node, Seq):
            yield from walk_seq(node.parts, pos, env)
        else:
            probs = node.probs
            for i, option in enumerate(node.options):
                for end, env2, ch, lp in walk(option.node, pos, {**env, **dict(option.binds)}):
                    yield end, env2, ((node.name, i),) + ch, math.log(probs[i]) + lp

    def walk_seq(parts, pos, env):
        if not parts:
            yield pos, env, (), 0.0
            return
        for mid, env2, ch1, lp1 in walk(parts[0], pos, env):
            for end, env3, ch2, lp2 in walk_seq(parts[1:], mid, env2):
                yield end, env3, ch1 + ch2, lp1 + lp2

    return [(list(ch), lp) for end, _, ch, lp in walk(grammar, 0, {}) if end == len(text)]


def story_log_prob(text: str) -> float:
    """log p(text) under the grammar (sum over parses; there is exactly one for its stories)."""
    parses = parse(text)
    if not parses:
        raise ValueError(f"not a story of the grammar: {text[:60]!r}")
    return float(np.logaddexp.reduce([lp for _, lp in parses]))


def is_story(text: str) -> bool:
    """Whether the grammar produces `text` exactly (its `story_log_prob` is finite)."""
    return bool(parse(text))


def generate_stories(num_stories: int, seed: int):
    """`num_stories` stories and their log-probabilities (nats), from a seeded RNG."""
    rng = np.random.default_rng(seed)
    texts, logps = [], []
    for _ in range(num_stories):
        text, _, logp = sample_story(rng)
        texts.append(text)
        logps.append(logp)
    return texts, np.asarray(logps)


def entropy_floor(texts, logps, tokens_per_story=None) -> dict:
    """Nats per byte and, given token counts (each including its end-of-text), nats per token."""
    nats = -float(np.sum(logps))
    floor = {"nats_per_byte": nats / sum(len(t.encode("utf-8")) for t in texts), "nats_per_story": nats / len(texts)}
    if tokens_per_story is not None:
        floor["nats_per_token"] = nats / float(np.sum(tokens_per_story))
    return floor
