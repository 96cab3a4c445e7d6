"""mmsegmentation 1.x configs of DINOv2's ADE20K segmentation protocols on a frozen backbone.

`ade20k_config` builds the whole mmengine config (model, data pipelines, optimiser, schedule, loops) from a
few arguments, so the protocol lives in one place and tests can run it at a small resolution unchanged.
The resolved config is written next to the results by `tools/eval_segmentation.py`.

Protocols (values of the official `dinov2_vit*14_ade20k_{linear,ms}_config.py`, mmseg 0.x, expressed in 1.x):

* `linear`: the last block's patch tokens (after the final LayerNorm) -> BatchNorm -> 1x1 conv, 150 classes.
  Train: resize so the short side is 512*r, r ~ U(0.5, 2) -> random 512x512 crop (at most 75% of one class)
  -> horizontal flip p=0.5 -> photometric distortion; pad to 512x512 (image 0 after normalisation, label
  255). AdamW lr 1e-3, weight decay 1e-4, betas (0.9, 0.999), no clipping; poly decay (power 1) to 0 over
  40k iterations, multiplied during the first 1500 by a linear warm-up from ratio 1e-6; batch 16.
  Test: short side resized to 512, slide inference with 512x512 windows and stride 341.
* `ms` ("+ms"): the last four blocks concatenated (4*D channels) -> BatchNorm -> 1x1 conv at 640 resolution:
  train short side 640*r, r ~ U(1, 3), 640 crops; test-time augmentation over short sides
  640*{1.0, 1.32, 1.73, 2.28, 3.0} with and without horizontal flip (softmax averaged), slide windows of
  640 with stride 426 (2/3 of the crop, as 341 is for 512).

Both: CrossEntropy over the 150 classes with label 255 ignored (ADE20K's "other" = 0 is mapped to 255),
normalised by all pixels of the batch (mmseg's default, `avg_non_ignore=False`); mIoU/mAcc/aAcc by mmseg's
`IoUMetric` at the original annotation resolution.

Differences from the official 0.x runs:
* learning rate at iteration t: mmengine's LinearLR and PolyLR, both started at iteration 0, give
  1e-3 * (1e-6 + (1 - 1e-6) * min(t / 1499, 1)) * (1 - t / 39999); mmseg 0.x computed
  1e-3 * (1e-6 + (1 - 1e-6) * min(t / 1500, 1)) * (1 - t / 40000) (relative difference below 0.07%).
  (mmseg 1.x's own configs instead restart the poly curve at the end of the warm-up, up to 4% higher.)
* no intermediate validation (the official one every 10k iterations only monitored the run; the final
  model is evaluated once) and no periodic mmengine checkpoints (they would hold the whole backbone; the
  trained head is saved on its own by `tools/eval_segmentation.py`).
* the +ms training scale range (1, 3) and stride 426 are our reading of the official "+ms" config of
  github.com/facebookresearch/dinov2 (not checked against the file itself).
"""

from typing import Literal

from mmengine.config import Config

Protocol = Literal["linear", "ms"]
PROTOCOLS: tuple[Protocol, ...] = ("linear", "ms")

ADE20K_NUM_CLASSES = 150
OFFICIAL_ITERS = 40_000
OFFICIAL_WARMUP_ITERS = 1_500
OFFICIAL_BATCH_SIZE = 16
DEFAULT_CROP_SIZE: dict[Protocol, int] = {"linear": 512, "ms": 640}
TRAIN_RATIO_RANGE: dict[Protocol, tuple[float, float]] = {"linear": (0.5, 2.0), "ms": (1.0, 3.0)}
MS_TEST_RATIOS = (1.0, 1.32, 1.73, 2.28, 3.0)
BACKBONE_OUT_INDICES: dict[Protocol, tuple[int, ...]] = {"linear": (-1,), "ms": (-4, -3, -2, -1)}
# Long side limit of keep-ratio resizes: large enough that the short side always decides the scale.
UNBOUNDED_LONG_SIDE = 99_999_999
IMAGENET_MEAN_255 = [123.675, 116.28, 103.53]
IMAGENET_STD_255 = [58.395, 57.12, 57.375]


