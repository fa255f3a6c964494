"""d2f's built-in world: procedurally drawn shapes data, two tiny SD-format priors trained on it, and an
evaluator that scores samples. It plugs into training through ``d2f.world.data.builtin_data``."""
