import subprocess
import sys
import textwrap

import pytest

PROGRAM = textwrap.dedent("""
    from ssldml_jax import cli
    cli.define_flags()
    def main(config, workdir):
      cli.check_choice(config, 'method', ['a', 'b'])
      print('OK', config.sub.x, workdir)
    cli.run(main)
""")
CONFIG = textwrap.dedent("""
    import ml_collections
    def get_config(arg=None):
      c = ml_collections.ConfigDict()
      c.method = 'a' if arg != 'bad' else 'zzz'
      c.sub = ml_collections.ConfigDict({'x': 1})
      return c
""")


@pytest.fixture()
def program(tmp_path):
  (tmp_path / "prog.py").write_text(PROGRAM)
  (tmp_path / "cfg.py").write_text(CONFIG)

  def run(*args):
    return subprocess.run([sys.executable, str(tmp_path / "prog.py"), *args],
                          capture_output=True, text=True, cwd=tmp_path)
  return run


def test_override_applies(program):
  out = program("--config=cfg.py", "--workdir=w", "--config.sub.x=5")
  assert out.returncode == 0, out.stderr
  assert "OK 5 w" in out.stdout


@pytest.mark.parametrize("args, expected", [
    (["--config=cfg.py", "--config.sub.y=5"], "unknown config key 'sub.y': sub has x"),
    (["--config=cfg.py", "--config.nope=5"], "unknown config key 'nope'"),
    (["--config=cfg.py", "--config.sub.x=abc"], "--config.sub.x=abc"),
    (["--config=missing.py"], "missing.py"),
    (["--config=cfg.py:bad"], "config.method='zzz' is not allowed; choose one of 'a', 'b'"),
])
def test_bad_config_is_one_line(program, args, expected):
  out = program(*args, "--workdir=w")
  assert out.returncode == 2
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, out.stderr
  assert expected in lines[0]
  assert "Traceback" not in out.stderr
