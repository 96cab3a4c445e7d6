"""torch.hub entry points, e.g. `torch.hub.load("<this repo>", "dinov2_vitl14", source="local", weights=PATH)`.

`simdinov2_vitb16` / `simdino_vitb16` (and the ViT-L variants) load the SimDINO releases from a local file;
`training_run(run_dir)` loads the teacher of a run of this project.
"""

from dinov2.hub.backbones import (
    dinov2_vitb14,
    dinov2_vitb14_reg,
    dinov2_vitg14,
    dinov2_vitg14_reg,
    dinov2_vitl14,
    dinov2_vitl14_reg,
    dinov2_vits14,
    dinov2_vits14_reg,
    simdino_vitb16,
    simdino_vitl16,
    simdinov2_vitb16,
    simdinov2_vitl16,
    training_run,
)

dependencies = ["torch"]

__all__ = [
    "dinov2_vitb14",
    "dinov2_vitb14_reg",
    "dinov2_vitg14",
    "dinov2_vitg14_reg",
    "dinov2_vitl14",
    "dinov2_vitl14_reg",
    "dinov2_vits14",
    "dinov2_vits14_reg",
    "simdino_vitb16",
    "simdino_vitl16",
    "simdinov2_vitb16",
    "simdinov2_vitl16",
    "training_run",
]
