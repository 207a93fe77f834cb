"""Several processes training one adapter (torchrun, gloo on this CPU box): the same losses as one process with the
same global batch, rank 0 alone writes, a killed launch resumes bit for bit per rank; and `device_map` loading.

This file is also the worker those launches run (`python -m torch.distributed.run ... test_distributed.py SPEC`):
each rank trains the runs SPEC lists and writes what it saw (loss rows, the files it wrote) to a JSON file of its
own, outside the training folders, for the test to compare.

The tolerances: with LoRA dropout 0 the two runs compute the same function, only in another order. Each rank pads
its half of a batch to its own longest item (other matmul shapes), the loss is a weighted sum of the halves instead
of one mean, and gloo adds the ranks' gradients: float32 reassociation (eps 1.2e-7), carried by the weights into
later steps. Measured over 6 steps: losses of 6-14 differ by at most 2e-6 (1.4e-7 relative), the gradient norm
(a sum of many small products, so relatively less precise) by 7e-6 relative. Allowed: 1e-5 absolute on loss, ce and
kl, 1e-4 relative on the gradient norm, 1e-5 on the final adapter weights; weighting the halves equally instead
(so also counting the weight-0 pass of a short last batch) moves the losses by 2 to 3.6.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from compose import compose_config, isolated, needs_data, only_run_folder

from bench.__main__ import execute
from bench.config import LoRAConfig, ModelConfig, TrainConfig
from bench.training.distributed import World
from bench.training.kd import aligned_sequence, answer_ids, answer_logits, teacher_topk
from bench.training.lora_trainer import LoRATrainer, TrainItem, collate
from bench.training.published import published_item
from bench.training.teacher_logits import TopKCache

REPO = Path(__file__).resolve().parents[2]
LOSS_TOLERANCE = 1e-5  # absolute, on loss / ce / kl; see the module docstring
GRAD_NORM_TOLERANCE = 1e-4  # relative
WEIGHT_TOLERANCE = 1e-5  # absolute, on the adapter's weights after the last step

# Five items of unequal answer lengths, batches of 2: every epoch ends with a batch of one item, so one of two
# ranks gets none of it (it runs a weight-0 pass) and the other ranks' shares are unequal (weighted by tokens).
EXACT = {"optimizer": "sgd", "lr": 0.5, "epochs": 4, "batch_size": 2, "grad_accum": 2, "save_every": 1000,
         "scheduler": "cosine", "max_grad_norm": 1.0, "shuffle": True}
# With dropout, checkpoints at steps 2 and 4 of 6: a kill after step 3 resumes from step 2.
DROPOUT = {"optimizer": "adamw", "lr": 1e-2, "epochs": 2, "batch_size": 2, "grad_accum": 1, "save_every": 2,
           "scheduler": "cosine", "shuffle": True}
RUNS: dict[str, dict[str, Any]] = {
    "aligned": {"train": EXACT, "dropout": 0.0, "signal": "aligned"},
    "published": {"train": EXACT, "dropout": 0.0, "signal": "published"},
    "dropout": {"train": DROPOUT, "dropout": 0.3, "signal": "aligned"},
}
KILLED_AFTER = 3


# ------------------------------------------------------------------ what every rank (and the reference) trains
def train_items(tokenizer, signal: str) -> list:
    pairs = [(f"What is {i} + {i * 7}?", f"{i} + {i * 7} = {8 * i}. " + "So " * i + f"the answer is {8 * i}.")
             for i in range(1, 6)]
    if signal == "published":
        return [published_item(tokenizer, f"ex{i}", question, answer, 128)
                for i, (question, answer) in enumerate(pairs)]
    return [TrainItem(f"ex{i}", aligned_sequence(tokenizer, question, answer_ids(tokenizer, answer), 128))
            for i, (question, answer) in enumerate(pairs)]


def teacher_signal(items: list[TrainItem]) -> TopKCache:
    """Top-k logits of another tiny model on the answers: a KL term that is not zero."""
    from bench.models.embedded import build_tiny_llama

    teacher, tokenizer = build_tiny_llama(seed=1)
    batch = collate(items, tokenizer.pad_token_id)
    with torch.no_grad():
        logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    indices, values, _ = teacher_topk(answer_logits(logits, batch["starts"], batch["lengths"]), 5, 2.0)
    entries, offset = {}, 0
    for item, length in zip(items, batch["lengths"]):
        entries[item.example_id] = (indices[offset:offset + length], values[offset:offset + length])
        offset += length
    return TopKCache(entries, 5)


def train_run(name: str, output: Path, on_log=None) -> tuple[LoRATrainer, list[dict[str, float]], int]:
    """(trainer, loss rows, step resumed from) of run `name` into `output`, in this process's world."""
    from bench.models.embedded import build_tiny_llama

    run = RUNS[name]
    model, tokenizer = build_tiny_llama(seed=0)
    items = train_items(tokenizer, run["signal"])
    teacher = teacher_signal(items) if run["signal"] == "aligned" else None
    trainer = LoRATrainer(model, LoRAConfig(r=4, alpha=8, dropout=run["dropout"]), TrainConfig(**run["train"]),
                          temperature=2.0, alpha=0.5 if teacher else 1.0, pad_token_id=tokenizer.pad_token_id,
                          progress=False)
    report = trainer.train(items, teacher, output, on_log=on_log)
    return trainer, report.losses, report.resumed_from_step


def adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "adapter" / "adapter_model.safetensors")


# ------------------------------------------------------------------ the worker: one rank of a launch
def record_writes(root: Path) -> list[str]:
    """Every file-system change under `root` this process makes from now on ("<call> <path relative to root>"), by
    wrapping the calls the trainer writes through: a rank that writes anything shows up here."""
    import peft

    writes: list[str] = []

    def note(call: str, path: Any) -> None:
        if not isinstance(path, (str, os.PathLike)):
            return  # a buffer: torch.save pickling tensors for a collective
        path = Path(path).resolve()
        if path.is_relative_to(root):
            writes.append(f"{call} {path.relative_to(root).as_posix()}")

    def wrap(owner: Any, name: str, path_of) -> None:
        original = getattr(owner, name)

        def wrapped(*args, **kwargs):
            note(name, path_of(*args, **kwargs))
            return original(*args, **kwargs)

        setattr(owner, name, wrapped)

    wrap(torch, "save", lambda obj, f, *a, **k: f)
    wrap(shutil, "rmtree", lambda path, *a, **k: path)
    for method in ("mkdir", "write_text", "write_bytes", "replace", "rename", "unlink", "touch"):
        wrap(Path, method, lambda self, *a, **k: self)
    wrap(peft.PeftModel, "save_pretrained", lambda self, directory, *a, **k: directory)
    return writes


def worker(spec: dict[str, Any]) -> None:
    """Train spec["runs"] on this rank; write {run: {losses, resumed_from, writes}} to results/rank<r>.json after each
    run. A run with "kill_after" ends this launch abruptly right after that step (rank 0 exits, as a crash would;
    the launcher then stops the other rank)."""
    world = World.from_environment()
    root = Path(spec["root"]).resolve()
    writes = record_writes(root / "train")
    results: dict[str, Any] = {}
    result_file = root / "results" / f"rank{world.rank}.{spec['launch']}.json"
    for run in spec["runs"]:
        kill_after = run.get("kill_after")

        def crash(row: dict, kill_after=kill_after) -> None:
            if row["step"] == kill_after and world.is_main:
                os._exit(17)

        writes.clear()
        _, losses, resumed_from = train_run(run["name"], root / "train" / run["folder"], on_log=crash)
        results[run["folder"]] = {"losses": losses, "resumed_from": resumed_from, "writes": list(writes)}
        result_file.parent.mkdir(parents=True, exist_ok=True)
        result_file.write_text(json.dumps(results))


