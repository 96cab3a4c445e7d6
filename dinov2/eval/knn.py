"""Weighted k-NN classification of frozen, L2-normalised CLS features (the DINOv2 k-NN protocol).

Protocol (as official DINOv2): features = the backbone's CLS embedding (last block, final norm) divided by its
L2 norm; similarity = cosine (dot product of unit vectors); for every query the `max(ks)` most similar train
samples are found; their weights are `softmax(sim / T)` over those `max(ks)` neighbours, and the score of class
c for a given k is the sum of the weights of the first k neighbours labelled c (partial sums, not renormalised:
the ranking equals weighting by `exp(sim / T)`). Metrics: top-1 / top-5 accuracy (micro), in %.

Distribution: every rank holds all train and query features (gathered by `extract_features`) but searches only
its 1/W slice of the train set; the per-rank top-`max(ks)` candidates of each query batch are all-gathered and
merged, so each rank does 1/W of the similarity work (as official, which broadcasts test batches instead).
"""

import json
import logging
import os
from typing import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm import tqdm

from dinov2.distributed import get_global_rank, get_global_size, is_enabled, is_main_process
from dinov2.eval.metrics import ClassificationMetric, usable_topk
from dinov2.eval.utils import ModelWithNormalize, communication_device, extract_features

logger = logging.getLogger(__name__)

DEFAULT_NB_KNN: tuple[int, ...] = (10, 20, 100, 200)
DEFAULT_TEMPERATURE = 0.07
RESULTS_FILENAME = "results_eval_knn.json"


def knn_neighbours(
    queries: Tensor, train_features: Tensor, train_labels: Tensor, *, max_k: int
) -> tuple[Tensor, Tensor]:
    """The `max_k` train samples most similar to each query, over the train features of all ranks.

    `queries [Q, D]` (the same on every rank), `train_features [N_r, D]` and `train_labels [N_r]`: this rank's
    slice of the train set, on the queries' device. Returns `(similarities [Q, max_k], labels [Q, max_k])`,
    most similar first. Without a process group the slice is the whole train set.
    """
    n_local = train_features.shape[0]
    sims = queries @ train_features.T  # [Q, N_r]
    k_local = min(max_k, n_local)
    top_sims, top_idx = sims.topk(k_local, dim=1)
    top_labels = train_labels[top_idx]
    if k_local < max_k:  # a short slice: pad with impossible candidates so that all ranks gather one shape
        pad = max_k - k_local
        top_sims = torch.cat([top_sims, top_sims.new_full((queries.shape[0], pad), float("-inf"))], dim=1)
        top_labels = torch.cat([top_labels, top_labels.new_full((queries.shape[0], pad), -1)], dim=1)
    if not is_enabled():
        return top_sims, top_labels
    comm = communication_device(queries.device)
    gathered_sims = [torch.empty_like(top_sims, device=comm) for _ in range(get_global_size())]
    gathered_labels = [torch.empty_like(top_labels, device=comm) for _ in range(get_global_size())]
    dist.all_gather(gathered_sims, top_sims.to(comm))
    dist.all_gather(gathered_labels, top_labels.to(comm))
    all_sims = torch.cat(gathered_sims, dim=1).to(queries.device)  # [Q, W * max_k]
    all_labels = torch.cat(gathered_labels, dim=1).to(queries.device)
    best_sims, best_idx = all_sims.topk(max_k, dim=1)
    return best_sims, all_labels.gather(1, best_idx)


