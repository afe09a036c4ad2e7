r"""P-Tuning (Liu et al. 2021, "GPT Understands, Too") of gpt2-medium on SST-2: 20 virtual tokens produced
by a bidirectional LSTM + MLP prompt encoder, read as a cloze with a verbalizer (" terrible" / " great").

  python -m jsoft.train --config configs/p_tuning_sst2.py --workdir runs/p_tuning_sst2
  python -m jsoft.export --workdir runs/p_tuning_sst2 --best --out adapters/p_tuning_sst2

The PEFT export stores the encoder's output (PEFT's inference form); `--format jsoft` keeps the LSTM for
further training. The paper's template, virtual tokens around the sentence (exported in jsoft's format):
  python -m jsoft.train --config configs/p_tuning_sst2.py --workdir runs/p_tuning_sst2_template \
      --config.peft.num_virtual_tokens=6 "--config.peft.template=[P][P][P] [X] [P][P][P]"
"""

from jsoft.build import default_config


def get_config():
    config = default_config()
    config.model.name_or_path = "gpt2-medium"
    config.model.task = "causal_lm"
    config.peft = dict(peft_type="P_TUNING", num_virtual_tokens=20, encoder_reparameterization_type="LSTM",
                       encoder_hidden_size=512)
    config.data.train = dict(path="glue", name="sst2", split="train")
    config.data.eval = dict(path="glue", name="sst2", split="validation")
    config.data.text_columns = ("sentence",)
    config.data.template = "{sentence} It was"
    config.data.verbalizer = (" terrible", " great")
    config.data.max_length = 128
    config.train.batch_size = 32
    config.train.num_steps = 4000
    config.train.learning_rate = 1e-3
    config.train.warmup_steps = 200
    config.train.eval_every = 500
    config.train.checkpoint_every = 500
    return config
