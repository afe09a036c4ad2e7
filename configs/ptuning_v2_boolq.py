r"""P-Tuning v2 (Liu et al. 2022) on SuperGLUE BoolQ with roberta-large, as in the paper: 8 key/value prefixes in
every layer, RoBERTa's classification head (dense, tanh, out_proj on <s>) trained, the backbone frozen.

  python -m jsoft.train --config configs/ptuning_v2_boolq.py --workdir runs/ptuning_v2_boolq
  python -m jsoft.export --workdir runs/ptuning_v2_boolq --best --out adapters/ptuning_v2_boolq

Needs the Hub (or a warm HF cache) for the model and the data set. Question and passage are a text pair
(`<s> question </s></s> passage </s>`). On an accelerator add --config.model.dtype=bfloat16.
"""

from jsoft.build import default_config


def get_config():
    config = default_config()
    config.model.name_or_path = "FacebookAI/roberta-large"
    config.model.task = "seq_cls"
    config.peft = dict(peft_type="PREFIX_TUNING", num_virtual_tokens=8, prefix_projection=False)
    config.data.train = dict(path="aps/super_glue", name="boolq", split="train")
    config.data.eval = dict(path="aps/super_glue", name="boolq", split="validation")
    config.data.text_columns = ("question", "passage")
    config.data.max_length = 256
    config.train.batch_size = 32
    config.train.num_epochs = 100
    config.train.learning_rate = 5e-3
    config.train.eval_every = 1000
    config.train.checkpoint_every = 1000
    return config
