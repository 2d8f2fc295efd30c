"""Quiet, single import point for pyvene (it prints an nnsight notice on import)."""

from __future__ import annotations

import contextlib
import io
import warnings

with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import pyvene as pv  # noqa: F401
    from pyvene.models import intervenable_modelcard as modelcard  # noqa: F401
    from pyvene.models.modeling_utils import get_dimension_by_component  # noqa: F401

# pyvene's per-model log notices are muted with the other known chatter in roadinterp._quiet.