def slide_stride(crop_size: int) -> int:
    """Slide-inference stride: two thirds of the window, rounded down (512 -> 341, 640 -> 426)."""
    return crop_size * 2 // 3


def warmup_iters_for(iters: int) -> int:
    """Warm-up length: 1500 of 40k iterations, scaled with `iters`; at least 2, the shortest warm-up that
    reaches the full learning rate (mmengine's LinearLR reaches it on its last iteration)."""
    if iters < 2:
        raise ValueError(f"iters={iters} must be at least 2 (the shortest warm-up); raise --iters")
    return min(max(2, round(iters * OFFICIAL_WARMUP_ITERS / OFFICIAL_ITERS)), iters)


def _dataset(data_root: str, split: Literal["training", "validation"], pipeline: list[dict]) -> dict:
    return dict(
        type="ADE20KDataset",
        data_root=data_root,
        reduce_zero_label=True,  # read by LoadAnnotations (passing it there too is deprecated in mmseg 1.x)
        data_prefix=dict(img_path=f"images/{split}", seg_map_path=f"annotations/{split}"),
        pipeline=pipeline,
    )


def _eval_dataloader(data_root: str, pipeline: list[dict], num_workers: int) -> dict:
    return dict(
        batch_size=1,
        num_workers=num_workers,
        persistent_workers=False,
        sampler=dict(type="DefaultSampler", shuffle=False),
        dataset=_dataset(data_root, "validation", pipeline),
    )


