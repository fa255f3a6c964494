"""``d2f reflow`` as a library: straighten a teacher's flow into a few-step, unguided student (rectified flow,
Liu et al. 2022, arXiv 2209.03003; InstaFlow, arXiv 2309.06380).

    from d2f.reflow import ReflowConfig, reflow

    summary = reflow(ReflowConfig(lora="runs/my-run", num_pairs=1024, train={"steps": 500}))

- ``pairs``: the teacher's (x0, x1) pairs, written to a folder of shards (atomic, resumable, checked)
- ``pair_batches``: the pairs folder's format, and its batches, which ``train(source=...)`` trains on
- ``run``: ``reflow``: the pairs, then ``d2f.training.train`` on them

The reflow layer sits above ``d2f.training`` (it drives it) and below ``d2f.world`` and the CLI.
"""

from d2f.reflow.pairs import PairSettings, generate_pairs
from d2f.reflow.run import ReflowConfig, reflow

__all__ = ["PairSettings", "ReflowConfig", "generate_pairs", "reflow"]
