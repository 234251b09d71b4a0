"""The run folder's rules, unit by unit: which folder `--ckpt_path last` continues, the log file's atomic rewrite,
the logger order, a schedule that cannot be extended."""

from __future__ import annotations

import csv

import pytest
import torch
from jsonargparse import Namespace

from openmix.lightning.cli import put_run_logger_first, resume_into_run_folder
from openmix.lightning.loggers import ResumableWriter
from openmix.lightning.optim import WarmupCosineLR


def fit_config(root, ckpt_path="last"):
    logger = Namespace(class_path="openmix.lightning.loggers.RunLogger", init_args=Namespace())
    trainer = Namespace(logger=logger, default_root_dir=str(root))
    return Namespace(trainer=trainer, ckpt_path=ckpt_path, checkpoint=Namespace(dirpath=None))


def test_last_continues_the_newest_folder_that_holds_a_checkpoint(tmp_path):
    versions = tmp_path / "lightning_logs"
    (versions / "version_0" / "checkpoints").mkdir(parents=True)
    (versions / "version_0" / "checkpoints" / "last.ckpt").write_bytes(b"")
    (versions / "version_1" / "validate").mkdir(parents=True)  # e.g. an evaluation or another logger's folder
    config = fit_config(tmp_path)
    assert resume_into_run_folder(config) == versions / "version_0"
    assert config.trainer.logger.init_args.version == 0 and config.ckpt_path == "last"


def test_last_without_any_checkpoint_starts_the_newest_folder_over(tmp_path):
    (tmp_path / "lightning_logs" / "version_0").mkdir(parents=True)
    config = fit_config(tmp_path)
    assert resume_into_run_folder(config) is None
    assert config.trainer.logger.init_args.version == 0 and config.ckpt_path is None


def test_the_run_logger_goes_first_so_checkpoints_share_its_folder():
    board = Namespace(class_path="lightning.pytorch.loggers.TensorBoardLogger", init_args=Namespace())
    run = Namespace(class_path="openmix.lightning.loggers.RunLogger", init_args=Namespace())
    trainer = Namespace(logger=[board, run])
    put_run_logger_first(trainer)
    assert [spec.class_path.rsplit(".", 1)[1] for spec in trainer.logger] == ["RunLogger", "TensorBoardLogger"]


def test_a_header_rewrite_never_leaves_the_log_empty(tmp_path, monkeypatch):
    writer = ResumableWriter(str(tmp_path))
    writer.log_metrics({"epoch": 0, "val/top1": 0.5}, step=7)
    writer.save()
    before = (tmp_path / "metrics.csv").read_text()
    writer.log_metrics({"epoch": 0, "train/new_column": 1.0}, step=7)  # a new column: the file is rewritten

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies in the middle of writing the rows

    monkeypatch.setattr(csv.DictWriter, "writerows", killed)
    with pytest.raises(KeyboardInterrupt):
        writer.save()
    assert (tmp_path / "metrics.csv").read_text() == before


def test_a_cosine_schedule_cannot_be_stretched_on_resume():
    parameter = torch.nn.Parameter(torch.zeros(1))
    finished = WarmupCosineLR(torch.optim.SGD([parameter], lr=0.1))
    finished.set_total_steps(24, 8)
    state = finished.state_dict()
    longer = WarmupCosineLR(torch.optim.SGD([parameter], lr=0.1))
    longer.set_total_steps(32, 8)
    with pytest.raises(ValueError, match="covers 24 steps .* this run has 32"):
        longer.load_state_dict(state)
    same = WarmupCosineLR(torch.optim.SGD([parameter], lr=0.1))
    same.set_total_steps(24, 8)
    same.load_state_dict(state)  # the run it was part of: fine


def test_a_checkpoint_is_replaced_whole_or_not_at_all(tmp_path):
    """A process killed while saving leaves the previous last.ckpt, not a truncated one."""
    from types import SimpleNamespace

    from openmix.lightning.callbacks import RunCheckpoint

    target = tmp_path / "last.ckpt"
    target.write_bytes(b"previous checkpoint")

    def killed_while_saving(path, weights_only=False):
        with open(path, "wb") as stream:
            stream.write(b"half of it")
        raise KeyboardInterrupt

    strategy = SimpleNamespace(barrier=lambda *a: None)
    trainer = SimpleNamespace(save_checkpoint=killed_while_saving, is_global_zero=True, strategy=strategy)
    with pytest.raises(KeyboardInterrupt):
        RunCheckpoint(dirpath=str(tmp_path))._save_checkpoint(trainer, str(target))
    assert target.read_bytes() == b"previous checkpoint"


def test_last_with_no_run_under_the_root_is_an_error_not_a_new_run(tmp_path):
    with pytest.raises(SystemExit, match="no run to resume under"):
        resume_into_run_folder(fit_config(tmp_path))
