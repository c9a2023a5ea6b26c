"""Regional compilation (`GENERATOR_COMPILE_SCOPE=regional`): the UNet's repeated blocks compiled one by one.

Dynamo for real with the `eager` backend (tracing, guards, graphs per shape, no code generation): first on a toy
stack of blocks (a second each), then on the tiny UNet, whose blocks are the I2VGen-XL classes the full model
repeats, then through the worker, whose compile events, counters, notes and eager fallback must not care how the
UNet was compiled. What regional saves in time is the GPU benchmark's figure (`bench/compile_gpu.py --scope`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from generator.acceleration import Acceleration, CompileWatch, Shape
from generator.config import GeneratorConfig
from generator.pipeline import UNET_REPEATED_BLOCKS, load_pipeline
from generator.regional import compile_blocks, count_blocks
from generator.worker import acceleration_view
from tests.generator.test_compile import CompiledWorker

CPU = torch.device("cpu")


# --- the setting


def test_the_scope_is_whole_until_set_and_reported_in_health(tmp_path: Path) -> None:
    assert GeneratorConfig.from_sources([], {}).acceleration(on_gpu=True).scope == "whole"

    flag = GeneratorConfig.from_sources(["--compile-scope", "regional"], {"GENERATOR_COMPILE_SCOPE": "whole"})
    environ = GeneratorConfig.from_sources([], {"GENERATOR_COMPILE_SCOPE": "regional"})

    for config in (flag, environ):
        config.validate()
        settings = config.acceleration(on_gpu=True)
        assert settings.scope == "regional"
        view = acceleration_view(settings, [])
        assert view is not None
        assert view["scope"] == "regional"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"GENERATOR_COMPILE_SCOPE": "layers"}, "GENERATOR_COMPILE_SCOPE must be one of whole, regional"),
        ({"GENERATOR_COMPILE_SCOPE": "regional", "GENERATOR_COMPILE_BACKEND": "aoti"}, "regional needs torch.compile"),
    ],
)
def test_a_bad_scope_is_refused_with_one_line_naming_it(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GeneratorConfig.from_sources([], environ).validate()


# --- a toy stack of blocks


class Block(torch.nn.Module):
    """A repeated block: its class's forward is the code every instance's graphs hang on."""

    def __init__(self, width_in: int, width_out: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(width_in, width_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project and activate."""
        return torch.nn.functional.gelu(self.linear(x))


class Stack(torch.nn.Module):
    """Three identical blocks, a wider one, and a head that is no block."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([Block(8, 8) for _ in range(3)])
        self.widen = Block(8, 16)
        self.head = torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the blocks, then the head."""
        for block in self.blocks:
            x = block(x)
        return self.head(self.widen(x))


def compiled_modules(module: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in module.modules() if isinstance(m, torch._dynamo.eval_frame.OptimizedModule)]


def test_the_copy_shares_the_weights_and_leaves_the_original_uncompiled() -> None:
    stack = Stack()

    copy = compile_blocks(stack, ["Block"], torch.compile)

    assert copy is not stack
    assert copy.blocks is not stack.blocks  # the containers above a block are copies
    assert copy.head is stack.head  # what holds no block is shared as it is
    assert compiled_modules(stack) == []
    assert len(compiled_modules(copy)) == 4
    assert [p.data_ptr() for p in copy.parameters()] == [p.data_ptr() for p in stack.parameters()]
    assert count_blocks(stack, ["Block"]) == {"Block": 4}
    calls: list[str] = []
    copy.register_forward_pre_hook(lambda *_: calls.append("copy"))
    stack(torch.randn(1, 8))
    assert calls == []  # a hook registered on one tree does not fire in the other
    with pytest.raises(ValueError, match="Stack holds no Conv to compile"):
        compile_blocks(stack, ["Conv"], torch.compile)


def test_identical_blocks_share_one_graph_and_each_new_shape_builds_its_own_once() -> None:
    stack = Stack()
    watch = CompileWatch("stack", "eager")
    compiled = watch.compile_blocks(stack, ["Block"], dynamic=False, sizes=2)
    small, large = torch.randn(2, 8), torch.randn(5, 8)

    with torch.no_grad():
        assert torch.equal(compiled(small), stack(small))
        assert watch.graphs_total == 2  # the three 8->8 blocks share one, the 8->16 block has its own
        assert torch.equal(compiled(large), stack(large))
        assert watch.graphs_total == 4  # static shapes: another batch is another graph per distinct block
        compiled(small)
        compiled(large)
    assert watch.graphs_total == 4
    assert watch.eager is stack


def test_the_recompile_limit_leaves_room_for_every_block_at_every_size() -> None:
    stack = torch.nn.Sequential(*(Block(8 + i, 9 + i) for i in range(12)))  # twelve widths: twelve graphs
    watch = CompileWatch("stack", "eager")
    # Dynamo's default keeps 8 graphs per code object and runs the rest eager without a word.
    with torch._dynamo.config.patch(recompile_limit=8):
        compiled = watch.compile_blocks(stack, ["Block"], dynamic=False, sizes=1)
        with torch.no_grad():
            compiled(torch.randn(2, 8))

    assert watch.graphs_total == 12


# --- the tiny UNet


