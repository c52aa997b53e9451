# SPDX-License-Identifier: BSD-3-Clause
"""``index``: project a stored corpus into a search index file."""

import time

from .._search.faiss_index import KINDS
from .._search import BACKENDS
from ._args import add_key, key_value, model_file, positive_int
from ._arrays import read_matrix
from ._common import Command, check_models, check_rows, check_writable, load_space
from ._common import progress


def add_arguments(parser):
    parser.add_argument("space", metavar="SPACE")
    add_key(parser, "space and index")
    parser.add_argument(
        "corpus", metavar="NAME=CORPUS", type=model_file,
        help="the corpus's model and file (.npy, read memory-mapped)",
    )
    parser.add_argument("-o", "--output", required=True, metavar="INDEX",
                        help="the index file to write")
    parser.add_argument(
        "--backend", choices=BACKENDS, default="exact",
        help="exact: scan every item (no dependency); faiss: FAISS's index "
        "(pip install faiss-cpu) (default: %(default)s)",
    )
    parser.add_argument(
        "--kind", choices=KINDS,
        help="FAISS index: flat (exact), hnsw or ivf (approximate, fast on "
        "millions of items) (default: flat)",
    )
    parser.add_argument(
        "--option", metavar="KEY=VALUE", action="append", type=key_value,
        default=[],
        help="an option of the FAISS index kind: hnsw m, ef_construction, "
        "ef_search; ivf nlist, nprobe, train_size, seed; repeatable",
    )
    parser.add_argument(
        "--reference", metavar="NAME=FILE", action="append", type=model_file,
        default=[],
        help="typical items of a query model, for CSLS (a FAISS index needs "
        "one for CSLS); repeatable",
    )
    parser.add_argument(
        "--csls-k", type=positive_int, default=10,
        help="neighbourhood size of CSLS (default: %(default)s)",
    )


def run(args, report):
    space = load_space(args.space, args.key)
    target, corpus_file = args.corpus
    check_models(space, [target])
    check_writable(args.output)
    corpus = read_matrix(corpus_file, "corpus")  # memory-mapped if .npy
    check_rows(space, target, corpus, "corpus")
    references = {}
    for name, path in args.reference:
        check_models(space, [name])
        references[name] = read_matrix(path, f"reference {name!r}")
        check_rows(space, name, references[name], f"reference {name!r}")
    kind = args.kind or "flat"
    report(f"indexing {len(corpus)} items of {target!r} ({args.backend}, {kind})")
    started = time.perf_counter()
    index = space.index(
        target,
        corpus,
        backend=args.backend,
        kind=kind,
        options=dict(args.option) or None,
        references=references or None,
        csls_k=args.csls_k,
        callback=progress(report, args.quiet, "items"),
    )
    seconds = time.perf_counter() - started
    index.save(args.output, key=args.key)
    print(
        f"indexed {len(index)} items of {target!r} in {seconds:.1f} s "
        f"({args.backend}, {kind}"
        + (f", CSLS references: {', '.join(index.references)}" if references else "")
        + f"): {args.output}"
    )
    return 0


COMMAND = Command(
    name="index",
    help="project a stored corpus into a search index file",
    description="Project the rows of CORPUS, embeddings of model NAME, into the "
    "space (a block of\nrows at a time: a memory-mapped .npy larger than memory "
    "works) and save a search\nindex to OUTPUT; `query` searches it with "
    "embeddings of any model of the space,\nwithout the corpus or the "
    "space. The index holds the space's weights as they are\nnow.\n\n"
    "example (migrate from an old embedding model to a new one):\n"
    "  python -m latentspace index space.npz old=corpus_old.npy -o "
    "corpus.index \\\n      --backend faiss --kind hnsw --reference "
    "new=sample_new.npy\n  python -m latentspace query corpus.index "
    "new=queries_new.npy -k 10",
    add_arguments=add_arguments,
    run=run,
)
