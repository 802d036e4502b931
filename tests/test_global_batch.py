"""8 devices x 3 examples mine and learn exactly like one device with the 24 concatenated.

A tiny linear encoder ``emb = x @ W``; every miner and loss runs under ``pmap`` with the global
batch gathered across the 8 fake CPU devices, and again on one device with ``axis_name=None``.
The mean of the per-device losses, the pmean of the parameter gradients and the mined triplets
must equal the single-device ones; each device's gradient w.r.t. its local embeddings is
``n_devices`` times its rows of the single-device gradient (see ssldml_jax/losses.py).
"""

import jax
import numpy as np
import pytest

from ssldml_jax import distances, losses, parallel

B_LOCAL, D_IN, D = 3, 6, 4
COMBOS = {  # name: global_triplet_loss keywords
    "ssl_dml_random_negative": dict(miner="distance", loss="triplet", distance="euclidean"),
    "ssl_dml_top2_angular": dict(miner="distance", loss="angular", neg_topk=2),
    "label_margin": dict(miner="label", loss="margin"),
    "class_triplet_squared": dict(miner="class", loss="triplet", distance="squared_euclidean"),
    "batch_hard_cosine": dict(miner="batch_hard", loss="triplet", distance="cosine"),
    "semihard": dict(miner="semihard", loss="triplet", margin=0.5, normalize=False),
}


def _all_losses(params, x, x2, rows, reg_labels, cls_labels, ids, key, axis_name):
  """Every loss for one device's data (or all data when axis_name is None)."""
  out = {}
  for name, kw in COMBOS.items():
    labels = reg_labels if kw["miner"] == "label" else cls_labels

    def from_emb(emb, beta):
      return losses.global_triplet_loss(emb, key, raw_dist_rows=rows, labels=labels, beta=beta,
                                        axis_name=axis_name, **kw)

    def from_params(p):
      return from_emb(x @ p["W"], p["beta"])

    (value, t), grads = jax.value_and_grad(from_params, has_aux=True)(params)
    emb_grad = jax.grad(lambda e: from_emb(e, params["beta"])[0])(x @ params["W"])
    out[name] = (value, parallel.pmean(grads, axis_name), emb_grad, t)

  views = {
      "ntxent": lambda p: losses.ntxent_loss(x @ p["W"], x2 @ p["W"], 0.5, axis_name=axis_name),
      "cmsc": lambda p: losses.cmsc_loss(x @ p["W"], x2 @ p["W"], 0.5, patient_ids=ids,
                                         axis_name=axis_name),
      "multi_similarity": lambda p: losses.multi_similarity_loss(
          parallel.gather_global(x @ p["W"], axis_name), parallel.gather_global(cls_labels,
                                                                                axis_name),
          offset=parallel.global_offset(B_LOCAL, axis_name), num_anchors=x.shape[0],
          axis_name=axis_name),
  }
  for name, fn in views.items():
    value, grads = jax.value_and_grad(fn)(params)
    out[name] = (value, parallel.pmean(grads, axis_name), None, None)
  return out


def _run_both():
  n_dev = jax.local_device_count()
  assert n_dev == 8, "tests/conftest.py should provide 8 fake CPU devices"
  n = n_dev * B_LOCAL
  rng = np.random.default_rng(0)
  x, x2 = (rng.normal(size=(n, D_IN)).astype(np.float32) for _ in range(2))
  raw = rng.normal(size=(n, 5)).astype(np.float32)
  raw_dist = np.asarray(distances.euclidean(raw))
  reg_labels = rng.normal(16.0, 8.0, n).astype(np.float32)
  cls_labels = (reg_labels > 18.0).astype(np.int32)
  ids = rng.integers(0, n // 2, n)  # Some patients have several ECGs.
  params = {"W": rng.normal(size=(D_IN, D)).astype(np.float32),
            "beta": np.float32(1.0)}
  key = jax.random.key(42)
  data = (x, x2, raw_dist, reg_labels, cls_labels, ids)

  single = jax.jit(lambda p, *d: _all_losses(p, *d, key, None))(params, *data)
  split = [np.reshape(a, (n_dev, B_LOCAL) + a.shape[1:]) for a in data]
  mapped = jax.pmap(lambda p, *d: _all_losses(p, *d, key, parallel.AXIS),
                    axis_name=parallel.AXIS, in_axes=(None,) + (0,) * len(data))(params, *split)
  return single, mapped, n_dev


@pytest.mark.slow
def test_pmapped_losses_and_grads_equal_single_device():
  # One test, one compile of all the losses (a module fixture would run once per xdist worker).
  single, mapped, n_dev = _run_both()
  assert set(single) == set(COMBOS) | {"ntxent", "cmsc", "multi_similarity"}
  for name in single:
    value, grads, emb_grad, triplets = single[name]
    m_value, m_grads, m_emb_grad, m_triplets = mapped[name]
    assert float(value) > 0.0, name
    np.testing.assert_allclose(np.mean(m_value), value, rtol=1e-5, err_msg=name)
    assert np.abs(grads["W"]).max() > 0.0, name
    if name == "label_margin":
      assert grads["beta"] != 0.0
    for g, m_g in zip(jax.tree.leaves(grads), jax.tree.leaves(m_grads)):
      for device in range(n_dev):  # pmean leaves every device with the same gradient.
        np.testing.assert_allclose(m_g[device], g, rtol=1e-4, atol=1e-6, err_msg=name)
    if triplets is None:
      continue
    assert int(np.sum(triplets.valid)) > 0, name
    for full, per_device in zip(triplets, m_triplets):
      np.testing.assert_array_equal(np.concatenate(list(per_device)), full, err_msg=name)
    np.testing.assert_allclose(np.concatenate(list(m_emb_grad)), n_dev * np.asarray(emb_grad),
                               rtol=1e-4, atol=1e-6, err_msg=name)
