# SPDX-License-Identifier: BSD-3-Clause
"""Command line: ``python -m latentspace COMMAND [options]``.

Run ``python -m latentspace --help`` for the commands, and
``python -m latentspace COMMAND --help`` for each one's options.
"""

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings

from . import __version__

__all__ = ["main"]

_DESCRIPTION = """\
latentspace: one shared latent space for embeddings from many models.

You have embeddings of the same items from several models (say a 384-d and a
768-d text encoder). `train` learns one shared space from them and saves it to
a file; the other commands use that file to map new embeddings into the space
(`project`), from one model's embeddings to another's (`translate`), to find
the items of one model that match queries of another (`search`) and to score
how well the models line up (`evaluate`). `index` projects a stored corpus of
one model into a search index file once (exact, or FAISS for millions of
items), which `query` then searches with embeddings of any model: to move a
vector index to a new embedding model without re-embedding the corpus.

Embeddings are read from NumPy files: .npy (one 2-D array, one row per item)
or .npz (one array, or FILE.npz:KEY for one of several). Models are named on
the command line as NAME=FILE; row i of every training file must describe the
same item.

example:
  python -m latentspace train space.npz small=small.npy large=large.npy --dim 64
  python -m latentspace info space.npz
  python -m latentspace search space.npz small=queries.npy large=gallery.npy -k 5
  python -m latentspace evaluate space.npz small=test_small.npy large=test_large.npy
  python -m latentspace index space.npz large=corpus.npy -o corpus.index
  python -m latentspace query corpus.index small=queries.npy -k 5
  python -m latentspace demo            # see it work on real data (scikit-learn)
"""

_DEMO_HELP = "align three models of handwritten digits in one latent space"

_DEMO_DESCRIPTION = """\
Show what latentspace is for, on real data that ships with scikit-learn (no
download): the 1797 8x8 handwritten digits are split into train and test
images, and every image is embedded by three different "models" fitted on the
training images only: PCA of the pixels (32 dims), an RBF kernel feature map
(100 dims) and the hidden layer of a small neural-network classifier (64 dims).
The three models are registered in one LatentSpace, which learns a projection
of each into a shared space from their raw embeddings of the training images,
with the library's defaults.

Then, on the held-out test images, for every pair of models A -> B: take a
test image as model A sees it, project it, and look for the nearest test image
as model B sees it (CSLS: cosine corrected for hubs). The table shows how
often that is the very same image (top 1, top 10) and how often it shows the
same digit, for the untrained space, the trained space and pure chance, plus
the training time and the latency of one `project` call. Takes about 5-30
seconds.

Needs scikit-learn: pip install "latentspace[demo]"
"""


class UsageError(Exception):
    """A bad file or argument: reported in one line, exit code 2."""


# ------------------------------------------------------------ argument types


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _float(text):
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None


def _positive_float(text):
    value = _float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _non_negative_float(text):
    value = _float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _regularization(text):
    if text == "auto":
        return text
    try:
        return _non_negative_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"must be 'auto' or a number >= 0, got {text!r}"
        ) from None


def _fraction(text):
    value = _float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _model_file(text):
    """``NAME=FILE`` -> ``(name, file)``."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(
            f"expected NAME=FILE (a model name, '=', a .npy/.npz file), got {text!r}"
        )
    return name, path


# ----------------------------------------------------------------- file I/O


def _read_matrix(spec, what):
    """The 2-D array of ``FILE.npy``, ``FILE.npz`` or ``FILE.npz:KEY``."""
    import numpy as np

    path, key = spec, None
    if not os.path.exists(path) and ".npz:" in spec:
        path, _, key = spec.rpartition(":")
    if not os.path.exists(path):
        raise UsageError(f"{what}: no such file {path!r}")
    if os.path.isdir(path):
        raise UsageError(f"{what}: {path!r} is a directory, not a .npy/.npz file")
    try:
        loaded = np.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        raise UsageError(
            f"{what}: {path!r} is not a readable NumPy .npy/.npz file ({exc})"
        ) from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            keys = loaded.files
            if key is None:
                if len(keys) != 1:
                    raise UsageError(
                        f"{what}: {path!r} holds {len(keys)} arrays "
                        f"({', '.join(keys[:8]) or 'none'}); pick one as "
                        f"{path}:KEY"
                    )
                key = keys[0]
            if key not in keys:
                raise UsageError(
                    f"{what}: {path!r} has no array {key!r} "
                    f"(it holds {', '.join(keys[:8]) or 'none'})"
                )
            try:
                array = loaded[key]
            except (ValueError, OSError, EOFError) as exc:
                raise UsageError(f"{what}: cannot read {spec!r} ({exc})") from None
            if not isinstance(array, np.ndarray):  # a member that is not .npy
                raise UsageError(f"{what}: {spec!r} is not a NumPy array (.npy)")
    elif key is not None:
        raise UsageError(f"{what}: {path!r} is a .npy file; drop ':{key}'")
    else:
        array = loaded
    if array.ndim != 2:
        raise UsageError(
            f"{what}: {spec!r} must be a 2-D array (one row per item), "
            f"got shape {array.shape}"
        )
    if array.dtype.kind not in "iuf":
        raise UsageError(
            f"{what}: {spec!r} must hold real numbers, got dtype {array.dtype}"
        )
    return array


def _read_masks(pairs, data):
    """The ``observed`` mapping of ``--observed NAME=FILE`` options."""
    import numpy as np

    masks = {}
    for name, path in pairs:
        if name not in data:
            raise UsageError(f"--observed {name}: no model {name!r} among NAME=FILE")
        if not os.path.isfile(path):
            raise UsageError(f"--observed {name}: no such file {path!r}")
        try:
            mask = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise UsageError(
                f"--observed {name}: {path!r} is not a readable .npy file ({exc})"
            ) from None
        rows = len(data[name])
        if not isinstance(mask, np.ndarray) or mask.dtype != bool or mask.shape != (
            rows,
        ):
            raise UsageError(
                f"--observed {name}: {path!r} must hold a boolean vector of "
                f"{rows} entries (one per row), got "
                + (f"dtype {mask.dtype}, shape {mask.shape}"
                   if isinstance(mask, np.ndarray) else "an .npz archive")
            )
        masks[name] = mask
    return masks or None


def _read_models(pairs):
    names = [name for name, _ in pairs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UsageError(f"model {repeated[0]!r} is given twice")
    return {name: _read_matrix(path, f"model {name!r}") for name, path in pairs}


def _load_space(path):
    from ._space import LatentSpace

    if not os.path.exists(path):
        raise UsageError(f"no such space file {path!r}")
    if os.path.isdir(path):
        raise UsageError(f"{path!r} is a directory, not a saved space")
    return LatentSpace.load(path)


def _check_models(space, names):
    """Raise the library's error for the first name ``space`` does not have."""
    for name in names:
        space.offset(name)  # UnknownModelError naming the registered models


