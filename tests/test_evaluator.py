"""The shipped evaluator and the world's metrics (prompt_accuracy, domain_accuracy, fd)."""

import json

import numpy as np
import pytest
import torch

from d2f.distances import frechet_distance
from d2f.world.build.evaluator_training import held_out_accuracy, train_evaluator
from d2f.world.evaluator import as_batch, load_evaluator
from d2f.world.metrics import domain_accuracy, evaluate, fd, prompt_accuracy, reference_images
from d2f.world.shapes import COLOURS, SHAPES, all_prompts, caption, draw, make_specs

PROMPTS = [all_prompts()[k % 24] for k in range(48)]


def wrong(prompt: str) -> str:
    """The same prompt with both shape and colour moved to the next value."""
    colour, shape = prompt.split()[1:]
    colours = sorted(COLOURS)
    return caption(SHAPES[(SHAPES.index(shape) + 1) % 4], colours[(colours.index(colour) + 1) % 6])


def test_shipped_evaluator_is_accurate_on_fresh_images():
    # 150 images per domain from a seed that neither training (its own stream) nor the build's
    # held-out check (10_000) used
    acc = held_out_accuracy(load_evaluator(), num_per_domain=150, seed=777)
    assert min(acc.values()) >= 0.99, acc


def test_shipped_evaluator_reads_64px_and_pil_images():
    specs = make_specs(24, "target", 3, all_prompts())
    pil64 = [draw(s, 64) for s in specs]
    tensor32 = as_batch([draw(s, 32) for s in specs])
    assert prompt_accuracy(tensor32, all_prompts()) >= 0.95
    # the 64 px drawings are resized to 32 px inside and read as well
    assert prompt_accuracy(pil64, all_prompts()) >= 0.95
    assert domain_accuracy(pil64, "target") == 1.0
    # a list of PIL images and the same pixels as a tensor give the same features
    assert torch.allclose(load_evaluator().embed(pil64), load_evaluator().embed(as_batch(pil64)))


def test_prompt_and_domain_accuracy():
    base = reference_images(PROMPTS, "base", seed=1)
    assert prompt_accuracy(base, PROMPTS) >= 0.97
    assert prompt_accuracy(base, [wrong(p) for p in PROMPTS]) <= 0.03
    assert domain_accuracy(base, "base") == 1.0
    assert domain_accuracy(base, "target") == 0.0


def test_fd_real_vs_real_is_much_smaller_than_base_vs_target():
    base = reference_images(PROMPTS, "base", seed=1)
    target = reference_images(PROMPTS, "target", seed=1)
    same = fd(base, PROMPTS, "base", seed=0)
    same_t = fd(target, PROMPTS, "target", seed=0)
    cross = fd(base, PROMPTS, "target", seed=0)
    assert 0 < same and 0 < same_t
    assert cross > 10 * max(same, same_t), (same, same_t, cross)
    out = evaluate(base, PROMPTS, "target")
    assert set(out) == {"prompt_accuracy", "domain_accuracy", "fd"}
    assert out["domain_accuracy"] == 0.0 and out["fd"] == pytest.approx(cross)


def test_frechet_distance_matches_the_formula():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(200, 5, generator=gen, dtype=torch.float64) @ torch.randn(5, 5, generator=gen, dtype=torch.float64)
    b = torch.randn(150, 5, generator=gen, dtype=torch.float64) * torch.linspace(0.5, 2, 5, dtype=torch.float64)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-9)
    # a shift changes only the mean term: FD = |shift|^2
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0], dtype=torch.float64)
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift.square().sum()), rel=1e-9)
    # reference: tr((Sa Sb)^1/2) as the sum of square roots of the (real, >= 0) eigenvalues of Sa Sb
    sa, sb = np.cov(a.numpy().T), np.cov(b.numpy().T)
    cross = np.sqrt(np.clip(np.linalg.eigvals(sa @ sb).real, 0, None)).sum()
    ref = np.sum((a.numpy().mean(0) - b.numpy().mean(0)) ** 2) + np.trace(sa) + np.trace(sb) - 2 * cross
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-8)


def test_bad_inputs_raise_clear_errors():
    images = reference_images(PROMPTS[:4], "base")
    with pytest.raises(ValueError, match="'a pink blob'"):
        prompt_accuracy(images, ["a red circle", "a pink blob", "a teal cube", "a red square"])
    with pytest.raises(ValueError, match="4 images but 3 prompts"):
        fd(images, PROMPTS[:3], "base")
    with pytest.raises(ValueError, match="unknown domain"):
        domain_accuracy(images, "sketch")
    with pytest.raises(ValueError, match=r"\(x \+ 1\) / 2"):
        prompt_accuracy(images * 2 - 1, PROMPTS[:4])
    with pytest.raises(ValueError, match="NaN"):
        domain_accuracy(images * float("nan"), "base")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        prompt_accuracy(images[:, :1], PROMPTS[:4])
    with pytest.raises(ValueError, match="not an evaluator folder"):
        load_evaluator("/nonexistent/evaluator")


def test_train_evaluator_writes_a_loadable_folder(tmp_path):
    record = train_evaluator(tmp_path / "ev", steps=3, seed=1, batch_size=8, eval_per_domain=4, log=None)
    for name in ("model.safetensors", "config.json", "d2f_build.json"):
        assert (tmp_path / "ev" / name).is_file()
    build = json.loads((tmp_path / "ev" / "d2f_build.json").read_text())
    assert build == json.loads(json.dumps(record))
    assert build["recipe"]["steps"] == 3 and build["recipe"]["seed"] == 1
    assert {"torch", "python"} <= set(build["versions"]) and np.isfinite(build["final_loss_ema"])
    assert set(build["held_out"]["accuracy"]) == {"shape", "colour", "domain"}
    model = load_evaluator(tmp_path / "ev")
    assert model is load_evaluator(str(tmp_path / "ev"))  # cached per folder
    assert not model.training
    x = reference_images(PROMPTS[:5], "target")
    feats = model.embed(x)
    assert feats.shape == (5, model.config["feature_dim"]) and torch.isfinite(feats).all()
    # an untrained-for-long model differs from the shipped one
    assert not torch.allclose(feats, load_evaluator().embed(x))


@pytest.mark.parametrize("resolution", [32, 64])
@pytest.mark.parametrize("domain", ["base", "target"])
def test_background_luminance_reads_the_drawn_background(domain, resolution):
    """issue #24's brightness measure: on generator images it is the luminance of the background each spec was
    drawn on, Y = 0.299 R + 0.587 G + 0.114 B of its RGB / 255, whatever the shape and where it lies."""
    from d2f.world.metrics import background_luminance

    specs = make_specs(48, domain, seed=3)
    images = torch.stack(
        [torch.from_numpy(np.asarray(draw(s, resolution))).permute(2, 0, 1).double() / 255 for s in specs]
    )
    expected = torch.tensor([(0.299 * r + 0.587 * g + 0.114 * b) / 255 for r, g, b in (s.background for s in specs)])
    got = background_luminance(images)
    assert got.shape == (48,) and got.dtype == torch.float64
    assert (got - expected).abs().max() < 1.5 / 255  # within rounding of the resize
    black, white = torch.zeros(2, 3, resolution, resolution), torch.ones(2, 3, resolution, resolution)
    assert background_luminance(black).tolist() == [0.0, 0.0] and background_luminance(white).allclose(
        torch.ones(2, dtype=torch.float64)
    )
    centre = white.clone()
    centre[:, :, 4:-4, 4:-4] = 0  # a dark square inside the ring does not count
    assert background_luminance(centre).allclose(torch.ones(2, dtype=torch.float64))