def launch(root: Path, name: str, runs: list[dict[str, Any]], processes: int = 2) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --standalone --nproc_per_node <processes> <this file> <spec>`."""
    spec = json.dumps({"root": str(root), "launch": name, "runs": runs})
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={processes}", __file__, spec],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=600)


def rank_results(root: Path, name: str) -> list[dict[str, Any]]:
    return [json.loads((root / "results" / f"rank{rank}.{name}.json").read_text()) for rank in (0, 1)]


# ------------------------------------------------------------------ the tests
@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two launches of 2 processes: the exact runs and a dropout run straight, then the same dropout run killed
    after step 3 (launch 1); the killed run resumed (launch 2). Returns their root folder."""
    root = tmp_path_factory.mktemp("ddp")
    first = launch(root, "first", [{"name": "aligned", "folder": "aligned"},
                                   {"name": "published", "folder": "published"},
                                   {"name": "dropout", "folder": "straight"},
                                   {"name": "dropout", "folder": "killed", "kill_after": KILLED_AFTER}])
    assert first.returncode != 0, "the launch was to be killed after step 3 of its last run"
    assert (root / "train" / "killed" / "checkpoint" / "state.pt").exists(), first.stderr[-4000:]
    second = launch(root, "second", [{"name": "dropout", "folder": "killed"}])
    assert second.returncode == 0, second.stderr[-4000:]
    return root


@pytest.mark.parametrize("name", ["aligned", "published"])
def test_two_processes_give_the_losses_of_one_with_the_same_global_batch(
        two_process_runs: Path, tmp_path: Path, name: str) -> None:
    root = two_process_runs
    _, losses, _ = train_run(name, tmp_path)  # one process, no launcher
    distributed = rank_results(root, "first")
    assert distributed[0][name]["losses"] == distributed[1][name]["losses"]  # all-reduced: one history
    rows = distributed[0][name]["losses"]
    assert [row["step"] for row in rows] == [row["step"] for row in losses] == [1, 2, 3, 4, 5, 6]
    assert [row["lr"] for row in rows] == [row["lr"] for row in losses]
    for key in ("loss", "ce", "kl"):
        assert max(abs(a[key] - b[key]) for a, b in zip(rows, losses)) <= LOSS_TOLERANCE, key
    assert [row["grad_norm"] for row in rows] == pytest.approx([row["grad_norm"] for row in losses],
                                                               rel=GRAD_NORM_TOLERANCE)
    assert losses[-1]["loss"] < 0.9 * losses[0]["loss"]  # it trained: equal losses are not equal constants
    one, two = adapter_tensors(tmp_path), adapter_tensors(root / "train" / name)
    assert one.keys() == two.keys()
    assert max(float((one[key] - two[key]).abs().max()) for key in one) <= WEIGHT_TOLERANCE


def test_rank_zero_alone_writes_one_adapter_and_the_checkpoints(two_process_runs: Path) -> None:
    root = two_process_runs
    rank0, rank1 = rank_results(root, "first")
    for run in ("aligned", "published", "straight"):
        assert rank1[run]["writes"] == []
        assert rank0[run]["writes"].count(f"save_pretrained {run}/adapter") == 1
    assert "save straight/checkpoint.tmp/state.pt" in rank0["straight"]["writes"]  # checkpoints: rank 0's
    assert sorted(path.name for path in (root / "train" / "straight").iterdir()) == ["adapter", "checkpoint"]


def test_a_killed_two_process_run_resumes_bit_identical_on_every_rank(two_process_runs: Path) -> None:
    """LoRA dropout 0.3: each rank draws its own masks (seed + rank); the checkpoint holds both ranks' streams, so
    the resumed run continues each where it stopped and ends where the uninterrupted launch ended, bit for bit."""
    root = two_process_runs
    straight = rank_results(root, "first")[0]["straight"]
    resumed = rank_results(root, "second")
    assert resumed[0]["killed"]["resumed_from"] == resumed[1]["killed"]["resumed_from"] == 2
    assert resumed[0]["killed"]["losses"] == resumed[1]["killed"]["losses"] == straight["losses"]
    killed, uninterrupted = adapter_tensors(root / "train" / "killed"), adapter_tensors(root / "train" / "straight")
    assert all(torch.equal(killed[key], uninterrupted[key]) for key in killed)
    assert resumed[1]["killed"]["writes"] == []


def test_the_checkpoint_holds_each_ranks_own_random_streams(two_process_runs: Path) -> None:
    """Dropout masks differ per rank by design (seed + rank): resuming rank 1 with rank 0's stream would replay
    rank 0's masks on rank 1's items, so every rank's state is saved."""
    root = two_process_runs
    state = torch.load(root / "train" / "killed" / "checkpoint" / "state.pt", weights_only=False)
    assert state["world_size"] == 2 and set(state["rng_other_ranks"]) == {1}
    assert not torch.equal(state["rng"]["torch_cpu"], state["rng_other_ranks"][1]["torch_cpu"])


def test_a_checkpoint_of_two_processes_resumes_in_one(two_process_runs: Path, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """The global batch does not depend on the number of processes, so a run may resume with another: rank 0's
    stream continues, and the items rank 1 drew masks for now draw from it (not bit-identical: the log says so)."""
    shutil.copytree(two_process_runs / "train" / "killed" / "checkpoint", tmp_path / "checkpoint")
    straight = rank_results(two_process_runs, "first")[0]["straight"]["losses"]
    with caplog.at_level(logging.WARNING, logger="bench.training.lora_trainer"):
        _, losses, resumed_from = train_run("dropout", tmp_path)
    assert resumed_from == 4 and [row["step"] for row in losses] == [1, 2, 3, 4, 5, 6]
    assert losses[:4] == straight[:4]  # the history comes from the checkpoint
    assert "written by 2 process(es), this run has 1" in caplog.text


# ------------------------------------------------------------------ `python -m bench` under a launcher
@needs_data
def test_the_cli_under_torchrun_trains_on_both_ranks_and_runs_everything_else_on_rank_0(tmp_path: Path) -> None:
    """`torchrun --nproc_per_node 2 -m bench method=rpkd ...`: rank 0 alone claims the folder, primes, evaluates and
    writes; rank 1 trains each arm with it (the same losses as one process) and returns; nothing deadlocks."""
    overrides = ["method=rpkd", "student=tiny", "teacher=tiny", "task=gsm8k", "task.limit=3", "task.max_new_tokens=6",
                 "method.train_limit=4", "method.train.epochs=2", "method.train.batch_size=2",
                 "method.train.max_length=192", "method.train.optimizer=adamw", "method.train.lr=0.01",
                 "method.arms=[no_train,gt_finetune,ground_truth]", "method.lora.dropout=0.0", "scoring.sandbox=none"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               "-m", "bench", *overrides, *isolated(tmp_path / "two", "ddp")],
                              capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert launched.returncode == 0, launched.stderr[-5000:]
    assert launched.stdout.count("headline:") == 1  # one run reported, by rank 0
    logs = [log.read_text() for log in (tmp_path / "two" / "results" / "ddp" / "_hydra").glob("*/bench.log")]
    assert len(logs) == 2  # one Hydra folder per rank, apart from the run folder
    assert sorted(log.count("generating and scoring") for log in logs) == [0, 3]  # evaluations: one rank's
    folder = only_run_folder(tmp_path / "two", "ddp")
    single = execute(compose_config([*overrides, *isolated(tmp_path / "one", "ddp")]), progress=False)
    assert only_run_folder(tmp_path / "one", "ddp").name == folder.name  # the launch is the same run
    two = json.loads((folder / "metrics.json").read_text())
    assert [row["arm"] for row in two["rows"]] == [row["arm"] for row in single["rows"]]
    for arm in ("gt_finetune", "ground_truth"):
        assert (folder / "artifacts" / arm / "adapter" / "adapter_model.safetensors").exists()
        launched_rows = [json.loads(line) for line in (folder / "artifacts" / arm / "losses.jsonl").open()]
        single_rows = [json.loads(line) for line in
                       (only_run_folder(tmp_path / "one", "ddp") / "artifacts" / arm / "losses.jsonl").open()]
        assert len(launched_rows) == len(single_rows) == 4
        assert max(abs(a["loss"] - b["loss"]) for a, b in zip(launched_rows, single_rows)) <= LOSS_TOLERANCE


def test_a_method_that_does_not_train_across_processes_is_refused_under_a_launcher(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="method=baseline does not train across processes"):
        execute(compose_config(["method=baseline"]), progress=False)


def test_a_batch_that_does_not_split_over_the_processes_fails_before_any_work(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ValueError, match="batch_size=3 does not split evenly over 2 processes.*multiple of 2"):
        execute(compose_config(["method=rpkd", "method.train.batch_size=3"]), progress=False)


# ------------------------------------------------------------------ the launcher's environment, sharding
def test_the_world_comes_from_the_launchers_environment() -> None:
    assert World.from_environment({}) == World(rank=0, size=1, local_rank=0)
    assert World.from_environment({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}) == World()
    assert World.from_environment({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == World(3, 4, 1)
    with pytest.raises(ValueError, match="impossible launch: RANK=2, WORLD_SIZE=2"):
        World.from_environment({"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(ValueError, match="not numeric"):
        World.from_environment({"WORLD_SIZE": "two"})


@pytest.mark.parametrize("size", [1, 2, 3])
def test_shards_cover_every_item_once_and_differ_by_at_most_one(size: int) -> None:
    for n in range(8):
        bounds = [World(rank, size).shard(n) for rank in range(size)]
        assert [i for start, stop in bounds for i in range(start, stop)] == list(range(n))
        assert max(stop - start for start, stop in bounds) - min(stop - start for start, stop in bounds) <= 1


# ------------------------------------------------------------------ big models: device_map for inference
def test_device_map_goes_to_from_pretrained_and_the_model_is_not_moved_after(tiny_model_dir: Path, monkeypatch) -> None:
    """The placement is from_pretrained's (accelerate's dispatch): `device` is not applied on top. Given the meta
    device, a model moved there afterwards would hold no weights; placed by the device_map it generates as ever."""
    from transformers import AutoModelForCausalLM

    from bench.models.base import GenerationRequest, SamplingParams
    from bench.models.hf import HFChatModel, load_model_and_tokenizer

    asked: list[Any] = []
    load = AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: asked.append(k.get("device_map")) or load(*a, **k))
    config = ModelConfig(name="tiny", backend="hf", model_id=str(tiny_model_dir), device="cpu", dtype="float32")
    model, tokenizer, model_id = load_model_and_tokenizer(replace(config, device_map="auto"), torch.device("meta"),
                                                          torch.float32)
    assert asked == ["auto"] and {p.device.type for p in model.parameters()} == {"cpu"}
    whole = HFChatModel.from_config(config)
    assert asked == ["auto", None] and model_id == whole.model_id  # the same model: one cache key
    request = [GenerationRequest.chat(None, "What is 1 + 1?", SamplingParams(max_new_tokens=8))]
    sharded = HFChatModel(model, tokenizer, model_id)
    assert sharded.generate(request, progress=False)[0].text == whole.generate(request, progress=False)[0].text


def test_device_map_does_not_change_the_run_identity() -> None:
    from bench.__main__ import config_identity

    default = compose_config(["method=rpkd"])
    sharded = compose_config(["method=rpkd", "student.device_map=auto", "teacher.device_map=balanced"])
    assert sharded.student.device_map == "auto"
    assert config_identity(sharded) == config_identity(default)


if __name__ == "__main__":
    worker(json.loads(sys.argv[1]))
