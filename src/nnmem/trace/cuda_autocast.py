"""CUDA's autocast rules, applied to a trace that runs on CPU fake tensors.

`torch.autocast("cuda")` and `torch.autocast("cpu")` cast different ops: CUDA runs softmax,
layer_norm, sum, exp, pow, the losses and more in float32 (and `softmax`/`sum` with a float32
`dtype=` rather than a cast copy), casts `addmv`, `einsum`, `mv` and the RNN cells down, and
leaves alone what CPU autocast sends to float32 (3-D pooling, padding, FFTs, linear algebra).
A trace for `device="cuda"` runs on CPU fakes, whose tensors only meet the `AutocastCPU`
dispatch key, so while it runs `cuda_autocast()` registers, at that key, kernels that follow
CUDA's policy for every op where the two differ, and removes them afterwards.

The policies are PyTorch's own (aten/src/ATen/autocast_mode.h: AT_FORALL_LOWER_PRECISION_FP,
AT_FORALL_FP32, AT_FORALL_FP32_SET_OPT_DTYPE, AT_FORALL_DIFFERENT_REDISPATCH_SIGNATURE,
AT_FORALL_PROMOTE; autocast_mode.cpp for the CPU lists). A CPU build registers the CUDA
autocast kernels too, so tests check these tables against the installed PyTorch's dispatcher
(`torch._C._dispatch_has_kernel_for_dispatch_key(op, "AutocastCUDA")`).

Known limitations: the lower-precision casts made here are not cached per weight as CUDA's
autocast cache does (only ops CPU autocast does not cast already go through here: `addmv`,
`addr`, `mv`, `einsum`, `chain_matmul`, `linalg_multi_dot`, the RNN cells), so a weight such an
op uses twice in one forward is cast twice; for fp16 `softmax` CUDA reads half and writes float
without a copy (`half_to_float`), where the trace makes a transient float32 copy.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Final

import torch

from nnmem.categories import StrEnum


class Policy(StrEnum):
    """What autocast does to an op's floating arguments."""

    LOWER = "lower_precision_fp"  # cast to the autocast dtype
    FP32 = "fp32"  # cast to float32
    FP32_SET_DTYPE = "fp32_set_opt_dtype"  # run with dtype=float32 unless a dtype is given
    FP32_APPEND_DTYPE = "fp32_append_dtype"  # norm: call the overload that takes a dtype, float32
    PROMOTE = "promote"  # cast all to the widest floating type among them
    BANNED = "banned"  # raises under CUDA autocast (binary_cross_entropy)
    NONE = "none"  # no autocast kernel: runs in the dtypes it is given


def _ops(policy: Policy, names: str) -> dict[str, Policy]:
    return {name: policy for name in names.split()}


