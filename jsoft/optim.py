"""Optimizers and learning-rate schedules for the trainable state (prompts, encoders, heads).

    tx, schedule = optim.make(config.train, num_steps)

train.optimizer: "adamw" (PEFT's examples; weight_decay default 0), "adafactor" (Lester et al. 2021:
factored second moments, decay rate 0.8, no parameter scaling, weight decay 1e-5, used with lr 0.3),
"sgd" (plain). train.schedule: "constant", "linear" (to 0 at the last step) or "cosine" (to 0), each after
`warmup_steps` of linear warmup from 0. `max_grad_norm` (> 0) clips by global norm first.
"""

from __future__ import annotations

from collections.abc import Callable

import optax

OPTIMIZERS = ("adamw", "adafactor", "sgd")
SCHEDULES = ("constant", "linear", "cosine")


def schedule(name: str, learning_rate: float, warmup_steps: int, num_steps: int) -> Callable:
    """Linear warmup from 0 to `learning_rate` over `warmup_steps`, then `name` until `num_steps`."""
    if name not in SCHEDULES:
        raise ValueError(f"train.schedule={name!r} is not valid; choose one of {list(SCHEDULES)}")
    if learning_rate <= 0:
        raise ValueError(f"train.learning_rate={learning_rate} must be positive")
    if warmup_steps < 0:
        raise ValueError(f"train.warmup_steps={warmup_steps} must be >= 0")
    decay_steps = max(num_steps - warmup_steps, 1)
    after = {
        "constant": optax.constant_schedule(learning_rate),
        "linear": optax.linear_schedule(learning_rate, 0.0, decay_steps),
        "cosine": optax.cosine_decay_schedule(learning_rate, decay_steps),
    }[name]
    if not warmup_steps:
        return after
    warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
    return optax.join_schedules([warmup, after], [warmup_steps])


def make(train, num_steps: int) -> tuple[optax.GradientTransformation, Callable]:
    """The optimizer described by the `train` config section, and its learning-rate schedule."""
    lr = schedule(train.schedule, float(train.learning_rate), int(train.warmup_steps), num_steps)
    name = train.optimizer
    wd = train.weight_decay
    if name == "adamw":
        opt = optax.adamw(lr, b1=train.b1, b2=train.b2, eps=train.eps, weight_decay=0.0 if wd is None else wd)
    elif name == "adafactor":
        opt = optax.adafactor(lr, decay_rate=0.8, multiply_by_parameter_scale=False, clipping_threshold=1.0,
                              weight_decay_rate=1e-5 if wd is None else wd or None)
    elif name == "sgd":
        opt = optax.chain(optax.add_decayed_weights(wd or 0.0), optax.sgd(lr))
    else:
        raise ValueError(f"train.optimizer={name!r} is not valid; choose one of {list(OPTIMIZERS)}")
    if train.max_grad_norm and train.max_grad_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(train.max_grad_norm), opt)
    return opt, lr
