"""The hand calculation of a text spec, rendered: per-layer rows, textbook totals, real peaks.

The textbook view counts each layer's output once and the parameters; the real peaks come
from the trace engine for the same network built in PyTorch. A few sentences say why the
two differ.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from nnmem.frontends.spec import Textbook
from nnmem.render.units import human_bytes
from nnmem.report import Report


def layers_table(book: Textbook) -> Table:
    table = Table(
        title=f"Layer by layer (batch {book.batch}, {book.dtype_bytes} bytes a value)",
        title_justify="left",
        show_edge=False,
    )
    for column, justify in (
        ("layer", "left"),
        ("output", "left"),
        ("values/sample", "right"),
        ("bytes/sample", "right"),
        ("bytes/batch", "right"),
        ("parameters", "left"),
        ("param bytes", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in book.rows:
        shape = "×".join(str(n) for n in row.output_shape)
        table.add_row(
            row.name,
            shape,
            f"{row.activation_elements:,}",
            f"{row.activation_bytes:,}",
            f"{row.batch_activation_bytes:,}",
            row.parameter_formula if row.parameters else "",
            f"{row.parameter_bytes:,}" if row.parameters else "",
        )
    table.add_row(
        "total",
        "",
        f"{book.activation_elements:,}",
        f"{book.activation_bytes:,}",
        f"{book.batch_activation_bytes:,}",
        f"{book.parameters:,}",
        f"{book.parameter_bytes:,}",
        style="bold",
    )
    return table


def totals_table(book: Textbook, inference: Report, training: Report) -> Table:
    table = Table(title="Textbook beside what PyTorch really holds", title_justify="left", show_edge=False)
    table.add_column("")
    table.add_column("bytes", justify="right")
    table.add_column("", justify="right")
    for rule in book.rules():
        table.add_row(f"textbook: {rule.name}", f"{rule.bytes:,}", human_bytes(rule.bytes))
    optimizer = dict(training.settings).get("optimizer", "")
    for label, report in (
        ("real peak: inference", inference),
        (f"real peak: training ({optimizer})", training),
    ):
        table.add_row(label, f"{report.peak_bytes:,}", human_bytes(report.peak_bytes), style="bold")
        for category, amount in report.categories.items():
            if amount:
                table.add_row(f"    {category}", f"{amount:,}", human_bytes(amount))
    return table


def explanation(book: Textbook, inference: Report, training: Report) -> Text:
    """Plain sentences on why the textbook and the real peaks differ."""
    text = Text()
    kept = inference.peak_bytes - inference.categories.parameter - inference.categories.input
    text.append(
        f"Inference keeps only what the next layer needs: beyond the parameters and the input, at most"
        f" {human_bytes(kept)} is alive at once, not the sum of every layer's output"
        f" ({human_bytes(book.batch_activation_bytes)}).\n"
    )
    saved = training.categories.activation
    text.append(
        f"Training saves for backward what each op needs to compute its gradient (at the peak:"
        f" {human_bytes(saved)} of activations); some ops save their input, some their output, and"
        " in-place activations share memory.\n"
    )
    text.append(
        f"Gradients ({human_bytes(training.categories.gradient)} at the peak) exist from backward until"
        f" zero_grad; optimizer state ({human_bytes(training.categories.optimizer_state)}) exists from the"
        " first optimizer step on, which is why the steady-state step is the one reported.\n"
    )
    if training.categories.workspace or inference.categories.workspace:
        text.append(
            "Kernels also allocate scratch memory of their own (workspace), which no textbook counts.\n"
        )
    return text


def handcalc(book: Textbook, inference: Report, training: Report) -> Group:
    return Group(
        layers_table(book), totals_table(book, inference, training), explanation(book, inference, training)
    )


def handcalc_dict(book: Textbook, inference: Report, training: Report, report: Report) -> dict[str, Any]:
    """The JSON of a spec: the engine's report, the textbook rows and totals, both peaks."""
    data = report.to_dict()
    data["engine_layers"] = data.pop("layers")
    data["layers"] = [
        {
            "name": row.name,
            "kind": row.kind,
            "output_shape": list(row.output_shape),
            "activation_elements": row.activation_elements,
            "activation_bytes": row.activation_bytes,
            "batch_activation_bytes": row.batch_activation_bytes,
            "parameters": row.parameters,
            "parameter_formula": row.parameter_formula,
            "parameter_bytes": row.parameter_bytes,
        }
        for row in book.rows
    ]
    data["textbook"] = {
        "batch": book.batch,
        "dtype_bytes": book.dtype_bytes,
        "activation_elements_per_sample": book.activation_elements,
        "activation_bytes_per_sample": book.activation_bytes,
        "activation_bytes_per_batch": book.batch_activation_bytes,
        "parameters": book.parameters,
        "parameter_bytes": book.parameter_bytes,
        "rules_of_thumb": {rule.name: rule.bytes for rule in book.rules()},
    }
    data["inference_peak_bytes"] = inference.peak_bytes
    data["training_peak_bytes"] = training.peak_bytes
    return data
