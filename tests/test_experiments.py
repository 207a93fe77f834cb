"""Every preset in conf/experiments/ composes, alone and with the command its header documents."""

from __future__ import annotations

import logging
import re
import shlex
from pathlib import Path

import pytest
from compose import compose_config, needs_data
from omegaconf import OmegaConf

from bench.config import TaskConfig
from bench.tasks import make_task

PRESETS = sorted((Path(__file__).resolve().parents[1] / "conf" / "experiments").glob("*.yaml"))


def documented_overrides(preset: Path) -> list[list[str]]:
    """The overrides of the `python -m bench ...` line in the preset's header, one list per multirun job."""
    match = re.search(r"^#\s+python -m bench (.+)$", preset.read_text(), flags=re.MULTILINE)
    assert match, f"{preset.name} does not open with the command that runs it"
    args = [arg for arg in shlex.split(match.group(1)) if arg != "-m"]
    jobs: list[list[str]] = [[]]
    for arg in args:  # expand `key=a,b` sweeps (not list values) into one job per value
        key, _, value = arg.partition("=")
        values = value.split(",") if "," in value and not value.startswith("[") else [value]
        jobs = [job + [f"{key}={v}"] for job in jobs for v in values]
    return jobs


def test_there_are_presets() -> None:
    assert {"baseline_all_tasks", "cd_smollm2", "rpkd_smollm2"} <= {p.stem for p in PRESETS}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_composes_with_its_documented_command(preset: Path) -> None:
    for overrides in documented_overrides(preset):
        assert f"+experiments={preset.stem}" in overrides
        config = compose_config(overrides)
        assert config.experiment == preset.stem


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_alone_selects_its_method(preset: Path) -> None:
    config = compose_config([f"+experiments={preset.stem}"])
    assert config.method.name in preset.stem or preset.stem.startswith("baseline")


def test_command_line_groups_win_over_the_preset() -> None:
    config = compose_config(["+experiments=cd_smollm2", "task=multiarith", "student=tiny"])
    assert (config.method.name, config.task.name, config.student.name) == ("cd", "multiarith", "tiny")


def test_cd_humaneval_evaluates_the_whole_test_split() -> None:
    """The paper's HumanEval table is over every test item, not conf/config.yaml's 50-item quick slice."""
    assert compose_config(["+experiments=cd_humaneval"]).task.limit is None


@needs_data
def test_cd_humaneval_test_items_are_the_full_test_split() -> None:
    from omegaconf import OmegaConf

    from bench.tasks import make_task

    config = compose_config(["+experiments=cd_humaneval"])
    task = make_task(OmegaConf.to_object(config.task))
    assert len(task.examples(config.task.eval_split, limit=config.task.limit)) == len(task.splits.test) == 100


def test_rpkd_paper_preset_composes_to_every_published_setting() -> None:
    """Each value of the public RP-KD code (alonso130r/knowledge-distillation, */distill.ipynb), one by one."""
    config = compose_config(["+experiments=rpkd_gsm8k_paper"])
    method, train, lora = config.method, config.method.train, config.method.lora
    assert (config.student.model_id, config.task.name) == ("meta-llama/Llama-3.1-8B-Instruct", "gsm8k")
    assert config.task.hub_config == "socratic"  # load_dataset("openai/gsm8k", "socratic")
    assert method.train_limit == 2638 and config.task.validation_size == 0  # train.select(range(2638))
    assert config.task.limit is None  # the whole 1,319-item test set
    assert {"no_train", "gt_finetune", "base", "teacher", "ground_truth", "confidence"} <= set(method.arms)
    # LoRA
    assert (lora.r, lora.alpha) == (4, 8)
    assert sorted(lora.target_modules) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert lora.dropout == 0.1
    assert method.lora_dropout_by_arm == {"base": 0.2}  # base-KD/distill.ipynb: lora_dropout=0.2
    # optimiser
    assert train.optimizer == "sgd"
    assert train.lr == 5e-6
    assert train.momentum == 0.9
    assert train.weight_decay == 0.01
    assert train.scheduler == "cosine"
    assert train.scheduler_t_max is None  # = number of training items = 2638, stepped every batch-1 step
    assert train.max_grad_norm is None  # no clipping
    assert train.batch_size == 1 and train.grad_accum == 1
    assert train.epochs == 2
    assert train.max_length == 256
    # loss
    assert method.temperature == pytest.approx(5.942267, abs=1e-6)
    assert method.alpha == pytest.approx(0.609335, abs=1e-6)
    assert method.kl_direction == "reverse"  # F.kl_div(teacher log-probs, student probs) = KL(student || teacher)
    # teacher signal, priming and data order
    assert method.signal == "published"  # raw `priming + question` logits, question-only student, position-wise
    assert method.priming_wording == "published"  # inference_gsm8k-prompt{1,2,3}.ipynb strings, raw prefix
    assert train.shuffle is False  # for batch_idx in range(len(data)): dataset order, both epochs


