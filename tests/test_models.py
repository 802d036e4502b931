"""Encoders and heads: shapes, hand-counted parameters and FLOPs, bf16, BatchNorm over devices,
heads against NumPy forward passes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssldml_jax import config_defaults, parallel
from ssldml_jax.cli import ConfigError
from ssldml_jax.models import ProbeHead, ProjectionHead, ResNet1D, build_encoder, summarize

T, LEADS, B, WIDTH, EMB = 128, 12, 4, 8, 16
STAGES = (1, 1, 1, 1)  # One block per stage keeps compiles short; depth is checked by shape only.


def _conv_len(length, kernel, stride):
  return (length + 2 * (kernel // 2) - kernel) // stride + 1


def analytic(stages, width, kernel, stem_kernel, length=None, leads=12, emb=128):
  """Parameters (and, given a length, 2 x MACs) of the paper's 1-D ResNet, counted by hand."""
  params = leads * width * stem_kernel + 2 * width
  flops = 0
  if length is not None:
    length = _conv_len(length, stem_kernel, 2)
    flops += 2 * length * leads * width * stem_kernel
    length = _conv_len(length, 3, 2)  # max-pool
  c_in = width
  for stage, blocks in enumerate(stages):
    c = width * 2 ** stage
    for block in range(blocks):
      stride = 2 if stage > 0 and block == 0 else 1
      params += c_in * c * kernel + 2 * c + c * c * kernel + 2 * c
      if length is not None:
        out = _conv_len(length, kernel, stride)
        flops += 2 * out * c * kernel * (c_in + c)
      if stride != 1 or c_in != c:
        params += c_in * c + 2 * c
        if length is not None:
          flops += 2 * out * c_in * c
      if length is not None:
        length = out
      c_in = c
  return params + c_in * emb + emb, flops + 2 * c_in * emb


def _n_params(model, length=T):
  v = jax.eval_shape(model.init, _key(0), jnp.zeros((1, length, LEADS)))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v["params"]))


def _key(seed):
  # XLA:CPU compiles threefry slowly (seconds per dropout site); the rbg generator is quick.
  return jax.random.key(seed, impl="rbg")


@pytest.fixture(scope="module")
def tiny():
  """A small encoder with generic weights (drawn in NumPy: compiling init would cost seconds)."""
  model = ResNet1D(stage_sizes=STAGES, width=WIDTH, embedding_dim=EMB)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(B, T, LEADS)).astype(np.float32)
  shapes = jax.eval_shape(model.init, _key(0), x)

  def fill(path, s):
    name = path[-1].key
    if name in ("scale", "var"):
      return jnp.asarray(rng.uniform(0.5, 1.5, s.shape), s.dtype)
    if name in ("bias", "mean"):
      return jnp.asarray(rng.normal(0.0, 0.1, s.shape), s.dtype)
    fan_in = int(np.prod(s.shape[:-1]))
    return jnp.asarray(rng.normal(0.0, 1.0 / np.sqrt(fan_in), s.shape), s.dtype)

  return model, jax.tree_util.tree_map_with_path(fill, shapes), x


def test_paper_resnet18_parameter_count_matches_hand_count():
  config = config_defaults.base_config()
  model = build_encoder(config.model)
  assert model.stage_sizes == (2, 2, 2, 2) and model.width == 64 and model.embedding_dim == 128
  assert _n_params(model, 2500) == analytic((2, 2, 2, 2), 64, 7, 15)[0] == 8_803_072
  config.model.name = "resnet34"
  assert _n_params(build_encoder(config.model), 2500) == analytic((3, 4, 6, 3), 64, 7, 15)[0]
  config.model.update(stage_sizes=(1, 1), width=8, kernel_size=5, stem_kernel=9)
  assert _n_params(build_encoder(config.model)) == analytic((1, 1), 8, 5, 9)[0]


def test_shapes_train_mode_and_dropout(tiny):
  model, variables, x = tiny
  emb, pooled = jax.jit(lambda v, x: model.apply(v, x, return_features=True))(variables, x)
  assert emb.shape == (B, EMB) and pooled.shape == (B, 8 * WIDTH) and emb.dtype == jnp.float32

  @jax.jit
  def train(key):
    return model.apply(variables, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"])

  out1, state = train(_key(1))
  out2, _ = train(_key(2))
  assert not np.allclose(out1, out2)  # Dropout is on.
  old, new = variables["batch_stats"], state["batch_stats"]
  assert jax.tree.structure(old) == jax.tree.structure(new)
  assert not np.allclose(old["stem_bn"]["mean"], new["stem_bn"]["mean"])


def test_bfloat16_compute_keeps_float32_params_and_stays_close(tiny):
  model, variables, x = tiny
  half = model.clone(dtype=jnp.bfloat16)
  half_vars = jax.eval_shape(half.init, _key(0), x)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(half_vars))
  full = model.apply(variables, x)
  low = jax.jit(half.apply)(variables, x)
  assert low.dtype == jnp.float32
  rel = np.linalg.norm(low - full) / np.linalg.norm(full)
  assert 0 < rel < 0.05, rel


def test_batchnorm_statistics_are_global_under_pmap(tiny):
  """8 devices x 2 ECGs normalise like one device with all 16 (dropout off to compare)."""
  model, variables, _ = tiny
  n_dev = jax.local_device_count()
  x = np.random.default_rng(3).normal(size=(n_dev * 2, T, LEADS)).astype(np.float32)
  single = model.clone(dropout=0.0)
  mapped = model.clone(dropout=0.0, bn_axis_name=parallel.AXIS)

  def train(m, v, x):
    return m.apply(v, x, train=True, mutable=["batch_stats"])

  expected, expected_state = jax.jit(lambda v, x: train(single, v, x))(variables, x)
  got, state = jax.pmap(lambda v, x: train(mapped, v, x), axis_name=parallel.AXIS)(
      parallel.replicate(variables), x.reshape(n_dev, 2, T, LEADS))
  np.testing.assert_allclose(np.asarray(got).reshape(expected.shape), expected, rtol=1e-4,
                             atol=1e-4)
  for a, b in zip(jax.tree.leaves(expected_state), jax.tree.leaves(state)):
    np.testing.assert_allclose(b, np.broadcast_to(a, b.shape), rtol=1e-4, atol=1e-5)


