"""The method registry (``ssldml_jax/methods``) and the one config flow built on it."""

import glob
import os

import ml_collections
import pytest

from ssldml_jax import cli, config_defaults, methods, reproduce, train_lib
from ssldml_jax.eval import probe_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOB_CONFIGS = ("quickstart", "paper", "probe", "probe_ptbxl")


def _leaves(config, prefix=""):
  out = set()
  for key, value in config.items():
    path = prefix + key
    out |= _leaves(value, path + ".") if isinstance(value, ml_collections.ConfigDict) else {path}
  return out


def test_a_name_is_a_config_file_and_back():
  trained = methods.names(pretrained_only=True)
  files = {os.path.splitext(os.path.basename(p))[0]
           for p in glob.glob(os.path.join(REPO, "configs", "*.py"))} - set(JOB_CONFIGS)
  assert files == set(trained)
  for name in trained:
    for arg in ("", ":tiny"):
      loaded = cli.load_config_file(os.path.join(REPO, "configs", f"{name}.py{arg}"))
      assert loaded.to_dict() == methods.pretrain_config(name, arg[1:] or None).to_dict()
      assert loaded.method == name
  labels = [methods.get(n).label for n in methods.names()]
  assert len(set(labels)) == len(labels)  # one row label per method
  assert methods.get("random").label == "Random encoder" and not methods.get("random").pretrains


def test_stage_config_holds_exactly_what_its_method_reads():
  full = reproduce.replicate_config(reproduce_config(), 0)
  every = _leaves(full)
  for name in methods.names(pretrained_only=True):
    method = methods.get(name)
    expected = {"method"}
    for key in config_defaults.SHARED_SECTIONS + method.reads:
      expected |= {k for k in every if k == key or k.startswith(key + ".")}
    stage = methods.stage_config(full, name)
    assert _leaves(stage) == expected, name
    assert stage.method == name
    # A copy: changing the stage leaves the job's config alone.
    stage.model.width = 3
    assert full.model.width != 3
  assert not {"mining", "loss"} & set(methods.pretrain_config("vicreg").keys())
  assert "augment" not in methods.pretrain_config("clocs_cmsc")
  assert set(methods.pretrain_config("ssl_dml_euclidean").mining.keys()) == {
      "decimate", "neg_topk", "embedding_distance"}


def reproduce_config():
  return cli.load_config_file(os.path.join(REPO, "configs", "paper.py"))


def test_every_key_of_the_main_job_is_read_by_some_stage():
  """No dead keys: validating the main job looks up every key its config holds."""
  for name in ("paper", "quickstart"):
    config = cli.load_config_file(os.path.join(REPO, "configs", f"{name}.py"))
    config.methods = methods.names()
    with cli.recording() as read:
      reproduce.validate(config, "/tmp/nowhere")
    unread = _leaves(config) - read
    assert not unread, f"configs/{name}.py: keys no stage reads: {sorted(unread)}"


def test_a_new_unread_key_is_caught(monkeypatch):
  real = config_defaults.base_config

  def with_dead_key():
    c = real()
    c.mining.unused = 1
    return c

  monkeypatch.setattr(config_defaults, "base_config", with_dead_key)
  config = reproduce_config()
  config.methods = methods.names()
  with cli.recording() as read:
    reproduce.validate(config, "/tmp/nowhere")
  assert _leaves(config) - read == {"mining.unused"}


@pytest.mark.parametrize("override, chosen, ok", [
    ("vicreg.expander_dim", ("simclr", "random"), False),
    ("vicreg.expander_dim", ("vicreg", "random"), True),
    ("mining.decimate", ("simclr", "supervised", "random"), False),
    ("mining.decimate", ("ssl_dml_dtw",), True),
    ("loss.alpha", ("ssl_dml_dtw", "supervised"), False),
    ("loss.alpha", ("supervised_dml_regression",), True),
    ("task.pcwp_std", ("simclr", "random"), False),
    ("task.pcwp_threshold", ("simclr", "random"), True),   # the probes read it
    ("probe.n_bootstrap", ("random",), True),
    ("example_ecg_split", ("random",), True),
])
def test_an_override_no_stage_reads_is_an_error(override, chosen, ok):
  config = reproduce_config()
  config.methods = chosen
  if ok:
    reproduce.validate(config, "/tmp/nowhere", overrides=[override])
  else:
    with pytest.raises(cli.ConfigError, match=rf"config\.{override} is read by no stage of this "
                                              r"job \(methods: "):
      reproduce.validate(config, "/tmp/nowhere", overrides=[override])


