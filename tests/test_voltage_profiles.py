"""configs.voltage: the curve file and the folder of profiled error maps, their validation (clear messages, exit
code 2 as UsageError), the packaged synthetic example and V_min / energy saved on it computed by hand."""
import math

import numpy as np
import pytest

from bitbench.configs.energy import voltage_energy, vmin_at_rate
from bitbench.configs.errors import UsageError
from bitbench.configs.voltage import (ProfileError, load_profile, packaged_profiles, read_curve,
                                      read_profiled_map, save_profiled_map)

GOOD = "# nominal_voltage_v = 1.0\nvoltage_v,ber\n0.5,0.0156\n0.55,0.0023\n1.0,0\n"


def write(tmp_path, text, name="chip.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_curve_file_is_read_sorted_with_its_digest(tmp_path):
    p = write(tmp_path, "# a comment\n\n# nominal_voltage_v = 0.9\nvoltage_v,ber\n0.9,0\n0.5,0.0156\n0.55,0.0023\n")
    prof = load_profile(p)
    assert prof.voltages == [0.5, 0.55, 0.9] and prof.rates == [0.0156, 0.0023, 0.0]
    assert prof.nominal_voltage == 0.9 and prof.kind == "curve" and prof.symmetric and prof.energy is None
    assert prof.sha256.startswith("sha256:") and len(prof.sha256) == 71
    moved = tmp_path / "elsewhere.csv"
    moved.write_bytes(p.read_bytes())
    assert load_profile(moved).sha256 == prof.sha256          # content, not path
    assert load_profile(p, nominal_voltage=1.1).nominal_voltage == 1.1     # the argument takes precedence


def test_separate_directions_and_energy_column(tmp_path):
    prof = load_profile(write(tmp_path, "# nominal_voltage_v = 1.0\nvoltage_v,ber_01,ber_10,energy\n"
                                        "0.5,0.01,0.02,5\n0.6,0.002,0.001,7\n1.0,0,0,20\n"))
    assert prof.rate01 == [0.01, 0.002, 0] and prof.rate10 == [0.02, 0.001, 0] and not prof.symmetric
    assert prof.rates == [0.02, 0.002, 0]                      # the larger direction (conservative)
    assert prof.energy == [5, 7, 20]


BAD = [
    ("voltage_v,ber\n0.5,0.01\n0.6,0.001\n", "no nominal voltage"),
    ("# nominal_voltage_v = 1.0\nvoltage_v,ber\n0.5,0.01\n", "at least two"),
    ("# nominal_voltage_v = 1.0\nvoltage_v,ber\n0.5,0.01\n0.5,0.001\n", "appears twice"),
    ("# nominal_voltage_v = 1.0\nvoltage_v,ber\n0.5,0.001\n0.6,0.01\n", "rises with voltage"),
    ("# nominal_voltage_v = 1.0\nvoltage_v,ber_01,ber_10\n0.5,0.01,0.001\n0.6,0.001,0.002\n",
     "1->0 rate rises with voltage"),
    ("# nominal_voltage_v = 1.0\nvoltage_v,ber\n0.5,nan\n0.6,0.001\n", "finite"),
    ("# nominal_voltage_v = 1.0\nvoltage_v,ber\n0.5,-0.01\n0.6,0.001\n", "negative"),
    ("# nominal_voltage_v = 1.0\nvoltage_v,ber\n-0.5,0.01\n0.6,0.001\n", "positive number of volts"),
    ("# nominal_voltage_v = 1.0\nvoltage_v,ber\n0.5,1.56\n0.6,0.23\n", "not percent"),
    ("# nominal_voltage_v = 1.0\nvoltage_v,ber\n0.5,1.56%\n0.6,0.23%\n", "not percent"),
    ("# nominal_voltage_v = 1000\nvoltage_v,ber\n500,0.01\n600,0.001\n", "millivolts"),
    ("# nominal_voltage_v = 1.0\nvoltage_v,rate\n0.5,0.01\n0.6,0.001\n", "unknown column"),
    ("# nominal_voltage_v = 1.0\nvoltage_v,ber,ber_01\n0.5,0.01,0.01\n0.6,0.001,0.001\n", "not both"),
    ("# nominal_voltage_v = 1.0\nvoltage_v,ber_01\n0.5,0.01\n0.6,0.001\n", "both 'ber_01'"),
    ("# nominal_voltage_v = 1.0\nber\n0.01\n0.001\n", "'voltage_v' column"),
    ("# nominal_voltage_v = 1.0\nvoltage_v,ber\n0.5,0.01,3\n0.6,0.001\n", "3 fields"),
    ("# nominal_voltage_v = 1.0\nvoltage_v,ber\n0.5,\n0.6,0.001\n", "empty"),
    ("# nominal_voltage_v = 1.0\nvoltage_v,ber\n0.5,abc\n0.6,0.001\n", "not a number"),
    ("# nominal_voltage_v = 1.0\nvoltage_v,ber,energy\n0.5,0.01,7\n1.0,0.001,5\n", "energy per access falls"),
    ("# nominal_voltage_v = 1.0\nvoltage_v,ber,energy\n0.5,0.01,0\n1.0,0.001,5\n", "must be positive"),
    ("# nominal_voltage_v = 0.4\nvoltage_v,ber\n0.5,0.01\n0.6,0.001\n", "below every measured voltage"),
    ("# nominal_voltage_v = 1.2\nvoltage_v,ber,energy\n0.5,0.01,5\n1.0,0.001,9\n", "measure the nominal voltage"),
    ("# nominal_voltage_v: 1.0\nvoltage_v,ber\n0.5,0.01\n0.6,0.001\n", "nominal_voltage_v = <volts>"),
    ("# nominal_voltage_v = 1.0\n# nominal_voltage_v = 1.0\nvoltage_v,ber\n0.5,0.01\n0.6,0.001\n", "second"),
    ("# only comments\n", "no header"),
    ("# nominal_voltage_v = 1.0\nvoltage_v,voltage_v,ber\n0.5,0.5,0.01\n0.6,0.6,0.001\n", "appear twice"),
]


@pytest.mark.parametrize("text,message", BAD)
def test_bad_curves_are_refused_with_a_clear_message(tmp_path, text, message):
    with pytest.raises(ProfileError, match=message) as e:
        load_profile(write(tmp_path, text))
    assert isinstance(e.value, UsageError) and "chip.csv" in str(e.value)


def test_line_numbers_in_messages(tmp_path):
    with pytest.raises(ProfileError, match=r"chip\.csv:4: ber -0\.01 is negative"):
        load_profile(write(tmp_path, "# nominal_voltage_v = 1.0\nvoltage_v,ber\n0.5,0.01\n0.6,-0.01\n"))


def test_paths_that_are_not_curves(tmp_path):
    with pytest.raises(ProfileError, match="not a packaged profile"):
        load_profile(tmp_path / "missing.csv")
    (tmp_path / "map.npz").write_bytes(b"PK\x03\x04rest")
    with pytest.raises(ProfileError, match="single error map is not a profile"):
        load_profile(tmp_path / "map.npz")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ProfileError, match="UTF-8"):
        load_profile(tmp_path / "bin.csv")