def test_summary_counts_params_and_flops(tiny):
  model, variables, _ = tiny
  s = summarize(model, (T, LEADS), variables)
  params, flops = analytic(STAGES, WIDTH, 7, 15, length=T, emb=EMB)
  assert s.params == params and s.flops_counted == flops
  assert s.batch_stats == sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
      variables["batch_stats"]))
  if s.flops_xla is not None:  # XLA also counts elementwise work: same order of magnitude.
    assert 0.5 < s.flops_xla / flops < 2.0
  assert "parameters" in s.format()


def _generic(module, *args, seed=0, **kwargs):
  """``module``'s variables filled with generic NumPy draws (non-trivial BatchNorm state)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(functools.partial(module.init, **kwargs), _key(0), *args)

  def fill(path, s):
    name = path[-1].key
    if name in ("scale", "var"):
      return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
    return rng.normal(0.0, 0.5, s.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _dense(p, x):
  return x @ np.asarray(p["kernel"], np.float64) + p["bias"]


def _batchnorm(p, x, mean, var):
  return (x - mean) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def test_projection_head_is_dense_relu_dense():
  emb = np.random.default_rng(1).normal(size=(B, EMB)).astype(np.float32)
  head = ProjectionHead(hidden_dim=32, out_dim=8)
  v = _generic(head, emb)
  p = v["params"]
  want = _dense(p["out"], np.maximum(_dense(p["hidden"], emb), 0.0))
  np.testing.assert_allclose(jax.jit(head.apply)(v, emb), want, rtol=1e-5, atol=1e-5)


def test_probe_head_equals_numpy_in_both_modes():
  """Dense -> BatchNorm (running statistics, or the batch's with the PyTorch-style update of
  the running ones) -> ReLU -> Dense; dropout off so that training mode is deterministic."""
  emb = np.random.default_rng(2).normal(size=(8, EMB)).astype(np.float32)
  head = ProbeHead(out_dim=3, hidden_dim=16, dropout=0.0)
  v = _generic(head, emb, train=False)
  p, stats = v["params"], v["batch_stats"]["bn"]

  def forward(mean, var):
    h = _batchnorm(p["bn"], _dense(p["hidden"], emb), mean, var)
    return _dense(p["out"], np.maximum(h, 0.0))

  evaluated = jax.jit(lambda v, x: head.apply(v, x, train=False))(v, emb)
  np.testing.assert_allclose(evaluated, forward(stats["mean"], stats["var"]), rtol=1e-4,
                             atol=1e-4)
  trained, new = jax.jit(lambda v, x: head.apply(v, x, train=True, mutable=["batch_stats"]))(
      v, emb)
  hidden = _dense(p["hidden"], emb)
  mean, var = hidden.mean(axis=0), hidden.var(axis=0)  # the batch's (biased) variance
  np.testing.assert_allclose(trained, forward(mean, var), rtol=1e-4, atol=1e-4)
  # Running averages: 0.9 old + 0.1 batch (PyTorch's momentum 0.1). The variance averaged in is
  # the batch's biased one (flax); PyTorch averages the unbiased one, larger by n / (n - 1).
  np.testing.assert_allclose(new["batch_stats"]["bn"]["mean"],
                             0.9 * stats["mean"] + 0.1 * mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new["batch_stats"]["bn"]["var"], 0.9 * stats["var"] + 0.1 * var,
                             rtol=1e-5, atol=1e-6)
  assert trained.dtype == evaluated.dtype == jnp.float32


def test_probe_head_dropout_is_on_in_training_only():
  emb = np.random.default_rng(3).normal(size=(B, EMB)).astype(np.float32)
  head = ProbeHead(out_dim=1)
  v = _generic(head, emb, train=False)
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v["params"]))
  assert n == EMB * 128 + 128 + 2 * 128 + 128 + 1  # Dense 128, BatchNorm, Dense 1

  @jax.jit
  def run(key):
    train = head.apply(v, emb, train=True, rngs={"dropout": key}, mutable=["batch_stats"])[0]
    off = head.clone(dropout=0.0).apply(v, emb, train=True, mutable=["batch_stats"])[0]
    return train, off, head.apply(v, emb), head.clone(dropout=0.0).apply(v, emb)

  train, off, evaluated, evaluated_off = run(_key(1))
  assert not np.allclose(train, off)
  np.testing.assert_array_equal(evaluated, evaluated_off)


@pytest.mark.parametrize("key,value,match", [
    ("name", "resnet50", "config.model.name"),
    ("dtype", "float16", "config.model.dtype"),
    ("width", 0, "config.model.width"),
    ("stage_sizes", (2, 0), "config.model.stage_sizes"),
    ("dropout", 1.5, "config.model.dropout"),
])
def test_bad_model_config_names_the_key(key, value, match):
  config = config_defaults.base_config()
  config.model[key] = value
  with pytest.raises(ConfigError, match=match):
    build_encoder(config.model)


def test_bad_input_rank_is_reported(tiny):
  model, variables, x = tiny
  with pytest.raises(ValueError, match="batch, time, leads"):
    model.apply(variables, x[0])