def test_each_section_is_validated_by_its_owner():
  config = reproduce_config()
  config.methods = methods.names()
  for key, value, owner in (("data.per_device_batch_size", 0, "data.pipeline.validate"),
                            ("model.width", 0, "models.validate"),
                            ("optim.learning_rate", 0.0, "steps.validate_optim"),
                            ("train.log_every_steps", 0, "train_lib.validate_train"),
                            ("task.pcwp_std", 0.0, "task.validate"),
                            ("augment.lead_dropout", 1.0, "augment.validate"),
                            ("vicreg.expander_dim", 0, "methods.vicreg"),
                            ("mining.decimate", 0, "methods.ssl_dml"),
                            ("probe.n_bootstrap", 0, "eval.probe_config.validate")):
    bad = reproduce_config()
    bad.methods = methods.names()
    section, leaf = key.split(".")
    bad[section][leaf] = value
    with pytest.raises(cli.ConfigError, match=rf"config\.{key}="):
      reproduce.validate(bad, "/tmp/nowhere")
  reproduce.validate(config, "/tmp/nowhere")  # and the unchanged config passes


def test_stage_configs_of_the_main_job():
  config = reproduce_config()
  config.methods = ("ssl_dml_dtw", "supervised", "random")
  config.compare_to = "random"
  config.pretrain_seeds = (0, 4)
  config.probe.seeds = (0, 1)
  config.probe.fractions, config.probe.limited_n = (0.1, 1.0), 50
  stages = {s.path: s for s in reproduce.stages(config, "/r", config.methods)}
  supervised_rows = [f"{row}/seed{p}_draw{d}" for p in (0, 4)
                     for row in ("labels_10pct", "labels_n50") for d in (0, 1)]
  expected = {f"{kind}/{m}/seed{p}" for kind in ("pretrain", "probe")
              for m in ("ssl_dml_dtw", "supervised") for p in (0, 4)}
  expected |= {"probe/random/seed0", "probe/random/seed4"}
  expected |= {f"{kind}/supervised/{w}" for kind in ("pretrain", "probe") for w in supervised_rows}
  assert set(stages) == expected
  # Pretraining seeds reach every stage, the random encoder's initialisation too.
  for path, stage in stages.items():
    assert stage.config.seed == int(path.split("/seed")[1].split("_")[0]), path
  assert stages["probe/random/seed4"].config.encoder_workdir is None
  probe = stages["probe/supervised/labels_n50/seed4_draw1"].config
  assert probe.encoder_workdir == "/r/pretrain/supervised/labels_n50/seed4_draw1"
  assert (tuple(probe.probe.rows), tuple(probe.probe.seeds)) == (("n=50",), (1,))
  assert tuple(stages["probe/supervised/seed0"].config.probe.rows) == ("100%",)
  assert tuple(stages["probe/ssl_dml_dtw/seed0"].config.probe.rows) == ()
  pretrain = stages["pretrain/supervised/labels_n50/seed4_draw1"].config
  assert (pretrain.task.train_labels, pretrain.task.train_labels_seed) == ("n=50", 1)
  assert stages["pretrain/supervised/seed4"].config.task.train_labels == "100%"
  assert "task" not in stages["pretrain/ssl_dml_dtw/seed0"].config
  assert stages["probe/supervised/seed0"].config.probe.name == "supervised"
  assert set(stages["probe/random/seed0"].config.keys()) == {
      "seed", "data", "model", "task", "probe", "encoder_workdir", "export_splits",
      "random_baseline"}
  assert set(stages["probe/random/seed0"].config.task.keys()) == {"pcwp_threshold"}
  for stage in stages.values():
    if stage.kind == "pretrain":
      train_lib.validate_config(stage.config)
    else:
      probe_config.validate(stage.config)
  # The job sets these per stage: its own config has none of them.
  for key in reproduce.STAGE_KEYS:
    with pytest.raises(cli.ConfigError, match="is missing"):
      cli.get_path(config, key)


@pytest.mark.parametrize("key, value, message", [
    ("pretrain_seeds", (0, 0), r"config\.pretrain_seeds=\(0, 0\) must be distinct"),
    ("pretrain_seeds", (), r"config\.pretrain_seeds=\(\) must be"),
    ("compare_to", "byol", r"config\.compare_to='byol' is not allowed; choose one of ''"),
    ("task.train_labels", "5", None),
])
def test_job_keys_are_checked(key, value, message):
  config = reproduce_config()
  config.methods = ("simclr", "supervised", "random")
  if message is None:  # a key the job sets per stage is no key of the job
    assert key in reproduce.STAGE_KEYS
    with pytest.raises(cli.ConfigError, match="is missing"):
      cli.get_path(config, key)
    return
  config[key] = value
  with pytest.raises(cli.ConfigError, match=message):
    reproduce.validate(config, "/tmp/nowhere")
