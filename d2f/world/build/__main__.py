"""``python -m d2f.world.build``: rebuild the built-in world's assets (``stages.py`` has the stages)."""

from d2f.world.build.stages import main

main()
