"""torch.hub-style entry points (see `dinov2/hub/backbones.py`; re-exported by the root `hubconf.py`)."""
