"""DeSTSeg network: frozen teacher, denoising student, segmentation network.

Zhang et al., "DeSTSeg: Segmentation Guided Denoising Student-Teacher for Anomaly Detection",
CVPR 2023. The teacher is an ImageNet ResNet-18 (layers 1-3) taken from timm through anomalib's
``TimmFeatureExtractor``; the student is a randomly initialised ResNet-18 encoder with a
ResNet-18-shaped decoder that learns to give the teacher's features of the *clean* image when
it sees a corrupted one; the segmentation network reads where teacher and student disagree.

ImageNet normalisation happens inside the network, so the pre-processor only resizes: the
synthetic anomalies are blended in pixel space ([0, 1]) and the exported model takes [0, 1]
images like every other anomalib model.
"""

import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.data import InferenceBatch
from anomalib.models.components.feature_extractors import TimmFeatureExtractor
from torch import nn
from torchvision.models.resnet import BasicBlock

from anomalib_anogen.arguments import ModelArgumentError
from anomalib_anogen.core.torch_files import not_a_torch_file, read_failure, refused_global

__all__ = ["RANDOM_WEIGHTS", "AsppHead", "DenoisingStudent", "DestsegModel", "SegmentationNetwork"]

RANDOM_WEIGHTS = "random"
"""``pretrained_weights`` value that asks for a randomly initialised teacher (tests, smoke runs)."""

TEACHER_LAYERS = ("layer1", "layer2", "layer3")
TEACHER_CHANNELS = (64, 128, 256)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_HINT = (
    "Download timm's (or torchvision's) ImageNet resnet18 weights on a machine with internet access, e.g. "
    "`python -c \"import timm, torch; torch.save(timm.create_model('resnet18', pretrained=True).state_dict(), "
    "'resnet18.pth')\"`, copy the file here and pass pretrained_weights=PATH (.pth/.pt state dict or "
    f".safetensors). Use pretrained_weights='{RANDOM_WEIGHTS}' only for tests: a random teacher detects nothing."
)


