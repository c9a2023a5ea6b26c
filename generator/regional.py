"""Regional compilation: compile a module's repeated blocks one by one, in a copy of its tree that shares the weights.

Compiling the whole UNet makes dynamo trace all of it at every start, even when every kernel comes from the cache.
Compiled block by block, each block class's `forward` is one code object whose compiled graphs every instance of
that class shares (dynamo's `inline_inbuilt_nn_modules`, on by default, makes the weights graph inputs instead of
constants): blocks of the same class and the same shapes reuse one graph, so a start traces a graph per distinct
block, each small, instead of the whole UNet. What stays between the blocks (embeddings, the first and last
convolutions, down- and upsampling) runs eager.

diffusers' `ModelMixin.compile_repeated_blocks` compiles the blocks in place, which leaves no uncompiled UNet to run
the sizes the warm-up did not compile. Here the containers on the way to a block are copied (their parameters and
buffers are the same tensors) and the copy's blocks are compiled: the original stays eager, and the worker picks one
or the other per job exactly as with the whole UNet compiled.
"""

from __future__ import annotations

import collections
import copy
from collections.abc import Callable, Collection

import torch


def count_blocks(module: torch.nn.Module, block_classes: Collection[str]) -> dict[str, int]:
    """Return how many instances of each of `block_classes` (class names) `module` holds, outermost only."""
    counts: collections.Counter[str] = collections.Counter()
    waiting = [module]
    while waiting:
        current = waiting.pop()
        if type(current).__name__ in block_classes:
            counts[type(current).__name__] += 1
        else:
            waiting.extend(current.children())
    return dict(counts)


def compile_blocks(
    module: torch.nn.Module,
    block_classes: Collection[str],
    compile_block: Callable[[torch.nn.Module], torch.nn.Module],
) -> torch.nn.Module:
    """Return a copy of `module` whose blocks of `block_classes` (class names) are `compile_block(block)`.

    A block inside a block is compiled with its outer one. Only the containers above a block are copied, each
    keeping its parameters, buffers, hooks and attributes; `module` and its blocks are left as they were.

    Raises:
        ValueError: `module` holds no block of those classes.
    """
    found = count_blocks(module, block_classes)
    if not found:
        raise ValueError(f"{type(module).__name__} holds no {', '.join(sorted(block_classes))} to compile")
    return _walk(module, block_classes, compile_block)


def _walk(
    module: torch.nn.Module,
    block_classes: Collection[str],
    replace: Callable[[torch.nn.Module], torch.nn.Module],
) -> torch.nn.Module:
    if type(module).__name__ in block_classes:
        return replace(module)
    children = {
        name: _walk(child, block_classes, replace) for name, child in module._modules.items() if child is not None
    }
    if all(child is module._modules[name] for name, child in children.items()):
        return module  # no block below: shared as it is
    clone = copy.copy(module)  # the same attribute values: the parameters and buffers are not copied
    clone.__dict__["_modules"] = {**module._modules, **children}
    # Hook registries of its own (holding the hooks already there): a hook registered on one tree later, such as a
    # benchmark's input capture on the eager UNet, must not fire in the other.
    for name, value in module.__dict__.items():
        if "hooks" in name and isinstance(value, dict):
            clone.__dict__[name] = value.copy()
    return clone
