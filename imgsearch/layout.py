"""The files of an index directory, named in one place: the build writes them, `Index.load` reads them.

Row i of every per-item file is item i (and Annoy id i, and Milvus primary key i):

    meta.json       what built it: items, the model's fingerprint, the collection, classes,
                    preprocessing, and a `spaces` section (per space: metric, dimensions, files, settings)
    model.pt        a copy of the checkpoint that made the codes, so the index is self-contained
    codes.npy       (N, code_dim) float32: the auto-encoder's codes (the code and bits spaces derive from them)
    pixels.npy      (N, 32, 32, 3) uint8: pixel-space search, and each item's thumbnail
    labels.npy      (N,) int64 class index into meta["classes"], -1 where unknown
    paths.json      N entries: the item's own file, or null (CIFAR-10 items live in an archive)
    file_stats.npy  (N, 2) int64: each file's size and modification time (ns) when it was read, so
                    `build-index --update` re-encodes only new and changed files (zeros: no file)
    map_code.npy, map_pixel.npy   (N, 2) float32: 2-D maps of code and pixel space (optional)

and each space's own files, named below.
"""
FORMAT = "imgsearch-index-v2"
OLD_FORMATS = ("imgsearch-index-v1",)  # refused with a sentence that says how to rebuild

META = "meta.json"
MODEL = "model.pt"
CODES = "codes.npy"
PIXELS = "pixels.npy"
LABELS = "labels.npy"
PATHS = "paths.json"
FILE_STATS = "file_stats.npy"

PIXEL_BOUND = "pixel_bound.npz"  # pixel space: PCA projection for the lower bound that prunes the exact scan
PCA = "pca.npz"  # pca space: mean, components and the projected collection
ANNOY = "codes.ann"  # code space, Annoy's layout: trees over codes.npy
ANNOY_DIRECTIONS = "code_ann_directions.npy"  # code space: (code_dim, ann_dims) projection the trees or lists are built over
ANNOY_ROWS = "code_ann_rows.npy"  # code space: Annoy item -> row (-1: removed by an update); absent = identity
# code space, the inverted file (the default; spaces/ivf.py): row-aligned with the lists, not the items
IVF_CENTROIDS = "code_ivf_centroids.npy"  # (lists, ann_dims) k-means centres
IVF_OFFSETS = "code_ivf_offsets.npy"  # (lists + 1,) where each list starts
IVF_ROWS = "code_ivf_rows.npy"  # (N,) the item of each list entry
IVF_HEAD = "code_ivf_head.npy"  # (N, scan_dims + 1) what the scan reads
IVF_VECTORS = "code_ivf_vectors.npy"  # (N, ann_dims + 1) what the best of the scan are scored on
BITS = "bits.npz"  # bits space: packed binary codes and the rotation that made them


def map_file(space: str) -> str:
    return f"map_{space}.npy"
