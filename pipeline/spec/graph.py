"""Read YAML into a node graph that is safe to walk.

yaml.compose builds nodes without constructing Python objects, so every value keeps its
line. Two things about that graph need a guard before anything reads it:

- The composer recurses once per nesting level, so `[[[[...]]]]` 5000 deep would raise
  RecursionError. `_Loader` stops at `max_depth` levels instead, before Python's limit.
- An alias is the same node object as its anchor, so a small file can describe a huge
  graph: a long list aliased 500 times, or aliases of aliases ("billion laughs"), or an
  alias inside its own anchor (a cycle). `_check_size` walks the graph iteratively,
  counting every visit (an alias once per use), and stops at the first limit reached.

So once `compose` returns, the rest of the parser may walk the graph freely: every path
through it is short, and all of it together is small.
"""

import yaml

from .model import SpecError


def line(node):
    return node.start_mark.line + 1


def scalar(node, key):
    if not isinstance(node, yaml.ScalarNode):
        raise SpecError("expected a plain value", key=key, line=line(node))
    return node.value


def mapping(node, key):
    """{name: (key node, value node)} in the order written; a name given twice is an error."""
    if not isinstance(node, yaml.MappingNode):
        raise SpecError("expected a mapping of keys to values", key=key, line=line(node))
    seen = {}
    for key_node, value_node in node.value:
        name = scalar(key_node, key)
        if name in seen:
            raise SpecError(f"'{name}' is given twice", key=join(key, name), line=line(key_node))
        seen[name] = (key_node, value_node)
    return seen


def join(key, name):
    return f"{key}.{name}" if key else name


def _too_deep(limits, path, where):
    return SpecError(f"the spec is nested more than {limits.max_depth} levels deep",
                     key=".".join(path), line=where)


class _Loader(yaml.SafeLoader):
    """A SafeLoader whose composer refuses to nest deeper than `limits.max_depth`."""

    def __init__(self, stream, limits):
        super().__init__(stream)
        self.limits = limits
        self.path = []  # per node being composed: its key (None for keys and list items)

    def compose_node(self, parent, index):
        # A mapping's value is composed with its key node as `index`; a list item with
        # its position; a key (and the root) with None.
        self.path.append(index.value if isinstance(index, yaml.ScalarNode) else None)
        try:
            if len(self.path) > self.limits.max_depth:
                path = [name for name in self.path if name is not None]
                raise _too_deep(self.limits, path, self.peek_event().start_mark.line + 1)
            return super().compose_node(parent, index)
        finally:
            self.path.pop()


def compose(text, limits):
    """The root node of `text` (None when it holds no document), checked against `limits`."""
    loader = _Loader(text, limits)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        # The context mark is where the broken construct began: the line a person fixes.
        mark = exc.context_mark or exc.problem_mark
        problem = f"{exc.problem}" + (f" {exc.context}" if exc.context else "")
        raise SpecError(f"not valid YAML: {problem}", line=mark.line + 1 if mark else None) from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"not valid YAML: {exc}") from exc
    finally:
        loader.dispose()
    if root is not None:
        _check_size(root, limits)
    return root


def _check_size(root, limits):
    """Walk every value reachable from `root`, an aliased one once per use, without
    recursion. Errors name the key the walk was under and that key's line: with aliases,
    a node's own line is where its anchor was written, not where it was used."""
    visits = size = 0
    stack = [iter([(root, (), 1)])]  # one iterator of (node, key path, line) per level
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        node, path, where = entry
        visits += 1
        if visits > limits.max_spec_values:
            raise SpecError(f"the spec expands to more than {limits.max_spec_values} values"
                            " (YAML aliases?)", key=".".join(path), line=where)
        if len(stack) > limits.max_depth:
            raise _too_deep(limits, path, where)
        if isinstance(node, yaml.ScalarNode):
            size += _text_size(node.value, path, where)
            if size > limits.max_spec_bytes:
                raise SpecError(f"the spec expands to more than {limits.max_spec_bytes} bytes"
                                " (YAML aliases?)", key=".".join(path), line=where)
        else:
            stack.append(_children(node, path, where))


def _children(node, path, where):
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            yield item, path, where
        return
    for key_node, value_node in node.value:
        name = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
        yield key_node, path, line(key_node)
        yield value_node, (*path, name), line(key_node)


def _text_size(value, path, where):
    """UTF-8 bytes of one value. A NUL, or a lone surrogate from a `"\\ud800"` escape,
    could be neither stored (PostgreSQL JSON) nor passed to a process: refused here."""
    if "\x00" in value:
        raise SpecError("a value contains a NUL character", key=".".join(path), line=where)
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise SpecError("a value contains a lone surrogate escape, which is not valid UTF-8",
                        key=".".join(path), line=where) from exc