# aten op overloads ("name" for .default) with an AutocastCUDA kernel, by policy.
CUDA_POLICIES: Final[dict[str, Policy]] = {
    **_ops(
        Policy.LOWER,
        "_convolution _convolution.deprecated conv1d conv2d conv3d conv_tbc conv_transpose1d"
        " conv_transpose2d.input conv_transpose3d.input convolution cudnn_convolution"
        " cudnn_convolution_transpose prelu addmm addmv addr matmul einsum mm mv linalg_vecdot linear"
        " addbmm baddbmm bmm chain_matmul linalg_multi_dot _thnn_fused_lstm_cell _thnn_fused_gru_cell"
        " lstm_cell gru_cell rnn_tanh_cell rnn_relu_cell _scaled_dot_product_flash_attention"
        " scaled_dot_product_attention",
    ),
    **_ops(
        Policy.FP32,
        "acos asin cosh erfinv exp expm1 log log10 log2 log1p reciprocal rsqrt sinh tan"
        " pow.Tensor_Scalar pow.Tensor_Tensor pow.Scalar softplus layer_norm native_layer_norm"
        " group_norm rms_norm frobenius_norm.dim nuclear_norm nuclear_norm.dim cosine_similarity"
        " poisson_nll_loss cosine_embedding_loss nll_loss nll_loss2d hinge_embedding_loss kl_div"
        " l1_loss smooth_l1_loss huber_loss mse_loss margin_ranking_loss multilabel_margin_loss"
        " soft_margin_loss triplet_margin_loss multi_margin_loss binary_cross_entropy_with_logits"
        " dist pdist cdist renorm logsumexp upsample_nearest1d _upsample_nearest_exact1d"
        " upsample_nearest2d _upsample_nearest_exact2d upsample_nearest3d _upsample_nearest_exact3d"
        " upsample_linear1d upsample_bilinear2d _upsample_bilinear2d_aa upsample_trilinear3d"
        " upsample_bicubic2d _upsample_bicubic2d_aa",
    ),
    **_ops(
        Policy.FP32_SET_DTYPE,
        "prod prod.dim_int prod.dim_Dimname softmax.int softmax.Dimname log_softmax.int"
        " log_softmax.Dimname cumprod cumprod.dimname cumsum cumsum.dimname linalg_vector_norm"
        " linalg_matrix_norm linalg_matrix_norm.str_ord sum sum.dim_IntList sum.dim_DimnameList",
    ),
    **_ops(Policy.FP32_APPEND_DTYPE, "norm.Scalar norm.ScalarOpt_dim norm.names_ScalarOpt_dim"),
    **_ops(
        Policy.PROMOTE,
        "addcdiv addcmul atan2 bilinear cross dot vdot grid_sampler index_put tensordot scatter_add",
    ),
    "binary_cross_entropy": Policy.BANNED,
}

# CPU autocast ops that are kept as CPU registers them: the same lower-precision policy on CUDA
# (and the same weight cast cache), or a CPU-only kernel whose CUDA counterpart autocasts alike
# (mkldnn_rnn_layer: cuDNN's RNN is cast down on CUDA too).
_KEEP_CPU: Final = frozenset(
    [
        "conv1d",
        "conv1d.padding",
        "conv2d",
        "conv2d.padding",
        "conv3d",
        "conv3d.padding",
        "bmm",
        "mm",
        "linalg_vecdot",
        "baddbmm",
        "addmm",
        "addbmm",
        "linear",
        "_convolution.deprecated",
        "matmul",
        "conv_tbc",
        "mkldnn_rnn_layer",
        "conv_transpose1d",
        "conv_transpose2d.input",
        "conv_transpose3d.input",
        "prelu",
        "scaled_dot_product_attention",
    ]
)

_BCE_MESSAGE: Final = (
    "torch.nn.functional.binary_cross_entropy and torch.nn.BCELoss are unsafe to autocast on CUDA"
    " (PyTorch raises this error there); use binary_cross_entropy_with_logits / BCEWithLogitsLoss"
)
_AUTOCAST_CPU: Final = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)


def _op(name: str) -> Any:
    base, _, overload = name.partition(".")
    return getattr(getattr(torch.ops.aten, base), overload or "default")


@functools.cache
def autocast_ops(key: str) -> tuple[str, ...]:
    """The aten ops ("name" or "name.overload") with a kernel at dispatch key `key`
    ("AutocastCPU", "AutocastCUDA") in the installed PyTorch."""
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    return tuple(
        sorted(
            name.removeprefix("aten::")
            for name in torch._C._dispatch_get_all_op_names()
            if name.startswith("aten::") and has(name, key)
        )
    )


def _eligible(value: Any) -> bool:
    return (
        isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and value.device.type == "cpu"
        and value.dtype is not torch.float64
    )


def _cast(value: Any, dtype: torch.dtype) -> Any:
    if _eligible(value) and value.dtype is not dtype:
        return value.to(dtype)
    if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
        return type(value)(_cast(v, dtype) for v in value)
    return value


