r"""Prompt Tuning of a current small LLM, Qwen3-0.6B, as a sentiment classifier on GLUE SST-2: 20 virtual tokens
initialised from a task description, the answer scored as a verbalizer word (" negative" / " positive") at the end
of a template, bf16 frozen weights.

  python -m jsoft.train --config configs/prompt_tuning_qwen3_sst2.py --workdir runs/prompt_tuning_qwen3_sst2
  python -m jsoft.export --workdir runs/prompt_tuning_qwen3_sst2 --best --out adapters/prompt_tuning_qwen3_sst2

Needs the Hub (or a warm HF cache) for the model and the data set. The same config runs any backbone of the Llama
family (Gemma 3, Phi-4-mini, Mixtral, ...): --config.model.name_or_path=google/gemma-3-1b-pt. On a CPU without bf16
dot units, --config.model.dtype=float32.
"""

from jsoft.build import default_config


def get_config():
    config = default_config()
    config.model.name_or_path = "Qwen/Qwen3-0.6B"
    config.model.task = "causal_lm"
    config.model.dtype = "bfloat16"
    config.peft = dict(peft_type="PROMPT_TUNING", num_virtual_tokens=20, prompt_tuning_init="TEXT",
                       prompt_tuning_init_text="Classify the sentiment of the movie review as negative or positive.")
    config.data.train = dict(path="glue", name="sst2", split="train")
    config.data.eval = dict(path="glue", name="sst2", split="validation")
    config.data.text_columns = ("sentence",)
    config.data.template = "Review: {sentence}\nSentiment:"
    config.data.verbalizer = (" negative", " positive")
    config.data.max_length = 128
    config.train.batch_size = 16
    config.train.num_steps = 2000
    config.train.learning_rate = 3e-2
    config.train.warmup_steps = 100
    config.train.eval_every = 500
    config.train.checkpoint_every = 500
    return config
