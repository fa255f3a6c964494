"""d2f's built-in world: procedurally drawn shapes data, two tiny SD-format priors trained on it, and an
evaluator that scores samples. It plugs into training through ``d2f.world.data.builtin_data``. What made the
shipped priors and evaluator (``python -m d2f.world.build``) lives apart in ``d2f.world.build``."""
