"""Language models as a task: the next-token task (loss, predictions, chance), the byte tokenizer, the text dataset
(embedded corpus split by chapter, local files and their errors), the small GPT, and training, attacks and the
evaluator on a causal LM (error and RErr per token), checked against straightforward implementations."""
from __future__ import annotations

import collections
import gzip
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from bitbench.attacks import create_attack
from bitbench.attacks.base import Victim, cross_entropy_objective
from bitbench.data import DataError, load_dataset
from bitbench.data.text import BYTES, KJV_PATH, windows
from bitbench.defenses import QuantizedModel, TrainConfig, Trainer
from bitbench.defenses.quantization import rquant
from bitbench.defenses.tasks import CLASSIFICATION, NEXT_TOKEN, task_for
from bitbench.evaluate import evaluate_attack
from bitbench.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def text():
    return load_dataset("text:context=32")


@pytest.fixture(scope="module")
def tiny_lm(text):
    """A 1-block GPT trained for a few steps on the embedded corpus (float weights)."""
    m = build_model("gpt:width=32,depth=1,heads=2,context=32", **text.model_args(), seed=0)
    cfg = TrainConfig(epochs=1, batch_size=64, lr=3e-3, optimizer="adamw", weight_decay=0.0, schedule="constant",
                      progress=False)
    n = 64 * 20
    Trainer(m, cfg).fit(text.train_x[:n], text.train_y[:n])
    return m.eval()


# -- the task --------------------------------------------------------------------------------------------------------
def test_task_is_read_from_the_labels():
    assert task_for(torch.zeros(4, dtype=torch.long)) is CLASSIFICATION
    assert task_for(torch.zeros(4, 8, dtype=torch.long)) is NEXT_TOKEN
    with pytest.raises(ValueError, match=r"\[N\] .* or \[N, T\]"):
        task_for(torch.zeros(2, 3, 4, dtype=torch.long))


def test_classification_is_untouched_and_next_token_flattens_tokens():
    logits, y = torch.randn(5, 10), torch.randint(0, 10, (5,))
    fl, fy = CLASSIFICATION.flatten(logits, y)
    assert fl is logits and fy is y                 # the very tensors: classification is bit-identical
    g = torch.Generator().manual_seed(1)
    logits, y = torch.randn(3, 7, 11, generator=g), torch.randint(0, 11, (3, 7), generator=g)
    # reference: the mean over every (example, position) of -log softmax at the label, in float64
    ref = sum(-torch.log_softmax(logits[b, t].double(), 0)[y[b, t]].item() for b in range(3) for t in range(7)) / 21
    assert NEXT_TOKEN.loss(logits, y).item() == pytest.approx(ref, rel=1e-6)
    acc = sum(int(logits[b, t].argmax() == y[b, t]) for b in range(3) for t in range(7)) / 21
    assert NEXT_TOKEN.accuracy(logits, y) == pytest.approx(acc)
    assert NEXT_TOKEN.predictions(logits).shape == (3, 7)


def test_chance_accuracy():
    y = torch.tensor([[32, 32, 101, 32], [116, 32, 101, 104]])
    top = collections.Counter(y.reshape(-1).tolist()).most_common(1)[0][1] / 8
    assert NEXT_TOKEN.chance_accuracy(y, 256) == top == 0.5
    assert NEXT_TOKEN.chance_accuracy(torch.arange(512).view(2, 256), 256) == 1 / 256   # never below 1 / V
    assert CLASSIFICATION.chance_accuracy(torch.tensor([1, 1, 1]), 10) == 0.1


def test_continuation_batch():
    x = torch.arange(10).view(1, 10)
    y = x + 1
    cont = torch.tensor([90, 91, 92])
    x2, y2, mask = NEXT_TOKEN.continuation_batch(x, y, cont)
    # prefix: the first T - L + 1 = 8 tokens, then the continuation without its last token
    assert x2.tolist() == [[0, 1, 2, 3, 4, 5, 6, 7, 90, 91]]
    assert y2.tolist() == [[1, 2, 3, 4, 5, 6, 7, 90, 91, 92]]
    assert mask.tolist() == [[False] * 7 + [True] * 3]
    with pytest.raises(ValueError):
        NEXT_TOKEN.continuation_batch(x, y, torch.arange(11))


# -- tokenizer and windows -------------------------------------------------------------------------------------------
def test_byte_tokenizer_round_trips():
    s = "In the beginning — Ünïcødé ✓\n"
    ids = BYTES.encode(s)
    assert ids.dtype == torch.int64 and ids.tolist() == list(s.encode("utf-8"))
    assert BYTES.decode(ids) == s and BYTES.vocab_size == 256


