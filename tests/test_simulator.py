"""The synthetic cohort: determinism, lead physics, the conditions' criteria measured from the
signal, prevalences, cohort statistics and a learnable, hard label.

The measurements below read only the rendered 12 leads (the way an ECG reader does: beat
detection, median beat, spatial-velocity QRS limits, P-wave onset, Q waves, voltages); they
share no code with the simulator, so a condition that is not drawn the way its criterion says
fails its test.
"""

import functools
import os

import numpy as np
import pytest
import scipy.signal
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from ssldml_jax.data import conditions, plot_ecg, records, simulator

RATE = 250
LEAD = {name: i for i, name in enumerate(records.LEADS)}
INDEPENDENT = [LEAD[n] for n in ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")]
LIMB = [LEAD[n] for n in ("I", "II", "III", "aVR", "aVL", "aVF")]


def _collect(chunks):
  chunks = list(chunks)
  return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


# ---- Measurements from the signal ------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _butter(rate, lo_hz, hi_hz):
  """Second-order Butterworth (b, a): band-pass, or low-pass when ``lo_hz`` is 0."""
  hi = min(hi_hz, 0.45 * rate) / (rate / 2)
  if not lo_hz:
    return scipy.signal.butter(2, hi)
  return scipy.signal.butter(2, [lo_hz / (rate / 2), hi], btype="band")


def _velocity(ecg, rate, lo_hz, hi_hz, smooth_s):
  """Smoothed spatial velocity (mV/sample) of the band-passed independent leads."""
  x = scipy.signal.filtfilt(*_butter(rate, lo_hz, hi_hz), ecg[:, INDEPENDENT], axis=0)
  v = np.sqrt(np.sum(np.diff(x, axis=0) ** 2, axis=1))
  width = max(1, int(smooth_s * rate))
  return np.convolve(v, np.ones(width) / width, mode="same")


def _beats(ecg, rate):
  """Beat fiducials: peaks of the 5-30 Hz spatial velocity, then a search in long gaps for a
  slow, wide beat in the 1-15 Hz band (Pan and Tompkins' search-back)."""
  v = _velocity(ecg, rate, 5.0, 30.0, 0.08)
  peaks, _ = scipy.signal.find_peaks(v, height=0.3 * np.percentile(v, 99),
                                     distance=int(0.25 * rate))
  if len(peaks) < 3:
    return peaks
  slow = _velocity(ecg, rate, 1.0, 15.0, 0.08)
  typical, rr = np.median(slow[peaks]), np.median(np.diff(peaks))
  found = []
  for a, b in zip(np.concatenate([[-int(0.25 * rate)], peaks[:-1]]), peaks):
    lo, hi = max(a, 0) + int(0.25 * rate), b - int(0.25 * rate)
    if b - a > 1.3 * rr and hi > lo:
      k = lo + int(np.argmax(slow[lo:hi]))
      if slow[k] > 0.4 * typical:
        found.append(k)
  return np.sort(np.concatenate([peaks, np.array(found, int)]))


def _qrs_limits(beat, rate, fid):
  """QRS onset and end in a median beat: where the 40 Hz low-passed spatial velocity stays
  above 12% of its peak, bridging notches shorter than 30 ms."""
  x = scipy.signal.filtfilt(*_butter(rate, 0.0, 40.0), beat[:, INDEPENDENT], axis=0)
  sv = np.sqrt(np.sum(np.diff(x, axis=0) ** 2, axis=1))
  peak = fid - int(0.15 * rate) + int(np.argmax(sv[fid - int(0.15 * rate):fid + int(0.15 * rate)]))
  above = sv > 0.12 * sv[peak]
  gap = int(0.03 * rate)
  first, last = fid - int(0.15 * rate), fid + int(0.25 * rate)   # no QRS is longer
  onset = end = peak
  while onset > first and above[max(onset - gap, 0):onset].any():
    onset -= 1
  while end < last and above[end + 1:end + 1 + gap].any():
    end += 1
  return onset, end + 1


def measure(ecg, rate=RATE):
  """Reads one (T, 12) ECG: rate and rhythm, median-beat intervals, voltages, Q waves, ST-T,
  premature beats. Every value comes from the signal alone."""
  peaks = _beats(ecg, rate)
  rr = np.diff(peaks) / rate
  median_rr = np.median(rr)
  early = np.concatenate([[False], rr < 0.85 * median_rr])
  off_rhythm = np.abs(np.concatenate([rr[:1], rr]) - median_rr) > 0.15 * median_rr
  before, after = int(0.5 * rate), int(0.6 * rate)
  keep = ~early & (peaks >= before) & (peaks < len(ecg) - after)
  beat = np.median(np.stack([ecg[p - before:p + after] for p in peaks[keep]]), axis=0)
  onset, end = _qrs_limits(beat, rate, before)
  beat = beat - beat[max(onset - int(0.02 * rate), 0):onset + 1].mean(axis=0)
  qrs = beat[onset:end]
  r, s = np.maximum(qrs.max(axis=0), 0.0), np.maximum(-qrs.min(axis=0), 0.0)
  out = {"hr": 60.0 / median_rr, "rr": rr, "peaks": peaks,
         "irregularity": np.median(np.abs(np.diff(rr))) / median_rr,
         "qrs_ms": 1000.0 * (end - onset) / rate, "r": r, "s": s,
         "net": qrs.sum(axis=0) / rate, "terminal": qrs[-int(0.04 * rate):].mean(axis=0),
         "st_t": beat[end + int(0.06 * rate):end + int(0.3 * rate)].mean(axis=0),
         "sokolow_lyon": s[LEAD["V1"]] + max(r[LEAD["V5"]], r[LEAD["V6"]]),
         "limb_qrs": (qrs[:, LIMB].max(axis=0) - qrs[:, LIMB].min(axis=0)).max()}
  # Q waves: the initial deflection while it stays below the baseline.
  positive = qrs > 0.02
  first = np.where(positive.any(axis=0), positive.argmax(axis=0), len(qrs))
  out["q_ms"] = 1000.0 * first / rate
  out["q_mv"] = np.array([-min(qrs[:f, i].min(initial=0.0), 0.0) for i, f in enumerate(first)])
  # P wave: the largest deviation from the line between 360 ms (or the end of the previous
  # T wave, about 420 ms after the previous beat) and 30 ms before the QRS; its onset is where
  # that deviation falls below a quarter of its peak.
  lo = onset - int(max(min(0.36, median_rr - 0.42), 0.15) * rate)
  hi = onset - int(0.03 * rate)
  seg = beat[lo:hi + 1][:, INDEPENDENT]
  seg = seg - (np.linspace(0.0, 1.0, len(seg))[:, None] * (seg[-1] - seg[0]) + seg[0])
  size = np.sqrt(np.sum(seg ** 2, axis=1))
  p_on = top = int(np.argmax(size))
  while p_on > 0 and size[p_on - 1] > 0.25 * size[top]:
    p_on -= 1
  out["pr_ms"] = 1000.0 * (onset - lo - p_on) / rate
  # Premature beats: a beat out of rhythm whose QRS differs from the median beat is
  # ventricular; an early one shaped like it is atrial.
  a, b = int(0.06 * rate), int(0.1 * rate)
  def centred(x):
    x = x - x.mean(axis=-1, keepdims=True)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)
  dominant = centred(beat[before - a:before + b][:, INDEPENDENT].ravel())
  inside = (peaks >= a) & (peaks + b <= len(ecg))
  shapes = np.stack([ecg[p - a:p + b][:, INDEPENDENT].ravel() for p in peaks[inside]])
  similar = np.ones(len(peaks), bool)
  similar[inside] = centred(shapes) @ dominant >= 0.8
  out["kinds"] = np.where(~similar & off_rhythm & inside, "pvc",
                          np.where(similar & early & inside, "pac", ""))
  out["pvc_count"] = int(np.sum(out["kinds"] == "pvc"))
  out["pac_count"] = int(np.sum(out["kinds"] == "pac"))
  return out


