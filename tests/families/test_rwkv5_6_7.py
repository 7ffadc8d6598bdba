"""RWKV-5 (5.1 and 5.2), RWKV-6 and RWKV-7 against BlinkDL's own `rwkv` package, on random
checkpoints written in the official `.pth` layout: logits token by token (the package's RNN
mode, strategy "cpu fp32") and over the whole sequence, greedy generation, prefill + decode, bf16
files, and partial or mis-shaped files refused in one line naming the tensor."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is the test extra: pip install -e '.[test]'")
pytest.importorskip("rwkv", reason="BlinkDL's rwkv package is the test extra: pip install -e '.[test]'")

import jax.numpy as jnp  # noqa: E402

from microrwkv_jax import load_model  # noqa: E402
from microrwkv_jax.families import FAMILIES  # noqa: E402
from microrwkv_jax.families.blinkdl import generation  # noqa: E402
from microrwkv_jax.sampling import generate  # noqa: E402
from microrwkv_jax.torch_checkpoint import ConversionError  # noqa: E402
from benchmarks.rwkv_package_peer import random_state_dict, save_pth  # noqa: E402
from tests.families.rwkv_package import run_package  # noqa: E402
from tests.helpers import rel_err  # noqa: E402

VOCAB, LAYERS, WIDTH, HEADS = 97, 3, 64, 4
TOKENS = np.random.default_rng(0).integers(0, VOCAB, (2, 19))
GREEDY = 12
# name -> (arch, config fields beyond the sizes, what to change in the table: RWKV-5.1's per-head tensors)
MODELS = {
    "rwkv5.2": ("rwkv5", dict(ffn_dim=224)),
    "rwkv5.1": ("rwkv5", dict(ffn_dim=224)),
    "rwkv6": ("rwkv6", dict(ffn_dim=224, lora_dims=(8, 16))),
    "rwkv7": ("rwkv7", dict(ffn_dim=256, lora_dims=(16, 16, 8, 32))),
}


def official_state_dict(name: str, seed: int = 0) -> dict:
    """{BlinkDL name: float32 array} of a random model `name` in the official layout."""
    from microrwkv_jax.families import model_config
    arch, fields = MODELS[name]
    config = model_config(arch, n_layer=LAYERS, n_embd=WIDTH, n_head=HEADS, vocab_size=VOCAB, **fields)
    if name == "rwkv5.1":         # one decay and a log-bonus per head, as RWKV-5.1 stored them
        from microrwkv_jax.families.rwkv5.checkpoint_names import parameter_map
        table = parameter_map(config, decay_shape=(HEADS,), bonus="time_first", bonus_shape=(HEADS,))
    else:
        table = FAMILIES[arch].torch_checkpoint.parameter_map(config)
    state = random_state_dict(table, seed)
    if arch == "rwkv7":           # BlinkDL's files carry layer 0's (unused) value-residual LoRA
        state.update({"blocks.0.att.v0": np.ones((1, 1, WIDTH), np.float32),
                      "blocks.0.att.v1": np.zeros((WIDTH, 8), np.float32),
                      "blocks.0.att.v2": np.zeros((8, WIDTH), np.float32)})
    return state


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """({name: (float32 .pth, bf16 .pth)}, the package's results). The package runs a bf16 file's
    weights from a float32 file of the same values: given the bf16 file itself, RWKV-4/5/6's loader
    applies ln0 to the embedding in bf16 before widening it (its own rounding, 2e-3 here)."""
    workdir = tmp_path_factory.mktemp("blinkdl")
    paths, widened = {}, {}
    for name in MODELS:
        state = official_state_dict(name)
        paths[name] = (workdir / f"{name}.pth", workdir / f"{name}-bf16.pth")
        save_pth(state, paths[name][0])
        save_pth(state, paths[name][1], "bfloat16")
        widened[f"{name}-bf16"] = workdir / f"{name}-bf16-values.pth"
        save_pth({k: np.asarray(torch.tensor(v).bfloat16().float()) for k, v in state.items()}, widened[f"{name}-bf16"])
    older = [n for n in MODELS if n != "rwkv7"]
    results = run_package({**{n: paths[n][0] for n in older}, **{f"{n}-bf16": widened[f"{n}-bf16"] for n in older}},
                          TOKENS, GREEDY, False, workdir)
    results.update(run_package({"rwkv7": paths["rwkv7"][0], "rwkv7-bf16": widened["rwkv7-bf16"]}, TOKENS, GREEDY,
                               True, workdir))
    return paths, results


def test_the_generation_is_detected_from_the_names_as_the_package_does():
    assert {name: generation(official_state_dict(name)) for name in MODELS} == {
        "rwkv5.2": "5.2", "rwkv5.1": "5.1", "rwkv6": "6", "rwkv7": "7"}


@pytest.mark.parametrize("name", list(MODELS))
def test_logits_equal_the_package_token_by_token_and_over_the_sequence(checkpoints, name):
    paths, results = checkpoints
    model, config = load_model(paths[name][0])
    assert config.arch == MODELS[name][0] and config.n_layer == LAYERS and config.n_head == HEADS
    ours = np.asarray(model(jnp.asarray(TOKENS, jnp.int32)))
    for row in range(len(TOKENS)):
        assert rel_err(ours[row], results[f"{name}/{row}/rnn"]) <= 1e-5
        assert rel_err(ours[row], results[f"{name}/{row}/seq"]) <= 1e-5


@pytest.mark.parametrize("name", list(MODELS))
def test_greedy_generation_and_prefill_plus_decode_equal_the_package(checkpoints, name):
    paths, results = checkpoints
    model, _ = load_model(paths[name][0])
    new = generate(model, TOKENS, GREEDY, temperature=0.0)
    for row in range(len(TOKENS)):
        assert new[row].tolist() == results[f"{name}/{row}/greedy"].tolist()
    # Prefill 11 tokens in parallel, then one token at a time: the whole forward's logits.
    idx = jnp.asarray(TOKENS, jnp.int32)
    logits, state, _ = model.forward(idx[:, :11], model.init_state(len(TOKENS)))
    steps = [logits]
    for t in range(11, TOKENS.shape[1]):
        logits, state, _ = model.forward(idx[:, t:t + 1], state)
        steps.append(logits)
    assert rel_err(jnp.concatenate(steps, axis=1), model(idx)) <= 1e-5


@pytest.mark.parametrize("name", list(MODELS))
def test_bf16_files_load_and_equal_the_package_on_the_same_weights(checkpoints, name):
    """Kept in bf16 (param_dtype), the parameters hold the file's values exactly, but for RWKV-5.1's
    bonus: stored as its logarithm, exp() of it is not a bf16 value, and is rounded."""
    paths, results = checkpoints
    for param_dtype in ("float32", "bfloat16"):
        model, _ = load_model(paths[name][1], param_dtype=param_dtype)
        ours = np.asarray(model(jnp.asarray(TOKENS[:1], jnp.int32)))[0]
        exact = name != "rwkv5.1" or param_dtype == "float32"
        assert rel_err(ours, results[f"{name}-bf16/0/rnn"]) <= (1e-5 if exact else 1e-3)


@pytest.mark.parametrize("name", ["rwkv5.2", "rwkv6", "rwkv7"])
def test_partial_or_misshaped_checkpoints_are_refused_naming_the_tensor(tmp_path, name):
    state = official_state_dict(name)
    victim = "blocks.1.att.key.weight"
    partial = {k: v for k, v in state.items() if k != victim}
    save_pth(partial, tmp_path / "partial.pth")
    with pytest.raises(ConversionError) as err:
        load_model(tmp_path / "partial.pth")
    assert str(err.value).count("\n") == 0 and f"missing: {victim} (1)" in str(err.value)
    state[victim] = state[victim][:, :-1]
    save_pth(state, tmp_path / "misshaped.pth")
    with pytest.raises(ConversionError) as err:
        load_model(tmp_path / "misshaped.pth")
    assert f"mis-shaped: {victim} ({WIDTH}, {WIDTH - 1}) (expected ({WIDTH}, {WIDTH}))" in str(err.value)
