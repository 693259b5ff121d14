"""`--precision auto` on a CPU: bf16 only with AMX tiles and a model wide enough to gain."""

import logging

import pytest
import torch
from transformers import BertConfig, BertModel

from lib.core import device as device_module
from lib.core.device import BF16_MIN_HIDDEN, auto_cpu_precision, cpu_bf16_support, resolve_precision, training_precision

SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
COOPER_LAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n"
EPYC_ROME = "processor\t: 0\nflags\t\t: fpu sse2 avx2 sha_ni\n"


def test_bf16_instructions_are_read_from_the_flags_line():
    assert cpu_bf16_support(SAPPHIRE_RAPIDS) == ("amx_bf16", "avx512_bf16")
    assert cpu_bf16_support(COOPER_LAKE) == ("avx512_bf16",)
    assert cpu_bf16_support(EPYC_ROME) == ()
    assert cpu_bf16_support("model name\t: avx512_bf16 in the name only\n") == ()


@pytest.mark.parametrize("cpuinfo, hidden, expected", [
    (SAPPHIRE_RAPIDS, BF16_MIN_HIDDEN, "bf16"),
    (SAPPHIRE_RAPIDS, 768, "bf16"),
    (SAPPHIRE_RAPIDS, BF16_MIN_HIDDEN - 1, "fp32"),  # scratch:tiny (128 wide) measured slower in bf16
    (SAPPHIRE_RAPIDS, None, "fp32"),
    (COOPER_LAKE, 768, "fp32"),  # avx512_bf16 without AMX: bf16 measured slower at every width
    (EPYC_ROME, 768, "fp32"),
])
def test_auto_picks_bf16_only_where_it_was_measured_faster(cpuinfo, hidden, expected):
    precision, why = auto_cpu_precision(hidden, cpu_bf16_support(cpuinfo))
    assert precision == expected
    assert why.startswith("auto: ")


def test_auto_on_a_cpu_reads_this_machines_flags(monkeypatch):
    monkeypatch.setattr(device_module, "cpu_bf16_support", lambda: cpu_bf16_support(SAPPHIRE_RAPIDS))
    assert resolve_precision("auto", torch.device("cpu"), 512)[0] == "bf16"
    monkeypatch.setattr(device_module, "cpu_bf16_support", lambda: cpu_bf16_support(EPYC_ROME))
    assert resolve_precision("auto", torch.device("cpu"), 512)[0] == "fp32"
    monkeypatch.setattr(device_module, "cpu_bf16_support", lambda: cpu_bf16_support(COOPER_LAKE))
    assert resolve_precision("auto", torch.device("cpu"), 512) == (
        "fp32", "auto: this CPU has avx512_bf16 but no amx_bf16; bf16 is slower than fp32 there")


def test_the_choice_for_a_model_reads_its_width_and_logs_why(monkeypatch, caplog):
    monkeypatch.setattr(device_module, "cpu_bf16_support", lambda: cpu_bf16_support(SAPPHIRE_RAPIDS))
    model = BertModel(BertConfig(vocab_size=50, hidden_size=256, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64))
    with caplog.at_level(logging.INFO, logger="lib.core.device"):
        assert training_precision("auto", torch.device("cpu"), model) == "bf16"
    assert "precision bf16 (auto: amx_bf16+avx512_bf16 and a model 256 wide" in caplog.text
