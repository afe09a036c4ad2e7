"""ERNIE 1.0 / 2.0 / 3.0 (Baidu; nghuyong/ernie-3.0-*-zh and the like): BERT's encoder, pooler and heads, with a
task-type embedding added to the input embeddings (`use_task_id`). jsoft takes no task_type_ids: every token takes
task type 0, as transformers' ERNIE does when it is given none.

Module tree mirrors transformers' (`ernie.embeddings.task_type_embeddings`, `ernie.encoder.layer.0...`)."""

from __future__ import annotations

import dataclasses

from flax import nnx

from jsoft.models import bert
from jsoft.models.layers import DropoutRng, Precision, embed

TASKS = bert.TASKS
BASE_PREFIX = "ernie"
checkpoint_key = bert.checkpoint_key


@dataclasses.dataclass
class Config(bert.Config):
    task_type_vocab_size: int = 0  # rows of the task-type table (0: none, use_task_id false)

    @classmethod
    def from_hf(cls, hf: dict) -> Config:
        c = super().from_hf(hf)
        tasks = int(hf.get("task_type_vocab_size", 3)) if hf.get("use_task_id") else 0
        return dataclasses.replace(c, model_type="ernie", task_type_vocab_size=tasks)


class Embeddings(bert.Embeddings):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        super().__init__(c, p, rngs)
        self.task_type_embeddings = (embed(c.task_type_vocab_size, c.hidden_size, p, rngs=rngs, names=(None, "embed"))
                                     if c.task_type_vocab_size else nnx.data(None))

    def __call__(self, inputs_embeds, position_ids, token_type_ids, drop: DropoutRng):
        if self.task_type_embeddings is None:
            return super().__call__(inputs_embeds, position_ids, token_type_ids, drop)
        x = inputs_embeds + self.token_type_embeddings(token_type_ids) + self.position_embeddings(position_ids)
        x = x + self.task_type_embeddings.embedding[0]  # task type 0 at every token
        return drop(self.LayerNorm(x).astype(self.dtype), self.c.hidden_dropout)


class ErnieModel(bert.BertModel):
    embeddings_class = Embeddings


class Ernie(bert.Bert):
    base_prefix, model_class = BASE_PREFIX, ErnieModel


def build(c: Config, task, num_labels, p: Precision, rngs: nnx.Rngs) -> Ernie:
    return Ernie(c, task, num_labels, p, rngs)
