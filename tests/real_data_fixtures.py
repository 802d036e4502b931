"""Small copies of the real datasets' layouts, written with the libraries the data comes in.

Every signal is ``lead_signal``: a sum of slow sines whose amplitude and frequency differ per lead,
so a swapped or missing lead is visible in the stored values, and the exact value at any time is
known without running the code under test.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import h5py
import numpy as np
import wfdb

from ssldml_jax.data import records

PTBXL_LEADS = ("I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6")
MIMIC_LEADS = ("I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6")


def lead_signal(lead: str, t: np.ndarray, seed: int) -> np.ndarray:
  """Millivolts of ``lead`` (a ``records.LEADS`` name, any case) at times ``t`` of record ``seed``.

  Lead j: 0.1*(j+1) mV at 0.5 + 0.25*j Hz, a small 3 Hz term and an offset of 0.02*(j-6) mV (all
  far below any Nyquist frequency used here), so every lead is told apart by mean and spread.
  """
  j = [name.lower() for name in records.LEADS].index(lead.lower())
  phase = 0.7 * seed + 0.3 * j
  return (0.1 * (j + 1) * np.sin(2 * np.pi * (0.5 + 0.25 * j) * t + phase)
          + 0.05 * np.sin(2 * np.pi * 3.0 * t + phase) + 0.02 * (j - 6))


def signals(leads: Sequence[str], rate: float, num: int, seed: int) -> np.ndarray:
  """(num, len(leads)) millivolts at ``rate``, columns in ``leads`` order."""
  t = np.arange(num) / rate
  return np.stack([lead_signal(lead, t, seed) for lead in leads], axis=1)


def expected_uv(seed: int, rate: int = 250, num: int = 2500, start_s: float = 0.0) -> np.ndarray:
  """What a record of ``seed`` should store: (num, 12) microvolts in ``records.LEADS`` order,
  the source recording from ``start_s`` seconds on."""
  t = start_s + np.arange(num) / rate
  return np.stack([lead_signal(lead, t, seed) for lead in records.LEADS], axis=1) * 1000.0


def write_wfdb(path: str, x_mv: np.ndarray, leads: Sequence[str], rate: float,
               units: str = "mV") -> None:
  """A WFDB record (16-bit, 1 uV resolution) at ``path`` (without extension)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  scale = {"mV": 1.0, "uV": 1000.0}[units]
  gain = 1000.0 / scale
  wfdb.wrsamp(os.path.basename(path), fs=rate, units=[units] * len(leads), sig_name=list(leads),
              p_signal=x_mv * scale, fmt=["16"] * len(leads), adc_gain=[gain] * len(leads),
              baseline=[0] * len(leads), write_dir=os.path.dirname(path))


