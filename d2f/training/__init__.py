"""``d2f train`` as a library: finetune an SD-format model with the Diff2Flow objective (or a baseline).

    from d2f.training import TrainConfig, train
    from d2f.world.data import builtin_data

    summary = train(TrainConfig(steps=200), builtin=builtin_data)

- ``config``: ``TrainConfig`` (every option) and its checks
- ``setup``: everything before the first step; ``loop``: ``train``, the loop, read top to bottom;
  ``step``: one training step on one page (batch, the parametrisation's loss, backward, clip, AdamW)
- ``data``: image-caption data (imagefolder, hub dataset, built-in names through a resolver)
- ``batches``: the cached VAE / text encodings and the reproducible draws of each step; ``BatchSource``, how a
  caller (``d2f.reflow``) brings batches of its own
- ``lora``: the adapter (peft) and saving it in diffusers' format
- ``ema``, ``checkpoint``, ``validation``, ``output``, ``record``: the rest of a run's life
- ``lock`` (one run per folder), ``resume`` and ``metrics`` (a resumed run ends as the uninterrupted one),
  ``faults`` (the test-only kill hook that checks it)
"""

from d2f.training.config import TrainConfig, check_config

__all__ = ["TrainConfig", "check_config", "train"]


def __getattr__(name):
    if name == "train":  # the loop imports accelerate (the ``train`` extra): only when asked for
        from d2f.training.loop import train

        return train
    raise AttributeError(f"module 'd2f.training' has no attribute {name!r}")
