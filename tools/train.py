"""Train DINOv2 or SimDINO / SimDINOv2 (chosen by the config, see simdinov2/train/build.py): one process,
torchrun, or SLURM jobs (--submit).

    python tools/train.py --config-file configs/tiny/dinov2_digits.yaml --output-dir runs/tiny
    torchrun --nproc_per_node 8 tools/train.py --config-file configs/dinov2_vitl16.yaml --output-dir runs/l16 \
        train.dataset_path=ImageNet:split=TRAIN:root=/data/imagenet:extra=/data/imagenet-extra
    python tools/train.py --submit --nodes 2 --ngpus 8 --partition PART --config-file configs/dinov2_vitl16.yaml \
        --output-dir /checkpoint/$USER/l16 train.dataset_path=ImageNet:split=TRAIN:root=/data/imagenet:extra=...

With --submit (flags of dinov2.run.submit.add_submit_args; they go before the key=value overrides) the job
runs one task per GPU on every node, checkpoints and requeues itself on SLURM's time-limit warning, and
resumes in the same output directory. SIGTERM and Ctrl-C save a checkpoint at the next logged iteration
and exit with 143 / 130 (a second Ctrl-C exits at once); rerunning the same command resumes.
"""

import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402

from dinov2.run.preemption import TrainingPreempted  # noqa: E402
from dinov2.run.submit import add_submit_args, run_or_submit  # noqa: E402
from dinov2.train.train import check_args, get_args_parser, main  # noqa: E402
from simdinov2.train.build import build_meta_arch, select_meta_arch  # noqa: E402


def check(args: argparse.Namespace) -> None:
    """The config (keys, scaling rule, dataset string, objective selector), checked before training or submitting."""
    select_meta_arch(check_args(args))


if __name__ == "__main__":
    args = add_submit_args(get_args_parser()).parse_args()
    train = functools.partial(main, meta_arch_factory=build_meta_arch)
    try:
        run_or_submit(train, args, name="dinov2:train", check=check, echo=print)
    except TrainingPreempted as stop:  # SIGTERM / Ctrl-C: the checkpoint is saved, rerunning resumes
        print(f"training {stop}; checkpoint saved in {args.output_dir}/checkpoints: rerun the same command to resume",
              file=sys.stderr)  # fmt: skip
        sys.exit(128 + stop.signum)
