"""Destseg and DestsegWeak: shapes, phases, weak focal rule, teacher weights, training, export, CLI, bad input."""

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F  # noqa: N812
from lightning.pytorch import Callback, seed_everything

from anomalib_anogen.models import Destseg, DestsegWeak
from anomalib_anogen.models.components import weak_weights_from_probability
from anomalib_anogen.models.image.destseg import DestsegLoss
from anomalib_anogen.models.image.destseg_weak import DestsegWeakLoss

from .helpers.data import BOTTLE, DTD, needs_shared_bottle
from .helpers.models import RANDOM, small_destseg


def logits_for(probability: torch.Tensor) -> torch.Tensor:
    """Sigmoid logits that give ``probability``."""
    return torch.logit(probability)


# --- network -------------------------------------------------------------------------------------------------


def test_forward_shapes_and_top_t_score() -> None:
    model = small_destseg().model.eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        teacher = model.teacher_features(images)
        student = model.student_features(images, [feature.shape[-2:] for feature in teacher])
        logits = model.segment(teacher, student)
        output = model(images)
    expected = [(2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4)]
    assert [tuple(feature.shape) for feature in teacher] == expected
    assert [tuple(feature.shape) for feature in student] == expected
    torch.testing.assert_close(teacher[1].norm(dim=1), torch.ones(2, 8, 8))  # unit features: products are cosines
    assert logits.shape == (2, 1, 16, 16)
    assert output.anomaly_map.shape == (2, 1, 64, 64)
    assert torch.all((output.anomaly_map >= 0) & (output.anomaly_map <= 1))
    top = output.anomaly_map.flatten(1).sort(dim=1, descending=True).values[:, :10].mean(dim=1)
    torch.testing.assert_close(output.pred_score, top)


def test_one_image_training_batch_does_not_crash_the_segmentation_network() -> None:
    """The last batch of an epoch can hold one image (bottle: 209 training images at batch 8)."""
    model = small_destseg().model.train()
    images = torch.rand(1, 3, 64, 64)
    teacher = model.teacher_features(images)
    student = model.student_features(images, [feature.shape[-2:] for feature in teacher])
    logits = model.segment(teacher, student)
    assert logits.shape == (1, 1, 16, 16)
    batch_norms = [module for module in model.segmentation.modules() if isinstance(module, torch.nn.BatchNorm2d)]
    assert batch_norms and all(module.training for module in batch_norms)  # back in training mode afterwards


def test_teacher_is_frozen_and_student_and_segmentation_train() -> None:
    model = small_destseg().model
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert all(p.requires_grad for p in model.student.parameters())
    assert all(p.requires_grad for p in model.segmentation.parameters())
    # DeSTSeg's sizes: ResNet-18 encoder (11.2 M) + decoder, 448-channel segmentation input.
    assert 20e6 < sum(p.numel() for p in model.student.parameters()) < 30e6
    assert model.segmentation.res[0].conv1.in_channels == 448


def test_optimisers_use_published_rates() -> None:
    model = small_destseg()
    student, segmentation = model.configure_optimizers()
    assert [group["lr"] for group in student.param_groups] == [0.4]
    assert [group["lr"] for group in segmentation.param_groups] == [0.1, 0.01]
    for group in [*student.param_groups, *segmentation.param_groups]:
        assert (group["momentum"], group["weight_decay"]) == (0.9, 1e-4)
    assert sum(len(group["params"]) for group in segmentation.param_groups) == len(
        list(model.model.segmentation.parameters())
    )
    assert model.trainer_arguments["max_steps"] == 4


# --- teacher weights -----------------------------------------------------------------------------------------


def test_local_teacher_weights_are_loaded(tmp_path: Path) -> None:
    reference = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = Destseg(pretrained_weights=path, steps=2, de_st_steps=1)
    torch.testing.assert_close(
        model.model.teacher.feature_extractor.layer3[1].conv2.weight, reference.layer3[1].conv2.weight
    )
    assert bool(model.model.teacher_ready)


