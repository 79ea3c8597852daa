"""The data-overview picture (datamodules/data_overview.py): image-span decoding and the PNG itself, on a small
corpus."""

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from datamodules.data_overview import (  # noqa: E402
    decode_image_span,
    image_code_ranges,
    render_data_overview,
    split_segments,
)
from datamodules.multimodal import MultiModalDataModule  # noqa: E402
from datamodules.vocab import BOA, BOI, EOA, EOI, PAD  # noqa: E402


@pytest.fixture(scope="module")
def dm(tmp_path_factory):
    """A small three-modality datamodule with its own cache (about 30 s to build on 2 cores)."""
    module = MultiModalDataModule(
        setting="three_modality", seq_len=256, batch_size=4, val_sequences=8, text_vocab_size=1024,
        fashion_train_images=2000, speech_train_utterances=150, speech_val_utterances=20,
        cache_dir=str(tmp_path_factory.mktemp("data_cache")),
    )  # fmt: skip
    module.prepare_data()
    module.setup("fit")
    return module


def test_decoding_a_real_images_joint_ids_equals_its_vq_decode(dm):
    """Codes of a real image of every source, shifted into joint ids, decode to exactly that source's vq.decode."""
    c, vocab = dm.corpus, dm.vocab
    for k, (src, (lo, _)) in enumerate(zip(c.images, image_code_ranges(c, vocab), strict=True)):
        for i in (0, len(src.codes) - 1):
            source, img = decode_image_span(c, vocab, src.codes[i] + lo)
            assert source == k
            np.testing.assert_array_equal(img, src.vq.decode(src.codes[i][None])[0])
            assert img.shape == src.images.shape[1:]
    with pytest.raises(ValueError, match="codes"):
        decode_image_span(c, vocab, c.images[0].codes[0][:-1] + vocab.image_offset)  # one code short


def test_image_spans_of_packed_training_rows_are_real_images(dm):
    """Every <boi>..<eoi> span in the first training rows decodes through the offsets to one real image's codes."""
    c, vocab = dm.corpus, dm.vocab
    ranges = image_code_ranges(c, vocab)
    checked = 0
    for row in dm.train_set.packed.ids[:40]:
        for seg in split_segments(row, vocab):
            if seg.kind != "image":
                continue
            k, _ = decode_image_span(c, vocab, seg.ids)
            codes = seg.ids - ranges[k][0]
            assert (c.images[k].codes == codes).all(axis=1).any()
            checked += 1
    assert checked > 0


def test_segments_cover_a_row_in_order(dm):
    """Segments concatenate back to the row; images and speech sit between their markers; padding comes last."""
    vocab = dm.vocab
    for row in dm.train_set.packed.ids[:20]:
        segs = split_segments(row, vocab)
        assert (np.concatenate([s.ids for s in segs]) == row).all()
        for j, s in enumerate(segs):
            if s.kind in ("image", "speech"):
                opener, closer = (BOI, EOI) if s.kind == "image" else (BOA, EOA)
                assert segs[j - 1].ids[-1] == opener and segs[j + 1].ids[0] == closer
            if s.kind == "pad":
                assert j == len(segs) - 1 and (s.ids == PAD).all()


def test_render_writes_a_valid_png(dm, tmp_path):
    """render_data_overview writes a real PNG of a sane size (pixels and bytes)."""
    from PIL import Image

    out = render_data_overview(dm, tmp_path / "sub" / "data.png")
    assert out.exists() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 20_000 < out.stat().st_size < 2_000_000
    with Image.open(out) as im:
        im.verify()
    with Image.open(out) as im:
        w, h = im.size
        assert 800 <= w <= 3000 and 800 <= h <= 5000
        assert np.asarray(im.convert("L")).std() > 10  # not blank
