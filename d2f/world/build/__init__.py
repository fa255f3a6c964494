"""The built-in world's factory: what makes the shipped assets (``d2f/assets``), kept apart from the runtime.

Nothing outside this package imports it (``tests/test_layers.py`` checks); it imports the runtime world
(shapes, evaluator, metrics) and the layers below, never the reverse. ``python -m d2f.world.build`` runs
``stages.main``.

- ``stages``: the build, stage by stage (tokenizer, VAE, priors, evaluator, quality, grid)
- ``tokenizer``: the byte-level BPE learnt from English words, SD's 77-token window
- ``corpus``: the broad image corpus the VAE learns from; ``vae_training``: the VAE
- ``components``: SD's components at tiny size; ``priors``: the priors' recipe; ``lr_schedule``
- ``evaluator_training``: the shapes evaluator (``d2f.world.evaluator``)
- ``sd_sized``: SD 1.5 / 2.1 at full size with random weights, for the real-size checks
"""
