"""Generate jsoft's bundled binary sentiment data set (`jsoft:sentiment`).

    python scripts/make_sentiment_data.py            # rewrites jsoft/assets/sentiment/{train,eval}.jsonl
    python scripts/make_sentiment_data.py --check    # exits 1 if the shipped files differ from the output

Rows are `{"text": str, "label": 0|1}` (1 = positive), lower-case, exactly balanced, no duplicates.
The output depends only on SEED (the only randomness is `random.Random(SEED).random()`, whose sequence
Python guarantees across versions), so the shipped files are reproducible.

Grammar (`p` is the polarity the sentence must have; `~p` the opposite):

    sentence(p) := clause(p)                                (60%)
                 | clause(~p) " but " clause(p)             (20%)  the second clause decides
                 | "although " clause(~p) ", " clause(p)    (10%)  the main clause decides; no "what a" here
                 | clause1(p) " and " clause1(p)            (10%)  both agree
    clause(p)   := clause1(p) (70%) | negated(p) (30%)
    clause1(p)  := "the {noun} was {intensifier} {adj(p)}"
                 | "i {adverb} {verb_past(p)} the {noun}"  |  "i {adverb} {verb_past(p)} this {noun}"
                 | "what a {adverb} {adj(p)} {noun}"
                 | "the {noun} was a {sentiment_noun(p)}"
    negated(p)  := "the {noun} was not {adj(~p)}"            negation flips the polarity
                 | "i did not {verb(~p)} the {noun}"

`{intensifier}` and `{adverb}` may be empty, and "a" becomes "an" before a vowel. Nouns, intensifiers,
adverbs and the function words are shared by both splits. The sentiment words (adjectives, verbs and
sentiment nouns) are HELD OUT: the train split uses only TRAIN_WORDS, the eval split only EVAL_WORDS,
and the two sets are disjoint. A model trained on train can only score well on eval if it maps words it
never saw during tuning (superb, loathed, fiasco, ...) to the right polarity, i.e. if it relies on the
frozen backbone's pretrained knowledge of English.

Sentences have at most 16 words; with BERT's uncased WordPiece vocabulary they are at most 24 word
pieces including [CLS] and [SEP], so training on them is fast on a CPU.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import random
import sys

SEED = 20240917
N_TRAIN = 2000
N_EVAL = 400
OUT_DIR = pathlib.Path(__file__).resolve().parents[1] / "jsoft" / "assets" / "sentiment"

NOUNS = ("movie", "film", "plot", "story", "acting", "ending", "soundtrack", "script", "cast", "book",
         "album", "song", "show", "restaurant", "meal", "food", "service", "hotel", "room", "staff",
         "game", "phone", "camera", "product")
INTENSIFIERS = ("", "", "really", "very", "quite", "truly", "so", "extremely", "incredibly", "pretty",
                "absolutely")
ADVERBS = ("", "", "really", "truly", "absolutely")

# Per split and polarity (1 = positive, 0 = negative). Verbs are (lemma, past tense).
LEXICON = {
    "train": {
        "adj": {1: ("good", "great", "wonderful", "excellent", "brilliant", "amazing", "fantastic",
                    "enjoyable", "lovely", "beautiful"),
                0: ("bad", "awful", "terrible", "boring", "horrible", "dull", "poor", "weak", "ugly",
                    "annoying")},
        "verb": {1: (("love", "loved"), ("like", "liked"), ("enjoy", "enjoyed"), ("adore", "adored")),
                 0: (("hate", "hated"), ("dislike", "disliked"), ("despise", "despised"),
                     ("resent", "resented"))},
        "noun": {1: ("masterpiece", "joy", "treat", "winner"),
                 0: ("disaster", "mess", "failure", "flop")},
    },
    "eval": {
        "adj": {1: ("superb", "terrific", "marvelous", "splendid", "outstanding", "magnificent",
                    "fabulous", "charming", "stunning", "delightful"),
                0: ("dreadful", "atrocious", "abysmal", "tedious", "mediocre", "dismal", "appalling",
                    "pathetic", "lousy", "miserable")},
        "verb": {1: (("cherish", "cherished"), ("admire", "admired"), ("relish", "relished"),
                     ("treasure", "treasured")),
                 0: (("loathe", "loathed"), ("detest", "detested"), ("abhor", "abhorred"),
                     ("deplore", "deplored"))},
        "noun": {1: ("gem", "triumph", "marvel", "classic"),
                 0: ("fiasco", "letdown", "catastrophe", "travesty")},
    },
}


def sentiment_words(split: str) -> frozenset[str]:
    """Every sentiment word (adjective, verb form, sentiment noun) of one split's lexicon."""
    lex = LEXICON[split]
    words = set()
    for p in (0, 1):
        words.update(lex["adj"][p], lex["noun"][p])
        for verb in lex["verb"][p]:
            words.update(verb)
    return frozenset(words)