# ------------------------------------------------------------------------------------------- error-map folders
def test_folder_of_profiled_maps(tmp_path):
    shape = (64, 64, 8)                      # 32768 cells: a few stuck cells are a rate below 1e-4
    for v, p in ((0.5, 1e-2), (0.6, 1e-3), (0.7, 1e-4)):
        save_profiled_map(tmp_path / f"sram_{v}V.npz", voltage_v=v, p=np.full(shape, p),
                          nominal_voltage_v=1.0 if v == 0.7 else None)
    stuck = -np.ones(shape, dtype=np.int8)
    stuck[0, 0, :2] = 1                      # 2 cells stuck at 1 (0->1 errors), 1 stuck at 0 (1->0)
    stuck[1, 0, 0] = 0
    save_profiled_map(tmp_path / "sram_0.8V.npz", voltage_v=0.8, stuck=stuck)
    save_profiled_map(tmp_path / "sram_0.9V.npz", voltage_v=0.9, p01=np.zeros(shape), p10=np.zeros(shape))
    (tmp_path / "README.txt").write_text("notes are ignored")
    prof = load_profile(tmp_path)
    n = np.prod(shape)
    assert prof.kind == "error_maps" and prof.voltages == [0.5, 0.6, 0.7, 0.8, 0.9] and prof.nominal_voltage == 1.0
    assert prof.rate01 == pytest.approx([1e-2, 1e-3, 1e-4, 2 / n, 0]) and prof.rate10[3] == pytest.approx(1 / n)
    assert [m.rsplit("/", 1)[1] for m in prof.maps] == [f"sram_{v}V.npz" for v in (0.5, 0.6, 0.7, 0.8, 0.9)]
    # V_min on the maps' rates: 10^-2.5 halfway (log) between 0.5 V and 0.6 V
    assert vmin_at_rate(prof, 10 ** -2.5).value == pytest.approx(0.55)
    m = read_profiled_map(tmp_path / "sram_0.5V.npz")
    assert m["voltage"] == 0.5 and m["nominal_voltage"] is None and m["rate01"] == pytest.approx(1e-2)


def _folder(tmp_path, maps):
    for name, kw in maps.items():
        if name.endswith(".npy"):
            np.save(tmp_path / name, kw)
        else:
            np.savez(tmp_path / name, **kw)
    return tmp_path