def test_rpkd_paper_preset_on_socratic_and_main() -> None:
    assert compose_config(["+experiments=rpkd_gsm8k_paper", "task.hub_config=socratic"]).task.hub_config == "socratic"
    assert compose_config(["+experiments=rpkd_gsm8k_paper", "task.hub_config=main"]).task.hub_config == "main"


@needs_data
def test_socratic_offline_says_it_falls_back_to_the_local_main_files(caplog: pytest.LogCaptureFixture) -> None:
    composed = compose_config(["+experiments=rpkd_gsm8k_paper", "task.source=local"]).task
    task = make_task(OmegaConf.to_object(composed))  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="bench.tasks.gsm8k"):
        examples = task.examples("train", limit=3)
    assert [e.id for e in examples] == ["gsm8k/train/0", "gsm8k/train/1", "gsm8k/train/2"]
    assert "hub_config=socratic" in caplog.text and "`main` solutions" in caplog.text
    assert task.splits.source.endswith("(main, not socratic)")
    caplog.clear()
    main = make_task(TaskConfig(name="gsm8k", hub_id="openai/gsm8k", hub_config="main", source="local"))
    with caplog.at_level(logging.WARNING, logger="bench.tasks.gsm8k"):
        main.examples("train", limit=1)
    assert "socratic" not in caplog.text  # asking for what the local files hold is not warned about


def test_rpkd_70b_preset_uses_a_same_tokenizer_70b_teacher() -> None:
    config = compose_config(["+experiments=rpkd_gsm8k_70b"])
    assert config.experiment == "rpkd_gsm8k_70b"
    assert (config.teacher.model_id, config.teacher.backend) == ("meta-llama/Llama-3.1-70B-Instruct", "hf")
    assert config.teacher.dtype == "bfloat16"
    assert config.student.model_id == "meta-llama/Llama-3.1-8B-Instruct" and config.method.signal == "published"
    paper = compose_config(["+experiments=rpkd_gsm8k_paper"])
    assert config.method == paper.method and config.task == paper.task  # only the teacher differs
    served = compose_config(["+experiments=rpkd_gsm8k_paper", "teacher=llama31_405b", "method.signal=sequence"])
    assert (served.teacher.backend, served.method.signal) == ("openai", "sequence")


def test_rpkd_smollm2_keeps_its_cpu_recipe() -> None:
    """64 CPU steps: AdamW (the published SGD barely moves a LoRA that fast, see the preset), as it always ran."""
    method = compose_config(["+experiments=rpkd_smollm2"]).method
    train = method.train
    assert (train.optimizer, train.lr, train.scheduler, train.max_grad_norm) == ("adamw", 1e-4, "none", 1.0)
    assert (method.kl_direction, method.topk_tail) == ("forward", "renormalize")


@pytest.mark.parametrize("preset", [p.stem for p in PRESETS if p.stem.startswith("compare_")])
def test_compare_presets_build_their_study(preset: str) -> None:
    """Each head-to-head preset builds its methods (fails on a bad family, signal or arm), seeds RP-KD's training
    from the run's seed, and gives an API teacher only the signal that needs no logits."""
    from bench.methods import make_method

    config = compose_config([f"+experiments={preset}", "seed=2"])
    study = make_method(config.method)
    assert config.method.rpkd.train.seed == 2
    assert study.rpkd and study.cd is not None
    if config.teacher.backend != "hf":
        assert [s.value for s in study.signals] == ["sequence"]


def test_onpolicy_preset_trains_and_tests_on_the_rpkd_signals_items() -> None:
    """On-policy KD is read beside rpkd_signals_smollm2's arms: same test slice, models, train items, optimiser and
    seed."""
    onpolicy = compose_config(["+experiments=onpolicy_smollm2"])
    rpkd = compose_config(["+experiments=rpkd_signals_smollm2"])
    assert onpolicy.method.name == "onpolicy" and onpolicy.task == rpkd.task and onpolicy.task.limit == 100
    assert (onpolicy.student, onpolicy.teacher, onpolicy.seed) == (rpkd.student, rpkd.teacher, rpkd.seed)
    assert onpolicy.method.train_limit == rpkd.method.train_limit == 64
    assert onpolicy.method.train == rpkd.method.train and onpolicy.method.lora == rpkd.method.lora
