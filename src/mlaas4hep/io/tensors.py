"""From a dataset's schema and specs to the shape and scale of its tensors.

:func:`build_preprocessor` makes the :class:`~mlaas4hep.io.preprocess.Preprocessor`
that turns raw branches into ``x``:

* each jagged branch is padded to its configured length (``jagged:``, or an
  input group's ``length``), else to the longest list of its collection in
  the specs, as MLaaS4HEP's ``jdim``;
* each feature gets the normalisation constants of ``normalize``: ``minmax``
  maps the specs' minimum and maximum to 0 and 1, ``standard`` the mean and
  the standard deviation to 0 and 1 (a constant feature is only shifted);
* with ``inputs:``, the :class:`~mlaas4hep.io.groups.GroupLayout` that cuts
  the input groups out of ``x``.

With ``normalize: none`` and every jagged length given, nothing here needs
the specs (``specs`` is None).
"""

from __future__ import annotations

from . import schema as schema_mod
from .config import DatasetConfig
from .errors import GroupError
from .groups import GroupLayout
from .preprocess import Preprocessor
from .specs import Specs


def build_preprocessor(config: DatasetConfig, sch: schema_mod.Schema, specs: Specs | None) -> Preprocessor:
    """The preprocessor of a dataset with this configuration, schema and (when needed) specs."""
    c = config
    jagged = []
    for name in sch.jagged:
        coll = schema_mod.collection(name)
        length = c.physics.length_of(name)
        if length is None:  # the longest list in the collection, as MLaaS4HEP's jdim
            assert specs is not None
            length = max([specs.max_length(j) for j in sch.jagged if schema_mod.collection(j) == coll])
        jagged.append((name, int(length)))
    offset, scale = {}, {}
    for name in sch.flat + sch.jagged:
        if specs is None:  # normalize: none
            break
        s = specs.stats[name]
        if c.normalize == "minmax" and s.count:
            offset[name], span = s.min, s.max - s.min
            scale[name] = 1.0 / span if span > 0 else 1.0
        elif c.normalize == "standard" and s.count:
            offset[name], scale[name] = s.mean, (1.0 / s.std if s.std > 0 else 1.0)
    pre = Preprocessor(
        flat=list(sch.flat),
        jagged=jagged,
        pad_value=float(c.pad_value),
        normalize=c.normalize,
        offset=offset,
        scale=scale,
        new_variables=dict(c.new_variables),
        selection=c.selection,
        tree=c.tree,
    )
    if c.inputs:
        try:
            pre.groups = GroupLayout.build(c.inputs, pre.columns, pre.n_features)
        except GroupError as err:
            raise c.source.error(str(err), "inputs", *err.key) from None
    return pre
