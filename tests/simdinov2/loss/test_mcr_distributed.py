"""MCRLoss on 2 real gloo processes: reduce_cov=1 equals one process on the concatenated batch (value and
gradient); reduce_cov=0 is the per-rank estimate with effective eps W·eps."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from simdinov2.loss import MCRLoss, coding_rate

WORLD_SIZE, M, P, EPS = 2, 5, 4, 0.1


def _data() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    views = [F.normalize(torch.randn(WORLD_SIZE * M, P, generator=generator), dim=-1) for _ in range(6)]
    return views[:4], views[4:]  # 4 student views (2 global + 2 local), 2 teacher views


def _rows(rank: int) -> slice:
    return slice(rank * M, (rank + 1) * M)


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        students, teachers = _data()
        local_students = [s[_rows(rank)].clone().requires_grad_() for s in students]
        local_teachers = [t[_rows(rank)] for t in teachers]
        exact = MCRLoss(P, expa_type=1, reduce_cov=1, eps=EPS, coeff=0.5)
        loss, metrics = exact(local_students, local_teachers)
        loss.backward()
        per_rank = MCRLoss(P, expa_type=0, reduce_cov=0, eps=EPS)
        _, per_rank_metrics = per_rank(local_students, local_teachers)
        results = {
            "loss": loss.detach(),
            "metrics": metrics,
            "grads": [s.grad for s in local_students],
            "per_rank_metrics": per_rank_metrics,
            "theorem_gamma_exact": MCRLoss(P, reduce_cov=1, gamma_rule="theorem").gamma(n_per_rank=M, eps=EPS, coeff=1),
            "theorem_gamma_per_rank": MCRLoss(P, gamma_rule="theorem").gamma(n_per_rank=M, eps=EPS, coeff=1),
        }
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_reduce_cov_on_two_gloo_processes(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]

    students, teachers = _data()
    full_students = [s.clone().requires_grad_() for s in students]
    single_loss, single_metrics = MCRLoss(P, expa_type=1, reduce_cov=1, eps=EPS, coeff=0.5)(full_students, teachers)
    single_loss.backward()

    # value: the ranks' mean loss (what DDP/FSDP optimise) equals the single-process loss; the coding rate
    # itself is the same global value on every rank
    mean_loss = torch.stack([r["loss"] for r in results]).mean()
    torch.testing.assert_close(mean_loss, single_loss.detach())
    for rank, result in enumerate(results):
        torch.testing.assert_close(result["metrics"]["expa_loss"], single_metrics["expa_loss"])
        assert result["metrics"]["effective_eps"].item() == pytest.approx(EPS)
        # gradient of the rank-averaged objective w.r.t. this rank's rows = grad / W
        for local_grad, full in zip(result["grads"], full_students, strict=True):
            torch.testing.assert_close(local_grad / WORLD_SIZE, full.grad[_rows(rank)])

        # reduce_cov=0: each rank's own samples, effective eps = W·eps, official gamma with n = W·m
        metrics = result["per_rank_metrics"]
        assert metrics["effective_eps"].item() == pytest.approx(WORLD_SIZE * EPS)
        gamma = (P + WORLD_SIZE * M) / (P * WORLD_SIZE * M)
        local_globals = torch.stack([s[_rows(rank)] for s in students[:2]])
        rate = coding_rate(local_globals, WORLD_SIZE * EPS).value.mean()
        torch.testing.assert_close(metrics["expa_loss"], gamma * rate)

        n = WORLD_SIZE * M
        assert result["theorem_gamma_exact"] == pytest.approx((EPS * n / (P * min(P, n))) ** 0.5)
        assert result["theorem_gamma_per_rank"] == pytest.approx((WORLD_SIZE * EPS * M / (P * min(P, M))) ** 0.5)
