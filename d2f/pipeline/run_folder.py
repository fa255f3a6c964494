"""The run folder: what ``d2f train`` writes and ``d2f sample`` (and plain diffusers) read. Defined here once.

| path | what |
| --- | --- |
| ``pytorch_lora_weights.safetensors`` | the LoRA, diffusers format: ``pipe.load_lora_weights(run)`` loads it |
| ``unet/`` | instead of the LoRA, for a full finetune (``--lora-rank 0``): a diffusers UNet folder |
| ``d2f_run.json`` | the run record (schema below), written atomically |
| ``metrics.jsonl`` | one JSON object per line: ``kind`` "train" (loss, lr, loss in t-bins) or "validation" |
| ``samples/step_XXXXX.png`` | validation grids |
| ``checkpoints/step_XXXXX/`` | resumable checkpoints (``d2f.training.checkpoint``) |
| ``d2f.lock`` | while a run trains: the pid and host of its process (``d2f.training.lock``) |
| ``.overwritten/`` | with ``--overwrite``, the old run, until the new one's first step (``d2f.training.output``) |

The run record (``d2f_run.json``), version ``RUN_RECORD_VERSION``. Keys sampling relies on:

- ``base_model``, ``base_model_source``: the ``--model`` given and where it was loaded from;
  ``model_config``: for a single-file model, the diffusers config it was loaded with (``--model-config``), else null;
- ``prediction_type``: epsilon, v_prediction or sample; ``objective``: diff2flow, fm or diffusion
  (``d2f.objectives``), which fixes how the run is sampled;
- ``sampler``, ``guidance``, ``sample_steps``: how the run is meant to be sampled (the defaults of
  ``d2f sample`` for this run); ``resolution``;
- ``schedule``: ``zero_terminal_snr``, t_min, t_max, the scheduler config the run trained on.

``data.fingerprint`` is a short hash of the training data as the trainer saw it (``--resume`` checks it).

Further keys describe the run (``settings``: every option; ``data``; ``lora``; ``versions``; ``status``:
running, finished or diverged; ``summary`` once finished).
"""

from __future__ import annotations

import json
from pathlib import Path

from d2f.errors import UserError
from d2f.files import write_json_atomic

RUNS_DIR = Path("runs")
RUN_FILE = "d2f_run.json"
LORA_FILE = "pytorch_lora_weights.safetensors"
CONV_IO_FILE = "unet_conv_io.safetensors"  # --train-conv-io: conv_in and conv_out, trained fully, beside the LoRA
CONV_IO_LAYERS = ("conv_in", "conv_out")
UNET_DIR = "unet"
METRICS_FILE = "metrics.jsonl"
SAMPLES_DIR = "samples"
CHECKPOINTS_DIR = "checkpoints"
LOCK_FILE = "d2f.lock"
OVERWRITTEN_DIR = ".overwritten"
RUN_RECORD_VERSION = 1
REQUIRED_KEYS = ("base_model", "prediction_type", "objective")
TIME_CONVENTION = "t=0 noise, t=1 data"


def write_run_record(folder: str | Path, record: dict) -> Path:
    """Write ``d2f_run.json`` (adding ``format`` and ``version``) atomically; returns its path."""
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise ValueError(f"a run record needs {', '.join(missing)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RUN_FILE
    write_json_atomic(path, {"format": "d2f-run", "version": RUN_RECORD_VERSION, **record})
    return path


def read_run(folder: str | Path) -> dict:
    """``d2f_run.json`` of a run folder, checked for the keys sampling needs."""
    path = Path(folder) / RUN_FILE
    try:
        run = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(
            f"cannot read {path} ({type(exc).__name__}); is {folder} a run folder of `d2f train`?"
        ) from None
    if not isinstance(run, dict) or any(k not in run for k in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(run, dict) or k not in run]
        raise UserError(f"{path} lacks {', '.join(missing)}; it was not written by `d2f train`")
    if run.get("version", 1) > RUN_RECORD_VERSION:
        raise UserError(
            f"{path} is a version {run['version']} run record, newer than this d2f reads "
            f"({RUN_RECORD_VERSION}); upgrade d2f"
        )
    return run


def has_weights(folder: Path) -> bool:
    """Whether a folder holds trained weights: a LoRA file or a full-finetune ``unet/``."""
    return (folder / LORA_FILE).is_file() or (folder / UNET_DIR / "config.json").is_file()


def latest_run(runs_dir: str | Path = RUNS_DIR) -> Path | None:
    """The run folder under ``runs_dir`` with weights whose ``d2f_run.json`` was modified last, or None."""
    runs = [p.parent for p in Path(runs_dir).glob(f"*/{RUN_FILE}") if has_weights(p.parent)]
    return max(runs, key=lambda r: (r / RUN_FILE).stat().st_mtime) if runs else None


def resolve_lora(lora: str | Path) -> tuple[Path, dict | None]:
    """(the weights, the run record or None) for ``--lora``: a run folder or a LoRA file. The weights are
    the LoRA .safetensors file, or the ``unet/`` folder of a full-finetune run."""
    path = Path(lora).expanduser()
    if path.is_dir():
        run = read_run(path) if (path / RUN_FILE).is_file() else None
        if (path / LORA_FILE).is_file():
            return path / LORA_FILE, run
        if run and (path / UNET_DIR / "config.json").is_file():
            return path / UNET_DIR, run
        pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.ckpt"))
        if pickles:
            raise UserError(_pickle_message(path / pickles[0]))
        raise UserError(f"{path} has no {LORA_FILE}; give a run folder of `d2f train` or a LoRA .safetensors file")
    if path.is_file() and path.suffix in (".bin", ".ckpt", ".pt", ".pth"):
        raise UserError(_pickle_message(path))
    if path.is_file() and path.suffix == ".safetensors":
        return path, None
    raise UserError(
        f"LoRA {lora} does not exist or is not a .safetensors file; give a run folder of `d2f train` "
        "or a LoRA .safetensors file"
    )


def _pickle_message(path: Path) -> str:
    return (
        f"{path} is a pickle file; d2f loads only safetensors, because unpickling runs code from the file. "
        "Convert it where you trust it (safetensors.torch.save_file) and pass the .safetensors file"
    )
