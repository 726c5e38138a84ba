"""The defaults that follow the authors' code: DRAEM's pooled image score and blend, DeSTSeg's rotation and mix."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from anomalib_anogen.arguments import ModelArgumentError
from anomalib_anogen.data.generators import AnoGenAnomalyGenerator, PerlinGenerator, Rotation, resolve_rotation_rule
from anomalib_anogen.models import DestsegWeak, DraemWeak

from .helpers.bank_factory import make_bank
from .helpers.models import small_destseg

# --- DraemWeak: image score and blend --------------------------------------------------------------------------


def test_draem_weak_scores_an_image_by_the_21x21_average_pooled_map() -> None:
    model = DraemWeak(reconstructive_width=8, discriminative_width=4).model.eval()
    with torch.no_grad():
        output = model(torch.rand(2, 3, 64, 64))
    pooled = F.avg_pool2d(output.anomaly_map.unsqueeze(1), 21, stride=1, padding=10)
    torch.testing.assert_close(output.pred_score, pooled.flatten(1).amax(dim=1))
    assert output.anomaly_map.shape == (2, 64, 64)  # the map itself is not pooled


def test_one_hot_pixel_counts_for_little_with_pooling_and_fully_with_score_pool_1() -> None:
    model = DraemWeak(reconstructive_width=8, discriminative_width=4).model.eval()
    logits = torch.stack([torch.full((1, 64, 64), 5.0), torch.full((1, 64, 64), -5.0)], dim=1)  # normal
    logits[:, :, 30, 30] = torch.tensor([-5.0, 5.0])  # one confident anomalous pixel
    model.discriminative_subnetwork.forward = lambda _: logits  # type: ignore[method-assign]
    with torch.no_grad():
        pooled = model(torch.rand(1, 3, 64, 64)).pred_score
        model.score_pool = 1
        single = model(torch.rand(1, 3, 64, 64)).pred_score
    assert single.item() > 0.99
    assert pooled.item() < 0.01 + 1 / 441


def test_score_pool_and_beta_defaults_are_draems_and_checked() -> None:
    model = DraemWeak(reconstructive_width=8, discriminative_width=4)
    assert model.model.score_pool == 21
    assert model.hparams.beta == (0.2, 1.0)
    assert model.generator_spec.kwargs["blend_factor"] == (0.2, 1.0)
    with pytest.raises(ModelArgumentError, match=r"^score_pool must be a positive integer, got 0"):
        DraemWeak(score_pool=0)


def test_checkpoint_width_rebuild_keeps_the_score_pool() -> None:
    trained = DraemWeak(reconstructive_width=8, discriminative_width=4)
    model = DraemWeak(reconstructive_width=16, discriminative_width=8, score_pool=5)
    model.on_load_checkpoint({"hyper_parameters": dict(trained.hparams)})
    assert model.model.score_pool == 5


# --- DeSTSeg's rotation --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("category", "rule"),
    [("bottle", "full"), ("screw", "full"), ("zipper", "slight"), ("transistor", "none"), ("my_part", "none")],
)
def test_auto_rotation_is_destsegs_rule_per_category(category: str, rule: str) -> None:
    assert resolve_rotation_rule("auto", category) == rule
    assert resolve_rotation_rule("slight", category) == "slight"  # an explicit rule wins


def test_quarter_turns_keep_the_picture_and_uncovered_corners_get_the_fill() -> None:
    torch.manual_seed(0)
    image = torch.rand(1, 3, 16, 16)
    mask = (torch.rand(1, 1, 16, 16) > 0.5).float()
    turns = {torch.rot90(image, k, dims=(-2, -1)).sum().item() for k in range(4)}
    seen = set()
    for _ in range(20):
        turned, turned_mask = Rotation(probability=1.0, quarter_turns=True)(image, mask)
        assert any(torch.allclose(turned, torch.rot90(image, k, dims=(-2, -1)), atol=1e-5) for k in range(4))
        assert turned_mask.sum() == mask.sum()
        seen.add(min(turns, key=lambda total, t=turned: abs(total - t.sum().item())))
    assert len(seen) > 1  # more than one turn was drawn
    tilted, tilted_mask = Rotation(probability=1.0, degrees=45.0, fill=114 / 255)(
        torch.ones(1, 3, 32, 32), torch.ones(1, 1, 32, 32)
    )
    for row, column in ((0, 0), (0, -1), (-1, 0), (-1, -1)):  # any angle of 45 +- 45 degrees uncovers corners
        if tilted_mask[0, 0, row, column] == 0:
            torch.testing.assert_close(tilted[0, :, row, column], torch.full((3,), 114 / 255))


def datamodule(category: str) -> SimpleNamespace:
    return SimpleNamespace(datamodule=SimpleNamespace(category=category))


@pytest.mark.parametrize(("category", "turns", "degrees"), [("bottle", True, 5.0), ("cable", False, 5.0)])
def test_destseg_builds_its_perlin_generator_with_the_categorys_rotation(
    category: str, turns: bool, degrees: float
) -> None:
    model = small_destseg()
    model._trainer = datamodule(category)
    model.setup("fit")
    augmenter = model.augmenter
    assert isinstance(augmenter, PerlinGenerator)
    assert augmenter.rotation == Rotation(1.0, degrees, turns, 114 / 255)


def test_destseg_does_not_rotate_transistors_or_unknown_products() -> None:
    for category in ("transistor", "my_part"):
        model = small_destseg()
        model._trainer = datamodule(category)
        model.setup("fit")
        assert not model.augmenter.rotation.active


def test_destseg_rotation_reaches_a_generator_built_before_setup(tmp_path: Path) -> None:
    """Fit setup gives a generator built before it the category's rotation, as it gives one that setup builds.

    (A script that sets the bank's loader workers on ``model.augmenter`` builds the generator early.)
    """
    from anomalib_anogen.data.toy import make_toy_category

    category = make_toy_category(tmp_path / "toy", size=32, n_train=2, n_test_good=1, n_test_per_defect=1)
    bank = tmp_path / "bank"
    make_bank(bank, sorted((category / "train" / "good").glob("*.png")))
    makers = (small_destseg, lambda: small_destseg(DestsegWeak, generator="anogen", bank_dir=bank))
    expected = Rotation(1.0, 5.0, True, 114 / 255)  # bottle: a quarter turn and +-5 degrees
    for make in makers:
        early, late = make(), make()
        built = early.augmenter  # before the category is known
        assert built.rotation != expected
        for model in (early, late):
            model._trainer = datamodule("bottle")
            model.setup("fit")
        assert early.augmenter is built
        assert built.rotation == late.augmenter.rotation == expected
        assert early.generator_spec == late.generator_spec
    perlin = makers[0]()
    perlin.augmenter  # noqa: B018 - built first
    perlin._trainer = datamodule("bottle")
    perlin.setup("fit")
    torch.manual_seed(0)
    images = torch.rand(4, 3, 32, 32)
    assert not torch.allclose(perlin.synthesize(images).target, images)  # every sample turned


def test_destseg_rotation_is_checked() -> None:
    with pytest.raises(ModelArgumentError, match=r"^rotation must be 'auto'"):
        small_destseg(rotation="sideways")


# --- DestsegWeak's training mix -------------------------------------------------------------------------------


def test_destseg_weak_bank_draws_are_all_generated_anomalies(tmp_path: Path) -> None:
    from anomalib_anogen.data.toy import make_toy_category

    category = make_toy_category(tmp_path / "toy", size=64, n_train=4, n_test_good=1, n_test_per_defect=1)
    make_bank(tmp_path / "bank", sorted((category / "train" / "good").glob("*.png")))
    model = small_destseg(DestsegWeak, generator="anogen", bank_dir=tmp_path / "bank")
    model._trainer = datamodule("transistor")
    model.setup("fit")
    augmenter = model.augmenter
    assert isinstance(augmenter, AnoGenAnomalyGenerator)
    assert augmenter.clean_share == 0.0
    assert augmenter.perlin.probability == 1.0
    augmenter.num_workers = 0
    torch.manual_seed(0)
    synthetic = augmenter.generate(torch.rand(32, 3, 64, 64))
    # every sample is anomalous: a box from the bank or a Perlin mask
    assert bool((synthetic.mask.flatten(1).amax(dim=1) > 0).all())
    assert 0 < int(synthetic.is_box.sum()) < 32