def test_safetensors_teacher_weights_are_loaded(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    reference = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.safetensors"
    save_file({key: value.contiguous() for key, value in reference.state_dict().items()}, str(path))
    model = Destseg(pretrained_weights=path, steps=2, de_st_steps=1)
    torch.testing.assert_close(model.model.teacher.feature_extractor.conv1.weight, reference.conv1.weight)


def test_missing_teacher_file_says_how_to_provide_one(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"pretrained_weights: file .*nowhere.pth.* does not exist.*pretrained_weights=PATH"
    ):
        Destseg(pretrained_weights=tmp_path / "nowhere.pth")


def test_wrong_teacher_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "resnet50.pth"
    torch.save(timm.create_model("resnet50", pretrained=False).state_dict(), path)
    with pytest.raises(ValueError, match="is not a resnet18 state dict"):
        Destseg(pretrained_weights=path)


@pytest.mark.parametrize("model_class", [Destseg, DestsegWeak])
def test_checkpoint_restores_the_teacher_without_its_weights_file(tmp_path: Path, model_class: type) -> None:
    """As `anomalib export --ckpt_path` does where the teacher file is not (docs/models/destseg.md)."""
    import lightning

    reference = timm.create_model("resnet18", pretrained=False)
    weights = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), weights)
    model = model_class(pretrained_weights=str(weights), steps=2, de_st_steps=1)
    checkpoint = tmp_path / "model.ckpt"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": lightning.__version__,
        },
        checkpoint,
    )
    weights.unlink()
    restored = model_class.load_from_checkpoint(checkpoint)
    torch.testing.assert_close(
        restored.model.teacher.feature_extractor.layer3[1].conv2.weight, reference.layer3[1].conv2.weight
    )
    assert bool(restored.model.teacher_ready)


def test_forgotten_teacher_weights_stop_training_with_a_clear_error(tmp_path: Path, toy_root: Path) -> None:
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine

    model = small_destseg(pretrained_weights=None)
    datamodule = MVTecAD(root=toy_root, category="toy_bottle", train_batch_size=4, eval_batch_size=4, num_workers=0)
    engine = Engine(default_root_dir=tmp_path, accelerator="cpu", logger=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"no teacher weights.*pretrained_weights=PATH.*'random'"):
        engine.fit(model=model, datamodule=datamodule)


# --- losses --------------------------------------------------------------------------------------------------


def test_cosine_distance_is_zero_for_equal_features_and_sums_over_batch_and_levels() -> None:
    features = [F.normalize(torch.randn(3, c, 4, 4), dim=1) for c in (8, 16, 32)]
    assert DestsegLoss.cosine_distance(features, features).abs() < 1e-5
    opposite = [-feature for feature in features]
    torch.testing.assert_close(DestsegLoss.cosine_distance(features, opposite), torch.tensor(2.0 * 3 * 3))


def test_focal_matches_destsegs_formula_on_probabilities() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 8, 8, generator=generator)
    target = (torch.rand(2, 1, 8, 8, generator=generator) > 0.5).float()
    probability = torch.sigmoid(logits)
    p_t = probability * target + (1 - probability) * (1 - target)
    expected = F.binary_cross_entropy(probability, target, reduction="none") * (1 - p_t) ** 4
    torch.testing.assert_close(DestsegLoss().focal_per_pixel(logits, target), expected)


def test_mask_is_downsampled_and_binarised_for_the_segmentation_loss() -> None:
    logits = torch.zeros(1, 1, 4, 4)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :8, :8] = 1  # the top-left quarter: 2x2 pixels at 4x4
    loss = DestsegLoss(gamma=0.0).segmentation(logits, mask, torch.tensor([False]))
    # p = 0.5 everywhere: BCE = ln 2 at every pixel, |p - target| = 0.5 at every pixel.
    torch.testing.assert_close(loss, torch.tensor(np.log(2) + 0.5, dtype=torch.float32))


@pytest.fixture
def box_case() -> tuple[torch.Tensor, torch.Tensor]:
    """A 4x4 map whose left half is a box; two in-box pixels already look normal (p = 0.05)."""
    probability = torch.full((2, 1, 4, 4), 0.6)
    probability[:, 0, 0, 0] = probability[:, 0, 0, 1] = 0.05
    target = torch.zeros(2, 1, 4, 4)
    target[..., :2] = 1
    return logits_for(probability), target


