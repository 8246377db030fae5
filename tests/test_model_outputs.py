"""Models as the ecosystem has them, without any third-party package: outputs that are a dict, a dataclass, a
ModelOutput-like mapping or a tuple, inputs by keyword, the adapter keeping names and state dicts, the
key-prefix diagnosis of mismatched checkpoints, and the `transformers:` source without transformers installed."""
from __future__ import annotations

import collections
import dataclasses
import sys

import pytest
import torch
from torch import nn

import bitbench
from bitbench.configs.errors import UsageError
from bitbench.models import build_model
from bitbench.models.adapters import adapt_model, logits_of
from bitbench.user_model import CheckpointError, load_weights, prefix_hint, supplied_model

pytestmark = pytest.mark.usefixtures("one_thread")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))

    def forward(self, x):
        return self.body(x)


@dataclasses.dataclass
class Output:
    loss: object
    logits: torch.Tensor


class Mapped(collections.OrderedDict):  # what a transformers ModelOutput is: an ordered mapping with attributes
    pass


class DictNet(Net):
    def forward(self, x):
        return {"hidden": x, "logits": self.body(x)}


class DataclassNet(Net):
    def forward(self, x):
        return Output(None, self.body(x))


class MappingNet(Net):
    def forward(self, x):
        return Mapped(logits=self.body(x))


class TupleNet(Net):
    def forward(self, x):
        return self.body(x), x


class KeywordNet(Net):
    def forward(self, *, pixel_values):
        return self.body(pixel_values)


class MainInputNet(Net):
    main_input_name = "pixel_values"

    def forward(self, input_ids=None, pixel_values=None, use_cache=True):
        assert input_ids is None and use_cache is False
        return (self.body(pixel_values),)


class StringNet(Net):
    def forward(self, x):
        return {"scores": self.body(x)}


@pytest.mark.parametrize("cls", [DictNet, DataclassNet, MappingNet, TupleNet, KeywordNet, MainInputNet])
def test_every_output_and_input_form_gives_the_plain_logits(cls):
    torch.manual_seed(0)
    plain = Net()
    other = cls()
    other.load_state_dict(plain.state_dict())
    names = [n for n, _ in other.named_parameters()]
    keys = list(other.state_dict())
    adapt_model(other)
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(other(x), plain(x))
    assert isinstance(other, cls) and [n for n, _ in other.named_parameters()] == names   # no wrapper prefix
    assert list(other.state_dict()) == keys
    assert adapt_model(other) is other                                                  # idempotent


def test_api_and_records_on_a_dict_output_model(ds):
    torch.manual_seed(0)
    plain, other = Net(), DictNet()
    other.load_state_dict(plain.state_dict())
    data = (ds.test_x[:100], ds.test_y[:100])
    a = bitbench.evaluate_model(plain, data, format="rquant", attack="random_p0.01", patterns=3)
    b = bitbench.evaluate_model(other, data, format="rquant", attack="random_p0.01", patterns=3)
    assert b.per_pattern_rerr == a.per_pattern_rerr and b.clean_err == a.clean_err
    assert not hasattr(type(other), "_bitbench_adapted")                 # the caller's module is not changed


def test_unusable_outputs_are_usage_errors(ds):
    with pytest.raises(UsageError, match=r"returns a dict with keys \['scores'\]; expected logits"):
        bitbench.evaluate_model(StringNet(), (ds.test_x[:10], ds.test_y[:10]), attack="random_p0.01", patterns=1)
    with pytest.raises(UsageError, match="returns a str"):
        logits_of("nope")


def test_prefix_hint_names_the_wrapper_prefix():
    torch.manual_seed(0)

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.vit_model = Net()

    state = Wrapper().state_dict()
    with pytest.raises(CheckpointError, match=r"the checkpoint's keys start with 'vit_model\.', the model's do not"):
        load_weights(Net(), state, where="w.pt", model="net")
    inner = Net().state_dict()
    with pytest.raises(CheckpointError, match=r"the model's keys start with 'vit_model\.', the checkpoint's do not"):
        load_weights(Wrapper(), inner, where="w.pt", model="wrapper")
    assert prefix_hint(["module.a.weight"], ["a.weight"]) .startswith(" (the model's keys start with 'module.'")
    assert "DataParallel" in prefix_hint(["a.weight"], ["module.a.weight"])
    assert prefix_hint(["a.weight"], ["b.weight"]) == ""


def test_supplied_model_is_adapted_on_a_copy():
    m = DictNet()
    sm = supplied_model(m)
    assert isinstance(sm.module(torch.rand(2, 1, 28, 28)), torch.Tensor)
    assert isinstance(m(torch.rand(2, 1, 28, 28)), dict)
    assert sm.name.endswith("DictNet")


def test_transformers_source_without_transformers(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)     # import fails as where it is not installed
    cfg = tmp_path / "config.json"
    cfg.write_text("{}")
    with pytest.raises(UsageError, match=r"need the transformers package.*pip install 'bitbench\[transformers\]'"):
        build_model(f"transformers:ViTForImageClassification:{cfg}", num_classes=10, in_channels=1, image_size=28)
    with pytest.raises(UsageError, match="config file .* not found"):
        build_model("transformers:ViTForImageClassification:missing.json", num_classes=10)
