# SPDX-License-Identifier: BSD-3-Clause
"""``query``: search an index file with queries of any model of its space."""

import os

from .._search.exact_index import GalleryIndex
from ._args import add_hits_output, add_key, add_method, model_file, positive_int
from ._arrays import read_matrix, show_hits
from ._common import Command, UsageError, progress

# Search options of FAISS index kinds: option -> flag.
_FAISS_OPTIONS = {"ef_search": "--ef-search", "nprobe": "--nprobe"}


def add_arguments(parser):
    parser.add_argument("index", metavar="INDEX")
    add_key(parser, "index")
    parser.add_argument(
        "queries", metavar="NAME=QUERIES", type=model_file,
        help="the queries' model and file",
    )
    parser.add_argument(
        "-k", type=positive_int, default=10, help="hits per query (default: 10)"
    )
    add_method(parser)
    parser.add_argument("--ef-search", type=positive_int,
                        help="hnsw: candidates kept while searching")
    parser.add_argument("--nprobe", type=positive_int, help="ivf: cells searched")
    add_hits_output(parser)


def run(args, report):
    if not os.path.isfile(args.index):
        raise UsageError(f"no such index file {args.index!r}")
    index = GalleryIndex.load(args.index, key=args.key)
    source, queries_file = args.queries
    queries = read_matrix(queries_file, "queries")
    options = {
        name: getattr(args, name)
        for name in _FAISS_OPTIONS
        if getattr(args, name) is not None
    }
    if options and index.backend != "faiss":
        raise UsageError(
            f"{_FAISS_OPTIONS[next(iter(options))]} is for a FAISS index; "
            f"{args.index!r} is an exact index"
        )
    report(
        f"searching {len(queries)} queries of {source!r} in {len(index)} items "
        f"of {index.target!r} ({args.method})"
    )
    scores, indices = index.search(
        source, queries, k=args.k, method=args.method,
        callback=progress(report, args.quiet, "queries"),
        **options,
    )
    show_hits(args, scores, indices, len(index), len(queries))
    return 0


COMMAND = Command(
    name="query",
    help="search an index file with queries of any model of its space",
    description="For every query (rows of the NAME file, embeddings of model NAME), "
    "find the K best items\nof the index written by `index`. Prints the "
    "first hits as 'row (score)', or saves\nall of them with -o.\n\n"
    "example:\n  python -m latentspace query corpus.index "
    "new=queries.npy -k 10 -o hits.npz",
    add_arguments=add_arguments,
    run=run,
)
