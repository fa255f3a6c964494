"""``d2f export``: a d2f LoRA in the kohya / A1111 format, checked by loading it back with diffusers."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from d2f.cli import app
from d2f.errors import UserError


def unet_outputs(unet):
    g = torch.Generator().manual_seed(0)
    z, cond = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 16, 32, generator=g)
    with torch.no_grad():
        return unet(z, torch.tensor([10.0, 700.5]), encoder_hidden_states=cond).sample


@pytest.fixture(scope="module")
def alpha8_run(tmp_path_factory, tiny_sd_eps):
    """A run folder whose LoRA (attention and convolutions, rank 4) was saved by d2f with lora_alpha 8."""
    from diffusers import StableDiffusionPipeline

    from d2f.training.lora import add_lora, save_weights

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_eps)
    torch.manual_seed(0)
    add_lora(pipe.unet, 4, 8, "attn+conv")
    with torch.no_grad():  # lora_B starts at 0 (a no-op): make the adapter change the output
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    folder = tmp_path_factory.mktemp("alpha8")
    save_weights(pipe.unet, folder, 4)
    (folder / "d2f_run.json").write_text(
        json.dumps({"base_model": str(tiny_sd_eps), "prediction_type": "epsilon", "objective": "diff2flow"})
    )
    return folder


def test_kohya_export_loads_back_in_diffusers_with_the_runs_alpha(alpha8_run, tiny_sd_eps, tmp_path):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "kohya.safetensors"
    result = CliRunner().invoke(app, ["export", str(alpha8_run), "--format", "kohya", "--output", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"output": str(out), "format": "kohya"}
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # as any new file, not safetensors' 0600
    with safe_open(str(out), "pt") as f:
        keys = list(f.keys())
        alphas = {float(f.get_tensor(k)) for k in keys if k.endswith(".alpha")}
        assert f.metadata()["ss_network_alpha"] == "8" and f.metadata()["ss_network_dim"] == "4"
    assert all(k.startswith("lora_unet_") for k in keys) and alphas == {8.0}
    downs = [k for k in keys if k.endswith(".lora_down.weight")]
    assert len(downs) == sum(k.endswith(".lora_up.weight") for k in keys) == sum(k.endswith(".alpha") for k in keys)
    assert any("_resnets_" in k for k in downs) and any("_attn1_to_q" in k for k in downs)  # convs and attention

    native = StableDiffusionPipeline.from_pretrained(tiny_sd_eps)
    native.load_lora_weights(alpha8_run)
    kohya = StableDiffusionPipeline.from_pretrained(tiny_sd_eps)
    kohya.load_lora_weights(str(out))
    base = unet_outputs(StableDiffusionPipeline.from_pretrained(tiny_sd_eps).unet)
    # the same model: with alpha = rank (diffusers' converter default) the LoRA's effect would be halved
    torch.testing.assert_close(unet_outputs(kohya.unet), unet_outputs(native.unet), rtol=0, atol=1e-6)
    assert (unet_outputs(native.unet) - base).abs().max() > 1e-3


def test_export_errors_are_one_line(tmp_path, alpha8_run):
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(alpha8_run), "--format", "a1111-xl"])
    assert result.exit_code == 2 and "unknown export format 'a1111-xl'" in result.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "d2f_run.json").write_text((alpha8_run / "d2f_run.json").read_text())
    (tmp_path / "full" / "unet").mkdir()
    (tmp_path / "full" / "unet" / "config.json").write_text("{}")
    result = runner.invoke(app, ["export", str(tmp_path / "full")])
    assert result.exit_code == 2 and "full finetune" in result.stderr
    result = runner.invoke(app, ["export", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1


def test_peft_loads_the_adapter_without_diffusers(alpha8_run, tiny_sd_eps):
    """Beside the diffusers LoRA, d2f writes the adapter in peft's own format (adapter_config.json)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import PeftModel

    native = StableDiffusionPipeline.from_pretrained(tiny_sd_eps)
    native.load_lora_weights(alpha8_run)  # the extra files do not confuse diffusers
    peft_unet = PeftModel.from_pretrained(
        UNet2DConditionModel.from_pretrained(tiny_sd_eps, subfolder="unet"), alpha8_run
    )
    assert json.loads((alpha8_run / "adapter_config.json").read_text())["lora_alpha"] == 8
    torch.testing.assert_close(unet_outputs(peft_unet), unet_outputs(native.unet), rtol=0, atol=1e-6)


def d2f_export(*args):
    """``d2f export`` in a real process."""
    import subprocess
    import sys

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "d2f", "export", *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )


def one_error_line(result, *words):
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(word in lines[0] for word in words), lines[0]


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def run_copy(alpha8_run, tmp_path):
    import shutil

    return shutil.copytree(alpha8_run, tmp_path / "run")


