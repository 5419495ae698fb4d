"""A small hand-made Report for the renderer tests: every number is chosen, none traced,
so the golden files change only when the rendering does."""

from __future__ import annotations

from nnmem.categories import Category, Mode, Phase
from nnmem.report import Breakdown, LayerRow, Peak, Report, TimelinePoint

MiB = 2**20
PARAMS = 3 * MiB  # conv1 1 MiB + fc 2 MiB of fp32 weights
INPUT = 256 * 1024
# the peak: step 2's first backward point, with the optimizer state made in step 1
PEAK = PARAMS + INPUT + 2 * PARAMS + 6 * MiB + 2 * MiB + 512 * 1024


def _timeline() -> tuple[TimelinePoint, ...]:
    """Two training steps; optimizer state appears in step 1 and stays."""
    base = {Category.PARAMETER: PARAMS, Category.INPUT: INPUT}
    moments: list[tuple[int, Phase, dict[Category, int]]] = []
    for step in (1, 2):
        state = {Category.OPTIMIZER_STATE: 2 * PARAMS} if step == 2 else {}
        moments += [
            (step, Phase.FORWARD, {**base, **state, Category.ACTIVATION: 2 * MiB}),
            (step, Phase.FORWARD, {**base, **state, Category.ACTIVATION: 6 * MiB}),
            (
                step,
                Phase.BACKWARD,
                {
                    **base,
                    **state,
                    Category.ACTIVATION: 6 * MiB,
                    Category.GRADIENT: 2 * MiB,
                    Category.TEMPORARY: 512 * 1024,
                },
            ),
            (
                step,
                Phase.BACKWARD,
                {**base, **state, Category.ACTIVATION: 1 * MiB, Category.GRADIENT: PARAMS},
            ),
            (
                step,
                Phase.OPTIMIZER,
                {**base, Category.GRADIENT: PARAMS, Category.OPTIMIZER_STATE: 2 * PARAMS},
            ),
            (step, Phase.ZERO_GRAD, {**base, Category.OPTIMIZER_STATE: 2 * PARAMS}),
        ]
    return tuple(
        TimelinePoint(i, step, phase, Breakdown.of(amounts))
        for i, (step, phase, amounts) in enumerate(moments)
    )


def small_report() -> Report:
    timeline = _timeline()
    steady = timeline[8].categories  # step 2, the first backward point: the highest
    first = timeline[4].categories  # step 1, the optimizer step
    assert steady.total == max(p.total for p in timeline) == PEAK
    layers = (
        LayerRow("", "Net", (8, 10), 0, 0, 0, 0),
        LayerRow("conv1", "Conv2d", (8, 16, 32, 32), 262_144, MiB, 4 * MiB, 5 * MiB),
        LayerRow("relu", "ReLU", (8, 16, 32, 32), 0, 0, 0, 0),
        LayerRow("fc", "Linear", (8, 10), 524_288, 2 * MiB, 2 * MiB, 4 * MiB + 512 * 1024),
    )
    return Report(
        peak_bytes=steady.total,
        mode=Mode.TRAIN,
        device="cuda",
        source="estimate",
        steady=Peak(steady.total, Phase.BACKWARD, "fc", "aten.mm.default", steady, (("fc", 5 * MiB),)),
        first_step=Peak(first.total, Phase.OPTIMIZER, "(optimizer)", "aten.add.Tensor", first, ()),
        parameters=786_432,
        layers=layers,
        notes=("a hand-made report for tests",),
        settings=(("optimizer", "adam"), ("dtype", "float32"), ("amp", "off")),
        timeline=timeline,
    )
