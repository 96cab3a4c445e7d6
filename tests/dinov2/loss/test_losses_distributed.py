"""DINO / iBOT teacher-side statistics on 2 real gloo processes equal one process on the concatenated batch."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dinov2.loss import DINOLoss, iBOTPatchLoss

WORLD_SIZE = 2
K = 6
TEMP = 0.07


def _data() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "cls_logits": torch.randn(8, K, generator=generator),  # 4 rows per rank
        "patch_logits": torch.randn(8, K, generator=generator),  # 3 rows on rank 0, 5 on rank 1
    }


def _patch_rows(rank: int) -> slice:
    return slice(0, 3) if rank == 0 else slice(3, 8)


def _worker(rank: int, init_file: str, out_dir: str, data: dict[str, torch.Tensor]) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        cls_logits = data["cls_logits"][4 * rank : 4 * (rank + 1)]
        patch_logits = data["patch_logits"][_patch_rows(rank)]
        dino, ibot = DINOLoss(K), iBOTPatchLoss(K)
        # centre updates stay in flight while other collectives (Sinkhorn-Knopp) run
        dino.update_center(cls_logits)
        ibot.update_center(patch_logits[None])
        count = torch.tensor([patch_logits.shape[0]])
        results = {
            "dino_sinkhorn": dino.sinkhorn_knopp_teacher(cls_logits, TEMP),
            "ibot_sinkhorn": ibot.sinkhorn_knopp_teacher(patch_logits, TEMP, count),
            "count_after": count,
        }
        dino.apply_center_update()
        ibot.apply_center_update()
        results["dino_center"] = dino.center
        results["ibot_center"] = ibot.center
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_sinkhorn_and_centering_across_two_gloo_processes(tmp_path):
    data = _data()
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path), data), nprocs=WORLD_SIZE, join=True)
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]

    dino, ibot = DINOLoss(K), iBOTPatchLoss(K)
    single_dino = dino.sinkhorn_knopp_teacher(data["cls_logits"], TEMP)
    single_ibot = ibot.sinkhorn_knopp_teacher(data["patch_logits"], TEMP, torch.tensor([8]))
    for rank, result in enumerate(results):
        torch.testing.assert_close(result["dino_sinkhorn"], single_dino[4 * rank : 4 * (rank + 1)])
        torch.testing.assert_close(result["ibot_sinkhorn"], single_ibot[_patch_rows(rank)])
        assert result["count_after"].item() == (3 if rank == 0 else 5)  # the batch tensor is not mutated
        # DINO: EMA of the global batch mean
        torch.testing.assert_close(result["dino_center"], 0.1 * data["cls_logits"].mean(dim=0, keepdim=True))
        # iBOT (as upstream): the average over ranks of each rank's mean over its masked patches
        rank_means = [data["patch_logits"][_patch_rows(r)].mean(dim=0) for r in range(WORLD_SIZE)]
        torch.testing.assert_close(result["ibot_center"], 0.1 * torch.stack(rank_means).mean(0).view(1, 1, K))
