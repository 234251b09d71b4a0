"""The ``openmix`` command: configs, list / show, resume after a crash, loggers, DDP on the CPU."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import model_config_for

from openmix.cli import main, run_lightning
from openmix.lightning import MixClassifier

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(
    not (FMNIST / "train-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST (dataset-fashion-mnist) not installed"
)
TINY_MODEL = [
    "--model.init_args.backbone=resnet10t",
    "--model.init_args.backbone_kwargs={channels: [8, 8, 8, 8], stem_width: 8}",
    "--model.init_args.cifar_stem=true",
]
TINY_DATA = ["--data.init_args.limit_train=256", "--data.init_args.limit_val=64", "--data.init_args.batch_size=32"]


def cli(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "openmix.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        check=check,
        cwd=ROOT,
    )


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_config_file_instantiates(config, tmp_path):
    """Each file stacks onto the defaults, passes the typed parser and builds model, data and trainer."""
    if config.parent.name == "grids":
        from openmix.bench import load_grid

        assert load_grid(config).runs()
        return
    args = ["--config", str(config), f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"]
    if "mixers" in config.parts:  # on the model it is meant for (a ViT for attention-labelled methods)
        args = ["--config", str(ROOT / "configs" / model_config_for(config)), *args]
    if "trainer" in config.parts:  # accelerators this machine may lack: check the keys, not the hardware
        args += ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto"]
    built = run_lightning(args, run=False)
    from openmix.data import ClassificationData
    from openmix.lightning import MixClassifier

    assert isinstance(built.model, MixClassifier) and isinstance(built.datamodule, ClassificationData)
    assert built.model.hparams.num_classes == built.datamodule.num_classes


def test_unknown_keys_are_errors():
    result = cli("fit", "--model.init_args.mixr=cutmix", check=False)
    assert result.returncode != 0 and "mixr" in result.stderr


def test_print_config_shows_the_defaults():
    typed = ("--model.init_args.mixer=openmix.mixers.CutMix", "--model.init_args.mixer.alpha=0.3")
    printed = yaml.safe_load(cli("fit", *typed, "--print_config").stdout)
    mixer = printed["model"]["init_args"]["mixer"]  # a typed mixer shows every argument of its class
    arguments = {"alpha": 0.3, "minmax": None, "mode": "batch", "pairing": "random", "inplace": False}
    assert mixer == {"class_path": "openmix.mixers.CutMix", "init_args": arguments}
    assert printed["model"]["class_path"] == "openmix.lightning.MixClassifier"
    assert printed["model"]["init_args"]["optimizer"]["class_path"] == "openmix.lightning.SGD"
    assert printed["data"]["class_path"] == "openmix.data.FashionMNISTData"
    assert printed["checkpoint"]["save_last"] is True


def test_list_prints_every_mixer(capsys):
    main(["list"])
    printed = capsys.readouterr().out
    import openmix

    for name in openmix.list_mixers():
        assert name in printed
    assert "arxiv.org" in printed and "attentivemix  [needs: model]" in printed and "acts on: inputs" in printed


@needs_fmnist
def test_show_writes_a_png(tmp_path):
    out = tmp_path / "cutmix.png"
    main(["show", "cutmix", "fmix", "--num", "4", "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit):
        main(["show", "cutmix", "--data", "NoSuchData", "--out", str(out)])


@needs_fmnist
@pytest.mark.slow
def test_tensorboard_and_offline_wandb_loggers(tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    loggers = (
        f'[{{"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {{"save_dir": "{tmp_path}"}}}},'
        f' {{"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": {{"save_dir": "{tmp_path}",'
        ' "project": "openmix-test", "offline": true}}]'
    )
    result = cli(
        "fit",
        *TINY_MODEL,
        *TINY_DATA,
        "--trainer.max_epochs=1",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger={loggers}",
        "--checkpoint.dirpath=" + str(tmp_path / "ckpt"),
        env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"},
    )
    assert result.returncode == 0
    assert list(tmp_path.rglob("events.out.tfevents.*")), "TensorBoard wrote no event file"
    assert list(tmp_path.rglob("offline-run-*")), "wandb wrote no offline run"


@needs_fmnist
@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tmp_path):
    result = cli(
        "fit",
        *TINY_MODEL,
        *TINY_DATA,
        "--trainer.max_epochs=1",
        "--config",
        str(ROOT / "configs/trainer/ddp_cpu.yaml"),
        "--model.init_args.pairing_scope=global",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--checkpoint.dirpath=" + str(tmp_path / "ckpt"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = list(tmp_path.rglob("metrics.csv"))
    assert metrics and any(row.get("val/top1") for row in csv.DictReader(open(metrics[0])))


@needs_fmnist
@pytest.mark.slow
def test_predict_from_a_checkpoint(tmp_path):
    """(validate and test of a checkpoint: test_evaluating_a_run_writes_beside_it and the docs' commands)"""
    args = [*TINY_MODEL, *TINY_DATA, f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"]
    cli("fit", *args, "--trainer.max_epochs=1", f"--checkpoint.dirpath={tmp_path / 'ckpt'}")
    checkpoint = tmp_path / "ckpt" / "last.ckpt"
    result = cli("predict", *args, f"--ckpt_path={checkpoint}", check=False)
    assert result.returncode == 0, result.stderr[-1500:]


MODEL_CLASSES = [
    "openmix.lightning.MixClassifier",
    "openmix.lightning.AutoMixClassifier",
    "openmix.lightning.AdAutoMixClassifier",
]


def _built(args: list[str]):
    return run_lightning([*args, "--trainer.logger=false"], run=False).model


@pytest.mark.parametrize("class_path", MODEL_CLASSES)
def test_cli_builds_each_model_class_as_its_constructor_does(class_path):
    """One source of defaults: `--model X` with no other argument gives X's own defaults, not those of the default
    model class (jsonargparse carries values over when the class changes)."""
    import importlib

    module, name = class_path.rsplit(".", 1)
    model_class = getattr(importlib.import_module(module), name)
    tiny = {"backbone": "resnet10t", "backbone_kwargs": {"channels": [8, 8, 8, 8], "stem_width": 8}}
    cli_model = _built(
        [
            f"--model={class_path}",
            "--model.init_args.backbone=resnet10t",
            "--model.init_args.backbone_kwargs={channels: [8, 8, 8, 8], stem_width: 8}",
        ]
    )
    direct = model_class(**tiny, num_classes=10, in_chans=1)
    assert type(cli_model) is model_class
    assert repr(cli_model.mixer) == repr(direct.mixer)
    skip = ("optimizer", "scheduler")  # factories, compared through their built objects elsewhere
    cli_hparams = {k: v for k, v in cli_model.hparams.items() if k not in skip and k[0] != "_"}
    direct_hparams = {k: v for k, v in direct.hparams.items() if k not in skip}
    if model_class is not MixClassifier:  # a fixed argument of the subclass (AutoMix's mixer) is not a CLI option
        direct_hparams = {k: v for k, v in direct_hparams.items() if k in cli_hparams}
    assert yaml.safe_dump(cli_hparams) == yaml.safe_dump(direct_hparams)


@pytest.mark.parametrize("name", ["cutmix", "fmix", "randomchoice", "resizemix", "saliencymix", "mixup"])
def test_cli_builds_each_mixer_as_create_mixer_does(name):
    import openmix

    model = _built(["--model.init_args.backbone=resnet10t", f"--model.init_args.mixer={name}"])
    assert repr(model.mixer) == repr(openmix.create_mixer(name))


@needs_fmnist
@pytest.mark.slow
@pytest.mark.parametrize("layout", ["bench"])
def test_evaluating_a_run_writes_beside_it(tmp_path, layout):
    """`openmix validate --config RUN/config.yaml --ckpt_path ...` (the docs' command) leaves the run's
    metrics.csv and config.yaml as they were and logs into RUN/validate/version_N. (The default layout,
    runs/lightning_logs/version_0, is the README's own validate command, which tests/test_docs.py runs; `test` in
    this layout is the grid's test step, checked in tests/test_harness.py.)"""
    common = [*TINY_MODEL, *TINY_DATA, "--trainer.max_epochs=1"]
    if layout == "bench":  # the grid runner's layout: one fixed folder per run
        run = tmp_path / "run"
        location = [
            f"--trainer.default_root_dir={run}",
            f"--trainer.logger.init_args.save_dir={run}",
            "--trainer.logger.init_args.name=",
            "--trainer.logger.init_args.version=",
            f"--checkpoint.dirpath={run / 'checkpoints'}",
        ]
    else:  # the default logger: runs/lightning_logs/version_0 under the root directory
        run = tmp_path / "lightning_logs" / "version_0"
        location = [f"--trainer.default_root_dir={tmp_path}"]
    cli("fit", *common, *location)
    before = {name: (run / name).read_text() for name in ("metrics.csv", "config.yaml")}
    for command in ("validate",):
        result = cli(command, "--config", str(run / "config.yaml"), f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}")
        assert result.returncode == 0
        log = run / command / "version_0" / "metrics.csv"
        stage = "val" if command == "validate" else "test"
        assert log.is_file() and f"{stage}/top1" in log.read_text()
    assert {name: (run / name).read_text() for name in before} == before
    assert sorted(p.name for p in run.parent.iterdir()) == sorted(["run"] if layout == "bench" else ["version_0"])


def _imports_after(*argv: str) -> tuple[set[str], subprocess.CompletedProcess]:
    """Run `openmix *argv` in a fresh interpreter; return which heavy packages it imported."""
    code = (
        "import sys\nfrom openmix.cli import main\n"
        f"try:\n    main({list(argv)!r})\nexcept SystemExit:\n    pass\n"
        "print('IMPORTED', sorted(m for m in ('torch', 'lightning', 'scipy', 'timm') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    line = next(line for line in result.stdout.splitlines() if line.startswith("IMPORTED"))
    return set(yaml.safe_load(line.split(" ", 1)[1])), result


@pytest.mark.parametrize(
    "argv, allowed",
    [(["--help"], set()), (["report", "/nonexistent"], set()), (["bench", "--help"], set()), (["list"], {"torch"})],
    ids=["help", "report", "bench-help", "list"],
)
def test_verbs_that_do_not_train_do_not_import_lightning(argv, allowed):
    """Start-up: `openmix --help`, `report` and `bench --help` need neither torch nor Lightning; `list` only torch."""
    imported, _ = _imports_after(*argv)
    assert imported <= allowed, imported


def test_list_says_when_nothing_matches():
    result = cli("list", "nosuch*", check=False)
    assert result.returncode == 2 and "no mixer matches 'nosuch*'" in result.stderr


def test_help_lists_every_verb():
    result = cli("--help")
    for verb in ("fit", "validate", "test", "predict", "list", "show", "bench", "report"):
        assert f"\n  {verb} " in result.stdout
    unknown = cli("fitt", check=False)
    assert unknown.returncode == 2 and "did you mean 'fit'" in unknown.stderr


def test_show_refuses_what_it_cannot_draw(tmp_path):
    for argv, message in ((["automix"], "learned during training"), (["cutmix", "--num", "0"], "--num must be")):
        result = cli("show", *argv, "--out", str(tmp_path / "x.png"), check=False)
        assert result.returncode == 2 and message in result.stderr
        assert not (tmp_path / "x.png").exists()


def test_show_uses_each_mixers_own_mode():
    import torch

    from openmix.viz import mix_with

    images, labels = torch.rand(4, 1, 8, 8), torch.arange(4)
    out = mix_with("cutmix", images, labels, None, seed=0)
    assert out.mask.shape[0] == 1  # cutmix's own default is one box per batch
    assert mix_with("cutmix", images, labels, "elem", seed=0).mask.shape[0] == 4


def test_show_draws_every_method_that_is_not_learned():
    """Every registered method draws, its needs computed by the stand-in network through the trainer's function."""
    import matplotlib.pyplot as plt
    import torch

    import openmix
    from openmix.viz import render_grid

    names = [name for name in openmix.list_mixers() if not openmix.get_mixer_entry(name).learned]
    images, labels = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2])
    figure = render_grid(images, labels, names, mode="elem", seed=0)
    assert len(figure.axes) == 3 * len(names)
    plt.close(figure)


def test_bench_dry_run_prints_commands_a_shell_can_run(tmp_path):
    import shlex

    from openmix.bench import load_grid
    from openmix.bench.runner import command, run_directory

    spec = {"name": "g", "base": [str(ROOT / "configs/trainer/cpu_quick.yaml")], "args": {"trainer.max_epochs": 1}}
    spec["axes"] = {"mixer": {"cut mix": {"model.init_args.mixer": "cutmix"}}}  # a label with a space
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text(yaml.safe_dump(spec))
    result = cli("bench", str(grid_file), "--runs-dir", str(tmp_path / "runs"), "--dry-run")
    grid = load_grid(grid_file)
    (run,) = grid.runs()
    printed = [line for line in result.stdout.splitlines() if "openmix.cli" in line]
    assert [shlex.split(line) for line in printed] == [command(grid, run, run_directory(tmp_path / "runs", grid, run))]


@needs_fmnist
@pytest.mark.slow
def test_a_normal_fit_prints_no_warning_or_advertisement(tmp_path):
    result = cli("fit", *TINY_MODEL, *TINY_DATA, "--trainer.max_epochs=1", f"--trainer.default_root_dir={tmp_path}")
    output = result.stdout + result.stderr
    for noise in ("litlogger", "args parameter is intended", "LeafSpec", "Warning:"):
        assert noise not in output, noise


def test_a_model_argument_the_data_sets_is_refused(tmp_path):
    config = tmp_path / "model.yaml"
    config.write_text("model:\n  init_args:\n    num_classes: 5\n")
    for args in (["--model.init_args.num_classes=5"], ["--config", str(config)]):
        with pytest.raises(SystemExit, match="set by the data module"):
            run_lightning(["fit", *args, "--print_config"])


def test_a_misspelt_mixer_is_one_clear_line(tmp_path):
    result = cli("fit", "--model.init_args.mixer=cutmx", f"--trainer.default_root_dir={tmp_path}", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "unknown mixer 'cutmx'; did you mean 'cutmix'" in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04truncated"], ids=["empty", "text", "cut"])
def test_a_bad_checkpoint_file_is_named(tmp_path, content):
    from openmix.lightning.cli import check_checkpoint_file

    checkpoint = tmp_path / "last.ckpt"
    checkpoint.write_bytes(content)
    with pytest.raises(SystemExit, match=f"{checkpoint} is not a PyTorch checkpoint"):
        check_checkpoint_file(str(checkpoint))
    if content == b"":  # and as a user meets it: one line, before Lightning reads the file
        result = cli("validate", f"--ckpt_path={checkpoint}", "--trainer.logger=false", check=False)
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert f"{checkpoint} is not a PyTorch checkpoint" in result.stderr


@needs_fmnist
@pytest.mark.slow
def test_methods_of_every_hook_point_train_from_the_cli_by_their_short_names(tmp_path):
    """A hidden-state mixer on a CNN and an attention-labelled one on a ViT, by ``--model.init_args.mixer NAME``."""
    vit = [
        "--model.init_args.backbone=vit_tiny_patch16_224",
        "--model.init_args.backbone_kwargs={img_size: 28, patch_size: 7, depth: 1, embed_dim: 16, num_heads: 2}",
    ]
    for name, model in (("manifoldmix", TINY_MODEL), ("transmix", vit)):
        root = tmp_path / name
        cli("fit", *model, *TINY_DATA, f"--model.init_args.mixer={name}", "--trainer.max_steps=3",
            "--trainer.limit_val_batches=1", f"--trainer.default_root_dir={root}")  # fmt: skip
        (metrics,) = root.glob("*/version_*/metrics.csv")
        assert "train/loss" in metrics.read_text()


def test_a_backbone_that_cannot_give_what_the_mixer_needs_is_one_clear_line(tmp_path):
    args = ["--model.init_args.mixer=transmix", f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"]
    with pytest.raises(SystemExit, match="mixer TransMix needs 'attention', which this backbone cannot give"):
        run_lightning(args, run=False)


@needs_fmnist
@pytest.mark.slow
def test_saliency_methods_train_from_the_cli_by_short_name_and_by_config(tmp_path):
    """The saliency need reaches the mixer in a real fit: PuzzleMix by ``--model.init_args.mixer NAME`` and from its
    Fashion-MNIST config (normalisation and grids as written there)."""
    config = ROOT / "configs/mixers/fashion_mnist/puzzlemix.yaml"
    for label, choice in (("name", ["--model.init_args.mixer=puzzlemix"]), ("config", [f"--config={config}"])):
        root = tmp_path / label
        cli("fit", *TINY_MODEL, *TINY_DATA, *choice, "--trainer.max_steps=2", "--trainer.limit_val_batches=1",
            f"--trainer.default_root_dir={root}")  # fmt: skip
        (metrics,) = root.glob("*/version_*/metrics.csv")
        assert "train/loss" in metrics.read_text()
