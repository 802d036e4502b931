"""Fitting the heads of a probe: every (head, target, label subset, seed) of ``config.probe``.

- Heads: ``linear`` (logistic regression for a binary target, ridge for regression, one logistic
  probe per label for multi-label, softmax regression for multi-class; L2 strength on
  validation; ``linear_probe``), ``mlp`` (``mlp_probe``), ``finetune`` (``finetune``, on the
  raw ECGs).
- Targets: ``targets.Target`` s (by default those of ``config.probe.targets``; a probe passes
  them resolved against its dataset). A ``Fit`` names its target; it keeps the fitted head
  (``model``) for ``saved_probes``.
- Subsets: ``subsets.subset_names`` of the head, drawn anew for every seed; a seed also seeds
  the initialisation of the MLP and fine-tuned heads. At 100% the linear probe is deterministic,
  so it is fit once and that fit stands for every seed (the same ``Fit`` arrays).
- Validation: model selection of a label-limited subset sees only ``subsets.validation_rows``
  (``probe.limited_validation``); ``Fit.n_validation`` records how many ECGs.
- Labels of every split come from ``targets.values``. A subset on which a head cannot be fit
  (one class only, say) is left out with a message; the whole training split failing is a
  config error.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import ml_collections
import numpy as np

from ssldml_jax import cli
from ssldml_jax.eval import linear_probe, subsets, targets


@dataclasses.dataclass
class Fit:
  """One trained head: its test scores (probabilities or mmHg; (n, K) for a multi-label or
  multi-class target) and validation threshold (one per label for multi-label)."""
  head: str
  target: str                       # the target's name
  fraction: str
  seed: int
  n_train: int
  test_scores: np.ndarray
  val_scores: np.ndarray
  threshold: Any
  info: dict                        # chosen L2 strength, best step ...
  model: Any = None                 # the fitted head: linear_probe.ProbeResult or HeadResult
  n_validation: int = 0             # validation ECGs model selection saw
  pretrain_seed: int = 0            # the seed the encoder was pretrained (or initialised) with


def fit_head(head: str, target: targets.Target, seed: int, x_tr, y_tr, x_va, y_va, x_te, *,
             config: ml_collections.ConfigDict, finetune_data=None) -> tuple[Any, dict]:
  """(result with ``val_scores`` / ``test_scores`` / ``threshold``, what to record of the fit).

  ``x_*`` are embeddings and ``y_*`` labels (``targets.values``); ``finetune_data`` is
  ``(encoder, train, val, test)`` with raw-ECG splits for ``head='finetune'``.
  """
  from ssldml_jax.eval import finetune as finetune_lib, mlp_probe  # JAX only when needed.

  p = config.probe
  if head == "linear":
    if target.kind == "binary":
      res = linear_probe.logistic_probe(x_tr, y_tr, x_va, y_va, x_te,
                                        threshold_criterion=p.threshold_criterion)
    elif target.kind == "regression":
      res = linear_probe.ridge_probe(x_tr, y_tr, x_va, y_va, x_te)
    elif target.kind == "multilabel":
      res = linear_probe.multilabel_probe(x_tr, y_tr, x_va, y_va, x_te, labels=target.classes,
                                          threshold_criterion=p.threshold_criterion)
    else:
      res = linear_probe.multiclass_probe(x_tr, y_tr, x_va, y_va, x_te, classes=target.classes)
    for note in res.notes:
      print(f"probe: linear {target.name}: {note}", flush=True)
    hyper = list(res.hyper) if isinstance(res.hyper, tuple) else res.hyper
    return res, {res.hyper_name: hyper}
  if head == "mlp":
    res = mlp_probe.train_mlp_probe(x_tr, y_tr, x_va, y_va, x_te, task=target.kind, seed=seed,
                                    settings=mlp_probe.MLPSettings.from_config(p.mlp),
                                    threshold_criterion=p.threshold_criterion,
                                    width=target.width)
  else:
    encoder, train, val, test = finetune_data
    res = finetune_lib.finetune(encoder, train, val, test, task=target, seed=seed,
                                settings=finetune_lib.FinetuneSettings.from_config(p.finetune),
                                threshold_criterion=p.threshold_criterion)
  # The state at the end of training is not needed once the best one is kept.
  return dataclasses.replace(res, final_variables=None), {"best_step": res.best_step,
                                                           "steps": res.steps_run}


def _check_same_ecgs(raw: Mapping[str, dict], emb: Mapping[str, dict]) -> None:
  for name in ("train", "validation", "test"):
    if not np.array_equal(raw[name]["ecg_id"], emb[name]["ecg_id"]):
      raise RuntimeError(f"probe: the {name} ECGs read for fine-tuning differ from the "
                         "embedded ones (the dataset changed?); delete the embeddings cache")


def fit_all(config: ml_collections.ConfigDict, emb: Mapping[str, dict],
            finetune_splits: Optional[Callable[[], tuple]] = None,
            log: Callable[[str], None] = print,
            probe_targets: Optional[Sequence[targets.Target]] = None) -> list[Fit]:
  """Every (head, target, label subset, seed) of the config on the embedded splits.

  ``emb``: 'train', 'validation', 'test' arrays with ``embedding`` and labels (rows with known
  labels only, ``subsets.labeled``). ``finetune_splits()``: ``(encoder, train, validation,
  test)`` with the raw ECGs of the same rows, called once if ``finetune`` is a head.
  ``probe_targets``: resolved targets (default: ``targets.from_config(config)``).
  """
  p = config.probe
  train, val, test = emb["train"], emb["validation"], emb["test"]
  probe_targets = list(probe_targets or targets.from_config(config))
  if p.limited_n is not None and p.limited_n > len(train["patient_id"]):
    log(f"probe: the n={p.limited_n} setting is left out: the training split has only "
        f"{len(train['patient_id'])} labeled ECGs")
  drawn: dict[int, dict] = {}

  def subsets_of(seed: int) -> dict[str, np.ndarray]:
    if seed not in drawn:
      drawn[seed] = subsets.draw_subsets(config, train["patient_id"], seed)
    return drawn[seed]

  fits = []
  for head in p.heads:
    seeds = tuple(p.finetune.seeds) if head == "finetune" else tuple(p.seeds)
    if head == "finetune":
      encoder, train_raw, val_raw, test_raw = finetune_splits()
      _check_same_ecgs({"train": train_raw, "validation": val_raw, "test": test_raw}, emb)
    for target in probe_targets:
      y_train = targets.values(train, target)
      y_val = targets.values(val, target)
      start = time.perf_counter()
      count = 0
      for fraction in subsets.subset_names(config, head):
        for seed in seeds:
          idx = subsets_of(seed).get(fraction)
          if idx is None:  # the n=limited_n setting, left out above
            continue
          if head == "linear" and fraction == subsets.FULL and seed != seeds[0]:
            # Deterministic fit on the same rows: the first seed's stands for every seed.
            first = next(f for f in fits
                         if (f.head, f.target, f.fraction) == (head, target.name, subsets.FULL))
            fits.append(dataclasses.replace(first, seed=seed))
            continue
          vdx = subsets.validation_rows(config, val["patient_id"], train["patient_id"], idx, seed)
          ft_data = None
          if head == "finetune":
            ft_data = (encoder, {k: v[idx] for k, v in train_raw.items()},
                       {k: v[vdx] for k, v in val_raw.items()}, test_raw)
          try:
            res, info = fit_head(head, target, seed, train["embedding"][idx], y_train[idx],
                                 val["embedding"][vdx], y_val[vdx], test["embedding"],
                                 config=config, finetune_data=ft_data)
          except ValueError as e:
            if fraction == subsets.FULL:  # the whole training split is unusable: say why, stop
              raise cli.ConfigError(f"probe {head} {target.name} on the whole training split: "
                                    f"{e}") from None
            log(f"probe: {head} {target.name} {fraction} seed {seed} left out: {e}")
            continue
          count += 1
          fits.append(Fit(head=head, target=target.name, fraction=fraction, seed=seed,
                          n_train=int(len(idx)), test_scores=np.asarray(res.test_scores),
                          val_scores=np.asarray(res.val_scores), threshold=res.threshold,
                          info=info, model=res, n_validation=int(len(vdx))))
      log(f"probe: {head} {target.name}: {count} fit(s) in "
          f"{time.perf_counter() - start:.1f} s")
  return fits
