"""Training: exact resume, NaN handling, the embedding cache, config errors, DDP gradient sync."""
from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from saom_core import precision
from saom_core.cli import main as cli_main
from saom_core.errors import ConfigError, SaomError
from saom_core.model.architectures import get_config
from saom_core.model.checkpoint import load_model, read_checkpoint
from saom_core.model.saom import build_model
from saom_core.train import trainer as trainer_module
from saom_core.train.embedding_cache import EncoderSplit, encoder_fingerprint
from saom_core.train.forward import TrainForward
from saom_core.train.recipe import load_train_config
from saom_core.train.trainer import LearningRateSchedule, Trainer, TrainingError, validation_score


def config(data: Path, *overrides: str):
    return load_train_config(
        None,
        [
            "model.config=test", f"data.root={data}", "data.hflip=true", "data.negatives_per_frame=2",
            "train.max_steps=6", "train.frames_per_step=2", "train.trainable=[all]", "train.device=cpu",
            "train.checkpoint_every=3", "train.log_every=1", "train.val_max_frames=4", "train.threads=1",
            "train.cache_embeddings=false", "optim.warmup_steps=2", *overrides,
        ],
    )


def weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["state_dict"]


def test_resume_after_a_crash_continues_exactly(rect_dataset, tmp_path, monkeypatch):
    straight = Trainer(config(rect_dataset), tmp_path / "straight", progress=False).fit()

    original = Trainer.train_step
    calls = {"n": 0}

    def crash_on_step_5(self, frames):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated crash")
        return original(self, frames)

    monkeypatch.setattr(Trainer, "train_step", crash_on_step_5)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config(rect_dataset), tmp_path / "crashed", progress=False).fit()
    monkeypatch.setattr(Trainer, "train_step", original)
    assert read_checkpoint(tmp_path / "crashed/checkpoints/last.pt")["train_state"]["step"] == 3

    resumed = Trainer(config(rect_dataset), tmp_path / "crashed", resume=True, progress=False).fit()
    assert resumed.steps == straight.steps == 6
    a, b = weights(straight.last_checkpoint), weights(resumed.last_checkpoint)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
    rows = (tmp_path / "crashed/metrics.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(1, 7)), "log rows are neither lost nor doubled"


def test_outputs_of_a_run(rect_dataset, tmp_path):
    result = Trainer(config(rect_dataset), tmp_path / "run", progress=False).fit()
    run = tmp_path / "run"
    files = (
        "config.yaml", "metrics.csv", "val_history.json",
        "checkpoints/init.pt", "checkpoints/last.pt", "checkpoints/best.pt",
    )
    for name in files:
        assert (run / name).exists(), name
    assert list((run / "tb").iterdir()), "TensorBoard events written"
    model = load_model(result.best_checkpoint)
    assert model.class_list is not None and model.class_list.names == ["Mug", "Table", "Ball"]
    init, last = weights(run / "checkpoints/init.pt"), weights(result.last_checkpoint)
    assert any(not torch.equal(init[k], last[k]) for k in init), "training changed the weights"


def test_refuses_to_overwrite_a_run_and_to_resume_nothing(rect_dataset, tmp_path):
    Trainer(config(rect_dataset, "train.max_steps=1"), tmp_path / "run", progress=False).fit()
    with pytest.raises(SaomError, match="already holds a training run"):
        Trainer(config(rect_dataset), tmp_path / "run", progress=False)
    with pytest.raises(SaomError, match="nothing to resume"):
        Trainer(config(rect_dataset), tmp_path / "empty", resume=True, progress=False)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(rect_dataset, tmp_path, monkeypatch):
    real_loss = trainer_module.saom_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        terms = real_loss(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 5:
            terms.total = terms.total * float("nan")
        return terms

    monkeypatch.setattr(trainer_module, "saom_loss", poisoned)
    with pytest.raises(TrainingError, match="non-finite loss at step 5.*last good checkpoint"):
        Trainer(config(rect_dataset), tmp_path / "run", progress=False).fit()
    state = read_checkpoint(tmp_path / "run/checkpoints/last.pt")
    assert state["train_state"]["step"] == 3
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def test_frozen_encoder_uses_the_embedding_cache(rect_dataset, tmp_path):
    cache = tmp_path / "cache"
    overrides = (
        "train.trainable=[mask_decoder, classifier]", "train.cache_embeddings=true", f"train.cache_dir={cache}",
    )
    Trainer(config(rect_dataset, *overrides), tmp_path / "a", progress=False).fit()
    files = sorted(cache.rglob("*.pt"))
    assert files, "embeddings were cached"
    stamps = {f: f.stat().st_mtime_ns for f in files}
    Trainer(config(rect_dataset, *overrides), tmp_path / "b", progress=False).fit()
    assert {f: f.stat().st_mtime_ns for f in files} == stamps, "a second run reuses the cache"
    fingerprints = {f.parent.parent.name for f in files}
    assert len(fingerprints) == 1


def _freeze_all_but(model, prefixes):
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(prefixes))


def test_encoder_split_runs_the_trained_rest_on_the_frozen_part_s_output():
    """Frozen blocks once, the trained last block and neck each step: together the very encoder."""
    model = build_model(get_config("test"))
    model.init_from_scratch()
    encoder = model.image_encoder
    _freeze_all_but(model, ("image_encoder.blocks.1", "image_encoder.neck", "mask_decoder"))
    split = EncoderSplit.of(encoder)
    assert split == EncoderSplit(frozen_blocks=1, whole=False)
    prepared = torch.randn(2, 3, model.config.image_size, model.config.image_size)
    with torch.no_grad():
        tokens = split.frozen_output(encoder, prepared)
        assert tokens.shape[-1] == model.config.encoder_embed_dim  # (B, g, g, C) tokens, not the embedding
        torch.testing.assert_close(split.trained_output(encoder, tokens), model.encode(prepared))

    _freeze_all_but(model, ("mask_decoder",))
    assert EncoderSplit.of(encoder) == EncoderSplit(frozen_blocks=len(encoder.blocks), whole=True)
    _freeze_all_but(model, ("image_encoder.neck",))
    assert EncoderSplit.of(encoder) == EncoderSplit(frozen_blocks=len(encoder.blocks), whole=False)
    _freeze_all_but(model, ("image_encoder.blocks.0",))
    assert EncoderSplit.of(encoder) is None, "a frozen block after a trained one: nothing to cache"
    _freeze_all_but(model, ("image_encoder.patch_embed", "image_encoder.blocks", "image_encoder.neck"))
    assert EncoderSplit.of(encoder) is None


def test_cache_key_covers_the_frozen_part_only():
    model = build_model(get_config("test"))
    _freeze_all_but(model, ("image_encoder.blocks.1", "image_encoder.neck"))
    split = EncoderSplit.of(model.image_encoder)
    assert split is not None
    key = encoder_fingerprint(model, split)
    assert key != encoder_fingerprint(model, EncoderSplit(len(model.image_encoder.blocks), True))
    with torch.no_grad():
        model.image_encoder.blocks[1].mlp.lin1.weight.add_(1.0)  # trained: the cached tokens stay valid
        assert encoder_fingerprint(model, split) == key
        model.image_encoder.blocks[0].mlp.lin1.weight.add_(1.0)  # frozen: a fresh cache
        assert encoder_fingerprint(model, split) != key


def test_last_encoder_block_trains_on_cached_tokens(rect_dataset, tmp_path):
    cache = tmp_path / "cache"
    overrides = (
        "train.trainable=[mask_decoder, classifier, image_encoder.blocks.1, image_encoder.neck]",
        "train.cache_embeddings=true", f"train.cache_dir={cache}",
    )
    trainer = Trainer(config(rect_dataset, *overrides), tmp_path / "a", progress=False)
    assert trainer.encoder_split == EncoderSplit(frozen_blocks=1, whole=False) and not trainer.hflip
    result = trainer.fit()
    assert len(list(cache.rglob("*.pt"))) > 0, "the frozen block's tokens were cached"
    before, after = weights(tmp_path / "a/checkpoints/init.pt"), weights(result.last_checkpoint)
    changed = {k for k in before if k.startswith("image_encoder.") and not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("image_encoder.blocks.1.", "image_encoder.neck.")) for k in changed)


