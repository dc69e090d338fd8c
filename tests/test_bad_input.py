"""Bad input: a clear error, exit code 2, nothing written."""

from __future__ import annotations

import pytest

from lowvram.cli import main

BASE = ["generate", "a cat", "--width", "64", "--height", "64", "--frames", "5", "--steps", "1"]


def run(argv, tmp_path, capsys):
    before = set(tmp_path.rglob("*"))
    code = main(argv)
    err = capsys.readouterr().err
    after = set(tmp_path.rglob("*"))
    return code, err, after - before


@pytest.mark.parametrize(
    "override, message",
    [
        (["--width", "65"], "--width 65 must be a positive multiple of 16"),
        (["--height", "100"], "--height 100 must be a positive multiple of 16"),
        (["--frames", "6"], "--frames 6 must be of the form 4k+1"),
        (["--steps", "0"], "--steps 0 must be at least 1"),
        (["--model", "no-such-model"], "not a known model name"),
        (["--model", "./missing/folder"], "not a known model name"),
    ],
)
def test_invalid_options(override, message, tmp_path, capsys):
    out = tmp_path / "x.mp4"
    code, err, new = run(BASE + override + ["--out", str(out)], tmp_path, capsys)
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert not new


def test_output_folder_missing(tmp_path, capsys):
    code, err, new = run(BASE + ["--out", str(tmp_path / "nope" / "x.mp4")], tmp_path, capsys)
    assert code == 2 and "does not exist" in err and not new


def test_image_for_t2v_refused(tmp_path, capsys, image_file):
    before = set(tmp_path.rglob("*"))
    code = main(BASE + ["--image", str(image_file), "--out", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err
    assert code == 2 and "text-to-video model and takes no --image" in err
    assert set(tmp_path.rglob("*")) == before


def test_missing_image_for_i2v_refused(tmp_path, capsys):
    code, err, new = run(BASE + ["--model", "tiny-random-i2v", "--out", str(tmp_path / "x.mp4")], tmp_path, capsys)
    assert code == 2 and "image-to-video model: give the first frame with --image" in err and not new


def test_unreadable_image(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    before = set(tmp_path.rglob("*"))
    code = main(BASE + ["--model", "tiny-random-i2v", "--image", str(bad), "--out", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err
    assert code == 2 and "not a readable image" in err
    assert set(tmp_path.rglob("*")) == before


def test_missing_image_file(tmp_path, capsys):
    code, err, new = run(BASE + ["--model", "tiny-random-i2v", "--image", str(tmp_path / "none.png"), "--out", str(tmp_path / "x.mp4")], tmp_path, capsys)
    assert code == 2 and "no such file" in err and not new


def test_several_problems_reported_together(tmp_path, capsys):
    code, err, _ = run(["generate", "a cat", "--width", "65", "--frames", "6", "--out", str(tmp_path / "x.mp4")], tmp_path, capsys)
    assert code == 2 and "--width 65" in err and "--frames 6" in err