@pytest.mark.parametrize("n,ctx,stride", [(20, 4, 4), (20, 4, 2), (5, 4, 1), (4, 4, 1), (3, 4, 4)])
def test_windows_against_a_loop(n, ctx, stride):
    toks = torch.arange(100, 100 + n)
    x, y = windows(toks, ctx, stride)
    ref = [(toks[i:i + ctx].tolist(), toks[i + 1:i + ctx + 1].tolist()) for i in range(0, n, stride)
           if i + ctx + 1 <= n]
    assert [(a.tolist(), b.tolist()) for a, b in zip(x, y)] == ref
    assert x.shape == (len(ref), ctx)


# -- the text dataset ------------------------------------------------------------------------------------------------
def _chapters_by_rule():
    """An independent reading of the shipped file: chapter texts grouped by the split rule."""
    with gzip.open(KJV_PATH, "rt", encoding="utf-8") as f:
        raw = f.read()
    parts = {"train": "", "attack": "", "test": ""}
    for block in raw.split("\n= ")[1:]:
        head, _, body = block.partition("\n")
        c = int(head.split()[-1])
        parts["test" if c % 10 == 0 else "attack" if c % 10 == 5 else "train"] += body if body.endswith("\n") \
            else body + "\n"
    return parts


def _stream(x, stride):
    """The token stream behind windows taken every ``stride`` tokens (stride <= T)."""
    out = x[0].tolist()
    for w in x[1:]:
        out += w[-stride:].tolist()
    return bytes(out).decode("utf-8", errors="replace")


def test_embedded_corpus_is_split_by_chapter(text):
    parts = _chapters_by_rule()
    assert text.task is NEXT_TOKEN and text.num_classes == 256 and text.mean is None
    assert text.train_x.shape[1] == 32 and text.info["stride"] == 16
    assert parts["train"].startswith(_stream(text.train_x, 16))
    assert parts["attack"].startswith(_stream(text.attack_x, 32))
    assert parts["test"].startswith(_stream(text.test_x, 32))
    assert torch.equal(text.test_y[:, :-1], text.test_x[:, 1:])
    assert text.test_x.shape[0] == (len(parts["test"]) - 1) // 32
    # the evaluation text is never trained on, nor seen by the attacker: a 200-byte piece of each test chapter
    for chapter in parts["test"].split("\n")[::40]:
        if len(chapter) > 60:
            assert chapter not in parts["train"] and chapter not in parts["attack"]
    again = load_dataset("text:context=32")
    assert again.digest() == text.digest()


def test_n_eval_and_model_args(text):
    ds = load_dataset("text:context=32", n_eval=5)
    assert torch.equal(ds.test_x, text.test_x[:5]) and ds.model_args() == {"num_classes": 256}


def test_local_text_file(tmp_path):
    data = ("Alpha beta gamma. " * 300 + "Ωmega\n").encode("utf-8")
    f = tmp_path / "corpus.txt"
    f.write_bytes(data)
    ds = load_dataset("text:context=16", data_dir=str(f))
    a, b = 8 * len(data) // 10, 9 * len(data) // 10
    assert bytes(ds.train_x[0].tolist()) == data[:16]
    assert bytes(ds.attack_x[0].tolist()) == data[a:a + 16]
    assert bytes(ds.test_x[0].tolist()) == data[b:b + 16]
    assert ds.test_x.shape[0] == (len(data) - b - 1) // 16
    assert load_dataset("text:context=16", data_dir=str(tmp_path)).digest() == ds.digest()   # a folder with one


@pytest.mark.parametrize("content,match", [
    (None, "does not exist"),
    (b"", "is empty"),
    (b"   \n", "is empty"),
    (b"caf\xe9 au lait " * 100, r"not UTF-8 text: invalid byte 0xe9 at offset 3"),
    (b"short text", "too short for one window of 128 tokens"),
])
def test_bad_text_files(tmp_path, content, match):
    f = tmp_path / "corpus.txt"
    if content is not None:
        f.write_bytes(content)
    with pytest.raises(DataError, match=match):
        load_dataset("text", data_dir=str(f))