def _q_wave(m, lead):
  """Pathological Q (fourth universal definition of MI): >= 30 ms and >= 0.1 mV deep."""
  return m["q_ms"][LEAD[lead]] >= 30.0 and m["q_mv"][LEAD[lead]] >= 0.1


def _simulate(name, n, seed):
  """n 10-s ECGs at 250 Hz of random patients with only ``name`` ('' for none)."""
  rng = np.random.default_rng(seed)
  ecg, truth = simulator.simulate_ecgs(
      rng, n, pcwp=rng.uniform(6, 35, n), age=rng.uniform(30, 85, n), sex=rng.integers(0, 2, n),
      conditions_present=[(name,) if name else ()] * n)
  return ecg, truth, [measure(e) for e in ecg]


@pytest.fixture(scope="module")
def by_condition():
  """40 ECGs per condition and 80 without any, each measured."""
  out = {"": _simulate("", 80, 100)}
  for c, name in enumerate(conditions.CONDITIONS):
    out[name] = _simulate(name, 40, 101 + c)
  return out


# ---- Cohort -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cohort():
  """Labels, ids and conditions of ~7,500 ECGs; 1 s at 50 Hz, only the cohort statistics
  matter here."""
  chunks = simulator.generate("train", 3000, seed=0, sampling_rate=50, duration_s=1.0,
                              chunk_size=2048)
  return _collect({k: v for k, v in c.items() if k != "ecg"} for c in chunks)