class TinyUNet:
    """The tiny pipeline's UNet with its inputs captured from one guided pipeline step per size."""

    def __init__(self) -> None:
        self.pipe = load_pipeline("tiny", CPU, torch.float32, Path(tempfile.mkdtemp(prefix="i2v-regional-")))
        self.unet = self.pipe.unet
        self.inputs = {size: self.capture(*size) for size in ((64, 4), (64, 8))}

    def capture(self, resolution: int, num_frames: int) -> dict[str, Any]:
        captured: dict[str, Any] = {}
        hook = self.unet.register_forward_pre_hook(
            lambda _module, args, kwargs: captured.update(args=args, kwargs=kwargs), with_kwargs=True
        )
        try:
            self.pipe(
                prompt="a red fox",
                image=Image.new("RGB", (resolution, resolution), (200, 120, 40)),
                height=resolution,
                width=resolution,
                num_frames=num_frames,
                num_inference_steps=1,
                guidance_scale=9.0,
                output_type="latent",
            )
        finally:
            hook.remove()
        return captured

    def call(self, unet: torch.nn.Module, size: tuple[int, int]) -> torch.Tensor:
        with torch.no_grad():
            return unet(*self.inputs[size]["args"], **self.inputs[size]["kwargs"])[0]

    def eager_blocks(self, size: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        """Run the eager UNet at `size`: its output, how many blocks ran and how many distinct (class, shapes)."""
        seen: list[tuple[Any, ...]] = []

        def note(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            tensors = [*args, *kwargs.values()]
            seen.append(
                (
                    type(module).__name__,
                    tuple(tuple(t.shape) for t in tensors if isinstance(t, torch.Tensor)),
                    tuple(tuple(p.shape) for p in module.parameters()),
                )
            )

        blocks = [m for m in self.unet.modules() if type(m).__name__ in UNET_REPEATED_BLOCKS]
        hooks = [block.register_forward_pre_hook(note, with_kwargs=True) for block in blocks]
        try:
            output = self.call(self.unet, size)
        finally:
            for hook in hooks:
                hook.remove()
        return output, len(seen), len(set(seen))


@pytest.fixture(scope="module")
def tiny() -> TinyUNet:
    return TinyUNet()


@pytest.mark.slow
def test_the_unet_builds_a_graph_per_distinct_block_not_per_instance_and_matches_eager(tiny: TinyUNet) -> None:
    watch = CompileWatch("unet", "eager")
    compiled = watch.compile_blocks(tiny.unet, UNET_REPEATED_BLOCKS, dynamic=False, sizes=2)
    assert compiled_modules(tiny.unet) == []
    blocks = count_blocks(tiny.unet, UNET_REPEATED_BLOCKS)
    assert set(blocks) == set(UNET_REPEATED_BLOCKS)  # every class named is in the UNet

    for size in ((64, 4), (64, 8)):
        eager, ran, distinct = tiny.eager_blocks(size)
        assert ran == sum(blocks.values())
        graphs_before = watch.graphs_total

        output = tiny.call(compiled, size)

        assert watch.graphs_total - graphs_before == distinct < ran  # 13 graphs for 25 blocks here
        assert torch.equal(output, eager)
    graphs = watch.graphs_total
    tiny.call(compiled, (64, 4))
    tiny.call(compiled, (64, 8))
    assert watch.graphs_total == graphs  # each size's graphs are built once


# --- through the worker


@pytest.fixture(scope="module")
def regional(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CompiledWorker]:
    settings = Acceleration(compile=True, backend="eager", scope="regional", dynamic=False, warmup=(Shape(256, 8),))
    with CompiledWorker(tmp_path_factory.mktemp("regional"), settings).running() as handle:
        yield handle


@pytest.mark.slow
def test_the_regional_warmup_is_one_compile_event_of_many_graphs(regional: CompiledWorker) -> None:
    # The worker's own warm-up job (256x256x8, guided) ran the compiled blocks again after the compile warm-up.
    (event,) = regional.lines.compiles("startup")

    assert (event["params"]["resolution"], event["params"]["num_frames"]) == (256, 8)
    assert (regional.counter("warmup"), regional.counter("job")) == (1, 0)
    assert regional.worker.status == "ready"
    blocks = sum(count_blocks(regional.worker.watches[0].eager, UNET_REPEATED_BLOCKS).values())
    assert 1 < regional.worker.watches[0].graphs_total < blocks


@pytest.mark.slow
def test_a_size_the_regional_warmup_did_not_compile_runs_the_eager_unet(regional: CompiledWorker) -> None:
    graphs = regional.worker.watches[0].graphs_total

    job = regional.run(64, 8)

    assert job.state == "succeeded", job.error
    assert regional.worker.watches[0].graphs_total == graphs
    assert regional.lines.compiles(job.job_id) == []
    assert "the UNet runs uncompiled: 64x64x8 is not among the compiled warm-up sizes" in " ".join(job.notes)


@pytest.mark.slow
def test_blocks_compiled_inside_a_job_are_one_compile_in_its_notes_events_and_counter(
    regional: CompiledWorker,
) -> None:
    # What a guard failing on a warmed size looks like: the compiled blocks are chosen and build their graphs.
    regional.worker.compiled_sizes.add(Shape(64, 4))
    graphs = regional.worker.watches[0].graphs_total

    job = regional.run(64, 4)

    assert job.state == "succeeded", job.error
    assert regional.worker.watches[0].graphs_total - graphs > 1
    (event,) = regional.lines.compiles(job.job_id)
    (note,) = [note for note in job.notes if "compile" in note]
    assert note.startswith(f"waited {event['duration_s']:.0f} s for the unet to compile for 64x64x4")
    assert regional.counter("job") == 1
