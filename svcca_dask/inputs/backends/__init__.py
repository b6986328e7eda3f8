"""One module per kind of input (see :mod:`svcca_dask.inputs.backend`)."""