@pytest.fixture(scope="module")
def small():
  return _collect(simulator.generate("train", 6, seed=11, chunk_size=5))


def test_shapes_dtypes_and_ranges(small):
  n = len(small["ecg_id"])
  assert small["ecg"].shape == (n, 2500, 12) and small["ecg"].dtype == np.float32
  assert small["age"].dtype == np.float32 and small["pcwp"].dtype == np.float32
  assert small["sex"].dtype == np.int32 and small["af"].dtype == bool
  assert small["conditions"].shape == (n, len(simulator.CONDITIONS))
  assert small["conditions"].dtype == bool and small["phenotype"].dtype == np.int32
  assert all(len(v) == n for v in small.values())
  for ecg_id, patient_id, ecg in zip(small["ecg_id"], small["patient_id"], small["ecg"]):
    assert ecg_id.startswith(patient_id + "-e") and patient_id.startswith("train-p")
    assert records.validate_ecg(ecg, expected_length=2500) == []
  assert np.all(np.abs(small["ecg"]) < 8.0)
  assert np.all((small["age"] >= 18) & (small["age"] <= 95))
  assert set(np.unique(small["sex"])) <= {records.SEX_FEMALE, records.SEX_MALE}
  assert np.all((small["pcwp"] >= 2) & (small["pcwp"] <= 50))
  # A QRS of about 1 mV in lead II: the median of the per-ECG 99.5th percentiles.
  assert 0.5 < np.median(np.percentile(small["ecg"][:, :, LEAD["II"]], 99.5, axis=1)) < 2.0


def test_einthoven_and_goldberger_hold(small, by_condition):
  every = np.concatenate([small["ecg"]] + [v[0][:4] for v in by_condition.values()])
  e = every.astype(np.float64)
  lead_i, lead_ii = e[..., LEAD["I"]], e[..., LEAD["II"]]
  np.testing.assert_allclose(e[..., LEAD["III"]], lead_ii - lead_i, atol=1e-6)
  np.testing.assert_allclose(e[..., LEAD["aVR"]], -(lead_i + lead_ii) / 2, atol=1e-6)
  np.testing.assert_allclose(e[..., LEAD["aVL"]], lead_i - lead_ii / 2, atol=1e-6)
  np.testing.assert_allclose(e[..., LEAD["aVF"]], lead_ii - lead_i / 2, atol=1e-6)
  # Consequences a cardiologist checks: I + III = II, aVR + aVL + aVF = 0.
  np.testing.assert_allclose(e[..., LEAD["aVR"]] + e[..., LEAD["aVL"]] + e[..., LEAD["aVF"]], 0.0,
                             atol=1e-6)