def ade20k_config(
    *,
    protocol: Protocol,
    data_root: str,
    work_dir: str,
    backbone: dict,
    embed_dim: int,
    crop_size: int | None = None,
    iters: int = OFFICIAL_ITERS,
    batch_size_per_gpu: int = 2,
    num_workers: int = 4,
    seed: int = 0,
    log_interval: int = 50,
    launcher: Literal["none", "pytorch"] = "none",
) -> Config:
    """The mmengine config of `protocol` on the ADE20K folder layout at `data_root` (ADEChallengeData2016).

    Args:
        protocol: "linear" (DINOv2 linear) or "ms" (DINOv2 +ms).
        data_root: folder with images/{training,validation}/*.jpg and annotations/{training,validation}/*.png.
        work_dir: where mmengine writes its logs.
        backbone: keyword arguments of `DinoVisionTransformerBackbone` other than `out_indices` (which the
            protocol sets), i.e. the `build_backbone_for_eval` flags.
        embed_dim: the backbone's width D (the head reads D or 4*D channels).
        crop_size: training crop, slide window and test short side (512 linear / 640 ms by default); smaller
            values only for smoke runs.
        iters: training iterations (40k); the warm-up is scaled with it (see `warmup_iters_for`).
        batch_size_per_gpu: images per process and step (the official 16 = 2 per GPU x 8 GPUs).
        num_workers: dataloader workers per process.
        seed: mmengine's random seed.
        log_interval: iterations between progress lines.
        launcher: "pytorch" for a multi-GPU run (the process group must exist already, e.g. from
            `dinov2.distributed.enable()`, or mmengine creates an NCCL one from the torchrun variables).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r} is not one of {list(PROTOCOLS)}; fix --protocol")
    if "out_indices" in backbone:
        raise ValueError(f"backbone={backbone} must not set out_indices: protocol {protocol!r} decides them")
    crop = crop_size or DEFAULT_CROP_SIZE[protocol]
    stride = slide_stride(crop)
    warmup = warmup_iters_for(iters)
    out_indices = BACKBONE_OUT_INDICES[protocol]
    n_maps = len(out_indices)

    train_pipeline = [
        dict(type="LoadRGBImageFromFile"),
        dict(type="LoadAnnotations"),
        dict(
            type="RandomResize",
            scale=(UNBOUNDED_LONG_SIDE, crop),
            ratio_range=TRAIN_RATIO_RANGE[protocol],
            keep_ratio=True,
        ),
        dict(type="RandomCrop", crop_size=(crop, crop), cat_max_ratio=0.75),
        dict(type="RandomFlip", prob=0.5),
        dict(type="PhotoMetricDistortion"),
        dict(type="PackSegInputs"),
    ]
    test_pipeline = [
        dict(type="LoadRGBImageFromFile"),
        dict(type="Resize", scale=(UNBOUNDED_LONG_SIDE, crop), keep_ratio=True),
        dict(type="LoadAnnotations"),
        dict(type="PackSegInputs"),
    ]
    cfg = dict(
        default_scope="mmseg",
        custom_imports=dict(imports=["eval.segmentation.models"], allow_failed_imports=False),
        protocol=protocol,
        crop_size=(crop, crop),
        work_dir=work_dir,
        model=dict(
            type="EncoderDecoder",
            data_preprocessor=dict(
                type="SegDataPreProcessor",
                mean=IMAGENET_MEAN_255,
                std=IMAGENET_STD_255,
                bgr_to_rgb=True,
                pad_val=0,
                seg_pad_val=255,
                size=(crop, crop),
            ),
            backbone=dict(type="DinoVisionTransformerBackbone", **backbone, out_indices=out_indices),
            decode_head=dict(
                type="BNHead",
                in_channels=[embed_dim] * n_maps,
                channels=embed_dim * n_maps,
                in_index=list(range(n_maps)),
                input_transform="resize_concat",
                dropout_ratio=0.0,
                num_classes=ADE20K_NUM_CLASSES,
                norm_cfg=dict(type="SyncBN", requires_grad=True),
                align_corners=False,
                loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
            ),
            train_cfg=dict(),
            test_cfg=dict(mode="slide", crop_size=(crop, crop), stride=(stride, stride)),
        ),
        train_dataloader=dict(
            batch_size=batch_size_per_gpu,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            sampler=dict(type="InfiniteSampler", shuffle=True),
            dataset=_dataset(data_root, "training", train_pipeline),
        ),
        test_dataloader=_eval_dataloader(data_root, test_pipeline, num_workers),
        test_evaluator=dict(type="IoUMetric", iou_metrics=["mIoU"]),
        test_cfg=dict(type="TestLoop"),
        optim_wrapper=dict(
            type="OptimWrapper",
            optimizer=dict(type="AdamW", lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-4),
            clip_grad=None,
        ),
        param_scheduler=[
            dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=warmup),
            # Both from iteration 0: mmengine chains them multiplicatively, so the warm-up scales the poly
            # curve as mmseg 0.x's poly policy with linear warm-up did.
            dict(type="PolyLR", power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=iters),
        ],
        train_cfg=dict(type="IterBasedTrainLoop", max_iters=iters),
        default_hooks=dict(
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=log_interval, log_metric_by_epoch=False),
            param_scheduler=dict(type="ParamSchedulerHook"),
            checkpoint=None,
            sampler_seed=dict(type="DistSamplerSeedHook"),
        ),
        log_processor=dict(by_epoch=False),
        log_level="INFO",
        randomness=dict(seed=seed),
        launcher=launcher,
        env_cfg=dict(
            cudnn_benchmark=False,
            mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
            dist_cfg=dict(backend="nccl"),
        ),
    )
    if protocol == "ms":
        tta_resizes = [
            dict(type="Resize", scale=(UNBOUNDED_LONG_SIDE, round(crop * ratio)), keep_ratio=True)
            for ratio in MS_TEST_RATIOS
        ]
        tta_pipeline = [
            dict(type="LoadRGBImageFromFile"),
            dict(
                type="TestTimeAug",
                transforms=[
                    tta_resizes,
                    [
                        dict(type="RandomFlip", prob=0.0, direction="horizontal"),
                        dict(type="RandomFlip", prob=1.0, direction="horizontal"),
                    ],
                    [dict(type="LoadAnnotations")],
                    [dict(type="PackSegInputs")],
                ],
            ),
        ]
        cfg["tta_model"] = dict(type="SegTTAModel")
        cfg["tta_dataloader"] = _eval_dataloader(data_root, tta_pipeline, num_workers)
    return Config(cfg)