def test_time_budget_stops_training_validates_and_counts_over_resumes(rect_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "_elapsed", lambda self: 10.0 * self.step)  # a clock that ticks 10 s a step
    result = Trainer(config(rect_dataset, "train.max_seconds=25"), tmp_path / "run", progress=False).fit()
    assert result.steps == 3 and result.best_checkpoint is not None
    history = (tmp_path / "run/val_history.json").read_text()
    assert '"step": 3' in history, "the final weights were validated"
    assert read_checkpoint(result.last_checkpoint)["train_state"]["elapsed_s"] == 30.0
    resumed = Trainer(config(rect_dataset, "train.max_seconds=25"), tmp_path / "run", resume=True, progress=False).fit()
    assert resumed.steps == 3, "a used-up budget stays used up after a resume"


def test_validation_score_counts_the_labels_of_a_model_with_classes():
    assert validation_score({"mIoU": 0.5, "mAcc": 0.7, "class_accuracy": 0.2}) == pytest.approx(0.1)
    assert validation_score({"mIoU": 0.5, "mAcc": 0.7, "class_accuracy": None}) == 0.5  # vanilla SAM
    assert validation_score({"mIoU": None, "mAcc": None, "class_accuracy": None}) is None  # no val frames


def test_best_checkpoint_is_the_best_validation_score_not_the_best_miou(rect_dataset, tmp_path, monkeypatch):
    """A first validation with the best mIoU but poor labels must not be the run's best.pt."""
    scripted = iter([(0.50, 0.20), (0.45, 0.80), (0.40, 0.50)] * 10)
    seen: list[tuple[float, dict[str, torch.Tensor]]] = []

    def validate(self):
        miou, accuracy = next(scripted)
        seen.append((miou * accuracy, {k: v.detach().clone() for k, v in self.model.state_dict().items()}))
        return {"mIoU": miou, "mAcc": miou, "class_accuracy": accuracy}

    monkeypatch.setattr(Trainer, "validate", validate)
    cfg = config(rect_dataset, "train.max_steps=8", "train.frames_per_step=6")
    result = Trainer(cfg, tmp_path / "run", progress=False).fit()
    assert len(seen) >= 2, "the test needs the second, better-labelled validation"
    score, expected = max(seen, key=lambda item: item[0])
    assert result.best_score == pytest.approx(score)
    best = weights(result.best_checkpoint)
    assert all(torch.equal(best[k], expected[k].to(best[k].dtype)) for k in expected)
    first = seen[0][1]
    assert any(not torch.equal(best[k], first[k].to(best[k].dtype)) for k in first), "best.pt is not the first"