def test_deterministic_and_independent_of_chunk_size(small):
  again = _collect(simulator.generate("train", 6, seed=11, chunk_size=64))
  for k in small:
    np.testing.assert_array_equal(again[k], small[k], err_msg=k)
  unlabeled = _collect(simulator.generate("train", 6, seed=11, labeled=False))
  np.testing.assert_array_equal(unlabeled["ecg"], small["ecg"])
  assert np.all(np.isnan(unlabeled["pcwp"]))
  other_seed = next(simulator.generate("train", 2, seed=12))
  other_split = next(simulator.generate("test", 2, seed=11))
  for other in (other_seed, other_split):
    m = min(len(other["ecg"]), len(small["ecg"]))
    assert not np.allclose(other["ecg"][:m], small["ecg"][:m])
  assert not set(other_split["patient_id"]) & set(small["patient_id"])
  # The same with every kind of beat and condition in the chunks (100 Hz keeps it cheap).
  kwargs = dict(seed=3, sampling_rate=100, ecgs_per_patient=(1, 2))
  one = _collect(simulator.generate("validation", 150, chunk_size=7, **kwargs))
  two = _collect(simulator.generate("validation", 150, chunk_size=500, **kwargs))
  assert one["conditions"].any(axis=0).all()
  for k in one:
    np.testing.assert_array_equal(one[k], two[k], err_msg=k)


def test_simulate_ecgs_is_reproducible_and_its_truth_is_the_signal():
  kwargs = dict(pcwp=[8.0, 30.0, 14.0, 20.0, 12.0, 25.0], age=[40.0, 80.0, 55.0, 66.0, 70.0, 62.0],
                sex=[0, 1, 1, 0, 1, 0], conditions_present=[
                    (), ("lbbb", "pvc"), ("lvh_strain", "av_block_1"), ("rbbb", "pac"),
                    ("low_voltage",), ("anterior_mi", "inferior_mi")])
  a, truth = simulator.simulate_ecgs(np.random.default_rng(3), 6, **kwargs)
  b, _ = simulator.simulate_ecgs(np.random.default_rng(3), 6, **kwargs)
  c, _ = simulator.simulate_ecgs(np.random.default_rng(4), 6, **kwargs)
  assert a.shape == (6, 2500, 12) and a.dtype == np.float32
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  assert set(truth) == set(simulator.TRUTH_KEYS)
  expected = conditions.from_names(kwargs["conditions_present"], 6)
  np.testing.assert_array_equal(truth["conditions"], expected)
  m = [measure(e) for e in a]
  for i, mi in enumerate(m):
    assert abs(mi["hr"] - truth["heart_rate_bpm"][i]) < 0.08 * truth["heart_rate_bpm"][i], i
    assert abs(mi["qrs_ms"] - truth["qrs_duration_ms"][i]) < 25.0, i
    assert abs(mi["pr_ms"] - truth["pr_interval_ms"][i]) < 30.0, i
    assert abs(mi["sokolow_lyon"] - truth["sokolow_lyon_mv"][i]) < 0.1 * truth["sokolow_lyon_mv"][i]
    assert abs(mi["limb_qrs"] - truth["limb_qrs_mv"][i]) < 0.1 * truth["limb_qrs_mv"][i], i
    assert mi["pvc_count"] == truth["pvc_count"][i] and mi["pac_count"] == truth["pac_count"][i]
  assert truth["pvc_count"][[0, 2, 3, 4, 5]].sum() == truth["pac_count"][[0, 1, 2, 4, 5]].sum() == 0


def test_pcwp_distribution_like_a_cath_cohort(cohort):
  pcwp = cohort["pcwp"].astype(np.float64)
  assert len(pcwp) > 7000
  assert abs(pcwp.mean() - 16.0) < 1.0
  assert abs(pcwp.std() - 8.0) < 1.0
  assert abs(np.mean(pcwp > 18.0) - 0.31) < 0.03
  assert 0.5 < np.mean(cohort["sex"] == records.SEX_MALE) < 0.6
  assert 58 < cohort["age"].mean() < 65


def test_patients_have_several_ecgs_and_unique_ids(cohort):
  assert len(np.unique(cohort["ecg_id"])) == len(cohort["ecg_id"])
  _, counts = np.unique(cohort["patient_id"], return_counts=True)
  assert counts.min() >= 1 and counts.max() == 4 and 2.0 < counts.mean() < 3.0
  # Age, sex, phenotype and conditions (AF aside, which comes and goes) belong to the patient.
  steady = [i for i, name in enumerate(conditions.CONDITIONS) if name != "af"]
  for key in ("age", "sex", "phenotype"):
    per_patient = {}
    for pid, value in zip(cohort["patient_id"], cohort[key]):
      assert per_patient.setdefault(pid, value) == value
  first = {}
  for pid, row in zip(cohort["patient_id"], cohort["conditions"][:, steady]):
    np.testing.assert_array_equal(first.setdefault(pid, row), row)