def test_weak_rule_drops_low_probability_in_box_pixels_of_box_samples(box_case: tuple) -> None:
    logits, target = box_case
    loss = DestsegWeakLoss(p_cutoff=0.1)
    per_pixel = loss.focal_per_pixel(logits, target)[:, 0]
    # Sample 0 is a box, sample 1 an exact mask: only sample 0 loses its two low-probability in-box pixels.
    keep = torch.ones(2, 4, 4)
    keep[0, 0, 0] = keep[0, 0, 1] = 0
    expected = (per_pixel * keep).sum() / keep.sum()
    torch.testing.assert_close(loss.focal(logits, target, torch.tensor([True, False])), expected)
    assert not torch.allclose(expected, per_pixel.mean())


def test_weak_rule_keeps_every_pixel_outside_the_box(box_case: tuple) -> None:
    logits, target = box_case
    weights = weak_weights_from_probability(torch.sigmoid(logits), target, torch.tensor([True, True]), 0.99)
    assert torch.all(weights[:, :, 2:] == 1)  # outside the box: normal, always counted, even with p < cutoff
    assert torch.all(weights[:, :, :2] == 0)  # inside: every pixel is below 0.99
    assert weights.shape == (2, 4, 4)


def test_weak_loss_equals_destseg_loss_for_exact_masks(box_case: tuple) -> None:
    logits, target = box_case
    exact = torch.tensor([False, False])
    torch.testing.assert_close(
        DestsegWeakLoss(p_cutoff=0.5).segmentation(logits, target, exact),
        DestsegLoss().segmentation(logits, target, exact),
    )


def test_weak_scope_all_applies_the_rule_to_exact_masks_too(box_case: tuple) -> None:
    logits, target = box_case
    exact = torch.tensor([False, False])
    weak = DestsegWeakLoss(p_cutoff=0.1, weak_scope="all").focal(logits, target, exact)
    assert not torch.allclose(weak, DestsegLoss().focal(logits, target, exact))


def test_l1_term_is_not_masked(box_case: tuple) -> None:
    logits, target = box_case
    box = torch.tensor([True, True])
    weak = DestsegWeakLoss(p_cutoff=0.1)
    l1 = weak.segmentation(logits, target, box) - weak.focal(logits, target, box)
    torch.testing.assert_close(l1, F.l1_loss(torch.sigmoid(logits), target))


# --- training ------------------------------------------------------------------------------------------------


class Snapshots(Callback):
    """The state (parameters and BatchNorm statistics) of each part after every training step."""

    def __init__(self) -> None:
        self.states: list[dict[str, dict[str, torch.Tensor]]] = []

    def capture(self, model: Destseg) -> None:
        parts = {
            "teacher": model.model.teacher,
            "student": model.model.student,
            "segmentation": model.model.segmentation,
        }
        self.states.append(
            {name: {k: v.detach().clone() for k, v in part.state_dict().items()} for name, part in parts.items()}
        )

    def on_train_start(self, trainer: object, pl_module: Destseg) -> None:
        self.capture(pl_module)

    def on_train_batch_end(self, trainer: object, pl_module: Destseg, *args: object) -> None:
        self.capture(pl_module)


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(before[key], after[key]) for key in before)


def test_student_trains_only_in_phase_one_and_segmentation_only_in_phase_two(tmp_path: Path, toy_root: Path) -> None:
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine

    seed_everything(0)
    model = small_destseg(steps=5, de_st_steps=2)
    snapshots = Snapshots()
    datamodule = MVTecAD(root=toy_root, category="toy_bottle", train_batch_size=2, eval_batch_size=4, num_workers=0)
    engine = Engine(
        default_root_dir=tmp_path,
        accelerator="cpu",
        limit_val_batches=0,
        callbacks=[snapshots],
        logger=False,
        enable_progress_bar=False,
    )
    engine.fit(model=model, datamodule=datamodule)
    assert engine.trainer.global_step == 5
    states = snapshots.states
    assert len(states) == 6
    for step in range(1, 6):
        before, after = states[step - 1], states[step]
        assert not changed(before["teacher"], after["teacher"]), step
        assert changed(before["student"], after["student"]) == (step <= 2), step
        assert changed(before["segmentation"], after["segmentation"]) == (step > 2), step
    metrics = engine.trainer.callback_metrics
    assert torch.isfinite(metrics["train_student_loss"]) and torch.isfinite(metrics["train_segmentation_loss"])


