"""Reading datasets: image folders, CSV/Parquet manifests, trusted sets, and decoded pixels."""

from labelclean.data.dataset import InputTable, Samples, load_input, load_samples
from labelclean.data.images import decode_images, load_image

__all__ = ["InputTable", "Samples", "decode_images", "load_image", "load_input", "load_samples"]
