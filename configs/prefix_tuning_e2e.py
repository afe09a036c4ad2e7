r"""Prefix Tuning (Li & Liang 2021) of GPT-2 medium on the E2E NLG data-to-text task: 10 prefixes in every
layer, produced by the reparameterisation MLP (hidden 512) during training; the loss is on the reference
text only, and every eval also generates (greedy, up to 64 tokens) and reports BLEU, ROUGE-L and exact match.

  python -m jsoft.train --config configs/prefix_tuning_e2e.py --workdir runs/prefix_tuning_e2e
  python -m jsoft.export --workdir runs/prefix_tuning_e2e --best --out adapters/prefix_tuning_e2e
  python -m jsoft.generate --model gpt2-medium --adapter adapters/prefix_tuning_e2e \
      --prompt "name[The Eagle], eatType[coffee shop], food[French] ||"

Needs the Hub (or a warm HF cache) for the model and the data set.
"""

from jsoft.build import default_config


def get_config():
    config = default_config()
    config.model.name_or_path = "gpt2-medium"
    config.model.task = "causal_lm"
    config.peft = dict(peft_type="PREFIX_TUNING", num_virtual_tokens=10, prefix_projection=True,
                       encoder_hidden_size=512)
    config.data.train = dict(path="tuetschek/e2e_nlg", split="train")
    config.data.eval = dict(path="tuetschek/e2e_nlg", split="validation[:500]")
    config.data.text_columns = ("meaning_representation",)
    config.data.label_column = "human_reference"
    config.data.template = "{meaning_representation} ||"
    config.data.max_length = 128
    config.train.batch_size = 8
    config.train.num_epochs = 5
    config.train.learning_rate = 5e-5
    config.train.schedule = "linear"
    config.train.eval_every = 2000
    config.train.eval_generate_tokens = 64
    config.train.best_metric = "bleu"
    return config