def knn_vote(
    neighbour_sims: Tensor,
    neighbour_labels: Tensor,
    *,
    ks: Sequence[int],
    temperature: float,
    num_classes: int,
) -> dict[int, Tensor]:
    """Class scores of weighted voting, one `[Q, C]` tensor per k in `ks`.

    `neighbour_sims [Q, K]`, `neighbour_labels [Q, K]` (K >= max(ks), most similar first). Weights are
    `softmax(sims / temperature)` over all K neighbours; the score of class c for k is the sum of the weights of
    the first k neighbours labelled c.
    """
    if max(ks) > neighbour_sims.shape[1]:
        raise ValueError(f"k={max(ks)} exceeds the {neighbour_sims.shape[1]} neighbours found")
    weights = (neighbour_sims / temperature).softmax(dim=1)
    labels = neighbour_labels.clamp(min=0)  # padded candidates (-1) have weight exp(-inf) = 0
    scores: dict[int, Tensor] = {}
    for k in ks:
        votes = torch.zeros(neighbour_sims.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
        scores[k] = votes.scatter_add_(1, labels[:, :k], weights[:, :k])
    return scores


def knn_classify(
    train_features: Tensor,
    train_labels: Tensor,
    queries: Tensor,
    *,
    ks: Sequence[int],
    temperature: float,
    num_classes: int,
    batch_size: int,
    device: torch.device,
) -> dict[int, Tensor]:
    """Weighted k-NN scores of every query, one `[Q, C]` tensor (on the CPU) per k, on every rank.

    `train_features [N, D]` unit rows, `train_labels [N]`, `queries [Q, D]` unit rows: the full sets, identical
    on every rank; each rank searches its `tensor_split` slice of the train set on `device`.
    """
    if max(ks) > train_features.shape[0]:
        raise ValueError(
            f"--nb_knn {list(ks)}: k={max(ks)} exceeds the {train_features.shape[0]} train samples; pass smaller k"
        )
    rank_slice = torch.tensor_split(torch.arange(train_features.shape[0]), get_global_size())[get_global_rank()]
    local_features = train_features[rank_slice].to(device)
    local_labels = train_labels[rank_slice].to(device)
    max_k = max(ks)
    scores: dict[int, list[Tensor]] = {k: [] for k in ks}
    for start in tqdm(range(0, queries.shape[0], batch_size), desc="k-NN search", disable=not is_main_process()):
        batch = queries[start : start + batch_size].to(device)
        sims, labels = knn_neighbours(batch, local_features, local_labels, max_k=max_k)
        for k, value in knn_vote(sims, labels, ks=ks, temperature=temperature, num_classes=num_classes).items():
            scores[k].append(value.cpu())
    return {k: torch.cat(parts) for k, parts in scores.items()}


def sample_per_class(labels: Tensor, n_per_class: int, seed: int) -> Tensor:
    """Indices of `n_per_class` random samples of every class in `labels [N]` (generator seeded with `seed`)."""
    generator = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    kept = []
    for label in labels.unique().tolist():
        members = (labels == label).nonzero().flatten()
        if members.numel() < n_per_class:
            raise ValueError(
                f"--n-per-class-list asks for {n_per_class} samples per class but class {label} has "
                f"{members.numel()}; pass a smaller value"
            )
        kept.append(members[torch.randperm(members.numel(), generator=generator)[:n_per_class]])
    return torch.cat(kept).sort().values


def knn_accuracies(
    train_features: Tensor,
    train_labels: Tensor,
    val_features: Tensor,
    val_labels: Tensor,
    *,
    nb_knn: Sequence[int] = DEFAULT_NB_KNN,
    temperature: float = DEFAULT_TEMPERATURE,
    n_per_class_list: Sequence[int] = (-1,),
    n_tries: int = 1,
    batch_size: int = 256,
    device: torch.device,
) -> dict[str, float]:
    """Top-1 / top-5 k-NN accuracies (%) for every k, keyed like `"('full', 20) Top 1"` (official names).

    `train_features [N, D]`, `val_features [Q, D]` unit rows; labels `[N]`, `[Q]`. `n_per_class_list`: -1 uses
    the full train set; n >= 0 keeps n random samples per class (`n_tries` tries, seeds 0..n_tries-1, averaged)
    and evaluates k in sorted(nb_knn + [n]) restricted to k <= n. Identical on every rank.
    """
    num_classes = int(train_labels.max()) + 1
    if int(val_labels.max()) >= num_classes or int(val_labels.min()) < 0:
        raise ValueError(
            f"val labels span [{int(val_labels.min())}, {int(val_labels.max())}] but the train set has classes "
            f"0..{num_classes - 1}; check --val-dataset"
        )
    topk = usable_topk(num_classes)
    results: dict[str, float] = {}
    for n_per_class in n_per_class_list:
        if n_per_class < 0:
            settings = [("'full'", list(nb_knn), None)]
        else:
            ks = sorted(k for k in set(nb_knn) | {n_per_class} if 0 < k <= n_per_class)
            settings = [(str(n_per_class), ks, seed) for seed in range(n_tries)]
        sums: dict[str, float] = {}
        for name, ks, seed in settings:
            subset = slice(None) if seed is None else sample_per_class(train_labels, n_per_class, seed)
            scores = knn_classify(
                train_features[subset],
                train_labels[subset],
                val_features,
                ks=ks,
                temperature=temperature,
                num_classes=num_classes,
                batch_size=batch_size,
                device=device,
            )
            for k, k_scores in scores.items():
                metric = ClassificationMetric(metric_type="mean_accuracy", num_classes=num_classes, topk=topk)
                metric.update(k_scores, val_labels.cpu())
                for top_name, value in metric.compute().items():
                    key = f"({name}, {k}) Top {top_name.split('-')[1]}"
                    sums[key] = sums.get(key, 0.0) + 100.0 * float(value)
        results.update({key: total / len(settings) for key, total in sums.items()})
    return results


def eval_knn(
    model: nn.Module,
    train_dataset: Dataset,
    val_dataset: Dataset,
    *,
    device: torch.device,
    autocast_dtype: torch.dtype = torch.float32,
    nb_knn: Sequence[int] = DEFAULT_NB_KNN,
    temperature: float = DEFAULT_TEMPERATURE,
    batch_size: int = 256,
    num_workers: int = 5,
    gather_on_cpu: bool = False,
    n_per_class_list: Sequence[int] = (-1,),
    n_tries: int = 1,
    output_dir: str | None = None,
) -> dict[str, float]:
    """Extract L2-normalised CLS features of both datasets (all ranks) and run `knn_accuracies`.

    `model`: the backbone on `device`, in eval mode (`model(images [B, 3, H, W]) -> [B, D]`). When `output_dir`
    is given, rank 0 appends the results as one JSON line to `<output_dir>/results_eval_knn.json`.
    """
    feature_model = ModelWithNormalize(model)
    extract = dict(
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        autocast_dtype=autocast_dtype,
        gather_on_cpu=gather_on_cpu,
    )
    train_features, train_labels = extract_features(feature_model, train_dataset, description="train", **extract)
    val_features, val_labels = extract_features(feature_model, val_dataset, description="val", **extract)
    results = knn_accuracies(
        train_features,
        train_labels,
        val_features,
        val_labels,
        nb_knn=nb_knn,
        temperature=temperature,
        n_per_class_list=n_per_class_list,
        n_tries=n_tries,
        batch_size=batch_size,
        device=device,
    )
    for key, value in results.items():
        logger.info("k-NN %s: %.2f", key, value)
    if output_dir is not None and is_main_process():
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, RESULTS_FILENAME), "a") as f:
            f.write(json.dumps(results) + "\n")
    return results
