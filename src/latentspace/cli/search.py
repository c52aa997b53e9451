# SPDX-License-Identifier: BSD-3-Clause
"""``search``: find the items of one model that match queries of another."""

from ._args import add_hits_output, add_key, add_method, model_file, positive_int
from ._arrays import read_matrix, show_hits
from ._common import Command, check_models, check_rows, every, load_space


def add_arguments(parser):
    parser.add_argument("space", metavar="SPACE")
    add_key(parser)
    parser.add_argument(
        "queries",
        metavar="SOURCE=QUERIES",
        type=model_file,
        help="the queries' model and file",
    )
    parser.add_argument(
        "gallery",
        metavar="TARGET=GALLERY",
        type=model_file,
        help="the gallery's model and file",
    )
    parser.add_argument(
        "-k", type=positive_int, default=10, help="hits per query (default: 10)"
    )
    add_method(parser)
    parser.add_argument(
        "--csls-k",
        type=positive_int,
        default=10,
        help="neighbourhood size of CSLS (default: %(default)s)",
    )
    parser.add_argument(
        "--reference",
        metavar="FILE",
        help="typical items of SOURCE that CSLS uses as reference set (default: "
        "the queries)",
    )
    add_hits_output(parser)


def run(args, report):
    space = load_space(args.space, args.key)
    (source, queries_file), (target, gallery_file) = args.queries, args.gallery
    check_models(space, [source, target])
    queries = read_matrix(queries_file, "queries")
    gallery = read_matrix(gallery_file, "gallery")
    check_rows(space, source, queries, "queries")
    check_rows(space, target, gallery, "gallery")
    report(f"indexing {len(gallery)} items of {target!r}")
    references = None
    if args.reference:
        references = {source: read_matrix(args.reference, "reference")}
    index = space.index(target, gallery, references=references, csls_k=args.csls_k)
    report(f"searching {len(queries)} queries of {source!r} ({args.method})")
    scores, indices = index.search(
        source,
        queries,
        k=args.k,
        method=args.method,
        callback=every(2.0, lambda done, total: report(f"{done}/{total} queries")),
    )
    report("done")
    show_hits(args, scores, indices, len(gallery), len(queries))
    return 0


COMMAND = Command(
    name="search",
    help="find the items of one model that match queries of another",
    description="For every query (rows of the SOURCE file), find the K best items "
    "of the gallery (rows of\nthe TARGET file) in the shared space. Prints "
    "the first hits as 'row (score)', or saves\nall of them with -o.\n\n"
    "example:\n  python -m latentspace search space.npz small=queries.npy "
    "large=gallery.npy -k 5\n  python -m latentspace search space.npz "
    "small=queries.npy large=gallery.npy -o hits.npz",
    add_arguments=add_arguments,
    run=run,
)
