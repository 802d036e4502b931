"""The synthetic cohort: determinism, lead physics, cohort statistics, a learnable, hard label."""

import os

import numpy as np
import pytest
import scipy.signal
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from ssldml_jax.data import plot_ecg, records, simulator

RATE = 250
LEAD = {name: i for i, name in enumerate(records.LEADS)}


def _collect(chunks):
  chunks = list(chunks)
  return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def _r_peaks(ecg: np.ndarray, rate: float) -> np.ndarray:
  """R peaks of one (T, 12) ECG: maxima of the smoothed slope energy summed over the leads."""
  energy = np.sum(np.diff(ecg, axis=0) ** 2, axis=1)
  width = max(1, int(0.04 * rate))
  energy = np.convolve(energy, np.ones(width) / width, mode="same")
  peaks, _ = scipy.signal.find_peaks(energy, height=0.25 * np.percentile(energy, 99),
                                     distance=int(0.3 * rate))
  return peaks


def _measured_features(ecg: np.ndarray, rate: float):
  """Heart rate, RR irregularity and the median beat of II and V1 (a P/QRS/T template)."""
  peaks = _r_peaks(ecg, rate)
  rr = np.diff(peaks) / rate
  before, after = int(0.3 * rate), int(0.45 * rate)
  inner = peaks[(peaks >= before) & (peaks < len(ecg) - after)]
  beats = np.stack([ecg[p - before:p + after][:, [LEAD["II"], LEAD["V1"]]] for p in inner])
  template = np.median(beats, axis=0)
  template = template - template[: int(0.04 * rate)].mean(axis=0)
  irregularity = np.median(np.abs(np.diff(rr))) / np.median(rr)
  return 60.0 / np.median(rr), irregularity, template[::5].ravel()


@pytest.fixture(scope="module")
def cohort():
  """Labels and ids of ~3,700 ECGs; 1 s at 50 Hz, since only the cohort statistics matter here."""
  chunks = simulator.generate("train", 1500, seed=0, sampling_rate=50, duration_s=1.0,
                              chunk_size=1024)
  return _collect({k: v for k, v in c.items() if k != "ecg"} for c in chunks)


@pytest.fixture(scope="module")
def small():
  return _collect(simulator.generate("train", 6, seed=11, chunk_size=5))


def test_shapes_dtypes_and_ranges(small):
  n = len(small["ecg_id"])
  assert small["ecg"].shape == (n, 2500, 12) and small["ecg"].dtype == np.float32
  assert small["age"].dtype == np.float32 and small["pcwp"].dtype == np.float32
  assert small["sex"].dtype == np.int32 and small["af"].dtype == bool
  assert all(len(v) == n for v in small.values())
  for ecg_id, patient_id, ecg in zip(small["ecg_id"], small["patient_id"], small["ecg"]):
    assert ecg_id.startswith(patient_id + "-e") and patient_id.startswith("train-p")
    assert records.validate_ecg(ecg, expected_length=2500) == []
  assert np.all(np.abs(small["ecg"]) < 6.0)
  assert np.all((small["age"] >= 18) & (small["age"] <= 95))
  assert set(np.unique(small["sex"])) <= {records.SEX_FEMALE, records.SEX_MALE}
  assert np.all((small["pcwp"] >= 2) & (small["pcwp"] <= 50))
  # A QRS of about 1 mV in lead II: the median of the per-ECG 99th percentiles.
  assert 0.5 < np.median(np.percentile(small["ecg"][:, :, LEAD["II"]], 99.5, axis=1)) < 2.0


def test_einthoven_and_goldberger_hold(small):
  e = small["ecg"].astype(np.float64)
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


def test_simulate_ecgs_is_reproducible_and_reports_truth():
  kwargs = dict(pcwp=[8.0, 30.0], age=[40.0, 80.0], sex=[0, 1], sampling_rate=100, duration_s=5.0)
  a, truth = simulator.simulate_ecgs(np.random.default_rng(3), 2, **kwargs)
  b, _ = simulator.simulate_ecgs(np.random.default_rng(3), 2, **kwargs)
  c, _ = simulator.simulate_ecgs(np.random.default_rng(4), 2, **kwargs)
  assert a.shape == (2, 500, 12) and a.dtype == np.float32
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  for key in ("af", "heart_rate_bpm", "p_duration_ms", "qrs_duration_ms", "qtc_ms"):
    assert truth[key].shape == (2,)


