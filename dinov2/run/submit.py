"""Submit training and evaluation entry points to SLURM through submitit.

Every tool that accepts `--submit` shares the flags of `add_submit_args`. The job runs the tool's
`main(args)` once per task (one task per GPU, or `--tasks-per-node` tasks on CPU nodes);
`dinov2.distributed.enable()` builds the process group from SLURM's variables. On preemption or time-out
the job checkpoints at the next iteration boundary (see `dinov2.run.preemption`) and requeues itself;
the requeued job resumes from that checkpoint in the same output directory.
"""

import argparse
import logging
import os
import signal
from pathlib import Path
from typing import Any, Callable

import submitit

from dinov2.run import preemption

logger = logging.getLogger(__name__)

EntryPoint = Callable[[argparse.Namespace], Any]


def add_submit_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add `--submit` and the SLURM resource flags to a tool's parser."""
    group = parser.add_argument_group("SLURM submission (with --submit)")
    group.add_argument("--submit", action="store_true", help="submit to SLURM through submitit instead of running here")
    group.add_argument("--nodes", type=int, default=1, help="number of nodes")
    group.add_argument("--ngpus", type=int, default=8, help="GPUs per node (one task per GPU); 0 for CPU nodes")
    group.add_argument("--tasks-per-node", type=int, default=None, help="tasks per node (default: --ngpus, or 1)")
    group.add_argument("--timeout", type=int, default=2800, help="time limit of one job, in minutes")
    group.add_argument("--partition", default=None, help="SLURM partition (default: the cluster's default)")
    group.add_argument("--account", default=None, help="SLURM account to charge")
    group.add_argument("--qos", default=None, help="SLURM quality of service")
    group.add_argument("--comment", default=None, help="SLURM job comment")
    group.add_argument("--exclude", default=None, help="nodes to exclude, SLURM node-list syntax")
    group.add_argument("--constraint", default=None, help="SLURM feature constraint, e.g. volta32gb")
    group.add_argument("--mem", type=int, default=None, help="memory per node in GB (default: the cluster's default)")
    group.add_argument("--cpus-per-task", type=int, default=10, help="CPU cores per task")
    group.add_argument(
        "--job-dir", default=None, help="folder for submitit's scripts and logs; %%j is the job id (default: OUTPUT_DIR)"
    )
    group.add_argument("--signal-delay", type=int, default=120, help="seconds before the time limit to checkpoint")
    group.add_argument("--max-requeues", type=int, default=30, help="how often a timed-out job may requeue itself")
    return parser


def slurm_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """submitit executor parameters from the parsed flags (only the ones that were given)."""
    tasks_per_node = args.tasks_per_node or max(args.ngpus, 1)
    params: dict[str, Any] = {
        "nodes": args.nodes,
        "tasks_per_node": tasks_per_node,
        "cpus_per_task": args.cpus_per_task,
        "timeout_min": args.timeout,
        "slurm_signal_delay_s": args.signal_delay,
    }
    if args.ngpus > 0:
        params["gpus_per_node"] = args.ngpus
    optional = {
        "slurm_partition": args.partition,
        "slurm_account": args.account,
        "slurm_qos": args.qos,
        "slurm_comment": args.comment,
        "slurm_exclude": args.exclude,
        "slurm_constraint": args.constraint,
        "mem_gb": args.mem,
    }
    params.update({key: value for key, value in optional.items() if value is not None})
    return params


class SubmittedTask:
    """The callable that submitit pickles: runs `entry(args)` in each task and requeues on preemption."""

    def __init__(self, entry: EntryPoint, args: argparse.Namespace) -> None:
        self.entry = entry
        self.args = args

    def __call__(self) -> Any:
        env = submitit.JobEnvironment()
        if getattr(self.args, "output_dir", None):
            self.args.output_dir = self.args.output_dir.replace("%j", str(env.job_id))
        # submitit installed its own handler for the warning signal; keep it to requeue once the loop has
        # checkpointed, and let the loop see the request first.
        warning_signal = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)
        submitit_handler = signal.getsignal(warning_signal)
        preemption.install_handler(warning_signal)
        logger.info("task %d/%d of job %s on %s", env.global_rank, env.num_tasks, env.job_id, env.hostname)
        try:
            return self.entry(self.args)
        except preemption.TrainingPreempted as stop:
            logger.warning("%s; requeuing job %s", stop, env.job_id)
            if env.global_rank == 0 and callable(submitit_handler):
                submitit_handler(stop.signum, None)
            return None

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on rank 0 before a requeue: run the same task again (it resumes)."""
        return submitit.helpers.DelayedSubmission(SubmittedTask(self.entry, self.args))


def submit(entry: EntryPoint, args: argparse.Namespace, name: str) -> submitit.Job:
    """Submit `entry(args)` as a SLURM job named `name`; returns the submitit Job.

    `args.output_dir` (when the tool has one) is created first; `%j` in it becomes the job id.
    """
    if getattr(args, "output_dir", None):
        args.output_dir = os.path.abspath(args.output_dir)
    job_dir = args.job_dir or getattr(args, "output_dir", None)
    if not job_dir:
        raise ValueError("--submit needs --job-dir or --output-dir: where submitit writes its scripts and logs")
    executor = submitit.AutoExecutor(folder=Path(job_dir), slurm_max_num_timeout=args.max_requeues)
    executor.update_parameters(name=name, **slurm_parameters(args))
    job = executor.submit(SubmittedTask(entry, args))
    logger.info("submitted job %s (%s); logs in %s", job.job_id, name, str(job_dir).replace("%j", str(job.job_id)))
    return job
