"""Models as diffusers pipelines, and images from them (the layer above the samplers and the scheduler).

- ``models``: the ``--model`` resolver (built-in name, local diffusers folder, single file, hub id), ``d2f models``
- ``run_folder``: the run folder of ``d2f train``, its files and its record ``d2f_run.json``
- ``loading``: ``load_pipeline(model, lora)``: a ``StableDiffusionPipeline`` with a LoRA or a run
- ``single_file``: a single-file checkpoint (.safetensors / .ckpt) through ``from_single_file``
- ``generate``: ``generate(pipe, prompts, ...)``: d2f's samplers on a pipeline's UNet
- ``images``: grids and PNG files
"""

from d2f.pipeline.generate import decode, generate, initial_noise, pipe_parametrization, sample_latents
from d2f.pipeline.images import save_grid, save_images, to_pil
from d2f.pipeline.loading import DEFAULT_MODEL, load_pipeline

__all__ = [
    "DEFAULT_MODEL",
    "decode",
    "generate",
    "initial_noise",
    "load_pipeline",
    "pipe_parametrization",
    "sample_latents",
    "save_grid",
    "save_images",
    "to_pil",
]
