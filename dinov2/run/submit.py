"""Submit training and evaluation entry points to SLURM through submitit.

Every tool that accepts `--submit` shares the flags of `add_submit_args`. The job runs the tool's
`main(args)` once per task (one task per GPU, or `--tasks-per-node` tasks on CPU nodes);
`dinov2.distributed.enable()` builds the process group from SLURM's variables. On preemption or time-out
(SLURM's warning signal, SIGUSR2 by default) a training job checkpoints at the next iteration boundary
(see `dinov2.run.preemption`) and requeues itself; the requeued job resumes from that checkpoint in the
same output directory. Entry points without an iteration loop (evaluations) are requeued at once and
start again.
"""

import argparse
import logging
import os
import shlex
import signal
from pathlib import Path
from typing import Any, Callable

import submitit

from dinov2.run import preemption

logger = logging.getLogger(__name__)

EntryPoint = Callable[[argparse.Namespace], Any]

REPO_ROOT = Path(__file__).resolve().parents[2]
_INHERITED_LAUNCHER_VARIABLES = ("MASTER_ADDR", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def add_submit_args(parser: argparse.ArgumentParser, *, max_tasks: int | None = None) -> argparse.ArgumentParser:
    """Add `--submit` and the SLURM resource flags to a tool's parser.

    `max_tasks`: the most tasks the tool can use (1 for single-process tools); `--ngpus` then defaults to it
    and `slurm_parameters` refuses more.
    """
    parser.set_defaults(submit_max_tasks=max_tasks)
    group = parser.add_argument_group("SLURM submission (with --submit)")
    group.add_argument("--submit", action="store_true", help="submit to SLURM through submitit instead of running here")
    group.add_argument("--nodes", "--nnodes", type=int, default=1, help="number of nodes")
    group.add_argument(
        "--ngpus",
        "--gpus",
        "--gpus-per-node",
        type=int,
        default=8 if max_tasks is None else min(8, max_tasks),
        help="GPUs per node (one task per GPU); 0: CPU",
    )
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
        "--job-dir", default=None, help="folder for submitit's scripts and logs, %%j: job id (default: OUTPUT_DIR)"
    )
    group.add_argument("--signal-delay", type=int, default=120, help="seconds before the time limit to checkpoint")
    group.add_argument("--max-requeues", type=int, default=30, help="how often a timed-out job may requeue itself")
    return parser


