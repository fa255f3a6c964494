"""A test-only fault hook: make a run die by SIGKILL at a named point, to test that ``--resume`` recovers.

``D2F_KILL_AT=<point>`` in the environment makes the process kill itself (SIGKILL: no cleanup, no
``finally``, exactly like the OOM killer or a pulled plug) when it reaches that point. The points:

| point | where |
| --- | --- |
| ``step:N`` | after step N is done (logged, validated, checkpointed) |
| ``checkpoint:step_XXXXX:after=FILE`` | inside a checkpoint write, after FILE of its temporary folder |
| ``checkpoint:step_XXXXX:done`` | after the checkpoint folder is renamed into place, before old ones go |
| ``validation:N`` | after the grid of the validation at step N is saved, before its metrics line |
| ``finish:weights`` | after the final weights are saved, before the run record says "finished" |

Unset (always, outside the tests) it costs one dictionary lookup per point.
"""

from __future__ import annotations

import os
import signal

ENV = "D2F_KILL_AT"


def kill_point(point: str) -> None:
    """SIGKILL this process if ``D2F_KILL_AT`` names ``point``."""
    if os.environ.get(ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)
