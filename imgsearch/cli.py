"""The `imgsearch` command: one subcommand per stage, each only parsing arguments and calling
the package's function for it.

    imgsearch train | build-index | search | duplicates | interpolate | evaluate | benchmark | serve

`scripts/*.py` run the same subcommands, so `python scripts/search.py ...` and
`imgsearch search ...` are one program.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

COMMANDS: dict[str, tuple] = {}  # name -> (help, add_arguments, run)


def command(name: str, help: str):
    """Register `add_arguments(parser)` under `name`; the function returns the runner."""
    def register(add_arguments):
        COMMANDS[name] = (help, add_arguments)
        return add_arguments
    return register


def fail(message: str, code: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


# ---- train ---------------------------------------------------------------------------------

@command("train", "train the auto-encoder on a collection")
def train_arguments(p: argparse.ArgumentParser):
    from .train import add_arguments  # its flags come from TrainArgs/ModelArgs, so they live beside them

    return add_arguments(p)


# ---- build-index ---------------------------------------------------------------------------

def space_list(text: str) -> list[str]:
    """"pixel,code,bits" -> ["pixel", "code", "bits"], each a registered space."""
    from .spaces import SPACES

    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SPACES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown space {unknown[0] if unknown else text!r}; "
                                         f"choose from {','.join(SPACES)}")
    return names


@command("build-index", "encode a collection and publish its index")
def build_index_arguments(p: argparse.ArgumentParser):
    from .ingest import BATCH
    from .model import DEFAULT_CHECKPOINT
    from .publish import DEFAULT_INDEX
    from .spaces import SPACES
    from .spaces.bits import BITS, WIDTHS
    from .spaces.vectors import SEED

    p.add_argument("--data", default="cifar10", help="cifar10, cifar10:test, or a folder of images (default: cifar10)")
    p.add_argument("--model", default=str(DEFAULT_CHECKPOINT), help="auto-encoder checkpoint (default: the shipped one)")
    p.add_argument("--out", default=str(DEFAULT_INDEX), help=f"index directory (default: {DEFAULT_INDEX})")
    structure_arguments(p)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--bits", type=int, choices=WIDTHS, default=None,
                   help=f"length of the binary codes of the bits space (default: {BITS}, or what the code's length allows)")
    p.add_argument("--spaces", type=space_list, default=None,
                   help=f"comma-separated spaces to build (default: all: {','.join(SPACES)})")
    p.add_argument("--no-maps", action="store_true", help="skip the 2-D maps of the collection (saves ~10 s on 50,000 images)")
    p.add_argument("--update", action="store_true",
                   help="keep the items of the index at --out whose files are unchanged (path, size, modification "
                        "time); encode only new and changed files, drop the removed ones")
    p.add_argument("--batch-size", type=int, default=BATCH,
                   help=f"items read and encoded per batch; a killed build resumes from its last whole batch "
                        f"(default: {BATCH})")
    scale_arguments(p)
    return lambda a: build(a, p)


def structure_arguments(p: argparse.ArgumentParser) -> None:
    """The code space's search structure and its knobs."""
    from .spaces.annoy_index import N_TREES
    from .spaces.backends import CODE_INDEX, local_code_indexes
    from .spaces.faiss_index import PROBES

    p.add_argument("--code-index", choices=local_code_indexes(), default=CODE_INDEX,
                   help="the code space's search structure: annoy (trees, default), faiss (lists), faiss_hnsw (graph)")
    p.add_argument("--probes", type=int, default=PROBES,
                   help=f"with --code-index faiss: lists scanned per query; faiss_hnsw: its efSearch (default: {PROBES})")
    p.add_argument("--n-trees", type=int, default=N_TREES, help=f"with --code-index annoy: trees (default: {N_TREES})")
    p.add_argument("--search-k", type=int, default=None,
                   help="with --code-index annoy: nodes inspected per query (default: by collection size, docs/speed.md)")


