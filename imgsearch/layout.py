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
ANNOY = "codes.ann"  # code space on Annoy's trees (spaces/annoy_index.py)
ANNOY_DIRECTIONS = "code_ann_directions.npy"  # code space: (code_dim, ann_dims) projection the trees, lists or graph are built over
ANNOY_ROWS = "code_ann_rows.npy"  # code space: Annoy item -> row (-1: removed by an update); absent = identity
FAISS_INDEX = "code_faiss.index"  # code space on faiss (spaces/faiss_index.py): faiss's own file format
FAISS_ROWS = "code_faiss_rows.npy"  # code space on faiss: faiss id -> row (-1: removed by an update)
BITS = "bits.npz"  # bits space: packed binary codes and the rotation that made them


def map_file(space: str) -> str:
    return f"map_{space}.npy"
