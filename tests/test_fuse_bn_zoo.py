"""fuse_bn on every torchvision classification model: every Conv/Linear→BN pair fused, outputs kept.

The pairs present are counted independently of the pass, with forward hooks: a BatchNorm whose
input tensor is the very output tensor of a Conv/Linear forms a pair. Models are built with
weights=None and cheap deterministic parameters (random initialization of ~3 billion parameters
would dominate the test on two cores), small inputs, and random BatchNorm statistics.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import pytest
import torch
import torchvision
from torch import nn

from optkit_plugins.fuse_bn import fuse_batchnorm
from optkit_plugins.fuse_bn.folding import FOLDABLE_LAYERS, NORM_LAYERS

ALL_MODELS = torchvision.models.list_models(module=torchvision.models)
# Builder arguments that shrink fixed-size models (the input must match them).
BUILD_KWARGS = {name: {"image_size": 28 if name == "vit_h_14" else 32} for name in ALL_MODELS if name.startswith("vit_")}
INPUT_SIZE = {"alexnet": 64, "inception_v3": 75, "maxvit_t": 224, "vit_h_14": 28}
CHUNKS = 4
# Per element: |fused - unfused| <= ATOL_SCALE * max|unfused| + RTOL * |unfused|. Deep nets with
# random BN statistics reach large activations; float32 rounding of ~100 folded layers stays far below.
RTOL, ATOL_SCALE = 1e-4, 1e-5

_INIT_FUNCTIONS = [
    "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "xavier_uniform_",
    "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_",
]


@contextlib.contextmanager
def no_random_init():
    """Make torch.nn.init a no-op while a model is built; :func:`fill_parameters` fills it after."""
    saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS}
    try:
        for name in _INIT_FUNCTIONS:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, function in saved.items():
            setattr(nn.init, name, function)


@torch.no_grad()
def fill_parameters(model: nn.Module, seed: int = 0) -> None:
    """Deterministic, varied, well-scaled parameters and random BatchNorm statistics, quickly.

    A random block of a prime length is tiled through each tensor (a copy, not an RNG pass).
    """
    pattern = torch.randn(10007, generator=torch.Generator().manual_seed(seed))
    def tiled(n: int) -> torch.Tensor:
        return pattern.repeat(n // pattern.numel() + 1)[:n]

    for name, param in model.named_parameters():
        values = tiled(param.numel()).view(param.shape)
        if param.dim() >= 2:
            values = values / math.sqrt(param[0].numel())
        elif name.endswith("weight"):
            values = 1 + 0.2 * values
        else:
            values = 0.1 * values
        param.copy_(values)
    for module in model.modules():
        if isinstance(module, NORM_LAYERS) and module.running_mean is not None:
            n = module.running_mean.numel()
            module.running_mean.copy_(0.1 * tiled(n + 7)[7:])
            module.running_var.copy_(0.5 + tiled(n + 3)[3:].abs())


@torch.no_grad()
def calibrate_bn(model: nn.Module, x: torch.Tensor) -> None:
    """Running statistics from a random batch, as training leaves them.

    Arbitrary statistics make a deep net's activations grow to 1e4 and beyond, where float32
    rounding alone (fused or not) moves the outputs by more than any useful tolerance. The
    batch holds the test input, which keeps every normalized value within sqrt(batch - 1).
    BatchNorms that the eval forward does not run (auxiliary heads) keep the arbitrary ones.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: one batch gives exactly its statistics
        bn.train()
    model(x)
    model.eval()
    for bn in norms:
        # A channel the batch leaves (nearly) constant would be scaled by up to 1/sqrt(eps): a
        # condition number that makes float32 rounding, not the fold, decide the outputs.
        bn.running_var.clamp_(min=0.5)


@torch.no_grad()
def run_counting_pairs(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, set[tuple[str, str]], set[str]]:
    """The output, the (layer, bn) pairs the forward shows, and the BatchNorms that ran.

    A pair: a BatchNorm takes a layer's output tensor, and no other module (its own containers
    aside) takes that tensor too.
    """
    produced: dict[int, str] = {}
    keep: list[torch.Tensor] = []  # alive, so no id is reused during the forward
    readers: dict[str, list[str]] = {}
    ran: set[str] = set()

    def after_layer(name):
        def hook(module, args, output):
            produced[id(output)] = name
            readers[name] = []
            keep.append(output)
        return hook

    def before_any(name):
        def hook(module, args):
            if isinstance(module, NORM_LAYERS):
                ran.add(name)
            for arg in args:
                if id(arg) in produced:
                    readers[produced[id(arg)]].append(name)
        return hook

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(before_any(name)))
        if isinstance(module, FOLDABLE_LAYERS):
            handles.append(module.register_forward_hook(after_layer(name)))
    try:
        output = model(x)
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(output, torch.Tensor):  # googlenet/inception return namedtuples only in training
        output = output[0]
    pairs = set()
    for layer, names in readers.items():
        norms = [n for n in names if isinstance(model.get_submodule(n), NORM_LAYERS)]
        if len(norms) == 1 and all(norms[0].startswith(n + ".") for n in names if n != norms[0]):
            pairs.add((layer, norms[0]))
    return output, pairs, ran


