"""A user's model: the checkpoint loader (every bad file refused with a message naming the problem), weight
digests, every kind of parameter in the quantized memory, and the Python API."""
from __future__ import annotations

import copy
import hashlib
import os
import pickle

import pytest
import torch
import torch.nn as nn

import bitbench
from bitbench.configs.errors import UsageError
from bitbench.defenses.quantization import rquant
from bitbench.defenses.quantized_model import QuantizedModel, flatten_parameters
from bitbench.user_model import CheckpointError, load_checkpoint, load_weights, supplied_model, tensor_digest


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class _RunsCode:
    """Unpickling it would create a file: the loader must never run it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _save(obj, path):
    torch.save(obj, path)
    return str(path)


# -------------------------------------------------------------------------------------------- the loader

def test_loader_reads_state_dicts_and_common_wrappers(tmp_path):
    sd = Small().state_dict()
    for obj in (sd, {"state_dict": sd, "epoch": 3}, {"model": sd, "optimizer": {"lr": torch.tensor(0.1)}}):
        got = load_checkpoint(_save(obj, tmp_path / "c.pt"))
        assert list(got) == list(sd) and all(torch.equal(got[k], sd[k]) for k in sd)


@pytest.mark.parametrize("case,expect", [
    ("missing", r"checkpoint .*c\.pt: does not exist"),
    ("folder", r"is a folder, not a checkpoint file"),
    ("empty", r"the file is empty \(0 bytes\)"),
    ("truncated", r"the torch archive is truncated or damaged"),
    ("garbage", r"not a torch checkpoint: neither a torch archive nor pickled tensors"),
    ("unsafe", r"it holds pickled Python objects, not only tensors and plain containers \(it references io\.open\); "
               r"it was refused without running any of its code"),
    ("module", r"it holds pickled Python objects.*Small.*torch\.save\(model\.state_dict\(\), path\)"),
    ("nn_module", r"it holds a whole pickled model \(it references torch\.nn\.modules\.linear\.Linear\)"),
    ("tensor", r"it holds a single tensor of shape \[3, 3\], expected a dict"),
    ("list", r"it holds a list, expected a dict"),
    ("mixed", r"not a state dict: it holds a dict whose entry 'epoch' is a int, not a tensor"),
    ("emptydict", r"not a state dict: it holds an empty dict"),
])
def test_loader_refuses_bad_files(tmp_path, case, expect):
    p = tmp_path / "c.pt"
    marker = tmp_path / "code-ran"
    good = _save(Small().state_dict(), tmp_path / "good.pt")
    raw = open(good, "rb").read()
    if case == "folder":
        p.mkdir()
    elif case == "empty":
        p.write_bytes(b"")
    elif case == "truncated":
        p.write_bytes(raw[: len(raw) // 2])
    elif case == "garbage":
        p.write_bytes(bytes(range(256)) * 4)
    elif case == "unsafe":
        _save({"w": torch.zeros(2), "x": _RunsCode(str(marker))}, p)
    elif case == "module":
        _save(Small(), p)
    elif case == "nn_module":
        _save(nn.Linear(2, 2), p)
    elif case == "tensor":
        _save(torch.zeros(3, 3), p)
    elif case == "list":
        _save([torch.zeros(1)], p)
    elif case == "mixed":
        _save({"w": torch.zeros(1), "epoch": 3}, p)
    elif case == "emptydict":
        _save({}, p)
    with pytest.raises(CheckpointError, match=expect) as info:
        load_checkpoint(p)
    assert isinstance(info.value, UsageError) and str(p) in str(info.value)
    assert "weights_only=False" not in str(info.value) and "weights_only` set to `False" not in str(info.value)
    assert not marker.exists(), "the loader ran code from the file"


def test_load_weights_names_what_does_not_match():
    sd = Small().state_dict()
    bad = dict(sd)
    del bad["conv.bias"]
    bad["extra.weight"] = torch.zeros(2)
    bad["fc.weight"] = torch.zeros(5, 144)
    with pytest.raises(CheckpointError) as info:
        load_weights(Small(), bad, where="f.pt", model="Small")
    msg = str(info.value)
    assert msg.startswith("checkpoint f.pt: does not match the model Small: ")
    assert "missing keys (in the model, not in the file): conv.bias" in msg
    assert "unexpected keys (in the file, not in the model): extra.weight" in msg
    assert "wrong shapes: fc.weight: file [5, 144], model [3, 144]" in msg
    prefixed = {"module." + k: v for k, v in sd.items()}
    with pytest.raises(CheckpointError, match="saved from DataParallel"):
        load_weights(Small(), prefixed, where="f.pt", model="Small")
    nan = dict(sd, **{"fc.bias": torch.tensor([0.0, float("nan"), 1.0])})
    with pytest.raises(CheckpointError, match=r"non-finite values \(NaN or inf\) in fc\.bias"):
        load_weights(Small(), nan, where="f.pt", model="Small")
    m = load_weights(Small(), sd, where="f.pt", model="Small")
    assert all(torch.equal(m.state_dict()[k], sd[k]) for k in sd)


def test_tensor_digest_against_hashlib():
    a = torch.arange(6, dtype=torch.float32).view(2, 3)
    b = torch.tensor([1, -2], dtype=torch.int64)
    h = hashlib.sha256()
    h.update(b"a\0float32\0[2, 3]\0" + a.numpy().tobytes())
    h.update(b"b\0int64\0[2]\0" + b.numpy().tobytes())
    assert tensor_digest({"b": b, "a": a}) == tensor_digest({"a": a, "b": b}) == h.hexdigest()
    flipped = a.clone()
    flipped.view(torch.int32)[1, 2] ^= 1  # one bit of one value
    assert tensor_digest({"a": flipped, "b": b}) != h.hexdigest()
    assert tensor_digest({"a": a.t().contiguous().t(), "b": b}) == h.hexdigest()  # layout does not matter


# ------------------------------------------------------------------- every parameter kind in the memory

class TokenTransformer(nn.Module):
    """Token ids -> classes: embedding (tied with the output layer), position parameter, attention, layer norm,
    a conv over the sequence, a frozen linear layer."""

    def __init__(self, vocab=20, dim=16, seq=6, classes=4):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, seq, dim) * 0.1)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv1d(dim, dim, 3, padding=1)
        self.frozen = nn.Linear(dim, dim)
        self.frozen.requires_grad_(False)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.embed.weight  # tied: one tensor in the memory
        self.head = nn.Linear(vocab, classes)

    def forward(self, ids):
        x = self.embed(ids) + self.pos
        x = x + self.attn(x, x, x, need_weights=False)[0]
        x = self.norm(x)
        x = x + self.conv(x.transpose(1, 2)).transpose(1, 2)
        return self.head(self.out(self.frozen(x)).mean(1))


def test_every_parameter_kind_is_in_the_memory():
    torch.manual_seed(0)
    model = TokenTransformer().eval()
    with torch.no_grad():  # a trained layer norm (a fresh one is constant: every code decodes to its constant)
        model.norm.weight.uniform_(0.5, 1.5)
    ids = torch.randint(0, 20, (8, 6))
    names = [n for n, _ in model.named_parameters()]  # the tied weight once
    assert "out.weight" not in names and names.count("embed.weight") == 1
    m = copy.deepcopy(model).requires_grad_(True)  # as the harness does for a supplied model
    qm = QuantizedModel.from_module(m, rquant(8))
    assert qm.names == names
    for kind in ("embed.weight", "pos", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
                 "norm.weight", "norm.bias", "conv.weight", "frozen.weight", "head.weight"):
        assert kind in qm.names
    assert qm.n_words == sum(p.numel() for p in model.parameters())
    flatten_parameters(qm.parameters_of(m))
    # reference: the dequantized tensors copied into an untouched deep copy by name (no flat memory)
    ref = copy.deepcopy(model)
    deq = qm.dequantize_tensors()
    with torch.no_grad():
        for n, p in ref.named_parameters():
            p.copy_(deq[n])
    qm.load_into(m)
    with torch.inference_mode():
        assert torch.equal(m(ids), ref(ids))
    assert m.out.weight is m.embed.weight and torch.equal(m.out.weight, deq["embed.weight"])
    # a flipped bit in one word changes exactly that weight of that tensor
    for name in ("attn.in_proj_weight", "embed.weight", "norm.weight", "pos"):
        t = qm.index(name)
        codes = qm.clone_codes()
        word = qm.offsets[t] + 5
        codes[word] ^= 1 << 7
        qm.load_into(m, codes)
        changed = {n for n, p in m.named_parameters() if not torch.equal(p.detach(), deq[n])}
        assert changed == {name}
        flat = dict(m.named_parameters())[name].detach().reshape(-1)
        assert (flat != deq[name].reshape(-1)).nonzero().flatten().tolist() == [5]
    qm.load_into(m)


def test_api_on_a_token_model_leaves_the_callers_module_alone():
    torch.manual_seed(0)
    model = TokenTransformer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    ids, y = torch.randint(0, 20, (64, 6), generator=g), torch.randint(0, 4, (64,), generator=g)
    rec = bitbench.evaluate_model(model, (ids, y), format="rquant", attack="random_p0.05", patterns=3)
    assert rec.model_source == "user" and rec.n_params == sum(p.numel() for p in model.parameters())
    assert rec.dataset == "tensors" and rec.n_eval == 64 and rec.n_patterns == 3 and rec.seeds == [100, 101, 102]
    assert rec.weights_sha256 == tensor_digest(model.state_dict()) and rec.checkpoint is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad is (not n.startswith("frozen")) for n, p in model.named_parameters())
    # the same call gives the same record numbers; a DataLoader of the same examples too
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ids, y), batch_size=10)
    rec2 = bitbench.evaluate_model(model, loader, format="rquant", attack="random_p0.05", patterns=3)
    assert rec2.per_pattern_rerr == rec.per_pattern_rerr and rec2.config_hash == rec.config_hash
    assert rec.to_json()["model_source"] == "user"


def test_api_errors():
    model = Small()
    x, y = torch.rand(10, 1, 8, 8), torch.randint(0, 3, (10,))
    with pytest.raises(UsageError, match="'clip' is a training recipe"):
        bitbench.evaluate_model(model, (x, y), format="clip", patterns=1)
    with pytest.raises(UsageError, match="labels of shape"):
        bitbench.evaluate_model(model, (x, y[:5]), patterns=1)
    with pytest.raises(UsageError, match="is adversarial: give attack_data"):
        bitbench.evaluate_model(model, (x, y), attack="bfa_n2")
    with pytest.raises(UsageError, match=r"fails on the tensors inputs of shape \[1, 9, 9\]"):
        bitbench.evaluate_model(model, (torch.rand(10, 1, 9, 9), y), patterns=1)
    with pytest.raises(UsageError, match=r"returns \[2, 3\] for 2 images; expected logits \[N, classes\] with at "
                                         r"least 7 classes"):
        bitbench.evaluate_model(model, (x, torch.full((10,), 6)), patterns=1)
    with pytest.raises(UsageError, match="expected a torch.nn.Module"):
        bitbench.evaluate_model(lambda t: t, (x, y))


def test_supplied_model_loads_a_checkpoint_into_a_copy(tmp_path):
    torch.manual_seed(0)
    trained = Small()
    path = _save(trained.state_dict(), tmp_path / "w.pt")
    fresh = Small()
    sm = supplied_model(fresh, name="mine:build", checkpoint=path)
    assert sm.checkpoint == path and sm.source == "user" and sm.name == "mine:build"
    assert sm.checkpoint_sha256 == hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert sm.weights_sha256 == tensor_digest(trained.state_dict())
    assert not torch.equal(fresh.fc.weight, trained.fc.weight)  # the caller's module is not loaded in place
    with open(tmp_path / "p.pkl", "wb") as f:
        pickle.dump({"w": 1}, f, protocol=2)
    with pytest.raises(CheckpointError, match="p.pkl"):
        supplied_model(fresh, checkpoint=tmp_path / "p.pkl")
    os.remove(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        supplied_model(fresh, checkpoint=path)


@pytest.mark.gpu
def test_api_on_cuda_flips_the_same_bits_as_on_the_cpu():
    """The same call on the GPU: same weights digest and memory; the patterns are the same bits (the kernels are
    bit-identical), so the robust errors agree up to float differences of the inference (here: exactly or within
    one example of 64)."""
    torch.manual_seed(0)
    model = TokenTransformer()
    g = torch.Generator().manual_seed(1)
    ids, y = torch.randint(0, 20, (64, 6), generator=g), torch.randint(0, 4, (64,), generator=g)
    cpu = bitbench.evaluate_model(model, (ids, y), format="rquant", attack="random_p0.02", patterns=3, device="cpu")
    gpu = bitbench.evaluate_model(model, (ids, y), format="rquant", attack="random_p0.02", patterns=3, device="cuda")
    assert gpu.device.startswith("cuda") and gpu.weights_sha256 == cpu.weights_sha256
    assert gpu.n_params == cpu.n_params and gpu.seeds == cpu.seeds
    assert all(abs(a - b) <= 1 / 64 + 1e-12 for a, b in zip(gpu.per_pattern_rerr, cpu.per_pattern_rerr))
