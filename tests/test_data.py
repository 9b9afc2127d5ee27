import io
import os

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from labelclean.data import decode_images, load_image, load_samples
from labelclean.errors import DataError
from tests.conftest import CLASSES


def test_folder_input_reads_classes_and_nested_images(tiny):
    nested = tiny.root / "cat" / "deeper" / "more"
    nested.mkdir(parents=True)
    Image.new("RGB", (5, 5), (1, 2, 3)).save(nested / "x.jpg")
    (tiny.root / "cat" / "notes.txt").write_text("not an image")
    samples = load_samples(tiny.root)
    assert samples.classes == CLASSES
    assert len(samples) == len(tiny.truth) + 1
    assert "cat/deeper/more/x.jpg" in samples.sample_ids
    assert samples.input.kind == "folder"


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_manifest_input_uses_id_column_and_keeps_columns(tiny, kind):
    path = tiny.csv if kind == "csv" else tiny.parquet
    samples = load_samples(path)
    assert samples.sample_ids == tiny.truth["id"].tolist()
    assert list(samples.input.frame.columns) == ["id", "path", "label", "note", "score"]
    assert samples.table["abs_path"].iloc[0] == str(tiny.root.parent / tiny.truth["path"].iloc[0])


def test_trusted_rows_mark_dataset_rows_and_add_new_images(tiny, tmp_path):
    extra = tmp_path / "extra.png"
    Image.new("RGB", (8, 8), (200, 40, 40)).save(extra)
    trusted = pd.read_csv(tiny.trusted)
    trusted.loc[len(trusted)] = [str(extra), "cat"]
    trusted.to_csv(tiny.csv.parent / "t.csv", index=False)
    samples = load_samples(tiny.csv, tiny.csv.parent / "t.csv")
    assert samples.verified.sum() == len(trusted)
    added = samples.table[samples.table["source"] == "trusted"]
    assert len(added) == 1 and added["label"].iloc[0] == "cat"


def test_trusted_ids_and_labels_without_paths_mark_dataset_rows(tiny, tmp_path):
    flipped = tiny.truth[tiny.truth["id"].isin(tiny.flipped)].iloc[:2]  # verified != given
    picks = pd.concat([tiny.truth.iloc[[2, 7, 11]], flipped])
    pd.DataFrame({"id": picks["id"], "label": picks["true"]}).to_csv(tmp_path / "t.csv", index=False)
    samples = load_samples(tiny.csv, tmp_path / "t.csv")
    assert sorted(samples.table.loc[samples.verified, "sample_id"]) == sorted(picks["id"])
    marked = samples.table.set_index("sample_id").loc[picks["id"], "trusted_label"]
    assert marked.tolist() == picks["true"].tolist()  # each id gets its own verified label
    assert (samples.table["source"] == "dataset").all()
    pd.DataFrame({"id": ["nope"], "label": ["cat"]}).to_csv(tmp_path / "u.csv", index=False)
    with pytest.raises(DataError, match=r"u.csv row 1: id 'nope' is not in the dataset .*add a path column"):
        load_samples(tiny.csv, tmp_path / "u.csv")


def test_trusted_label_overrides_training_target(tiny, tmp_path):
    row = tiny.truth.iloc[10]
    other = CLASSES[(CLASSES.index(row["label"]) + 1) % 3]
    pd.DataFrame({"path": [row["path"]], "label": [other]}).to_csv(tiny.csv.parent / "t.csv", index=False)
    samples = load_samples(tiny.csv, tiny.csv.parent / "t.csv")
    i = samples.sample_ids.index(row["id"])
    assert samples.targets[i] == CLASSES.index(other)
    assert samples.table["label"].iloc[i] == row["label"]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda df: df.drop(columns=["label"]), "expected column(s) 'label'"),
        (lambda df: df.iloc[:0], "expected at least one row"),
        (lambda df: df.assign(id=["dup"] * len(df)), "duplicate id 'dup'"),
        (lambda df: df.assign(label="cat"), "expected at least 2 classes"),
        (lambda df: df.assign(label=df["label"].where(df.index != 3, "")), "row 4: column 'label' is empty"),
    ],
)
def test_bad_manifests_give_one_clear_error(tiny, tmp_path, mutate, message):
    bad = tmp_path / "bad.csv"
    mutate(pd.read_csv(tiny.csv)).to_csv(bad, index=False)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_samples(bad)