def _binomial_close(observed: np.ndarray, p: float, what: str) -> None:
  n = len(observed)
  tolerance = 4.0 * np.sqrt(p * (1 - p) / n) + 1e-3
  assert abs(observed.mean() - p) <= tolerance, (what, observed.mean(), p, n)


def test_phenotypes_conditions_and_mpcwp_follow_the_configuration(cohort):
  first = np.array([e.endswith("-e0") for e in cohort["ecg_id"]])
  phenotype = cohort["phenotype"][first]
  present = conditions.as_dict(cohort["conditions"][first])
  for k, name in enumerate(conditions.PHENOTYPES):
    _binomial_close(phenotype == k, conditions.PHENOTYPE_MIX[k], f"mix {name}")
    mine = phenotype == k
    log_pcwp = np.log(cohort["pcwp"][first][mine])
    assert abs(np.exp(np.median(log_pcwp)) - conditions.PCWP_MEDIAN[k]) < 1.0, name
    assert abs(cohort["age"][first][mine].mean() - conditions.AGE_MEAN[k]) < 2.0, name
    _binomial_close(cohort["sex"][first][mine] == records.SEX_MALE,
                    conditions.MALE_FRACTION[k], f"men {name}")
    for condition in conditions.CONDITIONS:
      eligible = mine.copy()
      for other in conditions.EXCLUDES.get(condition, ()):
        eligible &= ~present[other]
      expected = conditions.PREVALENCE[condition][k]
      if condition == "af":  # ECG-level: the patient's AF shows on most, not all, ECGs
        expected *= conditions.AF_EXPRESSED
      _binomial_close(present[condition][eligible], expected, f"{condition} in {name}")
  # Filling pressure follows the phenotype: no HF < HFpEF < HFrEF.
  medians = [np.median(cohort["pcwp"][cohort["phenotype"] == k]) for k in range(3)]
  assert medians[0] + 3 < medians[1] < medians[2] - 3


def test_conduction_blocks_widen_the_qrs_with_their_morphology(by_condition):
  normal = np.array([m["qrs_ms"] for m in by_condition[""][2]])
  assert np.mean(normal < 120) >= 0.95 and 75 < np.median(normal) < 110
  for name in ("lbbb", "rbbb"):
    _, truth, ms = by_condition[name]
    qrs = np.array([m["qrs_ms"] for m in ms])
    assert np.mean(qrs >= 120) >= 0.95, (name, qrs)
    assert np.corrcoef(qrs, truth["qrs_duration_ms"])[0, 1] > 0.5
  lbbb = by_condition["lbbb"][2]
  # LBBB: deep broad S in V1 (QS or rS), dominant R in V6, ST-T opposite the QRS in V1 and V6.
  assert np.mean([m["s"][LEAD["V1"]] > 2 * m["r"][LEAD["V1"]] for m in lbbb]) >= 0.9
  assert np.mean([m["r"][LEAD["V6"]] > m["s"][LEAD["V6"]] for m in lbbb]) >= 0.8
  for lead in ("V1", "V6"):
    assert np.mean([m["net"][LEAD[lead]] * m["st_t"][LEAD[lead]] < 0 for m in lbbb]) >= 0.8
  rbbb = by_condition["rbbb"][2]
  # RBBB: the last 40 ms point right and forward: R' in V1, broad S in I and V6.
  assert np.mean([m["terminal"][LEAD["V1"]] > 0.05 for m in rbbb]) >= 0.9
  for lead in ("I", "V6"):
    assert np.mean([m["terminal"][LEAD[lead]] < -0.05 for m in rbbb]) >= 0.8
  assert np.mean([m["terminal"][LEAD["V1"]] > 0.05 for m in by_condition[""][2]]) <= 0.1


