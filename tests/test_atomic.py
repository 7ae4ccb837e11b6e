"""atomic.py: files and folders built beside their destination and renamed into place with the umask's permissions;
an interrupted build leaves nothing at the destination; every conversion (Qwen3 and Qwen3-VL) writes through it."""

import os
import stat
from pathlib import Path

import pytest
from vl_fixtures import vl_model  # noqa: F401  (session fixture)

from mlx_qwen3_embed import atomic
from mlx_qwen3_embed.quant import quantize, vl_quantize


@pytest.fixture
def umask():
    """Run the test under umask 027 (or what it sets), so that the permissions show the umask made them."""
    def set_to(mask: int) -> int:
        os.umask(mask)
        return mask

    previous = os.umask(0o027)
    yield set_to
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_building_folder_renames_into_place_with_umask_permissions(tmp_path, umask):
    dst = tmp_path / "deep" / "out"
    with atomic.building_folder(dst) as folder:
        assert folder.parent == dst.parent and folder.name.startswith(atomic.partial_prefix(dst))
        (folder / "a.txt").write_text("a")
    assert (dst / "a.txt").read_text() == "a"
    assert mode(dst) == 0o750 and mode(dst / "a.txt") == 0o640
    assert sorted(p.name for p in dst.parent.iterdir()) == ["out"]


def test_building_folder_that_raises_leaves_nothing(tmp_path):
    with pytest.raises(OSError, match="disk full"):
        with atomic.building_folder(tmp_path / "out") as folder:
            (folder / "a.txt").write_text("a")
            raise OSError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_building_folder_refuses_an_existing_dst(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="already exists: choose a new destination or remove it first"):
        with atomic.building_folder(tmp_path / "out"):
            pytest.fail("the block ran for an existing dst")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_building_folder_refuses_a_dst_made_meanwhile_and_leaves_it_untouched(tmp_path):
    dst = tmp_path / "out"
    with pytest.raises(FileExistsError, match=str(dst)):
        with atomic.building_folder(dst) as folder:
            (folder / "mine.txt").write_text("mine")
            dst.mkdir()  # another run finished first (an empty folder would be silently replaced by a rename)
            (dst / "theirs.txt").write_text("theirs")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and os.listdir(dst) == ["theirs.txt"]


def test_building_folder_removes_dead_runs_folders_and_keeps_running_ones(tmp_path):
    dst = tmp_path / "out"
    dead = tmp_path / f"{atomic.partial_prefix(dst)}999999999-x"
    running = tmp_path / f"{atomic.partial_prefix(dst)}{os.getpid()}-running"
    dead.mkdir()
    running.mkdir()
    with atomic.building_folder(dst):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", running.name])


def test_write_file_writes_with_umask_permissions_and_leaves_nothing_when_it_raises(tmp_path, umask):
    path = tmp_path / "vectors.bin"
    atomic.write_file(path, lambda f: f.write(b"data"))
    assert path.read_bytes() == b"data" and mode(path) == 0o640

    def fail(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic.write_file(path, fail)
    assert path.read_bytes() == b"data" and [p.name for p in tmp_path.iterdir()] == ["vectors.bin"]


def converted(kind: str, hub_model: Path, vl_model: Path, dst: Path) -> None:
    if kind == "qwen3":
        quantize.convert(str(hub_model), str(dst), bits=4, group_size=32)
    else:
        vl_quantize.convert_vl(str(vl_model), str(dst), bits=4, group_size=32)


@pytest.mark.parametrize("kind", ["qwen3", "qwen3-vl"])
def test_finished_conversion_has_umask_permissions(kind, hub_model, vl_model, tmp_path, umask):  # noqa: F811
    umask(0o022)  # the sources' copied sentence-transformers folders keep their own (0644) modes
    dst = tmp_path / "out"
    converted(kind, hub_model, vl_model, dst)
    assert mode(dst) == 0o755
    for path in dst.rglob("*"):
        assert mode(path) == (0o755 if path.is_dir() else 0o644), path


@pytest.mark.parametrize("kind", ["qwen3", "qwen3-vl"])
def test_conversion_interrupted_after_its_weights_leaves_nothing(kind, hub_model, vl_model, tmp_path,  # noqa: F811
                                                                 monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("disk full")

    # the files that travel with the weights are copied last
    monkeypatch.setattr(quantize, "copy_extra_files", fail)
    monkeypatch.setattr(vl_quantize, "copy_files", fail)
    with pytest.raises(OSError, match="disk full"):
        converted(kind, hub_model, vl_model, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_vl_conversion_refuses_an_existing_dst_before_loading(vl_model, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(vl_quantize, "load_float_vl", lambda *a: pytest.fail("weights read for an existing dst"))
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        vl_quantize.convert_vl(str(vl_model), str(tmp_path / "out"), bits=4)


def test_vl_conversion_of_a_quantized_source_is_refused(vl_model, tmp_path):  # noqa: F811
    vl_quantize.convert_vl(str(vl_model), str(tmp_path / "q"), bits=4)
    with pytest.raises(ValueError, match="already quantized .*convert from the original float weights"):
        vl_quantize.convert_vl(str(tmp_path / "q"), str(tmp_path / "again"), bits=4)
    assert not (tmp_path / "again").exists()
