"""The predict benchmark's agreement check (no timing is asserted)."""

import pytest

from ssldml_jax.bench import predict as bench_predict

# wfdb calls pandas in a way pandas 3 deprecates; not this project's to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword")


@pytest.mark.slow
def test_predict_and_the_per_file_loop_agree_and_a_difference_is_caught(tmp_path):
  files = tmp_path / "ecgs"
  files.mkdir()
  paths = bench_predict.write_records(str(files), 3)
  probe_dir = bench_predict.saved_probe(str(tmp_path / "probe"), width=4, stage_sizes=(1,))
  peer = bench_predict.make_peer(probe_dir)
  assert bench_predict.check_agreement(probe_dir, paths, str(tmp_path), peer) < 1e-4
  with pytest.raises(AssertionError, match="predict and the per-file loop differ by 0.001"):
    bench_predict.check_agreement(probe_dir, paths, str(tmp_path), lambda p: peer(p) + 1e-3)