def residual_layer(in_channels: int, out_channels: int, blocks: int = 2) -> nn.Sequential:
    """ResNet stage of ``blocks`` basic blocks (stride 1), with a 1x1 projection when the width changes."""
    downsample = None
    if in_channels != out_channels:
        downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
    layers = [BasicBlock(in_channels, out_channels, downsample=downsample)]
    layers += [BasicBlock(out_channels, out_channels) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def kaiming_init(module: nn.Module) -> None:
    """He init for convolutions and unit BatchNorm, as ResNets (and DeSTSeg's decoder) are initialised."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(layer, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)


class DenoisingStudent(nn.Module):
    """Random-init ResNet-18 encoder and a ResNet-18-shaped decoder (two basic blocks per stage).

    The decoder mirrors the encoder from layer 4 back to layer 1, upsampling bilinearly to the
    teacher's feature sizes, and returns the three maps that are compared with the teacher's.
    """

    def __init__(self) -> None:
        super().__init__()
        # A student must not start from the teacher's knowledge: the encoder is random (DeSTSeg).
        self.encoder = TimmFeatureExtractor("resnet18", layers=["layer4"], pre_trained=False, requires_grad=True)
        self.decoder = nn.ModuleDict(
            {
                "layer4": residual_layer(512, 512),
                "layer3": residual_layer(512, 256),
                "layer2": residual_layer(256, 128),
                "layer1": residual_layer(128, 64),
            },
        )
        kaiming_init(self.decoder)

    def forward(self, images: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        """Features at layers 1, 2 and 3 of the teacher, at the given ``(h, w)`` sizes (fine to coarse)."""
        features = self.decoder["layer4"](self.encoder(images)["layer4"])
        outputs = []
        for name, size in zip(("layer3", "layer2", "layer1"), reversed(sizes), strict=True):
            features = F.interpolate(features, size=size, mode="bilinear", align_corners=False)
            features = self.decoder[name](features)
            outputs.append(features)
        return outputs[::-1]


class AsppHead(nn.Module):
    """Atrous spatial pyramid pooling as in DeSTSeg: image pooling plus three dilated 3x3 branches, 3x3 fusion."""

    def __init__(self, channels: int = 256, rates: Sequence[int] = (6, 12, 18)) -> None:
        super().__init__()

        def conv_bn_relu(in_channels: int, kernel_size: int, dilation: int = 1) -> nn.Sequential:
            padding = dilation * (kernel_size - 1) // 2
            return nn.Sequential(
                nn.Conv2d(in_channels, channels, kernel_size, padding=padding, dilation=dilation, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            )

        self.pooling = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn_relu(channels, 1))
        self.branches = nn.ModuleList([conv_bn_relu(channels, 3, rate) for rate in rates])
        self.fusion = conv_bn_relu(channels * (1 + len(rates)), 3)

    def _pool(self, features: torch.Tensor) -> torch.Tensor:
        """Image pooling; a one-image training batch normalises with the running statistics.

        BatchNorm cannot take batch statistics of a single 1x1 map, and the last batch of an epoch can hold one
        image (bottle: 209 training images), so training must not crash there.
        """
        batch_norm = self.pooling[1][1]
        if not (self.training and features.shape[0] == 1):
            return self.pooling(features)
        batch_norm.eval()
        try:
            return self.pooling(features)
        finally:
            batch_norm.train()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Fuse global context with three receptive fields."""
        pooled = self._pool(features).expand(-1, -1, *features.shape[-2:])  # exact "upsampling" of a 1x1 map
        return self.fusion(torch.cat([pooled, *(branch(features) for branch in self.branches)], dim=1))


class SegmentationNetwork(nn.Module):
    """Residual blocks then an ASPP head; one anomaly logit per pixel at 1/4 of the image size."""

    def __init__(self, in_channels: int = sum(TEACHER_CHANNELS), channels: int = 256) -> None:
        super().__init__()
        self.res = residual_layer(in_channels, channels)
        kaiming_init(self.res)
        # The head keeps PyTorch's default init, as DeSTSeg's.
        self.head = nn.Sequential(
            AsppHead(channels),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, 1, kernel_size=1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Anomaly logits ``(B, 1, h, w)``."""
        return self.head(self.res(features))


STATE_DICT_HINT = (
    "Save the resnet18 weights as a state dict where you made them, `torch.save(model.state_dict(), "
    "'resnet18.pth')` (or safetensors' `save_file(model.state_dict(), 'resnet18.safetensors')`), and pass that file; "
    "or download timm's: `python -c \"import timm, torch; torch.save(timm.create_model('resnet18', pretrained=True)"
    ".state_dict(), 'resnet18.pth')\"`"
)


def _pickled(found: str | None) -> str:
    """What a pickle that ``weights_only`` refused holds, without running it: a whole model, or other code."""
    if found is None:
        what = "pickle instructions that a state dict never holds"
    elif found.startswith(("torch.nn.", "timm.", "torchvision.", "anomalib")):
        what = f"a whole model (an object of class {found}, as torch.save(model) writes), not a state dict"
    else:
        what = f"a reference to {found}, which a state dict never holds (unpickled, it would run code)"
    return f"it holds {what}; nothing in it was run"


def load_teacher_state(path: str | Path, expected: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Read a timm/torchvision resnet18 state dict and keep what the teacher (layers up to 3) needs.

    Raises ``ModelArgumentError`` (a ``ValueError``) naming ``pretrained_weights`` when the file is missing,
    unreadable or not a resnet18 state dict; nothing is downloaded.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        msg = f"pretrained_weights: file '{path}' does not exist. {WEIGHTS_HINT}"
        raise ModelArgumentError(msg)
    if path.suffix != ".safetensors":
        what = not_a_torch_file(path)
        if what:
            msg = f"pretrained_weights: '{path}' is not a torch file ({what}). {STATE_DICT_HINT}"
            raise ModelArgumentError(msg)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # torch's text suggests weights_only=False, which would run the file
        msg = f"pretrained_weights: refused '{path}': {_pickled(refused_global(error))}. {STATE_DICT_HINT}"
        raise ModelArgumentError(msg) from None
    except Exception as error:
        detail = read_failure(error)
        msg = (
            f"pretrained_weights: could not read '{path}' as a state dict (damaged or truncated"
            f"{f': {detail}' if detail else ''}). {STATE_DICT_HINT}"
        )
        raise ModelArgumentError(msg) from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        msg = f"pretrained_weights: '{path}' holds a {type(state).__name__}, not a state dict. {WEIGHTS_HINT}"
        raise ModelArgumentError(msg)
    state = {key.removeprefix("module."): value for key, value in state.items()}
    missing = [key for key in expected if key not in state]
    wrong = [key for key in expected if key in state and tuple(state[key].shape) != tuple(expected[key].shape)]
    if missing or wrong:
        msg = (
            f"pretrained_weights: '{path}' is not a resnet18 state dict ({len(missing)} teacher tensors missing, "
            f"e.g. {missing[:3]}; {len(wrong)} with other shapes, e.g. {wrong[:3]}). {WEIGHTS_HINT}"
        )
        raise ModelArgumentError(msg)
    return {key: state[key] for key in expected}


class DestsegModel(nn.Module):
    """Teacher, student and segmentation network; ``forward`` is inference and returns an ``InferenceBatch``.

    Args:
        pretrained_weights: Local file of ImageNet resnet18 weights for the teacher; ``"random"`` for a
            random teacher (tests); ``None`` leaves the teacher unset, for a model whose weights come from
            a checkpoint (``teacher_ready`` is saved with it).
        top_k: Image score = mean of the ``top_k`` largest anomaly-map values (DeSTSeg's ``T``).
    """

    def __init__(self, pretrained_weights: str | Path | None = None, top_k: int = 100) -> None:
        super().__init__()
        self.top_k = top_k
        self.teacher = TimmFeatureExtractor("resnet18", layers=list(TEACHER_LAYERS), pre_trained=False)
        self.teacher.requires_grad_(False)
        self.student = DenoisingStudent()
        self.segmentation = SegmentationNetwork()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        # Saved in checkpoints, so a model restored from one knows that its teacher is real.
        self.register_buffer("teacher_ready", torch.tensor(False))
        if pretrained_weights is not None:
            if str(pretrained_weights) != RANDOM_WEIGHTS:
                extractor = self.teacher.feature_extractor
                extractor.load_state_dict(load_teacher_state(pretrained_weights, extractor.state_dict()))
            self.teacher_ready.fill_(True)

    def teacher_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised teacher features at layers 1-3 (no gradient, BatchNorm always in eval mode)."""
        features = self.teacher((images - self.mean) / self.std)
        return [F.normalize(features[name], dim=1) for name in TEACHER_LAYERS]

    def student_features(self, images: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        """Unit-normalised student features at the teacher's three sizes."""
        return [F.normalize(feature, dim=1) for feature in self.student((images - self.mean) / self.std, sizes)]

    def segment(self, teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor]) -> torch.Tensor:
        """Segmentation logits at the finest feature size from teacher-student disagreement.

        The input is the element-wise product of the unit features, negated (its channel sum is minus the
        cosine similarity), of all three levels upsampled to level 1 and concatenated: 448 channels.
        """
        size = teacher[0].shape[-2:]
        products = [
            F.interpolate(-t * s, size=size, mode="bilinear", align_corners=False)
            for t, s in zip(teacher, student, strict=True)
        ]
        return self.segmentation(torch.cat(products, dim=1))

    def check_top_k(self, height: int, width: int) -> None:
        """Raise a ``ModelArgumentError`` (a ``ValueError``) naming ``T`` when the map has fewer values than ``T``."""
        if self.top_k > height * width:
            msg = (
                f"T={self.top_k} is larger than the anomaly map ({height}x{width} = {height * width} values): "
                "the image score is the mean of the T largest values. Lower T or use larger images."
            )
            raise ModelArgumentError(msg)

    def forward(self, images: torch.Tensor) -> InferenceBatch:
        """Anomaly map ``(B, 1, H, W)`` in [0, 1] at the input size, and image score (mean of the top ``T``)."""
        height, width = images.shape[-2:]
        self.check_top_k(int(height), int(width))
        teacher = self.teacher_features(images)
        student = self.student_features(images, [feature.shape[-2:] for feature in teacher])
        probability = torch.sigmoid(self.segment(teacher, student))
        anomaly_map = F.interpolate(probability, size=(height, width), mode="bilinear", align_corners=False)
        pred_score = anomaly_map.flatten(start_dim=1).topk(self.top_k, dim=1).values.mean(dim=1)
        return InferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map)