def scale_arguments(p: argparse.ArgumentParser) -> None:
    """Past one machine: Milvus for the code and bits spaces, Ray for decoding and encoding."""
    p.add_argument("--backend", choices=("local", "milvus"), default="local",
                   help="where the code and bits spaces live: local (this index's own files: the structure "
                        "--code-index names, and bits.npz; default) or milvus (collections at --milvus-uri; "
                        "docs/scale.md)")
    p.add_argument("--milvus-uri", metavar="URI",
                   help="with --backend milvus: a path ending in .db (Milvus Lite, in this process; the bits stay "
                        "local, Lite has no binary vectors) or http://host:19530 (a Milvus server or cluster)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="decode and encode on Ray Data: the cluster at ADDRESS (ray://head:10001, or auto), "
                        "or a local Ray when no ADDRESS is given (pip install -e .[cluster])")


def build(a, p) -> int:
    """build-index: the build, and what it did in a few lines."""
    from .data import CollectionError
    from .index import build_index, BuildError
    from .integrity import IndexLoadError
    from .model import CheckpointError
    from .search import printable
    from .ray_pipeline import RayError, ray_batches
    from .spaces.milvus import MilvusError, check_uri, connect

    options, batches = {}, None
    try:
        if a.backend == "milvus":
            connect(check_uri(a.milvus_uri))  # before encoding, which may take hours: fail now if it is unusable
            options = {"code": {"backend": "milvus", "uri": a.milvus_uri},
                       "bits": {"backend": "milvus", "uri": a.milvus_uri, **({"bits": a.bits} if a.bits else {})}}
        elif a.milvus_uri:
            p.error("--milvus-uri goes with --backend milvus")
        if a.ray is not None:
            batches = ray_batches(a.ray or None)
        summary = build_index(a.data, a.model, a.out, spaces=a.spaces, code_index=a.code_index,
                              probes=a.probes, n_trees=a.n_trees, search_k=a.search_k,
                              bits=a.bits, seed=a.seed, maps=not a.no_maps, update=a.update,
                              batch_size=a.batch_size, options=options, batches=batches)
    except (CollectionError, CheckpointError, IndexLoadError, MilvusError, RayError, BuildError) as e:
        return fail(str(e))
    print(f"Indexed {summary['items']} images into {summary['index']} in {summary['seconds']:.1f} s "
          f"(spaces: {', '.join(summary['spaces'])}).")
    if summary["update"]:
        u = summary["update"]
        print(f"Update: {u['added']} added, {u['changed']} changed, {u['removed']} removed, "
              f"{u['unchanged']} unchanged (not re-encoded).")
    if summary["skipped"]:
        print(f"Skipped {len(summary['skipped'])} unreadable or non-image files, e.g.:")
        for _, why in summary["skipped"][:5]:
            print(f"  {printable(why)}")
    return 0


# ---- search --------------------------------------------------------------------------------

@command("search", "find an image's nearest neighbours in a built index")
def search_arguments(p: argparse.ArgumentParser):
    from .publish import DEFAULT_INDEX
    from .spaces import DEFAULT_SPACES

    p.add_argument("image", help="an image file")
    p.add_argument("--index", default=str(DEFAULT_INDEX), help=f"index directory (default: {DEFAULT_INDEX})")
    p.add_argument("-k", type=int, default=10, help="neighbours per space (default: 10)")
    p.add_argument("--spaces", type=space_list, default=list(DEFAULT_SPACES),
                   help=f"comma-separated spaces to search (default: {','.join(DEFAULT_SPACES)})")
    p.add_argument("--json", action="store_true",
                   help='print one JSON object with a list of hits per space: {"pixel": [...], "code": [...]}')
    p.add_argument("--max-distance", type=float, default=None, metavar="D",
                   help="only results closer than D, in each space's unit (fewer than k results are then normal)")
    p.add_argument("--folder", action="append", default=None, metavar="SUBPATH",
                   help="only results under this folder, relative to the collection's root (repeatable: any of them)")
    p.add_argument("--label", action="append", default=None, metavar="NAME",
                   help="only results of this class (repeatable: any of them)")

    def run(a) -> int:
        from .images import ImageError
        from .integrity import IndexLoadError
        from .search import Index, printable

        if a.k < 1:
            p.error("-k must be at least 1")
        try:
            index = Index.load(a.index)
            results = index.search(a.image, k=a.k, spaces=a.spaces, max_distance=a.max_distance,
                                   folder=a.folder, label=a.label)
        except (ImageError, IndexLoadError, ValueError) as e:
            return fail(str(e), 2)
        if a.json:
            print(json.dumps(results.to_dict(), indent=1))
        else:
            for name, hits in results.hits.items():
                if name in results.unavailable:
                    continue
                space = index.spaces[name]
                print(f"\n{space.title.lower()} ({space.metric})")
                print(f"{'rank':>4} {'id':>7} {'distance':>10}  {'label':<12} name")
                for rank, h in enumerate(hits, 1):
                    print(f"{rank:>4} {h.id:>7} {space.format_distance(h.distance):>10}  {str(h.label or '-'):<12} "
                          f"{printable(h.name) or '-'}")
                if name in results.notes:
                    print(results.notes[name])
        if a.json:  # the JSON holds only hits: why a space has fewer than k goes beside it
            for note in results.notes.values():
                print(note, file=sys.stderr)
        for why in results.unavailable.values():  # the other spaces' hits are printed; the exit status says not all
            print(f"error: {why}", file=sys.stderr)
        return 1 if results.unavailable else 0
    return run


# ---- interpolate ---------------------------------------------------------------------------

def item_or_path(text: str):
    """An item id ("12") or an image file; a file of that name wins over the id."""
    return int(text) if text.isdigit() and not Path(text).exists() else text


@command("interpolate", "decode the codes on the way from one image to another, as a strip of pictures")
def interpolate_arguments(p: argparse.ArgumentParser):
    from .generate import MAX_STEPS, STEPS, STRIP_SCALE
    from .publish import DEFAULT_INDEX

    p.add_argument("a", type=item_or_path, metavar="A", help="the first end: an item id or an image file")
    p.add_argument("b", type=item_or_path, metavar="B", help="the other end: an item id or an image file")
    p.add_argument("--steps", type=int, default=STEPS, help=f"images in the strip, both ends included, 2 to {MAX_STEPS} "
                                                          f"(default: {STEPS})")
    p.add_argument("--out", required=True, help="the strip's PNG file")
    p.add_argument("--index", default=str(DEFAULT_INDEX), help=f"index directory (default: {DEFAULT_INDEX})")
    p.add_argument("--scale", type=int, default=STRIP_SCALE,
                   help=f"each pixel drawn as a square of this side (default: {STRIP_SCALE})")
    p.add_argument("--nearest", action="store_true", help="a second row beneath: the nearest real item of each step")

    def run(a) -> int:
        from .generate import strip
        from .images import ImageError
        from .integrity import IndexLoadError
        from .search import Index

        if not 1 <= a.scale <= 32:
            p.error("--scale must be between 1 and 32")
        try:
            index = Index.load(a.index)
            result = index.between(a.a, a.b, steps=a.steps)
            rows = [result.pixels] + ([index.pixels[result.nearest]] if a.nearest else [])
            image = strip(rows, a.scale)
            image.save(a.out, format="PNG")
        except (ImageError, IndexLoadError, IndexError, ValueError, OSError) as e:
            return fail(str(e), 2)
        print(f"Wrote {a.out}: {a.steps} steps, {image.width}x{image.height} px; nearest items: "
              + ", ".join(f"{i} ({index.label(i) or 'unlabelled'})" for i in result.nearest.tolist()))
        return 0
    return run


# ---- evaluate ------------------------------------------------------------------------------

@command("evaluate", "measure retrieval quality (P@k, mAP@1000) of every representation")
def evaluate_arguments(p: argparse.ArgumentParser):
    from .model import DEFAULT_CHECKPOINT
    from .spaces.annoy_index import N_TREES
    from .spaces.backends import CODE_INDEX, local_code_indexes

    p.add_argument("--database", default="cifar10", help="collection searched (default: cifar10 = the train split)")
    p.add_argument("--queries", default="cifar10:test", help="query collection (default: cifar10:test)")
    p.add_argument("--model", default=str(DEFAULT_CHECKPOINT), help="checkpoint (default: the shipped one)")
    p.add_argument("--limit-queries", type=int, default=0, help="use a random subset of N queries (quick run)")
    p.add_argument("--code-index", choices=local_code_indexes(), default=CODE_INDEX,
                   help=f"the served code search measured (default: {CODE_INDEX})")
    p.add_argument("--n-trees", type=int, default=N_TREES)
    p.add_argument("--search-k", type=int, default=None)
    p.add_argument("--json", help="write the figures to this JSON file")
    p.add_argument("--plot", help="write the precision-at-k plot to this PNG")
    p.add_argument("--examples", help="write each query's top-10 ids per representation to this .npz")

    def run(a) -> int:
        import numpy as np

        from .data import CollectionError, load_collection
        from .evaluate import EvaluationError, evaluate, plot_curves
        from .model import CheckpointError, load_checkpoint
        from .report import write_outputs

        try:
            model, info = load_checkpoint(a.model)
            database = load_collection(a.database)
            queries = load_collection(a.queries)
        except (CollectionError, CheckpointError) as e:
            return fail(str(e))
        if a.limit_queries:
            queries = queries.subset(a.limit_queries)
        try:
            report = evaluate(database, queries, model, code_index=a.code_index, n_trees=a.n_trees,
                              search_k=a.search_k)
        except EvaluationError as e:
            return fail(str(e))
        report["settings"]["model"] = info["fingerprint"]
        print_evaluation(report, database, queries, info["fingerprint"])

        if a.examples:
            Path(a.examples).parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(a.examples, query_labels=report["_query_labels"], query_ids=np.arange(len(queries)),
                                **{f"top10_{k}": v for k, v in report["_retrieved"].items()})
        public = {k: v for k, v in report.items() if not k.startswith("_")}
        write_outputs(public, a.json, a.plot, plot_curves)
        return 0
    return run


def print_evaluation(report: dict, database, queries, fingerprint: str) -> None:
    """The evaluation's table and its per-class P@10, as a person reads them in a terminal."""
    from .evaluate import PER_CLASS_SHOWN, REPRESENTATIONS

    print(f"\n{len(queries):,} queries ({queries.spec}) against {len(database):,} images ({database.spec}); "
          f"model {fingerprint}")
    print(f"{'representation':<26} {'P@1':>7} {'P@10':>7} {'P@100':>7} {'mAP@1000':>9} {'bytes/item':>11}")
    for key, name in REPRESENTATIONS.items():
        if key in report:
            r = report[key]
            print(f"{name:<26} {r['P@1']:>7.3f} {r['P@10']:>7.3f} {r['P@100']:>7.3f} {r['mAP@1000']:>9.3f} "
                  f"{report['bytes_per_item'][key]:>11,}")
    print(f"reconstruction MSE on the queries: {report['reconstruction_mse']:.4f}")
    shown = [k for k in PER_CLASS_SHOWN if k in report]
    print("\nP@10 per class   " + " ".join(f"{k:>13}" for k in shown))
    for c in database.classes:
        if c in report["per_class_P@10"][shown[0]]:
            print(f"{c:<16} " + " ".join(f"{report['per_class_P@10'][k][c]:>13.3f}" for k in shown))


# ---- benchmark -----------------------------------------------------------------------------

@command("benchmark", "measure encoding, build and query speed, and the million-code scale run")
def benchmark_arguments(p: argparse.ArgumentParser):
    from .model import DEFAULT_CHECKPOINT

    p.add_argument("--data", default="cifar10", help="collection to index (default: cifar10 = the train split)")
    p.add_argument("--model", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--queries", type=int, default=1000, help="single queries timed per space (default: 1000)")
    p.add_argument("--scale-items", type=int, default=1_000_000, help="codes in the scale run (default: 1,000,000)")
    p.add_argument("--quick", action="store_true", help="small everything: checks the figures, not the speed")
    p.add_argument("--no-scale", action="store_true",
                   help="stop after the 50,000-item queries (no Annoy sweep, no million-code run)")
    p.add_argument("--work-dir", help="where the benchmark's indexes are written (default: a temporary folder)")
    p.add_argument("--million", metavar="DIR",
                   help="also build a million-image collection's index (written into DIR first if it is not there) "
                        "and measure it: adds a `million` key (needs ~25 GB of disk and ~30 minutes here)")
    p.add_argument("--million-items", type=int, default=1_000_000, help=argparse.SUPPRESS)  # small runs, for tests
    p.add_argument("--million-phases", type=lambda text: text.split(","),
                   help="with --million and --work-dir: measure only these phases again (comma-separated: clean, "
                        "resume, queries, update), report the others as recorded, and skip the 50,000-item run")
    duplicates_benchmark_arguments(p)
    p.add_argument("--json", help="write the report to this JSON file")
    p.add_argument("--plot", help="write the code space structures' recall-vs-latency plot to this PNG")

    def run(a) -> int:
        from .benchmark import plot_structures, print_report, run_benchmark
        from .data import CollectionError, load_collection
        from .million import PHASES
        from .report import write_outputs

        if a.million_phases and not (a.million and a.work_dir):
            p.error("--million-phases needs --million and --work-dir (the other phases' figures live there)")
        if a.million_phases and set(a.million_phases) - set(PHASES):
            p.error(f"--million-phases takes {', '.join(PHASES)}")
        try:
            collection = None if a.million_phases else load_collection(a.data)
        except CollectionError as e:
            return fail(str(e))
        if a.quick:
            kw = dict(queries=min(a.queries, 50), scale_items=min(a.scale_items, 5000), scale_queries=20,
                      sweep_queries=20, sweep_trees=(2, 4), sweep_search_ks=(100, 1000),
                      scale_trees=4, scale_search_ks=(100, 1000))
        else:
            kw = dict(queries=a.queries, scale_items=a.scale_items)
        report = {} if a.million_phases else run_benchmark(
            collection, a.model, work_dir=Path(a.work_dir) if a.work_dir else None, scale=not a.no_scale, **kw)
        if a.million:
            from .million import benchmark_million

            kw = dict(items=a.million_items, queries=20 if a.quick else 200, added=min(10_000, a.million_items // 100))
            if a.work_dir:  # kept: a second run with the same --work-dir continues where the first stopped
                report["million"] = benchmark_million(a.million, a.model, Path(a.work_dir) / "million",
                                                      only=a.million_phases, **kw)
            else:
                with tempfile.TemporaryDirectory() as work:
                    report["million"] = benchmark_million(a.million, a.model, Path(work), **kw)
        print_report(report)
        write_outputs(report, a.json, a.plot if "code_structures" in report else None, plot_structures)
        return 0
    return lambda a: duplicates_benchmark(a) if a.duplicates else run(a)


# ---- duplicates ----------------------------------------------------------------------------

@command("duplicates", "find groups of near-duplicate images in a built index (never deletes or moves a file)")
def duplicates_arguments(p: argparse.ArgumentParser):
    from .duplicates import DEFAULT_SPACE, DEFAULT_THRESHOLDS, SPACES, UNITS
    from .publish import DEFAULT_INDEX

    p.add_argument("--index", default=str(DEFAULT_INDEX), help=f"index directory (default: {DEFAULT_INDEX})")
    p.add_argument("--space", choices=SPACES, default=DEFAULT_SPACE,
                   help=f"where items are compared (default: {DEFAULT_SPACE}, the benchmark's pick)")
    p.add_argument("--threshold", default=None,
                   help="largest distance of a pair, in the space's unit (" +
                        "; ".join(f"{s}: {UNITS[s]}, default {DEFAULT_THRESHOLDS[s]}" for s in SPACES) + ")")
    p.add_argument("--json", metavar="FILE", help="also write the groups to this JSON file")
    p.add_argument("--csv", metavar="FILE", help="also write one row per grouped item to this CSV file")

    def run(a) -> int:
        from .duplicates import DuplicatesError, print_groups, write_csv, write_json
        from .integrity import IndexLoadError
        from .search import Index

        try:
            found = Index.load(a.index).duplicates(a.space, a.threshold)
        except (IndexLoadError, DuplicatesError) as e:
            return fail(str(e), 2)
        print_groups(found)
        try:
            if a.json:
                write_json(found, a.json)
            if a.csv:
                write_csv(found, a.csv)
        except OSError as e:
            return fail(f"Could not write {e.filename}: {e.strerror}.", 2)
        return 0
    return run


def duplicates_benchmark_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duplicates", action="store_true",
                   help="measure the near-duplicate finder instead, on a labelled set made from --data (default: the "
                        "offline CIFAR-10 test images) with perceptual hashes beside it: the report's `duplicates` key; "
                        "with --json FILE also FILE's .md and .png (pip install -e .[bench])")
    p.add_argument("--duplicates-index", metavar="DIR",
                   help="with --duplicates: also time the whole-collection pass on this built index")


def duplicates_benchmark(a) -> int:
    from .duplicates_bench import OFFLINE_TEST, run_and_write

    source = OFFLINE_TEST if a.data == "cifar10" else a.data
    try:
        run_and_write(source, a.model, a.json, work_dir=a.work_dir, scale_index=a.duplicates_index, quick=a.quick)
    except (ValueError, OSError, ImportError) as e:
        return fail(str(e))
    return 0


# ---- serve ---------------------------------------------------------------------------------

APP = Path(__file__).resolve().parent.parent / "app.py"


@command("serve", "serve the Streamlit page over an index")
def serve_arguments(p: argparse.ArgumentParser):
    from .publish import DEFAULT_INDEX

    p.add_argument("--index", default=os.environ.get("IMGSEARCH_INDEX", str(DEFAULT_INDEX)),
                   help=f"index directory (default: $IMGSEARCH_INDEX or {DEFAULT_INDEX})")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--address", default="127.0.0.1",
                   help="interface to listen on (default: 127.0.0.1; 0.0.0.0 serves everyone who can reach the machine)")

    def run(a) -> int:
        if not APP.is_file():
            return fail(f"The page {APP} is missing: serve from a checkout of the repository (pip install -e .).")
        env = {**os.environ, "IMGSEARCH_INDEX": a.index}
        cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(a.port),
               "--server.address", a.address]
        return subprocess.call(cmd, env=env, cwd=APP.parent)
    return run


# ---- entry points --------------------------------------------------------------------------

def _parser(name: str, prog: str | None = None, subparsers=None) -> tuple[argparse.ArgumentParser, object]:
    help, add_arguments = COMMANDS[name]
    if subparsers is None:
        p = argparse.ArgumentParser(prog=prog, description=help)
    else:
        p = subparsers.add_parser(name, help=help, description=help)
    return p, add_arguments(p)


def main(argv=None) -> int:
    """`imgsearch SUBCOMMAND ...`"""
    top = argparse.ArgumentParser(prog="imgsearch", description="Find similar images in pixel space and in a "
                                                                "convolutional auto-encoder's code space.")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    runners = {name: _parser(name, subparsers=sub)[1] for name in COMMANDS}
    a = top.parse_args(argv)
    return runners[a.command](a)


def script(name: str, argv=None) -> int:
    """`python scripts/NAME.py ...`: the one subcommand, with the script's name in its usage line."""
    p, run = _parser(name, prog=f"scripts/{name.replace('-', '_')}.py")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