def test_bad_text_file_exits_2_on_the_command_line(tmp_path):
    (tmp_path / "c.txt").write_bytes(b"\xff\xfe" + b"x" * 5000)
    env = dict(os.environ, BITBENCH_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-m", "benchmark", "run", "--suite", "lm", "--dataset", "text",
                        "--data-dir", "c.txt", "--defense", "rquant", "--attack", "random_p0.001"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    assert "not UTF-8 text: invalid byte 0xff at offset 0" in p.stderr and "Traceback" not in p.stderr


# -- the GPT ---------------------------------------------------------------------------------------------------------
def test_gpt_defaults_causality_and_memory():
    m = build_model("gpt", num_classes=256, seed=0)
    assert sum(p.numel() for p in m.parameters()) == 875_520
    from bitbench.defenses.norms import ReparamLayerNorm

    assert all(isinstance(mod, ReparamLayerNorm) for mod in m.modules() if isinstance(mod, torch.nn.LayerNorm))
    qm = QuantizedModel.from_module(m, rquant(8))
    assert qm.names == [n for n, _ in m.named_parameters()] and qm.n_words == 875_520
    small = build_model("gpt:width=16,depth=1,heads=2,context=12", num_classes=256, seed=0).eval()
    x = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = small(x)
        x2 = x.clone()
        x2[:, 7:] = (x2[:, 7:] + 1) % 256
        b = small(x2)
    assert a.shape == (2, 12, 256)
    assert torch.equal(a[:, :7], b[:, :7]) and not torch.equal(a[:, 7], b[:, 7])   # position t sees 0..t only
    with pytest.raises(Exception, match="exceed the model's context of 12"):
        small(torch.zeros(1, 13, dtype=torch.long))


def test_adamw_option_and_unchanged_keys():
    assert "optimizer" not in TrainConfig().identity()     # the default keeps the models' checkpoint keys
    assert TrainConfig(optimizer="adamw").identity()["optimizer"] == "adamw"
    m = build_model("gpt:width=16,depth=1,heads=2,context=8", num_classes=256, seed=0)
    assert isinstance(Trainer(m, TrainConfig(optimizer="adamw", progress=False)).optimizer, torch.optim.AdamW)
    with pytest.raises(Exception, match="optimizer must be one of"):
        TrainConfig(optimizer="adam")


def test_training_lowers_the_per_token_loss(text, tiny_lm):
    x, y = text.test_x[:50], text.test_y[:50]
    with torch.no_grad():
        loss = NEXT_TOKEN.loss(tiny_lm(x), y).item()
    assert loss < math.log(256) - 1.0          # far below the uniform 5.55 nats per byte


# -- attacks and evaluation on the language model -------------------------------------------------------------------
def test_objective_is_the_token_cross_entropy(text, tiny_lm):
    x, y = text.attack_x[:8], text.attack_y[:8]
    with torch.no_grad():
        logits = tiny_lm(x)
    loss, acc = cross_entropy_objective(logits, y)
    assert loss.item() == pytest.approx(F.cross_entropy(logits.reshape(-1, 256), y.reshape(-1)).item())
    assert acc == pytest.approx((logits.argmax(-1) == y).float().mean().item())


def test_random_errors_per_token_error_and_rerr(text, tiny_lm):
    m = tiny_lm
    qm = QuantizedModel.from_module(m, rquant(8))
    x, y = text.test_x[:20], text.test_y[:20]
    ev = evaluate_attack(m, qm, create_attack("random_p0.002:patterns=3"), x, y)
    qm.load_into(m)
    with torch.no_grad():
        clean = m(x).argmax(-1)
    assert ev.clean_err == pytest.approx((clean != y).float().mean().item())
    for pat, seed in zip(ev.patterns, (100, 101, 102)):
        from bitbench import kernels

        codes = kernels.random_flip(qm.codes, 0.002, seed=seed, bits=qm.bits, protected=qm.protected)
        qm.load_into(m, codes)
        with torch.no_grad():
            pert = m(x).argmax(-1)
        assert pat.err == pytest.approx((pert != y).float().mean().item())
        assert pat.rerr == pytest.approx(((pert != y) | (clean != y)).float().mean().item())  # tokens, not windows
    qm.load_into(m)


def test_bfa_raises_the_token_loss_and_restores_the_model(text, tiny_lm):
    m = tiny_lm
    qm = QuantizedModel.from_module(m, rquant(8))
    qm.load_into(m)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    bfa = create_attack("bfa_n3:trials=1,batch=8,stop=budget")
    pert = next(bfa.perturbations(qm, model=m, data=(text.attack_x, text.attack_y)))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert pert.info["flips"] == 3 and pert.info["classes"] == 256
    losses = [t["loss"] for t in pert.trace]
    victim = Victim(qm, m, text.attack_x[:8], text.attack_y[:8])
    assert losses == sorted(losses)
    x, y = text.attack_x, text.attack_y
    from bitbench.attacks.base import attack_batch

    bx, _ = attack_batch((x, y), 8, 0)
    qm.load_into(m)
    with torch.no_grad():
        labels = m(bx).argmax(-1)               # the clean model's predictions, per token
        clean_loss = F.cross_entropy(m(bx).reshape(-1, 256), labels.reshape(-1)).item()
        qm.load_into(m, pert.codes)
        attacked = F.cross_entropy(m(bx).reshape(-1, 256), labels.reshape(-1)).item()
    qm.load_into(m)
    assert attacked > clean_loss and attacked == pytest.approx(losses[-1], rel=1e-5)
    assert victim.chance_accuracy() == NEXT_TOKEN.chance_accuracy(text.attack_y[:8], 256)


def test_tbfa_on_tokens_and_the_evaluator_curve(text, tiny_lm):
    m = tiny_lm
    qm = QuantizedModel.from_module(m, rquant(8))
    ev = evaluate_attack(m, qm, create_attack("tbfa_n2:target=101,trials=1,batch=8,stop=budget"),
                         text.test_x[:10], text.test_y[:10], attack_data=(text.attack_x, text.attack_y))
    pat = ev.patterns[0]
    assert pat.flips_used == 2 and [p["flips"] for p in pat.curve] == [1, 2]
    assert 0 <= pat.curve[-1]["asr"] <= 1 and ev.target["metric"] == "asr"


def test_api_takes_token_windows(text, tiny_lm):
    import bitbench

    x, y = text.test_x[:6], text.test_y[:6]
    rec = bitbench.evaluate_model(tiny_lm, (x, y), attack="random_p0.002", patterns=2)
    full = bitbench.evaluate_model(tiny_lm, load_dataset("text:context=32", n_eval=6), attack="random_p0.002",
                                   patterns=2)
    assert rec.per_pattern_rerr == full.per_pattern_rerr and rec.n_eval == 6
    with pytest.raises(Exception, match=r"labels of shape \[6, 31\]"):
        bitbench.evaluate_model(tiny_lm, (x, y[:, :-1]), attack="random_p0.002", patterns=1)


def test_lm_suite_runs_end_to_end_on_the_command_line(tmp_path):
    """The lm suite's pipeline (train, quantize, random errors and BFA, the table), reduced: a tiny GPT, sparse
    training windows, 2 patterns, 4 evaluation windows."""
    env = dict(os.environ, BITBENCH_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    args = ["run", "--suite", "lm", "--model", "gpt:width=16,depth=1,heads=2", "--dataset", "text:stride=2048",
            "--defense", "rquant", "--defense", "bfloat16", "--attack", "random_p0.001",
            "--attack", "bfa_n2:trials=1,batch=4", "--patterns", "2", "--n-eval", "4", "--format", "json"]
    p = subprocess.run([sys.executable, "-m", "benchmark", *args], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    import json

    recs = [r for c in json.loads(p.stdout) for r in c["records"]]
    assert [(r["defense"], r["attack"].split(":")[0]) for r in recs] == [
        ("rquant", "random_p0.001"), ("rquant", "bfa_n2"), ("bfloat16", "random_p0.001"), ("bfloat16", "bfa_n2")]
    r = recs[0]
    assert r["dataset"] == "text:stride=2048" and r["model"] == "gpt" and r["n_eval"] == 4 and r["n_params"] > 0
    assert r["task"] == "next_token" and r["n_examples"] == 4 * 128     # errors count tokens
    assert all(0 <= e <= 1 for e in r["patterns"]["err"]) and len(r["patterns"]["rerr"]) == 2
    t = recs[1]["trials"]
    assert t["flips_used"] == [2] or t["stop_reason"][0] != "budget"


@pytest.mark.parametrize("args,match", [
    (["--model", "vit"], "model vit fails on the text:stride=128 inputs of shape"),
    (["--dataset", "text:context=256"], "exceed the model's context of 128 positions"),
])
def test_a_model_that_does_not_fit_the_data_exits_2_before_training(tmp_path, args, match):
    env = dict(os.environ, BITBENCH_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-m", "benchmark", "run", "--suite", "lm", *args, "--defense", "rquant",
                        "--attack", "random_p0.01"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 2 and match in p.stderr and "training" not in p.stderr, p.stderr


def test_budget_attack_on_the_language_model(text, tiny_lm):
    m = tiny_lm
    qm = QuantizedModel.from_module(m, rquant(8))
    pert = next(create_attack("budget_e4:trials=1,batch=8,iterations=3").perturbations(
        qm, model=m, data=(text.attack_x, text.attack_y)))
    from bitbench import kernels

    assert 0 < kernels.hamming_total(qm.codes, pert.codes, bits=qm.bits) <= 4
    assert len(pert.trace) == pert.info["flips"]
    from bitbench.attacks.base import attack_batch

    bx, by = attack_batch((text.attack_x, text.attack_y), 8, 0)   # trial 0's batch, the split's labels
    with torch.no_grad():
        qm.load_into(m)
        clean = F.cross_entropy(m(bx).reshape(-1, 256), by.reshape(-1)).item()
        qm.load_into(m, pert.codes)
        attacked = F.cross_entropy(m(bx).reshape(-1, 256), by.reshape(-1)).item()
    qm.load_into(m)
    assert attacked == pytest.approx(pert.info["loss"], rel=1e-5) and attacked >= clean
