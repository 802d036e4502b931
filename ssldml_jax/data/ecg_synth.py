"""``ecg_synth``: the synthetic 12-lead cohort as a TFDS dataset (array_record, no TensorFlow).

Four patient-disjoint splits, like the paper's data: a large ``unlabeled`` pool for pretraining
and a labeled cohort (mPCWP, age, sex) split into ``train`` / ``validation`` / ``test``. Sizes are
set in patients; each patient has 1-4 ECGs (2.5 on average). The ECG counts below are those of
seed 0 (every build's are in its ``dataset_info.json`` and ``build_report.json``); the build
time of ``large`` is extrapolated from ``default``'s.

=========  ======  ===============================  ===============================  ===============
config     rate    unlabeled                        train / validation / test        build, 2 cores
=========  ======  ===============================  ===============================  ===============
tiny       100 Hz  40 patients (115 ECGs)           32 / 16 / 16 (85 / 39 / 38)      ~1 s
default    250 Hz  3,200 (8,052 ECGs)               800 / 200 / 200 (1,980/505/487)  ~15 s, 450 MB
large      250 Hz  80,000 (~200,000 ECGs)           2,400 / 400 / 480 (~8,200 total) ~4 min, ~8 GB
=========  ======  ===============================  ===============================  ===============

Every record is 10 s. The build is deterministic: the same config and seed give the same
records, whatever the machine. Version 2.0.0 gives the patients heart disease (a heart-failure
phenotype and its ECG conditions); a 1.0.0 build in the data directory is never read as it.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import tensorflow_datasets as tfds

from ssldml_jax.data import simulator
from ssldml_jax.data.tfds_common import EcgBuilder, EcgBuilderConfig

SPLITS = ("unlabeled", "train", "validation", "test")
LABELED_SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(eq=False)
class EcgSynthConfig(EcgBuilderConfig):
  """Patients per split (in ``SPLITS`` order) and the seed the whole cohort derives from."""
  patients: tuple[int, int, int, int] = (3200, 800, 200, 200)
  ecgs_per_patient: tuple[int, int] = (1, 4)
  seed: int = 0


class EcgSynth(EcgBuilder):
  """The synthetic cohort of ``ssldml_jax.data.simulator``."""

  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {
      "1.0.0": "First release.",
      "2.0.0": "Patients get a heart-failure phenotype and its ECG conditions (bundle-branch "
               "blocks, LVH with and without strain, old infarcts, atrial fibrillation, "
               "first-degree AV block, low voltage, premature beats); mPCWP follows the "
               "phenotype. Every record differs from 1.0.0, which this version never reads.",
  }
  BUILDER_CONFIGS = [
      EcgSynthConfig(name="default", description="Main job: 250 Hz, ~8k unlabeled + ~3k labeled.",
                     sampling_rate=250, patients=(3200, 800, 200, 200)),
      EcgSynthConfig(name="tiny", description="Tests: 100 Hz, a few hundred ECGs.",
                     sampling_rate=100, patients=(40, 32, 16, 16)),
      EcgSynthConfig(name="large", description="Pretraining at scale: ~200k unlabeled ECGs.",
                     sampling_rate=250, patients=(80_000, 2_400, 400, 480)),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "default"
  DESCRIPTION = (
      "Synthetic 12-lead ECGs from a moving cardiac dipole (P, QRS and T loops projected onto the "
      "lead axes, so Einthoven's and Goldberger's relations hold), with heart-rate variability, "
      "baseline wander, mains hum and muscle noise. Patients have an age, a sex, a latent "
      "heart-failure phenotype with the ECG conditions of a catheterisation cohort (bundle-branch "
      "blocks, LVH, old infarcts, atrial fibrillation, AV block, low voltage, premature beats) "
      "and, in the labeled splits, a mean PCWP coupled to the ECG as in the clinical literature. "
      "Splits are patient-disjoint; pcwp is NaN in the unlabeled split.")

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
    del dl_manager  # Nothing to download: the data is generated.
    patients = dict(zip(SPLITS, self.builder_config.patients))
    return {split: self._generate_examples(split, patients[split]) for split in SPLITS}

  def _generate_examples(self, split: str, num_patients: int) -> Iterator[tuple[str, dict]]:
    config = self.builder_config
    chunks = simulator.generate(split, num_patients, seed=config.seed,
                                sampling_rate=config.sampling_rate, duration_s=config.duration_s,
                                labeled=split in LABELED_SPLITS,
                                ecgs_per_patient=tuple(config.ecgs_per_patient))
    for chunk in chunks:
      for i in range(len(chunk["ecg_id"])):
        record = {key: chunk[key][i] for key in
                  ("ecg", "ecg_id", "patient_id", "age", "sex", "pcwp")}
        example = self.make_example(split, record)
        if example is not None:
          yield example