def test_a_time_budget_anneals_the_learning_rate_by_its_end(rect_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "_elapsed", lambda self: 10.0 * self.step)
    cfg = config(rect_dataset, "train.max_steps=1000", "train.max_seconds=60", "optim.min_lr_ratio=0.1")
    result = Trainer(cfg, tmp_path / "run", progress=False).fit()
    assert result.steps == 6
    rates = [float(row.split(",")[2]) for row in (tmp_path / "run/metrics.csv").read_text().splitlines()[1:]]
    assert rates[1] == pytest.approx(cfg.optim.lr), "warm-up ends at the base rate"
    assert rates[1:] == sorted(rates[1:], reverse=True)
    assert rates[-1] == pytest.approx(cfg.optim.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 50 / 60))))


def test_without_a_time_budget_the_schedule_follows_steps():
    schedule = LearningRateSchedule(warmup=2, max_steps=12, max_seconds=None, min_ratio=0.0)
    assert schedule.factor(0, 1e9) == 0.5 and schedule.factor(2, 1e9) == 1.0
    assert schedule.factor(7, 1e9) == pytest.approx(0.5) and schedule.factor(12, 0.0) == pytest.approx(0.0)
    timed = LearningRateSchedule(warmup=2, max_steps=12, max_seconds=100.0, min_ratio=0.0)
    assert timed.factor(3, 50.0) == pytest.approx(0.5), "the time budget ends first"
    assert timed.factor(7, 1.0) == pytest.approx(0.5), "the step budget ends first"