def test_lvh_meets_voltage_criteria_and_strain_inverts_the_lateral_st_t(by_condition):
  for name in ("lvh", "lvh_strain"):
    voltage = np.array([m["sokolow_lyon"] for m in by_condition[name][2]])
    assert np.mean(voltage >= 3.5) >= 0.95, (name, voltage)
  assert np.mean([m["sokolow_lyon"] >= 3.5 for m in by_condition[""][2]]) <= 0.15
  lateral = [LEAD["V5"], LEAD["V6"]]
  strain = [m["st_t"][lateral].mean() < -0.05 for m in by_condition["lvh_strain"][2]]
  plain = [m["st_t"][lateral].mean() < -0.05 for m in by_condition["lvh"][2]]
  assert np.mean(strain) >= 0.85 and np.mean(plain) <= 0.15


def test_old_infarcts_leave_pathological_q_waves(by_condition):
  def anterior(m):
    return sum(_q_wave(m, lead) for lead in ("V1", "V2", "V3", "V4")) >= 2

  def inferior(m):
    return sum(_q_wave(m, lead) for lead in ("II", "III", "aVF")) >= 2

  assert np.mean([anterior(m) for m in by_condition["anterior_mi"][2]]) >= 0.95
  assert np.mean([inferior(m) for m in by_condition["inferior_mi"][2]]) >= 0.8
  normal = by_condition[""][2]
  assert np.mean([anterior(m) or inferior(m) for m in normal]) <= 0.05
  # Poor R-wave progression: the anterior forces are gone, V3 has almost no R.
  r_v3 = np.array([m["r"][LEAD["V3"]] for m in by_condition["anterior_mi"][2]])
  assert np.median(r_v3) < 0.3 < np.median([m["r"][LEAD["V3"]] for m in normal])


def test_first_degree_av_block_prolongs_pr(by_condition):
  pr = np.array([m["pr_ms"] for m in by_condition["av_block_1"][2]])
  assert np.mean(pr > 200) >= 0.9, pr
  normal = np.array([m["pr_ms"] for m in by_condition[""][2]])
  assert np.mean(normal > 200) <= 0.15
  _, truth, ms = by_condition["av_block_1"]
  assert np.corrcoef(pr, truth["pr_interval_ms"])[0, 1] > 0.8


def test_low_voltage_stays_under_half_a_millivolt_in_every_limb_lead(by_condition):
  low = np.array([m["limb_qrs"] for m in by_condition["low_voltage"][2]])
  assert np.mean(low < 0.5) >= 0.95, low
  assert np.mean([m["limb_qrs"] < 0.5 for m in by_condition[""][2]]) <= 0.05


def test_premature_beats_are_counted_with_their_pauses(by_condition):
  for name in ("pvc", "pac"):
    _, truth, ms = by_condition[name]
    measured = np.array([m[f"{name}_count"] for m in ms])
    assert truth[f"{name}_count"].sum() >= 40                       # frequent: > 1 per ECG
    assert abs(measured.sum() - truth[f"{name}_count"].sum()) <= 0.15 * truth[f"{name}_count"].sum()
    assert np.mean(measured == truth[f"{name}_count"]) >= 0.75
    other = "pac" if name == "pvc" else "pvc"
    assert np.mean([m[f"{other}_count"] for m in ms]) < 0.1
    # The pause: a ventricular beat leaves the sinus node alone, so the beats around it are two
    # cycles apart; an atrial beat resets it, so they are closer.
    spans = []
    for m in ms:
      for i in np.flatnonzero(m["kinds"] == name):
        if 0 < i < len(m["peaks"]) - 1:
          spans.append((m["peaks"][i + 1] - m["peaks"][i - 1]) / RATE / np.median(m["rr"]))
    if name == "pvc":
      assert 1.9 < np.median(spans) < 2.1, np.median(spans)
    else:
      assert np.median(spans) < 1.85, np.median(spans)
  assert sum(m["pvc_count"] + m["pac_count"] for m in by_condition[""][2]) <= 4


