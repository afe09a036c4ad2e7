r"""P-Tuning v2 (Liu et al. 2022) on GLUE SST-2 with bert-base-uncased: 20 key/value prefixes in every layer
and a trained classification head, the backbone frozen.

  python -m jsoft.train --config configs/ptuning_v2_sst2.py --workdir runs/ptuning_v2_sst2
  python -m jsoft.export --workdir runs/ptuning_v2_sst2 --best --out adapters/ptuning_v2_sst2

Needs the Hub (or a warm HF cache) for the model and the data set. On an accelerator add
--config.model.dtype=bfloat16; on a pod, --config.mesh.fsdp=N shards the frozen weights.
"""

from jsoft.build import default_config


def get_config():
    config = default_config()
    config.model.name_or_path = "bert-base-uncased"
    config.model.task = "seq_cls"
    config.peft = dict(peft_type="PREFIX_TUNING", num_virtual_tokens=20, prefix_projection=False)
    config.data.train = dict(path="glue", name="sst2", split="train")
    config.data.eval = dict(path="glue", name="sst2", split="validation")
    config.data.text_columns = ("sentence",)
    config.data.max_length = 128
    config.train.batch_size = 32
    config.train.num_epochs = 3
    config.train.learning_rate = 1e-2
    config.train.schedule = "linear"
    config.train.warmup_steps = 200
    config.train.eval_every = 500
    config.train.checkpoint_every = 500
    return config
