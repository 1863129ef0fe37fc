"""Which optional install ("extra") provides a module, so a missing one is a one-line instruction.

The base install is the robot side (numpy, pyzmq, msgpack, httpx, simplejpeg, Pillow); everything else is
an extra of ``pyproject.toml``. Code that needs an extra's module either imports it at use (``require``) or
lets the ``fleetrl`` command turn the ImportError into ``missing_extra_message``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# top-level module -> the extra that installs it
EXTRA_OF = {
    "torch": "platform",
    "ray": "platform",
    "pyarrow": "platform",
    "pydantic": "platform",
    "yaml": "platform",
    "fastapi": "platform",
    "prometheus_client": "platform",
    "rich": "platform",
    "tensorboard": "platform",
    "gymnasium": "sim",
    "mujoco": "sim",
    "ogbench": "sim",
    "transformers": "lm",
    "tokenizers": "lm",
    "safetensors": "platform",
    "matplotlib": "plots",
    "av": "video",
    "vllm": "vllm",
    "wandb": "wandb",
}


def missing_extra_message(exc: ImportError, what: str = "this") -> str | None:
    """``pip install 'fleetrl[<extra>]'`` advice for an ImportError of a module an extra provides, else
    None (a genuine bug, to be raised as it is)."""
    name = (getattr(exc, "name", None) or "").split(".")[0]
    extra = EXTRA_OF.get(name)
    if extra is None:
        return None
    return f"{what} needs {name}, which is not installed: pip install 'fleetrl[{extra}]'"


def require(module: str, what: str) -> ModuleType:
    """Import ``module``, or raise ImportError saying which extra installs it (``what`` needs it)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        message = missing_extra_message(exc, what)
        if message is None:
            raise
        raise ImportError(message, name=exc.name) from None