def truncate(path: str) -> None:
  """Cuts a WFDB ``.dat`` file in half, as an interrupted copy would."""
  with open(path + ".dat", "rb") as f:
    data = f.read()
  with open(path + ".dat", "wb") as f:
    f.write(data[:len(data) // 2])


def write_csv(path: str, header: Sequence[str], rows: Sequence[Sequence]) -> None:
  with open(path, "w") as f:
    f.write(",".join(header) + "\n")
    for row in rows:
      f.write(",".join('"' + str(c).replace('"', '""') + '"' for c in row) + "\n")


# --- PTB-XL -----------------------------------------------------------------------------------

PTBXL_SCP = [  # code, diagnostic, diagnostic_class
    ("NORM", 1, "NORM"), ("IMI", 1, "MI"), ("NDT", 1, "STTC"), ("LAFB", 1, "CD"),
    ("LVH", 1, "HYP"), ("SR", "", ""), ("PVC", "", "")]


def write_ptbxl(root: str) -> dict:
  """A PTB-XL folder: 8 records of 5 patients over folds 1, 9, 10, plus four bad records.

  Returns ``{"good": {ecg_id: (patient, split, seed, age, sex_ours, superclass_vector)},
  "bad": {ecg_id: problem substring}}``.
  """
  good = {
      "1": ("101", 1, 0, "56", "1", "{'NORM': 100.0, 'SR': 0.0}", [1, 0, 0, 0, 0]),
      "2": ("101", 3, 1, "56", "1", "{'IMI': 50.0, 'LVH': 100.0}", [0, 1, 0, 0, 1]),
      "3": ("102", 8, 2, "300", "0", "{'NDT': 100.0, 'LAFB': 15.0, 'PVC': 0.0}", [0, 0, 1, 1, 0]),
      "4": ("103", 9, 3, "40", "1", "{'SR': 0.0}", [0, 0, 0, 0, 0]),
      "5": ("103", 9, 4, "41", "1", "{}", [0, 0, 0, 0, 0]),
      "6": ("104", 10, 5, "", "", "{'NORM': 80.0}", [1, 0, 0, 0, 0]),
  }
  bad = {"7": "(truncated)", "8": "NaN", "9": "missing lead", "10": "wrong rate"}
  rows = []
  for ecg_id, (patient, fold, seed, age, sex, scp, _) in good.items():
    name = f"records500/00000/{int(ecg_id):05d}_hr"
    write_wfdb(os.path.join(root, name), signals(PTBXL_LEADS, 500, 5000, seed), PTBXL_LEADS, 500)
    rows.append([ecg_id, f"{patient}.0", age, sex, fold, f"records100/00000/{int(ecg_id):05d}_lr",
                 name, scp])
  for ecg_id in bad:
    name = f"records500/00000/{int(ecg_id):05d}_hr"
    x = signals(PTBXL_LEADS, 500, 5000, int(ecg_id))
    leads, rate = PTBXL_LEADS, 500
    if ecg_id == "8":
      x[100:200, 7] = np.nan
    if ecg_id == "9":
      x, leads = x[:, :11], PTBXL_LEADS[:11]
    if ecg_id == "10":
      x, rate = x[:1000], 100
    write_wfdb(os.path.join(root, name), x, leads, rate)
    if ecg_id == "7":
      truncate(os.path.join(root, name))
    rows.append([ecg_id, "105.0", "60", "0", 1, "", name, "{}"])
  write_csv(os.path.join(root, "ptbxl_database.csv"),
            ["ecg_id", "patient_id", "age", "sex", "strat_fold", "filename_lr", "filename_hr",
             "scp_codes"], rows)
  write_csv(os.path.join(root, "scp_statements.csv"), ["", "diagnostic", "diagnostic_class"],
            PTBXL_SCP)
  return {"good": {k: (v[0], {1: "train", 3: "train", 8: "train", 9: "validation",
                              10: "test"}[v[1]], v[2],
                       {"300": 90.0, "": float("nan")}.get(v[3], float(v[3] or "nan")),
                       {"0": 1, "1": 0, "": -1}[v[4]], v[6]) for k, v in good.items()},
          "bad": bad}


# SCP codes whose diagnostic superclasses make the benchmark's label patterns, in turn; the last
# pattern has no diagnostic statement (the benchmark leaves such records out).
BENCHMARK_PATTERNS = (("NORM",), ("IMI",), ("NDT",), ("LAFB",), ("LVH",), ("IMI", "NDT"),
                      ("LAFB", "LVH"), ("SR",))


def write_ptbxl_benchmark(root: str, patients: int = 40) -> dict:
  """A PTB-XL folder for the superdiagnostic benchmark: ``patients`` patients of two records
  each, patient p in fold 1 + p % 10, label patterns ``BENCHMARK_PATTERNS`` in turn within each
  of train / validation / test (so every superclass has positives and negatives in each), and a
  class-dependent wave added to every lead so that a probe has something to find.

  Returns ``{ecg_id: (split, superclass vector, record path without extension)}``.
  """
  superclass = dict((code, cls) for code, _, cls in PTBXL_SCP)
  split_of = {**{f: "train" for f in range(1, 9)}, 9: "validation", 10: "test"}
  counters: dict = {}
  rows, truth = [], {}
  t = np.arange(5000) / 500.0
  for p in range(patients):
    fold = 1 + p % 10
    for k in range(2):
      ecg_id = str(1 + 2 * p + k)
      split = split_of[fold]
      i = counters.get(split, 0)
      counters[split] = i + 1
      codes = BENCHMARK_PATTERNS[i % len(BENCHMARK_PATTERNS)]
      vector = [int(any(superclass[c] == cls for c in codes)) for cls in
                ("NORM", "MI", "STTC", "CD", "HYP")]
      x = signals(PTBXL_LEADS, 500, 5000, int(ecg_id))
      for j, on in enumerate(vector):
        x += on * 0.15 * np.sin(2 * np.pi * (1.5 + 0.5 * j) * t)[:, None]
      name = f"records500/{int(ecg_id) // 1000 * 1000:05d}/{int(ecg_id):05d}_hr"
      write_wfdb(os.path.join(root, name), x, PTBXL_LEADS, 500)
      scp = "{" + ", ".join(f"'{c}': 100.0" for c in codes) + "}"
      rows.append([ecg_id, f"{200 + p}.0", str(40 + p % 50), str(p % 2), fold, "", name, scp])
      truth[ecg_id] = (split, vector, os.path.join(root, name))
  write_csv(os.path.join(root, "ptbxl_database.csv"),
            ["ecg_id", "patient_id", "age", "sex", "strat_fold", "filename_lr", "filename_hr",
             "scp_codes"], rows)
  write_csv(os.path.join(root, "scp_statements.csv"), ["", "diagnostic", "diagnostic_class"],
            PTBXL_SCP)
  return truth


# --- MIMIC-IV-ECG -----------------------------------------------------------------------------

def write_mimic(root: str, num_subjects: int = 12) -> dict:
  """A MIMIC-IV-ECG folder with ``num_subjects`` subjects (1-2 studies each), MIMIC lead order,
  a ``patients.csv`` for half of them, and two bad studies (NaN, wrong rate).

  Returns ``{"good": {study_id: (subject_id, seed, age, sex)}, "bad": {study_id: problem}}``.
  """
  rows, patients, good, bad = [], [], {}, {}
  seed = 0
  for s in range(num_subjects):
    subject = str(10_000_000 + 37 * s)
    if s % 2 == 0:
      patients.append([subject, "F" if s % 4 == 0 else "M", 50 + s, 2150])
    for k in range(1 + s % 2):
      study = str(40_000_000 + 100 * s + k)
      rel = f"files/p{subject[:4]}/p{subject}/s{study}/{study}"
      x = signals(MIMIC_LEADS, 500, 5000, seed)
      rate = 500
      if s == 1 and k == 1:
        x[:, 4] = np.nan
        bad[study] = "NaN"
      elif s == 3 and k == 1:
        rate = 250
        bad[study] = "wrong rate"
      else:
        age = 50 + s + (2152 - 2150) if s % 2 == 0 else float("nan")
        sex = (0 if s % 4 == 0 else 1) if s % 2 == 0 else -1
        good[study] = (subject, seed, age, sex)
      write_wfdb(os.path.join(root, rel), x, MIMIC_LEADS, rate)
      rows.append([subject, study, study, f"2152-0{1 + k}-1{s % 10} 08:0{k}:00", rel])
      seed += 1
  write_csv(os.path.join(root, "record_list.csv"),
            ["subject_id", "study_id", "file_name", "ecg_time", "path"], rows)
  write_csv(os.path.join(root, "patients.csv"),
            ["subject_id", "gender", "anchor_age", "anchor_year"], patients)
  return {"good": good, "bad": bad}


# --- CODE-15% ---------------------------------------------------------------------------------

def _padded(x: np.ndarray, total: int = 4096) -> np.ndarray:
  left = (total - x.shape[0]) // 2
  out = np.zeros((total, 12), np.float32)
  out[left:left + x.shape[0]] = x
  return out


def write_code15(root: str) -> dict:
  """Two ``exams_part*.hdf5`` files and ``exams.csv``: 10 s exams (centred padding), a 7 s exam,
  an all-zero exam, a NaN exam, one exam missing from the csv and one csv row whose exam is
  missing from its file.

  Returns ``{"good": {exam_id: (patient, seed, age, sex)}, "bad": {exam_id: problem}}``.
  """
  good, bad, csv_rows = {}, {}, []
  exam = 1000
  for part in range(2):
    ids, tracings = [], []
    for i in range(5):
      exam += 1
      seed = exam - 1000
      patient = ("500", "505", "508")[exam % 3]  # One per split (hash of the id).
      x = signals(records.LEADS, 400, 4000, seed).astype(np.float32)
      kind = (part, i)
      if kind == (0, 3):
        x = x[:2800]
        bad[str(exam)] = "shorter"
      elif kind == (1, 1):
        x = np.zeros((4000, 12), np.float32)
        bad[str(exam)] = "all-zero"
      elif kind == (1, 2):
        x[10:20, 2] = np.nan
        bad[str(exam)] = "NaN"
      else:
        good[str(exam)] = (patient, seed, float(30 + i), i % 2)
      ids.append(exam)
      tracings.append(_padded(x))
      if kind != (1, 4):
        csv_rows.append([exam, 30 + i, "True" if i % 2 else "False", patient,
                         f"exams_part{part}.hdf5"])
      else:
        good.pop(str(exam))
        bad[str(exam)] = "not in exams.csv"
    with h5py.File(os.path.join(root, f"exams_part{part}.hdf5"), "w") as f:
      f.create_dataset("tracings", data=np.stack(tracings))
      f.create_dataset("exam_id", data=np.array(ids, np.int64))
  csv_rows.append([9999, 50, "True", "777", "exams_part0.hdf5"])
  bad["9999"] = "not found in"
  write_csv(os.path.join(root, "exams.csv"),
            ["exam_id", "age", "is_male", "nn_predicted_age", "patient_id", "trace_file"],
            [[r[0], r[1], r[2], 40.0, r[3], r[4]] for r in csv_rows])
  return {"good": good, "bad": bad}


# --- A hospital cohort ------------------------------------------------------------------------

def write_cohort(root: str, settings: Optional[dict] = None) -> dict:
  """A manifest over WFDB, HDF5 (``ecg/<date>/<lead>``, lower-case lead names, 12 s at 500 Hz)
  and .npy (250 Hz, rate from the manifest) files, a labels table, and bad records.

  Returns ``{"good": {ecg_id: (patient, seed, pcwp, start_s)}, "bad": {ecg_id: problem}}``.
  ``start_s`` is where the stored 10 s begin in the source recording (centre crop of 12 s: 1 s).
  """
  os.makedirs(os.path.join(root, "ecgs"), exist_ok=True)
  manifest, good, bad = [], {}, {}
  # patient, ecg time; labels below put caths at chosen gaps.
  plan = [("w1", "P1", "2021-03-01 10:00", "wfdb"), ("w2", "P1", "2021-03-05 10:00", "wfdb"),
          ("h1", "P2", "2021-04-01 09:00", "hdf5"), ("h2", "P3", "2021-04-02 09:00", "hdf5"),
          ("n1", "P4", "2021-05-01 12:00", "npy"), ("n2", "P5", "2021-05-02 12:00", "npy"),
          ("n3", "P6", "2021-05-03 12:00", "npy"), ("w3", "P7", "2021-06-01 08:00", "wfdb")]
  for seed, (ecg_id, patient, when, kind) in enumerate(plan):
    path = f"ecgs/{ecg_id}"
    rate_column = ""
    if kind == "wfdb":
      write_wfdb(os.path.join(root, path), signals(PTBXL_LEADS, 500, 5000, seed), PTBXL_LEADS,
                 500, units="uV")
    elif kind == "hdf5":
      path += ".h5"
      x = signals(records.LEADS, 500, 6000, seed)
      with h5py.File(os.path.join(root, path), "w") as f:
        group = f.create_group(f"ecg/{when[:10]}")
        group.attrs["sampling_rate"] = 500
        for j, lead in enumerate(records.LEADS):
          group.create_dataset(lead.lower(), data=(x[:, j] * 1000).astype(np.int16))
        group.attrs["units"] = "uV"
        if ecg_id == "h2":  # A second recording of another day in the same file.
          f.create_group("ecg/2020-01-01").create_dataset("i", data=np.zeros(10))
    else:
      path += ".npy"
      np.save(os.path.join(root, path), signals(records.LEADS, 250, 2500, seed).T.copy())
      rate_column = "250"
    manifest.append([path, patient, when, 60 + seed, "F" if seed % 2 else "M", rate_column,
                     ecg_id])
    good[ecg_id] = (patient, seed, float("nan"), 1.0 if kind == "hdf5" else 0.0)
  # Labels: w1 has caths 6 h before and 6 h after (tie: the earlier wins), w2 has one 30 h away
  # (outside 24 h: unlabeled), h1 one 2 h after, h2 none, n1 two (1 h and 5 h: the nearest wins),
  # n3 an impossible value; the last row has no usable time.
  labels = [("P1", "2021-03-01 04:00", 21.0), ("P1", "2021-03-01 16:00", 12.0),
            ("P1", "2021-03-06 16:00", 30.0), ("P2", "2021-04-01 11:00", 8.5),
            ("P4", "2021-05-01 13:00", 17.0), ("P4", "2021-05-01 17:00", 25.0),
            ("P6", "2021-05-03 12:00", 400.0), ("P9", "yesterday", 10.0)]
  for ecg_id, pcwp in (("w1", 21.0), ("h1", 8.5), ("n1", 17.0)):
    good[ecg_id] = good[ecg_id][:2] + (pcwp,) + good[ecg_id][3:]
  good.pop("n3")
  bad["n3"] = "impossible mPCWP"
  bad["labels.csv row 9"] = "unparsable cath_time 'yesterday'"
  # Bad records: a missing lead (HDF5 without V6), a truncated WFDB file, NaN, too short, and a
  # file that does not exist.
  x = signals(records.LEADS, 500, 6000, 20)
  with h5py.File(os.path.join(root, "ecgs/b1.h5"), "w") as f:
    for j, lead in enumerate(records.LEADS[:11]):
      f.create_dataset(f"ecg/2021-07-01/{lead}", data=x[:, j])
    f["ecg/2021-07-01"].attrs["fs"] = 500
  write_wfdb(os.path.join(root, "ecgs/b2"), signals(PTBXL_LEADS, 500, 5000, 21), PTBXL_LEADS, 500)
  truncate(os.path.join(root, "ecgs/b2"))
  y = signals(records.LEADS, 250, 2500, 22)
  y[5, 5] = np.nan
  np.save(os.path.join(root, "ecgs/b3.npy"), y)
  np.save(os.path.join(root, "ecgs/b4.npy"), signals(records.LEADS, 250, 2000, 23))
  for ecg_id, path, rate, problem in (
      ("b1", "ecgs/b1.h5", "", "V6"), ("b2", "ecgs/b2", "", "unreadable"),
      ("b3", "ecgs/b3.npy", "250", "NaN"), ("b4", "ecgs/b4.npy", "250", "shorter"),
      ("b5", "ecgs/none.npy", "250", "no such file"), ("b6", "ecgs/w3", "250", "wrong rate")):
    manifest.append([path, f"Q{ecg_id}", "2021-07-01 10:00", "", "", rate, ecg_id])
    bad[ecg_id] = problem
  write_csv(os.path.join(root, "manifest.csv"),
            ["path", "patient_id", "ecg_time", "age", "sex", "sampling_rate", "ecg_id"], manifest)
  write_csv(os.path.join(root, "labels.csv"), ["patient_id", "cath_time", "pcwp", "mpap"],
            [list(r) + [30.0] for r in labels])
  if settings is not None:
    with open(os.path.join(root, "cohort.json"), "w") as f:
      json.dump(settings, f)
  return {"good": good, "bad": bad}


if __name__ == "__main__":
  # python tests/real_data_fixtures.py {ptbxl,ptbxl_benchmark,mimic,code15,cohort} DIR: writes the
  # fixture into DIR (for trying the programs without the real data).
  import sys

  writers = {"ptbxl": write_ptbxl, "ptbxl_benchmark": write_ptbxl_benchmark,
             "mimic": write_mimic, "code15": write_code15, "cohort": write_cohort}
  if len(sys.argv) != 3 or sys.argv[1] not in writers:
    sys.exit(f"usage: python {sys.argv[0]} {{{','.join(writers)}}} DIR")
  os.makedirs(sys.argv[2], exist_ok=True)
  writers[sys.argv[1]](sys.argv[2])
  print(f"{sys.argv[1]} fixture written to {sys.argv[2]}")
