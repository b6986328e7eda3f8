"""The shape every input kind takes: a :class:`Backend` (xarray's ``BackendEntrypoint``).

Each kind of input is one small module of :mod:`svcca_dask.inputs.backends`
holding one :class:`Backend`: ``guess_can_open`` says, without reading data,
whether it takes an object (a Python object, a :class:`~.paths.Path` split
from a string, or a URL string); ``open`` makes it a
:class:`~svcca_dask.inputs.layer.Layer`. Adding a kind of input is one new
module and one line in :data:`svcca_dask.inputs.registry.BACKENDS`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .layer import Layer, Request

__all__ = ["Backend", "module_of", "needs"]


class Backend:
    """One kind of input.

    Attributes
    ----------
    name : str
        Short name, recorded as :attr:`Layer.kind`.
    accepts : str
        What it takes, as the unknown-input error and the README list it.
    extra : str, optional
        The pip extra its library comes with (``pip install 'svcca-dask[hf]'``).
    """

    name: ClassVar[str]
    accepts: ClassVar[str]
    extra: ClassVar[str | None] = None

    def guess_can_open(self, obj: Any) -> bool:
        """Whether this backend takes ``obj``; never reads data, never imports
        a library the object does not come from."""
        raise NotImplementedError

    def open(self, obj: Any, request: Request) -> Layer:
        """``obj`` as a lazy :class:`Layer`."""
        raise NotImplementedError


def module_of(obj: Any) -> str:
    """The top-level package an object's type comes from (``"torch"``, ``"h5py"``)."""
    return type(obj).__module__.split(".")[0]


def needs(library: str, extra: str, what: str) -> Any:
    """Import ``library`` for ``what``, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(library)
    except ImportError as err:
        raise ImportError(
            f"{what} needs the {library!r} package: pip install 'svcca-dask[{extra}]'"
        ) from err