def check_model(name: str) -> str:
    with warnings.catch_warnings(), no_random_init():
        warnings.simplefilter("ignore", FutureWarning)
        model = torchvision.models.get_model(name, weights=None, **BUILD_KWARGS.get(name, {}))
    fill_parameters(model.eval())
    size = INPUT_SIZE.get(name, 32)
    batch = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1))
    calibrate_bn(model, batch)
    x = batch[:1]
    expected, pairs, ran = run_counting_pairs(model, x)
    result = fuse_batchnorm(model, x, inplace=True)
    with torch.no_grad():
        actual = result.model(x)
    atol = ATOL_SCALE * float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=atol, msg=lambda m: f"{name}: {m}")
    fused = {(e["layer"], e["bn"]) for e in result.fused}
    assert result.skipped == [], f"{name}: {result.skipped}"
    assert pairs <= fused, f"{name}: pairs not fused: {sorted(pairs - fused)}"
    # Pairs beyond those the forward shows may only lie in modules it never runs (auxiliary heads).
    assert not {bn for _, bn in fused - pairs} & ran, f"{name}: {sorted(fused - pairs)}"
    remaining = {n for n, m in result.model.named_modules() if isinstance(m, NORM_LAYERS)}
    assert not remaining & {bn for _, bn in pairs}
    return f"{name}: {len(fused)} fused ({len(pairs)} run), {result.method}"


@pytest.mark.slow
@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_every_torchvision_model_fuses_every_pair_exactly(chunk):
    # Interleaved chunks balance the heavy models across xdist workers.
    names = ALL_MODELS[chunk::CHUNKS]
    failures = []
    for name in names:
        try:
            check_model(name)
        except AssertionError as exc:  # collect every model's failure, not only the first
            failures.append(str(exc))
    assert not failures, "\n".join(failures)


#: timm models whose BatchNorms are all timm BatchNormAct2d (their own forward): every pair fuses
#: through the standard module rules, with the count Torch-Pruning's graph and a forward agree on.
TIMM_PAIRS = {"efficientnet_b0": 49, "regnety_008": 47, "regnetx_004": 71}


@pytest.mark.slow
@pytest.mark.parametrize("name", TIMM_PAIRS)
def test_timm_models_fuse_every_norm_act_pair_through_module_rules(name):
    import timm
    from timm.layers.norm_act import BatchNormAct2d

    from optkit.host.facade import Host

    with no_random_init():
        model = timm.create_model(name, pretrained=False).eval()
    fill_parameters(model)
    batch = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    calibrate_bn(model, batch)
    x = batch[:1]
    with torch.no_grad():
        expected = model(x)
    assert sum(type(m) is BatchNormAct2d for m in model.modules()) == TIMM_PAIRS[name]
    result = fuse_batchnorm(model, x, rules=Host().rule_table())
    assert (len(result.fused), result.skipped) == (TIMM_PAIRS[name], [])
    assert {e["rule"] for e in result.fused} == {"timm.layers.norm_act.BatchNormAct2d"}
    assert not any(isinstance(m, NORM_LAYERS) for m in result.model.modules())
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), expected, rtol=RTOL, atol=ATOL_SCALE * float(expected.abs().max()))


@pytest.mark.slow
def test_googlenet_auxiliary_pairs_are_still_fused_with_module_rules():
    from optkit.host.facade import Host

    with warnings.catch_warnings(), no_random_init():
        warnings.simplefilter("ignore", FutureWarning)
        model = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False).eval()
    fill_parameters(model)
    result = fuse_batchnorm(model, torch.randn(1, 3, 64, 64), rules=Host().rule_table())
    fused = {e["bn"] for e in result.fused}
    assert {"aux1.conv.bn", "aux2.conv.bn"} <= fused and len(fused) == 59 and result.skipped == []
