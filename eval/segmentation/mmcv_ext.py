"""A stand-in for mmcv's compiled extension `mmcv._ext`, used only when the real one is absent.

Why: the `seg` extra installs `mmcv-lite` (pure Python, pip-installable everywhere) because PyPI ships no
binary wheels of the full `mmcv` and building it takes about half an hour. `mmcv-lite` has every Python
module of `mmcv.ops` but not the compiled `mmcv._ext` they load, and `import mmseg.models` imports
`mmcv.ops` unconditionally, so without the compiled module mmsegmentation cannot even be imported.

The linear-probe protocol needs none of the compiled ops (the backbone is ours, the head is a BatchNorm and
a 1x1 convolution, the loss and the metric are plain PyTorch/NumPy), so a module that only *names* the ops
is enough: `mmcv.utils.ext_loader.load_ext` checks that each op name is an attribute, and every such
attribute here is a function that raises `NotImplementedError` naming the op and the way to get the real
one. A config that does need a compiled op (deformable convolutions, CARAFE, point sampling heads, ...)
therefore fails loudly at the first call instead of computing something else.

When a full mmcv build is installed, `mmcv._ext` is importable and `install_mmcv_ext_standin` leaves it
alone.
"""

import importlib.machinery
import importlib.util
import logging
import sys
from types import ModuleType
from typing import Any, Callable, NoReturn

logger = logging.getLogger(__name__)

STANDIN_MODULE_NAME = "mmcv._ext"


class MissingMMCVOpError(NotImplementedError):
    """A compiled mmcv op was called while only the `mmcv._ext` stand-in is installed."""


class MMCVExtStandIn(ModuleType):
    """Module object registered as `mmcv._ext`; any op attribute is a function that raises.

    Dunder attributes (`__path__`, `__file__`, ...) are not invented, so the import machinery and
    `inspect` treat the object as the plain, non-package module it is. Its `__spec__` has no loader, so
    `pkgutil.find_loader("mmcv._ext")` (mmengine's `mmcv_full_available()`) still reports no compiled mmcv.
    """

    is_mmcv_ext_standin = True

    def __init__(self) -> None:
        super().__init__(STANDIN_MODULE_NAME, __doc__)
        self.__spec__ = importlib.machinery.ModuleSpec(STANDIN_MODULE_NAME, loader=None, origin=__file__)

    def __getattr__(self, op_name: str) -> Callable[..., NoReturn]:
        if op_name.startswith("__") and op_name.endswith("__"):
            raise AttributeError(op_name)

        def missing_op(*args: Any, **kwargs: Any) -> NoReturn:
            raise MissingMMCVOpError(
                f"mmcv op {op_name!r} needs mmcv's compiled extension mmcv._ext, but only the stand-in from "
                f"{__name__} is installed (mmcv-lite has no compiled ops). The DINOv2 linear and +ms "
                "segmentation protocols never call compiled ops; to use a head or transform that does, "
                "replace mmcv-lite by a full mmcv 2.1.0 build (pip uninstall mmcv-lite; "
                "pip install mmcv==2.1.0 --no-build-isolation)"
            )

        missing_op.__name__ = op_name
        missing_op.__qualname__ = f"MMCVExtStandIn.{op_name}"
        return missing_op


def is_standin_installed() -> bool:
    """True when `mmcv._ext` in `sys.modules` is this module's stand-in."""
    return getattr(sys.modules.get(STANDIN_MODULE_NAME), "is_mmcv_ext_standin", False)


def install_mmcv_ext_standin() -> bool:
    """Register the stand-in as `mmcv._ext` when no compiled `mmcv._ext` can be imported.

    Returns True when the stand-in is (now or already) the registered module, False when a real
    `mmcv._ext` exists, in which case nothing is changed and mmcv uses its compiled ops.
    Raises ModuleNotFoundError naming the `seg` extra when mmcv itself is not installed.
    """
    if is_standin_installed():
        return True
    if STANDIN_MODULE_NAME in sys.modules:
        return False
    try:
        real_spec = importlib.util.find_spec(STANDIN_MODULE_NAME)
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "eval.segmentation needs mmcv (mmcv-lite 2.1.0 or a full mmcv build) and mmsegmentation 1.2.2; "
            "install them with `pip install -e .[seg]` (requirements-seg.txt)"
        ) from err
    if real_spec is not None:
        logger.info("using the compiled mmcv extension at %s", real_spec.origin)
        return False
    sys.modules[STANDIN_MODULE_NAME] = MMCVExtStandIn()
    logger.info("mmcv._ext is absent (mmcv-lite): registered the stand-in whose compiled ops raise when called")
    return True
