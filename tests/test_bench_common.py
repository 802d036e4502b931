"""Tests of the command line every benchmark shares (``ssldml_jax.bench.common``)."""

import pytest

from ssldml_jax.bench import common


def _parse(flags):
  parser = common.arg_parser("demo", "A demo benchmark.\n\nNot part of the description.")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--sizes", type=common.int_list("--sizes", 3), default=(8,))
  return common.parse_args(parser, flags, quick="a smoke run", positive=("batch",),
                           at_least={"warmup": 0})


def test_options_at_their_bounds_parse_with_the_shared_ones():
  a = _parse(["--batch=1", "--warmup=0", "--sizes=3,16", "--quick"])
  assert (a.batch, a.warmup, a.sizes, a.quick, a.no_record) == (1, 0, (3, 16), True, False)
  assert _parse(["--no_record"]).no_record


@pytest.mark.parametrize("flags, message", [
    (["--batch=0"], "--batch=0 must be >= 1"),
    (["--warmup=-1"], "--warmup=-1 must be >= 0"),
    (["--sizes=3,2"], "--sizes='3,2' must be comma-separated integers >= 3"),
    (["--sizes=3,x"], "--sizes='3,x' must be comma-separated integers >= 3"),
])
def test_an_option_below_its_bound_is_a_one_line_usage_error(flags, message, capsys):
  with pytest.raises(SystemExit) as e:
    _parse(flags)
  assert e.value.code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert lines[-1].startswith("python -m ssldml_jax.bench demo: error: ")
  assert lines[-1].endswith(message)