def test_pcwp_distribution_like_a_cath_cohort(cohort):
  pcwp = cohort["pcwp"].astype(np.float64)
  assert len(pcwp) > 3000
  assert abs(pcwp.mean() - 16.0) < 1.0
  assert abs(pcwp.std() - 8.0) < 1.0
  assert abs(np.mean(pcwp > 18.0) - 0.30) < 0.04
  assert 0.5 < np.mean(cohort["sex"] == records.SEX_MALE) < 0.7
  assert 55 < cohort["age"].mean() < 67


def test_patients_have_several_ecgs_and_unique_ids(cohort):
  assert len(np.unique(cohort["ecg_id"])) == len(cohort["ecg_id"])
  _, counts = np.unique(cohort["patient_id"], return_counts=True)
  assert counts.min() >= 1 and counts.max() == 4 and 2.0 < counts.mean() < 3.0
  # Age and sex belong to the patient, not to the ECG.
  for key in ("age", "sex"):
    per_patient = {}
    for pid, value in zip(cohort["patient_id"], cohort[key]):
      assert per_patient.setdefault(pid, value) == value


def test_heart_rate_and_rhythm_measured_from_the_signal_match_the_truth():
  rng = np.random.default_rng(0)
  n = 120
  ecg, truth = simulator.simulate_ecgs(rng, n, pcwp=rng.uniform(5, 40, n),
                                       age=rng.uniform(20, 90, n), sex=rng.integers(0, 2, n))
  measured = [_measured_features(e, RATE) for e in ecg]
  hr = np.array([m[0] for m in measured])
  irregularity = np.array([m[1] for m in measured])
  assert np.median(np.abs(hr - truth["heart_rate_bpm"])) < 3.0
  assert np.corrcoef(hr, truth["heart_rate_bpm"])[0, 1] > 0.9
  assert 3 <= truth["af"].sum() < n // 2
  assert roc_auc_score(truth["af"], irregularity) > 0.9


def test_physiology_follows_pcwp_age_and_sex():
  rng = np.random.default_rng(1)
  n = 2000
  pcwp = np.repeat([8.0, 30.0], n // 2)
  age = rng.uniform(20, 90, n)
  sex = rng.integers(0, 2, n)
  _, t = simulator.simulate_ecgs(rng, n, pcwp=pcwp, age=age, sex=sex, sampling_rate=50)
  high = pcwp > 18
  assert np.nanmean(t["p_duration_ms"][high]) > np.nanmean(t["p_duration_ms"][~high]) + 8
  assert np.nanmean(t["p_terminal_v1_mv"][high]) < np.nanmean(t["p_terminal_v1_mv"][~high])
  assert t["af"][high].mean() > 1.5 * t["af"][~high].mean()
  assert t["heart_rate_bpm"][high].mean() > t["heart_rate_bpm"][~high].mean()
  assert t["qrs_duration_ms"][high].mean() > t["qrs_duration_ms"][~high].mean()
  assert t["t_amplitude_scale"][high].mean() < t["t_amplitude_scale"][~high].mean()
  female = sex == records.SEX_FEMALE
  assert t["qtc_ms"][female].mean() > t["qtc_ms"][~female].mean() + 5
  assert t["qrs_voltage_scale"][female].mean() < t["qrs_voltage_scale"][~female].mean()
  assert np.corrcoef(age, t["qtc_ms"])[0, 1] > 0.1


def test_label_learnable_from_the_signal_but_not_trivially():
  # ~2,000 full ECGs streamed chunk by chunk; only signal-measured features are kept.
  pcwp, patient_id, features = [], [], []
  for chunk in simulator.generate("train", 800, seed=0, chunk_size=256):
    pcwp.append(chunk["pcwp"])
    patient_id.append(chunk["patient_id"])
    for ecg in chunk["ecg"]:
      hr, irregularity, template = _measured_features(ecg, RATE)
      features.append(np.concatenate([[hr, irregularity], template]))
  y = np.concatenate(pcwp) > 18.0
  patient_id = np.concatenate(patient_id)
  x = np.stack(features)
  # Patient-disjoint halves, as every split in the project.
  patients = np.unique(patient_id)
  train = np.isin(patient_id, patients[: len(patients) // 2])
  mean, sd = x[train].mean(0), x[train].std(0) + 1e-9
  model = LogisticRegression(C=0.1, max_iter=2000).fit((x[train] - mean) / sd, y[train])
  auc = roc_auc_score(y[~train], model.predict_proba((x[~train] - mean) / sd)[:, 1])
  assert 0.6 < auc < 0.9, auc
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
