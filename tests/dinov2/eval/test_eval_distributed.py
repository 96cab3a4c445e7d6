"""Two real gloo processes give the same features, k-NN scores, metrics, C scores and heads as one process."""

import os
import pathlib
import threading

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import Dataset
from tqdm import tqdm

from dinov2.eval.knn import knn_classify
from dinov2.eval.linear import EvalDataset, LinearEvalSettings, eval_linear
from dinov2.eval.log_regression import select_c
from dinov2.eval.metrics import ClassificationMetric
from dinov2.eval.utils import ModelWithNormalize, all_gather_rows, extract_features, rank_shard
from dinov2.models import build_model_from_cfg
from dinov2.utils.config import load_config

CPU = torch.device("cpu")
# rank 0 gets 19 samples (batches 6, 6, 6, 1), rank 1 gets 18 (6, 6, 6): rank 1 joins the 4th gather empty-handed
N_SAMPLES = 37
BATCH_SIZE = 6
KS = [1, 3, 5]
C_VALUES = [1e-4, 1e-1, 10.0]


class NoisyImages(Dataset):
    """Deterministic random images `[3, 32, 32]` with labels `i % 3` (no transform, no decoding)."""

    def __init__(self, n: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, 32, 32, generator=generator)
        self.targets = torch.arange(n) % 3
        self.images += self.targets[:, None, None, None].float()  # make the classes learnable

    def get_targets(self) -> torch.Tensor:
        return self.targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.targets[index])


def tiny_model() -> torch.nn.Module:
    cfg = load_config(None, ["student.arch=vit_tiny", "student.depth=2", "student.patch_size=8",
                             "student.layerscale=0.1", "crops.global_crops_size=32"])  # fmt: skip
    torch.manual_seed(0)
    model, _ = build_model_from_cfg(cfg, only_teacher=True)
    return model.eval()


def compute_all(output_dir: pathlib.Path) -> dict:
    """Everything compared between 1 and 2 processes (run on every rank)."""
    model = tiny_model()
    dataset = NoisyImages(N_SAMPLES)
    features, labels = extract_features(
        ModelWithNormalize(model), dataset, batch_size=BATCH_SIZE, num_workers=0, device=CPU, gather_on_cpu=True
    )
    scores = knn_classify(features[:30], labels[:30], features[30:], ks=KS, temperature=0.07, num_classes=3,
                          batch_size=3, device=CPU)  # fmt: skip
    metric = ClassificationMetric(metric_type="mean_per_class_accuracy", num_classes=3, topk=(1, 2))
    shard = torch.tensor(list(rank_shard(N_SAMPLES)))
    metric.update(features[shard, :3], labels[shard])  # any scores will do: the sums must match
    metric.reduce(CPU)
    numpy_features = features.double().numpy()
    numpy_labels = labels.numpy()
    _, c_scores = select_c("sklearn", (numpy_features[:30], numpy_labels[:30]), (numpy_features[30:],
                           numpy_labels[30:]), c_values=C_VALUES, max_iter=200, num_classes=3,
                           metric_type="mean_accuracy")  # fmt: skip
    settings = LinearEvalSettings(epochs=2, epoch_length=2, batch_size=4, num_workers=0, eval_period_iterations=0,
                                  learning_rates=(0.5,), n_last_blocks_list=(1, 2))  # fmt: skip
    linear = eval_linear(model, dataset, EvalDataset(name="val", dataset=dataset), settings=settings,
                         output_dir=str(output_dir), device=CPU)  # fmt: skip
    return {
        "features": features,
        "labels": labels,
        "scores": scores,
        "metric": metric.compute(),
        "c_scores": c_scores,
        "linear": linear,
    }


def worker(rank: int, store: str, output_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        results = compute_all(pathlib.Path(output_dir) / "linear")
        # a rank without rows takes part in the gather and receives the other rank's rows
        rows = torch.arange(6.0).view(3, 2) if rank == 0 else torch.zeros(0, 2)
        results["gathered"] = all_gather_rows(rows, CPU)
        torch.save(results, os.path.join(output_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one_process(tmp_path) -> None:
    single = compute_all(tmp_path / "single")
    # fork is fast (the workers inherit the imports: a fresh interpreter spends ~5 s of CPU importing torchvision
    # and scikit-learn) but unsafe while other threads may hold locks: stop tqdm's monitor thread (tqdm restarts it
    # on demand) and fall back to forkserver if any other thread is alive
    if tqdm.monitor is not None:
        tqdm.monitor.exit()
        tqdm.monitor = None
    start_method = "fork" if threading.active_count() == 1 else "forkserver"
    mp.start_processes(
        worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True, start_method=start_method
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for result in ranks:
        torch.testing.assert_close(result["features"], single["features"], rtol=1e-5, atol=1e-6)
        assert torch.equal(result["labels"], single["labels"]) and result["labels"].shape == (N_SAMPLES,)
        for k in KS:
            torch.testing.assert_close(result["scores"][k], single["scores"][k], rtol=1e-4, atol=1e-6)
        for key, value in single["metric"].items():
            torch.testing.assert_close(result["metric"][key], value)
        assert result["c_scores"].keys() == single["c_scores"].keys()
        for c, accuracy in single["c_scores"].items():
            assert abs(result["c_scores"][c] - accuracy) < 1e-6
        assert torch.equal(result["gathered"], torch.arange(6.0).view(3, 2))
    # DDP keeps the heads of both ranks identical and the validation metrics are summed over the two shards
    assert ranks[0]["linear"] == ranks[1]["linear"]
    assert len(ranks[0]["linear"]["val"]) == 4
