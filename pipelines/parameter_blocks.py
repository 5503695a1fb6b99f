"""Pipeline parameters declared once and shared by several pipelines: a block is a table
{name: (type, default, UI description)} that `with_parameter_block` adds to a pipeline function's
signature and docstring `Args:`; the function receives the block's values as one mapping.

KFP builds a pipeline's inputs from `inspect.signature` and their UI descriptions from the docstring
(kfp.dsl.pipeline_context / component_factory), so both are rewritten, not only the call."""

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

# name → (type, default, UI description); KFP parameter defaults must be literals
ParameterBlock = dict[str, tuple[type, Any, str]]


def _args_indent(doc: str) -> int:
    """Indentation of the entries under the docstring's `Args:` line."""
    for line in doc.splitlines():
        if line.strip() == "Args:":
            return len(line) - len(line.lstrip(" ")) + 4
    raise ValueError("the pipeline docstring needs an Args: section")


def with_parameter_block(
    block: ParameterBlock, group: str, func: Callable, *, defaults: Mapping[str, Any] | None = None
) -> Callable:
    """`func` with the parameters of `block` after its own; it receives them as one mapping, the
    keyword argument `group`. `defaults` replaces some of the block's defaults for this pipeline.
    Blocks stack: the outer decorator's parameters come last."""
    unknown = set(defaults or {}) - set(block)
    if unknown:
        raise ValueError(f"not {group} parameters: {sorted(unknown)}")
    own = [p for p in inspect.signature(func).parameters.values() if p.name != group]
    added = [
        inspect.Parameter(
            name,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=(defaults or {}).get(name, default),
            annotation=kind,
        )
        for name, (kind, default, _) in block.items()
    ]
    names = [p.name for p in own + added]

    @functools.wraps(func)
    def pipeline(*args: Any, **kwargs: Any) -> Any:
        values = {**dict(zip(names, args, strict=False)), **kwargs}
        values[group] = {name: values.pop(name) for name in block}
        return func(**values)

    pipeline.__signature__ = inspect.Signature(own + added)  # type: ignore[attr-defined]
    doc = func.__doc__ or ""
    indent = " " * _args_indent(doc)
    docs = "".join(f"\n{indent}{name}: {text}" for name, (_, _, text) in block.items())
    pipeline.__doc__ = doc.rstrip() + docs + "\n"
    return pipeline