@pytest.mark.parametrize("cached", [False, True])
def test_crop_head_trains_with_and_without_the_embedding_cache(rect_dataset, tmp_path, cached):
    overrides = ["model.head_input=mask_pool", "model.crop_classifier=true"]
    if cached:
        overrides += [
            "train.trainable=[mask_decoder, classifier]", "train.cache_embeddings=true",
            f"train.cache_dir={tmp_path / 'cache'}",
        ]
    result = Trainer(config(rect_dataset, *overrides), tmp_path / "run", progress=False).fit()
    init, last = weights(tmp_path / "run/checkpoints/init.pt"), weights(result.last_checkpoint)
    crop_keys = [k for k in init if k.startswith("crop_classifier.")]
    assert any(not torch.equal(init[k], last[k]) for k in crop_keys), "the crop CNN trained"
    assert load_model(result.last_checkpoint).crop_classifier is not None
    rows = (tmp_path / "run/metrics.csv").read_text().splitlines()
    ce_crop = [float(r.split(",")[7]) for r in rows[1:]]
    assert rows[0].split(",")[7] == "ce_crop" and all(v > 0 for v in ce_crop)


def test_cli_config_errors_are_one_line(rect_dataset, tmp_path, capsys):
    code = cli_main([
        "train", "--config", "config/train_tiny.yaml", "--data", str(rect_dataset), "--out", str(tmp_path / "r"),
        "train.max_step=3",
    ])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "unknown key 'max_step' (did you mean 'max_steps'?)" in err


def test_cpu_mixed_precision_follows_the_cpu(rect_dataset, tmp_path, monkeypatch):
    """auto: bf16 only where it measured faster for training on this CPU; an explicit choice is obeyed or refused."""
    for pays, expected in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(precision, "cpu_bf16_pays", lambda workload, pays=pays: pays and workload == "train")
        assert Trainer(config(rect_dataset), tmp_path / f"auto_{pays}", progress=False).amp_dtype == expected
    assert (
        Trainer(config(rect_dataset, "train.amp=bf16"), tmp_path / "bf16", progress=False).amp_dtype == torch.bfloat16
    )
    assert Trainer(config(rect_dataset, "train.amp=off"), tmp_path / "off", progress=False).amp_dtype is None
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        Trainer(config(rect_dataset, "train.amp=fp16"), tmp_path / "fp16", progress=False)


def test_a_bare_off_in_yaml_means_the_word(rect_dataset):
    """PyYAML reads `off` as False; `train.amp=off` must still select the "off" option."""
    assert config(rect_dataset, "train.amp=off").train.amp == "off"
    with pytest.raises(ConfigError, match="not one of"):
        config(rect_dataset, "train.amp=yes")


# ---- DDP ---------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, data: str, out: str, mode: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    cfg = config(Path(data), "train.max_steps=3", "train.checkpoint_every=100")
    trainer = Trainer(cfg, Path(out) / mode, progress=False)
    if mode == "module":
        # The authors' mistake: call the wrapped module directly, bypassing DDP's forward.
        ddp = trainer.forward_module
        trainer.forward_module = ddp.module
        trainer.forward_module.train()
        for step in range(3):
            batch = [trainer.frames[(2 * step + rank) % len(trainer.frames)]]
            trainer.train_step(batch)
        torch.distributed.destroy_process_group()
    else:
        trainer.fit()
    torch.save(trainer.model.state_dict(), Path(out) / f"{mode}_rank{rank}.pt")


@pytest.mark.parametrize("mode", ["ddp", "module"])
def test_ddp_replicas_stay_identical_only_through_ddp_forward(rect_dataset, tmp_path, mode):
    mp.spawn(_ddp_worker, args=(_free_port(), str(rect_dataset), str(tmp_path), mode), nprocs=2, join=True)
    a = torch.load(tmp_path / f"{mode}_rank0.pt")
    b = torch.load(tmp_path / f"{mode}_rank1.pt")
    identical = all(torch.equal(a[k], b[k]) for k in a)
    if mode == "ddp":
        assert identical, "DDP replicas diverged"
    else:
        assert not identical, "bypassing DDP's forward must skip the gradient all-reduce"


def test_train_forward_is_one_module_call():
    assert issubclass(TrainForward, torch.nn.Module)
