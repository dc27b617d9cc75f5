"""--max-crops: an image's HD tiling capped below the model's limit, exactly as transformers'
processor does it with `dynamic_hd`, through the Python API, the CLI and serve's OpenAI API."""

import json

import numpy as np
import pytest
from PIL import Image

from phi4mm_edge import Phi4MMError
from phi4mm_edge.manifest import VisionEntry
from phi4mm_edge.runtime import Phi4MMEdge
from phi4mm_edge.runtime.image import load_image, preprocess
from test_runtime import phi4mm_edge

# transformers' Phi4MultimodalImageProcessor defaults (Phi-4-multimodal's geometry). The tolerance
# is test_vision.py's: the same arithmetic as the reference (byte-exact resize, then float32
# normalization and bicubic), so the differences are float rounding, ~1e-7.
GEOMETRY = VisionEntry(graph="vision.onnx", crop_size=448, patch_size=14, max_crops=36, mean=0.5, std=0.5, encoder={})
PIXEL_TOLERANCE = 1e-5


def frame(width=1920, height=1080, seed=7):
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (height // 40, width // 40, 3), dtype=np.uint8))
    return small.resize((width, height), Image.BILINEAR)


@pytest.mark.parametrize("max_crops", [1, 2, 4, 9])
def test_capped_tiling_equals_transformers_dynamic_hd(max_crops):
    from dataclasses import replace

    from transformers import Phi4MultimodalImageProcessor

    image = frame()
    ours = preprocess(load_image(image), replace(GEOMETRY, max_crops=max_crops))
    reference = Phi4MultimodalImageProcessor(dynamic_hd=max_crops)(images=[image], return_tensors="np")
    assert reference["image_pixel_values"][0].shape == ours.pixel_values.shape
    assert ours.pixel_values.shape[0] - 1 <= max_crops
    assert np.abs(reference["image_pixel_values"][0] - ours.pixel_values).max() <= PIXEL_TOLERANCE
    np.testing.assert_array_equal(reference["image_attention_mask"][0], ours.attention_mask)
    assert reference["num_img_tokens"][0] == ours.num_tokens


def test_generate_takes_max_crops_and_refuses_a_bad_one(artifacts):
    model = Phi4MMEdge.load(artifacts["int4"])
    image = frame(1000, 500)
    tokens = {}
    for max_crops in (None, 1, 2):
        generation = model.generate("Describe.", images=[image], max_new_tokens=1, max_crops=max_crops)
        generation.text()
        tokens[max_crops] = generation.result.prompt_tokens
    assert tokens[1] < tokens[2] < tokens[None]
    for bad in (0, -1, 2.5, "4", model.vision.geometry.max_crops + 1):
        with pytest.raises(Phi4MMError, match="max_crops"):
            model.generate("Describe.", images=[image], max_crops=bad)


def test_cli_and_openai_api_pass_max_crops(artifacts, tmp_path):
    path = tmp_path / "wide.png"
    frame(1000, 500).save(path)
    counts = [json.loads(phi4mm_edge("run", artifacts["int4"], "--prompt", "Describe.", "--image", path, "--max-new-tokens", 1,
                                     "--json", *extra).stdout)["prompt_tokens"] for extra in ([], ["--max-crops", "1"])]
    assert counts[1] < counts[0]
    refused = phi4mm_edge("run", artifacts["int4"], "--prompt", "Hi", "--image", path, "--max-crops", "0", check=False)
    assert refused.returncode != 0 and "max_crops 0" in refused.stderr and "Traceback" not in refused.stderr
    for command in ("camera", "serve"):
        assert "Default 4" in phi4mm_edge(command, "--help").stdout.replace("\n", " ").replace("  ", " ")
