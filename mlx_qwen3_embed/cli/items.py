"""`mlx-embed embed`'s Qwen3-VL inputs: --image (with --text) items, and their http(s) images fetched into the
image cache only with --allow-remote-images. A text model refuses these items itself (its prepare_inputs)."""

from typing import Optional


def flag_items(images: list[str], caption: Optional[str]) -> list[dict]:
    """--image paths -> one item each, with --text as its text: {"image": path, "text": caption}."""
    if caption is not None and not images:
        raise ValueError("--text goes with --image (an image and its text, one item); give plain texts as arguments")
    return [{"image": path} | ({"text": caption} if caption is not None else {}) for path in images]


def fetch_remote_images(items: list, allow: bool) -> None:
    """Download the items' http(s) image URLs into the image cache (remote.py) when `allow`; without it a URL
    not already there is an error naming --allow-remote-images. The library then reads them from the cache, so
    they must fit in it together: past the cache's cap, the first would be evicted before they are read."""
    with_images = [item["image"] for item in items if isinstance(item, dict) and "image" in item]
    if not with_images:  # plain texts: the vision modules are not even imported
        return
    from ..vision import remote

    held = 0
    for sources in with_images:
        for source in sources if isinstance(sources, list) else [sources]:
            if not remote.is_url(source):
                continue
            raw = remote.fetch_image(source) if allow else remote.read_cached(source)
            if raw is None:
                raise ValueError(f"image {source[:80]} is a remote URL: add --allow-remote-images to download it "
                                 f"(into {remote.cache_dir()})")
            held += len(raw)
            if held > remote.CACHE_BYTES:
                raise ValueError(f"the remote images up to {source[:80]} are over the image cache's cap of "
                                 f"{remote.CACHE_BYTES:,} bytes together: download them and give their paths, "
                                 "or run fewer at a time")