def test_trusted_label_that_is_not_a_class_names_file_and_row(tiny, tmp_path):
    pd.DataFrame({"path": ["images/cat/s000.png"], "label": ["wolf"]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match=r"t.csv row 1: trusted label 'wolf' is not a class"):
        load_samples(tiny.csv, tmp_path / "t.csv")


def test_empty_class_folder_and_missing_dataset(tiny, tmp_path):
    (tiny.root / "wolf").mkdir()
    with pytest.raises(DataError, match="wolf: class folder has no images"):
        load_samples(tiny.root)
    with pytest.raises(DataError, match="dataset not found"):
        load_samples(tmp_path / "nope")


def test_unreadable_manifest_is_a_data_error(tmp_path):
    (tmp_path / "m.csv").write_text("")
    with pytest.raises(DataError, match="empty file"):
        load_samples(tmp_path / "m.csv")
    (tmp_path / "m.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="cannot read as parquet"):
        load_samples(tmp_path / "m.parquet")


def _save(img: Image.Image, fmt: str, **kw) -> io.BytesIO:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    buf.seek(0)
    return buf


@pytest.mark.parametrize(
    "make, fmt",
    [
        (lambda: Image.new("L", (9, 6), 128), "PNG"),
        (lambda: Image.new("RGBA", (9, 6), (255, 0, 0, 255)), "PNG"),
        (lambda: Image.new("P", (9, 6), 3), "GIF"),
        (lambda: Image.new("CMYK", (9, 6), (0, 255, 255, 0)), "JPEG"),
        (lambda: Image.fromarray(np.full((6, 9), 65535, dtype=np.uint16)), "PNG"),
        (lambda: Image.new("RGB", (9, 6), (0, 0, 255)), "WEBP"),
        (lambda: Image.new("RGB", (9, 6), (0, 0, 255)), "BMP"),
        (lambda: Image.new("RGB", (9, 6), (0, 0, 255)), "TIFF"),
    ],
)
def test_load_image_handles_modes_and_formats(tmp_path, make, fmt):
    path = tmp_path / f"img.{fmt.lower()}"
    make().save(path, fmt)
    arr = load_image(str(path), 8)
    assert arr.shape == (8, 8, 3) and arr.dtype == np.uint8


def test_transparency_composites_on_white_and_16_bit_scales(tmp_path):
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert load_image(str(tmp_path / "clear.png"), 4).min() == 255
    Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)).save(tmp_path / "w16.png")
    assert load_image(str(tmp_path / "w16.png"), 4).min() == 255


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (20, 10), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 10))  # white on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    arr = load_image(str(tmp_path / "rot.jpg"), 10).mean(axis=2)
    # Displayed upright the image is 10 wide and 20 high with white on top; the centre crop
    # of a 10x20 image at size 10 keeps rows 5..14, whose top half is white.
    assert arr[:4].mean() > 200 and arr[-4:].mean() < 50


def test_decode_reports_missing_and_corrupt_files(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (5, 5)).save(good)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage")
    pixels, failures, _ = decode_images([str(good), str(tmp_path / "none.png"), str(tmp_path / "bad.png")], 6)
    assert pixels.shape == (3, 3, 6, 6)
    assert failures == {1: "file not found", 2: "not a readable image"}


def test_pixel_cache_is_a_file_reused_until_an_image_changes(tmp_path):
    from labelclean.data.images import cache_root, decode_cached

    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    paths.append(str(tmp_path / "missing.png"))
    first, reused = decode_cached(paths, 8)
    assert not reused and first.failures == {5: "file not found"}
    expected = decode_images(paths, 8).pixels
    assert torch.equal(first.pixels, expected)
    files = list((cache_root() / "pixels").glob("*.npy"))
    assert len(files) == 1 and not list((cache_root() / "pixels").glob(".*"))  # no temporary left
    second, reused = decode_cached(paths, 8)
    assert reused and torch.equal(second.pixels, expected) and second.failures == first.failures
    second.pixels[0] = 0  # copy-on-write: the cache file keeps its pixels
    assert torch.equal(decode_cached(paths, 8)[0].pixels, expected)
    Image.fromarray(np.zeros((9, 9, 3), dtype=np.uint8)).save(paths[2])
    os.utime(paths[2], ns=(1, 1))  # a changed image (and mtime) is decoded again
    third, reused = decode_cached(paths, 8)
    assert not reused and int(third.pixels[2].sum()) == 0
    assert decode_cached(paths, 16)[1] is False  # another size, another cache