def test_export_never_writes_over_the_runs_own_lora(run_copy, tmp_path):
    """The data-loss case of issue #21: exporting onto the run's own diffusers LoRA (by name, by a symlink or a
    hard link, with or without --overwrite) is refused; the run is unchanged and still exports."""
    before = snapshot(run_copy)
    lora = run_copy / "pytorch_lora_weights.safetensors"
    for extra in ([], ["--overwrite"]):
        one_error_line(d2f_export(run_copy, "--output", lora, *extra), "is the LoRA being exported")
        one_error_line(d2f_export(lora, "--output", lora, *extra), "is the LoRA being exported")
    (tmp_path / "link.safetensors").symlink_to(lora)
    os.link(lora, tmp_path / "hard.safetensors")
    runner = CliRunner()
    for name in ("link.safetensors", "hard.safetensors"):
        result = runner.invoke(app, ["export", str(run_copy), "--output", str(tmp_path / name), "--overwrite"])
        assert result.exit_code == 2 and "is the LoRA being exported" in result.stderr, result.output
    for owned in ("adapter_model.safetensors", "checkpoints/step_00001/x.safetensors", "samples/x.safetensors"):
        result = runner.invoke(app, ["export", str(run_copy), "--output", str(run_copy / owned), "--overwrite"])
        assert result.exit_code == 2 and "a file of the run" in result.stderr, result.output
    assert snapshot(run_copy) == before
    result = d2f_export(run_copy, "--json")  # still a LoRA d2f can export
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["output"] == str(run_copy / "pytorch_lora_weights_kohya.safetensors")


def test_export_output_rules(run_copy, tmp_path):
    runner = CliRunner()

    def export(*args):
        return runner.invoke(app, ["export", str(run_copy), *map(str, args)])

    result = export("--output", tmp_path / "k.txt")
    assert result.exit_code == 2 and "needs the .safetensors suffix, e.g. " in result.stderr
    result = export("--output", tmp_path)
    assert result.exit_code == 2 and "is a folder" in result.stderr
    assert not (tmp_path / "k.txt").exists()
    existing = tmp_path / "mine.safetensors"
    existing.write_bytes(b"someone's file")
    result = export("--output", existing)
    assert result.exit_code == 2 and "exists; pass --overwrite to replace it" in result.stderr
    assert existing.read_bytes() == b"someone's file"
    assert export("--output", existing, "--overwrite").exit_code == 0
    with safe_open(str(existing), "pt") as f:
        assert f.metadata()["ss_network_alpha"] == "8"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.safetensors", "run"]  # no temporary file left
    assert export().exit_code == 0 and export().exit_code == 2  # the default file too: once, then --overwrite
    assert export("--overwrite").exit_code == 0


def lora_variant(run_copy, change):
    """``run_copy`` with its LoRA file rewritten by ``change(tensors) -> tensors`` (the metadata kept)."""
    from safetensors.torch import save_file

    lora = run_copy / "pytorch_lora_weights.safetensors"
    with safe_open(str(lora), "pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(change(tensors), lora, metadata=metadata)
    return run_copy


def _foreign(t):
    return {
        **t,
        "unet.extra_blocks.0.proj.lora.down.weight": torch.zeros(4, 8),
        "unet.extra_blocks.0.proj.lora.up.weight": torch.zeros(8, 4),
    }


def _nan(t):
    key = sorted(t)[0]
    return {**t, key: torch.full_like(t[key], float("nan"))}


def _half_ups(t):
    ups = sorted(k for k in t if k.endswith(("lora.up.weight", "lora_B.weight")))
    return {k: v for k, v in t.items() if k not in ups[::2]}


def _half_layers(t):
    layers = sorted({k.rsplit(".lora", 1)[0] for k in t})
    return {k: v for k, v in t.items() if k.rsplit(".lora", 1)[0] in layers[::2]}


@pytest.mark.parametrize(
    "change, message",
    [
        (_foreign, "has no layer unet.extra_blocks.0.proj"),
        (_nan, "NaN or infinite weights"),
        (_half_ups, "is incomplete"),
        (_half_layers, "layers its own config targets"),
    ],
    ids=["foreign-layer", "nan", "half-of-the-ups", "half-of-the-layers"],
)
def test_export_refuses_a_broken_lora_before_writing(run_copy, tmp_path, change, message):
    lora_variant(run_copy, change)
    out = tmp_path / "k.safetensors"
    result = CliRunner().invoke(app, ["export", str(run_copy), "--output", str(out)])
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing written, no temporary file


def test_export_of_a_bare_file_checks_layers_against_model(alpha8_run, tiny_sd_eps, tmp_path):
    import shutil

    bare = tmp_path / "lora.safetensors"
    shutil.copy(alpha8_run / "pytorch_lora_weights.safetensors", bare)
    lora_variant_file = (
        lora_variant(shutil.copytree(alpha8_run, tmp_path / "r"), _foreign) / "pytorch_lora_weights.safetensors"
    )
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["export", str(lora_variant_file), "--output", str(tmp_path / "a.safetensors"), "--model", str(tiny_sd_eps)],
    )
    assert result.exit_code == 2 and "has no layer unet.extra_blocks.0.proj" in result.stderr, result.output
    result = runner.invoke(app, ["export", str(bare), "--model", str(tiny_sd_eps)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "lora_kohya.safetensors").is_file()


def test_export_is_loaded_back_before_it_replaces_anything(run_copy, tmp_path, monkeypatch):
    """``verify`` reads the written file back; a writer that lost a tensor (here: a patched ``save_file``, the
    one stand-in in this file) fails it, and the old --output stays as it was."""
    from safetensors.torch import save_file

    import d2f.pipeline.export as export

    def lossy(tensors, path, metadata=None):
        save_file(dict(list(tensors.items())[1:]), path, metadata=metadata)

    monkeypatch.setattr(export, "save_file", lossy)
    out = tmp_path / "k.safetensors"
    out.write_bytes(b"old")
    with pytest.raises(UserError, match="did not load back .* was not written"):
        export.export_lora(run_copy, out, overwrite=True)
    assert out.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["k.safetensors", "run"]
