"""The SFT trainer on CPU: a tiny Qwen2-style model trained on the quickstart sample of real traces."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("tokenizers")

import curate  # noqa: E402
from curate.models.tiny import build  # noqa: E402
from curate.train.data import (  # noqa: E402
    IGNORE,
    block_causal_mask,
    build_packs,
    collate,
    load_chats,
    pack,
    tokenize_chat,
)
from curate.train.sft import TrainConfig, train  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# Small and fast: 288 tokens of each trace (the longest prompt is 263), 2 traces to a 576-token pack,
# <think> markers and no system prompt (the sample's own, Sky-T1's, is ~560 tokens of the tiny tokenizer).
SMALL = {"cutoff": 288, "pack_len": 576, "packing": True, "global_batch": 4, "warmup_ratio": 0.0,
         "gradient_checkpointing": False, "bf16": False, "style": "think", "system_prompt": ""}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("quickstart")
    curate.run_recipe(REPO / "pipelines" / "long_cot_sample.yaml", out=out)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("tiny"), chat=True)


@pytest.fixture(scope="module")
def tokenizer(tiny):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny)


def test_chat_export_and_loss_mask(dataset, tokenizer):
    chats = load_chats(dataset)
    assert len(chats) == 50
    row = chats[0]["messages"]
    assert [m["role"] for m in row] == ["user", "assistant"]
    assert row[1]["content"].startswith("<think>\n") and "</think>" in row[1]["content"]
    ex = tokenize_chat(tokenizer, row, 10**6)
    first = next(i for i, x in enumerate(ex.labels) if x != IGNORE)
    # Everything up to and including the generation prompt is masked; the assistant turn is trained,
    # down to the end-of-turn token.
    assert tokenizer.decode(ex.input_ids[:first]).endswith("<|im_start|>assistant\n")
    assert row[0]["content"][:40] in tokenizer.decode(ex.input_ids[:first])
    assert ex.labels[first:] == ex.input_ids[first:]
    assert tokenizer.decode(ex.labels[first:]).rstrip().endswith("<|im_end|>")
    assert not ex.truncated
    cut = tokenize_chat(tokenizer, row, 64)
    assert cut.truncated and len(cut.input_ids) == 64 and cut.input_ids == ex.input_ids[:64]


def test_packing_counts_and_positions(dataset, tokenizer):
    packs, stats = build_packs(dataset, tokenizer, 320, pack_len=1280)
    # a trace whose prompt alone fills the 320-token cutoff has no target token: dropped
    full = [tokenize_chat(tokenizer, c["messages"], 10**6).labels for c in load_chats(dataset)]
    prompts = [next(i for i, x in enumerate(labels) if x != IGNORE) for labels in full]
    fit = sum(p < 320 for p in prompts)
    assert 40 <= fit < 50  # the quickstart sample holds some long problems (a graph in Asymptote code...)
    assert stats["traces"] == 50 and stats["packed"] == fit and stats["dropped"] == 50 - fit
    assert stats["packs"] == -(-fit // 4)  # all cut to 320, 4 a pack
    assert stats["tokens"] == fit * 320 and stats["truncated"] == 50
    for p in packs:
        assert len(p) <= 1280 and sum(p.seq_lens) == len(p)
        starts = [i for i, x in enumerate(p.position_ids) if x == 0]
        assert len(starts) == len(p.seq_lens)
        assert all(p.labels[s] == IGNORE for s in starts)  # never predict across a boundary
    # Traces with no assistant token inside the cutoff are dropped, not trained on as all-prompt.
    assert pack([tokenize_chat(tokenizer, load_chats(dataset)[0]["messages"], 8)], 64) == []


def test_packed_attention_does_not_cross_traces(dataset, tokenizer, tiny):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny, attn_implementation="sdpa").eval()
    packs, _ = build_packs(dataset, tokenizer, 320, pack_len=1280)
    p = packs[0]
    assert len(p.seq_lens) >= 3
    batch = collate([p], tokenizer.pad_token_id)
    with torch.no_grad():
        # use_cache=False as in training: with a KV cache transformers ignores the position restarts.
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        start = 0
        for n in p.seq_lens:
            alone = model(input_ids=batch["input_ids"][:, start:start + n]).logits[0]
            torch.testing.assert_close(packed[start:start + n], alone, atol=1e-4, rtol=1e-4)
            start += n
        # Without the position restarts the later traces do see the earlier ones: the test can fail.
        leaky = model(input_ids=batch["input_ids"], use_cache=False).logits[0]
        n0 = p.seq_lens[0]
        assert not torch.allclose(leaky[n0:n0 + p.seq_lens[1]], packed[n0:n0 + p.seq_lens[1]], atol=1e-3)
        # The explicit block-diagonal mask (fallback for attention that cannot read positions) agrees.
        mask = block_causal_mask(p.seq_lens)[None, None]
        explicit = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                         attention_mask=mask, use_cache=False).logits[0]
        torch.testing.assert_close(explicit, packed, atol=1e-4, rtol=1e-4)
    m = block_causal_mask([2, 3])
    assert m.tolist()[3] == [False, False, True, True, False]


def test_lora_trains_saves_and_reloads(dataset, tiny, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = TrainConfig(method="lora", lr=3e-2, epochs=2, lora_rank=8, lora_alpha=16, **SMALL)
    res = train(dataset, str(tiny), tmp_path / "run", cfg, progress=False)
    assert res.data["packs"] == 22 and res.steps == 12  # 22 packs / 4 per step -> 6 steps an epoch, 2 epochs
    first, last = sum(res.losses[:3]) / 3, sum(res.losses[-3:]) / 3
    assert last < first - 0.3, res.losses
    rec = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert rec["train"]["lora_rank"] == 8 and rec["data"]["traces"] == 50
    assert 0 < rec["trainable_params"] < rec["params"]
    assert len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == 12
    final = tmp_path / "run" / "final"
    assert (final / "adapter_model.safetensors").exists() and (final / "adapter_config.json").exists()

    base = AutoModelForCausalLM.from_pretrained(tiny).eval()
    ids = torch.tensor([list(range(5, 60))])
    with torch.no_grad():
        before = base(input_ids=ids).logits
        reloaded = PeftModel.from_pretrained(base, final).eval()
        after = reloaded(input_ids=ids).logits
        merged = reloaded.merge_and_unload()(input_ids=ids).logits
    assert not torch.allclose(before, after, atol=1e-3)  # the adapter changes the model
    torch.testing.assert_close(after, merged, atol=1e-4, rtol=1e-4)


def test_killed_run_resumes_to_the_same_weights(dataset, tiny, tmp_path):
    from safetensors.torch import load_file

    # 22 packs, 6 a step: 4 steps an epoch; stop at step 6 of 8 (max_steps keeps it short).
    cfg = TrainConfig(method="full", lr=1e-3, epochs=2, save_every=3, keep_checkpoints=2, max_steps=6,
                      **{**SMALL, "global_batch": 6})
    whole = train(dataset, str(tiny), tmp_path / "whole", cfg, progress=False)
    part = train(dataset, str(tiny), tmp_path / "part", cfg, progress=False, stop_after=5)
    assert part.steps == 5 and not (tmp_path / "part" / "final").exists()
    # "Killed" after step 5: the newest checkpoint is step 4 (epoch end); step 5 is redone.
    ckpts = sorted(p.name for p in (tmp_path / "part" / "checkpoints").glob("step-*"))
    assert ckpts == ["step-0000003", "step-0000004"]
    resumed = train(dataset, str(tiny), tmp_path / "part", cfg, progress=False)
    assert resumed.steps == whole.steps == 6 and len(resumed.losses) == 2
    assert resumed.losses == pytest.approx(whole.losses[4:], rel=1e-5)
    a = load_file(tmp_path / "whole" / "final" / "model.safetensors")
    b = load_file(tmp_path / "part" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def test_two_ranks_under_torchrun_train_the_single_process_weights(dataset, tiny, tmp_path):
    """Multi-GPU on one node, run on CPU: ``torchrun --nproc-per-node 2`` (gloo) gives each rank half
    of a step's micro-batches and averages the gradients, so it ends at the weights one process
    reaches with the same global batch, and only rank 0 writes."""
    from safetensors.torch import load_file

    cfg = TrainConfig(method="full", lr=1e-3, epochs=1, max_steps=3, **SMALL)  # 22 packs, split over 2 ranks
    train(dataset, str(tiny), tmp_path / "one", cfg, progress=False)
    args = ["train", str(dataset), "--model", str(tiny), "--method", "full", "--lr", "1e-3", "--epochs", "1",
            "--warmup-ratio", "0", "--cutoff", "288", "--pack-len", "576", "--global-batch", "4", "--max-steps", "3",
            "--no-gradient-checkpointing", "--fp32", "--no-progress", "--packing", "--style", "think",
            "--system-prompt", "", "--sharding", "ddp", "--out", str(tmp_path / "two")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "curate.cli", *args], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "two" / "train_config.json").read_text())
    assert record["world_size"] == 2 and record["grad_accum"] == 2 and record["total_steps"] == 3
    assert record["sharding"] == "ddp"
    assert len((tmp_path / "two" / "log.jsonl").read_text().splitlines()) == 3  # rank 0 logs, once a step
    a = load_file(tmp_path / "one" / "final" / "model.safetensors")
    b = load_file(tmp_path / "two" / "final" / "model.safetensors")
    base = load_file(tiny / "model.safetensors")
    assert a.keys() == b.keys()
    assert any(not torch.allclose(a[k], base[k], atol=1e-4) for k in a.keys() & base.keys())  # it trained
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4)


def test_config_is_checked():
    assert TrainConfig(method="full").lr == 1e-5 and TrainConfig().lr == 1e-4
    d = TrainConfig()
    assert (d.lora_rank, d.lora_alpha, d.lora_dropout, d.lora_targets) == (64, 128, 0.0, "all-linear")
    assert (d.epochs, d.warmup_ratio, d.cutoff, d.global_batch) == (3.0, 0.1, 16384, 96)
    # The paper's batch unit and optimizer by default: sequences (no packing), AdamW betas (0.9, 0.999).
    assert (d.packing, d.adam_beta1, d.adam_beta2, d.adam_eps) == (False, 0.9, 0.999, 1e-8)
    with pytest.raises(ValueError, match="method"):
        TrainConfig(method="qlora")
    with pytest.raises(ValueError, match="sharding"):
        TrainConfig(sharding="zero3")


def test_global_batch_counts_sequences_unless_packing(dataset, tiny, tmp_path):
    """The paper's batch unit: 96 *traces* a step (no packing), so n traces / 8 a step = ceil(n/8)
    steps an epoch; packing counts packs (about n/2 of them), so the same data gets fewer steps, and
    says so."""
    base = {**SMALL, "global_batch": 8, "max_steps": 1}
    seq = train(dataset, str(tiny), tmp_path / "seq", TrainConfig(method="full", epochs=3,
                                                                  **{**base, "packing": False}), progress=False)
    packed = train(dataset, str(tiny), tmp_path / "pack", TrainConfig(method="full", epochs=3, **base),
                   progress=False)
    rec = json.loads((tmp_path / "seq" / "train_config.json").read_text())
    seqs = re.match(r"(\d+) sequences \(one trace each\) x 3 epochs / global batch 8", seq.plan)
    assert seqs, seq.plan
    n = int(seqs.group(1))
    assert 40 <= n <= 50  # of 50: a trace whose prompt fills the cutoff has no target and is left out
    steps = 3 * -(-n // 8)
    assert rec["batch_unit"] == "sequences" and rec["planned_steps"] == steps and rec["global_batch"] == 8
    assert f"= {steps} optimizer steps, stopping after 1 (max_steps)" in seq.plan
    prec = json.loads((tmp_path / "pack" / "train_config.json").read_text())
    packs = re.match(r"(\d+) packs of <= 576 tokens", packed.plan)
    assert packs and int(packs.group(1)) < n, packed.plan  # 2 traces to a pack: fewer steps, and it says so
    assert prec["batch_unit"] == "packs" and prec["planned_steps"] == 3 * -(-int(packs.group(1)) // 8) < steps
    # The optimizer really ran with the paper's betas (the HF default), and the record says so.
    state = torch.load(tmp_path / "seq" / "checkpoints" / "step-0000001" / "state.pt", weights_only=False)
    assert tuple(state["optimizer"]["param_groups"][0]["betas"]) == (0.9, 0.999)
    assert rec["optimizer"]["betas"] == [0.9, 0.999]


FSDP_DRIVER = """
import gc, os, sys
import torch.distributed as dist
from torch.distributed.fsdp._fully_shard._fsdp_param_group import FSDPParamGroup
from curate.train.sft import TrainConfig, train
destroy = dist.destroy_process_group
def counted_destroy(*a, **k):  # how many FSDP parameter groups are still alive when the group goes
    alive = sum(isinstance(o, FSDPParamGroup) for o in gc.get_objects())
    with open(sys.argv[4] + "-alive-" + os.environ["RANK"], "a") as f:
        f.write(f"{alive}\\n")
    return destroy(*a, **k)
