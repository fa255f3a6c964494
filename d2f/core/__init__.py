"""The math core of d2f (docs/math.md): schedules, the time map, the velocity from a network output.

Torch only: nothing here imports diffusers, the pipeline, training or the CLI.
"""