def test_heart_rate_and_af_rhythm_measured_from_the_signal(by_condition):
  rng = np.random.default_rng(0)
  n = 120
  ecg, truth = simulator.simulate_ecgs(rng, n, pcwp=rng.uniform(5, 40, n),
                                       age=rng.uniform(20, 90, n), sex=rng.integers(0, 2, n))
  ms = [measure(e) for e in ecg]
  hr = np.array([m["hr"] for m in ms])
  irregularity = np.array([m["irregularity"] for m in ms])
  assert np.median(np.abs(hr - truth["heart_rate_bpm"])) < 3.0
  assert np.corrcoef(hr, truth["heart_rate_bpm"])[0, 1] > 0.9
  assert 10 <= truth["af"].sum() < n // 2
  assert roc_auc_score(truth["af"], irregularity) > 0.9
  af = by_condition["af"]
  assert np.mean(af[1]["af"]) > 0.7          # an AF patient is in AF on most days
  shown = af[1]["af"]
  af_irregularity = np.array([m["irregularity"] for m in af[2]])
  normal_irregularity = np.array([m["irregularity"] for m in by_condition[""][2]])
  assert np.median(af_irregularity[shown]) > 3 * np.median(normal_irregularity)


def test_physiology_follows_pcwp_age_and_sex():
  rng = np.random.default_rng(1)
  n = 3000
  pcwp = np.repeat([8.0, 30.0], n // 2)
  age = rng.uniform(20, 90, n)
  sex = rng.integers(0, 2, n)
  _, t = simulator.simulate_ecgs(rng, n, pcwp=pcwp, age=age, sex=sex, sampling_rate=50,
                                 duration_s=1.0)
  high = pcwp > 18
  assert np.nanmean(t["p_duration_ms"][high]) > np.nanmean(t["p_duration_ms"][~high]) + 8
  assert np.nanmean(t["p_terminal_v1_mv"][high]) < np.nanmean(t["p_terminal_v1_mv"][~high])
  assert t["af"][high].mean() > 1.5 * t["af"][~high].mean()
  assert t["heart_rate_bpm"][high].mean() > t["heart_rate_bpm"][~high].mean()
  assert t["t_amplitude_scale"][high].mean() < t["t_amplitude_scale"][~high].mean()
  # Through the phenotype: heart failure, and with it its conditions, at high pressure.
  assert np.mean(t["phenotype"][high] != 0) > np.mean(t["phenotype"][~high] != 0) + 0.3
  lbbb = t["conditions"][:, conditions.INDEX["lbbb"]]
  assert lbbb[high].mean() > 2 * lbbb[~high].mean()
  female = sex == records.SEX_FEMALE
  assert t["qtc_ms"][female].mean() > t["qtc_ms"][~female].mean() + 5
  assert t["qrs_voltage_scale"][female].mean() < t["qrs_voltage_scale"][~female].mean()
  assert np.corrcoef(age, t["qtc_ms"])[0, 1] > 0.1


@pytest.mark.slow
def test_label_learnable_from_the_signal_but_not_trivially():
  # ~1,000 full ECGs streamed chunk by chunk; only signal-measured features are kept.
  pcwp, patient_id, features = [], [], []
  for chunk in simulator.generate("train", 400, seed=0, chunk_size=256):
    pcwp.append(chunk["pcwp"])
    patient_id.append(chunk["patient_id"])
    for ecg in chunk["ecg"]:
      m = measure(ecg)
      features.append(np.concatenate([[m["hr"], m["irregularity"], m["qrs_ms"], m["pr_ms"],
                                       m["sokolow_lyon"], m["limb_qrs"], m["pvc_count"]],
                                      m["net"], m["st_t"], m["q_ms"]]))
  y = np.concatenate(pcwp) > 18.0
  patient_id = np.concatenate(patient_id)
  x = np.stack(features)
  # Patient-disjoint halves, as every split in the project.
  patients = np.unique(patient_id)
  train = np.isin(patient_id, patients[: len(patients) // 2])
  mean, sd = x[train].mean(0), x[train].std(0) + 1e-9
  model = LogisticRegression(C=0.1, max_iter=2000).fit((x[train] - mean) / sd, y[train])
  auc = roc_auc_score(y[~train], model.predict_proba((x[~train] - mean) / sd)[:, 1])
  assert 0.65 < auc < 0.9, auc
  # The heart rate measured from the signal carries some signal, far from all of it.
  hr_auc = roc_auc_score(y, x[:, 0])
  assert 0.52 < hr_auc < 0.75, hr_auc


def test_bad_arguments_get_one_line_messages():
  with pytest.raises(ValueError, match="split"):
    next(simulator.generate("a-b", 1, seed=0))
  with pytest.raises(ValueError, match="ecgs_per_patient"):
    next(simulator.generate("train", 1, seed=0, ecgs_per_patient=(0, 2)))
  with pytest.raises(ValueError, match="sampling_rate"):
    next(simulator.generate("train", 1, seed=0, sampling_rate=0))
  with pytest.raises(ValueError, match="seed"):
    next(simulator.generate("train", 1, seed=-1))
  with pytest.raises(ValueError, match="pcwp"):
    simulator.simulate_ecgs(np.random.default_rng(0), 1, pcwp=[np.nan], age=[50.0], sex=[1])
  with pytest.raises(ValueError, match="age has 2 values"):
    simulator.simulate_ecgs(np.random.default_rng(0), 1, pcwp=[10.0], age=[50.0, 60.0], sex=[1])
  kwargs = dict(pcwp=[10.0], age=[50.0], sex=[1])
  with pytest.raises(ValueError, match=r"conditions\[0\]: unknown condition 'stemi'; known: lbbb"):
    simulator.simulate_ecgs(np.random.default_rng(0), 1, conditions_present=[("stemi",)], **kwargs)
  with pytest.raises(ValueError, match=r"conditions\[0\]: rbbb cannot be combined with lbbb"):
    simulator.simulate_ecgs(np.random.default_rng(0), 1, conditions_present=[("lbbb", "rbbb")],
                            **kwargs)
  with pytest.raises(ValueError, match="conditions has 2 entries, expected n=1"):
    simulator.simulate_ecgs(np.random.default_rng(0), 1, conditions_present=[(), ()], **kwargs)


def test_plot_12lead_draws_on_ecg_paper(small, tmp_path):
  import matplotlib.image
  path = plot_ecg.plot_12lead(small["ecg"][0], RATE, str(tmp_path / "sub" / "ecg.png"),
                              title="synthetic")
  image = matplotlib.image.imread(path)
  height, width = image.shape[:2]
  # 10 s at 25 mm/s plus the calibration margin, four 30 mm rows plus the title band.
  assert abs(width / height - (10 + 250) / (4 * 30 + 8)) < 0.02
  dark = image[..., :3].max(axis=2) < 0.3
  assert dark.mean() > 0.003                       # the traces are drawn
  assert (image[..., 0] > image[..., 2] + 0.1).mean() > 0.05  # on red-pink grid paper
  with pytest.raises(ValueError, match="ecg.png"):
    plot_ecg.plot_12lead(np.zeros((100, 3)), RATE, str(tmp_path / "ecg.png"))
  assert os.path.getsize(path) > 10_000
  assert os.listdir(tmp_path / "sub") == ["ecg.png"]  # no temporary file left behind


def test_plot_conditions_draws_one_titled_page_per_condition(tmp_path, monkeypatch, capsys):
  drawn = []

  def record(ecg, rate, path, title=None):
    drawn.append((np.asarray(ecg), rate, path, title))
    return path

  monkeypatch.setattr(plot_ecg, "plot_12lead", record)
  paths = plot_ecg.plot_conditions(str(tmp_path), seed=0)
  names = ("normal",) + simulator.CONDITIONS
  assert paths == [str(tmp_path / f"{i:02d}_{name}.png") for i, name in enumerate(names)]
  for (ecg, rate, _, title), name in zip(drawn, names):
    assert ecg.shape == (2500, 12) and rate == RATE
    assert title.startswith(conditions.TITLES.get(name, "No condition")), title
  # Each page shows its condition, as the signal says.
  page = {name: measure(ecg) for (ecg, *_), name in zip(drawn, names)}
  assert page["lbbb"]["qrs_ms"] >= 120 and page["normal"]["qrs_ms"] < 120
  assert page["pvc"]["pvc_count"] >= 2 and page["pac"]["pac_count"] >= 1
  assert page["lvh"]["sokolow_lyon"] >= 3.5 and page["low_voltage"]["limb_qrs"] < 0.5
  assert plot_ecg.main([f"--out_dir={tmp_path}"]) == 0
  assert capsys.readouterr().out.split() == paths
  assert plot_ecg.main([f"--out_dir={tmp_path}", "--sampling_rate=10"]) == 2
  assert capsys.readouterr().err.strip() == "error: --sampling_rate=10 must be at least 50 Hz"
