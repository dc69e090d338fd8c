"""Property-based tests: malformed `lowvram generate` arguments and malformed resume files always end
in a clear error (exit code 2, a message on stderr) before any model loads, never in a traceback."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lowvram.cli import main
from lowvram.errors import UserError
from lowvram.sampling.resume import FORMAT, load_resume_file

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

BASE = ["--width", "64", "--height", "64", "--frames", "5", "--steps", "1"]
INT_OPTIONS = ("--width", "--height", "--frames", "--steps", "--seed", "--fps")

not_an_int = st.text(min_size=1, max_size=12).filter(lambda s: not s.strip().lstrip("+-").isdigit() and not s.startswith("-"))
not_a_float = st.text(min_size=1, max_size=12).filter(lambda s: _not_float(s) and not s.startswith("-"))


def _not_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return True
    return False


def bad_size():
    return st.integers(-(2**40), 2**40).filter(lambda v: v < 16 or v % 16)


malformed = st.one_of(
    st.tuples(st.sampled_from(INT_OPTIONS), not_an_int).map(list),
    st.tuples(st.just("--guidance"), not_a_float).map(list),
    st.tuples(st.sampled_from(("--width", "--height")), bad_size().map(str)).map(list),
    st.integers(-(2**20), 2**20).filter(lambda f: f < 1 or (f - 1) % 4).map(lambda f: ["--frames", str(f)]),
    st.integers(-(2**70), 0).map(lambda s: ["--steps", str(s)]),
    st.integers(-(2**70), 0).map(lambda s: ["--fps", str(s)]),
    st.one_of(st.integers(-(2**70), -1), st.integers(2**64, 2**80)).map(lambda s: ["--seed", str(s)]),
    st.one_of(st.floats(max_value=-1e-9), st.just(float("nan")), st.just(float("inf"))).map(lambda g: ["--guidance", repr(g)]),
    st.text(alphabet="abcxyz_-", min_size=3, max_size=10).map(lambda n: [f"--no-such-{n}"]),
    st.text(alphabet="abcxyz", min_size=1, max_size=8).map(lambda n: ["--out", f"/nonexistent-dir-{n}/x.mp4"]),
    st.text(alphabet="abcxyz.", min_size=1, max_size=8).filter(lambda n: not n.lower().endswith(".mp4")).map(lambda n: ["--out", n]),
    st.text(alphabet="abcxyz", min_size=1, max_size=8).map(lambda n: ["--image", f"/nonexistent-{n}.png"]),
    st.text(alphabet="abcxyz", min_size=1, max_size=8).map(lambda n: ["--resume", f"/nonexistent-{n}.latents.safetensors"]),
    st.just(["--model", "/definitely/not/a/model/folder"]),
)
prompts = st.one_of(st.just("a cat"), st.text(alphabet=" \t", max_size=3), st.text(min_size=1, max_size=30).filter(lambda s: not s.startswith("-")))


def assert_clear_error(code: int, err: str) -> None:
    assert code == 2, err
    assert err.strip(), "no message on stderr"
    assert "Traceback" not in err, err


@FUZZ
@given(prompt=prompts, extra=st.lists(malformed, min_size=1, max_size=3))
def test_malformed_generate_arguments_fail_clearly(prompt, extra, capsys, tmp_path):
    flat = [x for pair in extra for x in pair]
    # the prompt is given after "--" so that any text stays a prompt
    code = main(["generate", *BASE, *flat, "--", prompt])
    captured = capsys.readouterr()
    assert_clear_error(code, captured.err)


@FUZZ
@given(data=st.binary(max_size=256))
def test_resume_file_of_random_bytes_fails_clearly(data, tmp_path_factory, capsys):
    path = tmp_path_factory.mktemp("r") / "x.latents.safetensors"
    path.write_bytes(data)
    code = main(["generate", "--resume", str(path)])
    assert_clear_error(code, capsys.readouterr().err)


def _header_bytes(header: dict, meta: dict) -> bytes:
    """A syntactically valid safetensors file from a header dict (tensor data zero-filled)."""
    h = dict(header)
    if meta is not None:
        h["__metadata__"] = meta
    raw = json.dumps(h).encode()
    size = max((v["data_offsets"][1] for k, v in header.items() if isinstance(v, dict) and "data_offsets" in v), default=0)
    return struct.pack("<Q", len(raw)) + raw + b"\0" * size


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=10)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)


@FUZZ
@given(meta_json=json_values)
def test_resume_header_that_is_not_ours_fails_clearly(meta_json, tmp_path_factory):
    path = tmp_path_factory.mktemp("r") / "x.latents.safetensors"
    tensor = {"latents": {"dtype": "F32", "shape": [1, 16, 1, 8, 8], "data_offsets": [0, 4096]}}
    path.write_bytes(_header_bytes(tensor, {FORMAT: json.dumps(meta_json)}))
    with pytest.raises(UserError):
        load_resume_file(str(path))


@pytest.fixture(scope="module")
def good_resume(tmp_path_factory):
    """A real resume file: a demo run cancelled after its first step."""
    from reliability_support import cancelled_resume_file

    return cancelled_resume_file(tmp_path_factory.mktemp("good"))


def _mutate(node, path, value):
    if not path:
        return value
    node = dict(node) if isinstance(node, dict) else list(node)
    key = path[0]
    node[key] = _mutate(node[key], path[1:], value)
    return node


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


def test_good_resume_file_loads(good_resume):
    path, header, _ = good_resume
    state = load_resume_file(str(path))
    assert state.checkpoint.step == 1 and state.job.steps == 3


@FUZZ
@given(data=st.data())
def test_resume_header_with_one_field_changed_loads_or_fails_clearly(good_resume, tmp_path_factory, data):
    """Change any one value in a real header to any JSON value: a valid state or a UserError, nothing else."""
    from safetensors.torch import save_file

    _, header, tensors = good_resume
    paths = [p for p in _paths(header) if p]
    where = data.draw(st.sampled_from(paths))
    value = data.draw(json_values)
    path = tmp_path_factory.mktemp("m") / "m.latents.safetensors"
    save_file({k: v.clone() for k, v in tensors.items()}, str(path), metadata={FORMAT: json.dumps(_mutate(header, where, value))})
    try:
        load_resume_file(str(path))
    except UserError:
        pass


@FUZZ
@given(drop=st.sets(st.sampled_from(["latents", "cond.prompt_embeds", "cond.negative_embeds", "sched.sigmas"]), min_size=1), reshape=st.booleans())
def test_resume_tensors_missing_or_misshapen_fail_clearly(good_resume, tmp_path_factory, drop, reshape):
    from safetensors.torch import save_file

    _, header, tensors = good_resume
    kept = {k: v.clone() for k, v in tensors.items() if k not in drop}
    if reshape and "latents" in kept:
        kept["latents"] = kept["latents"].reshape(1, -1)
    path = tmp_path_factory.mktemp("t") / "t.latents.safetensors"
    save_file(kept, str(path), metadata={FORMAT: json.dumps(header)})
    with pytest.raises(UserError):
        load_resume_file(str(path))


def test_no_torch_load_without_weights_only():
    """Safe inputs: weights come from safetensors; a torch.load anywhere must pass weights_only=True; no unpickling."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    offenders = []
    for folder in ("lowvram", "planner", "tui"):
        for py in (root / folder).rglob("*.py"):
            text = py.read_text()
            for call in re.findall(r"torch\.load\((?:[^()]|\([^()]*\))*\)", text):
                if "weights_only=True" not in call:
                    offenders.append(f"{py.relative_to(root)}: {call}")
            offenders += [f"{py.relative_to(root)}: {m}" for m in re.findall(r"\b(?:pickle|dill|joblib)\.loads?\(", text)]
    assert not offenders, offenders


