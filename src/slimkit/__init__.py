"""slimkit: make trained neural networks smaller, faster and cheaper, and prove it with measurements.

Example::

    import slimkit as sk

    data = sk.data.load("mnist5k")
    model = sk.zoo.create_for("seed_cnn", data)
    sk.train.fit(model, data.train, val=data.val, augment=data.augment)
    print(sk.evaluate(model, data))
"""

from __future__ import annotations

__version__ = "0.1.0"

from slimkit import compress, data, fuse, prune, simplify, task, train, zoo
from slimkit.core.errors import SlimkitError
from slimkit.core.transform import Config, TransformRecord, apply_, records
from slimkit.evaluate import Report, compare, evaluate
from slimkit.io import export, load, save
from slimkit.optimize.target import Target

__all__ = [
    "Config",
    "Report",
    "Target",
    "TransformRecord",
    "apply_",
    "records",
    "SlimkitError",
    "__version__",
    "compare",
    "compress",
    "data",
    "evaluate",
    "export",
    "fuse",
    "load",
    "prune",
    "save",
    "simplify",
    "task",
    "train",
    "zoo",
]
