"""Quality of a teacher's features: weighted k-NN accuracy, effective rank and coding rate.

Features are the teacher backbone's CLS embeddings (`x_norm_clstoken`, what `backbone(images)` returns in
eval mode) of the un-augmented evaluation images. k-NN is the DINOv2 protocol of `dinov2.eval.knn`
(L2-normalised features, cosine similarity, weights exp(s / T), T = 0.07). The effective rank uses the
training loop's collapse monitor (`dinov2.train.ssl_meta_arch.effective_rank`) on the raw, uncentred
features: 1 when every image maps to the same direction. The coding rate is the paper's eq. 8 on the
L2-normalised features (what the SimDINO loss sees), with the config convention that `eps` is the paper's
eps squared: R = 1/2 logdet(I + d / (n eps) Z^T Z).
"""

import dataclasses
import logging
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.utils.data import Dataset

from dinov2.data import make_classification_eval_transform, make_dataset
from dinov2.eval.knn import DEFAULT_TEMPERATURE, knn_accuracies
from dinov2.eval.utils import extract_features
from dinov2.train.ssl_meta_arch import SSLMetaArch, effective_rank
from dinov2.train.train import build_dataset, fix_random_seeds

logger = logging.getLogger(__name__)

HEADLINE_K = 20
DEFAULT_CODING_RATE_EPS = 0.05  # the SimDINOv2 recipes' dino.mcr.eps (paper's eps squared)


def coding_rate(features: Tensor, eps: float = DEFAULT_CODING_RATE_EPS) -> float:
    """R = 1/2 logdet(I_d + d / (n eps) Z^T Z) of `features` Z [n, d], in float64.

    `eps` is the paper's eps squared (the `dino.mcr.eps` convention). 0 for all-zero features; at most
    `d / 2 * log(1 + n / eps)`-ish for spread-out unit rows; `1/2 log(1 + d / eps)` for n identical unit rows.
    """
    if eps <= 0:
        raise ValueError(f"coding-rate eps={eps} must be > 0")
    z = features.detach().double()
    n, d = z.shape
    gram = z.T @ z * (d / (n * eps))
    return 0.5 * float(torch.logdet(torch.eye(d, dtype=z.dtype, device=z.device) + gram))


@dataclasses.dataclass(frozen=True)
class FeatureEvaluation:
    """Evaluation of one teacher backbone."""

    knn: dict[str, float]  # official k-NN keys, e.g. "('full', 20) Top 1", in %
    knn_top1: float  # "('full', 20) Top 1" (or the largest k evaluated when 20 was not)
    effective_rank: float  # of the raw validation CLS features
    coding_rate: float  # of the L2-normalised validation CLS features

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, record: dict) -> "FeatureEvaluation":
        return cls(
            knn={str(k): float(v) for k, v in record["knn"].items()},
            knn_top1=float(record["knn_top1"]),
            effective_rank=float(record["effective_rank"]),
            coding_rate=float(record["coding_rate"]),
        )


def eval_transform_sizes(cfg: DictConfig) -> tuple[int, int]:
    """(resize, crop) of the evaluation transform for a run: crop = `crops.global_crops_size` (the teacher's
    training resolution); resize = crop * 256 / 224 (the official 256 -> 224 ratio) when the crop is at least
    224 px, else the crop itself (tiny images such as Digits' 32 px are used whole)."""
    crop = int(cfg.crops.global_crops_size)
    return (round(crop * 256 / 224) if crop >= 224 else crop), crop


@dataclasses.dataclass(frozen=True)
class EvalData:
    """The labelled datasets of the k-NN evaluation, with the transform applied."""

    train: Dataset
    val: Dataset
    description: str


def make_eval_data(train_dataset: str, val_dataset: str, *, resize_size: int, crop_size: int) -> EvalData:
    transform = make_classification_eval_transform(resize_size=resize_size, crop_size=crop_size)
    return EvalData(
        train=make_dataset(dataset_str=train_dataset, transform=transform),
        val=make_dataset(dataset_str=val_dataset, transform=transform),
        description=f"{train_dataset} -> {val_dataset}, {crop_size} px",
    )


@torch.inference_mode()
def evaluate_backbone(
    backbone: nn.Module,
    data: EvalData,
    *,
    device: torch.device,
    nb_knn: Sequence[int] = (10, 20, 100, 200),
    temperature: float = DEFAULT_TEMPERATURE,
    coding_rate_eps: float = DEFAULT_CODING_RATE_EPS,
    batch_size: int = 256,
    num_workers: int = 0,
) -> FeatureEvaluation:
    """k-NN accuracies, effective rank and coding rate of `backbone` (eval mode, on `device`); all NaN when
    the features are not finite (a diverged teacher)."""
    backbone.eval()
    common = dict(batch_size=batch_size, num_workers=num_workers, device=device)
    train_features, train_labels = extract_features(backbone, data.train, description="k-NN train", **common)
    val_features, val_labels = extract_features(backbone, data.val, description="k-NN val", **common)
    if not (torch.isfinite(train_features).all() and torch.isfinite(val_features).all()):
        logger.warning("non-finite teacher features: every measure of this teacher is NaN")
        return FeatureEvaluation(knn={}, knn_top1=math.nan, effective_rank=math.nan, coding_rate=math.nan)
    usable_k = [k for k in nb_knn if k <= train_features.shape[0]]
    if not usable_k:
        raise ValueError(f"every k in nb_knn={list(nb_knn)} exceeds the {train_features.shape[0]} train samples")
    if len(usable_k) < len(nb_knn):
        logger.warning("k-NN: k > %d train samples dropped, evaluating k in %s", train_features.shape[0], usable_k)
    knn = knn_accuracies(
        F.normalize(train_features, dim=1),
        train_labels,
        F.normalize(val_features, dim=1),
        val_labels,
        nb_knn=usable_k,
        temperature=temperature,
        batch_size=batch_size,
        device=device,
    )
    headline_k = HEADLINE_K if HEADLINE_K in usable_k else max(usable_k)
    return FeatureEvaluation(
        knn=knn,
        knn_top1=knn[f"('full', {headline_k}) Top 1"],
        effective_rank=float(effective_rank(val_features)),
        coding_rate=coding_rate(F.normalize(val_features, dim=1), coding_rate_eps),
    )


MetaArchFactory = Callable[[DictConfig], SSLMetaArch]


def initial_teacher(cfg: DictConfig, meta_arch_factory: MetaArchFactory) -> nn.Module:
    """The teacher backbone a run of `cfg` started from (its step-0, random-init teacher), on the CPU.

    Rebuilt the way `dinov2.train.train.main` builds it: build the dataset, seed `train.seed` (rank 0's seed;
    every rank starts from rank 0's weights), then build the meta-architecture, whose teacher is a copy of the
    freshly initialised student. A test checks this against a real run.
    """
    build_dataset(cfg)
    fix_random_seeds(cfg.train.seed)
    model = meta_arch_factory(cfg)
    return model.teacher["backbone"]
