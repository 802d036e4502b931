"""Losses against brute-force NumPy loops, pytorch-metric-learning, and finite differences."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from ssldml_jax import distances, losses

N, D = 10, 4


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def problem():
  """Embeddings and triplets, some invalid (pointing at the anchor, as miners leave them)."""
  rng = np.random.default_rng(0)
  emb = rng.normal(size=(N, D)).astype(np.float32)
  a = np.arange(N, dtype=np.int32)
  p = rng.integers(0, N, N).astype(np.int32)
  n = rng.integers(0, N, N).astype(np.int32)
  valid = (p != a) & (n != a) & (p != n)
  valid[1] = False
  p, n = np.where(valid, p, a), np.where(valid, n, a)
  return emb, a, p, n, valid


def _np_dist(x, y, name):
  if name == "cosine":
    return 1.0 - np.sum(_unit(x) * _unit(y))
  sq = np.sum((x - y) ** 2)
  return sq if name == "squared_euclidean" else np.sqrt(sq)


def _mean_over_valid(terms, valid):
  terms = [t for t, v in zip(terms, valid) if v]
  return float(np.mean(terms)) if terms else 0.0


@pytest.mark.parametrize("distance,normalize", [("squared_euclidean", True),
                                                ("euclidean", False), ("cosine", False)])
def test_triplet_matches_brute_force(problem, distance, normalize):
  emb, a, p, n, valid = problem
  e = _unit(emb) if normalize else emb
  terms = [max(_np_dist(e[i], e[j], distance) - _np_dist(e[i], e[k], distance) + 0.3, 0.0)
           for i, j, k in zip(a, p, n)]
  got = losses.triplet_loss(emb, a, p, n, valid, 0.3, distance=distance, normalize=normalize)
  np.testing.assert_allclose(got, _mean_over_valid(terms, valid), rtol=1e-5, atol=1e-6)


def test_margin_matches_brute_force_and_beta_is_trained(problem):
  emb, a, p, n, valid = problem
  e = _unit(emb)
  beta, margin, nu, lr = 1.1, 0.2, 0.05, 0.1
  d_ap = np.linalg.norm(e[a] - e[p], axis=1)
  d_an = np.linalg.norm(e[a] - e[n], axis=1)
  terms = np.maximum(d_ap - beta + margin, 0) + np.maximum(beta - d_an + margin, 0)
  expected = _mean_over_valid(terms, valid) + nu * beta
  # d/d beta of the mean: -1 per active positive hinge, +1 per active negative hinge.
  slope = -(d_ap - beta + margin > 0).astype(float) + (beta - d_an + margin > 0)
  expected_grad = _mean_over_valid(slope, valid) + nu

  def loss_fn(params):
    return losses.margin_loss(emb, a, p, n, valid, params["beta"], margin, nu)

  params = losses.margin_loss_params(beta)
  value, grads = jax.value_and_grad(loss_fn)(params)
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  np.testing.assert_allclose(grads["beta"], expected_grad, rtol=1e-5)
  assert expected_grad != 0.0
  opt = optax.sgd(lr)
  updates, _ = opt.update(grads, opt.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new["beta"], beta - lr * expected_grad, rtol=1e-5)


@pytest.mark.parametrize("smooth", [False, True])
def test_angular_matches_brute_force(problem, smooth):
  emb, a, p, n, valid = problem
  e = _unit(emb)
  tan2 = np.tan(np.radians(40.0)) ** 2
  terms = []
  for i, j, k in zip(a, p, n):
    if smooth:
      f = 4 * tan2 * (e[i] + e[j]) @ e[k] - 2 * (1 + tan2) * e[i] @ e[j]
      terms.append(np.log1p(np.exp(f)))
    else:
      c = (e[i] + e[j]) / 2
      terms.append(max(np.sum((e[i] - e[j]) ** 2) - 4 * tan2 * np.sum((e[k] - c) ** 2), 0.0))
  got = losses.angular_loss(emb, a, p, n, valid, 40.0, smooth=smooth)
  np.testing.assert_allclose(got, _mean_over_valid(terms, valid), rtol=1e-5, atol=1e-6)


def _np_multi_similarity(emb, labels, ok, rows, alpha=2.0, beta=50.0, base=0.5):
  e = _unit(emb)
  out = []
  for i in rows:
    if not ok[i]:
      continue
    s = e @ e[i]
    pos = [s[j] for j in range(len(e)) if j != i and ok[j] and labels[j] == labels[i]]
    neg = [s[j] for j in range(len(e)) if ok[j] and labels[j] != labels[i]]
    out.append(np.log1p(np.sum(np.exp(-alpha * (np.array(pos) - base)))) / alpha
               + np.log1p(np.sum(np.exp(beta * (np.array(neg) - base)))) / beta)
  return float(np.mean(out)) if out else 0.0


def test_multi_similarity_matches_brute_force():
  rng = np.random.default_rng(1)
  emb = rng.normal(size=(N, D)).astype(np.float32)
  labels = rng.integers(0, 3, N)
  ok = np.ones(N, bool)
  ok[[2, 7]] = False
  got = losses.multi_similarity_loss(emb, labels, offset=3, num_anchors=5, valid_labels=ok)
  np.testing.assert_allclose(got, _np_multi_similarity(emb, labels, ok, range(3, 8)), rtol=1e-5)


def _np_ntxent(z1, z2, tau, mask):
  views = _unit(np.concatenate([z1, z2]))
  keep = np.concatenate([mask, mask])
  b = len(z1)
  out = []
  for i in range(2 * b):
    if not keep[i]:
      continue
    pos = (i + b) % (2 * b)
    logits = views @ views[i] / tau
    denom = sum(np.exp(logits[k]) for k in range(2 * b) if k != i and keep[k])
    out.append(-np.log(np.exp(logits[pos]) / denom))
  return float(np.mean(out))


def _np_cmsc(z1, z2, tau, ids, mask):
  s = _unit(z1) @ _unit(z2).T / tau
  out = []
  for i in range(len(z1)):
    for j in range(len(z1)):
      if mask[i] and mask[j] and ids[i] == ids[j]:
        rows = np.exp(s[i, mask]).sum()
        cols = np.exp(s[mask, j]).sum()
        out += [-np.log(np.exp(s[i, j]) / rows), -np.log(np.exp(s[i, j]) / cols)]
  return float(np.mean(out))


def test_view_losses_match_brute_force():
  rng = np.random.default_rng(2)
  z1, z2 = (rng.normal(size=(6, D)).astype(np.float32) for _ in range(2))
  mask = np.array([1, 1, 0, 1, 1, 1], bool)
  ids = np.array([0, 1, 2, 1, 3, 0])
  @jax.jit
  def ours(m):
    return (losses.ntxent_loss(z1, z2, 0.2, mask=m), losses.cmsc_loss(z1, z2, 0.2, mask=m),
            losses.cmsc_loss(z1, z2, 0.2, patient_ids=ids, mask=m))

  for m in (np.ones(6, bool), mask):
    expected = (_np_ntxent(z1, z2, 0.2, m), _np_cmsc(z1, z2, 0.2, np.arange(6), m),
                _np_cmsc(z1, z2, 0.2, ids, m))
    np.testing.assert_allclose(ours(m), expected, rtol=1e-5)


@pytest.mark.slow
def test_matches_pytorch_metric_learning(problem):
  torch = pytest.importorskip("torch")
  pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
  from pytorch_metric_learning import distances as pml_distances
  from pytorch_metric_learning.reducers import MeanReducer
  emb, a, p, n, valid = problem
  t = torch.from_numpy
  idx = tuple(t(x[valid]).long() for x in (a, p, n))

  pml = pml_losses.TripletMarginLoss(margin=0.2, reducer=MeanReducer())  # Non-squared, unit.
  np.testing.assert_allclose(losses.triplet_loss(emb, a, p, n, valid, 0.2, squared=False),
                             pml(t(emb), indices_tuple=idx).item(), rtol=1e-5)
  pml = pml_losses.TripletMarginLoss(margin=0.2, reducer=MeanReducer(),
                                     distance=pml_distances.LpDistance(power=2))
  np.testing.assert_allclose(losses.triplet_loss(emb, a, p, n, valid, 0.2, squared=True),
                             pml(t(emb), indices_tuple=idx).item(), rtol=1e-5)
  pml = pml_losses.MarginLoss(margin=0.2, beta=1.2, reducer=MeanReducer())
  np.testing.assert_allclose(losses.margin_loss(emb, a, p, n, valid, 1.2),
                             pml(t(emb), indices_tuple=idx).item(), rtol=1e-5)

  rng = np.random.default_rng(3)
  z1, z2 = (rng.normal(size=(6, D)).astype(np.float32) for _ in range(2))
  pml = pml_losses.NTXentLoss(temperature=0.1)
  views, ids = np.concatenate([z1, z2]), np.concatenate([np.arange(6)] * 2)
  np.testing.assert_allclose(losses.ntxent_loss(z1, z2, 0.1),
                             pml(t(views), t(ids)).item(), rtol=1e-5)

  labels = rng.integers(0, 3, N)
  pml = pml_losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5)
  np.testing.assert_allclose(losses.multi_similarity_loss(emb, labels),
                             pml(t(emb), t(labels)).item(), rtol=1e-5)

  # With one other-class sample, pml's N-pair angular loss is the smooth triplet form. pml
  # normalises anchors and positives but takes the negatives as given: pass unit vectors.
  three = _unit(emb[:3])
  pml = pml_losses.AngularLoss(alpha=40)
  ours = losses.angular_loss(three, np.array([0, 1]), np.array([1, 0]), np.array([2, 2]),
                             np.array([True, True]), 40.0, smooth=True)
  np.testing.assert_allclose(ours, pml(t(three), t(np.array([0, 0, 1]))).item(), rtol=1e-5)


@pytest.mark.slow
def test_gradients_match_finite_differences(problem):
  emb, a, p, n, valid = problem
  labels = np.arange(N) % 3
  fns = [
      lambda e: losses.triplet_loss(e, a, p, n, valid, 0.5, squared=False),
      lambda e: losses.margin_loss(e, a, p, n, valid, 1.0),
      lambda e: losses.angular_loss(e, a, p, n, valid, 40.0, smooth=True),
      lambda e: losses.multi_similarity_loss(e, labels),
      lambda e: losses.ntxent_loss(e[:5], e[5:], 0.5),
      lambda e: losses.cmsc_loss(e[:5], e[5:], 0.5),
  ]
  # All six as one vector-valued function: one compile; the random cotangent weighs each loss.
  check_grads(jax.jit(lambda e: jnp.stack([fn(e) for fn in fns])), (jnp.asarray(emb),), order=1,
              modes=("rev",), atol=1e-2, rtol=1e-2)


def test_no_valid_tuple_gives_zero_loss_and_zero_gradient(problem):
  emb, a, _, _, _ = problem
  none = np.zeros(N, bool)
  fns = [
      lambda e: losses.triplet_loss(e, a, a, a, none, squared=False),
      lambda e: losses.triplet_loss(e, a, a, a, none, distance="cosine"),
      lambda e: losses.margin_loss(e, a, a, a, none, 1.2),
      lambda e: losses.angular_loss(e, a, a, a, none),
      lambda e: losses.multi_similarity_loss(e, np.zeros(N), valid_labels=none),
      lambda e: losses.ntxent_loss(e[:5], e[5:], mask=none[:5]),
      lambda e: losses.cmsc_loss(e[:5], e[5:], mask=none[:5]),
  ]
  zero_row = jnp.asarray(emb).at[0].set(0.0)  # A zero embedding must not make NaN either.
  results = jax.jit(lambda e: [jax.value_and_grad(fn)(e) for fn in fns])(zero_row)
  for value, grad in results:
    assert value == 0.0
    np.testing.assert_array_equal(grad, np.zeros_like(emb))


def test_distances_have_finite_gradients_at_zero():
  x = jnp.array([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0]])
  @jax.jit
  def grads(x):
    return [jax.grad(lambda x: fn(x).sum())(x) for name in distances.NAMES
            for fn in (distances.get(name), lambda x: distances.get_paired(name)(x, x[::-1]))]

  for name, grad in zip(np.repeat(distances.NAMES, 2), grads(x)):
    assert np.isfinite(grad).all(), name
  y = np.random.default_rng(0).normal(size=(3, 2))
  brute = np.linalg.norm(np.asarray(x)[:, None] - y[None], axis=-1)
  np.testing.assert_allclose(distances.euclidean(x, y), brute, rtol=1e-5)
  with pytest.raises(ValueError, match="config.mining.embedding_distance"):
    distances.get("manhattan")


def test_new_values_do_not_recompile(problem):
  emb, a, p, n, valid = problem

  @jax.jit
  @chex.assert_max_traces(n=1)
  def loss(e, a, p, n, valid):
    return losses.triplet_loss(e, a, p, n, valid)

  for shift in range(3):
    loss(emb + shift, (a + shift) % N, p, n, valid)
