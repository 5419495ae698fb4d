"""The trace engine's numbers, written as arithmetic with their reasons."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nnmem
from nnmem import Category, Phase
from nnmem.errors import ModelError, TraceError, UsageError

FP32 = 4


def small_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))


PARAMS = 64 * 256 + 256 + 256 * 10 + 10  # two Linear layers with bias
X = torch.empty(32, 64, device="meta")


def test_parameters_inputs_and_adam_state_at_the_peak() -> None:
    report = nnmem.estimate(small_mlp, X, mode="train", optimizer="adam", device="cpu")
    at_peak = report.categories
    assert report.parameters == PARAMS
    assert at_peak.parameter == PARAMS * FP32
    assert at_peak.input == 32 * 64 * FP32
    # Adam keeps exp_avg and exp_avg_sq per parameter, plus a float32 scalar step per tensor (4 tensors)
    assert at_peak.optimizer_state == 2 * PARAMS * FP32 + 4 * FP32
    assert report.peak_bytes == at_peak.total
    assert report.first_step is not None


def test_momentum_state_is_one_buffer_per_parameter() -> None:
    report = nnmem.estimate(small_mlp, X, optimizer="momentum", device="cpu")
    assert report.categories.optimizer_state == PARAMS * FP32


def test_sgd_has_no_state_and_the_peak_is_in_backward_or_step() -> None:
    report = nnmem.estimate(small_mlp, X, optimizer="sgd", device="cpu")
    assert report.categories.optimizer_state == 0
    assert report.steady.phase in (Phase.BACKWARD, Phase.OPTIMIZER)


def test_inference_holds_no_gradient_and_no_state() -> None:
    report = nnmem.estimate(small_mlp, X, mode="inference", device="cpu")
    assert report.categories.gradient == 0
    assert report.categories.optimizer_state == 0
    assert report.first_step is None
    # At the peak of a no-grad forward the widest step is alive: the 32x256 hidden layer
    # (Linear output, ReLU in a new tensor) -> at least params + input + one 32x256 tensor.
    assert report.peak_bytes >= (PARAMS + 32 * 64 + 32 * 256) * FP32


def test_frozen_parameters_get_no_gradient_and_no_state() -> None:
    def build() -> nn.Module:
        model = small_mlp()
        model[0].requires_grad_(False)
        return model

    report = nnmem.estimate(build, X, optimizer="adam", device="cpu")
    trainable = 256 * 10 + 10  # only the second Linear trains
    assert report.categories.optimizer_state == 2 * trainable * FP32 + 2 * FP32
    peak_in_step = report.steady.phase is Phase.OPTIMIZER
    assert not peak_in_step or report.categories.gradient == trainable * FP32


def test_tied_weights_are_counted_once() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(100, 16)
            self.out = nn.Linear(16, 100, bias=False)
            self.out.weight = self.embed.weight

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.out(self.embed(tokens))

    tokens = torch.zeros(4, 8, dtype=torch.long)
    report = nnmem.estimate(Tied, tokens, optimizer="sgd", device="cpu")
    assert report.parameters == 100 * 16
    assert report.categories.parameter == 100 * 16 * FP32


@pytest.mark.parametrize(("dtype", "size"), [("float32", 4), ("bfloat16", 2), ("float16", 2)])
def test_parameter_dtype(dtype: str, size: int) -> None:
    report = nnmem.estimate(small_mlp, X, mode="inference", dtype=dtype, device="cpu")
    assert report.categories.parameter == PARAMS * size
    assert report.categories.input == 32 * 64 * size  # floating inputs follow the parameters


def test_zero_grad_keeping_gradients_keeps_them_alive_between_steps() -> None:
    kept = nnmem.estimate(small_mlp, X, optimizer="sgd", set_to_none=False, device="cpu")
    dropped = nnmem.estimate(small_mlp, X, optimizer="sgd", device="cpu")
    # with set_to_none=False the zeroed gradients are alive during step 2's forward pass
    assert kept.peak_bytes >= dropped.peak_bytes
    forward_two = [p for p in kept.timeline if p.step == 2 and p.phase is Phase.FORWARD]
    assert all(p.categories.gradient == PARAMS * FP32 for p in forward_two)


def test_gradient_accumulation_divides_the_loss_and_keeps_one_set_of_gradients() -> None:
    report = nnmem.estimate(small_mlp, X, optimizer="sgd", accumulate=3, device="cpu")
    steps = {p.step for p in report.timeline}
    assert steps >= {1, 2}
    assert max(p.categories.gradient for p in report.timeline) == PARAMS * FP32


def test_checkpointing_saves_less_than_keeping_everything() -> None:
    class Deep(nn.Module):
        def __init__(self, checkpoint: bool) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(256, 256), nn.GELU()) for _ in range(8))
            self.checkpoint = checkpoint

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for block in self.blocks:
                if self.checkpoint:
                    x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
            return x

    x = torch.empty(512, 256, device="meta")
    plain = nnmem.estimate(lambda: Deep(False), x, optimizer="sgd", device="cpu")
    checkpointed = nnmem.estimate(lambda: Deep(True), x, optimizer="sgd", device="cpu")
    forward_end = [p for p in checkpointed.timeline if p.phase is Phase.FORWARD]
    saved_plain = max(p.categories.activation for p in plain.timeline if p.phase is Phase.FORWARD)
    saved_ckpt = max(p.categories.activation for p in forward_end)
    # plain: each block saves its Linear input and its GELU input (512x256 floats each); the
    # first Linear's input is the model input (an input, not an activation); plus the loss
    assert saved_plain == (8 + 7) * 512 * 256 * FP32 + FP32
    # checkpointed: only each block's input is kept
    assert saved_ckpt < saved_plain / 1.5


def test_amp_bf16_casts_weights_for_the_forward_pass() -> None:
    full = nnmem.estimate(small_mlp, X, mode="inference", device="cpu")
    mixed = nnmem.estimate(small_mlp, X, mode="inference", amp="bf16", device="cpu")
    assert mixed.categories.parameter == full.categories.parameter  # the weights stay float32
    assert mixed.peak_bytes != full.peak_bytes  # bf16 copies of weights and bf16 activations


def test_the_users_model_is_left_as_it_was() -> None:
    model = small_mlp()
    before = model[0].weight.detach().clone()
    nnmem.estimate(model, torch.randn(32, 64), device="cpu")
    assert torch.equal(model[0].weight, before)
    assert model[0].weight.grad is None


def test_per_module_attribution_names_the_layers() -> None:
    report = nnmem.estimate(small_mlp, X, mode="train", optimizer="sgd", device="cpu")
    rows = {row.name: row for row in report.layers}
    assert rows["0"].parameters == 64 * 256 + 256
    assert rows["0"].output_shape == (32, 256)
    assert rows["2"].output_shape == (32, 10)
    assert rows["0"].kind == "Linear"


def test_report_to_dict_is_json_ready() -> None:
    import json

    report = nnmem.estimate(small_mlp, X, device="cpu")
    data = json.loads(json.dumps(report.to_dict()))
    assert data["peak_bytes"] == report.peak_bytes
    assert data["categories"]["parameter"] == PARAMS * FP32
    assert {"layers", "steady_peak", "first_step_peak", "unknown_ops"} <= set(data)


def test_cuda_device_follows_cuda_defaults_and_says_so() -> None:
    report = nnmem.estimate(small_mlp, X, device="cuda")
    assert any("cuda" in note for note in report.notes)
    assert dict(report.settings)["implementation"] == "auto"


# -- bad input ------------------------------------------------------------------------
def test_unknown_optimizer_suggests_the_nearest_name() -> None:
    with pytest.raises(UsageError, match="did you mean 'adamw'"):
        nnmem.estimate(small_mlp, X, optimizer="adamww", device="cpu")


def test_inputs_that_do_not_fit_name_the_module_and_the_pytorch_error() -> None:
    with pytest.raises(ModelError, match=r"module '0'.*\[32, 65\] X \[64, 256\]"):
        nnmem.estimate(small_mlp, torch.empty(32, 65, device="meta"), device="cpu")


def test_data_dependent_ops_name_the_op_and_the_module() -> None:
    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.fc(x)
            return y[y > 0].sum()  # the size of the selection depends on the values

    with pytest.raises(TraceError, match=r"module '(fc|\(model\))'|in the model|nonzero|needs the tensor"):
        nnmem.estimate(Gate, torch.empty(4, 8, device="meta"), device="cpu")


def test_item_names_the_op() -> None:
    class Branch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.fc(x)
            if y.sum().item() > 0:
                return y
            return -y

    with pytest.raises(TraceError, match="_local_scalar_dense"):
        nnmem.estimate(Branch, torch.empty(4, 8, device="meta"), device="cpu")


def test_a_factory_that_fails_says_so() -> None:
    def broken() -> nn.Module:
        raise ValueError("no such width")

    with pytest.raises(ModelError, match="broken.*no such width"):
        nnmem.estimate(broken, X, device="cpu")


def test_bad_mode_and_device() -> None:
    with pytest.raises(UsageError, match="did you mean 'inference'"):
        nnmem.estimate(small_mlp, X, mode="inferense", device="cpu")
    with pytest.raises(UsageError, match="unknown device"):
        nnmem.estimate(small_mlp, X, device="tpu")


def test_categories_enum_is_closed() -> None:
    assert Category("gradient") is Category.GRADIENT