@needs_shared_bottle()
def test_destseg_weak_trains_a_few_steps_on_real_bottle_images(tmp_path: Path) -> None:
    """Destseg itself trains in the phase test, on the toy data."""
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine

    seed_everything(0)
    model = small_destseg(DestsegWeak, dtd_dir=DTD if DTD.is_dir() else None, T=50)
    datamodule = MVTecAD(root=BOTTLE.parent, category="bottle", train_batch_size=4, eval_batch_size=16, num_workers=0)
    engine = Engine(
        default_root_dir=tmp_path,
        accelerator="cpu",
        limit_val_batches=2,
        logger=False,
        enable_progress_bar=False,
    )
    engine.fit(model=model, datamodule=datamodule)
    assert engine.trainer.global_step == 4
    assert torch.isfinite(engine.trainer.callback_metrics["train_loss_step"])
    metrics = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
    for name in ("image_AUROC", "image_AUPR", "pixel_AUROC", "pixel_AUPR", "pixel_AUPRO"):
        assert 0.0 <= metrics[name] <= 1.0, name


def test_synthesize_gives_exact_masks_on_the_clean_target() -> None:
    model = small_destseg(DestsegWeak)
    images = torch.rand(4, 3, 32, 32)
    synthetic = model.synthesize(images)
    assert synthetic.image.shape == images.shape and synthetic.mask.shape == (4, 1, 32, 32)
    assert not synthetic.is_box.any()
    assert synthetic.target is images
    assert synthetic.mask.sum() > 0  # anomaly_probability defaults to 1, as DeSTSeg's
    assert not torch.equal(synthetic.image, images)


# --- bad input -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("steps", "de_st_steps"), [(1000, 1000), (100, 5000)])
def test_student_phase_must_be_shorter_than_training(steps: int, de_st_steps: int) -> None:
    with pytest.raises(ValueError, match=r"de_st_steps \(\d+\) must be smaller than steps"):
        Destseg(pretrained_weights=RANDOM, steps=steps, de_st_steps=de_st_steps)


@pytest.mark.parametrize("p_cutoff", [-0.1, 1.0, 1.5])
def test_p_cutoff_outside_unit_interval_is_rejected(p_cutoff: float) -> None:
    with pytest.raises(ValueError, match=r"p_cutoff must be a number in \[0, 1\)"):
        DestsegWeak(pretrained_weights=RANDOM, p_cutoff=p_cutoff)


def test_t_larger_than_the_anomaly_map_is_rejected_at_run_time() -> None:
    model = small_destseg(T=100).model.eval()
    with torch.no_grad():
        model(torch.rand(1, 3, 16, 16))  # 256 values: fine
        with pytest.raises(ValueError, match=r"T=100 is larger than the anomaly map \(8x8 = 64 values\)"):
            model(torch.rand(1, 3, 8, 8))


@pytest.mark.parametrize("arguments", [{"T": 0}, {"steps": 0}, {"weak_scope": "boxes"}, {"student_lr": -1.0}])
def test_other_bad_arguments_name_themselves(arguments: dict) -> None:
    name = next(iter(arguments))
    with pytest.raises(ValueError, match=name):
        DestsegWeak(pretrained_weights=RANDOM, **arguments)


def test_missing_dtd_dir_is_rejected_without_download(tmp_path: Path) -> None:
    model = Destseg(pretrained_weights=RANDOM, dtd_dir=tmp_path / "no_dtd")  # read when training starts
    with pytest.raises(ValueError, match=r"dtd_dir: folder .* does not exist"):
        model.setup("fit")
    assert not (tmp_path / "no_dtd").exists()


# --- anomalib's CLI ------------------------------------------------------------------------------------------


def test_library_focal_loss_and_normalisation_give_destsegs_numbers() -> None:
    """The library's sigmoid_focal_loss and F.normalize replace hand-written formulas: same numbers."""
    torch.manual_seed(0)
    logits, target = torch.randn(2, 1, 16, 16) * 2, (torch.rand(2, 1, 16, 16) > 0.7).float()
    probability = torch.sigmoid(logits.double())
    p_t = probability * target + (1 - probability) * (1 - target)  # DeSTSeg's focal loss on probabilities
    expected = (-torch.log(p_t) * (1 - p_t).pow(4)).float()
    torch.testing.assert_close(DestsegLoss(gamma=4).focal_per_pixel(logits, target), expected, rtol=1e-4, atol=1e-6)
    features = torch.randn(2, 64, 8, 8)
    hand = features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-12)
    torch.testing.assert_close(F.normalize(features, dim=1), hand)