TRAIN_WORDS = sentiment_words("train")
EVAL_WORDS = sentiment_words("eval")
MAX_WORDS = 16


class _Sampler:
    """The grammar above, drawing every choice from one `random.Random.random()` stream."""

    def __init__(self, rng: random.Random, lex: dict):
        self.rng, self.lex = rng, lex

    def pick(self, seq):
        return seq[int(self.rng.random() * len(seq))]

    def weighted(self, options):
        total = sum(w for w, _ in options)
        x = self.rng.random() * total
        for w, option in options:
            x -= w
            if x < 0:
                return option
        return options[-1][1]

    def words(self, *parts: str) -> str:
        words = " ".join(p for p in parts if p).split()
        # "a" -> "an" before a vowel, wherever an article precedes the next word.
        return " ".join("an" if w == "a" and i + 1 < len(words) and words[i + 1][0] in "aeiou" else w
                        for i, w in enumerate(words))

    def clause1(self, p: int, exclaim: bool = True) -> str:
        lex = self.lex
        kind = self.pick(("was", "verb", "verb_this", "what", "noun") if exclaim
                         else ("was", "verb", "verb_this", "noun"))
        if kind == "was":
            noun, intensifier = self.pick(NOUNS), self.pick(INTENSIFIERS)
            return self.words("the", noun, "was", intensifier, self.pick(lex["adj"][p]))
        if kind in ("verb", "verb_this"):
            det = "the" if kind == "verb" else "this"
            return self.words("i", self.pick(ADVERBS), self.pick(lex["verb"][p])[1], det, self.pick(NOUNS))
        if kind == "what":
            return self.words("what a", self.pick(ADVERBS), self.pick(lex["adj"][p]), self.pick(NOUNS))
        return self.words("the", self.pick(NOUNS), "was a", self.pick(lex["noun"][p]))

    def negated(self, p: int) -> str:
        if self.rng.random() < 0.5:
            return self.words("the", self.pick(NOUNS), "was not", self.pick(self.lex["adj"][1 - p]))
        return self.words("i did not", self.pick(self.lex["verb"][1 - p])[0], "the", self.pick(NOUNS))

    def clause(self, p: int, exclaim: bool = True) -> str:
        return self.clause1(p, exclaim) if self.rng.random() < 0.7 else self.negated(p)

    def sentence(self, p: int) -> str:
        form = self.weighted([(6, "simple"), (2, "but"), (1, "although"), (1, "and")])
        if form == "simple":
            return self.clause(p)
        if form == "but":
            return f"{self.clause(1 - p)} but {self.clause(p)}"
        if form == "although":
            return f"although {self.clause(1 - p, False)}, {self.clause(p, False)}"
        return f"{self.clause1(p)} and {self.clause1(p)}"


def _split(rng: random.Random, split: str, n: int) -> list[dict]:
    sampler, seen, rows = _Sampler(rng, LEXICON[split]), set(), []
    for i in range(n):
        label = i % 2  # exactly balanced
        while True:
            text = sampler.sentence(label)
            if text not in seen and len(text.split()) <= MAX_WORDS:
                break
        seen.add(text)
        rows.append({"text": text, "label": label})
    for i in range(n - 1, 0, -1):  # Fisher-Yates on the same stream
        j = int(rng.random() * (i + 1))
        rows[i], rows[j] = rows[j], rows[i]
    return rows


def generate(seed: int = SEED, n_train: int = N_TRAIN, n_eval: int = N_EVAL) -> dict[str, list[dict]]:
    """{"train": rows, "eval": rows}; a pure function of its arguments."""
    rng = random.Random(seed)
    return {"train": _split(rng, "train", n_train), "eval": _split(rng, "eval", n_eval)}


def dumps(rows: list[dict]) -> str:
    """The exact bytes of a shipped .jsonl file."""
    return "".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=OUT_DIR)
    parser.add_argument("--check", action="store_true", help="compare with the files in --out, write nothing")
    args = parser.parse_args(argv)
    stale = []
    for split, rows in generate().items():
        path = args.out / f"{split}.jsonl"
        text = dumps(rows)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path} ({len(rows)} rows)")
    if stale:
        print("out of date (rerun without --check): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