P = np.full((2, 2, 8), 1e-3)
BAD_FOLDERS = [
    ({}, "no .npz error maps"),
    ({"a.npz": {"p": P, "voltage_v": 0.5, "nominal_voltage_v": 1.0}}, "at least two"),
    ({"a.npz": {"p": P}}, "no 'voltage_v'"),
    ({"a.npz": {"p": P, "voltage_v": 0.5, "nominal_voltage_v": 1.0},
      "b.npz": {"p": P, "voltage_v": 0.5}}, "appears twice"),
    ({"a.npz": {"p": P, "voltage_v": 0.5, "nominal_voltage_v": 1.0},
      "b.npz": {"p": P * 2, "voltage_v": 0.6}}, "rises with voltage"),
    ({"a.npz": {"p": P, "voltage_v": 0.5, "nominal_voltage_v": 1.0},
      "b.npz": {"p": P, "voltage_v": 0.6, "nominal_voltage_v": 1.1}}, "disagree on nominal"),
    ({"a.npz": {"p": P, "voltage_v": 0.5}, "b.npz": {"p": P, "voltage_v": 0.6}}, "no nominal voltage"),
    ({"a.npz": {"p": P, "voltage_v": 0.5, "extra": P}}, "exactly one of"),
    ({"a.npz": {"p": P, "voltage_v": np.array([0.5, 0.6])}}, "single number"),
    ({"a.npz": {"p": P, "voltage_v": 550.0}}, "millivolts"),
    ({"a.npz": {"p": P + 2, "voltage_v": 0.5}}, r"in \[0, 1\]"),
    ({"a.npz": {"p": P * np.nan, "voltage_v": 0.5}}, "NaN"),
    ({"a.npz": {"stuck": np.full((2, 2, 8), 3, dtype=np.int8), "voltage_v": 0.5}}, "stuck at 1"),
    ({"a.npz": {"p": np.full((2, 8), 1e-3), "voltage_v": 0.5}}, "shape"),
    ({"a.npy": P}, "cannot hold its voltage"),
]


@pytest.mark.parametrize("maps,message", BAD_FOLDERS)
def test_bad_map_folders_are_refused(tmp_path, maps, message):
    with pytest.raises(ProfileError, match=message):
        load_profile(_folder(tmp_path, maps))


def test_save_profiled_map_validates_before_writing(tmp_path):
    with pytest.raises(ProfileError, match="millivolts"):
        save_profiled_map(tmp_path / "x.npz", voltage_v=550, p=P)
    assert not (tmp_path / "x.npz").exists()
    with pytest.raises(ValueError, match="exactly one"):
        save_profiled_map(tmp_path / "x.npz", voltage_v=0.5, p=P, stuck=np.zeros((2, 2, 8)))


def test_profiled_maps_are_readable_by_the_errmap_attack(tmp_path):
    from bitbench.attacks.error_map import load_error_map

    save_profiled_map(tmp_path / "m.npz", voltage_v=0.5, p=P)
    assert load_error_map(tmp_path / "m.npz").rate == pytest.approx(1e-3)


# ------------------------------------------------------------------------------------------- packaged example
def test_example_profile_is_labelled_synthetic_and_follows_its_stated_law():
    assert "example_sram" in packaged_profiles()
    prof = load_profile("example_sram")
    assert prof.name == "example_sram" and prof.nominal_voltage == 1.0 and prof.energy is None
    from bitbench.configs.voltage import _packaged_dir
    header = (_packaged_dir() / "example_sram.csv").read_text().split("voltage_v,ber")[0]
    assert "SYNTHETIC" in header and "not a measured chip" in header and "anchor" in header
    # the anchors, and every row on the line log10 ber = log10 0.0023 + (V - 0.55) * slope (6 digits)
    at = dict(zip(prof.voltages, prof.rates))
    assert at[0.55] == 0.0023 and at[0.5] == 0.0156
    slope = (math.log10(0.0156) - math.log10(0.0023)) / (0.50 - 0.55)
    for v, r in at.items():
        assert r == pytest.approx(10 ** (math.log10(0.0023) + (v - 0.55) * slope), rel=1e-5)


def test_example_profile_vmin_and_saving_by_hand():
    """p* = 1%: between 0.50 V (1.56%) and 0.55 V (0.23%) on the log-linear law:
    V = 0.5 + 0.05 * (log 0.01 - log 0.0156) / (log 0.0023 - log 0.0156); saving = 1 - V^2 (nominal 1.0 V)."""
    prof = load_profile("example_sram")
    want = 0.5 + 0.05 * (math.log(0.01) - math.log(0.0156)) / (math.log(0.0023) - math.log(0.0156))
    ve = voltage_energy(prof, 0.01)
    assert ve.v_min.value == pytest.approx(want, abs=1e-12) and 0.511 < want < 0.512
    assert ve.saving.value == pytest.approx(1 - want ** 2, abs=1e-12)


def test_the_documented_example_curve_parses():
    """docs/energy.md's curve example is a valid profile (and says what the page says)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "energy.md").read_text()
    block = text.split("### Curve file (CSV)")[1].split("```")[1]
    prof = read_curve(block, "docs/energy.md")
    assert prof.nominal_voltage == 0.9 and prof.voltages[0] == 0.6 and prof.rates[-1] == 0
