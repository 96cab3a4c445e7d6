"""ADE20K linear semantic segmentation on a frozen backbone (DINOv2's protocols) with mmsegmentation 1.x.

Modules (imported explicitly; importing this package imports none of them, so it has no side effects):

* `eval.segmentation.layout`: `check_ade20k_layout(data_root)`, the folder layout the evaluation reads.
* `eval.segmentation.configs`: `ade20k_config(protocol="linear" | "ms", ...)`, the mmengine config.
* `eval.segmentation.models`: the mmseg modules `DinoVisionTransformerBackbone`, `BNHead` and the
  `LoadRGBImageFromFile` transform; importing it registers them (and the `mmcv._ext` stand-in when mmcv has
  no compiled ops).
* `eval.segmentation.mmcv_ext`: the stand-in for mmcv's compiled extension (mmcv-lite installs).
* `eval.segmentation.run`: `train_and_evaluate(cfg)`, `save_head`, `predict_samples`, `save_prediction_figure`.

Command line: `tools/eval_segmentation.py`.
"""
