"""`trainyard.yml`: `parse_spec` turns a branch's spec into a `Spec`, or fails with a
`SpecError` that names the key and line a person fixes.

- `model`: Spec, Command, SpecLimits, SpecError (what the build stores as JSON).
- `graph`: YAML to a node graph, with the depth and size guards that make it safe to walk.
- `parse`: the rules of each key.
"""

from .model import ENVIRONMENTS, Command, Spec, SpecError, SpecLimits, command_bytes
from .parse import parse_spec

__all__ = ["ENVIRONMENTS", "Command", "Spec", "SpecError", "SpecLimits", "command_bytes",
           "parse_spec"]