@FUZZ
@given(data=st.binary(max_size=200), kind=st.sampled_from(["--image", "--profile"]))
def test_user_files_of_random_bytes_fail_before_loading(data, kind, tmp_path_factory, capsys):
    """Every file the user gives is validated before any model loads (a bad one costs no loading time)."""
    import lowvram.sampling.runner as runner

    folder = tmp_path_factory.mktemp("f")
    path = folder / ("x.png" if kind == "--image" else "x.toml")
    path.write_bytes(data)
    loads_before = runner.load_model
    calls = []
    runner.load_model = lambda *a, **k: calls.append(a) or loads_before(*a, **k)
    try:
        code = main(["generate", *BASE, kind, str(path), "--out", str(folder / "o.mp4"), "--", "a cat"])
    finally:
        runner.load_model = loads_before
    assert_clear_error(code, capsys.readouterr().err)
    assert calls == []


@pytest.mark.parametrize("extra", [["--steps", "3"], ["--width", "128", "--frames", "9"], ["--image", "x.png"]])
def test_resume_refuses_options_the_saved_job_fixes(extra, good_resume, capsys):
    path, _, _ = good_resume
    code = main(["generate", "--resume", str(path), *extra])
    err = capsys.readouterr().err
    assert_clear_error(code, err)
    assert extra[0] in err


def test_resume_with_out_works_when_the_saved_folder_is_gone(good_resume, tmp_path):
    from safetensors.torch import save_file

    path, header, tensors = good_resume
    moved = dict(header, job=dict(header["job"], out="/gone/folder/g.mp4"))
    copy = tmp_path / "moved.latents.safetensors"
    save_file({k: v.clone() for k, v in tensors.items()}, str(copy), metadata={FORMAT: json.dumps(moved)})
    with pytest.raises(UserError, match="/gone/folder"):
        load_resume_file(str(copy))
    assert load_resume_file(str(copy), out=str(tmp_path / "new.mp4")).job.out == str(tmp_path / "new.mp4")
