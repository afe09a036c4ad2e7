r"""Prompt Tuning (Lester et al. 2021) of GPT-2 as a sentiment classifier on IMDB: 20 virtual tokens
initialised from the text "Classify the sentiment of the following text:", a verbalizer (" negative",
" positive") scored at the answer position, PEFT's recipe otherwise (AdamW, lr 3e-2, 100 warmup steps).

  python -m jsoft.train --config configs/prompt_tuning_imdb.py --workdir runs/prompt_tuning_imdb
  python -m jsoft.export --workdir runs/prompt_tuning_imdb --best --out adapters/prompt_tuning_imdb

Lester's own recipe: --config.train.optimizer=adafactor --config.train.learning_rate=0.3.
The eval split takes 1000 reviews of each class (IMDB's test split is sorted by label).
"""

from jsoft.build import default_config


def get_config():
    config = default_config()
    config.model.name_or_path = "gpt2"
    config.model.task = "causal_lm"
    config.peft = dict(peft_type="PROMPT_TUNING", num_virtual_tokens=20, prompt_tuning_init="TEXT",
                       prompt_tuning_init_text="Classify the sentiment of the following text:")
    config.data.train = dict(path="stanfordnlp/imdb", split="train")
    config.data.eval = dict(path="stanfordnlp/imdb", split="test[:1000]+test[-1000:]")
    config.data.template = "{text}\nSentiment:"
    config.data.verbalizer = (" negative", " positive")
    config.data.max_length = 512
    config.train.batch_size = 16
    config.train.num_steps = 3000
    config.train.learning_rate = 3e-2
    config.train.warmup_steps = 100
    config.train.eval_every = 500
    config.train.checkpoint_every = 500
    return config