def slurm_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """submitit `AutoExecutor` parameters from the parsed flags of `add_submit_args`.

    Optional SLURM settings appear only when their flag was given; `gpus_per_node` only when `--ngpus > 0`.
    """
    for flag in ("nodes", "ngpus", "cpus_per_task", "timeout"):
        minimum = 0 if flag == "ngpus" else 1
        if getattr(args, flag) < minimum:
            raise ValueError(f"--{flag.replace('_', '-')}={getattr(args, flag)} must be at least {minimum}")
    if args.tasks_per_node is not None and args.tasks_per_node < 1:
        raise ValueError(f"--tasks-per-node={args.tasks_per_node} must be at least 1")
    tasks_per_node = args.tasks_per_node or max(args.ngpus, 1)
    max_tasks = getattr(args, "submit_max_tasks", None)
    if max_tasks is not None and args.nodes * tasks_per_node > max_tasks:
        raise ValueError(
            f"--nodes={args.nodes} x {tasks_per_node} tasks per node (--tasks-per-node, else --ngpus) asks for "
            f"{args.nodes * tasks_per_node} tasks, but this tool runs at most {max_tasks}; lower --ngpus / --nodes"
        )
    params: dict[str, Any] = {
        "nodes": args.nodes,
        "tasks_per_node": tasks_per_node,
        "cpus_per_task": args.cpus_per_task,
        "timeout_min": args.timeout,
        "slurm_signal_delay_s": args.signal_delay,
        # a task that dies takes the others down at once instead of leaving them waiting in a collective
        "slurm_srun_args": ["--kill-on-bad-exit=1"],
        # the job imports this checkout (dinov2, simdinov2, eval), whatever its working directory
        "slurm_setup": [f"export PYTHONPATH={shlex.quote(str(REPO_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}"],
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
        # A requeued job reruns every task under the same job id. A task that returned before the requeue
        # left a result file behind; remove it so that the client waits for this run's result.
        env.paths.result_pickle.unlink(missing_ok=True)
        if getattr(self.args, "output_dir", None):
            self.args.output_dir = self.args.output_dir.replace("%j", str(env.job_id))
        self.args.submit = False  # an entry point that dispatches on --submit runs here instead of resubmitting
        # sbatch copies the submitting shell's environment: a rank / world size from there (a torchrun or a
        # test process) would hide SLURM's own variables from `distributed.enable()` (MASTER_PORT may stay)
        inherited = [name for name in _INHERITED_LAUNCHER_VARIABLES if os.environ.pop(name, None) is not None]
        # submitit has installed its requeue handler for the warning signal: it stays in charge until a
        # training loop polls for stop requests (`preemption.stop_flags`), and requeues the job once the loop
        # has checkpointed.
        warning_signal = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)
        submitit_handler = signal.getsignal(warning_signal)
        if not callable(submitit_handler):
            raise RuntimeError(f"no submitit handler for {warning_signal!r}: SubmittedTask must run inside submitit")
        preemption.install_handler(warning_signal, fallback=submitit_handler)
        logger.info("task %d/%d of job %s on %s", env.global_rank, env.num_tasks, env.job_id, env.hostname)
        if inherited:
            logger.warning("ignored %s inherited from the submitting environment", inherited)
        try:
            return self.entry(self.args)
        except preemption.TrainingPreempted as stop:
            if stop.signum != warning_signal:  # SIGTERM / SIGINT (scancel, a user): saved, not requeued
                logger.warning("%s; job %s is not requeued", stop, env.job_id)
                return None
            if env.global_rank != 0:
                logger.warning("%s; task 0 requeues job %s", stop, env.job_id)
                return None
            logger.warning("%s; requeuing job %s", stop, env.job_id)
            submitit_handler(stop.signum, None)  # checkpoint() -> scontrol requeue -> exit
            raise AssertionError("submitit's handler returned instead of requeuing or raising") from stop

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on task 0 before a requeue: run the same task again (it resumes)."""
        return submitit.helpers.DelayedSubmission(SubmittedTask(self.entry, self.args))


def submit(entry: EntryPoint, args: argparse.Namespace, name: str) -> submitit.Job:
    """Submit `entry(args)` as a SLURM job named `name`; returns the submitit Job (one result per task).

    `args.output_dir` (when the tool has one) is made absolute; `%j` in it becomes the job id in the job.
    submitit's scripts and logs go to `--job-dir`, by default the output directory.
    """
    if getattr(args, "output_dir", None):
        args.output_dir = os.path.abspath(args.output_dir)
    job_dir = args.job_dir or getattr(args, "output_dir", None)
    if not job_dir:
        raise ValueError("--submit needs --job-dir or --output-dir: where submitit writes its scripts and logs")
    # cluster="slurm": fail when sbatch is missing instead of silently running on this machine
    executor = submitit.AutoExecutor(folder=Path(job_dir), cluster="slurm", slurm_max_num_timeout=args.max_requeues)
    executor.update_parameters(name=name, **slurm_parameters(args))
    job = executor.submit(SubmittedTask(entry, args))
    logger.info("submitted job %s (%s); logs in %s", job.job_id, name, str(job_dir).replace("%j", str(job.job_id)))
    return job


def run_or_submit(
    entry: EntryPoint,
    args: argparse.Namespace,
    name: str,
    *,
    check: Callable[[argparse.Namespace], None],
    echo: Callable[[str], None],
) -> Any:
    """The one `--submit` dispatch of every tool: `entry(args)` here, or a SLURM job named `name`.

    `check(args)` runs first, in both modes: it validates the arguments (config keys, dataset strings, input
    folders, weights files) and raises on a mistake, so that `--submit` reports it here instead of in the job's
    log after the job has waited in the queue. Returns `entry`'s result, or the submitit Job after telling
    `echo` (the tool's `print`) the job id and where its outputs and logs go.
    """
    check(args)
    if not args.submit:
        return entry(args)
    job = submit(entry, args, name)
    folder = str(args.job_dir or getattr(args, "output_dir", "")).replace("%j", str(job.job_id))
    echo(f"submitted job {job.job_id} ({name}); outputs and submitit logs in {folder}")
    return job
