"""``d2f export``: a d2f LoRA in the kohya / A1111 format, checked by loading it back with diffusers."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from d2f.cli import app


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
