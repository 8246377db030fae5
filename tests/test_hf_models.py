"""Hugging Face models as they are: a ViTForImageClassification and a GPT2LMHeadModel built from tiny local configs,
trained briefly outside the benchmark and saved with torch.save(model.state_dict()), evaluate with no wrapper
through the command line (--model transformers:Class:config.json --checkpoint) and through
bitbench.evaluate_model, with identical per-pattern values; the causal LM on a local text file."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (optional extra: pip install 'bitbench[transformers]')")

import bitbench  # noqa: E402
from bitbench.data import load_dataset  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.usefixtures("one_thread")


def bench(args, cwd, cache, timeout=600):
    env = dict(os.environ, BITBENCH_CACHE=str(cache), PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "benchmark", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def vit(tmp_path_factory, ds):
    """A tiny HF ViT on 28 px digits, trained for a few steps as a user would (pixel_values=, .logits)."""
    root = tmp_path_factory.mktemp("hfvit")
    cfg = transformers.ViTConfig(image_size=28, patch_size=7, num_channels=1, hidden_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=64, num_labels=10)
    cfg.to_json_file(str(root / "vit.json"))
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(cfg)
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    for i in range(30):
        x, y = ds.train_x[i * 64:(i + 1) * 64], ds.train_y[i * 64:(i + 1) * 64]
        out = model(pixel_values=x, labels=y)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    model.eval()
    torch.save(model.state_dict(), root / "vit.pt")
    return root, model


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The user's own text file: the embedded corpus's training text, read back as one UTF-8 file."""
    from bitbench.data.text import corpus_chapters

    root = tmp_path_factory.mktemp("corpus")
    text = "".join(t for _, c, t in corpus_chapters() if c <= 6)
    (root / "corpus.txt").write_text(text, encoding="utf-8")
    return root / "corpus.txt"


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory, corpus):
    """A tiny GPT2LMHeadModel over byte tokens, trained briefly on the user's text file (input_ids=, .logits)."""
    root = tmp_path_factory.mktemp("hfgpt2")
    cfg = transformers.GPT2Config(vocab_size=256, n_positions=32, n_embd=32, n_layer=1, n_head=2, bos_token_id=10,
                                  eos_token_id=10)
    cfg.to_json_file(str(root / "gpt2.json"))
    data = load_dataset("text:context=32", data_dir=str(corpus))
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    for i in range(30):
        x, y = data.train_x[i * 32:(i + 1) * 32], data.train_y[i * 32:(i + 1) * 32]
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, 256), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    torch.save(model.state_dict(), root / "gpt2.pt")
    return root, model, data


def test_vit_through_the_cli_and_the_api(vit, ds, tmp_path):
    root, model = vit
    spec = f"transformers:ViTForImageClassification:{root / 'vit.json'}"
    p = bench(["run", "--model", spec, "--checkpoint", str(root / "vit.pt"), "--defense", "rquant", "--attack",
               "random_p0.01", "--patterns", "3", "--format", "json"], tmp_path, tmp_path / "cache")
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)[0]["records"][0]
    assert rec["model"] == "transformers:ViTForImageClassification" and rec["model_source"] == "user"
    assert rec["n_params"] == sum(q.numel() for q in model.parameters())   # every parameter in the memory
    api = bitbench.evaluate_model(model, ds, format="rquant", attack="random_p0.01", patterns=3)
    assert api.per_pattern_rerr == rec["patterns"]["rerr"] and api.clean_err == rec["clean"]["err"]
    # the float model's own error, computed the way a user would, is close to the 8-bit clean error
    with torch.no_grad():
        err = (model(pixel_values=ds.test_x).logits.argmax(-1) != ds.test_y).float().mean().item()
    assert abs(err - rec["clean"]["err"]) < 0.02


def test_vit_bfa_trace_uses_the_models_own_names(vit, ds, tmp_path):
    root, model = vit
    rec = bitbench.evaluate_model(model, ds, format="rquant", attack="bfa_n2:trials=1,batch=32")
    names = {n for n, _ in model.named_parameters()}
    assert rec.trace and all(t["name"] in names for t in rec.trace)      # no wrapper prefix
    assert rec.patterns[0].flips_used == 2


def test_wrapped_checkpoint_names_the_prefix(vit, tmp_path):
    root, model = vit

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vit_model = model

    torch.save(Wrapper().state_dict(), tmp_path / "wrapped.pt")
    p = bench(["run", "--model", f"transformers:ViTForImageClassification:{root / 'vit.json'}", "--checkpoint",
               str(tmp_path / "wrapped.pt"), "--defense", "rquant", "--attack", "random_p0.01", "--patterns", "1"],
              tmp_path, tmp_path / "cache")
    assert p.returncode == 2 and "the checkpoint's keys start with 'vit_model.'" in p.stderr, p.stderr


def test_gpt2_causal_lm_on_a_local_text_file(gpt2, corpus, tmp_path):
    root, model, data = gpt2
    spec = f"transformers:GPT2LMHeadModel:{root / 'gpt2.json'}"
    p = bench(["run", "--suite", "lm", "--model", spec, "--checkpoint", str(root / "gpt2.pt"), "--dataset",
               "text:context=32", "--data-dir", str(corpus), "--defense", "rquant", "--attack", "random_p0.001",
               "--patterns", "3", "--format", "json"], tmp_path, tmp_path / "cache")
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)[0]["records"][0]
    assert rec["n_params"] == sum(q.numel() for q in model.parameters())   # the tied head counted once
    assert rec["n_eval"] == data.test_x.shape[0]
    api = bitbench.evaluate_model(model, data, format="rquant", attack="random_p0.001", patterns=3)
    assert api.per_pattern_rerr == rec["patterns"]["rerr"] and api.clean_err == rec["clean"]["err"]
    with torch.no_grad():   # next-token error and loss of the float model, per token, the user's way
        logits = model(input_ids=data.test_x).logits
        err = (logits.argmax(-1) != data.test_y).float().mean().item()
        loss = F.cross_entropy(logits.reshape(-1, 256), data.test_y.reshape(-1)).item()
    assert abs(err - rec["clean"]["err"]) < 0.02 and loss < 4.5     # trained: below the uniform 5.55 nats


def test_gpt2_bfa_attacks_its_conv1d_layers(gpt2):
    root, model, data = gpt2
    rec = bitbench.evaluate_model(model, data, format="rquant", attack="bfa_n2:trials=1,batch=8,stop=budget")
    assert rec.patterns[0].flips_used == 2
    assert all(t["name"].startswith("transformer.") for t in rec.trace)


def test_transformers_source_builds_from_the_config_file(vit):
    root, _ = vit
    from bitbench.models import build_model

    m = build_model(f"transformers:ViTForImageClassification:{root / 'vit.json'}:num_hidden_layers=2",
                    num_classes=10, in_channels=1, image_size=28, seed=0)
    assert m.config.num_hidden_layers == 2 and isinstance(m(torch.rand(2, 1, 28, 28)), torch.Tensor)
    with pytest.raises(Exception, match="has no model class 'NoSuchModel'"):
        build_model(f"transformers:NoSuchModel:{root / 'vit.json'}", num_classes=10)
    with pytest.raises(Exception, match="its config has no field 'nonsense'"):
        build_model(f"transformers:ViTForImageClassification:{root / 'vit.json'}:nonsense=1", num_classes=10)
