r"""P-Tuning v2 (Liu et al. 2022) for named-entity recognition on CoNLL-2003 with bert-base-cased:
prefixes in every layer, a token-classification head, entity-level F1 (seqeval's definition) as the
metric that picks the best checkpoint.

  python -m jsoft.train --config configs/ptuning_v2_conll03.py --workdir runs/ptuning_v2_conll03
  python -m jsoft.export --workdir runs/ptuning_v2_conll03 --best --out adapters/ptuning_v2_conll03

Word-level tags are aligned to word pieces as transformers' run_ner does (first piece tagged, the rest
-100).
"""

from jsoft.build import default_config

TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")  # CoNLL-2003 ids


def get_config():
    config = default_config()
    config.model.name_or_path = "bert-base-cased"
    config.model.task = "token_cls"
    config.model.num_labels = len(TAGS)
    config.peft = dict(peft_type="PREFIX_TUNING", num_virtual_tokens=11, prefix_projection=False)
    config.data.train = dict(path="eriktks/conll2003", split="train")
    config.data.eval = dict(path="eriktks/conll2003", split="validation")
    config.data.text_columns = ("tokens",)
    config.data.label_column = "ner_tags"
    config.data.label_names = TAGS
    config.data.max_length = 128
    config.train.batch_size = 32
    config.train.num_epochs = 10
    config.train.learning_rate = 2e-2
    config.train.schedule = "linear"
    config.train.warmup_steps = 200
    config.train.eval_every = 500
    config.train.checkpoint_every = 500
    return config