def _widest(values: list[Any]) -> torch.dtype | None:
    widest: torch.dtype | None = None
    for value in values:
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if _eligible(item):
                widest = item.dtype if widest is None else torch.promote_types(widest, item.dtype)
    return widest


def _kernel(name: str, policy: Policy) -> Callable[..., Any]:
    """A Python kernel for the AutocastCPU key that does what CUDA's autocast does to `name`."""
    op = _op(name)
    dtype_index = next(
        (i for i, a in enumerate(op._schema.arguments) if a.name == "dtype" and not a.kwarg_only), None
    )
    appended = {
        "norm.Scalar": "ScalarOpt_dtype",
        "norm.ScalarOpt_dim": "ScalarOpt_dim_dtype",
        "norm.names_ScalarOpt_dim": "names_ScalarOpt_dim_dtype",
    }

    def kernel(*args: Any, **kwargs: Any) -> Any:
        with torch._C._ExcludeDispatchKeyGuard(_AUTOCAST_CPU):
            if policy is Policy.BANNED:
                raise RuntimeError(_BCE_MESSAGE)
            if policy is Policy.LOWER:
                target = torch.get_autocast_dtype("cpu")
                return op(*_cast(args, target), **{k: _cast(v, target) for k, v in kwargs.items()})
            if policy is Policy.FP32:
                return op(
                    *_cast(args, torch.float32), **{k: _cast(v, torch.float32) for k, v in kwargs.items()}
                )
            if policy is Policy.PROMOTE:
                widest = _widest([*args, *kwargs.values()])
                if widest is None:
                    return op(*args, **kwargs)
                return op(*_cast(args, widest), **{k: _cast(v, widest) for k, v in kwargs.items()})
            if policy is Policy.FP32_APPEND_DTYPE and args and _eligible(args[0]):
                overload = getattr(torch.ops.aten.norm, appended[name])
                return overload(*args, **kwargs, dtype=torch.float32)
            if policy is Policy.FP32_SET_DTYPE and args and _eligible(args[0]):
                if dtype_index is not None and len(args) > dtype_index:
                    if args[dtype_index] is None:
                        args = (*args[:dtype_index], torch.float32, *args[dtype_index + 1 :])
                elif kwargs.get("dtype") is None:
                    kwargs = {**kwargs, "dtype": torch.float32}
            return op(*args, **kwargs)

    return kernel


def overrides() -> dict[str, Policy]:
    """The ops whose CPU autocast behaviour is replaced while tracing for CUDA, and by what.

    Every op with a CUDA autocast policy (except those CPU autocast already treats alike), and
    every CPU autocast op CUDA does not autocast (`Policy.NONE`: it runs in the given dtypes).
    """
    on_cuda = set(autocast_ops("AutocastCUDA"))
    chosen = {
        name: policy for name, policy in CUDA_POLICIES.items() if name not in _KEEP_CPU and name in on_cuda
    }
    for name in autocast_ops("AutocastCPU"):
        if name not in chosen and name not in _KEEP_CPU:
            chosen[name] = CUDA_POLICIES.get(name, Policy.NONE)
    return chosen


@contextlib.contextmanager
def cuda_autocast() -> Iterator[dict[str, Policy]]:
    """Within the block, CPU autocast casts as CUDA autocast would (see the module docstring)."""
    library = torch.library.Library("aten", "IMPL")  # type: ignore[no-untyped-call]
    chosen = overrides()
    try:
        with warnings.catch_warnings():  # "Overriding a previously registered kernel" for CPU's own
            warnings.simplefilter("ignore")
            for name, policy in chosen.items():
                library.impl(name, _kernel(name, policy), "AutocastCPU")  # type: ignore[no-untyped-call]
        yield chosen
    finally:
        library._destroy()  # type: ignore[no-untyped-call]


__all__ = ["CUDA_POLICIES", "Policy", "autocast_ops", "cuda_autocast", "overrides"]
