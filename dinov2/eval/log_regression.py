"""L2-regularised logistic regression on frozen CLS features (the DINOv2 log-regression protocol).

Protocol (as official DINOv2): features = the backbone's CLS embedding (final norm, **not** L2-normalised),
extracted with Resize(224) + CenterCrop(224); a multinomial logistic regression (L2 penalty, tol 1e-12,
`max_iter` 1000, float64) is fitted for each C of the grid `10 ** linspace(-6, 5, 45)`; C is chosen by top-1 on
a selection set — a random 10 % of the train set (generator seed 0) by default, the validation set with
`finetune_on_val`, or a separate fine-tuning dataset — the C values being distributed round-robin over the
ranks and the scores all-gathered; the final model is fitted with the best C on the train set (the full train
set, the 10 % included; plus the fine-tuning dataset when one is given) on every rank and evaluated on the
validation set (top-1 / top-5 in %).

Backend: cuML's `LogisticRegression` (GPU; the official one, `linesearch_max_iter` 50) when `backend="cuml"`,
scikit-learn's (lbfgs, CPU) when `backend="sklearn"`; `backend="auto"` takes cuML when it is importable and
logs the choice. The two solvers stop at slightly different points, so accuracies can differ in the decimals.
"""

import importlib.util
import logging
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from dinov2.distributed import get_global_rank, get_global_size, is_enabled
from dinov2.eval.metrics import ClassificationMetric, MetricType, check_metric_type, usable_topk

logger = logging.getLogger(__name__)

Backend = Literal["auto", "sklearn", "cuml"]
DEFAULT_C_VALUES: tuple[float, ...] = tuple(float(c) for c in 10 ** np.linspace(-6, 5, 45))
DEFAULT_MAX_ITER = 1000
SELECTION_FRACTION = 0.1


def resolve_backend(backend: str) -> Literal["sklearn", "cuml"]:
    """`auto` -> `cuml` when the `cuml` package is importable, else `sklearn` (logged)."""
    if backend not in ("auto", "sklearn", "cuml"):
        raise ValueError(f"--backend={backend!r} is not one of ['auto', 'sklearn', 'cuml']; change --backend")
    has_cuml = importlib.util.find_spec("cuml") is not None
    if backend == "cuml" and not has_cuml:
        raise ValueError("--backend cuml but the cuml package is not installed; install cuML or use --backend sklearn")
    resolved: Literal["sklearn", "cuml"] = (
        "cuml" if backend == "cuml" or (backend == "auto" and has_cuml) else "sklearn"
    )
    logger.info("logistic regression backend: %s (requested %s)", resolved, backend)
    return resolved


def make_estimator(backend: Literal["sklearn", "cuml"], *, c: float, max_iter: int) -> Any:
    """An unfitted L2-regularised multinomial logistic regression with inverse regularisation `c`."""
    if backend == "cuml":
        from cuml.linear_model import LogisticRegression as CumlLogisticRegression

        return CumlLogisticRegression(
            penalty="l2", C=c, max_iter=max_iter, tol=1e-12, linesearch_max_iter=50, output_type="numpy"
        )
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=max_iter, tol=1e-12)  # default penalty: l2


def _scores(estimator: Any, features: np.ndarray, num_classes: int) -> Tensor:
    """Class probabilities `[N, C]` with columns in class order (absent classes get probability 0)."""
    probs = np.asarray(estimator.predict_proba(features))
    scores = np.zeros((features.shape[0], num_classes), dtype=probs.dtype)
    scores[:, np.asarray(estimator.classes_, dtype=np.int64)] = probs
    return torch.from_numpy(scores)


def fit_and_score(
    backend: Literal["sklearn", "cuml"],
    train: tuple[np.ndarray, np.ndarray],
    evaluation: tuple[np.ndarray, np.ndarray],
    *,
    c: float,
    max_iter: int,
    num_classes: int,
    metric_type: MetricType,
) -> dict[str, float]:
    """Fit on `train = (features [N, D], labels [N])`, return `{"top-1": %, "top-5": %}` on `evaluation`."""
    estimator = make_estimator(backend, c=c, max_iter=max_iter)
    estimator.fit(*train)
    metric = ClassificationMetric(metric_type=metric_type, num_classes=num_classes, topk=usable_topk(num_classes))
    metric.update(_scores(estimator, evaluation[0], num_classes), torch.from_numpy(evaluation[1]))
    return {key: 100.0 * float(value) for key, value in metric.compute().items()}


