import os

# Two cores are shared by pytest and the worker processes some tests spawn: keep each process on one
# thread so that they do not oversubscribe the machine (torchrun does the same by default).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