def _check_width(space, name, array, what):
    width = space.models[name]
    if array.shape[1] != width:
        raise UsageError(
            f"{what} for model {name!r} must have shape (n, {width}), got shape "
            f"{array.shape}"
        )


def _write_output(path, arrays):
    """Save one array (``.npy``) or several (``.npz``) at ``path``, atomically
    (a full disk leaves an existing file as it was)."""
    import numpy as np

    from ._io import write_atomically

    _check_writable(path)
    if path.endswith(".npz"):
        write_atomically(path, lambda file: np.savez(file, **arrays))
    else:
        if len(arrays) != 1:
            raise UsageError(f"{path!r}: several arrays need a .npz output file")
        write_atomically(path, lambda file: np.save(file, *arrays.values()))


class _Reporter:
    """Progress lines on stderr (silenced by --quiet)."""

    def __init__(self, command, quiet):
        self.command, self.quiet = command, quiet
        self.started = time.perf_counter()

    def __call__(self, message):
        if not self.quiet:
            elapsed = time.perf_counter() - self.started
            print(f"[{elapsed:6.1f} s] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ commands


def _config_fields():
    from ._config import ProjectionConfig

    return {field.name: field for field in dataclasses.fields(ProjectionConfig)}


# Optional training flags: ProjectionConfig field -> (flag, type, help). Only
# the fields this version of the library has become options.
_TRAINING_FLAGS = {
    "solver": (
        "--solver",
        str,
        (
            "training algorithm (default: %(default)s, the closed form: fast, and "
            "the best alignment; 'sgd' is the Go package's per-sample SGD)"
        ),
    ),
    "objective": ("--objective", str, "loss the gradient solvers minimise"),
    "init": ("--init", str, "starting weights (default: %(default)s)"),
    "regularization": (
        "--regularization",
        _regularization,
        "ridge of the closed-form solutions, a number >= 0 or 'auto' (chosen "
        "per model from its data) (default: %(default)s)",
    ),
    "batch_size": (
        "--batch-size",
        _positive_int,
        "rows per mini-batch (default: %(default)s)",
    ),
    "tol": ("--tol", _non_negative_float, "early-stopping tolerance"),
}


def _choices(field):
    """The allowed values of a string field, from the library's registries."""
    try:
        from . import _solvers
    except ImportError:
        return None
    registry = {
        "solver": getattr(_solvers, "SOLVERS", None),
        "objective": getattr(_solvers, "OBJECTIVES", None),
        "init": getattr(_solvers, "INITS", None),
    }.get(field)
    return None if registry is None else list(registry)


def _add_training_options(parser):
    fields = _config_fields()
    group = parser.add_argument_group("training")
    group.add_argument(
        "--dim",
        type=_positive_int,
        help="dimension of the shared latent space (default: 64, or that of "
        "the --continue space)",
    )
    group.add_argument(
        "--epochs",
        type=_positive_int,
        default=fields["n_epochs"].default,
        help="passes over the data (default: %(default)s)",
    )
    group.add_argument(
        "--learning-rate",
        type=_positive_float,
        default=fields["learning_rate"].default,
        help="initial step size of --solver sgd; lower it if training diverges "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--alignment-weight",
        type=_non_negative_float,
        default=fields["alignment_weight"].default,
        help="weight of pulling the models' latents together, relative to "
        "reconstructing each model's features (default: %(default)s)",
    )
    for name, (flag, kind, text) in _TRAINING_FLAGS.items():
        if name not in fields:
            continue
        default = fields[name].default
        choices = _choices(name) if kind is str else None
        group.add_argument(
            flag,
            type=kind,
            default=default,
            choices=choices,
            dest=name,
            help=text,
        )
    group.add_argument(
        "--seed",
        type=int,
        help="seed of the initial weights (default: 42; a --continue space "
        "has its own generator)",
    )
    group.add_argument(
        "--dtype",
        choices=["float64", "float32"],
        help="precision of the weights (default: float64, or that of the "
        "--continue space)",
    )
    group.add_argument(
        "--continue",
        dest="resume",
        metavar="SPACE",
        help="start from the weights of a saved space instead of a new one",
    )


def _every(seconds, callback):
    """``callback`` called at most once per ``seconds`` (and at the end)."""
    last = [time.perf_counter()]

    def throttled(done, total):
        now = time.perf_counter()
        if now - last[0] >= seconds or done == total:
            last[0] = now
            callback(done, total)

    return throttled


def _training_progress(report, n_epochs):
    """A ``callback(state)`` printing a line at most every 2 seconds."""
    last = [0.0]

    def callback(state):
        now = time.perf_counter()
        iteration = getattr(state, "iteration", None)
        if now - last[0] >= 2.0 or iteration == n_epochs:
            last[0] = now
            loss = getattr(state, "loss", None)
            report(
                f"iteration {iteration}/{n_epochs}"
                + (f", loss {loss:.6g}" if isinstance(loss, float) else "")
            )
        return False

    return callback


def _check_writable(path):
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UsageError(f"cannot write {path!r}: no directory {directory!r}")
    if os.path.isdir(path):
        raise UsageError(f"cannot write {path!r}: it is a directory")


def _check_plot(prefix):
    """Fail early (before a long run) if pictures cannot be written."""
    from . import _plots

    _plots.require()
    _check_writable(f"{prefix}-map.png")


def _train(args, report):
    from ._space import LatentSpace

    _check_writable(args.space)  # before training, not after
    if args.plot:
        _check_plot(args.plot)
    data = _read_models(args.models)
    if len(data) < 2:
        raise UsageError("train needs at least two models (NAME=FILE NAME=FILE ...)")
    counts = {name: len(array) for name, array in data.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{name}: {n}" for name, n in counts.items())
        raise UsageError(
            f"the training files must have the same number of rows (row i of "
            f"every file is item i), got {listed}"
        )
    observed = _read_masks(args.observed, data)
    if args.freeze and not args.resume:
        raise UsageError("--freeze keeps trained weights: use it with --continue SPACE")
    if args.resume:
        space = _load_space(args.resume)
        _check_resumed(space, args)
        for name in args.freeze:
            if name not in space.models:
                raise UsageError(
                    f"--freeze {name}: {args.resume!r} has no model {name!r} "
                    f"(it has {', '.join(space.models) or 'none'})"
                )
        for name, array in data.items():
            if name not in space.models:
                space.register(name, array.shape[1])
        dim = space.dim
    else:
        dim = 64 if args.dim is None else args.dim
        seed = 42 if args.seed is None else args.seed
        space = LatentSpace(dim, dtype=args.dtype or "float64", seed=seed)
        for name, array in data.items():
            space.register(name, array.shape[1])
    fields = _config_fields()
    options = {
        "n_epochs": args.epochs,
        "learning_rate": args.learning_rate,
        "alignment_weight": args.alignment_weight,
    }
    options.update(
        (name, getattr(args, name)) for name in _TRAINING_FLAGS if name in fields
    )
    solver = options["solver"]
    if "callback" in fields and not args.quiet:
        # The closed form is one iteration, whatever --epochs says.
        total = 1 if solver == "cca" else args.epochs
        options["callback"] = _training_progress(report, total)
    shapes = ", ".join(f"{n} {a.shape[1]}-d" for n, a in data.items())
    report(
        f"training a {dim}-d space on {len(next(iter(data.values())))} items "
        f"({shapes}), solver {solver}"
        + ("" if solver == "cca" else f", at most {args.epochs} epochs")
    )
    result = space.train_projections(
        data, observed=observed, frozen=args.freeze, **options
    )
    space.save(args.space, config=result)
    report(f"saved {args.space}")
    print(
        f"trained {space!r} in {result.seconds:.2f} s: {result.n_epochs} "
        f"iterations, mean loss per item {result.initial_loss:.6g} -> "
        f"{result.final_loss:.6g}; saved to {args.space}"
    )
    if args.plot:
        from . import _plots

        if observed is not None:  # the map shows the items every model observed
            import numpy as np

            rows = np.logical_and.reduce([observed.get(n, True) for n in data])
            data = {name: array[rows] for name, array in data.items()}
        written = [_plots.loss_curve(result, f"{args.plot}-loss.png")]
        if len(next(iter(data.values()))):
            written.append(_plots.space_map(space, data, f"{args.plot}-map.png"))
        print("pictures: " + ", ".join(written))
    return 0


def _check_resumed(space, args):
    """Refuse options that the saved space contradicts (they would be ignored)."""
    if args.dim is not None and args.dim != space.dim:
        raise UsageError(
            f"--dim {args.dim}: {args.resume!r} is a {space.dim}-d space (drop "
            "--dim to continue it, or train a new space)"
        )
    if args.dtype is not None and args.dtype != space.dtype.name:
        raise UsageError(
            f"--dtype {args.dtype}: {args.resume!r} is a {space.dtype.name} space"
        )
    if args.seed is not None:
        raise UsageError(
            f"--seed: {args.resume!r} continues with its own random generator"
        )


def _info(args, report):
    from ._io import read_header

    if not os.path.exists(args.space):
        raise UsageError(f"no such space file {args.space!r}")
    header = read_header(args.space)
    if args.json:
        print(json.dumps(header, indent=2))
        return 0
    print(
        f"{args.space}: latentspace file format {header['version']} "
        f"(written by latentspace {header.get('library_version', '?')})"
    )
    print(f"  space   dim={header['dim']}, dtype={header['dtype']}")
    print(f"  models  {len(header['models'])}, in registration order:")
    for model in header["models"]:
        offset = ", with input offset" if model["offset"] else ""
        print(f"    {model['name']:<20} input_dim={model['input_dim']}{offset}")
    config = header.get("config")
    if config:
        unused = _unused_fields(config)
        shown = ", ".join(
            f"{k}={v}" for k, v in config.items() if v is not None and k not in unused
        )
        print(f"  trained with {shown}")
    return 0


def _unused_fields(config):
    """The fields of a recorded configuration that did not shape the weights
    (``info`` leaves them out; ``--json`` shows everything)."""
    solver = config.get("solver")
    unused = {"progress", "callback"}
    unused |= {
        "cca": {"learning_rate", "n_epochs", "batch_size", "init", "tol"},
        "lbfgs": {"learning_rate", "batch_size"},
        "sgd": {"batch_size"},
    }.get(solver, set())
    whitened = config.get("objective") == "whitened" or (
        config.get("objective") is None and solver != "sgd"
    )
    init = config.get("init") or ("current" if solver == "sgd" else "cca")
    if solver in ("sgd", "lbfgs", "minibatch") and not (whitened or init == "cca"):
        unused.add("regularization")
    return unused


def _project(args, report):
    space = _load_space(args.space)
    features = _read_matrix(args.input, "input")
    latent = space.project(args.model, features)
    _write_output(args.output, {"latent": latent})
    print(
        f"projected {len(latent)} items of {args.model!r}: {args.output} {latent.shape}"
    )
    return 0


def _translate(args, report):
    space = _load_space(args.space)
    features = _read_matrix(args.input, "input")
    out = space.translate(args.source, args.target, features)
    _write_output(args.output, {"features": out})
    print(
        f"translated {len(out)} items {args.source!r} -> {args.target!r}: "
        f"{args.output} {out.shape}"
    )
    return 0


def _search(args, report):
    space = _load_space(args.space)
    (source, queries_file), (target, gallery_file) = args.queries, args.gallery
    _check_models(space, [source, target])
    queries = _read_matrix(queries_file, "queries")
    gallery = _read_matrix(gallery_file, "gallery")
    _check_width(space, source, queries, "queries")
    _check_width(space, target, gallery, "gallery")
    report(f"indexing {len(gallery)} items of {target!r}")
    references = None
    if args.reference:
        references = {source: _read_matrix(args.reference, "reference")}
    index = space.index(target, gallery, references=references, csls_k=args.csls_k)
    report(f"searching {len(queries)} queries of {source!r} ({args.method})")
    scores, indices = index.search(
        source,
        queries,
        k=args.k,
        method=args.method,
        callback=_every(2.0, lambda done, total: report(f"{done}/{total} queries")),
    )
    report("done")
    _show_hits(args, scores, indices, len(gallery), len(queries))
    return 0


def _progress(report, quiet, what):
    """A ``callback(done, total)`` drawing a tqdm bar on stderr (a line every
    2 seconds without tqdm); nothing with --quiet."""
    from ._search import bar_callback

    if quiet:
        return None
    try:
        return bar_callback(what)
    except ImportError:
        return _every(2.0, lambda done, n: report(f"{done}/{n} {what}"))


def _key_value(text):
    """``KEY=VALUE`` (an integer value) -> ``(key, value)``."""
    key, sep, value = text.partition("=")
    if sep and key:
        try:
            return key, int(value)
        except ValueError:
            pass
    raise argparse.ArgumentTypeError(f"expected KEY=INTEGER, got {text!r}")


def _index(args, report):
    space = _load_space(args.space)
    target, corpus_file = args.corpus
    _check_models(space, [target])
    _check_writable(args.output)
    corpus = _read_matrix(corpus_file, "corpus")  # memory-mapped if .npy
    _check_width(space, target, corpus, "corpus")
    references = {}
    for name, path in args.reference:
        _check_models(space, [name])
        references[name] = _read_matrix(path, f"reference {name!r}")
        _check_width(space, name, references[name], f"reference {name!r}")
    kind = args.kind or "flat"
    report(
        f"indexing {len(corpus)} items of {target!r} ({args.backend}, {kind})"
    )
    started = time.perf_counter()
    index = space.index(
        target,
        corpus,
        backend=args.backend,
        kind=kind,
        options=dict(args.option) or None,
        references=references or None,
        csls_k=args.csls_k,
        callback=_progress(report, args.quiet, "items"),
    )
    seconds = time.perf_counter() - started
    index.save(args.output)
    print(
        f"indexed {len(index)} items of {target!r} in {seconds:.1f} s "
        f"({args.backend}, {kind}"
        + (f", CSLS references: {', '.join(index.references)}" if references else "")
        + f"): {args.output}"
    )
    return 0


def _query(args, report):
    from ._search import GalleryIndex

    if not os.path.isfile(args.index):
        raise UsageError(f"no such index file {args.index!r}")
    index = GalleryIndex.load(args.index)
    source, queries_file = args.queries
    _check_models_of(index, source)
    queries = _read_matrix(queries_file, "queries")
    width = index._models[source].input_dim
    if queries.shape[1] != width:
        raise UsageError(
            f"queries for model {source!r} must have shape (n, {width}), got "
            f"shape {queries.shape}"
        )
    options = {name: value for name, value in (("ef_search", args.ef_search),
                                               ("nprobe", args.nprobe))
               if value is not None}
    if options and index.backend != "faiss":
        raise UsageError(
            f"--{next(iter(options)).replace('_', '-')} is for a FAISS index; "
            f"{args.index!r} is an exact index"
        )
    report(
        f"searching {len(queries)} queries of {source!r} in {len(index)} items "
        f"of {index.target!r} ({args.method})"
    )
    scores, indices = index.search(
        source, queries, k=args.k, method=args.method,
        callback=_progress(report, args.quiet, "queries"),
        **options,
    )
    _show_hits(args, scores, indices, len(index), len(queries))
    return 0


def _check_models_of(index, name):
    if name not in index._models:
        known = ", ".join(map(repr, index._models)) or "none"
        raise UsageError(f"the index has no model {name!r} (it has {known})")


def _show_hits(args, scores, indices, n_items, n_queries):
    """Save the hits with -o, else print the first queries' hits."""
    if args.output:
        _write_output(args.output, {"indices": indices, "scores": scores})
        print(
            f"top {indices.shape[1]} of {n_items} items for {n_queries} "
            f"queries: {args.output} (arrays 'scores' and 'indices', one row per "
            "query, best first)"
        )
        return
    shown = min(len(indices), args.show)
    for i in range(shown):
        hits = ", ".join(
            f"{j} ({s:.3f})" for j, s in zip(indices[i], scores[i]) if j >= 0
        )
        print(f"query {i}: {hits}")
    if shown < len(indices):
        print(f"... {len(indices) - shown} more queries; use -o FILE.npz to save all")


def _evaluate(args, report):
    space = _load_space(args.space)
    _check_models(space, [name for name, _ in args.models])
    data = _read_models(args.models)
    for name, array in data.items():
        _check_width(space, name, array, "data")
    counts = {len(array) for array in data.values()}
    if len(counts) > 1:
        raise UsageError("the evaluation files must have the same number of rows")
    if args.plot:
        _check_plot(args.plot)
    report(f"evaluating {len(data)} models on {counts.pop()} items ({args.method})")
    result = space.evaluate(data, k=args.k, method=args.method)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result)
    if args.plot:
        from . import _plots

        written = _plots.space_map(space, data, f"{args.plot}-map.png")
        print(f"picture: {written}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _bench(args, report):
    import platform

    import numpy as np

    from ._space import LatentSpace

    rng = np.random.default_rng(0)
    space = LatentSpace(args.dim, dtype=args.dtype)
    space.register("a", args.width)
    space.register("b", args.width)
    X = rng.normal(size=(args.size, args.width)).astype(args.dtype)
    x = np.ascontiguousarray(X[0])

    def median(fn, repeats):
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return float(np.median(times))

    print(
        f"latentspace {__version__}, numpy {np.__version__}, Python "
        f"{platform.python_version()}, {platform.machine()}, {os.cpu_count()} cpus"
    )
    print(
        f"quick, indicative timings (median of a few runs, random weights, "
        f"dim={args.dim}, width={args.width}, {args.dtype}); other load on the "
        "machine changes them"
    )

    def line(label, seconds, rate):
        shown = (
            f"{seconds * 1e6:8.1f} us" if seconds < 1e-3 else f"{seconds * 1e3:8.1f} ms"
        )
        print(f"  {label:<40} {shown}  {rate}".rstrip())

    one = median(lambda: space.project("a", x), 2000)
    line("project, one vector", one, "")
    batch = median(lambda: space.project("a", X), 5)
    line(f"project, {args.size} rows", batch, f"({args.size / batch:,.0f} rows/s)")
    index = space.index("b", X)
    for method in ("cosine", "csls"):
        seconds = median(lambda m=method: index.search("a", X, k=10, method=m), 3)
        line(
            f"search {args.size} x {args.size}, top 10, {method}",
            seconds,
            f"({args.size / seconds:,.0f} queries/s)",
        )
    print(
        "For the full benchmarks (against NumPy, with the machine's details), "
        "from a source checkout:\n  python benchmarks/bench_core.py\n"
        "  python benchmarks/bench_search.py"
    )
    return 0


def _demo(args, report):
    from ._demo import INSTALL_HINT, MissingDependencyError, format_report, run
    from ._exceptions import TrainingDivergedError

    training = {
        name: value
        for name, value in (
            ("solver", args.solver),
            ("n_epochs", args.epochs),
            ("learning_rate", args.learning_rate),
            ("alignment_weight", args.alignment_weight),
        )
        if value is not None
    }
    try:
        if args.plot:
            _check_plot(args.plot)
        numbers = run(
            seed=args.seed,
            dim=args.dim,
            test_size=args.test_size,
            latency_calls=args.latency_calls,
            plot=args.plot,
            **training,
        )
    except MissingDependencyError:
        print(f"latentspace demo: {INSTALL_HINT}", file=sys.stderr)
        return 2
    except (ImportError, UsageError) as exc:  # no matplotlib, or a bad --plot
        print(f"latentspace demo: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDivergedError as exc:
        print(f"latentspace demo: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(numbers, indent=2) if args.json else format_report(numbers))
    return 0


# -------------------------------------------------------------------- parser


def _add_demo(commands):
    demo = commands.add_parser(
        "demo",
        help=_DEMO_HELP,
        description=_DEMO_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the train/test split, the models and the space's "
        "initialisation (default: %(default)s)",
    )
    demo.add_argument(
        "--dim",
        type=_positive_int,
        default=32,
        help="dimension of the shared latent space (default: %(default)s)",
    )
    demo.add_argument(
        "--solver",
        choices=_choices("solver"),
        help="training algorithm (default: the library's, the closed form 'cca')",
    )
    demo.add_argument(
        "--epochs",
        type=_positive_int,
        help="passes over the training images of the gradient solvers",
    )
    demo.add_argument(
        "--learning-rate",
        type=_positive_float,
        help="initial step size of --solver sgd/minibatch",
    )
    demo.add_argument(
        "--alignment-weight",
        type=_non_negative_float,
        help="weight of pulling the models' latents together, relative to "
        "reconstructing each model's features",
    )
    demo.add_argument(
        "--test-size",
        type=_fraction,
        default=0.3,
        help="fraction of the images held out for testing (default: %(default)s)",
    )
    demo.add_argument(
        "--latency-calls",
        type=_positive_int,
        default=2000,
        help="single-vector project() calls timed per model (default: %(default)s)",
    )
    demo.add_argument(
        "--json",
        action="store_true",
        help="print the numbers as JSON instead of the table",
    )
    demo.add_argument(
        "--plot",
        metavar="PREFIX",
        help="also save PREFIX-loss.png (loss per epoch) and PREFIX-map.png (the "
        "test images of every model in the trained space, in 2-D, the same image "
        "joined); needs matplotlib",
    )
    demo.set_defaults(run=_demo)


def _command(commands, name, help, description, run):
    parser = commands.add_parser(
        name,
        help=help,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run)
    return parser


def _add_method(parser, default="csls"):
    parser.add_argument(
        "--method",
        choices=["csls", "cosine"],
        default=default,
        help="how items are compared in the space: cosine similarity, or CSLS "
        "(cosine corrected for hubs, items that are close to everything) "
        "(default: %(default)s)",
    )


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m latentspace",
        description=_DESCRIPTION,
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(
            prog, max_help_position=32
        ),
    )
    parser.add_argument(
        "--version", action="version", version=f"latentspace {__version__}"
    )
    commands = parser.add_subparsers(
        title="commands", dest="command", metavar="COMMAND"
    )
    commands.required = True

    train = _command(
        commands,
        "train",
        "train a shared space from aligned embeddings and save it",
        "Register one model per NAME=FILE, train the shared space on the files "
        "(row i of every\nfile is the same item) and save it to SPACE (.npz). "
        "Progress goes to stderr.\n\nexample:\n  python -m latentspace train "
        "space.npz small=small.npy large=large.npy --dim 64",
        _train,
    )
    train.add_argument("space", metavar="SPACE", help="the .npz file to write")
    train.add_argument(
        "models",
        metavar="NAME=FILE",
        nargs="+",
        type=_model_file,
        help="a model's name and its embeddings of the training items (.npy, "
        ".npz or FILE.npz:KEY), at least two",
    )
    _add_training_options(train)
    train.add_argument(
        "--observed",
        metavar="NAME=FILE",
        action="append",
        type=_model_file,
        default=[],
        help="missing views: a boolean .npy vector, one entry per row, true "
        "where model NAME observed the item (its other rows are ignored and "
        "may hold NaN); repeatable",
    )
    train.add_argument(
        "--freeze",
        metavar="NAME",
        action="append",
        default=[],
        help="with --continue: keep model NAME's weights as they are and fit "
        "the other models to the space it defines (to add a new model to a "
        "trained space); repeatable",
    )
    train.add_argument(
        "--plot",
        metavar="PREFIX",
        help="also save PREFIX-loss.png (loss per iteration) and PREFIX-map.png "
        "(a 2-D map of the space, same items joined); needs matplotlib",
    )

    info = _command(
        commands,
        "info",
        "show what a saved space holds",
        "Check a saved space (checksum included) and print its dimension, "
        "models and training configuration.",
        _info,
    )
    info.add_argument("space", metavar="SPACE")
    info.add_argument("--json", action="store_true", help="print the raw header")

    project = _command(
        commands,
        "project",
        "map embeddings of one model into the shared space",
        "Write INPUT's rows, embeddings of MODEL, mapped into the space "
        "(n x dim) to OUTPUT.\n\nexample:\n  python -m latentspace project "
        "space.npz small new_items.npy -o latent.npy",
        _project,
    )
    project.add_argument("space", metavar="SPACE")
    project.add_argument("model", metavar="MODEL")
    project.add_argument("input", metavar="INPUT", help=".npy/.npz, one row per item")
    project.add_argument("-o", "--output", required=True, help="the .npy file to write")

    translate = _command(
        commands,
        "translate",
        "map embeddings of one model to another model's embeddings",
        "Write INPUT's rows, embeddings of SOURCE, as TARGET would embed them "
        "(through the\nshared space) to OUTPUT.\n\nexample:\n  python -m "
        "latentspace translate space.npz small large items.npy -o as_large.npy",
        _translate,
    )
    translate.add_argument("space", metavar="SPACE")
    translate.add_argument("source", metavar="SOURCE")
    translate.add_argument("target", metavar="TARGET")
    translate.add_argument("input", metavar="INPUT")
    translate.add_argument(
        "-o", "--output", required=True, help="the .npy file to write"
    )

    search = _command(
        commands,
        "search",
        "find the items of one model that match queries of another",
        "For every query (rows of the SOURCE file), find the K best items of "
        "the gallery (rows of\nthe TARGET file) in the shared space. Prints "
        "the first hits as 'row (score)', or saves\nall of them with -o.\n\n"
        "example:\n  python -m latentspace search space.npz small=queries.npy "
        "large=gallery.npy -k 5\n  python -m latentspace search space.npz "
        "small=queries.npy large=gallery.npy -o hits.npz",
        _search,
    )
    search.add_argument("space", metavar="SPACE")
    search.add_argument(
        "queries",
        metavar="SOURCE=QUERIES",
        type=_model_file,
        help="the queries' model and file",
    )
    search.add_argument(
        "gallery",
        metavar="TARGET=GALLERY",
        type=_model_file,
        help="the gallery's model and file",
    )
    search.add_argument(
        "-k", type=_positive_int, default=10, help="hits per query (default: 10)"
    )
    _add_method(search)
    search.add_argument(
        "--csls-k",
        type=_positive_int,
        default=10,
        help="neighbourhood size of CSLS (default: %(default)s)",
    )
    search.add_argument(
        "--reference",
        metavar="FILE",
        help="typical items of SOURCE that CSLS uses as reference set (default: "
        "the queries)",
    )
    search.add_argument(
        "-o", "--output", help="save 'scores' and 'indices' to this .npz file"
    )
    search.add_argument(
        "--show",
        type=_positive_int,
        default=20,
        help="queries printed without -o (default: %(default)s)",
    )

    index = _command(
        commands,
        "index",
        "project a stored corpus into a search index file",
        "Project the rows of CORPUS, embeddings of model NAME, into the space "
        "(a block of\nrows at a time: a memory-mapped .npy larger than memory "
        "works) and save a search\nindex to OUTPUT; `query` searches it with "
        "embeddings of any model of the space,\nwithout the corpus or the "
        "space. The index holds the space's weights as they are\nnow.\n\n"
        "example (migrate from an old embedding model to a new one):\n"
        "  python -m latentspace index space.npz old=corpus_old.npy -o "
        "corpus.index \\\n      --backend faiss --kind hnsw --reference "
        "new=sample_new.npy\n  python -m latentspace query corpus.index "
        "new=queries_new.npy -k 10",
        _index,
    )
    index.add_argument("space", metavar="SPACE")
    index.add_argument(
        "corpus", metavar="NAME=CORPUS", type=_model_file,
        help="the corpus's model and file (.npy, read memory-mapped)",
    )
    index.add_argument("-o", "--output", required=True, metavar="INDEX",
                       help="the index file to write")
    index.add_argument(
        "--backend", choices=["exact", "faiss"], default="exact",
        help="exact: scan every item (no dependency); faiss: FAISS's index "
        "(pip install faiss-cpu) (default: %(default)s)",
    )
    index.add_argument(
        "--kind", choices=["flat", "hnsw", "ivf"],
        help="FAISS index: flat (exact), hnsw or ivf (approximate, fast on "
        "millions of items) (default: flat)",
    )
    index.add_argument(
        "--option", metavar="KEY=VALUE", action="append", type=_key_value,
        default=[],
        help="an option of the FAISS index kind: hnsw m, ef_construction, "
        "ef_search; ivf nlist, nprobe, train_size, seed; repeatable",
    )
    index.add_argument(
        "--reference", metavar="NAME=FILE", action="append", type=_model_file,
        default=[],
        help="typical items of a query model, for CSLS (a FAISS index needs "
        "one for CSLS); repeatable",
    )
    index.add_argument(
        "--csls-k", type=_positive_int, default=10,
        help="neighbourhood size of CSLS (default: %(default)s)",
    )

    query = _command(
        commands,
        "query",
        "search an index file with queries of any model of its space",
        "For every query (rows of the NAME file, embeddings of model NAME), "
        "find the K best items\nof the index written by `index`. Prints the "
        "first hits as 'row (score)', or saves\nall of them with -o.\n\n"
        "example:\n  python -m latentspace query corpus.index "
        "new=queries.npy -k 10 -o hits.npz",
        _query,
    )
    query.add_argument("index", metavar="INDEX")
    query.add_argument(
        "queries", metavar="NAME=QUERIES", type=_model_file,
        help="the queries' model and file",
    )
    query.add_argument(
        "-k", type=_positive_int, default=10, help="hits per query (default: 10)"
    )
    _add_method(query)
    query.add_argument("--ef-search", type=_positive_int,
                       help="hnsw: candidates kept while searching")
    query.add_argument("--nprobe", type=_positive_int,
                       help="ivf: cells searched")
    query.add_argument(
        "-o", "--output", help="save 'scores' and 'indices' to this .npz file"
    )
    query.add_argument(
        "--show", type=_positive_int, default=20,
        help="queries printed without -o (default: %(default)s)",
    )

    evaluate = _command(
        commands,
        "evaluate",
        "score how well a saved space aligns its models",
        "On held-out aligned items (row i of every file is the same item): for "
        "every ordered\npair of models A -> B, how often an item of A finds "
        "the same item among all items of B\n(top-k accuracy, mean reciprocal "
        "rank), and how well every model is reconstructed\nfrom the space "
        "(R^2).\n\nexample:\n  python -m latentspace evaluate space.npz "
        "small=test_small.npy large=test_large.npy",
        _evaluate,
    )
    evaluate.add_argument("space", metavar="SPACE")
    evaluate.add_argument(
        "models",
        metavar="NAME=FILE",
        nargs="+",
        type=_model_file,
        help="held-out embeddings of registered models",
    )
    evaluate.add_argument(
        "-k",
        type=_positive_int,
        nargs="+",
        default=[1, 10],
        help="top-k cut-offs (default: 1 10)",
    )
    _add_method(evaluate)
    evaluate.add_argument("--json", action="store_true", help="print JSON")
    evaluate.add_argument(
        "--plot",
        metavar="PREFIX",
        help="also save PREFIX-map.png, a 2-D map of the items in the space "
        "(needs matplotlib)",
    )

    bench = _command(
        commands,
        "bench",
        "quick timings of project and search on this machine",
        "A few seconds of indicative timings on random data: project (one "
        "vector, a batch)\nand search. The full benchmarks live in the source "
        "checkout's benchmarks/ folder.",
        _bench,
    )
    bench.add_argument(
        "--size",
        type=_positive_int,
        default=5000,
        help="items (rows) of the batch and of the search (default: %(default)s)",
    )
    bench.add_argument("--dim", type=_positive_int, default=64)
    bench.add_argument("--width", type=_positive_int, default=256)
    bench.add_argument("--dtype", choices=["float64", "float32"], default="float64")

    _add_demo(commands)
    for name, sub in commands.choices.items():
        if name != "demo":
            sub.add_argument(
                "-q", "--quiet", action="store_true", help="no progress on stderr"
            )
    return parser


def main(argv=None):
    """Parse ``argv`` (default: the command line), run the command; the exit code.

    Returns
    -------
    int
        0 on success, 1 if training diverged, 2 on a usage error (bad
        arguments or files) or a missing optional dependency, 130 if
        interrupted, 141 if the reader of the output went away (``| head``;
        the status of a process ended by SIGPIPE).

    Warnings (a solver that ran out of iterations, ...) are printed as one
    line on stderr, ``latentspace COMMAND: warning: ...``; ``--quiet``
    silences them.
    """
    args = _parser().parse_args(argv)
    if args.command == "demo":
        return _demo(args, None)
    with warnings.catch_warnings():
        if args.quiet:
            warnings.simplefilter("ignore")
        else:
            warnings.showwarning = _warning_line(args.command)
        return _run(args)


def _warning_line(command):
    """A `warnings.showwarning` that prints one line, without the source."""

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        print(f"latentspace {command}: warning: {text}", file=sys.stderr, flush=True)

    return show


def _run(args):
    """Run the parsed command; its exit code."""
    report = _Reporter(args.command, args.quiet)
    from ._exceptions import TrainingDivergedError

    prefix = f"latentspace {args.command}: error:"
    try:
        code = args.run(args, report)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except BrokenPipeError:
        # The reader closed the pipe (``| head``): stop quietly. Python would
        # report the error again when it flushes stdout at exit, unless
        # stdout now points elsewhere (the recipe of Python's signal docs).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + 13  # SIGPIPE
    except TrainingDivergedError as exc:
        print(f"{prefix} {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"latentspace {args.command}: interrupted", file=sys.stderr)
        return 130
    except ImportError as exc:  # a missing optional dependency
        print(f"{prefix} {exc}", file=sys.stderr)
        return 2
    except (UsageError, OSError, ValueError, TypeError, KeyError) as exc:
        # SpaceFileError, UnknownModelError and InvalidParameterError included.
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"{prefix} {message}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"{prefix} out of memory", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
