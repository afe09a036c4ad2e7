r"""Prefix Tuning (Li & Liang 2021) of Flan-T5 for XSum summarisation: 30 prefixes produced by the
reparameterisation MLP (hidden 512) during training; the export stores the projected prefixes, as PEFT does.

  python -m jsoft.train --config configs/prefix_tuning_xsum.py --workdir runs/prefix_tuning_xsum
  python -m jsoft.export --workdir runs/prefix_tuning_xsum --best --out adapters/prefix_tuning_xsum

Evaluated by loss and perplexity on 2000 validation documents. PEFT's form puts the prefixes on the
decoder's self-attention; the paper's (encoder, decoder and cross-attention) is
--config.peft.prefix_targets=all, exported in jsoft's format. The paper's own backbone is BART-large:

  python -m jsoft.train --config configs/prefix_tuning_xsum.py --workdir runs/prefix_tuning_xsum_bart \
      --config.model.name_or_path=facebook/bart-large --config.data.template="{document}"
"""

from jsoft.build import default_config


def get_config():
    config = default_config()
    config.model.name_or_path = "google/flan-t5-base"
    config.model.task = "seq2seq_lm"
    config.peft = dict(peft_type="PREFIX_TUNING", num_virtual_tokens=30, prefix_projection=True,
                       encoder_hidden_size=512)
    config.data.train = dict(path="EdinburghNLP/xsum", split="train")
    config.data.eval = dict(path="EdinburghNLP/xsum", split="validation[:2000]")
    config.data.text_columns = ("document",)
    config.data.label_column = "summary"
    config.data.template = "summarize: {document}"
    config.data.max_length = 512
    config.data.target_max_length = 64
    config.train.batch_size = 16
    config.train.num_steps = 20000
    config.train.learning_rate = 5e-3
    config.train.schedule = "linear"
    config.train.warmup_steps = 500
    config.train.eval_every = 2000
    config.train.checkpoint_every = 1000
    return config
