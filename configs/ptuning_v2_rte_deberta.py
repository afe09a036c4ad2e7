r"""P-Tuning v2 (Liu et al. 2022) on SuperGLUE RTE with DeBERTa-v3-large: key/value prefixes in every layer and a
trained classifier, the backbone frozen. DeBERTa was the paper's strongest backbone; transformers' DeBERTa takes no
past_key_values, so PEFT cannot run these prefixes: the adapter exports in jsoft's format (prefixes take the
content score only, as in Liu et al.'s DeBERTa code).

  python -m jsoft.train --config configs/ptuning_v2_rte_deberta.py --workdir runs/ptuning_v2_rte_deberta
  python -m jsoft.export --workdir runs/ptuning_v2_rte_deberta --best --out adapters/ptuning_v2_rte_deberta

Needs the Hub (or a warm HF cache) for the model and the data set. Premise and hypothesis are a text pair
(`[CLS] premise [SEP] hypothesis [SEP]`). On an accelerator add --config.model.dtype=bfloat16. For a PEFT adapter,
--config.peft.peft_type=PROMPT_TUNING (or P_TUNING) trains an input prompt instead. The paper's own backbone was
DeBERTa v1: --config.model.name_or_path=microsoft/deberta-xlarge.
"""

from jsoft.build import default_config


def get_config():
    config = default_config()
    config.model.name_or_path = "microsoft/deberta-v3-large"
    config.model.task = "seq_cls"
    config.peft = dict(peft_type="PREFIX_TUNING", num_virtual_tokens=64, prefix_projection=False)
    config.data.train = dict(path="aps/super_glue", name="rte", split="train")
    config.data.eval = dict(path="aps/super_glue", name="rte", split="validation")
    config.data.text_columns = ("premise", "hypothesis")
    config.data.max_length = 256
    config.train.batch_size = 16
    config.train.num_epochs = 60
    config.train.learning_rate = 5e-3
    config.train.eval_every = 200
    config.train.checkpoint_every = 200
    return config
