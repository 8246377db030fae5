"""RADAR-style checksums (defenses/protection/radar.py) against a straightforward signature written here (Python
loops over the groups), exhaustively over single covered-bit flips; cancelling pairs pass unseen; the adaptive BFA
keeps every signature intact where BFA is caught; the spec grammar and the record's protection fields."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from bitbench import kernels
from bitbench.attacks import create_attack
from bitbench.configs.errors import UsageError
from bitbench.configs.record import RecordError, ResultRecord, protection_summary
from bitbench.configs.registries import create_defense, create_protection
from bitbench.configs.spec import SpecError, split_stages
from bitbench.defenses.protection import ProtectedModel
from bitbench.defenses.quantization import rquant


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(20, 24), nn.ReLU(), nn.Linear(24, 5))


def ref_signatures(codes: torch.Tensor, group_of: list[int], sign: list[int], bit: int, mod: int) -> dict:
    out: dict = {}
    for w, (gi, s) in enumerate(zip(group_of, sign)):
        out[gi] = out.get(gi, 0) + s * ((int(codes[w]) >> bit) & 1)
    return {gi: v % mod for gi, v in out.items()}


def test_groups_partition_each_tensor_and_signatures_match_the_reference():
    d = create_defense("rquant+radar:group=7,key=3")
    pm = d.quantize(net())
    st = pm.stages[0]
    group_of, sign = st.group_of.tolist(), st.sign.tolist()
    assert set(sign) == {-1, 1}
    seen = set()
    for t, (o, n) in enumerate(zip(pm.offsets, pm.lengths)):
        gs = group_of[o:o + n]
        assert not (set(gs) & seen)                       # groups never span two tensors
        seen |= set(gs)
        sizes = [gs.count(g) for g in sorted(set(gs))]
        assert sum(sizes) == n and len(sizes) == -(-n // 7)     # groups of 7, the last one holds the remainder
        assert sorted(sizes)[1:] == [7] * (len(sizes) - 1) and 1 <= min(sizes) <= 7
    # interleaved: consecutive words of a tensor fall into different groups (almost always)
    same = sum(group_of[i] == group_of[i + 1] for i in range(pm.n_words - 1))
    assert same < pm.n_words / 5
    ref = ref_signatures(pm.codes, group_of, sign, pm.bits - 1, 4)
    assert [ref[g] for g in range(st.n_groups)] == kernels.to_pattern(st.region.words).tolist()
    assert pm.memory_overhead == pytest.approx(2 * st.n_groups / (pm.n_words * pm.bits))
    # the key changes the interleaving
    other = create_defense("rquant+radar:group=7,key=4").quantize(net()).stages[0]
    assert other.group_of.tolist() != group_of


@pytest.mark.parametrize("policy", ["zero", "keep", "fail"])
def test_every_single_covered_flip_is_detected_and_its_group_recovered(policy):
    pm = create_defense(f"rquant+radar:group=8,policy={policy}").quantize(net())
    st, m = pm.stages[0], pm.bits
    clean = pm.codes
    for w in range(pm.n_words):
        codes = clean.clone()
        codes[w:w + 1] = kernels.flip_one_bit(codes[w:w + 1], torch.tensor([m - 1]))
        rec = pm.recover(codes)
        assert rec.stats["radar.flagged"] == 1 and rec.stats["radar.detected_flips"] == 1
        assert rec.stats["radar.flips"] == 1 and rec.stats["flips"] == 1
        grp = st.group_of == st.group_of[w]
        if policy == "zero":
            assert torch.equal(rec.codes[grp], pm.zero_codes[grp]) and torch.equal(rec.codes[~grp], clean[~grp])
        else:
            assert torch.equal(rec.codes, codes)
        assert rec.failed == (policy == "fail")


def test_uncovered_flips_and_cancelling_pairs_pass_unseen_a_same_direction_pair_is_caught():
    pm = create_defense("rquant+radar:group=8").quantize(net())
    st, m = pm.stages[0], pm.bits
    clean = pm.codes
    for b in range(m - 1):                              # flips of other bits are never seen
        codes = kernels.flip_one_bit(clean, torch.full((pm.n_words,), b))
        rec = pm.recover(codes)
        assert rec.stats["radar.flagged"] == 0 and torch.equal(rec.codes, codes)
    msb = ((clean.to(torch.int64) >> (m - 1)) & 1).tolist()
    change = [(s if v == 0 else -s) for s, v in zip(st.sign.tolist(), msb)]
    members: dict = {}
    for w, g in enumerate(st.group_of.tolist()):
        members.setdefault(g, []).append(w)
    checked = {"cancel": 0, "same": 0}
    for g, ws in members.items():
        for i in ws:
            for j in ws:
                if j <= i:
                    continue
                kind = "cancel" if change[i] == -change[j] else "same"
                if checked[kind] >= 40:
                    continue
                codes = clean.clone()
                idx = torch.tensor([i, j])
                codes[idx] = kernels.flip_one_bit(codes[idx], torch.tensor([m - 1, m - 1]))
                rec = pm.recover(codes)
                assert rec.stats["radar.flagged"] == (0 if kind == "cancel" else 1)   # +-2 != 0 mod 4
                checked[kind] += 1
    assert checked == {"cancel": 40, "same": 40}


def test_signatures_in_the_image_take_random_errors_secure_ones_do_not():
    plain = create_defense("rquant+radar").quantize(net())
    assert plain.check_regions == [] and plain.image_words == plain.n_words
    pm = create_defense("rquant+radar:secure=false,policy=keep").quantize(net())
    (r,) = pm.check_regions
    assert r.offset == pm.n_words and r.bits == 2
    a = create_attack("random_p0.2", patterns=1, base_seed=5)
    pert = next(a.perturbations(pm))
    want = kernels.random_flip(r.words, 0.2, seed=pert.seed, bits=2, offset=pm.n_words)
    assert torch.equal(pert.check[0], want)
    clean_data = pm.recover(pm.codes, pert.check)            # only signatures hit: false alarms
    wrong = int((kernels.to_pattern(want) != kernels.to_pattern(r.words)).sum())
    assert clean_data.stats["radar.flagged"] == wrong > 0


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(256, 20, generator=g), torch.randint(0, 5, (256,), generator=g)


def test_adaptive_bfa_keeps_signatures_intact_where_bfa_is_caught():
    model, (x, y) = net(), _data()
    pm = create_defense("rquant+radar:group=8").quantize(model)
    bfa = next(create_attack("bfa_n12:trials=1,stop=budget").perturbations(pm, model=model, data=(x, y)))
    rec = pm.recover(bfa.codes)
    assert rec.stats["radar.detected_flips"] >= 6           # most of BFA's flips are MSB flips: caught

    states = []

    def observe(k, codes, point):
        states.append(pm.recover(codes).stats["radar.flagged"])

    ad = create_attack("bfa_adaptive_n12:trials=1,stop=budget")
    pert = next(ad.perturbations(pm, model=model, data=(x, y), observe=observe))
    rec = pm.recover(pert.codes)
    assert pert.info["flips"] == 12 and pert.info["adaptive"] == "radar"
    assert rec.stats["radar.flagged"] == 0 and states and set(states) == {0}   # never seen, at any step
    assert torch.equal(rec.codes, pert.codes)                # nothing recovered
    covered = [t for t in pert.trace if t["bit"] == pm.bits - 1]
    assert len(covered) % 2 == 0
    # without checksums the adaptive attack is BFA
    plain = create_defense("rquant").quantize(model)
    a = next(create_attack("bfa_n6:trials=1").perturbations(plain, model=model, data=(x, y)))
    b = next(create_attack("bfa_adaptive_n6:trials=1").perturbations(plain, model=model, data=(x, y)))
    assert a.trace == b.trace and torch.equal(a.codes, b.codes)


def test_spec_grammar_and_errors():
    assert split_stages("rquant:bits=4+secded:word=32+radar") == ("rquant:bits=4", ["secded:word=32", "radar"])
    assert split_stages("quant:scale=1e+2") == ("quant:scale=1e+2", [])
    d = create_defense("rquant+secded:word=32,policy=zero")
    assert d.spec == "rquant+secded:policy=zero,word=32" and isinstance(d.quantize(net()), ProtectedModel)
    assert create_defense("randbet+secded:word=64").base.registry_name == "randbet"
    both = create_defense("rquant+secded+radar").quantize(net())      # ECC corrects, then the checksums check
    codes = both.codes.clone()
    codes[:1] = kernels.flip_one_bit(codes[:1], torch.tensor([both.bits - 1]))
    rec = both.recover(codes)
    assert rec.stats["secded.corrected"] == 1 and rec.stats["radar.flagged"] == 0 and torch.equal(rec.codes, both.codes)
    for bad, what in [("rquant+", "must join"), ("+secded", "must join"), ("rquant+secded+secded", "twice"),
                      ("rquant+nosuch", "nosuch"), ("rquant+secded:policy=drop", "policy"),
                      ("rquant+secded:word=4", "word"), ("rquant+radar:group=0", "group"),
                      ("rquant+radar+secded", "name it first")]:
        with pytest.raises(UsageError, match=what):
            create_defense(bad).quantize(net())
    assert isinstance(create_protection("radar"), object)
    with pytest.raises(SpecError):
        create_protection("secded:word=-1")


def test_record_carries_protection_and_refuses_tampering():
    import bitbench

    model = net()
    x, y = _data()
    rec = bitbench.evaluate_model(model, (x, y), format="rquant+secded", attack="random_p0.02", patterns=3,
                                  device="cpu", dataset="toy")
    n = rec.protection["data_bits"] // 8                    # 8-bit words; 8 per (72, 64) codeword, 8 check bits each
    assert rec.defense == "rquant+secded" and rec.protection["check_bits"] == 8 * -(-n // 8)
    assert rec.memory_overhead == rec.protection["check_bits"] / rec.protection["data_bits"]
    assert rec.protection["spec"] == "secded" and rec.protection["image_bits"] == 8 * n + rec.protection["check_bits"]
    assert rec.decode_ms > 0 and rec.time_overhead > 0
    counts = [p.protection for p in rec.patterns]
    assert all({"flips", "residual", "failed", "secded.corrected", "secded.detected"} <= set(c) for c in counts)
    assert sum(c["secded.corrected"] for c in counts) > 0
    d = rec.to_json()
    back = ResultRecord.from_json(json.loads(json.dumps(d)))
    assert back.protection == rec.protection and [p.protection for p in back.patterns] == counts
    assert protection_summary(back)["flips"] == pytest.approx(sum(c["flips"] for c in counts) / 3)
    bad = json.loads(json.dumps(d))
    bad["memory_overhead"] = 0.5
    with pytest.raises(RecordError, match="memory_overhead"):
        ResultRecord.from_json(bad)
    bad = json.loads(json.dumps(d))
    bad["patterns"]["protection"] = counts[:2]
    with pytest.raises(RecordError, match="patterns.protection: 2 values, but patterns.seed has 3"):
        ResultRecord.from_json(bad)
    bad = json.loads(json.dumps(d))
    bad["patterns"]["protection"][0]["failed"] = 1          # a failed inference must count every input wrong
    with pytest.raises(RecordError, match="failed"):
        ResultRecord.from_json(bad)
    bad = json.loads(json.dumps(d))
    bad["patterns"]["protection"][0]["secded.typo"] = 1     # a count the stage does not declare
    with pytest.raises(RecordError, match=r"patterns\.protection\[0\]\.secded\.typo: not a count the protection "
                                          r"declares"):
        ResultRecord.from_json(bad)
    plain = bitbench.evaluate_model(model, (x, y), format="rquant", attack="random_p0.02", patterns=1,
                                    device="cpu", dataset="toy")
    assert plain.memory_overhead == 0 and plain.protection is None and protection_summary(plain) is None


def test_unknown_adaptive_target_is_refused():
    model = net()
    pm = ProtectedModel(rquant_qm(model), [create_protection("radar"), create_protection("radar:key=1")])
    with pytest.raises(UsageError, match="one checksum"):
        next(create_attack("bfa_adaptive_n2:trials=1").perturbations(pm, model=model, data=_data()))


def rquant_qm(model):
    from bitbench.defenses.quantized_model import QuantizedModel

    return QuantizedModel.from_module(model, rquant(8))


def test_curves_on_a_protected_memory_are_measured_after_decoding():
    """evaluate_attack with BFA on clip+radar: every curve point is the error of the decoded state with that many
    flips (rebuilt here from the trace, decoded, a full forward), so the zeroing recovery is in the numbers."""
    from bitbench.evaluate import evaluate_attack, predict

    model, (xa, ya) = net(), _data()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(300, 20, generator=g), torch.randint(0, 5, (300,), generator=g)
    pm = create_defense("rquant+radar:group=8").quantize(model)
    attack = create_attack("bfa_n8:trials=2,stop=budget,sweep=1|2|4|8")
    ev = evaluate_attack(model, pm, attack, x, y, attack_data=(xa, ya))
    pm.load_into(model)
    clean_wrong = predict(model, x) != y
    for res, trace in zip(ev.patterns, ev.traces):
        assert res.protection["radar.flagged"] > 0
        for pt in res.curve:
            codes = pm.codes.clone()
            for t in trace[:pt["flips_used"]]:
                w = pm.offsets[t["tensor"]] + t["index"]
                codes[w:w + 1] = kernels.flip_one_bit(codes[w:w + 1], torch.tensor([t["bit"]]))
            pm.load_into(model, pm.recover(codes).codes)
            wrong = predict(model, x) != y
            assert pt["err"] == wrong.sum().item() / 300 and pt["rerr"] == (wrong | clean_wrong).sum().item() / 300
    pm.load_into(model)