def split_selection_set(num_samples: int, fraction: float = SELECTION_FRACTION, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Random `(fit indices, selection indices)` of a train set; the selection part has `int(fraction·N)` rows."""
    permutation = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))
    n_selection = int(fraction * num_samples)
    if n_selection == 0:
        raise ValueError(f"a {fraction:.0%} selection split of {num_samples} train samples is empty; use more data")
    return permutation[n_selection:].sort().values, permutation[:n_selection].sort().values


def _all_gather_objects(values: list) -> list:
    if not is_enabled():
        return values
    gathered: list[list | None] = [None] * get_global_size()
    dist.all_gather_object(gathered, values)
    return [item for part in gathered for item in (part or [])]


def select_c(
    backend: Literal["sklearn", "cuml"],
    fit: tuple[np.ndarray, np.ndarray],
    selection: tuple[np.ndarray, np.ndarray],
    *,
    c_values: Sequence[float],
    max_iter: int,
    num_classes: int,
    metric_type: MetricType,
) -> tuple[float, dict[float, float]]:
    """Best C by top-1 on `selection` (ties: the smaller C); the C values are split round-robin over ranks.

    Returns `(best C, {C: top-1 %})` on every rank.
    """
    mine = [
        (
            c,
            fit_and_score(
                backend, fit, selection, c=c, max_iter=max_iter, num_classes=num_classes, metric_type=metric_type
            )["top-1"],
        )
        for c in list(c_values)[get_global_rank() :: get_global_size()]
    ]
    for c, accuracy in mine:
        logger.info("C=%.3g: selection top-1 %.2f%%", c, accuracy)
    scores = dict(sorted(_all_gather_objects(mine)))
    best_c = max(scores, key=lambda c: (scores[c], -c))
    return best_c, scores


def eval_log_regression(
    train_features: Tensor,
    train_labels: Tensor,
    val_features: Tensor,
    val_labels: Tensor,
    *,
    finetune: tuple[Tensor, Tensor] | None = None,
    finetune_on_val: bool = False,
    c_values: Sequence[float] = DEFAULT_C_VALUES,
    max_iter: int = DEFAULT_MAX_ITER,
    dtype: Literal["float32", "float64"] = "float64",
    metric_type: MetricType = "mean_accuracy",
    backend: Backend = "auto",
) -> dict[str, float]:
    """Choose C, fit the final model, evaluate it: `{"top-1": %, "top-5": %, "best_C": C}` on every rank.

    Features `[N, D]` / `[Q, D]`, labels `[N]` / `[Q]`. The selection set is `finetune` (features, labels) when
    given, else the validation set when `finetune_on_val`, else a random 10 % of the train set.
    """
    check_metric_type(metric_type, "--metric-type")
    if metric_type == "per_class_accuracy":
        raise ValueError("--metric-type per_class_accuracy gives no single number to select C; change --metric-type")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"--train-dtype={dtype!r} is not one of ['float32', 'float64']; change --train-dtype")
    if finetune is not None and finetune_on_val:
        raise ValueError("--finetune-dataset-str and --finetune-on-val both choose the selection set; pass only one")
    chosen = resolve_backend(backend)

    def as_numpy(features: Tensor, labels: Tensor) -> tuple[np.ndarray, np.ndarray]:
        return features.detach().cpu().numpy().astype(dtype), labels.detach().cpu().numpy().astype(np.int64)

    train = as_numpy(train_features, train_labels)
    val = as_numpy(val_features, val_labels)
    num_classes = int(max(train[1].max(), val[1].max())) + 1
    if finetune is not None:
        fit, selection = train, as_numpy(*finetune)
    elif finetune_on_val:
        fit, selection = train, val
    else:
        fit_idx, selection_idx = split_selection_set(train[0].shape[0])
        fit = (train[0][fit_idx.numpy()], train[1][fit_idx.numpy()])
        selection = (train[0][selection_idx.numpy()], train[1][selection_idx.numpy()])
    best_c, _ = select_c(
        chosen,
        fit,
        selection,
        c_values=c_values,
        max_iter=max_iter,
        num_classes=num_classes,
        metric_type=metric_type,
    )
    if finetune is not None:  # the fine-tuning samples join the final fit (with the 10 % split: the full train set)
        train = (np.concatenate([train[0], selection[0]]), np.concatenate([train[1], selection[1]]))
    logger.info("best C = %.4g; fitting the final model on %d samples", best_c, train[0].shape[0])
    final = fit_and_score(
        chosen, train, val, c=best_c, max_iter=max_iter, num_classes=num_classes, metric_type=metric_type
    )
    results = {**final, "best_C": best_c}
    logger.info("logistic regression: %s", results)
    return results