dist.destroy_process_group = counted_destroy
cfg = TrainConfig(**{**%r, "sharding": "fsdp", "gradient_checkpointing": True})
stop = int(sys.argv[3]) if len(sys.argv) > 3 else None
train(sys.argv[1], sys.argv[2], sys.argv[4] if len(sys.argv) > 4 else sys.argv[1] + "-out", cfg,
      progress=False, stop_after=stop)
"""


def test_fsdp_two_ranks_train_the_single_process_weights_and_resume(dataset, tiny, tmp_path):
    """Sharded training (FSDP2, activation checkpointing on) on CPU with gloo and 2 ranks: killed after
    step 2 and resumed from its checkpoint, it ends at the weights one process reaches with the same
    global batch."""
    from safetensors.torch import load_file

    settings = {"method": "full", "lr": 1e-3, "epochs": 1, "max_steps": 3, "save_every": 1, **SMALL}
    train(dataset, str(tiny), tmp_path / "one", TrainConfig(**settings), progress=False)
    driver = tmp_path / "driver.py"
    driver.write_text(FSDP_DRIVER % (settings,))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(REPO)}
    out = tmp_path / "fsdp"
    for stop in ("2", "0"):  # 0: no stop, run to the end from the newest checkpoint
        args = [str(dataset), str(tiny), stop if stop != "0" else "1000", str(out)]
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                               "2", str(driver), *args], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        if stop == "2":
            assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-0000001", "step-0000002"]
            assert not (out / "final").exists()
    # FSDP's parameter groups (reference cycles holding collectives' buffers) were freed before the
    # process group was destroyed, not left to the interpreter's exit, where they can abort a rank.
    for rank in ("0", "1"):
        assert Path(f"{out}-alive-{rank}").read_text().split() == ["0", "0"]
    record = json.loads((out / "train_config.json").read_text())
    assert record["sharding"] == "fsdp" and record["world_size"] == 2 and record["grad_accum"] == 2
    assert len((out / "log.jsonl").read_text().splitlines()) == 3  # 2 steps, then the third after resuming
    a = load_file(tmp_path / "one" / "final" / "model.safetensors")
    b = load_file(out / "final" / "model.safetensors")
    base = load_file(tiny / "model.safetensors")
    assert a.keys() == b.keys()
    assert any(not torch.allclose(a[k], base[k], atol=1e-4) for k in a.keys() & base.keys())  # it trained
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4)


def test_sharding_is_chosen_by_whether_the_model_fits():
    from curate.train.shard import choose_sharding

    h100 = 80 * 2**30
    assert choose_sharding("auto", 1, 7 * 10**9, 7 * 10**9, 4, h100) == "none"  # one process: nothing to shard
    assert choose_sharding("auto", 8, 7 * 10**9, 7 * 10**9, 4, h100) == "fsdp"  # 7B full FT: ~112 GB of state
    assert choose_sharding("auto", 8, 5 * 10**8, 5 * 10**8, 4, h100) == "ddp"  # 0.5B: 8 GB, replicas fit
    assert choose_sharding("auto", 8, 7 * 10**9, 4 * 10**7, 2, h100) == "ddp"  # 7B LoRA: bf16 base + adapter
    assert choose_sharding("auto", 2, 10**9, 10**9, 4, None) == "ddp"  # CPU: replicas
    assert choose_sharding("fsdp", 2, 10, 10, 4, None) == "fsdp"
